use std::{fmt, str::FromStr, sync::LazyLock};

use email_address::EmailAddress;
use regex::Regex;

/// A syntactically valid email address (RFC 5321/5322 as checked by the
/// `email_address` crate), at most 254 bytes, stored as the user typed it.
///
/// Only ASCII addresses are accepted (internationalized domains in their
/// `xn--` form). Why: Unicode has many look-alikes of ASCII letters (a
/// full-width `ｋ`, the Kelvin sign `K`, a Cyrillic `а`), and some lower-case
/// *into* ASCII, so `\u{212A}ate@example.com` could collide with, or log into,
/// `kate@example.com`. With ASCII alone, case-insensitive comparison is exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// RFC 5321 §4.5.3.1.3: a path is at most 256 octets including the brackets.
    pub const MAX_LEN: usize = 254;
    /// The longest local part (RFC 5321 §4.5.3.1.1).
    pub const MAX_LOCAL_LEN: usize = 64;
    /// What [`Email::parse`] accepts, as a regular expression for the API
    /// document, together with `maxLength` [`Email::MAX_LEN`] and the
    /// `email` format (which holds the local part to
    /// [`Email::MAX_LOCAL_LEN`] characters and `xn--` labels to valid IDNA):
    /// a dot-atom without `%` or `?` (no routes, no encoded words), then a
    /// domain name ending in a top-level domain of letters or an `xn--` one.
    pub const PATTERN: &'static str = concat!(
        "^[A-Za-z0-9!#$&'*+/=^_`{|}~-]+(\\.[A-Za-z0-9!#$&'*+/=^_`{|}~-]+)*",
        "@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.)+",
        "([A-Za-z]{2,63}|xn--[A-Za-z0-9]([A-Za-z0-9-]{0,57}[A-Za-z0-9])?)$"
    );

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.len() > Self::MAX_LEN {
            return Err(format!("must be at most {} bytes", Self::MAX_LEN));
        }
        // Display names ("Alice <a@b.c>") are valid RFC 5322 but not an address.
        if raw.contains(['<', '>']) || raw.trim() != raw {
            return Err("is not a valid email address".into());
        }
        if !raw.is_ascii() {
            return Err(
                "must be ASCII (write an internationalized domain in its xn-- form)".into(),
            );
        }
        match EmailAddress::from_str(raw) {
            // A quoted local part (`"kate"@…` is kate's mailbox under another
            // spelling, and `"kate@x.test"@evil.test` shows someone else's
            // address) or an IP literal domain (`x@[127.0.0.1]`) is valid
            // RFC 5322 but no address a user has.
            Ok(address) if address.local_part().starts_with('"') => {
                Err("must not have a quoted local part".into())
            }
            // An encoded word (`=?utf-8?q?…?=`, RFC 2047) or a `%` route in
            // the local part is read differently by some mail servers (the
            // address "splits": `=?…?q?evil=40x.test=3e?=@corp.test` can be
            // delivered to evil@x.test), so a mailbox elsewhere could verify
            // an address it does not own.
            Ok(address)
                if address.local_part().contains('%')
                    || (address.local_part().contains("=?")
                        && address.local_part().contains("?=")) =>
            {
                Err("must not contain an encoded word or a % route".into())
            }
            Ok(address) if !is_domain_name(address.domain()) => {
                Err("must have a domain name, not an IP address or a bare host name".into())
            }
            // Last, the documented pattern itself, so that the API document
            // states exactly what is accepted (it also keeps out a `?` a
            // mail server might read as part of an encoded word).
            Ok(_) if !EMAIL_PATTERN.is_match(raw) => Err("is not a valid email address".into()),
            Ok(_) => Ok(Self(raw.to_owned())),
            Err(_) => Err("is not a valid email address".into()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key under which uniqueness is enforced: the whole address lowercased.
    /// (Local parts are case-sensitive in theory, never in practice; treating
    /// them as insensitive prevents look-alike duplicate accounts.)
    pub fn normalized(&self) -> String {
        super::login_key(&self.0)
    }
}

static EMAIL_PATTERN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(Email::PATTERN).expect("the email pattern compiles"));

/// A name in the public DNS: dotted, ending in a top-level domain of letters
/// (or an internationalized one, `xn--…`), which no IP address is.
fn is_domain_name(domain: &str) -> bool {
    let shaped = match domain.rsplit_once('.') {
        Some((rest, tld)) => {
            !rest.is_empty()
                && (tld.bytes().all(|b| b.is_ascii_alphabetic()) || tld.starts_with("xn--"))
                && tld.len() >= 2
        }
        None => false,
    };
    // Hyphens in the third and fourth places mark an encoded label (IDNA
    // 2008); an `xn--` one must be the encoding of a valid internationalized
    // label (`xn--p1ai`), not any text after the prefix (`xn--o`).
    let mut encoded = false;
    for label in domain.split('.') {
        if label.get(2..4) == Some("--") {
            if !label[..2].eq_ignore_ascii_case("xn") {
                return false;
            }
            encoded = true;
        }
    }
    shaped && (!encoded || idna::domain_to_unicode(domain).1.is_ok())
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ordinary_addresses_parse_and_keep_their_case() {
        let e = Email::parse("Alice.Smith+tag@Example.com").unwrap();
        assert_eq!(e.as_str(), "Alice.Smith+tag@Example.com");
        assert_eq!(e.normalized(), "alice.smith+tag@example.com");
    }

    #[test]
    fn malformed_addresses_are_rejected() {
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@",
            "a b@example.com",
            "Alice <a@example.com>",
            " a@example.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn addresses_a_mail_server_could_split_are_refused() {
        for bad in [
            "=?utf-8?q?attacker=40evil=2enet=3e=00?=@corp.example",
            "=?x?b?YXR0YWNrZXJAZXZpbC5uZXQ+?=@corp.example",
            "a%evil.net@example.org",
            // A lone `?` is valid RFC 5322, but no mailbox needs it and it
            // half-opens an encoded word.
            "a=b?c@example.org",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Email::parse("a=b+c@example.org").is_ok());
    }

    #[test]
    fn internationalized_domains_must_be_valid_encodings() {
        for good in ["a@b.xn--p1ai", "a@xn--bcher-kva.de", "a@XN--BCHER-KVA.de"] {
            assert!(Email::parse(good).is_ok(), "{good:?} should parse");
        }
        for bad in [
            "a@b.xn--O",
            "a@xn--abc.com",
            "a@b.xn--",
            "a@xn--.com",
            "a@ab--cd.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn look_alikes_of_ascii_letters_are_refused() {
        for look_alike in [
            "\u{FF4B}ate@example.com", // full-width k
            "\u{212A}ate@example.com", // Kelvin sign
            "kate@ex\u{0430}mple.com", // Cyrillic a
            "kat\u{00E9}@example.com", // e with an acute accent
            "kate@b\u{00FC}cher.de",   // an IDN not in its xn-- form
        ] {
            assert!(Email::parse(look_alike).is_err(), "{look_alike:?}");
        }
        assert!(Email::parse("kate@xn--bcher-kva.de").is_ok());
        for spelled_otherwise in [
            "\"kate\"@example.com",
            "\"kate@example.com\"@evil.test",
            "x@[127.0.0.1]",
            "x@127.0.0.1",
            "x@0x7f000001",
            "x@localhost",
            "x@example",
        ] {
            assert!(
                Email::parse(spelled_otherwise).is_err(),
                "{spelled_otherwise}"
            );
        }
    }

    #[test]
    fn overlong_addresses_are_rejected() {
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }

    proptest! {
        #[test]
        fn simple_addresses_parse(local in "[a-z0-9]{1,20}", domain in "[a-z]{1,20}\\.[a-z]{2,6}") {
            let raw = format!("{local}@{domain}");
            prop_assert!(Email::parse(&raw).is_ok());
        }

        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = Email::parse(&s);
        }

        /// The documented pattern promises no more than `parse` keeps:
        /// every address it matches (within the lengths) parses.
        #[test]
        fn every_address_the_documented_pattern_matches_parses(
            s in "[A-Za-z0-9!#$&'*+/=^_`{|}~-]{1,20}(\\.[A-Za-z0-9!#$&'*+/=^_`{|}~-]{1,20}){0,2}@([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.){1,3}([A-Za-z]{2,63}|xn--[A-Za-z0-9]([A-Za-z0-9-]{0,57}[A-Za-z0-9])?)",
        ) {
            let pattern = regex::Regex::new(Email::PATTERN).unwrap();
            prop_assert!(pattern.is_match(&s), "{:?}", s);
            let (local, domain) = s.split_once('@').unwrap();
            prop_assume!(s.len() <= Email::MAX_LEN && local.len() <= Email::MAX_LOCAL_LEN);
            // Encoded labels must also be valid IDNA (the `email` format).
            prop_assume!(!domain.split('.').any(|label| label.get(2..4) == Some("--")));
            prop_assert!(Email::parse(&s).is_ok(), "{:?}", s);
        }

        /// And what it does not match, `parse` refuses.
        #[test]
        fn an_address_outside_the_documented_pattern_is_refused(
            s in prop_oneof!["[a-z%?\"()<> .]{1,12}@[a-z0-9.\\[\\]-]{1,16}", "\\PC{0,40}"],
        ) {
            let pattern = regex::Regex::new(Email::PATTERN).unwrap();
            prop_assume!(!pattern.is_match(&s));
            prop_assert!(Email::parse(&s).is_err(), "{:?}", s);
        }
    }
}
