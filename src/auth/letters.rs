//! The mail authgate writes, with the single-use link each carries. A
//! letter is only composed here; it reaches the outbox in the transaction of
//! the change that causes it, and the outbox worker sends it.

use std::{sync::Arc, time::Duration};

use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    crypto::refresh,
    domain::Email,
    store::{Effects, FlowPurpose, NewFlowToken, OutboxMail},
};

/// Links and their lifetimes, fixed at start-up.
#[derive(Debug, Clone)]
pub struct LetterPolicy {
    /// Where the links in mail point, without a trailing `/`.
    pub public_url: String,
    pub verify_email_ttl: Duration,
    pub password_reset_ttl: Duration,
    pub email_change_ttl: Duration,
    /// How long the link in an account created by an admin stays good.
    pub invitation_ttl: Duration,
}

impl Default for LetterPolicy {
    fn default() -> Self {
        const HOUR: u64 = 3600;
        Self {
            public_url: "http://127.0.0.1:8010".into(),
            verify_email_ttl: Duration::from_secs(24 * HOUR),
            password_reset_ttl: Duration::from_secs(HOUR / 2),
            email_change_ttl: Duration::from_secs(HOUR),
            invitation_ttl: Duration::from_secs(24 * HOUR),
        }
    }
}

/// Composes letters, and wakes the outbox worker when one is written.
#[derive(Clone)]
pub struct Letters {
    policy: LetterPolicy,
    wake: Arc<tokio::sync::Notify>,
}

/// A letter carrying a link: what to store, and the mail.
struct Link {
    token: NewFlowToken,
    /// The token itself, for the link only; never stored or logged.
    secret: String,
}

impl Letters {
    pub fn new(policy: LetterPolicy, wake: Arc<tokio::sync::Notify>) -> Self {
        Self { policy, wake }
    }

    /// Tells the outbox worker that mail is waiting (after the commit).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn link(
        &self,
        purpose: FlowPurpose,
        user_id: Uuid,
        email: &Email,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Link {
        // 256 random bits; only the SHA-256 hash is stored.
        let issued = refresh::generate();
        Link {
            token: NewFlowToken {
                hash: issued.hash,
                purpose,
                user_id,
                email: email.clone(),
                created_at: now,
                expires_at: now + ttl,
            },
            secret: issued.token,
        }
    }

    fn url(&self, path: &str, secret: &str) -> String {
        format!("{}{path}?token={secret}", self.policy.public_url)
    }

    fn mail(
        kind: &'static str,
        to: &Email,
        subject: &str,
        text: String,
        now: OffsetDateTime,
    ) -> OutboxMail {
        OutboxMail {
            id: Uuid::now_v7(),
            kind,
            to: to.as_str().to_owned(),
            subject: subject.to_owned(),
            text,
            created_at: now,
        }
    }

    /// A link that verifies `email`, mailed to it; adds to `effects`.
    pub fn verification(
        &self,
        effects: &mut Effects,
        user_id: Uuid,
        email: &Email,
        now: OffsetDateTime,
    ) {
        let ttl = self.policy.verify_email_ttl;
        let link = self.link(FlowPurpose::VerifyEmail, user_id, email, now, ttl);
        let text = format!(
            "Please confirm that this is your email address by opening this link:\n\n{}\n\n\
             The link works once, for {}. If you did not sign up, ignore this message.\n",
            self.url("/auth/verify-email", &link.secret),
            in_words(ttl),
        );
        effects.mail.push(Self::mail(
            "verify_email",
            email,
            "Confirm your email address",
            text,
            now,
        ));
        effects.token = Some(link.token);
    }

    /// A link that sets a new password, mailed to the account's address.
    pub fn password_reset(
        &self,
        effects: &mut Effects,
        user_id: Uuid,
        email: &Email,
        now: OffsetDateTime,
    ) {
        let ttl = self.policy.password_reset_ttl;
        let link = self.link(FlowPurpose::ResetPassword, user_id, email, now, ttl);
        let text = format!(
            "Someone asked to reset the password of your account. To choose a new one, \
             open this link:\n\n{}\n\nThe link works once, for {}. If it was not you, \
             ignore this message: your password stays as it is.\n",
            self.url("/auth/password/reset", &link.secret),
            in_words(ttl),
        );
        effects.mail.push(Self::mail(
            "password_reset",
            email,
            "Reset your password",
            text,
            now,
        ));
        effects.token = Some(link.token);
    }

    /// For an account an admin created without a password: a link to choose one.
    pub fn invitation(
        &self,
        effects: &mut Effects,
        user_id: Uuid,
        email: &Email,
        now: OffsetDateTime,
    ) {
        let ttl = self.policy.invitation_ttl;
        let link = self.link(FlowPurpose::ResetPassword, user_id, email, now, ttl);
        let text = format!(
            "An account was created for you. To choose your password, open this link:\n\n{}\n\n\
             The link works once, for {}.\n",
            self.url("/auth/password/reset", &link.secret),
            in_words(ttl),
        );
        effects.mail.push(Self::mail(
            "invitation",
            email,
            "Your new account",
            text,
            now,
        ));
        effects.token = Some(link.token);
    }

    /// A change of address: a link to the new address, which changes it,
    /// and a notice to the old one, if any, which can do nothing but warn.
    pub fn email_change(
        &self,
        effects: &mut Effects,
        user_id: Uuid,
        old: Option<&Email>,
        new: &Email,
        now: OffsetDateTime,
    ) {
        let ttl = self.policy.email_change_ttl;
        let link = self.link(FlowPurpose::ChangeEmail, user_id, new, now, ttl);
        let text = format!(
            "To make this the email address of your account, open this link:\n\n{}\n\n\
             The link works once, for {}. If you did not ask for this, ignore this message.\n",
            self.url("/auth/email/confirm", &link.secret),
            in_words(ttl),
        );
        effects.mail.push(Self::mail(
            "email_change",
            new,
            "Confirm your new email address",
            text,
            now,
        ));
        if let Some(old) = old {
            let notice = format!(
                "Someone asked to change the email address of your account to {}. The change \
                 happens only when the link sent to that address is opened.\n\nIf this was \
                 not you, change your password now and log out your other sessions.\n",
                new.as_str(),
            );
            effects.mail.push(Self::mail(
                "email_change_notice",
                old,
                "Your email address is about to change",
                notice,
                now,
            ));
        }
        effects.token = Some(link.token);
    }
}

/// A link's lifetime as a mail says it: "24 hours", "30 minutes", "1 day".
fn in_words(ttl: Duration) -> String {
    let secs = ttl.as_secs();
    let (n, unit) = match secs {
        s if s >= 86_400 && s % 86_400 == 0 => (s / 86_400, "day"),
        s if s >= 3_600 && s % 3_600 == 0 => (s / 3_600, "hour"),
        s if s >= 60 && s % 60 == 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_read_as_words() {
        assert_eq!(in_words(Duration::from_secs(86_400)), "1 day");
        assert_eq!(in_words(Duration::from_secs(7_200)), "2 hours");
        assert_eq!(in_words(Duration::from_secs(1_800)), "30 minutes");
        assert_eq!(in_words(Duration::from_secs(90)), "90 seconds");
    }
}
