//! Wiring: builds the services from the configuration, binds the listener,
//! starts the background tasks and serves.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::{
    auth::{
        Accounts, Audit, Services, Settings,
        accounts::{AccountPolicy, AdminOutcome, IfExists},
        flows::FlowPolicy,
        introspection::IntrospectionClients,
        keys::{KeyPolicy, Keys},
        letters::LetterPolicy,
        liveness::RECHECK_INTERVAL,
        login::LoginPolicy,
        mfa::MfaPolicy,
        outbox::OutboxPolicy,
        passkeys::PasskeyPolicy,
        sessions::SessionPolicy,
    },
    clock::{SharedClock, SystemClock},
    config::{Argon2Args, Config, DatabaseArgs, KeyArgs, LimitBackend, Secret},
    crypto::passwords::PasswordHasher,
    domain::{Email, Password},
    http::{
        self, AppState,
        cookies::CookiePolicy,
        server::{self, ServerLimits},
    },
    limits::{InMemoryRateLimiter, Quota, RateLimiter, RedisRateLimiter, StoreRateLimiter},
    mail::Mailer,
    metrics,
    store::{self, Store},
};

/// Background tasks get what is left of the shutdown timeout to finish their
/// round, and at least this.
const TASK_STOP_AT_LEAST: Duration = Duration::from_millis(100);

/// Runs a background task until the stop is given. The task's rounds are
/// its own: one under way when the stop comes is dropped at its next wait,
/// which the tasks below only reach between two complete database changes.
type Task = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

async fn until_stopped(work: Task, mut stopping: tokio::sync::watch::Receiver<bool>) {
    tokio::select! {
        () = work => {}
        _ = stopping.wait_for(|stop| *stop) => {}
    }
}

/// Reads the database pools' use into the metrics until stopped.
async fn sample_pools(services: Services, mut stopping: tokio::sync::watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(metrics::SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = ticker.tick() => services.sample_pools(),
            _ = stopping.wait_for(|stop| *stop) => return,
        }
    }
}

/// How often in-memory throttling and session state is pruned.
const PRUNE_INTERVAL: Duration = Duration::from_secs(5);

/// A built application: connected, migrated, and bound to its port, but not
/// yet serving. Binding here lets callers (tests) use port 0 and learn the port.
pub struct Application {
    listener: TcpListener,
    /// The metrics listener and the recorder it renders, if configured.
    metrics: Option<(TcpListener, PrometheusHandle)>,
    state: AppState,
    purge_interval: Duration,
    audit_retention: Duration,
    limits: ServerLimits,
}

impl Application {
    /// Builds the application on the system clock.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// Builds the application on `clock` (tests move it forward).
    pub async fn build_with_clock(config: Config, clock: SharedClock) -> anyhow::Result<Self> {
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let store = store::open(&config.database.url).await?;
        let services = build_services(&config, store, clock).await?;
        ensure_configured_admin(&config, &services).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on AUTHGATE_LISTEN {}", config.listen))?;
        let metrics = match config.metrics_listen {
            Some(address) => {
                let listener = TcpListener::bind(address).await.with_context(|| {
                    format!("cannot listen on AUTHGATE_METRICS_LISTEN {address}")
                })?;
                Some((listener, metrics::recorder()?))
            }
            None => None,
        };
        Ok(Self {
            listener,
            metrics,
            state: AppState {
                services,
                trusted_proxies: config.trusted_proxies.clone().into(),
                public_url: config.mail.public_url.trim_end_matches('/').into(),
                cookies: Arc::new(CookiePolicy::new(
                    &config.mail.public_url,
                    &config.allowed_origins,
                )),
                cors_origins: config.cors_origins.clone().into(),
                pages_logo: config.pages_logo_url.as_deref().map(Into::into),
            },
            purge_interval: config.purge_interval,
            audit_retention: config.audit_retention,
            limits: ServerLimits {
                header_read_timeout: config.header_read_timeout,
                idle_timeout: config.idle_timeout,
                body_read_timeout: config.body_read_timeout,
                max_connections: server::fit_file_limit(config.max_connections),
                max_connections_per_ip: config.max_connections_per_ip,
                shutdown_timeout: config.shutdown_timeout,
                trusted_proxies: config.trusted_proxies.clone().into(),
            },
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Where the metrics are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then drains: no new connections,
    /// requests in flight finish (within the shutdown timeout), and the
    /// background tasks stop between two rounds of their work.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let services = &self.state.services;
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let every = |work: Task| tokio::spawn(until_stopped(work, stopping.clone()));
        let tasks = [
            every(Box::pin(recheck_sessions(services.clone()))),
            every(Box::pin(purge_expired(
                services.clone(),
                self.purge_interval,
                self.audit_retention,
            ))),
            every(Box::pin(prune_memory(services.clone()))),
            every(Box::pin(maintain_keys(services.clone()))),
            // The sender stops between two messages, never in the middle
            // of one (a message cut off would go out again after its lease).
            tokio::spawn(services.outbox.clone().run(stopping.clone())),
        ];
        let address = self.local_addr();
        tracing::info!(%address, "authgate listening");
        let metrics_served = self.metrics.map(|(listener, handle)| {
            let address = listener.local_addr().ok();
            tracing::info!(address = ?address, "metrics listening");
            let mut stopping = stopping.clone();
            tokio::spawn(metrics::serve(listener, handle, async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            }))
        });
        tokio::spawn(sample_pools(services.clone(), stopping.clone()));
        let app = http::router(self.state);
        let limits = self.limits;
        // The whole stop, drain and background tasks, within the timeout.
        let deadline = Arc::new(std::sync::OnceLock::new());
        let shutdown = {
            let (deadline, timeout) = (deadline.clone(), limits.shutdown_timeout);
            async move {
                shutdown.await;
                let _ = deadline.set(tokio::time::Instant::now() + timeout);
            }
        };
        let served = server::serve(self.listener, app, limits, shutdown).await;
        tracing::info!("draining finished; stopping background tasks");
        let _ = stop.send(true);
        let deadline = deadline
            .get()
            .copied()
            .unwrap_or_else(tokio::time::Instant::now)
            .max(tokio::time::Instant::now() + TASK_STOP_AT_LEAST);
        if let Some(served) = metrics_served {
            let _ = tokio::time::timeout_at(deadline, served).await;
        }
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
            }
        }
        served
    }
}

/// Connects the services to the store, the key ring, the hashing pool and
/// the limiter.
pub async fn build_services(
    config: &Config,
    store: Arc<dyn Store>,
    clock: SharedClock,
) -> anyhow::Result<Services> {
    let keys = load_keys(config, store.clone(), clock.clone()).await?;
    let hasher = PasswordHasher::new(
        config.argon2.params()?,
        config.hash_workers(),
        config.hash_queue,
        config.hash_queue_per_client,
    )?;
    const HOUR: Duration = Duration::from_secs(3600);
    let mail = &config.mail;
    let settings = Settings {
        issuer: config.issuer(),
        audience: config.audience.clone(),
        access_token_ttl: config.access_token_ttl,
        sessions: SessionPolicy {
            refresh_token_ttl: config.refresh_token_ttl,
            session_max_age: config.session_max_age,
            refresh_per_minute: config.refresh_per_minute,
            reuse_grace: config.refresh_reuse_grace,
        },
        login: LoginPolicy {
            free_failures: config.login_free_failures,
            ip_free_failures: config.login_ip_free_failures,
            ip_per_minute: config.login_per_minute,
            account_per_minute: config.login_account_per_minute,
            require_verified_email: mail.require_verified_email,
        },
        accounts: AccountPolicy {
            signup_per_minute: config.signup_per_minute,
            require_verified_email: mail.require_verified_email,
            reserved_usernames: config.reserved_usernames.clone(),
        },
        letters: LetterPolicy {
            public_url: mail.public_url.clone(),
            verify_email_ttl: mail.verify_email_ttl,
            password_reset_ttl: mail.password_reset_ttl,
            email_change_ttl: mail.email_change_ttl,
            invitation_ttl: mail.verify_email_ttl,
        },
        flows: FlowPolicy {
            per_recipient: Quota {
                count: mail.mail_per_recipient_per_hour,
                per: HOUR,
            },
            per_ip: Quota {
                count: mail.mail_per_ip_per_hour,
                per: HOUR,
            },
            links_per_ip: Quota::per_minute(30),
        },
        outbox: OutboxPolicy {
            max_attempts: mail.mail_max_attempts,
            first_retry: mail.mail_retry_after,
        },
        mfa: MfaPolicy {
            issuer: config.mfa_issuer.clone(),
            challenge_ttl: Duration::from_secs(5 * 60),
            max_attempts: 5,
            free_failures: config.login_free_failures,
            enrolment_ttl: Duration::from_secs(15 * 60),
            sealing: config.keys.key_encryption_key.clone(),
        },
        passkeys: PasskeyPolicy::new(
            &config.webauthn_rp_id,
            &config.webauthn_origin,
            &config.webauthn_rp_name,
            mail.require_verified_email,
        )?,
        introspection_clients: IntrospectionClients::new(
            config
                .introspection_clients
                .iter()
                .map(|c| (c.id.as_str(), c.secret.expose())),
        ),
    };
    let mailer = Mailer::new(
        mail.smtp_url.as_ref().map(|url| url.expose()),
        &mail.mail_from,
        &mail.mail_outbox,
    )?;
    let limiter: Arc<dyn RateLimiter> = match config.limit_backend()? {
        LimitBackend::Redis => {
            let url = config
                .redis_url
                .as_ref()
                .map(Secret::expose)
                .unwrap_or_default();
            let limiter = RedisRateLimiter::connect(url, &config.redis_prefix)
                .await
                .context("cannot connect to AUTHGATE_REDIS_URL")?;
            tracing::info!("throttling state is shared in Redis");
            Arc::new(limiter)
        }
        LimitBackend::Database => {
            tracing::info!("throttling state is shared in the database");
            Arc::new(StoreRateLimiter::new(store.clone()))
        }
        LimitBackend::Memory | LimitBackend::Auto => Arc::new(InMemoryRateLimiter::new()),
    };
    Ok(Services::new(
        &settings,
        keys,
        store,
        hasher,
        limiter,
        Some(mailer),
        clock,
    ))
}

/// The signing keys as configured: the JWT secret, or the stored keys.
pub async fn load_keys(
    config: &Config,
    store: Arc<dyn Store>,
    clock: SharedClock,
) -> anyhow::Result<Keys> {
    let keys = &config.keys;
    keys.check()?;
    let secret = config.jwt_secret.as_ref().map(|s| s.expose().as_bytes());
    let policy = KeyPolicy {
        algorithm: keys.algorithm(secret.is_some())?,
        publish_lead: keys.key_publish_lead,
        rotation: keys.key_rotation.0,
        access_token_ttl: config.access_token_ttl,
    };
    Keys::load(
        secret,
        store,
        keys.key_encryption_key.clone(),
        policy,
        clock,
    )
    .await
}

/// The signing keys and the audit log, for a key command run outside the
/// service.
pub async fn command_keys(
    database: &DatabaseArgs,
    keys: &KeyArgs,
    access_token_ttl: Duration,
) -> anyhow::Result<(Keys, Audit)> {
    keys.check()?;
    let store = store::open(&database.url).await?;
    let clock: SharedClock = Arc::new(SystemClock);
    let policy = KeyPolicy {
        algorithm: keys.algorithm(false)?,
        publish_lead: keys.key_publish_lead,
        rotation: keys.key_rotation.0,
        access_token_ttl,
    };
    let audit = Services::command_audit(store.clone());
    let keys = Keys::load(None, store, keys.key_encryption_key.clone(), policy, clock).await?;
    Ok((keys, audit))
}

/// Client management for a command run outside the service.
pub async fn command_clients(database: &DatabaseArgs) -> anyhow::Result<crate::auth::Clients> {
    let store = store::open(&database.url).await?;
    Ok(Services::command_clients(store))
}

/// Connects to the database and applies pending migrations.
pub async fn migrate(database: &DatabaseArgs) -> anyhow::Result<()> {
    store::open(&database.url).await?;
    Ok(())
}

/// Account management for a command run outside the service.
pub async fn command_accounts(
    database: &DatabaseArgs,
    argon2: &Argon2Args,
) -> anyhow::Result<Accounts> {
    let store = store::open(&database.url).await?;
    let hasher = PasswordHasher::new(argon2.params()?, 1, 1, 1)?;
    Ok(Services::command_accounts(store, hasher))
}

/// `AUTHGATE_ADMIN_EMAIL` + `AUTHGATE_ADMIN_PASSWORD`: create that admin once.
async fn ensure_configured_admin(config: &Config, services: &Services) -> anyhow::Result<()> {
    let (Some(email), Some(password)) = (&config.admin_email, &config.admin_password) else {
        return Ok(());
    };
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("AUTHGATE_ADMIN_EMAIL {e}"))?;
    let password = Password::parse(password.expose(), None, Some(&email))
        .map_err(|e| anyhow::anyhow!("AUTHGATE_ADMIN_PASSWORD {e}"))?;
    let outcome = services
        .accounts
        .create_admin(email, None, || Ok(password), IfExists::Keep)
        .await?;
    if let AdminOutcome::Created(user) = outcome {
        tracing::info!(user_id = %user.id, "created the configured admin account");
    }
    Ok(())
}

/// Re-checks the sessions marked by recent requests (see [`crate::auth::liveness`]).
async fn recheck_sessions(services: Services) {
    let mut ticker = tokio::time::interval(RECHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        services.sessions.recheck_marked().await;
    }
}

/// Deletes expired sessions and tokens, and audit events and mail older
/// than the retention.
async fn purge_expired(services: Services, every: Duration, retention: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await; // the first tick is immediate
    loop {
        ticker.tick().await;
        match services.sessions.purge_expired().await {
            Ok(n) => tracing::debug!(rows = n, "purged expired sessions and tokens"),
            Err(e) => tracing::warn!(error = %e, "purge failed"),
        }
        match services.audit.purge(retention).await {
            Ok(n) => tracing::debug!(rows = n, "purged old audit events"),
            Err(e) => tracing::warn!(error = %e, "audit purge failed"),
        }
        match services.outbox.purge(retention).await {
            Ok(n) => tracing::debug!(rows = n, "purged old mail"),
            Err(e) => tracing::warn!(error = %e, "mail purge failed"),
        }
    }
}

/// How often the signing keys are read again: another instance's rotation
/// or revocation shows here within this time.
const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// How often scheduled rotation and the deletion of expired keys are due.
const KEY_MAINTENANCE_EVERY: u32 = 30;

/// Keeps the signing keys current: reloads them, rotates on schedule (once
/// across all instances) and deletes keys whose tokens have all expired.
async fn maintain_keys(services: Services) {
    let mut ticker = tokio::time::interval(KEY_RELOAD_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round = 0u32;
    loop {
        ticker.tick().await;
        if let Err(e) = services.keys.reload().await {
            tracing::warn!(error = %format!("{e:#}"), "cannot reload the signing keys");
        }
        round = round.wrapping_add(1);
        if round % KEY_MAINTENANCE_EVERY == 1 {
            if let Err(e) = services.keys.rotate_if_due().await {
                tracing::warn!(error = %format!("{e:#}"), "scheduled key rotation failed");
            }
            if let Err(e) = services.keys.purge().await {
                tracing::warn!(error = %format!("{e:#}"), "cannot delete expired keys");
            }
        }
    }
}

/// Forgets throttling and session state that no longer matters, on a timer
/// rather than in requests.
async fn prune_memory(services: Services) {
    let mut ticker = tokio::time::interval(PRUNE_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        services.prune().await;
    }
}
