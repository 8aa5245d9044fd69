//! Access tokens: short-lived JWTs (RFC 9068 profile), verified per RFC 8725.
//!
//! Keys are held by key id (`kid`) so that several can verify at once (key
//! rotation, and asymmetric keys later); one of them signs.

use std::{collections::HashMap, time::Duration};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use super::keys::KeyMaterial;

/// Why a bearer token was refused. Only logged: the client always sees the
/// same `invalid_token` answer so it learns nothing about which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRejection {
    Malformed,
    BadSignature,
    Expired,
    WrongType,
    UnknownKey,
    WrongIssuerOrAudience,
    /// Issued in the future, or valid for longer than this service issues
    /// tokens for: not a token this service signed as it stands.
    ImplausibleTimes,
    Revoked,
}

/// How far in the future a token's `iat` may lie: instances on one database
/// may run on clocks a little apart.
const IAT_LEEWAY_SECS: i64 = 30;

/// RFC 9068 §2.1: access tokens are typed so that no other JWT (an ID token,
/// say) can be passed off as one (RFC 8725 §3.11).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: Uuid,
    /// The session id: revoking the session revokes the token.
    pub sid: Uuid,
    pub jti: Uuid,
    pub iat: i64,
    pub exp: i64,
    pub roles: Vec<String>,
}

/// A freshly signed access token.
#[derive(Debug, Clone)]
pub struct IssuedAccessToken {
    pub token: String,
    pub claims: AccessClaims,
}

/// Signs and verifies access tokens.
pub struct TokenService {
    signing_kid: String,
    signing_key: EncodingKey,
    verifying: HashMap<String, DecodingKey>,
    validation: Validation,
    issuer: String,
    audience: String,
    ttl: Duration,
}

impl TokenService {
    /// `signing` signs new tokens; it and every key in `others` verify.
    pub fn new(
        signing: &KeyMaterial,
        others: &[KeyMaterial],
        issuer: String,
        audience: String,
        ttl: Duration,
    ) -> Self {
        let mut verifying = HashMap::new();
        for key in std::iter::once(signing).chain(others) {
            verifying.insert(key.kid.clone(), DecodingKey::from_secret(&key.secret));
        }
        // RFC 8725 §3.1: the algorithm is pinned; the token's `alg` header is
        // never trusted to choose it (this is what refuses `alg: none`).
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&[&audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        // Expiry is checked against the service's clock in `verify`, not the
        // crate's: this service both issues and verifies on that one clock, so
        // there is no skew to allow for.
        validation.validate_exp = false;
        validation.leeway = 0;
        Self {
            signing_kid: signing.kid.clone(),
            signing_key: EncodingKey::from_secret(&signing.secret),
            verifying,
            validation,
            issuer,
            audience,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Signs an access token for the session, valid for the configured
    /// lifetime but never past `not_after` (the session's end).
    pub fn issue(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        roles: Vec<String>,
        now: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> anyhow::Result<IssuedAccessToken> {
        let iat = now.unix_timestamp();
        let lifetime = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user_id,
            sid: session_id,
            jti: Uuid::new_v4(),
            iat,
            exp: (iat + lifetime).min(not_after.unix_timestamp()),
            roles,
        };
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some(ACCESS_TOKEN_TYP.into());
        header.kid = Some(self.signing_kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.signing_key)?;
        Ok(IssuedAccessToken { token, claims })
    }

    /// Verifies signature, algorithm, type, expiry (at `now`), issuer and
    /// audience. Revocation is checked by the caller, against the session.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<AccessClaims, TokenRejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRejection::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenRejection::BadSignature);
        }
        if header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return Err(TokenRejection::WrongType);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.verifying.get(kid))
            .ok_or(TokenRejection::UnknownKey)?;
        let data = jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenRejection::Expired,
                ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
                    TokenRejection::WrongIssuerOrAudience
                }
                ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                    TokenRejection::BadSignature
                }
                _ => TokenRejection::Malformed,
            },
        )?;
        let claims = data.claims;
        if claims.exp <= now.unix_timestamp() {
            return Err(TokenRejection::Expired);
        }
        // RFC 8725 §3.10: check every claim that bounds the token's life. A
        // token from the future or one living longer than any this service
        // issues was not signed by it as it is (a leaked key, a bug, a
        // misconfigured issuer elsewhere): refuse it rather than honour it
        // for years.
        let lifetime = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        if claims.iat > now.unix_timestamp().saturating_add(IAT_LEEWAY_SECS)
            || claims.exp.saturating_sub(claims.iat) > lifetime
        {
            return Err(TokenRejection::ImplausibleTimes);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session end that caps nothing.
    fn far() -> OffsetDateTime {
        OffsetDateTime::now_utc() + time::Duration::days(365)
    }

    /// A token for some user and session, issued now.
    fn any_token(svc: &TokenService) -> IssuedAccessToken {
        svc.issue(
            Uuid::new_v4(),
            Uuid::new_v4(),
            vec![],
            OffsetDateTime::now_utc(),
            far(),
        )
        .unwrap()
    }

    fn service(key: &KeyMaterial) -> TokenService {
        TokenService::new(
            key,
            &[],
            "iss".into(),
            "aud".into(),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn an_issued_token_verifies_and_carries_its_claims() {
        let key = KeyMaterial::generate();
        let svc = service(&key);
        let (user, sid) = (Uuid::new_v4(), Uuid::new_v4());
        let issued = svc
            .issue(
                user,
                sid,
                vec!["user".into()],
                OffsetDateTime::now_utc(),
                far(),
            )
            .unwrap();
        let claims = svc
            .verify(&issued.token, OffsetDateTime::now_utc())
            .unwrap();
        assert_eq!(claims, issued.claims);
        assert_eq!(claims.sub, user);
        assert_eq!(claims.sid, sid);
        assert_eq!(claims.exp - claims.iat, 60);
        let header = jsonwebtoken::decode_header(&issued.token).unwrap();
        assert_eq!(header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(header.kid.as_deref(), Some(key.kid.as_str()));
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let svc = service(&KeyMaterial::generate());
        let mut other = KeyMaterial::generate();
        let forged = any_token(&service(&other));
        assert_eq!(
            svc.verify(&forged.token, OffsetDateTime::now_utc())
                .unwrap_err(),
            TokenRejection::UnknownKey
        );
        // Same kid, other secret: the signature check must catch it.
        let ours = KeyMaterial::generate();
        other.kid = ours.kid.clone();
        let forged = any_token(&service(&other));
        assert_eq!(
            service(&ours)
                .verify(&forged.token, OffsetDateTime::now_utc())
                .unwrap_err(),
            TokenRejection::BadSignature
        );
    }

    #[test]
    fn a_token_never_outlives_its_session() {
        let svc = service(&KeyMaterial::generate());
        let now = OffsetDateTime::now_utc();
        let end = now + time::Duration::seconds(10);
        let issued = svc
            .issue(Uuid::new_v4(), Uuid::new_v4(), vec![], now, end)
            .unwrap();
        assert_eq!(issued.claims.exp, end.unix_timestamp());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let svc = service(&KeyMaterial::generate());
        let long_ago = OffsetDateTime::now_utc() - time::Duration::hours(1);
        let issued = svc
            .issue(Uuid::new_v4(), Uuid::new_v4(), vec![], long_ago, far())
            .unwrap();
        assert_eq!(
            svc.verify(&issued.token, OffsetDateTime::now_utc())
                .unwrap_err(),
            TokenRejection::Expired
        );
    }

    #[test]
    fn another_issuers_or_audiences_token_is_refused() {
        let key = KeyMaterial::generate();
        let theirs = TokenService::new(
            &key,
            &[],
            "other".into(),
            "aud".into(),
            Duration::from_secs(60),
        );
        let issued = any_token(&theirs);
        assert_eq!(
            service(&key)
                .verify(&issued.token, OffsetDateTime::now_utc())
                .unwrap_err(),
            TokenRejection::WrongIssuerOrAudience
        );
    }

    #[test]
    fn a_token_from_the_future_is_refused() {
        let svc = service(&KeyMaterial::generate());
        let now = OffsetDateTime::now_utc();
        let later = now + time::Duration::days(3650);
        let issued = svc
            .issue(
                Uuid::new_v4(),
                Uuid::new_v4(),
                vec![],
                later,
                later + time::Duration::days(1),
            )
            .unwrap();
        assert_eq!(
            svc.verify(&issued.token, now).unwrap_err(),
            TokenRejection::ImplausibleTimes
        );
        let soon = svc
            .issue(
                Uuid::new_v4(),
                Uuid::new_v4(),
                vec![],
                now + time::Duration::seconds(10),
                far(),
            )
            .unwrap();
        assert!(svc.verify(&soon.token, now).is_ok(), "within the leeway");
    }

    #[test]
    fn a_token_living_longer_than_this_service_issues_is_refused() {
        let key = KeyMaterial::generate();
        let generous = TokenService::new(
            &key,
            &[],
            "iss".into(),
            "aud".into(),
            Duration::from_secs(10 * 86_400),
        );
        let issued = any_token(&generous);
        assert_eq!(
            service(&key)
                .verify(&issued.token, OffsetDateTime::now_utc())
                .unwrap_err(),
            TokenRejection::ImplausibleTimes
        );
    }
}
