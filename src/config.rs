//! Typed configuration. Every setting has a command-line flag and an
//! environment variable; flags win over the environment, which wins over the
//! defaults. Each command takes only the settings it uses, and every value is
//! checked while it is parsed (here, in one place), so a bad one stops the
//! command with a message naming it. Secrets are wrapped so they never reach
//! logs or `Debug` output.

use std::{fmt, net::SocketAddr, num::NonZeroUsize, str::FromStr, time::Duration};

use clap::{Args, ValueEnum, builder::TypedValueParser as _};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

use crate::crypto::{sealing::SealingKey, signing::SigningAlgorithm};

/// Where the data lives; every command that touches the database takes it.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Database to use: `sqlite://FILE?mode=rwc` or `postgres://USER:PASS@HOST/DB`.
    #[arg(
        long = "database-url",
        env = "DATABASE_URL",
        default_value = "sqlite://authgate.db?mode=rwc"
    )]
    pub url: DatabaseUrl,
}

/// Argon2id parameters (OWASP's recommendation by default). Each is checked
/// as it is parsed; [`Argon2Args::params`] checks them together.
#[derive(Debug, Clone, Args)]
pub struct Argon2Args {
    /// Argon2id memory cost in KiB (OWASP: 19456; below 7168, OWASP's least,
    /// is refused).
    #[arg(long = "argon2-memory-kib", env = "AUTHGATE_ARGON2_MEMORY_KIB", default_value_t = 19_456,
          value_parser = clap::value_parser!(u32).range(7168..))]
    pub memory_kib: u32,

    /// Argon2id iterations (OWASP: 2).
    #[arg(long = "argon2-iterations", env = "AUTHGATE_ARGON2_ITERATIONS", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub iterations: u32,

    /// Argon2id parallelism (OWASP: 1).
    #[arg(long = "argon2-parallelism", env = "AUTHGATE_ARGON2_PARALLELISM", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=0xFF_FFFF))]
    pub parallelism: u32,
}

impl Argon2Args {
    /// The parameters, or why they do not go together.
    pub fn try_params(&self) -> Result<argon2::Params, String> {
        argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| format!("AUTHGATE_ARGON2_* parameters are invalid: {e}"))
    }

    /// The parameters; parsing the command line has checked them (see `cli`).
    pub fn params(&self) -> anyhow::Result<argon2::Params> {
        self.try_params().map_err(anyhow::Error::msg)
    }

    /// Less work per hash than any of OWASP's settings: allowed, but odd.
    fn weaker_than_owasp(&self) -> bool {
        u64::from(self.memory_kib) * u64::from(self.iterations) < OWASP_MIN_WORK
    }
}

/// The settings of the service (`authgate serve`). Every value is checked as
/// it is parsed, so a `Config` that exists is valid.
#[derive(Debug, Clone, Args)]
pub struct Config {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Address and port to listen on.
    #[arg(long, env = "AUTHGATE_LISTEN", default_value = "127.0.0.1:8010")]
    pub listen: SocketAddr,

    /// Address of a separate listener serving Prometheus metrics at
    /// `/metrics` (off unless set; keep it off the public network).
    #[arg(long, env = "AUTHGATE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// A request head must be whole within this time of its first byte, and
    /// an answer the client stops reading is abandoned after it.
    #[arg(long, env = "AUTHGATE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = duration_within("100ms", "5m"))]
    pub header_read_timeout: Duration,

    /// A connection with no request under way and nothing arriving is closed
    /// after this long. Keep it above the idle timeout of a proxy in front
    /// (60 s for nginx and most load balancers), so that the proxy closes
    /// first and never sends on a connection being closed.
    #[arg(long, env = "AUTHGATE_IDLE_TIMEOUT", default_value = "75s", value_parser = duration_within("100ms", "1h"))]
    pub idle_timeout: Duration,

    /// A request body that sends nothing for this long is answered 408.
    #[arg(long, env = "AUTHGATE_BODY_READ_TIMEOUT", default_value = "10s", value_parser = duration_within("100ms", "5m"))]
    pub body_read_timeout: Duration,

    /// Connections open at once; one more is answered 503 and closed
    /// (kept below the open-file limit).
    #[arg(long, env = "AUTHGATE_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_connections: usize,

    /// Connections open at once from one client address (an IPv6 client
    /// counted by its /64); one more is answered 503 and closed.
    #[arg(long, env = "AUTHGATE_MAX_CONNECTIONS_PER_IP", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_connections_per_ip: usize,

    /// On SIGTERM or Ctrl-C, how long requests in flight may take to finish
    /// before the process exits anyway.
    #[arg(long, env = "AUTHGATE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = duration_within("0s", "5m"))]
    pub shutdown_timeout: Duration,

    /// HS256 signing key, at least 32 bytes, for a single service that
    /// verifies its own tokens. If unset, signing keys are generated and
    /// kept in the database (see AUTHGATE_JWT_ALG).
    #[arg(long, env = "AUTHGATE_JWT_SECRET", hide_env_values = true, value_parser = parse_jwt_secret)]
    pub jwt_secret: Option<Secret>,

    /// `iss` claim of issued access tokens, and the only issuer accepted
    /// (default: AUTHGATE_PUBLIC_URL, as OpenID Connect discovery expects).
    #[arg(long, env = "AUTHGATE_ISSUER", value_parser = non_empty)]
    pub issuer: Option<String>,

    /// The name authenticator apps show beside a TOTP factor.
    #[arg(long, env = "AUTHGATE_MFA_ISSUER", default_value = "authgate", value_parser = non_empty)]
    pub mfa_issuer: String,

    /// The WebAuthn relying party ID passkeys are bound to: the domain of
    /// AUTHGATE_WEBAUTHN_ORIGIN or one above it (`example.com` for
    /// `https://login.example.com`). Changing it orphans every passkey.
    #[arg(long, env = "AUTHGATE_WEBAUTHN_RP_ID", default_value = "localhost", value_parser = non_empty)]
    pub webauthn_rp_id: String,

    /// The origin of the pages that register and use passkeys; answers
    /// from any other origin are refused.
    #[arg(long, env = "AUTHGATE_WEBAUTHN_ORIGIN", default_value = "http://localhost:8010", value_parser = parse_origin)]
    pub webauthn_origin: String,

    /// The service's name as authenticators show it beside a passkey.
    #[arg(long, env = "AUTHGATE_WEBAUTHN_RP_NAME", default_value = "authgate", value_parser = non_empty)]
    pub webauthn_rp_name: String,

    /// `aud` claim of issued access tokens, and the only audience accepted.
    #[arg(long, env = "AUTHGATE_AUDIENCE", default_value = "authgate", value_parser = non_empty)]
    pub audience: String,

    /// Lifetime of access tokens (e.g. `15m`).
    #[arg(long, env = "AUTHGATE_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = duration_within("1s", "1d"))]
    pub access_token_ttl: Duration,

    /// Lifetime of a refresh token: a session unused for this long ends.
    #[arg(long, env = "AUTHGATE_REFRESH_TOKEN_TTL", default_value = "7d", value_parser = duration_within("1m", "3650d"))]
    pub refresh_token_ttl: Duration,

    /// How long after a refresh the refresh token just used still gives the
    /// same new pair (tabs refreshing at once converge instead of logging
    /// the user out); `0s`: strict, any second use ends the session.
    #[arg(long, env = "AUTHGATE_REFRESH_REUSE_GRACE", default_value = "10s", value_parser = duration_within("0s", "1m"))]
    pub refresh_reuse_grace: Duration,

    /// Absolute lifetime of a session: refreshing never extends it past this.
    #[arg(long, env = "AUTHGATE_SESSION_MAX_AGE", default_value = "30d", value_parser = duration_within("1m", "3650d"))]
    pub session_max_age: Duration,

    /// Email of an admin account to create at start-up if it does not exist.
    #[arg(long, env = "AUTHGATE_ADMIN_EMAIL", requires = "admin_password")]
    pub admin_email: Option<String>,

    /// Password of that admin account.
    #[arg(
        long,
        env = "AUTHGATE_ADMIN_PASSWORD",
        hide_env_values = true,
        requires = "admin_email"
    )]
    pub admin_password: Option<Secret>,

    /// Comma-separated CIDRs of reverse proxies whose `X-Forwarded-For` is trusted.
    #[arg(long, env = "AUTHGATE_TRUSTED_PROXIES", value_delimiter = ',',
          value_parser = parse_trusted_proxy)]
    pub trusted_proxies: Vec<IpNet>,

    /// Password hashes computed at once (default: the number of CPU cores).
    #[arg(long, env = "AUTHGATE_HASH_WORKERS")]
    pub hash_workers: Option<NonZeroUsize>,

    /// Password hashes allowed to wait for a worker before requests get 503.
    #[arg(long, env = "AUTHGATE_HASH_QUEUE", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub hash_queue: usize,

    /// Password hashes one client IP may have waiting before its requests
    /// get 429; clients' hashes are served in turn.
    #[arg(long, env = "AUTHGATE_HASH_QUEUE_PER_CLIENT", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub hash_queue_per_client: usize,

    #[command(flatten)]
    pub argon2: Argon2Args,

    /// Failed logins per account and client IP before back-off starts.
    #[arg(long, env = "AUTHGATE_LOGIN_FREE_FAILURES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub login_free_failures: u32,

    /// Failed logins per client IP (any account) before back-off starts.
    #[arg(long, env = "AUTHGATE_LOGIN_IP_FREE_FAILURES", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub login_ip_free_failures: u32,

    /// Login attempts per client IP per minute, successful or not.
    #[arg(long, env = "AUTHGATE_LOGIN_PER_MINUTE", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub login_per_minute: u32,

    /// Login attempts per account and client IP per minute, successful or not.
    #[arg(long, env = "AUTHGATE_LOGIN_ACCOUNT_PER_MINUTE", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub login_account_per_minute: u32,

    /// Signups allowed per client IP per minute.
    #[arg(long, env = "AUTHGATE_SIGNUP_PER_MINUTE", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub signup_per_minute: u32,

    /// Token refreshes allowed per client IP per minute.
    #[arg(long, env = "AUTHGATE_REFRESH_PER_MINUTE", default_value_t = 600,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub refresh_per_minute: u32,

    /// Usernames nobody may sign up with, compared ignoring case and `.`,
    /// `_`, `-` (an admin can still create them). Empty to reserve none.
    #[arg(
        long,
        env = "AUTHGATE_RESERVED_USERNAMES",
        value_delimiter = ',',
        default_value = "admin,administrator,root,system,support,security,authgate"
    )]
    pub reserved_usernames: Vec<String>,

    /// Where throttling state lives: `memory` (this process only), `database`
    /// (shared by every instance on the database), `redis` (shared, in
    /// AUTHGATE_REDIS_URL), or `auto`: redis if AUTHGATE_REDIS_URL is set,
    /// else the database with PostgreSQL and memory with SQLite.
    #[arg(long, env = "AUTHGATE_RATE_LIMIT_STORE", value_enum, default_value_t = LimitBackend::Auto)]
    pub rate_limit_store: LimitBackend,

    /// Redis server for shared throttling state: `redis://[:PASSWORD@]HOST[:PORT][/DB]`.
    #[arg(long, env = "AUTHGATE_REDIS_URL", hide_env_values = true, value_parser = parse_redis_url)]
    pub redis_url: Option<Secret>,

    /// Prefix of every Redis key, so that deployments can share one server.
    #[arg(long, env = "AUTHGATE_REDIS_PREFIX", default_value = "authgate", value_parser = redis_prefix)]
    pub redis_prefix: String,

    /// How often expired sessions and tokens are deleted.
    #[arg(long, env = "AUTHGATE_PURGE_INTERVAL", default_value = "10m", value_parser = duration_within("100ms", "1d"))]
    pub purge_interval: Duration,

    /// Security events older than this are deleted from the audit log (and
    /// sent or given-up mail from the outbox).
    #[arg(long, env = "AUTHGATE_AUDIT_RETENTION", default_value = "90d", value_parser = duration_within("1d", "3650d"))]
    pub audit_retention: Duration,

    #[command(flatten)]
    pub mail: MailArgs,

    #[command(flatten)]
    pub keys: KeyArgs,

    /// Comma-separated origins (`https://app.example.com`) whose pages may
    /// use cookie sessions (`?transport=cookie`); default: the origin of
    /// AUTHGATE_PUBLIC_URL.
    #[arg(long, env = "AUTHGATE_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub allowed_origins: Vec<String>,
    /// The logo shown on the hosted pages (login, consent, account): an
    /// https URL, or http on a loopback host. Colours: override the CSS
    /// variables of /oauth/pages.css in front of the service.
    #[arg(long, env = "AUTHGATE_PAGES_LOGO_URL", value_parser = parse_logo_url)]
    pub pages_logo_url: Option<String>,

    /// Comma-separated origins allowed to call the API from browsers (CORS,
    /// with credentials). Empty (the default): no CORS headers at all.
    #[arg(long, env = "AUTHGATE_CORS_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub cors_origins: Vec<String>,

    /// Comma-separated `id:secret` pairs of resource servers that may call
    /// `POST /auth/introspect` with HTTP Basic or form credentials (admins
    /// may with their token). Each secret at least 16 characters.
    #[arg(long, env = "AUTHGATE_INTROSPECTION_CLIENTS", hide_env_values = true,
          value_delimiter = ',', value_parser = parse_client)]
    pub introspection_clients: Vec<ClientSecret>,
}

/// A client id and its secret.
#[derive(Clone)]
pub struct ClientSecret {
    pub id: String,
    pub secret: Secret,
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:[REDACTED]", self.id)
    }
}

/// An origin exactly as browsers send it: `scheme://host[:port]`, nothing
/// more (a trailing slash or path would never match).
fn parse_origin(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    let url = url::Url::parse(raw).map_err(|e| format!("{raw} is not an origin: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("{raw} is not an http(s) origin"));
    }
    let origin = url.origin().ascii_serialization();
    if origin != raw {
        return Err(format!("{raw} is not an origin; write it as {origin}"));
    }
    Ok(origin)
}

fn parse_client(raw: &str) -> Result<ClientSecret, String> {
    let (id, secret) = raw
        .trim()
        .split_once(':')
        .ok_or("expected id:secret pairs")?;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a client id must be printable ASCII without spaces".into());
    }
    if secret.chars().count() < 16 {
        return Err(format!(
            "the secret of client {id} must be at least 16 characters"
        ));
    }
    Ok(ClientSecret {
        id: id.to_owned(),
        secret: Secret::from(secret.to_owned()),
    })
}

/// Signing keys: their algorithm, sealing and rotation.
#[derive(Debug, Clone, Args)]
pub struct KeyArgs {
    /// Algorithm of new signing keys: EdDSA (Ed25519, the default), ES256,
    /// RS256, or HS256 (symmetric, never published: for a single service
    /// only). With AUTHGATE_JWT_SECRET the only choice is HS256.
    #[arg(long, env = "AUTHGATE_JWT_ALG")]
    pub jwt_alg: Option<SigningAlgorithm>,

    /// 32 random bytes (base64 or hex, e.g. `openssl rand -base64 32`) that
    /// seal private signing keys in the database with AES-256-GCM.
    #[arg(long, env = "AUTHGATE_KEY_ENCRYPTION_KEY", hide_env_values = true,
          value_parser = parse_sealing_key)]
    pub key_encryption_key: Option<SealingKey>,

    /// How long a new signing key is published before it signs: at least
    /// twice the 5-minute JWKS cache time, so every verifier has it first.
    #[arg(long, env = "AUTHGATE_KEY_PUBLISH_LEAD", default_value = "1h",
          value_parser = duration_within("10m", "30d"))]
    pub key_publish_lead: Duration,

    /// How often a new signing key is made (`off`: only by `authgate keys
    /// rotate` or `POST /admin/keys/rotate`).
    #[arg(long, env = "AUTHGATE_KEY_ROTATION", default_value = "30d",
          value_parser = parse_rotation)]
    pub key_rotation: KeyRotation,
}

/// `AUTHGATE_KEY_ROTATION`: a period, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRotation(pub Option<Duration>);

fn parse_rotation(raw: &str) -> Result<KeyRotation, String> {
    if raw.trim().eq_ignore_ascii_case("off") {
        return Ok(KeyRotation(None));
    }
    duration_within("1h", "3650d")(raw).map(|d| KeyRotation(Some(d)))
}

fn parse_sealing_key(raw: &str) -> Result<SealingKey, String> {
    SealingKey::parse(raw)
}

impl KeyArgs {
    /// The algorithm of new keys, given whether a JWT secret is configured.
    pub fn algorithm(&self, has_secret: bool) -> anyhow::Result<SigningAlgorithm> {
        match (self.jwt_alg, has_secret) {
            (None, false) => Ok(SigningAlgorithm::EdDsa),
            (None | Some(SigningAlgorithm::Hs256), true) => Ok(SigningAlgorithm::Hs256),
            (Some(alg), true) => anyhow::bail!(
                "AUTHGATE_JWT_SECRET is an HS256 key but AUTHGATE_JWT_ALG is {alg}: \
                 unset one of them"
            ),
            (Some(alg), false) => Ok(alg),
        }
    }

    /// Settings that cannot work together.
    pub fn check(&self) -> anyhow::Result<()> {
        if let KeyRotation(Some(period)) = self.key_rotation
            && period <= self.key_publish_lead
        {
            anyhow::bail!(
                "AUTHGATE_KEY_ROTATION must be longer than AUTHGATE_KEY_PUBLISH_LEAD, \
                 or every new key would be replaced before it signs"
            );
        }
        Ok(())
    }
}

/// Mail, and the flows that go through a mailed link.
#[derive(Debug, Clone, Args)]
pub struct MailArgs {
    /// Where the links in mail point: the address users reach authgate (or
    /// the app that fronts it) at.
    #[arg(long, env = "AUTHGATE_PUBLIC_URL", default_value = "http://127.0.0.1:8010", value_parser = parse_public_url)]
    pub public_url: String,

    /// SMTP server: `smtp://user:pass@host:587?tls=starttls`, `smtps://user:pass@host:465`,
    /// or `smtp://host:25` without TLS or login. Unset: mail is written to
    /// AUTHGATE_MAIL_OUTBOX instead.
    #[arg(long, env = "AUTHGATE_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<Secret>,

    /// The sender of every mail (`Name <address>`).
    #[arg(long, env = "AUTHGATE_MAIL_FROM", default_value = "authgate <authgate@localhost>", value_parser = non_empty)]
    pub mail_from: String,

    /// Directory each mail is written to as an `.eml` file when no SMTP
    /// server is set.
    #[arg(long, env = "AUTHGATE_MAIL_OUTBOX", default_value = "./outbox")]
    pub mail_outbox: std::path::PathBuf,

    /// Attempts to send a mail before it is given up.
    #[arg(long, env = "AUTHGATE_MAIL_MAX_ATTEMPTS", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub mail_max_attempts: u32,

    /// The wait before a failed mail's first retry; each later one doubles
    /// (up to an hour).
    #[arg(long, env = "AUTHGATE_MAIL_RETRY_AFTER", default_value = "30s", value_parser = duration_within("1s", "1h"))]
    pub mail_retry_after: Duration,

    /// Mails one address may receive per hour (links and notices).
    #[arg(long, env = "AUTHGATE_MAIL_PER_RECIPIENT_PER_HOUR", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub mail_per_recipient_per_hour: u32,

    /// Mails one client IP may cause per hour.
    #[arg(long, env = "AUTHGATE_MAIL_PER_IP_PER_HOUR", default_value_t = 30,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub mail_per_ip_per_hour: u32,

    /// Users must verify their email address before they can log in.
    #[arg(long, env = "AUTHGATE_REQUIRE_VERIFIED_EMAIL", default_value = "false",
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub require_verified_email: bool,

    /// How long an email verification link works.
    #[arg(long, env = "AUTHGATE_VERIFY_EMAIL_TTL", default_value = "24h", value_parser = duration_within("1m", "30d"))]
    pub verify_email_ttl: Duration,

    /// How long a password reset link works.
    #[arg(long, env = "AUTHGATE_PASSWORD_RESET_TTL", default_value = "30m", value_parser = duration_within("1m", "1d"))]
    pub password_reset_ttl: Duration,

    /// How long a link confirming a new email address works.
    #[arg(long, env = "AUTHGATE_EMAIL_CHANGE_TTL", default_value = "1h", value_parser = duration_within("1m", "7d"))]
    pub email_change_ttl: Duration,
}

impl Config {
    /// The `iss` of issued tokens.
    pub fn issuer(&self) -> String {
        self.issuer
            .clone()
            .unwrap_or_else(|| self.mail.public_url.trim_end_matches('/').to_owned())
    }

    pub fn hash_workers(&self) -> usize {
        hash_workers(self.hash_workers)
    }

    /// Settings that are allowed but probably not meant: each a sentence
    /// naming the settings, logged at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.refresh_token_ttl > self.session_max_age {
            warnings.push(
                "AUTHGATE_REFRESH_TOKEN_TTL is longer than AUTHGATE_SESSION_MAX_AGE: \
                 refresh tokens end with their session anyway"
                    .to_owned(),
            );
        }
        if self.access_token_ttl > self.refresh_token_ttl {
            warnings.push(
                "AUTHGATE_ACCESS_TOKEN_TTL is longer than AUTHGATE_REFRESH_TOKEN_TTL".to_owned(),
            );
        }
        if self.argon2.weaker_than_owasp() {
            warnings.push(
                "AUTHGATE_ARGON2_MEMORY_KIB × AUTHGATE_ARGON2_ITERATIONS is below every \
                 OWASP argon2id setting (e.g. 19456 KiB × 2)"
                    .to_owned(),
            );
        }
        if self.mail.public_url.starts_with("http://")
            && !self.mail.public_url.contains("://127.0.0.1")
            && !self.mail.public_url.contains("://localhost")
        {
            warnings.push(format!(
                "AUTHGATE_PUBLIC_URL {} is plain http: reset and verification links \
                 would travel unencrypted",
                self.mail.public_url
            ));
        }
        // The pages' passkeys answer to the WebAuthn origin; forms post to
        // the public URL's. On loopback both names serve.
        let public_origin = url::Url::parse(&self.mail.public_url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        if public_origin != self.webauthn_origin
            && !same_loopback(&public_origin, &self.webauthn_origin)
        {
            warnings.push(format!(
                "AUTHGATE_WEBAUTHN_ORIGIN {} is not the origin of AUTHGATE_PUBLIC_URL {}: \
                 passkeys on the hosted pages will be refused",
                self.webauthn_origin, public_origin
            ));
        }
        for net in &self.trusted_proxies {
            if !is_private(net) {
                warnings.push(format!(
                    "AUTHGATE_TRUSTED_PROXIES {net} includes public addresses: \
                     every client there can choose its own address"
                ));
            }
        }
        warnings
    }
}

/// Whether two origins are one loopback server by two names (`localhost`
/// and `127.0.0.1`, say, on one port): a service on loopback is reached by
/// either, and passkeys work only by name. The port must match, so no
/// other server on the machine passes.
pub fn same_loopback(a: &str, b: &str) -> bool {
    let loopback = |origin: &str| {
        let url = url::Url::parse(origin).ok()?;
        let host = match url.host()? {
            url::Host::Domain(name) => name == "localhost",
            url::Host::Ipv4(ip) => ip.is_loopback(),
            url::Host::Ipv6(ip) => ip.is_loopback(),
        };
        (host && url.scheme() == "http").then(|| url.port_or_known_default())?
    };
    loopback(a).is_some_and(|port| loopback(b) == Some(port))
}

/// Loopback, private (RFC 1918, unique local) or link-local networks only.
fn is_private(net: &IpNet) -> bool {
    match net {
        IpNet::V4(n) => {
            // Both ends: 192.168.0.0/15 starts private and ends public.
            let private =
                |a: std::net::Ipv4Addr| a.is_loopback() || a.is_private() || a.is_link_local();
            private(n.network()) && private(n.broadcast())
        }
        IpNet::V6(n) => {
            let a = n.network();
            let unique_local = (a.segments()[0] & 0xfe00) == 0xfc00 && n.prefix_len() >= 7;
            let link_local = (a.segments()[0] & 0xffc0) == 0xfe80 && n.prefix_len() >= 10;
            (a.is_loopback() && n.prefix_len() == 128) || unique_local || link_local
        }
    }
}

/// The configured number of hashing workers, or one per CPU core.
pub fn hash_workers(configured: Option<NonZeroUsize>) -> usize {
    configured.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        NonZeroUsize::get,
    )
}

/// A parser of durations written `30s`, `15m`, `7d`, from `min` to `max`:
/// a zero or a nanosecond lifetime is no lifetime, and a million years
/// overflows every date.
fn duration_within(
    min: &'static str,
    max: &'static str,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |raw| {
        let bound = |b: &str| humantime::parse_duration(b).expect("a valid bound");
        match humantime::parse_duration(raw) {
            Ok(d) if d < bound(min) || d > bound(max) => {
                Err(format!("must be from {min} to {max}"))
            }
            Ok(d) => Ok(d),
            Err(e) => Err(format!("{e} (expected e.g. 30s, 15m, 7d)")),
        }
    }
}

/// A value that must not be empty.
/// An http(s) URL without query or fragment, kept without a trailing `/`.
fn parse_public_url(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err("must not carry a query, a fragment or credentials".into());
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// The pages' logo: https, or http on the machine itself (development);
/// the pages' policy allows images from its origin.
fn parse_logo_url(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("is not a URL: {e}"))?;
    let local = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match url.scheme() {
        "https" if url.host().is_some() => {}
        "http" if local => {}
        _ => return Err("must be an https:// URL (or http:// on a loopback host)".into()),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    Ok(url.as_str().to_owned())
}

fn non_empty(raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(raw.to_owned())
}

/// RFC 7518 §3.2: an HS256 key must be at least as long as the hash output,
/// and must be random: 32 bytes of one repeated character are 32 bytes, but
/// guessable. The estimate counts each character's surprise in the secret
/// itself (Shannon), so 32 random bytes in hex or base64 pass easily.
fn parse_jwt_secret(raw: &str) -> Result<Secret, String> {
    if raw.len() < 32 {
        return Err("must be at least 32 bytes".into());
    }
    let bits = estimated_entropy_bits(raw);
    let predictable = if bits < MIN_SECRET_BITS {
        Some(format!("about {bits:.0} bits; {MIN_SECRET_BITS:.0} needed"))
    } else if has_runs(raw) {
        Some("it runs through consecutive characters".to_owned())
    } else if has_repeats(raw) {
        Some("a part of it repeats".to_owned())
    } else {
        None
    };
    match predictable {
        Some(why) => Err(format!(
            "looks too predictable ({why}): use 32 random bytes, e.g. \
             `openssl rand -base64 32`"
        )),
        None => Ok(Secret::from(raw.to_owned())),
    }
}

/// Whether a quarter of the steps between neighbours go to the next or the
/// previous character (`abcd…`, `0123…`, `zyx…`): rare in random text.
fn has_runs(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let steps = bytes
        .windows(2)
        .filter(|w| w[1] == w[0].wrapping_add(1) || w[0] == w[1].wrapping_add(1))
        .count();
    steps * 4 >= bytes.len()
}

/// Whether some six characters occur twice (`Password1Password2`): random
/// hex of this length repeats six characters about once in ten thousand.
fn has_repeats(raw: &str) -> bool {
    let bytes = raw.as_bytes();
    let mut seen = std::collections::HashSet::new();
    bytes.windows(6).any(|w| !seen.insert(w))
}

/// The estimate undercounts random text (16 random bytes in hex come out
/// near 115 bits), so the bar sits below the 128 bits such a key carries.
const MIN_SECRET_BITS: f64 = 100.0;

/// The secret's length times the Shannon entropy of its characters.
fn estimated_entropy_bits(raw: &str) -> f64 {
    let mut counts = std::collections::HashMap::new();
    for c in raw.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let len = raw.chars().count() as f64;
    let per_char: f64 = counts
        .values()
        .map(|&n| {
            let p = n as f64 / len;
            -p * p.log2()
        })
        .sum();
    per_char * len
}

/// A trusted proxy network. `0.0.0.0/0` or `::/0` would let every client
/// choose its own address with `X-Forwarded-For`, and so its throttling key.
/// Networks wider than a /8 (IPv4) or a /16 (IPv6) are refused too: two
/// halves of the internet trust it all as surely as one `/0`.
fn parse_trusted_proxy(raw: &str) -> Result<IpNet, String> {
    let net: IpNet = raw.trim().parse().map_err(|e| format!("{e}"))?;
    let widest = match net {
        IpNet::V4(_) => 8,
        IpNet::V6(_) => 16,
    };
    if net.prefix_len() < widest {
        return Err(format!(
            "{net} is too wide to trust (at most a /{widest}): every client in it \
             could choose its own address"
        ));
    }
    Ok(net)
}

/// OWASP's argon2id settings all do at least this much work (m·t, in KiB):
/// 47104·1, 19456·2, 12288·3, 9216·4, 7168·5.
const OWASP_MIN_WORK: u64 = 7168 * 5;

/// Where throttling state lives (see `Config::rate_limit_store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LimitBackend {
    Auto,
    Memory,
    Database,
    Redis,
}

impl Config {
    /// Where throttling state lives, `auto` resolved.
    pub fn limit_backend(&self) -> anyhow::Result<LimitBackend> {
        Ok(match self.rate_limit_store {
            LimitBackend::Auto if self.redis_url.is_some() => LimitBackend::Redis,
            // Several instances on one PostgreSQL database are the reason to
            // choose PostgreSQL: their throttling must be shared, or N
            // instances give an attacker N times the attempts.
            LimitBackend::Auto => match self.database.url.backend() {
                Backend::Postgres => LimitBackend::Database,
                Backend::Sqlite => LimitBackend::Memory,
            },
            LimitBackend::Redis if self.redis_url.is_none() => {
                anyhow::bail!("AUTHGATE_RATE_LIMIT_STORE=redis needs AUTHGATE_REDIS_URL")
            }
            chosen => chosen,
        })
    }
}

/// A Redis URL: `redis://` or `redis+unix://`. TLS (`rediss://`) is not
/// built in: a URL asking for it is refused rather than sent in the clear.
fn parse_redis_url(s: &str) -> Result<Secret, String> {
    let url = url::Url::parse(s).map_err(|e| format!("is not a URL: {e}"))?;
    match url.scheme() {
        "redis" | "redis+unix" | "unix" => Ok(Secret::from(s.to_owned())),
        "rediss" => Err("uses TLS (rediss://), which this build does not support".into()),
        other => Err(format!("has scheme {other}; expected redis://")),
    }
}

fn redis_prefix(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
    {
        return Err("must be 1 to 64 letters, digits, `-`, `_`, `.` or `:`".into());
    }
    Ok(s.to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// A secret setting. `Debug` and `Display` print `[REDACTED]`.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self(SecretString::from(s))
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(SecretString::from(s)))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// A database URL whose `Debug` and `Display` hide the password.
#[derive(Clone)]
pub struct DatabaseUrl(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl DatabaseUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn backend(&self) -> Backend {
        if self.0.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    }
}

impl FromStr for DatabaseUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with("sqlite:")
            || s.starts_with("postgres://")
            || s.starts_with("postgresql://")
        {
            Ok(Self(s.to_owned()))
        } else {
            Err("must start with sqlite:, postgres:// or postgresql://".into())
        }
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match url::Url::parse(&self.0) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("REDACTED"));
                f.write_str(url.as_str())
            }
            _ => f.write_str(&self.0),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

#[cfg(test)]
mod tests {
    mod durations {
        use proptest::prelude::*;

        use super::super::duration_within;

        proptest! {
            #[test]
            fn any_text_is_a_duration_within_the_bounds_or_an_error(raw in "\\PC{0,40}") {
                let parse = duration_within("1s", "1d");
                if let Ok(d) = parse(&raw) {
                    prop_assert!(d >= std::time::Duration::from_secs(1));
                    prop_assert!(d <= std::time::Duration::from_secs(86_400));
                }
            }

            #[test]
            fn whole_units_within_the_bounds_read_back_exactly(n in 1u64..=1440, unit in 0usize..3) {
                let (suffix, secs) = [("m", 60), ("h", 3600), ("s", 1)][unit];
                let parse = duration_within("1s", "100d");
                prop_assert_eq!(
                    parse(&format!("{n}{suffix}")),
                    Ok(std::time::Duration::from_secs(n * secs))
                );
            }

            #[test]
            fn numbers_beyond_any_bound_are_refused_not_wrapped(n in 1_000_000u64..u64::MAX) {
                let parse = duration_within("1s", "3650d");
                let raw = format!("{n}d");
                prop_assert!(parse(&raw).is_err());
            }
        }
    }

    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        config: Config,
    }

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        let mut argv = vec!["authgate"];
        argv.extend_from_slice(args);
        Wrapper::try_parse_from(argv).map(|w| w.config)
    }

    #[test]
    fn defaults_need_no_configuration() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8010");
        assert_eq!(c.access_token_ttl, Duration::from_secs(15 * 60));
        assert_eq!(c.refresh_token_ttl, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(c.database.url.backend(), Backend::Sqlite);
        c.argon2.params().unwrap();
    }

    #[test]
    fn a_short_jwt_secret_is_refused_while_parsing() {
        let err = parse(&["--jwt-secret", "too-short"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--jwt-secret"), "{err}");
        assert!(err.contains("at least 32 bytes"), "{err}");
    }

    #[test]
    fn a_bad_or_zero_duration_is_refused() {
        for bad in ["soon", "0s"] {
            let err = parse(&["--access-token-ttl", bad]).unwrap_err().to_string();
            assert!(err.contains("--access-token-ttl"), "{err}");
        }
    }

    #[test]
    fn zero_workers_and_zero_quotas_are_refused() {
        for flag in [
            "--hash-workers",
            "--signup-per-minute",
            "--refresh-per-minute",
        ] {
            assert!(parse(&[flag, "0"]).is_err(), "{flag} 0");
        }
    }

    #[test]
    fn argon2_parameters_are_checked_together() {
        let c = parse(&[
            "--argon2-memory-kib",
            "7168",
            "--argon2-parallelism",
            "1000",
        ])
        .unwrap();
        assert!(
            c.argon2
                .try_params()
                .unwrap_err()
                .contains("AUTHGATE_ARGON2_")
        );
    }

    #[test]
    fn unsafe_settings_are_refused() {
        let repeated = "a".repeat(40);
        let alternating = "ab".repeat(20);
        for args in [
            &["--jwt-secret", repeated.as_str()][..],
            &["--jwt-secret", alternating.as_str()],
            &["--jwt-secret", "abcdefghijklmnopqrstuvwxyz012345"],
            &[
                "--jwt-secret",
                "Password1Password2Password3Password4Password5",
            ],
            &["--argon2-memory-kib", "8"],
            &["--trusted-proxies", "0.0.0.0/0"],
            &["--trusted-proxies", "0.0.0.0/1,128.0.0.0/1"],
            &["--trusted-proxies", "10.0.0.0/8,::/1"],
            &["--session-max-age", "1000000y"],
            &["--access-token-ttl", "1ns"],
            &["--purge-interval", "1ns"],
            &["--issuer", ""],
        ] {
            assert!(parse(args).is_err(), "{args:?}");
        }
        // 32 random bytes, as `openssl rand` writes them, pass.
        for secret in [
            "3q2+7wABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGho=",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        ] {
            parse(&["--jwt-secret", secret]).unwrap();
        }
    }

    #[test]
    fn odd_settings_start_with_a_warning_naming_them() {
        let c = parse(&[
            "--refresh-token-ttl",
            "60d",
            "--argon2-memory-kib",
            "8192",
            "--trusted-proxies",
            "10.0.0.0/8,203.0.113.0/24",
        ])
        .unwrap();
        let warnings = c.warnings().join("\n");
        for name in [
            "AUTHGATE_REFRESH_TOKEN_TTL",
            "AUTHGATE_ARGON2_MEMORY_KIB",
            "203.0.113.0/24",
        ] {
            assert!(warnings.contains(name), "{warnings}");
        }
        assert!(!warnings.contains("10.0.0.0/8"), "{warnings}");
        assert!(parse(&[]).unwrap().warnings().is_empty());
    }

    #[test]
    fn passkeys_at_another_origin_than_the_pages_start_with_a_warning() {
        let elsewhere = parse(&["--public-url", "https://login.example.com"]).unwrap();
        let warnings = elsewhere.warnings().join("\n");
        assert!(warnings.contains("AUTHGATE_WEBAUTHN_ORIGIN"), "{warnings}");
        let matched = parse(&[
            "--public-url",
            "https://login.example.com/",
            "--webauthn-origin",
            "https://login.example.com",
            "--webauthn-rp-id",
            "example.com",
        ])
        .unwrap();
        assert!(matched.warnings().is_empty(), "{:?}", matched.warnings());
        // On loopback, another port is another server.
        let port = parse(&["--public-url", "http://127.0.0.1:9000"]).unwrap();
        assert!(!port.warnings().is_empty());
    }

    #[test]
    fn secrets_and_database_passwords_never_print() {
        let c = parse(&[
            "--jwt-secret",
            "x9Gf2LqP7vRm4TzW8kYc3NbH6sDj1eUa-very-secret",
            "--database-url",
            "postgres://app:hunter2hunter2@db/app",
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("very-secret"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres://app:REDACTED@db/app"), "{shown}");
    }
}
