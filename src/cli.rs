//! The command line: `serve` (default), `migrate`, `create-admin`.

use std::{
    io::{BufRead, IsTerminal},
    process::ExitCode,
};

use clap::{
    CommandFactory, Parser, Subcommand,
    error::{ContextKind, ContextValue, ErrorKind},
};
use secrecy::SecretString;
use uuid::Uuid;

use crate::{
    clock,
    config::Config,
    crypto::passwords::PasswordHasher,
    domain::{Email, Password, Role, Roles, Username},
    startup::{Application, argon2_params},
    store::{self, NewUser, StoreError},
    telemetry,
};

#[derive(Debug, Parser)]
#[command(
    name = "authgate",
    version,
    about = "Authentication and authorization service"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Create an admin account. The password is read from standard input
    /// (prompted for on a terminal), never from the command line.
    CreateAdmin {
        #[arg(long)]
        email: String,
        #[arg(long)]
        username: Option<String>,
    },
    /// Measure this machine's password hashing rate with the configured
    /// argon2id parameters on every hashing worker, and print it as JSON.
    /// Useful to size AUTHGATE_HASH_WORKERS and to compare login throughput with.
    HashBenchmark {
        /// How long to measure.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
    },
}

/// Runs the command line; errors print as one line.
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            eprintln!("authgate: {}", one_line(&e));
            return ExitCode::from(2);
        }
    };
    telemetry::init(cli.config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::from(e)),
    };
    let result = runtime.block_on(async move {
        match cli.command.clone().unwrap_or(Command::Serve) {
            Command::Serve => serve(cli.config).await,
            Command::Migrate => migrate(cli.config).await,
            Command::HashBenchmark { duration } => hash_benchmark(cli.config, duration).await,
            Command::CreateAdmin { email, username } => {
                create_admin(cli.config, &email, username.as_deref()).await
            }
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
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    let env = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => {
            let long = arg
                .trim_start_matches("--")
                .split([' ', '='])
                .next()
                .unwrap_or("");
            Cli::command()
                .get_arguments()
                .find(|a| a.get_long() == Some(long))
                .and_then(|a| a.get_env())
                .map(|env| env.to_string_lossy().into_owned())
        }
        _ => None,
    };
    match env {
        Some(env) => format!("{first} (environment variable {env})"),
        None => first.to_owned(),
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

async fn migrate(config: Config) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    store::open(&config.database_url).await?;
    println!("migrations applied");
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

async fn create_admin(config: Config, email: &str, username: Option<&str>) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("--email {e}"))?;
    let username = username
        .map(Username::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--username {e}"))?;
    let raw = read_password()?;
    let password = Password::parse(&raw, username.as_ref(), Some(&email))
        .map_err(|e| anyhow::anyhow!("password {e}"))?;
    let store = store::open(&config.database_url).await?;
    let hasher = PasswordHasher::new(argon2_params(&config)?, 1, 1)?;
    let hash = hasher
        .hash(SecretString::from(password.expose()))
        .await
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
    let user = NewUser {
        id: Uuid::now_v7(),
        username,
        email: Some(email),
        password_hash: hash,
        roles: Roles::new([Role::admin(), Role::user()]),
        created_at: clock::now(),
    };
    match store.create_user(&user).await {
        Ok(user) => {
            println!("created admin {}", user.id);
            Ok(())
        }
        Err(StoreError::Conflict(field)) => {
            anyhow::bail!("a user with that {field} already exists")
        }
        Err(e) => Err(e.into()),
    }
}

async fn hash_benchmark(config: Config, duration: std::time::Duration) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let workers = config.hash_workers();
    let hasher = PasswordHasher::new(argon2_params(&config)?, workers, workers * 2)?;
    let started = std::time::Instant::now();
    let deadline = started + duration;
    // One client per worker keeps every worker busy without queueing.
    let clients: Vec<_> = (0..workers)
        .map(|_| {
            let hasher = hasher.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while std::time::Instant::now() < deadline {
                    hasher
                        .hash(SecretString::from("benchmark password"))
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    done += 1;
                }
                anyhow::Ok(done)
            })
        })
        .collect();
    let mut total = 0;
    for client in clients {
        total += client.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "hashes": total,
        "seconds": elapsed,
        "hashes_per_second": total as f64 / elapsed,
        "workers": workers,
        "memory_kib": config.argon2_memory_kib,
        "iterations": config.argon2_iterations,
        "parallelism": config.argon2_parallelism,
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
