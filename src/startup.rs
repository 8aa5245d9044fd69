//! Building and running the application.

use std::{collections::HashMap, future::Future, net::SocketAddr, sync::Arc, time::Instant};

use anyhow::Context;
use argon2::Params;
use secrecy::SecretString;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::{
    clock,
    config::Config,
    crypto::{
        passwords::PasswordHasher,
        tokens::{KeyMaterial, TokenService},
    },
    domain::{Email, Password, Role, Roles},
    http,
    ratelimit::{InMemoryRateLimiter, RateLimiter},
    sessions::{LiveUser, Liveness, RECHECK_INTERVAL, SessionCache},
    state::{AppState, Policy},
    store::{self, NewUser, Store, StoredKey},
};

/// A built application: connected, migrated, and bound to its port, but not
/// yet serving. Binding here lets callers (tests) use port 0 and learn the port.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    purge_interval: std::time::Duration,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let store = store::open(&config.database_url).await?;
        let state = build_state(&config, store).await?;
        ensure_configured_admin(&config, &state).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on AUTHGATE_LISTEN {}", config.listen))?;
        Ok(Self {
            listener,
            state,
            purge_interval: config.purge_interval,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let purge = tokio::spawn(purge_periodically(self.state.clone(), self.purge_interval));
        let recheck = tokio::spawn(recheck_sessions_periodically(self.state.clone()));
        tracing::info!(address = %self.local_addr(), "authgate listening");
        let app = http::router(self.state);
        let served = axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        purge.abort();
        recheck.abort();
        served
    }
}

/// Connects the parts the handlers share.
pub async fn build_state(config: &Config, store: Arc<dyn Store>) -> anyhow::Result<AppState> {
    let (signing, others) = signing_keys(config, store.as_ref()).await?;
    let tokens = TokenService::new(
        &signing,
        &others,
        config.issuer.clone(),
        config.audience.clone(),
        config.access_token_ttl,
    );
    let hasher = PasswordHasher::new(
        argon2_params(config)?,
        config.hash_workers(),
        config.hash_queue,
    )?;
    Ok(AppState {
        store,
        tokens: Arc::new(tokens),
        hasher,
        sessions: Arc::new(SessionCache::new()),
        limiter: Arc::new(InMemoryRateLimiter::new()) as Arc<dyn RateLimiter>,
        policy: Arc::new(Policy {
            refresh_token_ttl: config.refresh_token_ttl,
            session_max_age: config.session_max_age,
            trusted_proxies: config.trusted_proxies.clone(),
            login_free_failures: config.login_free_failures,
            login_ip_free_failures: config.login_ip_free_failures,
            signup_per_minute: config.signup_per_minute,
            refresh_per_minute: config.refresh_per_minute,
        }),
    })
}

pub fn argon2_params(config: &Config) -> anyhow::Result<Params> {
    Params::new(
        config.argon2_memory_kib,
        config.argon2_iterations,
        config.argon2_parallelism,
        None,
    )
    .map_err(|e| anyhow::anyhow!("AUTHGATE_ARGON2_* parameters are invalid: {e}"))
}

/// The key that signs, and the other keys that still verify.
async fn signing_keys(
    config: &Config,
    store: &dyn Store,
) -> anyhow::Result<(KeyMaterial, Vec<KeyMaterial>)> {
    if let Some(secret) = &config.jwt_secret {
        return Ok((
            KeyMaterial::from_configured_secret(secret.expose().as_bytes()),
            Vec::new(),
        ));
    }
    let mut keys = store
        .signing_keys()
        .await
        .context("cannot load signing keys")?;
    if keys.is_empty() {
        let key = KeyMaterial::generate();
        keys = store
            .insert_first_signing_key(&StoredKey {
                kid: key.kid,
                algorithm: "HS256".into(),
                secret: key.secret,
                created_at: clock::now(),
            })
            .await
            .context("cannot store a generated signing key")?;
        tracing::info!("generated a signing key and stored it in the database");
    }
    let mut keys: Vec<KeyMaterial> = keys
        .into_iter()
        .filter(|k| k.algorithm == "HS256")
        .map(|k| KeyMaterial {
            kid: k.kid,
            secret: k.secret,
        })
        .collect();
    // The newest key signs; older ones keep verifying tokens they signed.
    let signing = keys.pop().context("no signing key available")?;
    Ok((signing, keys))
}

/// `AUTHGATE_ADMIN_EMAIL` + `AUTHGATE_ADMIN_PASSWORD`: create that admin once.
async fn ensure_configured_admin(config: &Config, state: &AppState) -> anyhow::Result<()> {
    let (Some(email), Some(password)) = (&config.admin_email, &config.admin_password) else {
        return Ok(());
    };
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("AUTHGATE_ADMIN_EMAIL {e}"))?;
    let password = Password::parse(password.expose(), None, Some(&email))
        .map_err(|e| anyhow::anyhow!("AUTHGATE_ADMIN_PASSWORD {e}"))?;
    if state
        .store
        .find_credentials(&email.normalized())
        .await?
        .is_some()
    {
        return Ok(());
    }
    let hash = state
        .hasher
        .hash(SecretString::from(password.expose()))
        .await
        .map_err(|e| anyhow::anyhow!("cannot hash the admin password: {e}"))?;
    let created = state
        .store
        .create_user_if_absent(&NewUser {
            id: Uuid::now_v7(),
            username: None,
            email: Some(email.clone()),
            password_hash: hash,
            roles: Roles::new([Role::admin(), Role::user()]),
            created_at: clock::now(),
        })
        .await?;
    if created {
        tracing::info!(email = %email, "created the configured admin account");
    }
    Ok(())
}

/// Re-checks every session marked by recent requests, in one query per tick
/// (see [`crate::sessions`]).
async fn recheck_sessions_periodically(state: AppState) {
    let mut ticker = tokio::time::interval(RECHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let marked = state.sessions.marked();
        if marked.is_empty() {
            continue;
        }
        let checked = Instant::now();
        let ids: Vec<Uuid> = marked.iter().map(|(session_id, _)| *session_id).collect();
        match state.store.live_sessions(&ids, clock::now()).await {
            Ok(live) => {
                let mut live: HashMap<Uuid, _> = live.into_iter().collect();
                for (session_id, user_id) in marked {
                    let liveness = match live.remove(&session_id) {
                        Some(user) => Liveness::Live(Arc::new(LiveUser::new(user))),
                        None => Liveness::Dead,
                    };
                    state.sessions.put(session_id, user_id, liveness, checked);
                }
            }
            // The sessions stay marked; the next tick tries again, and past
            // MAX_STALENESS requests check for themselves.
            Err(e) => tracing::warn!(error = %e, sessions = ids.len(), "session re-check failed"),
        }
    }
}

/// Deletes expired sessions and tokens, and forgets stale throttling state.
async fn purge_periodically(state: AppState, every: std::time::Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await; // the first tick is immediate
    loop {
        ticker.tick().await;
        let now = clock::now();
        // A revoked session must outlive the access tokens issued for it.
        let grace = state.tokens.ttl() + std::time::Duration::from_secs(60);
        match state.store.purge(now, now - grace).await {
            Ok(n) => tracing::debug!(rows = n, "purged expired sessions and tokens"),
            Err(e) => tracing::warn!(error = %e, "purge failed"),
        }
        state.limiter.prune(Instant::now());
        state.sessions.prune(Instant::now(), grace);
    }
}
