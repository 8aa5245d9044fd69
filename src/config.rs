//! Typed configuration. Every setting has a command-line flag and an
//! environment variable; flags win over the environment, which wins over the
//! defaults. Secrets are wrapped so they never reach logs or `Debug` output.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use clap::{Args, ValueEnum};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

/// All settings of the service.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Database to use: `sqlite://FILE?mode=rwc` or `postgres://USER:PASS@HOST/DB`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://authgate.db?mode=rwc",
        global = true
    )]
    pub database_url: DatabaseUrl,

    /// Address and port to listen on.
    #[arg(
        long,
        env = "AUTHGATE_LISTEN",
        default_value = "127.0.0.1:8010",
        global = true
    )]
    pub listen: SocketAddr,

    /// HS256 signing key, at least 32 bytes. If unset, a 256-bit key is
    /// generated once and stored in the database.
    #[arg(
        long,
        env = "AUTHGATE_JWT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub jwt_secret: Option<Secret>,

    /// `iss` claim of issued access tokens, and the only issuer accepted.
    #[arg(
        long,
        env = "AUTHGATE_ISSUER",
        default_value = "authgate",
        global = true
    )]
    pub issuer: String,

    /// `aud` claim of issued access tokens, and the only audience accepted.
    #[arg(
        long,
        env = "AUTHGATE_AUDIENCE",
        default_value = "authgate",
        global = true
    )]
    pub audience: String,

    /// Lifetime of access tokens (e.g. `15m`).
    #[arg(long, env = "AUTHGATE_ACCESS_TOKEN_TTL", default_value = "15m", value_parser = parse_duration, global = true)]
    pub access_token_ttl: Duration,

    /// Lifetime of a refresh token: a session unused for this long ends.
    #[arg(long, env = "AUTHGATE_REFRESH_TOKEN_TTL", default_value = "7d", value_parser = parse_duration, global = true)]
    pub refresh_token_ttl: Duration,

    /// Absolute lifetime of a session: refreshing never extends it past this.
    #[arg(long, env = "AUTHGATE_SESSION_MAX_AGE", default_value = "30d", value_parser = parse_duration, global = true)]
    pub session_max_age: Duration,

    /// Email of an admin account to create at start-up if it does not exist.
    #[arg(
        long,
        env = "AUTHGATE_ADMIN_EMAIL",
        requires = "admin_password",
        global = true
    )]
    pub admin_email: Option<String>,

    /// Password of that admin account.
    #[arg(
        long,
        env = "AUTHGATE_ADMIN_PASSWORD",
        hide_env_values = true,
        requires = "admin_email",
        global = true
    )]
    pub admin_password: Option<Secret>,

    /// Log output format.
    #[arg(
        long,
        env = "AUTHGATE_LOG_FORMAT",
        value_enum,
        default_value = "pretty",
        global = true
    )]
    pub log_format: LogFormat,

    /// Comma-separated CIDRs of reverse proxies whose `X-Forwarded-For` is trusted.
    #[arg(
        long,
        env = "AUTHGATE_TRUSTED_PROXIES",
        value_delimiter = ',',
        global = true
    )]
    pub trusted_proxies: Vec<IpNet>,

    /// Password hashes computed at once (default: the number of CPU cores).
    #[arg(long, env = "AUTHGATE_HASH_WORKERS", global = true)]
    pub hash_workers: Option<usize>,

    /// Password hashes allowed to wait for a worker before requests get 503.
    #[arg(
        long,
        env = "AUTHGATE_HASH_QUEUE",
        default_value_t = 256,
        global = true
    )]
    pub hash_queue: usize,

    /// Argon2id memory cost in KiB (OWASP: 19456).
    #[arg(
        long,
        env = "AUTHGATE_ARGON2_MEMORY_KIB",
        default_value_t = 19_456,
        global = true
    )]
    pub argon2_memory_kib: u32,

    /// Argon2id iterations (OWASP: 2).
    #[arg(
        long,
        env = "AUTHGATE_ARGON2_ITERATIONS",
        default_value_t = 2,
        global = true
    )]
    pub argon2_iterations: u32,

    /// Argon2id parallelism (OWASP: 1).
    #[arg(
        long,
        env = "AUTHGATE_ARGON2_PARALLELISM",
        default_value_t = 1,
        global = true
    )]
    pub argon2_parallelism: u32,

    /// Failed logins per account and client IP before back-off starts.
    #[arg(
        long,
        env = "AUTHGATE_LOGIN_FREE_FAILURES",
        default_value_t = 5,
        global = true
    )]
    pub login_free_failures: u32,

    /// Failed logins per client IP (any account) before back-off starts.
    #[arg(
        long,
        env = "AUTHGATE_LOGIN_IP_FREE_FAILURES",
        default_value_t = 50,
        global = true
    )]
    pub login_ip_free_failures: u32,

    /// Signups allowed per client IP per minute.
    #[arg(
        long,
        env = "AUTHGATE_SIGNUP_PER_MINUTE",
        default_value_t = 20,
        global = true
    )]
    pub signup_per_minute: u32,

    /// Token refreshes allowed per client IP per minute.
    #[arg(
        long,
        env = "AUTHGATE_REFRESH_PER_MINUTE",
        default_value_t = 600,
        global = true
    )]
    pub refresh_per_minute: u32,

    /// How often expired sessions and tokens are deleted.
    #[arg(long, env = "AUTHGATE_PURGE_INTERVAL", default_value = "10m", value_parser = parse_duration, global = true)]
    pub purge_interval: Duration,
}

impl Config {
    /// Checks the settings that clap cannot check alone. The error names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(secret) = &self.jwt_secret
            && secret.expose().len() < 32
        {
            return Err("AUTHGATE_JWT_SECRET must be at least 32 bytes".into());
        }
        for (name, d) in [
            ("AUTHGATE_ACCESS_TOKEN_TTL", self.access_token_ttl),
            ("AUTHGATE_REFRESH_TOKEN_TTL", self.refresh_token_ttl),
            ("AUTHGATE_SESSION_MAX_AGE", self.session_max_age),
            ("AUTHGATE_PURGE_INTERVAL", self.purge_interval),
        ] {
            if d.is_zero() {
                return Err(format!("{name} must be greater than zero"));
            }
        }
        if self.hash_workers == Some(0) {
            return Err("AUTHGATE_HASH_WORKERS must be at least 1".into());
        }
        if self.signup_per_minute == 0 || self.refresh_per_minute == 0 {
            return Err(
                "AUTHGATE_SIGNUP_PER_MINUTE and AUTHGATE_REFRESH_PER_MINUTE must be at least 1"
                    .into(),
            );
        }
        argon2::Params::new(
            self.argon2_memory_kib,
            self.argon2_iterations,
            self.argon2_parallelism,
            None,
        )
        .map_err(|e| format!("AUTHGATE_ARGON2_* parameters are invalid: {e}"))?;
        Ok(())
    }

    pub fn hash_workers(&self) -> usize {
        self.hash_workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw).map_err(|e| format!("{e} (expected e.g. 30s, 15m, 7d)"))
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
        assert_eq!(c.database_url.backend(), Backend::Sqlite);
        c.validate().unwrap();
    }

    #[test]
    fn a_short_jwt_secret_is_refused_by_name() {
        let c = parse(&["--jwt-secret", "too-short"]).unwrap();
        assert!(c.validate().unwrap_err().contains("AUTHGATE_JWT_SECRET"));
    }

    #[test]
    fn a_bad_duration_is_refused() {
        let err = parse(&["--access-token-ttl", "soon"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--access-token-ttl"), "{err}");
    }

    #[test]
    fn secrets_and_database_passwords_never_print() {
        let c = parse(&[
            "--jwt-secret",
            "0123456789abcdef0123456789abcdef-very-secret",
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
