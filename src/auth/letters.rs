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

/// A letter carrying a single-use link: what it is for, and what it says
/// around the link.
struct LinkLetter {
    purpose: FlowPurpose,
    /// The outbox's name for the message.
    kind: &'static str,
    subject: &'static str,
    /// The path the link points at, under the public URL.
    path: &'static str,
    /// What comes before the link.
    intro: &'static str,
    /// What follows "The link works once, for …."
    outro: &'static str,
}

const VERIFICATION: LinkLetter = LinkLetter {
    purpose: FlowPurpose::VerifyEmail,
    kind: "verify_email",
    subject: "Confirm your email address",
    path: "/auth/verify-email",
    intro: "Please confirm that this is your email address by opening this link:",
    outro: " If you did not sign up, ignore this message.",
};

const PASSWORD_RESET: LinkLetter = LinkLetter {
    purpose: FlowPurpose::ResetPassword,
    kind: "password_reset",
    subject: "Reset your password",
    path: "/auth/password/reset",
    intro: "Someone asked to reset the password of your account. To choose a new one, \
            open this link:",
    outro: " If it was not you, ignore this message: your password stays as it is.",
};

const INVITATION: LinkLetter = LinkLetter {
    purpose: FlowPurpose::ResetPassword,
    kind: "invitation",
    subject: "Your new account",
    path: "/auth/password/reset",
    intro: "An account was created for you. To choose your password, open this link:",
    outro: "",
};

const EMAIL_CHANGE: LinkLetter = LinkLetter {
    purpose: FlowPurpose::ChangeEmail,
    kind: "email_change",
    subject: "Confirm your new email address",
    path: "/auth/email/confirm",
    intro: "To make this the email address of your account, open this link:",
    outro: " If you did not ask for this, ignore this message.",
};

impl Letters {
    pub fn new(policy: LetterPolicy, wake: Arc<tokio::sync::Notify>) -> Self {
        Self { policy, wake }
    }

    /// Tells the outbox worker that mail is waiting (after the commit).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Adds `letter` to `effects`: a new link for `user_id`, bound to `to`
    /// and replacing the user's earlier links of its purpose, mailed to `to`.
    fn send_link(
        &self,
        letter: &LinkLetter,
        effects: &mut Effects,
        user_id: Uuid,
        to: &Email,
        ttl: Duration,
        now: OffsetDateTime,
    ) {
        // 256 random bits; only the SHA-256 hash is stored.
        let issued = refresh::generate();
        let text = format!(
            "{}\n\n{}{}?token={}\n\nThe link works once, for {}.{}\n",
            letter.intro,
            self.policy.public_url,
            letter.path,
            issued.token,
            in_words(ttl),
            letter.outro,
        );
        effects
            .mail
            .push(Self::mail(letter.kind, to, letter.subject, text, now));
        effects.token = Some(NewFlowToken {
            hash: issued.hash,
            purpose: letter.purpose,
            user_id,
            email: to.clone(),
            created_at: now,
            expires_at: now + ttl,
        });
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
        self.send_link(&VERIFICATION, effects, user_id, email, ttl, now);
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
        self.send_link(&PASSWORD_RESET, effects, user_id, email, ttl, now);
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
        self.send_link(&INVITATION, effects, user_id, email, ttl, now);
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
        self.send_link(&EMAIL_CHANGE, effects, user_id, new, ttl, now);
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
    }
}

/// A change to how an account logs in, told to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityNotice {
    FactorAdded,
    FactorRemoved,
    FactorsReset,
    RecoveryCodesReplaced,
    /// A recovery code stood in for the second factor at a login.
    RecoveryCodeUsed,
}

impl Letters {
    /// Tells the owner of a verified address about a change to how the
    /// account logs in (no link: a notice can only warn). Adds to `effects`.
    pub fn security_notice(
        &self,
        effects: &mut Effects,
        user: &crate::domain::User,
        notice: SecurityNotice,
        now: OffsetDateTime,
    ) {
        // Only to an address the owner proved: a notice must not tell a
        // stranger who typed their address anything about the account.
        let Some(to) = user
            .email
            .as_ref()
            .filter(|_| user.email_verified)
            .and_then(|e| Email::parse(e.as_str()).ok())
        else {
            return;
        };
        let (subject, what) = match notice {
            SecurityNotice::FactorAdded => (
                "A second factor was added to your account",
                "An authenticator app was added to your account as a second factor.",
            ),
            SecurityNotice::FactorRemoved => (
                "A second factor was removed from your account",
                "A second factor was removed from your account.",
            ),
            SecurityNotice::FactorsReset => (
                "The second factors of your account were removed",
                "An administrator removed every second factor of your account: your \
                 password alone logs in now.",
            ),
            SecurityNotice::RecoveryCodesReplaced => (
                "New recovery codes for your account",
                "New recovery codes were made for your account; the old ones no longer work.",
            ),
            SecurityNotice::RecoveryCodeUsed => (
                "A recovery code was used to log in to your account",
                "A recovery code stood in for your second factor at a login to your account; \
                 it cannot be used again.",
            ),
        };
        let text = format!(
            "{what}\n\nIf this was not you, change your password now and log out your \
             other sessions.\n"
        );
        effects
            .mail
            .push(Self::mail("security_notice", &to, subject, text, now));
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
    fn a_letter_carries_its_link_and_stores_only_the_hash() {
        let letters = Letters::new(LetterPolicy::default(), Arc::default());
        let mut effects = Effects::default();
        let email = Email::parse("ann@example.org").unwrap();
        let now = OffsetDateTime::UNIX_EPOCH;
        letters.password_reset(&mut effects, Uuid::nil(), &email, now);
        let mail = &effects.mail[0];
        let token = effects.token.as_ref().unwrap();
        let secret = mail
            .text
            .split("?token=")
            .nth(1)
            .unwrap()
            .split('\n')
            .next()
            .unwrap();
        assert_eq!(refresh::hash(secret), token.hash);
        assert_eq!(
            mail.text,
            format!(
                "Someone asked to reset the password of your account. To choose a new one, \
                 open this link:\n\nhttp://127.0.0.1:8010/auth/password/reset?token={secret}\n\n\
                 The link works once, for 30 minutes. If it was not you, ignore this message: \
                 your password stays as it is.\n"
            )
        );
        assert_eq!(
            (mail.kind, mail.subject.as_str()),
            ("password_reset", "Reset your password")
        );
        assert_eq!(token.purpose, FlowPurpose::ResetPassword);
        assert_eq!(token.expires_at, now + Duration::from_secs(1800));
    }

    #[test]
    fn lifetimes_read_as_words() {
        assert_eq!(in_words(Duration::from_secs(86_400)), "1 day");
        assert_eq!(in_words(Duration::from_secs(7_200)), "2 hours");
        assert_eq!(in_words(Duration::from_secs(1_800)), "30 minutes");
        assert_eq!(in_words(Duration::from_secs(90)), "90 seconds");
    }
}
