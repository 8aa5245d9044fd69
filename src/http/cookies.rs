//! Browser sessions: the refresh token in an `HttpOnly` cookie, out of
//! JavaScript's reach, guarded against cross-site requests by an `Origin`
//! allow-list and a double-submit CSRF token.
//!
//! The CSRF token is derived from the refresh token it protects, so a token
//! planted by another site (cookie tossing from a sibling subdomain) never
//! matches, and nothing more has to be stored.

use axum::http::{HeaderMap, HeaderValue, header};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use super::error::AppError;
use crate::auth::sessions::TokenPair;

/// The refresh token's cookie: sent only to `/auth`, never to scripts.
pub const REFRESH_COOKIE: &str = "authgate_refresh";
/// The CSRF token's cookie: readable by the app's scripts, which echo it in
/// [`CSRF_HEADER`].
pub const CSRF_COOKIE: &str = "authgate_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How the browser session cookies are set and checked.
#[derive(Debug, Clone)]
pub struct CookiePolicy {
    /// Origins (`scheme://host[:port]`) whose pages may use the cookies.
    pub allowed_origins: Vec<String>,
    /// Whether cookies carry `Secure`: always, but for a service reached at
    /// `http://localhost` in development.
    pub secure: bool,
}

impl CookiePolicy {
    /// The policy for a service reached at `public_url`: its own origin is
    /// allowed unless origins are listed.
    pub fn new(public_url: &str, allowed: &[String]) -> Self {
        let own = origin_of(public_url);
        let allowed_origins = if allowed.is_empty() {
            own.clone().into_iter().collect()
        } else {
            allowed.to_vec()
        };
        let local = url::Url::parse(public_url).is_ok_and(|u| {
            u.scheme() == "http"
                && matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
        });
        Self {
            allowed_origins,
            secure: !local,
        }
    }

    /// The cookies that carry a new pair's refresh token and its CSRF token.
    pub fn set(&self, headers: &mut HeaderMap, pair: &TokenPair) {
        let csrf = csrf_token(&pair.refresh_token);
        self.append(headers, &pair.refresh_token, &csrf, pair.refresh_expires_in);
    }

    /// Cookies that delete both.
    pub fn clear(&self, headers: &mut HeaderMap) {
        self.append(headers, "", "", 0);
    }

    /// Both cookies with these values, living `max_age` seconds: the refresh
    /// token for `/auth` only and out of scripts' reach, the CSRF token for
    /// the app's scripts to read.
    fn append(&self, headers: &mut HeaderMap, refresh: &str, csrf: &str, max_age: u64) {
        let secure = if self.secure { "; Secure" } else { "" };
        for cookie in [
            format!(
                "{REFRESH_COOKIE}={refresh}; Max-Age={max_age}; Path=/auth; HttpOnly; \
                 SameSite=Strict{secure}"
            ),
            format!("{CSRF_COOKIE}={csrf}; Max-Age={max_age}; Path=/; SameSite=Strict{secure}"),
        ] {
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                headers.append(header::SET_COOKIE, value);
            }
        }
    }

    /// Checks that a request comes from an allowed page: its `Origin` is
    /// listed. Why required rather than "if present": browsers send `Origin`
    /// on every cross-origin POST and on same-origin ones too, so a request
    /// without it did not come from a page of ours.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), AppError> {
        let origin = headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .ok_or(AppError::CrossSite("the request has no Origin header"))?;
        if self.allowed_origins.iter().any(|o| o == origin) {
            Ok(())
        } else {
            Err(AppError::CrossSite("the Origin is not allowed"))
        }
    }

    /// The refresh token of a cookie-authenticated request, after checking
    /// its origin and its CSRF token; `None` if it carries no session cookie.
    pub fn refresh_token(&self, headers: &HeaderMap) -> Result<Option<String>, AppError> {
        let Some(refresh) = cookie(headers, REFRESH_COOKIE) else {
            return Ok(None);
        };
        self.check_origin(headers)?;
        let expected = csrf_token(&refresh);
        let header = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        let cookie = cookie(headers, CSRF_COOKIE);
        // Both the header and the cookie must match the token derived from
        // the refresh token: a script of another site can neither read the
        // cookie to echo it nor compute the value.
        if header != Some(expected.as_str()) || cookie.as_deref() != Some(expected.as_str()) {
            return Err(AppError::CrossSite("the CSRF token is missing or wrong"));
        }
        Ok(Some(refresh))
    }
}

/// The CSRF token that goes with a refresh token.
pub fn csrf_token(refresh_token: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"authgate csrf v1\0")
        .chain_update(refresh_token.as_bytes())
        .finalize();
    URL_SAFE_NO_PAD.encode(&digest[..24])
}

/// The origin (`scheme://host[:port]`) of a URL.
pub fn origin_of(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    match url.origin() {
        url::Origin::Tuple(..) => Some(url.origin().ascii_serialization()),
        url::Origin::Opaque(_) => None,
    }
}

/// The value of the cookie `name`, if the request carries exactly one.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned());
    let first = found.next()?;
    // Two cookies of one name (one planted for a broader path or domain):
    // ambiguous, so neither counts.
    if found.next().is_some() {
        return None;
    }
    Some(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn only_localhost_over_http_drops_secure() {
        assert!(!CookiePolicy::new("http://localhost:8010", &[]).secure);
        assert!(!CookiePolicy::new("http://127.0.0.1:8010", &[]).secure);
        assert!(CookiePolicy::new("http://auth.example.com", &[]).secure);
        assert!(CookiePolicy::new("https://localhost", &[]).secure);
    }

    #[test]
    fn the_services_own_origin_is_allowed_unless_origins_are_listed() {
        let own = CookiePolicy::new("https://auth.example.com/base/", &[]);
        assert_eq!(own.allowed_origins, ["https://auth.example.com"]);
        let listed = CookiePolicy::new(
            "https://auth.example.com",
            &["https://app.example.com".into()],
        );
        assert_eq!(listed.allowed_origins, ["https://app.example.com"]);
    }

    #[test]
    fn a_cookie_request_needs_the_origin_and_the_matching_csrf_token() {
        let policy = CookiePolicy::new("https://auth.example.com", &[]);
        let refresh = "r".repeat(43);
        let csrf = csrf_token(&refresh);
        let cookies = format!("{REFRESH_COOKIE}={refresh}; {CSRF_COOKIE}={csrf}");
        let good = headers(&[
            ("cookie", &cookies),
            ("origin", "https://auth.example.com"),
            ("x-csrf-token", &csrf),
        ]);
        assert_eq!(policy.refresh_token(&good).unwrap(), Some(refresh.clone()));
        for bad in [
            headers(&[("cookie", &cookies), ("x-csrf-token", &csrf)]),
            headers(&[
                ("cookie", &cookies),
                ("origin", "https://evil.example"),
                ("x-csrf-token", &csrf),
            ]),
            headers(&[("cookie", &cookies), ("origin", "https://auth.example.com")]),
            headers(&[
                ("cookie", &cookies),
                ("origin", "https://auth.example.com"),
                ("x-csrf-token", "planted"),
            ]),
            headers(&[
                ("cookie", &format!("{cookies}; {REFRESH_COOKIE}=other")),
                ("origin", "https://auth.example.com"),
                ("x-csrf-token", &csrf),
            ]),
        ] {
            assert!(
                policy.refresh_token(&bad).is_err()
                    || policy.refresh_token(&bad).unwrap().is_none()
            );
        }
        assert_eq!(policy.refresh_token(&HeaderMap::new()).unwrap(), None);
    }
}
