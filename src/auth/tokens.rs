//! Access tokens: short-lived JWTs (RFC 9068 profile), verified per RFC 8725.
//!
//! The key ring ([`Keys`]) says which key signs now and which verify; each
//! key has one algorithm, and a token verifies only under its key's.

use std::{collections::HashMap, sync::Arc, time::Duration};

use jsonwebtoken::{Header, Validation, errors::ErrorKind};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use super::keys::Keys;
use crate::{crypto::signing::SigningAlgorithm, store::ProvedFactor};

pub use super::error::TokenRejection;

/// How far in the future a token's `iat` may lie: instances on one database
/// may run on clocks a little apart.
const IAT_LEEWAY_SECS: i64 = 30;

/// What proved the second factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondFactor {
    /// A code of this TOTP factor.
    Totp(Uuid),
    RecoveryCode,
    /// This passkey.
    Passkey(Uuid),
}

impl SecondFactor {
    /// As the audit log names it.
    pub fn describe(self) -> &'static str {
        match self {
            SecondFactor::Totp(_) => "with a TOTP code",
            SecondFactor::RecoveryCode => "with a recovery code",
            SecondFactor::Passkey(_) => "with a passkey",
        }
    }

    /// Its RFC 8176 method: `otp`, or `hwk` for a passkey; a recovery code
    /// has none (the session says `mfa` alone).
    pub fn method(self) -> Option<&'static str> {
        match self {
            SecondFactor::Totp(_) => Some("otp"),
            SecondFactor::RecoveryCode => None,
            SecondFactor::Passkey(_) => Some("hwk"),
        }
    }

    /// The factor a session opened with it rests on: a recovery code
    /// stands in for any.
    pub fn proved(self) -> ProvedFactor {
        match self {
            SecondFactor::Totp(id) | SecondFactor::Passkey(id) => ProvedFactor::This(id),
            SecondFactor::RecoveryCode => ProvedFactor::Any,
        }
    }
}

/// RFC 9068 §2.1: access tokens are typed so that no other JWT (an ID token,
/// say) can be passed off as one (RFC 8725 §3.11).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// How the session was authenticated: when, how strongly, by what methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authentication {
    pub time: OffsetDateTime,
    /// The authentication assurance level (`aal1`, `aal2`).
    pub level: String,
    /// RFC 8176 method names.
    pub methods: Vec<String>,
}

/// NIST SP 800-63B: one factor.
pub const AAL1: &str = "aal1";
/// Two factors.
pub const AAL2: &str = "aal2";

impl Authentication {
    /// A login with a password alone, at `time`: `aal1`, `["pwd"]`.
    pub fn password(time: OffsetDateTime) -> Self {
        Self {
            time,
            level: AAL1.into(),
            methods: vec!["pwd".into()],
        }
    }

    /// A password and a second factor, the second at `time`: `aal2`, with
    /// the factor's RFC 8176 method (`otp` for a TOTP code; none for a
    /// recovery code, which RFC 8176 has no name for) and `mfa`.
    pub fn two_factor(time: OffsetDateTime, method: Option<&str>) -> Self {
        let mut methods = vec!["pwd".to_owned()];
        methods.extend(method.map(str::to_owned));
        methods.push("mfa".into());
        Self {
            time,
            level: AAL2.into(),
            methods,
        }
    }

    /// A passkey alone, at `time`: RFC 8176's `hwk` (a key held by the
    /// authenticator). With the user verified by the authenticator (a PIN
    /// or a biometric) that is two factors, `aal2` and `mfa`; with mere
    /// presence, one.
    pub fn passkey(time: OffsetDateTime, user_verified: bool) -> Self {
        let mut methods = vec!["hwk".to_owned()];
        let level = if user_verified {
            methods.push("mfa".into());
            AAL2
        } else {
            AAL1
        };
        Self {
            time,
            level: level.into(),
            methods,
        }
    }

    pub fn is_aal2(&self) -> bool {
        self.level == AAL2
    }
}

impl From<crate::store::SessionAuth> for Authentication {
    fn from(auth: crate::store::SessionAuth) -> Self {
        Self {
            time: auth.at,
            level: auth.level,
            methods: auth.methods,
        }
    }
}

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
    /// When the session was authenticated (OpenID Connect Core §2).
    #[serde(default)]
    pub auth_time: i64,
    /// How strongly (NIST SP 800-63B assurance level).
    #[serde(default)]
    pub aal: String,
    /// By what methods (RFC 8176).
    #[serde(default)]
    pub amr: Vec<String>,
    /// Never set by this service; a token that has one is checked against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// The OAuth client the user gave the token to (RFC 9068 §2.2); none
    /// for the service's own sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// What the user allowed that client, space-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// The claims of an access token a client gets for itself
/// (`client_credentials`, RFC 9068 §2.2): its subject is the client. It has
/// no session and no user, so no route for users takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientAccessClaims {
    pub iss: String,
    pub aud: String,
    /// The client id.
    pub sub: String,
    pub client_id: String,
    /// Space-separated; absent when none was granted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    pub jti: Uuid,
    pub iat: i64,
    pub exp: i64,
}

/// What an ID token presented back (`id_token_hint`) says.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IdTokenHint {
    pub sub: String,
    /// The client it was issued to.
    pub aud: String,
    #[serde(default)]
    pub sid: String,
}

/// What every signed access token has, for the checks all of them pass.
pub trait Timed {
    fn iss(&self) -> &str;
    fn aud(&self) -> &str;
    /// `iat`, `exp` and `nbf`.
    fn times(&self) -> (i64, i64, Option<i64>);
}

impl Timed for AccessClaims {
    fn iss(&self) -> &str {
        &self.iss
    }
    fn aud(&self) -> &str {
        &self.aud
    }
    fn times(&self) -> (i64, i64, Option<i64>) {
        (self.iat, self.exp, self.nbf)
    }
}

impl Timed for ClientAccessClaims {
    fn iss(&self) -> &str {
        &self.iss
    }
    fn aud(&self) -> &str {
        &self.aud
    }
    fn times(&self) -> (i64, i64, Option<i64>) {
        (self.iat, self.exp, None)
    }
}

/// Whom an access token speaks for, and its id.
#[derive(Debug, Clone)]
pub struct Subject {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub roles: Vec<String>,
    pub auth: Authentication,
    pub jti: Uuid,
}

/// Verified tokens by the SHA-256 of the whole token: the key id they
/// verified under, and their claims.
type Verified = HashMap<[u8; 32], (Arc<str>, AccessClaims)>;

/// A freshly signed access token.
#[derive(Debug, Clone)]
pub struct IssuedAccessToken {
    pub token: String,
    pub claims: AccessClaims,
}

/// How many verified tokens are remembered.
const VERIFIED_CAPACITY: usize = 16_384;

/// Signs and verifies access tokens.
pub struct TokenService {
    keys: Keys,
    validations: HashMap<SigningAlgorithm, Validation>,
    issuer: String,
    audience: String,
    ttl: Duration,
    /// Tokens whose signature verified, by the SHA-256 of the whole token.
    /// Why: an Ed25519 or RSA verification costs tens of microseconds on every
    /// request; the same bytes verify the same way, so only the checks that
    /// change with time (expiry, the key's state) run again.
    verified: RwLock<Verified>,
}

impl TokenService {
    pub fn new(keys: Keys, issuer: String, audience: String, ttl: Duration) -> Self {
        let validations = SigningAlgorithm::ALL
            .iter()
            .map(|alg| {
                // RFC 8725 §3.1: the algorithm is pinned per key; the token's
                // `alg` header never chooses it (this refuses `alg: none`).
                let mut validation = Validation::new(alg.jwt());
                validation.set_issuer(&[&issuer]);
                validation.set_audience(&[&audience]);
                validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
                // Expiry is checked against the service's clock in `verify`,
                // not the crate's (tests move that clock).
                validation.validate_exp = false;
                validation.leeway = 0;
                (*alg, validation)
            })
            .collect();
        Self {
            keys,
            validations,
            issuer,
            audience,
            ttl,
            verified: RwLock::new(HashMap::new()),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Signs an access token for the session, valid for the configured
    /// lifetime but never past `not_after` (the session's end).
    pub fn issue(
        &self,
        subject: Subject,
        now: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> anyhow::Result<IssuedAccessToken> {
        self.issue_for(subject, None, now, not_after)
    }

    /// [`TokenService::issue`], for a session an OAuth client holds: the
    /// token names the client and the scopes (`client_id`, `scope`).
    pub fn issue_for(
        &self,
        subject: Subject,
        delegation: Option<(&str, &str)>,
        now: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> anyhow::Result<IssuedAccessToken> {
        let Subject {
            user_id,
            session_id,
            roles,
            auth,
            jti,
        } = subject;
        let iat = now.unix_timestamp();
        let lifetime = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let claims = AccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user_id,
            sid: session_id,
            jti,
            iat,
            exp: (iat + lifetime).min(not_after.unix_timestamp()),
            // Why none for a client: the user's roles (admin, say) are
            // nothing a third-party application was allowed to learn.
            roles: if delegation.is_some() {
                Vec::new()
            } else {
                roles
            },
            auth_time: auth.time.unix_timestamp(),
            aal: auth.level.clone(),
            amr: auth.methods.clone(),
            nbf: None,
            client_id: delegation.map(|(client, _)| client.to_owned()),
            scope: delegation.map(|(_, scope)| scope.to_owned()),
        };
        let token = self.sign(&claims, ACCESS_TOKEN_TYP, now)?;
        Ok(IssuedAccessToken { token, claims })
    }

    /// Signs an access token for a client acting for itself, valid for the
    /// configured lifetime.
    pub fn issue_for_client(
        &self,
        client_id: &str,
        scope: &str,
        now: OffsetDateTime,
    ) -> anyhow::Result<(String, ClientAccessClaims)> {
        let iat = now.unix_timestamp();
        let lifetime = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let claims = ClientAccessClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: client_id.to_owned(),
            client_id: client_id.to_owned(),
            scope: scope.to_owned(),
            jti: Uuid::now_v7(),
            iat,
            exp: iat + lifetime,
        };
        let token = self.sign(&claims, ACCESS_TOKEN_TYP, now)?;
        Ok((token, claims))
    }

    /// Signs an OpenID Connect ID token: typed `JWT`, so that it never
    /// passes for an access token (RFC 8725 §3.11).
    pub fn sign_id_token(
        &self,
        claims: &impl Serialize,
        now: OffsetDateTime,
    ) -> anyhow::Result<String> {
        self.sign(claims, "JWT", now)
    }

    /// Signs `claims` as a JWT of type `typ` with the key that signs now.
    fn sign(
        &self,
        claims: &impl Serialize,
        typ: &str,
        now: OffsetDateTime,
    ) -> anyhow::Result<String> {
        let keys = self.keys.current();
        // The key that signs now, not when the pair was first issued (a pair
        // given again) nor when the request began: a key revoked meanwhile
        // signs nothing more.
        let key = keys
            .signer(self.keys.now().max(now))
            .ok_or_else(|| anyhow::anyhow!("no signing key is active"))?;
        let signer = key
            .signer
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("signing key {} cannot sign", key.kid))?;
        let mut header = Header::new(key.algorithm.jwt());
        header.typ = Some(typ.into());
        header.kid = Some(key.kid.clone());
        signer.sign(&header, claims)
    }

    /// Verifies a token a client got for itself (`client_credentials`) as
    /// [`TokenService::verify`] does a user's, without the cache.
    pub fn verify_client(
        &self,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<ClientAccessClaims, TokenRejection> {
        let keys = self.keys.current();
        let (_, claims) = self.verify_signed::<ClientAccessClaims>(token, &keys, now)?;
        if claims.sub != claims.client_id {
            return Err(TokenRejection::Malformed);
        }
        Ok(claims)
    }

    /// An ID token this service signed, expired or not (a hint at logout
    /// may be old): signature under a known key, type `JWT`, issuer.
    pub fn verify_id_token_hint(&self, token: &str, now: OffsetDateTime) -> Option<IdTokenHint> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.typ.as_deref() != Some("JWT") || header.crit.is_some() {
            return None;
        }
        let keys = self.keys.current();
        let key = keys.verifier(header.kid.as_deref()?, now)?;
        if header.alg != key.algorithm.jwt() {
            return None;
        }
        let mut validation = Validation::new(key.algorithm.jwt());
        validation.set_issuer(&[&self.issuer]);
        validation.validate_aud = false;
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["iss", "sub", "aud"]);
        jsonwebtoken::decode::<IdTokenHint>(token, &key.decoding, &validation)
            .ok()
            .map(|data| data.claims)
    }

    /// Verifies signature, algorithm, type, expiry (at `now`), issuer and
    /// audience. Revocation is checked by the caller, against the session.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<AccessClaims, TokenRejection> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let keys = self.keys.current();
        let remembered = self.verified.read().get(&digest).cloned();
        let (kid, claims) = match remembered {
            Some((kid, claims)) => (kid, claims),
            None => {
                let (kid, claims) = self.verify_signed::<AccessClaims>(token, &keys, now)?;
                let kid: Arc<str> = kid.into();
                let mut verified = self.verified.write();
                if verified.len() >= VERIFIED_CAPACITY {
                    let now = now.unix_timestamp();
                    verified.retain(|_, (_, c)| c.exp > now);
                    if verified.len() >= VERIFIED_CAPACITY {
                        verified.clear();
                    }
                }
                verified.insert(digest, (kid.clone(), claims.clone()));
                (kid, claims)
            }
        };
        // What can change after the signature verified: the clock and the key.
        if keys.verifier(&kid, now).is_none() {
            return Err(TokenRejection::UnknownKey);
        }
        self.check_times(&claims, now)?;
        Ok(claims)
    }

    /// The signature and static checks of a token not seen before; the key id
    /// it verified under, and its claims.
    fn verify_signed<C: Timed + serde::de::DeserializeOwned>(
        &self,
        token: &str,
        keys: &super::keys::KeySet,
        now: OffsetDateTime,
    ) -> Result<(String, C), TokenRejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenRejection::Malformed)?;
        // RFC 7515 §4.1.11: a critical extension this service does not know
        // (it knows none) makes the token invalid.
        if header.crit.is_some() {
            return Err(TokenRejection::Malformed);
        }
        if header.typ.as_deref() != Some(ACCESS_TOKEN_TYP) {
            return Err(TokenRejection::WrongType);
        }
        let kid = header.kid.ok_or(TokenRejection::UnknownKey)?;
        let key = keys.verifier(&kid, now).ok_or(TokenRejection::UnknownKey)?;
        if header.alg != key.algorithm.jwt() {
            return Err(TokenRejection::BadSignature);
        }
        let validation = &self.validations[&key.algorithm];
        let data =
            jsonwebtoken::decode::<C>(token, &key.decoding, validation).map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => TokenRejection::Expired,
                    ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => {
                        TokenRejection::WrongIssuerOrAudience
                    }
                    ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                        TokenRejection::BadSignature
                    }
                    _ => TokenRejection::Malformed,
                }
            })?;
        let claims = data.claims;
        // Checked here too, before the token is remembered: the crate checks
        // `iss` and `aud`, and this is the place where a token is first seen.
        if claims.iss() != self.issuer || claims.aud() != self.audience {
            return Err(TokenRejection::WrongIssuerOrAudience);
        }
        self.check_times(&claims, now)?;
        Ok((kid, claims))
    }

    fn check_times(&self, claims: &impl Timed, now: OffsetDateTime) -> Result<(), TokenRejection> {
        let (iat, exp, nbf) = claims.times();
        if exp <= now.unix_timestamp() {
            return Err(TokenRejection::Expired);
        }
        // RFC 8725 §3.10: check every claim that bounds the token's life. A
        // token from the future or one living longer than any this service
        // issues was not signed by it as it is (a leaked key, a bug, a
        // misconfigured issuer elsewhere): refuse it rather than honour it
        // for years.
        let lifetime = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let soon = now.unix_timestamp().saturating_add(IAT_LEEWAY_SECS);
        if iat > soon || nbf.is_some_and(|nbf| nbf > soon) || exp.saturating_sub(iat) > lifetime {
            return Err(TokenRejection::ImplausibleTimes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        auth::keys::{KeyPolicy, RingKey},
        crypto::signing::PrivateKey,
    };

    /// A session end that caps nothing.
    fn far() -> OffsetDateTime {
        OffsetDateTime::now_utc() + time::Duration::days(365)
    }

    /// Some user's session, authenticated at `at`.
    fn subject(at: OffsetDateTime) -> Subject {
        Subject {
            user_id: Uuid::new_v4(),
            session_id: Uuid::new_v4(),
            roles: vec![],
            auth: Authentication::password(at),
            jti: Uuid::new_v4(),
        }
    }

    /// A token for some user and session, issued now.
    fn any_token(svc: &TokenService) -> IssuedAccessToken {
        let now = OffsetDateTime::now_utc();
        svc.issue(subject(now), now, far()).unwrap()
    }

    /// A key of `alg` with a random id.
    fn key(alg: SigningAlgorithm) -> RingKey {
        let kid = Uuid::new_v4().simple().to_string();
        let private = PrivateKey::generate(alg).unwrap();
        RingKey::new(kid, &private, OffsetDateTime::UNIX_EPOCH).unwrap()
    }

    fn hs256() -> RingKey {
        key(SigningAlgorithm::Hs256)
    }

    fn service_with(key: &RingKey, issuer: &str, ttl: Duration) -> TokenService {
        let policy = KeyPolicy {
            algorithm: key.algorithm,
            publish_lead: Duration::from_secs(3600),
            rotation: None,
            access_token_ttl: ttl,
        };
        let clock: crate::clock::SharedClock = std::sync::Arc::new(crate::clock::SystemClock);
        let keys = Keys::fixed(vec![key.clone()], policy, clock).unwrap();
        TokenService::new(keys, issuer.into(), "aud".into(), ttl)
    }

    fn service(key: &RingKey) -> TokenService {
        service_with(key, "iss", Duration::from_secs(60))
    }

    #[test]
    fn an_issued_token_verifies_and_carries_its_claims() {
        let key = hs256();
        let svc = service(&key);
        let (user, sid) = (Uuid::new_v4(), Uuid::new_v4());
        let issued = svc
            .issue(
                Subject {
                    user_id: user,
                    session_id: sid,
                    roles: vec!["user".into()],
                    auth: Authentication::password(OffsetDateTime::now_utc()),
                    jti: Uuid::new_v4(),
                },
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
        let svc = service(&hs256());
        let mut other = hs256();
        let forged = any_token(&service(&other));
        assert_eq!(
            svc.verify(&forged.token, OffsetDateTime::now_utc())
                .unwrap_err(),
            TokenRejection::UnknownKey
        );
        // Same kid, other secret: the signature check must catch it.
        let ours = hs256();
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
        let svc = service(&hs256());
        let now = OffsetDateTime::now_utc();
        let end = now + time::Duration::seconds(10);
        let issued = svc.issue(subject(now), now, end).unwrap();
        assert_eq!(issued.claims.exp, end.unix_timestamp());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let svc = service(&hs256());
        let long_ago = OffsetDateTime::now_utc() - time::Duration::hours(1);
        let issued = svc.issue(subject(long_ago), long_ago, far()).unwrap();
        assert_eq!(
            svc.verify(&issued.token, OffsetDateTime::now_utc())
                .unwrap_err(),
            TokenRejection::Expired
        );
    }

    #[test]
    fn another_issuers_or_audiences_token_is_refused() {
        let key = hs256();
        let theirs = service_with(&key, "other", Duration::from_secs(60));
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
        let svc = service(&hs256());
        let now = OffsetDateTime::now_utc();
        let later = now + time::Duration::days(3650);
        let issued = svc
            .issue(subject(later), later, later + time::Duration::days(1))
            .unwrap();
        assert_eq!(
            svc.verify(&issued.token, now).unwrap_err(),
            TokenRejection::ImplausibleTimes
        );
        let soon = svc
            .issue(
                subject(now + time::Duration::seconds(10)),
                now + time::Duration::seconds(10),
                far(),
            )
            .unwrap();
        assert!(svc.verify(&soon.token, now).is_ok(), "within the leeway");
    }

    #[test]
    fn a_token_living_longer_than_this_service_issues_is_refused() {
        let key = hs256();
        let generous = service_with(&key, "iss", Duration::from_secs(10 * 86_400));
        let issued = any_token(&generous);
        assert_eq!(
            service(&key)
                .verify(&issued.token, OffsetDateTime::now_utc())
                .unwrap_err(),
            TokenRejection::ImplausibleTimes
        );
    }

    #[test]
    fn every_algorithm_signs_tokens_that_verify_under_its_key_alone() {
        for alg in SigningAlgorithm::ALL {
            let key = key(alg);
            let svc = service(&key);
            let issued = any_token(&svc);
            let header = jsonwebtoken::decode_header(&issued.token).unwrap();
            assert_eq!(header.alg, alg.jwt());
            let now = OffsetDateTime::now_utc();
            assert_eq!(svc.verify(&issued.token, now).unwrap(), issued.claims);
            // Verified again from memory, with the same answer.
            assert_eq!(svc.verify(&issued.token, now).unwrap(), issued.claims);
            assert_eq!(
                svc.verify(&issued.token, now + time::Duration::minutes(2))
                    .unwrap_err(),
                TokenRejection::Expired,
                "a remembered token still expires"
            );
        }
    }

    #[test]
    fn a_token_naming_another_algorithm_than_its_key_is_refused() {
        // The classic confusion: HS256 "signed" with the public key as secret.
        let ed = key(SigningAlgorithm::EdDsa);
        let svc = service(&ed);
        let issued = any_token(&svc);
        let public = serde_json::to_vec(ed.jwk.as_ref().unwrap()).unwrap();
        let mut header = Header::new(jsonwebtoken::Algorithm::HS256);
        header.typ = Some(ACCESS_TOKEN_TYP.into());
        header.kid = Some(ed.kid.clone());
        let forged = jsonwebtoken::encode(
            &header,
            &issued.claims,
            &jsonwebtoken::EncodingKey::from_secret(&public),
        )
        .unwrap();
        assert_eq!(
            svc.verify(&forged, OffsetDateTime::now_utc()).unwrap_err(),
            TokenRejection::BadSignature
        );
    }

    #[test]
    fn tokens_carry_how_and_when_the_session_was_authenticated() {
        let svc = service(&hs256());
        let now = OffsetDateTime::now_utc();
        let logged_in = now - time::Duration::hours(2);
        let issued = svc.issue(subject(logged_in), now, far()).unwrap();
        assert_eq!(issued.claims.auth_time, logged_in.unix_timestamp());
        assert_eq!(issued.claims.aal, "aal1");
        assert_eq!(issued.claims.amr, ["pwd"]);
    }

    /// Not a check: what signing and verifying cost per algorithm, first
    /// seen and remembered. `cargo test --release --lib -- --ignored
    /// --nocapture verification_cost`.
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn verification_cost_per_algorithm() {
        const N: u32 = 2_000;
        for alg in SigningAlgorithm::ALL {
            let svc = service(&key(alg));
            let now = OffsetDateTime::now_utc();
            let started = std::time::Instant::now();
            let tokens: Vec<String> = (0..N).map(|_| any_token(&svc).token).collect();
            let sign = started.elapsed() / N;
            let started = std::time::Instant::now();
            for token in &tokens {
                svc.verify(token, now).unwrap();
            }
            let first = started.elapsed() / N;
            let started = std::time::Instant::now();
            for token in &tokens {
                svc.verify(token, now).unwrap();
            }
            let remembered = started.elapsed() / N;
            println!(
                "{alg}: sign {sign:?}, verify first {first:?}, verify remembered {remembered:?}"
            );
        }
    }

    #[test]
    fn a_token_with_critical_extensions_or_a_future_nbf_is_refused() {
        let ed = key(SigningAlgorithm::EdDsa);
        let svc = service(&ed);
        let issued = any_token(&svc);
        let private = |header: &Header, claims: &AccessClaims| {
            ed.signer.as_ref().unwrap().sign(header, claims).unwrap()
        };
        let mut header = Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.into());
        header.kid = Some(ed.kid.clone());
        let now = OffsetDateTime::now_utc();
        assert!(svc.verify(&private(&header, &issued.claims), now).is_ok());
        header.crit = Some(vec!["x-unknown".into()]);
        assert_eq!(
            svc.verify(&private(&header, &issued.claims), now)
                .unwrap_err(),
            TokenRejection::Malformed
        );
        header.crit = None;
        let mut later = issued.claims.clone();
        later.nbf = Some(now.unix_timestamp() + 3600);
        assert_eq!(
            svc.verify(&private(&header, &later), now).unwrap_err(),
            TokenRejection::ImplausibleTimes
        );
    }

    #[test]
    fn a_standby_key_verifies_nothing_until_shortly_before_it_signs() {
        let active = key(SigningAlgorithm::EdDsa);
        let mut standby = key(SigningAlgorithm::EdDsa);
        let now = OffsetDateTime::now_utc();
        standby.activates_at = now + time::Duration::hours(1);
        let policy = KeyPolicy {
            algorithm: SigningAlgorithm::EdDsa,
            publish_lead: Duration::from_secs(3600),
            rotation: None,
            access_token_ttl: Duration::from_secs(60),
        };
        let clock: crate::clock::SharedClock = std::sync::Arc::new(crate::clock::SystemClock);
        let keys = Keys::fixed(vec![active.clone(), standby.clone()], policy, clock).unwrap();
        let svc = TokenService::new(keys, "iss".into(), "aud".into(), Duration::from_secs(60));
        // Signed with the standby key, as only a thief of it could.
        let claims = any_token(&svc).claims;
        let mut header = Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.into());
        header.kid = Some(standby.kid.clone());
        let early = standby
            .signer
            .as_ref()
            .unwrap()
            .sign(&header, &claims)
            .unwrap();
        assert_eq!(
            svc.verify(&early, now).unwrap_err(),
            TokenRejection::UnknownKey
        );
        // The service itself signs with the active key meanwhile.
        let ours = any_token(&svc);
        let kid = jsonwebtoken::decode_header(&ours.token).unwrap().kid;
        assert_eq!(kid.as_deref(), Some(active.kid.as_str()));
    }
}
