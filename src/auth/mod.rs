//! The services: every flow of authgate, as plain async functions on service
//! values that hold what they depend on (store, hasher, limiter, clock).
//! The HTTP layer and the command line call these and nothing below them.

pub mod accounts;
pub mod audit;
pub mod clients;
pub mod error;
pub mod factors;
pub mod flows;
pub mod introspection;
pub mod keys;
pub mod letters;
pub mod liveness;
pub mod login;
pub mod mfa;
pub mod oauth;
pub mod outbox;
pub mod passkeys;
pub mod sessions;
pub mod tokens;

use std::{net::IpAddr, sync::Arc, time::Duration};

pub use accounts::Accounts;
pub use audit::Audit;
pub use clients::Clients;
pub use error::{AuthError, AuthResult};
pub use flows::Flows;
pub use introspection::Introspection;
pub use login::Login;
pub use outbox::Outbox;
pub use sessions::Sessions;

use uuid::Uuid;

use crate::{
    clock::SharedClock,
    crypto::passwords::PasswordHasher,
    limits::RateLimiter,
    mail::Mailer,
    store::{AuditContext, Store},
};
use accounts::AccountPolicy;
use flows::FlowPolicy;
use keys::Keys;
use letters::{LetterPolicy, Letters};
use liveness::SessionCache;
use login::{LoginPolicy, PasswordCheck};
use mfa::{Mfa, MfaPolicy};
use outbox::OutboxPolicy;
use passkeys::{PasskeyPolicy, Passkeys};
use sessions::SessionPolicy;
use tokens::TokenService;

/// Who is asking: the client's IP address, what its `User-Agent` says, and
/// the request's id (for the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub ip: IpAddr,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

impl Client {
    /// A `User-Agent` is kept to its first 256 characters, without control
    /// characters: it is shown back to the user and must stay harmless.
    pub const MAX_USER_AGENT: usize = 256;

    pub fn new(ip: IpAddr, user_agent: Option<&str>) -> Self {
        let user_agent = user_agent
            .map(|ua| {
                ua.chars()
                    .filter(|c| !c.is_control())
                    .take(Self::MAX_USER_AGENT)
                    .collect::<String>()
            })
            .filter(|ua| !ua.trim().is_empty());
        Self {
            ip,
            user_agent,
            request_id: None,
        }
    }

    /// The same client, in the request with that id.
    pub fn in_request(mut self, request_id: Option<&str>) -> Self {
        self.request_id = request_id.map(str::to_owned);
        self
    }

    /// The audit context of this client's request, acted by `actor`.
    pub fn context(&self, actor: Option<Uuid>) -> AuditContext {
        AuditContext {
            actor_id: actor,
            ip: Some(self.ip.to_string()),
            user_agent: self.user_agent.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

/// The settings the services run with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub issuer: String,
    pub audience: String,
    pub access_token_ttl: Duration,
    pub sessions: SessionPolicy,
    pub login: LoginPolicy,
    pub accounts: AccountPolicy,
    pub letters: LetterPolicy,
    pub flows: FlowPolicy,
    pub outbox: OutboxPolicy,
    pub mfa: MfaPolicy,
    pub passkeys: PasskeyPolicy,
    /// Who may introspect tokens with a client secret.
    pub introspection_clients: introspection::IntrospectionClients,
}

/// Every service, wired to one store, hasher, limiter and clock. Cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub accounts: Accounts,
    pub login: Login,
    pub mfa: Mfa,
    pub passkeys: Passkeys,
    pub sessions: Sessions,
    pub flows: Flows,
    pub audit: Audit,
    pub outbox: Outbox,
    pub introspection: Introspection,
    /// OAuth clients.
    pub clients: Clients,
    /// The OAuth grants.
    pub oauth: oauth::OAuth,
    /// The signing keys, for publication and rotation.
    pub keys: Keys,
    /// Signs and verifies access tokens.
    pub tokens: Arc<TokenService>,
    store: Arc<dyn Store>,
    limiter: Arc<dyn RateLimiter>,
    clock: SharedClock,
    /// When the last readiness probe passed.
    readiness: Arc<tokio::sync::Mutex<Option<std::time::Instant>>>,
}

/// A page of a listing read with one row more than `limit`: the rows to
/// show, and the id to continue from if the extra row says there are more.
fn cut_page<T>(mut rows: Vec<T>, limit: u32, id: impl Fn(&T) -> Uuid) -> (Vec<T>, Option<Uuid>) {
    if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        let next = rows.last().map(id);
        (rows, next)
    } else {
        (rows, None)
    }
}

/// How long a readiness probe's answer stands.
const READY_PROBE_EVERY: Duration = Duration::from_secs(1);

impl Services {
    pub fn new(
        settings: &Settings,
        keys: Keys,
        store: Arc<dyn Store>,
        hasher: PasswordHasher,
        limiter: Arc<dyn RateLimiter>,
        mailer: Option<Mailer>,
        clock: SharedClock,
    ) -> Self {
        let wake = Arc::new(tokio::sync::Notify::new());
        let letters = Letters::new(settings.letters.clone(), wake.clone());
        let audit = Audit {
            store: store.clone(),
            limiter: limiter.clone(),
            clock: clock.clone(),
        };
        let tokens = Arc::new(TokenService::new(
            keys.clone(),
            settings.issuer.clone(),
            settings.audience.clone(),
            settings.access_token_ttl,
        ));
        let liveness = Arc::new(SessionCache::new());
        let sessions = Sessions {
            store: store.clone(),
            tokens: tokens.clone(),
            cache: liveness.clone(),
            limiter: limiter.clone(),
            audit: audit.clone(),
            clock: clock.clone(),
            policy: settings.sessions,
        };
        let check = PasswordCheck {
            users: store.clone(),
            hasher: hasher.clone(),
            limiter: limiter.clone(),
            audit: audit.clone(),
            clock: clock.clone(),
            policy: settings.login,
        };
        let passkeys = Passkeys {
            store: store.clone(),
            sessions: sessions.clone(),
            letters: letters.clone(),
            limiter: limiter.clone(),
            audit: audit.clone(),
            clock: clock.clone(),
            policy: settings.passkeys.clone(),
        };
        let mfa = Mfa {
            store: store.clone(),
            sessions: sessions.clone(),
            letters: letters.clone(),
            limiter: limiter.clone(),
            audit: audit.clone(),
            clock: clock.clone(),
            policy: settings.mfa.clone(),
            passkeys: passkeys.clone(),
        };
        let login = Login {
            check: check.clone(),
            sessions: sessions.clone(),
            mfa: mfa.clone(),
        };
        let flows = Flows {
            store: store.clone(),
            hasher: hasher.clone(),
            limiter: limiter.clone(),
            audit: audit.clone(),
            letters: letters.clone(),
            liveness: liveness.clone(),
            clock: clock.clone(),
            policy: settings.flows,
            background: Arc::new(tokio::sync::Semaphore::new(flows::BACKGROUND_REQUESTS)),
        };
        let accounts = Accounts {
            users: store.clone(),
            effects: store.clone(),
            hasher,
            limiter: limiter.clone(),
            audit: audit.clone(),
            letters,
            mail_quota: settings.flows,
            clock: clock.clone(),
            liveness,
            check,
            factors: store.clone(),
            policy: settings.accounts.clone(),
        };
        let outbox = Outbox {
            store: store.clone(),
            mailer,
            clock: clock.clone(),
            policy: settings.outbox,
            owner: Uuid::new_v4(),
            wake,
        };
        let introspection = Introspection {
            sessions: sessions.clone(),
            store: store.clone(),
            clients: settings.introspection_clients.clone(),
        };
        let clients = Clients {
            store: store.clone(),
            limiter: limiter.clone(),
            audit: audit.clone(),
            clock: clock.clone(),
        };
        let oauth = oauth::OAuth {
            store: store.clone(),
            tokens: tokens.clone(),
            audit: audit.clone(),
            clock: clock.clone(),
            policy: settings.sessions,
            sessions: sessions.clone(),
        };
        Self {
            accounts,
            clients,
            oauth,
            login,
            mfa,
            passkeys,
            introspection,
            sessions,
            flows,
            audit,
            outbox,
            keys,
            tokens,
            store,
            limiter,
            clock,
            readiness: Arc::default(),
        }
    }

    /// The audit log for a command run outside the service.
    pub fn command_audit(store: Arc<dyn Store>) -> Audit {
        Audit {
            store,
            limiter: Arc::new(crate::limits::InMemoryRateLimiter::new()),
            clock: Arc::new(crate::clock::SystemClock),
        }
    }

    /// Client management for a command run outside the service.
    pub fn command_clients(store: Arc<dyn Store>) -> Clients {
        Clients {
            audit: Self::command_audit(store.clone()),
            limiter: Arc::new(crate::limits::InMemoryRateLimiter::new()),
            store,
            clock: Arc::new(crate::clock::SystemClock),
        }
    }

    /// Account management for a command run outside the service: one
    /// hashing thread, no sessions cached, no throttling that matters.
    pub fn command_accounts(store: Arc<dyn Store>, hasher: PasswordHasher) -> Accounts {
        let limiter: Arc<dyn RateLimiter> = Arc::new(crate::limits::InMemoryRateLimiter::new());
        let clock: SharedClock = Arc::new(crate::clock::SystemClock);
        let audit = Audit {
            store: store.clone(),
            limiter: limiter.clone(),
            clock: clock.clone(),
        };
        let unlimited = crate::limits::Quota::per_minute(u32::MAX);
        let check = PasswordCheck {
            users: store.clone(),
            hasher: hasher.clone(),
            limiter: limiter.clone(),
            audit: audit.clone(),
            clock: clock.clone(),
            policy: LoginPolicy {
                free_failures: u32::MAX,
                ip_free_failures: u32::MAX,
                ip_per_minute: u32::MAX,
                account_per_minute: u32::MAX,
                require_verified_email: false,
            },
        };
        Accounts {
            users: store.clone(),
            effects: store.clone(),
            hasher,
            limiter,
            audit,
            // Commands write no mail: nothing they do sends a link.
            letters: Letters::new(LetterPolicy::default(), Arc::default()),
            mail_quota: FlowPolicy {
                per_recipient: unlimited,
                per_ip: unlimited,
                links_per_ip: unlimited,
            },
            clock,
            liveness: Arc::new(SessionCache::new()),
            check,
            factors: store,
            policy: AccountPolicy {
                signup_per_minute: u32::MAX,
                require_verified_email: false,
                reserved_usernames: Vec::new(),
            },
        }
    }

    /// Whether the database answers, and takes writes. The probe writes, so
    /// a passing probe stands for a second, and callers meanwhile share it (a
    /// flood of probes must not queue ahead of logins for the writer); a
    /// failing one is tried again at the next call, so recovery shows at once.
    pub async fn ready(&self) -> AuthResult<()> {
        let mut passed = self.readiness.lock().await;
        let now = self.clock.instant();
        if matches!(*passed, Some(at) if now.saturating_duration_since(at) < READY_PROBE_EVERY) {
            return Ok(());
        }
        self.store.ping(self.clock.now()).await?;
        // Throttling state kept elsewhere (Redis): without it every login
        // is refused, so the instance cannot serve either.
        self.limiter.ready().await.map_err(AuthError::Unavailable)?;
        *passed = Some(now);
        Ok(())
    }

    /// Records the database pools' use in the metrics.
    pub fn sample_pools(&self) {
        for (pool, open, idle) in self.store.pool_use() {
            let open = f64::from(open);
            let idle = idle as f64;
            metrics::gauge!("authgate_db_connections", "pool" => pool, "state" => "idle").set(idle);
            metrics::gauge!("authgate_db_connections", "pool" => pool, "state" => "busy")
                .set((open - idle).max(0.0));
        }
    }

    /// Drops state that no longer affects any decision: unusable session
    /// answers, and throttling entries (in memory, or shared).
    pub async fn prune(&self) {
        self.sessions.prune_cache();
        if let Err(e) = self.limiter.prune(self.clock.now()).await {
            tracing::warn!(error = %format!("{e:#}"), "cannot prune throttling state");
        }
    }
}
