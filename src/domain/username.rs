use std::fmt;

/// A username: 3–64 ASCII letters, digits, `.`, `_` or `-`.
///
/// Kept to ASCII so that case-insensitive uniqueness is exact (no Unicode case
/// folding or confusable characters to reason about).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub const MIN_LEN: usize = 3;
    pub const MAX_LEN: usize = 64;
    /// The rule of [`Username::parse`] as a regular expression (for the API
    /// document).
    pub const PATTERN: &'static str = "^[A-Za-z0-9._-]{3,64}$";

    pub fn parse(raw: &str) -> Result<Self, String> {
        let len = raw.len();
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&len) {
            return Err(format!(
                "must be {} to {} characters long",
                Self::MIN_LEN,
                Self::MAX_LEN
            ));
        }
        if !raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err("may contain only ASCII letters, digits, '.', '_' and '-'".into());
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key under which uniqueness is enforced.
    pub fn normalized(&self) -> String {
        super::login_key(&self.0)
    }
}

/// What a name looks like to a reader: its letters and digits in lower
/// case, with digits and letters that pass for others read as those
/// (`r00t`, `4dm1n`, `admln`).
fn skeleton(name: &str) -> String {
    name.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| match c.to_ascii_lowercase() {
            '0' => 'o',
            '1' | 'l' => 'i',
            '3' => 'e',
            '4' => 'a',
            '5' => 's',
            '7' => 't',
            c => c,
        })
        .collect()
}

/// Whether `name` passes for `reserved` (both skeletons): the same, or the
/// same with a number or a plural ending (`admin1`, `r007`, `admins`).
pub fn passes_for(name: &str, reserved: &str) -> bool {
    let (name, reserved) = (skeleton(name), skeleton(reserved));
    if reserved.is_empty() {
        return false;
    }
    let Some(rest) = name.strip_prefix(&reserved) else {
        return false;
    };
    // What stands for a trailing number reads as o, i, e, a, s or t.
    rest.is_empty()
        || rest == "s"
        || (rest.len() <= 3
            && rest
                .chars()
                .all(|c| c.is_ascii_digit() || "oieast".contains(c)))
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skeleton_ignores_case_and_separators() {
        assert_eq!(skeleton("Ad.Min_-"), "admin");
        for disguised in [
            "adm1n", "4dmin", "admin1", "ADMIN_42", "admln", "admins", "Ad.Min",
        ] {
            assert!(passes_for(disguised, "admin"), "{disguised}");
        }
        for disguised in ["r00t", "r007", "ROOT"] {
            assert!(passes_for(disguised, "root"), "{disguised}");
        }
        assert!(passes_for("suppor7", "support"));
        assert!(passes_for("administrat0r", "administrator"));
        for innocent in ["alice", "admiral", "rooted_tree", "badminton", "supporter1"] {
            for reserved in ["admin", "root", "support"] {
                assert!(!passes_for(innocent, reserved), "{innocent} / {reserved}");
            }
        }
    }
    use proptest::prelude::*;

    #[test]
    fn short_long_and_odd_usernames_are_rejected() {
        assert!(Username::parse("ab").is_err());
        assert!(Username::parse(&"a".repeat(65)).is_err());
        assert!(Username::parse("with space").is_err());
        assert!(Username::parse("émile").is_err());
        assert!(Username::parse("a@b").is_err());
    }

    #[test]
    fn normalized_form_ignores_case() {
        let a = Username::parse("Alice.Smith").unwrap();
        let b = Username::parse("alice.SMITH").unwrap();
        assert_eq!(a.normalized(), b.normalized());
        assert_eq!(a.as_str(), "Alice.Smith");
    }

    proptest! {
        #[test]
        fn every_string_of_allowed_characters_and_length_parses(s in "[A-Za-z0-9._-]{3,64}") {
            let u = Username::parse(&s).unwrap();
            prop_assert_eq!(u.as_str(), s.as_str());
        }

        #[test]
        fn a_string_with_any_other_character_is_rejected(
            prefix in "[a-z]{3}",
            bad in "[^A-Za-z0-9._-]",
        ) {
            let s = format!("{prefix}{bad}");
            prop_assert!(Username::parse(&s).is_err());
        }

        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = Username::parse(&s);
        }

        #[test]
        fn the_documented_pattern_states_the_rule_exactly(
            s in prop_oneof!["[A-Za-z0-9._-]{0,70}", "[A-Za-z0-9._ @é-]{2,66}", "\\PC*"],
        ) {
            let pattern = regex::Regex::new(Username::PATTERN).unwrap();
            prop_assert_eq!(pattern.is_match(&s), Username::parse(&s).is_ok(), "{:?}", s);
        }
    }
}
