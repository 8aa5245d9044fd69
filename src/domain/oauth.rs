//! The value types of OAuth clients: their names, redirect URIs and scopes.

use std::{fmt, net::IpAddr};

/// A client's name as people see it on the consent page: 1–100 characters,
/// none of them [`super::UNSHOWN`], trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientName(String);

impl ClientName {
    pub const MAX_LEN: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, String> {
        // The limit is on what was sent (as the API document says), the
        // emptiness on what is left to show.
        let name = raw.trim();
        if name.is_empty() || raw.chars().count() > Self::MAX_LEN {
            return Err(format!("must be 1 to {} characters long", Self::MAX_LEN));
        }
        // Why: the name is shown on the consent page; invisible characters
        // would let one client pass for another.
        if name.chars().any(super::is_unshown) {
            return Err("must not contain control or invisible characters".into());
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A redirect URI a client registers, compared exactly at authorization:
/// `https`, `http` on a loopback host (an app on the user's machine), or a
/// private-use scheme with a dot (`com.example.app:/callback`, RFC 8252
/// §7.1). Never a fragment, never `javascript:`, `data:` or `file:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectUri(String);

impl RedirectUri {
    pub const MAX_LEN: usize = 2000;

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(format!("must be 1 to {} characters long", Self::MAX_LEN));
        }
        // Why: a space or control character is never part of a URI as
        // sent; let through (the parser keeps them in an app scheme's
        // path), one registered value could read as two.
        if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain spaces or control characters".into());
        }
        let url = url::Url::parse(raw).map_err(|e| format!("is not an absolute URI: {e}"))?;
        // Why: URIs are compared as registered; what the parser would
        // rewrite (case, default ports, dot segments, spaces) must be
        // registered in its plain form, or two spellings of one target could
        // differ in what a browser and this check take them for.
        if url.as_str() != raw {
            return Err(format!(
                "must be written in its normal form: {}",
                url.as_str()
            ));
        }
        if url.fragment().is_some() {
            return Err("must not have a fragment (RFC 6749 §3.1.2)".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not hold credentials".into());
        }
        match url.scheme() {
            "https" => {
                if url.host().is_none() {
                    return Err("must name a host".into());
                }
            }
            // Why: plain HTTP would hand codes to anyone on the network,
            // except on the user's own machine (RFC 8252 §7.3).
            "http" => {
                let loopback = match url.host() {
                    Some(url::Host::Domain(d)) => d == "localhost",
                    Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
                    Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
                    None => false,
                };
                if !loopback {
                    return Err(
                        "must use https, or http only on a loopback host (127.0.0.1, [::1], localhost)"
                            .into(),
                    );
                }
            }
            scheme if scheme.contains('.') => {}
            _ => {
                return Err(
                    "must use https, http on a loopback host, or an app's private-use scheme \
                     with a dot (com.example.app:/callback)"
                        .into(),
                );
            }
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RedirectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One scope: RFC 6749 §3.3's characters (printable ASCII but space, `"`
/// and `\`), 1–64 of them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope(String);

impl Scope {
    pub const MAX_LEN: usize = 64;
    pub const OPENID: &'static str = "openid";
    pub const PROFILE: &'static str = "profile";
    pub const EMAIL: &'static str = "email";
    pub const OFFLINE_ACCESS: &'static str = "offline_access";
    /// The scopes OpenID Connect gives a meaning; they concern a user, so a
    /// client acting for itself gets none of them.
    pub const USER_SCOPES: [&'static str; 4] = [
        Self::OPENID,
        Self::PROFILE,
        Self::EMAIL,
        Self::OFFLINE_ACCESS,
    ];

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err(format!(
                "each scope must be 1 to {} characters long",
                Self::MAX_LEN
            ));
        }
        if !raw
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
        {
            return Err(format!(
                "{raw:?} is not a scope: printable ASCII only, without spaces, '\"' or '\\'"
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the scope is about a user (OpenID Connect's).
    pub fn is_user_scope(&self) -> bool {
        Self::USER_SCOPES.contains(&self.0.as_str())
    }
}

/// A set of scopes, kept sorted and without repeats; written space-separated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    /// The most scopes one client may hold.
    pub const MAX: usize = 32;

    /// A space-separated list (RFC 6749 §3.3); repeats count once.
    pub fn parse(raw: &str) -> Result<Self, String> {
        Self::from_names(raw.split(' ').filter(|s| !s.is_empty()))
    }

    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut scopes = names
            .into_iter()
            .map(Scope::parse)
            .collect::<Result<Vec<_>, _>>()?;
        scopes.sort();
        scopes.dedup();
        if scopes.len() > Self::MAX {
            return Err(format!("at most {} scopes", Self::MAX));
        }
        Ok(Self(scopes))
    }

    /// What a client registered without naming scopes may ask for: the
    /// OpenID Connect ones.
    pub fn openid_defaults() -> Self {
        Self::from_names(Scope::USER_SCOPES).expect("valid scopes")
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.0 == name)
    }

    /// Whether every scope of `self` is in `other`.
    pub fn is_subset(&self, other: &Scopes) -> bool {
        self.0.iter().all(|s| other.0.contains(s))
    }

    /// The scopes of `self` that `keep` accepts.
    pub fn filter(&self, keep: impl Fn(&Scope) -> bool) -> Self {
        Self(self.0.iter().filter(|s| keep(s)).cloned().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|s| s.0.clone()).collect()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, scope) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(&scope.0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_are_https_loopback_http_or_an_apps_own_scheme() {
        for good in [
            "https://app.example.com/callback",
            "https://app.example.com/cb?tenant=1",
            "http://127.0.0.1:8080/callback",
            "http://[::1]:9000/cb",
            "http://localhost:3000/callback",
            "com.example.app:/oauth2redirect",
        ] {
            assert!(RedirectUri::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/callback",
            "http://app.example.com/callback",
            "https://app.example.com/cb#frag",
            "https://user:pw@app.example.com/cb",
            "javascript:alert(1)",
            "data:text/html,hi",
            "file:///etc/passwd",
            "HTTPS://APP.example.com/cb",
            "https://app.example.com:443/cb",
            "https://app.example.com/a/../cb",
            "com.example.app:cb https://evil.example/x",
            "com.example.app:x\tjavascript:alert(1)",
        ] {
            assert!(RedirectUri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_are_sorted_without_repeats_and_refuse_bad_characters() {
        let scopes = Scopes::parse("openid  email openid api:read").unwrap();
        assert_eq!(scopes.to_string(), "api:read email openid");
        assert!(Scopes::parse("a\"b").is_err());
        assert!(Scopes::parse("caf\u{e9}").is_err());
        assert!(Scope::parse(&"x".repeat(65)).is_err());
        assert!(
            Scopes::parse("openid")
                .unwrap()
                .is_subset(&Scopes::openid_defaults())
        );
        assert!(
            !Scopes::parse("admin")
                .unwrap()
                .is_subset(&Scopes::openid_defaults())
        );
    }

    #[test]
    fn client_names_are_trimmed_and_visible() {
        assert_eq!(ClientName::parse("  My App ").unwrap().as_str(), "My App");
        assert!(ClientName::parse("   ").is_err());
        assert!(ClientName::parse("Bank\u{200B}").is_err());
        assert!(ClientName::parse(&"a".repeat(101)).is_err());
        // Over the limit as sent, even when the trimmed name would fit.
        assert!(ClientName::parse(&format!(" {} ", "a".repeat(100))).is_err());
    }
}
