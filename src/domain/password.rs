use std::{collections::HashSet, fmt, sync::LazyLock};

use secrecy::{ExposeSecret, SecretString};

use super::{Email, Username};

/// The bundled list of common passwords (lowercase, one per line); see
/// `assets/README.md` for its origin.
static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../../assets/common-passwords.txt")
        .lines()
        .filter(|l| !l.is_empty())
        .collect()
});

/// A new password that meets the policy. Its `Debug` never shows the value.
///
/// The policy follows ASVS 5 V6.2 / NIST SP 800-63B: a minimum length, a
/// generous maximum, a block-list of common passwords and of the account's own
/// identifiers, and no composition rules.
#[derive(Clone)]
pub struct Password(SecretString);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("must be at least {} characters long", Password::MIN_CHARS)]
    TooShort,
    #[error("must be at most {} characters long", Password::MAX_CHARS)]
    TooLong,
    #[error("is too common; choose a less guessable password")]
    Common,
    #[error("must not be the same as the username or email")]
    SameAsIdentifier,
}

impl Password {
    pub const MIN_CHARS: usize = 8;
    /// Bounds the work one hash can cost (at most 4 KiB of UTF-8) while
    /// allowing long passphrases. Counted in characters, as JSON Schema's
    /// `maxLength` counts, so the API document states the rule exactly.
    pub const MAX_CHARS: usize = 1024;

    pub fn parse(
        raw: &str,
        username: Option<&Username>,
        email: Option<&Email>,
    ) -> Result<Self, PasswordError> {
        if Self::too_long(raw) {
            return Err(PasswordError::TooLong);
        }
        if raw.chars().count() < Self::MIN_CHARS {
            return Err(PasswordError::TooShort);
        }
        // Surrounding spaces do not make a common password uncommon.
        let lower = raw.trim().to_lowercase();
        if is_common(&lower) {
            return Err(PasswordError::Common);
        }
        let same_as = |id: &str| id.to_lowercase() == lower;
        if username.is_some_and(|u| same_as(u.as_str()))
            || email.is_some_and(|e| same_as(e.as_str()))
        {
            return Err(PasswordError::SameAsIdentifier);
        }
        Ok(Self(SecretString::from(raw)))
    }

    /// Whether `raw` is longer than any password can be (no account has
    /// one: a login with it fails without hashing it).
    pub fn too_long(raw: &str) -> bool {
        // The byte length bounds the count before it is taken: no
        // character is longer than 4 bytes.
        raw.len() > 4 * Self::MAX_CHARS || raw.chars().count() > Self::MAX_CHARS
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// Whether a (lowercased) password is on the bundled common-password list.
pub fn is_common(lowercase: &str) -> bool {
    COMMON_PASSWORDS.contains(lowercase)
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_common_list_holds_at_least_ten_thousand_entries() {
        assert!(
            COMMON_PASSWORDS.len() >= 10_000,
            "{}",
            COMMON_PASSWORDS.len()
        );
    }

    #[test]
    fn common_passwords_are_rejected_whatever_their_case() {
        for pw in [
            "password",
            "Password1",
            "12345678",
            "QWERTYUIOP",
            "iloveyou",
        ] {
            assert_eq!(
                Password::parse(pw, None, None).unwrap_err(),
                PasswordError::Common,
                "{pw}"
            );
        }
    }

    #[test]
    fn short_and_overlong_passwords_are_rejected() {
        assert_eq!(
            Password::parse("Xy7#kq2", None, None).unwrap_err(),
            PasswordError::TooShort
        );
        let long = "x".repeat(1025);
        assert_eq!(
            Password::parse(&long, None, None).unwrap_err(),
            PasswordError::TooLong
        );
        assert!(Password::parse(&"zq9".repeat(341), None, None).is_ok());
        // 1024 characters of four bytes each: long in bytes, not too long.
        assert!(Password::parse(&"\u{1F510}".repeat(1024), None, None).is_ok());
        assert_eq!(
            Password::parse(&"\u{1F510}".repeat(1025), None, None).unwrap_err(),
            PasswordError::TooLong
        );
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        // Seven characters, fourteen bytes: still too short.
        assert_eq!(
            Password::parse("ééééééé", None, None).unwrap_err(),
            PasswordError::TooShort
        );
        assert!(Password::parse("éééééééé", None, None).is_ok());
    }

    #[test]
    fn a_password_equal_to_the_username_or_email_is_rejected() {
        let u = Username::parse("Zebra.Crossing77").unwrap();
        let e = Email::parse("zebra.crossing77@example.org").unwrap();
        assert_eq!(
            Password::parse("zebra.crossing77", Some(&u), None).unwrap_err(),
            PasswordError::SameAsIdentifier
        );
        assert_eq!(
            Password::parse("ZEBRA.CROSSING77@example.org", None, Some(&e)).unwrap_err(),
            PasswordError::SameAsIdentifier
        );
    }

    #[test]
    fn debug_output_hides_the_password() {
        let pw = Password::parse("correct horse battery staple", None, None).unwrap();
        assert!(!format!("{pw:?}").contains("horse"));
    }

    proptest! {
        #[test]
        fn long_random_passwords_without_composition_rules_are_accepted(s in "[a-z]{12,40}") {
            prop_assume!(!is_common(&s));
            prop_assert!(Password::parse(&s, None, None).is_ok());
        }

        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = Password::parse(&s, None, None);
        }
    }
}
