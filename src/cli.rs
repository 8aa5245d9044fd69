//! The command line: `serve` (default), `migrate`, `create-admin`, `keys`.

use std::{
    ffi::OsString,
    io::{BufRead, IsTerminal},
    num::NonZeroUsize,
    process::ExitCode,
};

use clap::{
    CommandFactory, Parser, Subcommand,
    error::{ContextKind, ContextValue, ErrorKind},
};

use crate::{
    app::{self, Application},
    auth::{
        accounts::{AdminOutcome, IfExists},
        clients::ClientRequest,
    },
    config::{self, Argon2Args, Config, DatabaseArgs, KeyArgs, LogFormat},
    crypto::passwords::PasswordHasher,
    domain::{Email, Password, Username},
    http, telemetry,
};

#[derive(Debug, Parser)]
#[command(
    name = "authgate",
    version,
    about = "Authentication and authorization service"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log output format.
    #[arg(
        long,
        env = "AUTHGATE_LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default).
    Serve(Box<Config>),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
    /// Create an admin account. The password is read from standard input
    /// (prompted for on a terminal), never from the command line.
    CreateAdmin {
        #[arg(long)]
        email: String,
        #[arg(long)]
        username: Option<String>,
        /// If a user with that email exists, make them an admin (and enable
        /// them) instead of failing; no password is asked for then.
        #[arg(long)]
        promote: bool,
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        argon2: Argon2Args,
    },
    /// List, rotate, revoke or import the token signing keys in the
    /// database. Every running instance sees the change within seconds.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Register, list or delete the OAuth clients (applications that send
    /// users here to log in). Each prints JSON.
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Print the OpenAPI document of the HTTP API (JSON) and exit.
    Openapi,
    /// Measure this machine's password hashing rate with the configured
    /// argon2id parameters on every hashing worker, and print it as JSON.
    /// Useful to size AUTHGATE_HASH_WORKERS and to compare login throughput with.
    HashBenchmark {
        /// How long to measure.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Hashing workers (default: the number of CPU cores).
        #[arg(long, env = "AUTHGATE_HASH_WORKERS")]
        hash_workers: Option<NonZeroUsize>,
        #[command(flatten)]
        argon2: Argon2Args,
    },
}

/// `authgate keys …`: each prints JSON.
#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Every key and its state (standby, active, retiring, expired, revoked).
    List(KeyCommandArgs),
    /// Add a key of AUTHGATE_JWT_ALG: published at once, signing after
    /// AUTHGATE_KEY_PUBLISH_LEAD.
    Rotate(KeyCommandArgs),
    /// Revoke a key at once: tokens it signed are refused everywhere. If it
    /// was signing, a new key signs in its place at once.
    Revoke {
        /// The key id (`kid`). A kid may start with `-` (it is base64url),
        /// so it is never taken for an option.
        #[arg(allow_hyphen_values = true)]
        kid: String,
        #[command(flatten)]
        args: KeyCommandArgs,
    },
    /// Add a key from a PEM private key (PKCS#8 Ed25519, P-256 or RSA of at
    /// least 2048 bits), on standby like a rotation.
    Import {
        /// The PEM file.
        file: std::path::PathBuf,
        #[command(flatten)]
        args: KeyCommandArgs,
    },
}

/// `authgate clients …`.
#[derive(Debug, Clone, Subcommand)]
pub enum ClientsCommand {
    /// Register a client; prints `{"client_id", "client_secret"?}` as one
    /// line. The secret of a confidential client is shown this once.
    Create {
        /// Shown to users on the consent page.
        #[arg(long)]
        name: String,
        /// Where codes may be sent, compared exactly (repeatable).
        #[arg(long = "redirect-uri", num_args = 1..)]
        redirect_uris: Vec<String>,
        /// A SPA or mobile app: no secret, PKCE only.
        #[arg(long)]
        public: bool,
        /// Trusted: its users are not asked for consent.
        #[arg(long)]
        first_party: bool,
        /// What it may ask for (default: openid profile email offline_access).
        #[arg(long = "scope", num_args = 1..)]
        scopes: Option<Vec<String>>,
        /// Where RP-initiated logout may send the user back (repeatable).
        #[arg(long = "post-logout-redirect-uri", num_args = 1..)]
        post_logout_redirect_uris: Vec<String>,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Every client, without secrets.
    List(DatabaseArgs),
    /// Delete a client: its secret and what it was given stop working.
    Delete {
        client_id: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// What a key command needs: the database and the key settings.
#[derive(Debug, Clone, clap::Args)]
pub struct KeyCommandArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub keys: KeyArgs,
    /// Lifetime of access tokens: how long a replaced key stays published.
    #[arg(long, env = "AUTHGATE_ACCESS_TOKEN_TTL", default_value = "15m",
          value_parser = humantime::parse_duration)]
    pub access_token_ttl: std::time::Duration,
}

const COMMANDS: [&str; 8] = [
    "serve",
    "migrate",
    "create-admin",
    "keys",
    "clients",
    "openapi",
    "hash-benchmark",
    "help",
];

/// `authgate [FLAGS]` means `authgate serve [FLAGS]`: without a command
/// name, `serve` is put in front, so that its flags and environment belong
/// to `serve` alone and no other command accepts (and ignores) them.
fn with_default_command(args: Vec<OsString>) -> Vec<OsString> {
    let named = args.iter().skip(1).any(|a| {
        let a = a.to_string_lossy();
        COMMANDS.contains(&a.as_ref()) || ["-h", "--help", "-V", "--version"].contains(&a.as_ref())
    });
    if named {
        return args;
    }
    let mut with = args;
    with.insert(1.min(with.len()), "serve".into());
    with
}

/// Parses the command line and checks the settings that only make sense
/// together; every error comes back as a clap error.
pub fn parse(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let cli = Cli::try_parse_from(with_default_command(args))?;
    let argon2 = match &cli.command {
        Command::Serve(config) => Some(&config.argon2),
        Command::CreateAdmin { argon2, .. } | Command::HashBenchmark { argon2, .. } => Some(argon2),
        Command::Migrate(_) | Command::Openapi | Command::Keys(_) | Command::Clients(_) => None,
    };
    if let Some(Err(why)) = argon2.map(Argon2Args::try_params) {
        return Err(Cli::command().error(ErrorKind::ValueValidation, why));
    }
    Ok(cli)
}

/// Runs the command line; errors print as one line.
pub fn run() -> ExitCode {
    let cli = match parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            eprintln!("authgate: {}", one_line(&e));
            return ExitCode::from(2);
        }
    };
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::from(e)),
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(config) => serve(*config).await,
            Command::Migrate(database) => migrate(&database).await,
            Command::Keys(command) => keys(command).await,
            Command::Clients(command) => clients(command).await,
            Command::Openapi => {
                println!("{}", http::openapi().to_pretty_json()?);
                Ok(())
            }
            Command::HashBenchmark {
                duration,
                hash_workers,
                argon2,
            } => hash_benchmark(&argon2, config::hash_workers(hash_workers), duration).await,
            Command::CreateAdmin {
                email,
                username,
                promote,
                database,
                argon2,
            } => create_admin(&database, &argon2, &email, username.as_deref(), promote).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// clap's error as one line, naming the environment variable of the setting
/// too, since that is how most deployments set it.
fn one_line(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let mut first = rendered
        .lines()
        .next()
        .unwrap_or("invalid arguments")
        .to_owned();
    let arg = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => {
            let long = arg
                .trim_start_matches("--")
                .split([' ', '='])
                .next()
                .unwrap_or("")
                .to_owned();
            let command = Cli::command();
            let all: Vec<clap::Arg> = command
                .get_arguments()
                .chain(command.get_subcommands().flat_map(|c| c.get_arguments()))
                .cloned()
                .collect();
            all.into_iter()
                .find(|a| a.get_long() == Some(long.as_str()))
        }
        _ => None,
    };
    let Some(arg) = arg else { return first };
    // A refused secret is not echoed back into a terminal or a log.
    if arg.is_hide_env_values_set()
        && let Some(ContextValue::String(value)) = e.get(ContextKind::InvalidValue)
        && !value.is_empty()
    {
        first = first.replace(value.as_str(), "[REDACTED]");
    }
    match arg.get_env() {
        Some(env) => format!("{first} (environment variable {})", env.to_string_lossy()),
        None => first,
    }
}

fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("authgate: error: {e:#}");
    ExitCode::FAILURE
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let app = Application::build(config).await?;
    tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "ready");
    app.run_until(shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn migrate(database: &DatabaseArgs) -> anyhow::Result<()> {
    app::migrate(database).await?;
    println!("migrations applied");
    Ok(())
}

async fn keys(command: KeysCommand) -> anyhow::Result<()> {
    let args = match &command {
        KeysCommand::List(args) | KeysCommand::Rotate(args) => args,
        KeysCommand::Revoke { args, .. } | KeysCommand::Import { args, .. } => args,
    };
    let (keys, audit) =
        app::command_keys(&args.database, &args.keys, args.access_token_ttl).await?;
    let client = crate::auth::Client::new(
        std::net::IpAddr::from([127, 0, 0, 1]),
        Some("authgate keys (command line)"),
    );
    let shown = |key| serde_json::to_string(&http::KeyView::from(key));
    match command {
        KeysCommand::List(_) => {
            let list: Vec<http::KeyView> = keys.list().into_iter().map(Into::into).collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        KeysCommand::Rotate(_) => {
            let key = keys.rotate(&client, None, &audit).await?;
            println!("{}", shown(key)?);
        }
        KeysCommand::Revoke { kid, .. } => match keys.revoke(&kid, &client, None, &audit).await {
            Err(crate::auth::AuthError::NotFound) => anyhow::bail!("no key {kid}"),
            result => println!("{}", shown(result?)?),
        },
        KeysCommand::Import { file, .. } => {
            let pem = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
            let key = keys.import(&pem, &client, None, &audit).await?;
            println!("{}", shown(key)?);
        }
    }
    Ok(())
}

async fn clients(command: ClientsCommand) -> anyhow::Result<()> {
    let database = match &command {
        ClientsCommand::Create { database, .. } | ClientsCommand::Delete { database, .. } => {
            database
        }
        ClientsCommand::List(database) => database,
    };
    let clients = app::command_clients(database).await?;
    let by = crate::auth::Client::new(
        std::net::IpAddr::from([127, 0, 0, 1]),
        Some("authgate clients (command line)"),
    );
    match command {
        ClientsCommand::Create {
            name,
            redirect_uris,
            public,
            first_party,
            scopes,
            post_logout_redirect_uris,
            ..
        } => {
            let request = ClientRequest {
                name: &name,
                redirect_uris: &redirect_uris,
                post_logout_redirect_uris: &post_logout_redirect_uris,
                scopes: scopes.as_deref(),
                public,
                first_party,
            };
            let new = request.parse().map_err(|errors| {
                let all: Vec<String> = errors
                    .iter()
                    .map(|(field, why)| format!("{field} {why}"))
                    .collect();
                anyhow::anyhow!("{}", all.join("; "))
            })?;
            let created = clients.create(new, &by, None).await?;
            let mut line = serde_json::json!({ "client_id": created.client.id });
            if let Some(secret) = created.secret {
                line["client_secret"] = secret.into();
            }
            println!("{line}");
        }
        ClientsCommand::List(_) => {
            let list: Vec<http::ClientView> =
                clients.list().await?.into_iter().map(Into::into).collect();
            println!("{}", serde_json::to_string_pretty(&list)?);
        }
        ClientsCommand::Delete { client_id, .. } => {
            match clients.delete(&client_id, &by, None).await {
                Err(crate::auth::AuthError::NotFound) => anyhow::bail!("no client {client_id}"),
                result => result?,
            }
            println!("deleted client {client_id}");
        }
    }
    Ok(())
}

fn read_password() -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Repeat password: ")?;
        anyhow::ensure!(first == again, "the passwords do not match");
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}

async fn create_admin(
    database: &DatabaseArgs,
    argon2: &Argon2Args,
    email: &str,
    username: Option<&str>,
    promote: bool,
) -> anyhow::Result<()> {
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("--email {e}"))?;
    let username = username
        .map(Username::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--username {e}"))?;
    let accounts = app::command_accounts(database, argon2).await?;
    let password = || {
        let raw = read_password()?;
        Password::parse(&raw, username.as_ref(), Some(&email))
            .map_err(|e| anyhow::anyhow!("password {e}"))
    };
    let if_exists = if promote {
        IfExists::Promote
    } else {
        IfExists::Refuse
    };
    match accounts
        .create_admin(email.clone(), username.clone(), password, if_exists)
        .await?
    {
        AdminOutcome::Created(user) => println!("created admin {}", user.id),
        AdminOutcome::Promoted(user) => println!("promoted {} to admin", user.id),
        AdminOutcome::Kept(user) => println!("{} is already an admin", user.id),
    }
    Ok(())
}

async fn hash_benchmark(
    argon2: &Argon2Args,
    workers: usize,
    duration: std::time::Duration,
) -> anyhow::Result<()> {
    let hasher = PasswordHasher::new(argon2.params()?, workers, workers * 2, workers * 2)?;
    let (total, elapsed) = hasher.measure(workers, duration).await?;
    let elapsed = elapsed.as_secs_f64();
    let report = serde_json::json!({
        "hashes": total,
        "seconds": elapsed,
        "hashes_per_second": total as f64 / elapsed,
        "workers": workers,
        "memory_kib": argon2.memory_kib,
        "iterations": argon2.iterations,
        "parallelism": argon2.parallelism,
    });
    println!("{report}");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
