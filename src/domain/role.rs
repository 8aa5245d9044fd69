use std::fmt;

/// A role name: 1–32 lowercase ASCII letters, digits, `_` or `-`, starting with
/// a letter. `user` is every account's default; `admin` manages users.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Role(String);

impl Role {
    pub const USER: &'static str = "user";
    pub const ADMIN: &'static str = "admin";
    /// The rule of [`Role::parse`] as a regular expression (for the API
    /// document).
    pub const PATTERN: &'static str = "^[a-z][a-z0-9_-]{0,31}$";

    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut bytes = raw.bytes();
        let ok_first = bytes.next().is_some_and(|b| b.is_ascii_lowercase());
        let ok_rest =
            bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok_first && ok_rest && raw.len() <= 32 {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!("{raw:?} is not a valid role name"))
        }
    }

    pub fn user() -> Self {
        Self(Self::USER.into())
    }

    pub fn admin() -> Self {
        Self(Self::ADMIN.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A sorted, duplicate-free set of roles, stored as a comma-separated column.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Roles(Vec<Role>);

impl Roles {
    /// At most this many roles per user: they all ride in every access token.
    pub const MAX: usize = 32;

    /// Parses role names given by a client: each must be a valid role, and
    /// there may be at most [`Roles::MAX`] of them (repeated or not: the API
    /// document states a list's length, not its distinct entries).
    pub fn parse(names: &[String]) -> Result<Self, String> {
        if names.len() > Self::MAX {
            return Err(format!("at most {} roles", Self::MAX));
        }
        let roles = Self::new(
            names
                .iter()
                .map(|n| Role::parse(n))
                .collect::<Result<Vec<_>, _>>()?,
        );
        if roles.0.len() > Self::MAX {
            return Err(format!("at most {} roles", Self::MAX));
        }
        Ok(roles)
    }

    pub fn new(roles: impl IntoIterator<Item = Role>) -> Self {
        let mut v: Vec<Role> = roles.into_iter().collect();
        v.sort();
        v.dedup();
        Self(v)
    }

    /// These roles and `role`.
    pub fn with(&self, role: Role) -> Self {
        Self::new(self.0.iter().cloned().chain([role]))
    }

    pub fn contains(&self, role: &str) -> bool {
        self.0.iter().any(|r| r.as_str() == role)
    }

    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|r| r.0.clone()).collect()
    }

    /// The storage form: `admin,user`.
    pub fn to_column(&self) -> String {
        self.names().join(",")
    }

    pub fn from_column(raw: &str) -> Result<Self, String> {
        raw.split(',')
            .filter(|s| !s.is_empty())
            .map(Role::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn role_names_are_lowercase_identifiers() {
        assert!(Role::parse("admin").is_ok());
        assert!(Role::parse("billing-reader_2").is_ok());
        assert!(Role::parse("Admin").is_err());
        assert!(Role::parse("2fa").is_err());
        assert!(Role::parse("").is_err());
        assert!(Role::parse("a,b").is_err());
    }

    #[test]
    fn a_client_may_give_at_most_the_maximum_number_of_roles() {
        let names = |n: usize| (0..n).map(|i| format!("r{i}")).collect::<Vec<_>>();
        assert!(Roles::parse(&names(Roles::MAX)).is_ok());
        assert!(Roles::parse(&names(Roles::MAX + 1)).is_err());
        assert!(Roles::parse(&["Admin".to_owned()]).is_err());
    }

    #[test]
    fn roles_are_sorted_and_deduplicated() {
        let roles = Roles::new([Role::user(), Role::admin(), Role::user()]);
        assert_eq!(roles.to_column(), "admin,user");
        assert!(roles.contains("admin"));
        assert!(!roles.contains("root"));
    }

    #[test]
    fn a_list_longer_than_the_maximum_is_refused_even_with_repeats() {
        let repeated = vec!["user".to_owned(); Roles::MAX + 1];
        assert!(Roles::parse(&repeated).is_err());
        assert!(Roles::parse(&repeated[..Roles::MAX]).is_ok());
    }

    proptest! {
        #[test]
        fn the_documented_pattern_states_the_rule_exactly(
            s in prop_oneof!["[a-z][a-z0-9_-]{0,34}", "[A-Za-z0-9_ ,-]{0,34}", "\\PC*"],
        ) {
            let pattern = regex::Regex::new(Role::PATTERN).unwrap();
            prop_assert_eq!(pattern.is_match(&s), Role::parse(&s).is_ok(), "{:?}", s);
        }

        #[test]
        fn the_column_form_round_trips(names in proptest::collection::vec("[a-z][a-z0-9_-]{0,31}", 0..6)) {
            let roles = Roles::new(names.iter().map(|n| Role::parse(n).unwrap()));
            let back = Roles::from_column(&roles.to_column()).unwrap();
            prop_assert_eq!(back, roles);
        }
    }
}
