//! Sending the mail outbox. Every instance runs a worker; a message is
//! claimed with a lease before it is sent, so with several instances on one
//! database each message goes out once. A failed send is tried again later,
//! backing off, up to a bounded number of attempts; admins see every
//! message's state. Requests only write to the outbox: a slow or failing
//! mail server never delays or fails an answer.

use std::{sync::Arc, time::Duration};

use uuid::Uuid;

use super::error::AuthResult;
use crate::{
    clock::SharedClock,
    mail::{Mailer, Message},
    store::{MailStore, QueuedMail},
};

/// A message's state as admins see it, as the service's callers use it.
pub use crate::store::{MailInfo, MailStatus};

/// Sending rules, fixed at start-up.
#[derive(Debug, Clone, Copy)]
pub struct OutboxPolicy {
    /// Attempts before a message is given up.
    pub max_attempts: u32,
    /// The first retry's delay; each later one doubles, up to an hour.
    pub first_retry: Duration,
}

/// Messages claimed at once.
const BATCH: u32 = 10;
/// How long a claim holds: longer than a batch of sends can take (each is
/// bounded by the mailer's own deadline), so a live sender never loses it.
const LEASE: Duration = Duration::from_secs(300);
/// How often the worker looks for due messages when nobody wakes it.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub struct Outbox {
    pub(super) store: Arc<dyn MailStore>,
    pub(super) mailer: Option<Mailer>,
    pub(super) clock: SharedClock,
    pub(super) policy: OutboxPolicy,
    /// This instance, as the holder of its claims.
    pub(super) owner: Uuid,
    pub(super) wake: Arc<tokio::sync::Notify>,
}

/// A page of messages, newest first.
#[derive(Debug, Clone)]
pub struct MailPage {
    pub messages: Vec<MailInfo>,
    pub next_before: Option<Uuid>,
}

impl Outbox {
    /// Sends due messages until stopped: woken when mail is written, and
    /// every [`POLL_INTERVAL`] for retries and other instances' mail.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(mailer) = self.mailer.clone() else {
            return;
        };
        tracing::info!(transport = %mailer.describe(), "sending mail");
        while !*stop.borrow() {
            let claimed = self.send_due(&mailer).await;
            if claimed == BATCH as usize {
                continue;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(POLL_INTERVAL) => {}
                _ = stop.changed() => {}
            }
        }
        tracing::info!("mail sender stopped");
    }

    /// Claims one batch of due messages and sends them; how many were claimed.
    async fn send_due(&self, mailer: &Mailer) -> usize {
        let now = self.clock.now();
        let claimed = match self
            .store
            .claim_mail(
                self.owner,
                BATCH,
                self.policy.max_attempts,
                now,
                now + LEASE,
            )
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the mail outbox");
                return 0;
            }
        };
        let count = claimed.len();
        for mail in claimed {
            self.send(mailer, mail).await;
        }
        count
    }

    async fn send(&self, mailer: &Mailer, mail: QueuedMail) {
        let message = Message {
            to: mail.to,
            subject: mail.subject,
            text: mail.text,
        };
        let outcome = mailer.send(mail.id, &message).await;
        let now = self.clock.now();
        let recorded = match outcome {
            Ok(()) => {
                tracing::info!(mail_id = %mail.id, attempts = mail.attempts, "mail sent");
                self.store.mail_sent(mail.id, self.owner, now).await
            }
            Err(e) => {
                let retry_at = (!e.permanent && mail.attempts < self.policy.max_attempts)
                    .then(|| now + self.retry_delay(mail.attempts));
                tracing::warn!(
                    mail_id = %mail.id,
                    attempts = mail.attempts,
                    permanent = e.permanent,
                    retry = retry_at.is_some(),
                    error = %e.reason,
                    "mail not sent"
                );
                self.store
                    .mail_failed(mail.id, self.owner, &e.reason, retry_at)
                    .await
            }
        };
        if let Err(e) = recorded {
            tracing::warn!(mail_id = %mail.id, error = %e, "cannot record a send in the outbox");
        }
    }

    /// The wait before the attempt after `attempts`: doubling, at most an hour.
    fn retry_delay(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(16);
        (self.policy.first_retry * 2u32.pow(doublings)).min(LONGEST_RETRY)
    }

    /// Messages newest first, with that status, `limit` at a time.
    pub async fn list(
        &self,
        status: Option<MailStatus>,
        limit: u32,
        before: Option<Uuid>,
    ) -> AuthResult<MailPage> {
        // One extra row tells whether there is a next page.
        let messages = self.store.list_mail(status, limit + 1, before).await?;
        let (messages, next_before) = super::cut_page(messages, limit, |m| m.id);
        Ok(MailPage {
            messages,
            next_before,
        })
    }

    /// Deletes messages sent or given up longer than `retention` ago.
    pub async fn purge(&self, retention: Duration) -> AuthResult<u64> {
        Ok(self.store.purge_mail(self.clock.now() - retention).await?)
    }
}
