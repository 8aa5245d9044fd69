//! The audit log: events that change nothing else (a failed login, a
//! throttled client), the admins' view of the log, and its retention.
//! Events of a change are written by the change itself, in its transaction.

use std::{sync::Arc, time::Duration};

use uuid::Uuid;

use super::{
    Client,
    error::{AuthError, AuthResult},
};
use crate::{
    clock::SharedClock,
    limits::{Key, Quota, RateLimiter, client_bucket},
    store::AuditStore,
};

/// The log's vocabulary, as the service's callers use it.
pub use crate::store::{AuditFilter, AuditKind, AuditRecord};

#[derive(Clone)]
pub struct Audit {
    pub(super) store: Arc<dyn AuditStore>,
    pub(super) limiter: Arc<dyn RateLimiter>,
    pub(super) clock: SharedClock,
}

/// A page of events, newest first.
#[derive(Debug, Clone)]
pub struct AuditPage {
    pub events: Vec<AuditRecord>,
    /// The id to continue before, if there are more events.
    pub next_before: Option<Uuid>,
}

impl Audit {
    /// An event of `client`'s request, acted by `actor`, now.
    pub fn event(&self, client: &Client, actor: Option<Uuid>, kind: AuditKind) -> AuditRecord {
        client.context(actor).record(kind, self.clock.now())
    }

    /// Records an event that changes nothing else. A failure is logged, not
    /// returned: the answer to the client must not depend on it.
    pub async fn record(&self, record: AuditRecord) {
        if let Err(e) = self.store.record(&record).await {
            tracing::warn!(error = %e, kind = record.kind.as_str(), "audit event not recorded");
        }
    }

    /// Records that `client` was throttled at `what`, once a minute per client
    /// and limit at most: a flood of refused requests must not become a
    /// flood of writes.
    pub async fn throttled(&self, client: &Client, what: &str, user_id: Option<Uuid>) {
        let key = Key::new(
            "audit_throttled",
            format!("{what}:{}", client_bucket(client.ip)),
        );
        let once_a_minute = Quota::per_minute(1);
        if self
            .limiter
            .take(&key, once_a_minute, self.clock.now())
            .await
            .is_err()
        {
            return;
        }
        let mut record = self
            .event(client, None, AuditKind::Throttled)
            .failed()
            .detail(what);
        record.user_id = user_id;
        self.record(record).await;
    }

    /// Records `result`'s throttling, if it is one, and hands it back.
    pub async fn note_throttling<T>(
        &self,
        client: &Client,
        what: &str,
        user_id: Option<Uuid>,
        result: AuthResult<T>,
    ) -> AuthResult<T> {
        if let Err(AuthError::Throttled(_)) = &result {
            self.throttled(client, what, user_id).await;
        }
        result
    }

    /// Events newest first, `limit` at a time, before `before`.
    pub async fn list(
        &self,
        filter: AuditFilter,
        limit: u32,
        before: Option<Uuid>,
    ) -> AuthResult<AuditPage> {
        // One extra row tells whether there is a next page.
        let events = self.store.list_audit(&filter, limit + 1, before).await?;
        let (events, next_before) = super::cut_page(events, limit, |e| e.id);
        Ok(AuditPage {
            events,
            next_before,
        })
    }

    /// Deletes events older than `retention`.
    pub async fn purge(&self, retention: Duration) -> AuthResult<u64> {
        Ok(self.store.purge_audit(self.clock.now() - retention).await?)
    }
}
