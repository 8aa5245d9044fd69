//! The rules every second factor follows, whatever its kind: which factors
//! count, what needs a session of two, and the recovery codes that stand in
//! for them.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    error::{AuthError, AuthResult},
    sessions::Authenticated,
    tokens::AAL2,
};
use crate::store::{Factor, MfaStore, Store};

/// How many recovery codes a user gets at a time.
pub const RECOVERY_CODES: usize = 10;

/// Sensitive changes need a session of two factors (RFC 9470's
/// `insufficient_user_authentication` otherwise).
pub fn require_aal2(caller: &Authenticated) -> AuthResult<()> {
    if caller.claims.aal == AAL2 {
        Ok(())
    } else {
        Err(AuthError::InsufficientAuthentication)
    }
}

/// The user's TOTP factors that count: those confirmed with a first code
/// (an enrolment waiting for its code is none).
pub(super) async fn confirmed_factors(
    store: &dyn MfaStore,
    user_id: Uuid,
) -> AuthResult<Vec<Factor>> {
    let mut factors = store.factors(user_id).await?;
    factors.retain(|f| f.confirmed_at.is_some());
    Ok(factors)
}

/// A passkey's type among the factors.
pub(super) const PASSKEY: &str = "passkey";

/// The kinds of the user's factors that count (none: no second step): a
/// confirmed TOTP factor, a passkey.
pub(super) async fn factor_types(
    store: &dyn Store,
    user_id: Uuid,
) -> AuthResult<Vec<&'static str>> {
    let mut kinds: Vec<_> = confirmed_factors(store, user_id)
        .await?
        .into_iter()
        .map(|f| f.kind.as_str())
        .collect();
    if !store.passkeys(user_id).await?.is_empty() {
        kinds.push(PASSKEY);
    }
    kinds.sort_unstable();
    kinds.dedup();
    Ok(kinds)
}

/// A change of password or email address needs a session of two factors
/// once the user has a second factor: else a stolen password, or a session
/// opened before the factor, could take the account over.
pub async fn require_aal2_if_enrolled(store: &dyn Store, caller: &Authenticated) -> AuthResult<()> {
    if caller.claims.aal == AAL2 {
        return Ok(());
    }
    if store.has_factor(caller.user_id).await? {
        Err(AuthError::InsufficientAuthentication)
    } else {
        Ok(())
    }
}

/// Ten new recovery codes (`xxxxx-xxxxx`, 50 random bits each) and their
/// hashes.
pub(super) fn recovery_codes() -> (Vec<String>, Vec<[u8; 32]>) {
    const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let codes: Vec<String> = (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0u8; 10];
            rand::fill(&mut bytes);
            let chars: String = bytes
                .iter()
                .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
                .collect();
            format!("{}-{}", &chars[..5], &chars[5..])
        })
        .collect();
    let hashes = codes.iter().map(|c| recovery_hash(c)).collect();
    (codes, hashes)
}

/// A recovery code's storage key: as typed, but in lower case and without
/// spaces or dashes. A plain hash suffices: the codes are random.
pub(super) fn recovery_hash(code: &str) -> [u8; 32] {
    let normalized: String = code
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    Sha256::digest(normalized.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_ten_distinct_and_hash_as_typed_loosely() {
        let (codes, hashes) = recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), RECOVERY_CODES);
        for (code, hash) in codes.iter().zip(&hashes) {
            assert_eq!(code.len(), 11);
            assert_eq!(&code[5..6], "-");
            assert_eq!(recovery_hash(&code.to_uppercase().replace('-', " ")), *hash);
        }
    }
}
