//! Time-based one-time passwords (RFC 6238 over RFC 4226's HOTP): HMAC-SHA-1,
//! six digits, 30-second steps, as every authenticator app reads them from an
//! `otpauth://totp/` URI.

use aws_lc_rs::{constant_time::verify_slices_are_equal, hmac, rand};

/// Bytes of a secret: 160 bits, the HMAC-SHA-1 block the RFC recommends.
pub const SECRET_LEN: usize = 20;
/// Seconds of one time step.
pub const STEP_SECS: i64 = 30;
/// Digits of a code.
pub const DIGITS: usize = 6;
/// Steps either side of now a code is accepted from: one, for a clock a
/// little off and a code typed as its step ends (RFC 6238 §5.2).
pub const DRIFT_STEPS: i64 = 1;

/// A TOTP secret. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct TotpSecret([u8; SECRET_LEN]);

impl TotpSecret {
    pub fn generate() -> Self {
        let mut bytes = [0u8; SECRET_LEN];
        rand::fill(&mut bytes).expect("the system random generator works");
        Self(bytes)
    }

    /// A secret from stored bytes; `None` unless they are a secret's length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A secret from its base32 form (as [`TotpSecret::to_base32`] writes
    /// it; case, spaces and padding do not matter).
    pub fn from_base32(text: &str) -> Option<Self> {
        const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        let mut bytes = Vec::with_capacity(SECRET_LEN);
        let (mut buffer, mut bits) = (0u32, 0u32);
        for c in text
            .bytes()
            .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        {
            let value = ALPHABET.iter().position(|&a| a == c.to_ascii_uppercase())?;
            buffer = (buffer << 5) | value as u32;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                bytes.push((buffer >> bits) as u8);
            }
        }
        Self::from_bytes(&bytes)
    }

    /// The secret as authenticator apps take it: RFC 4648 base32, unpadded.
    pub fn to_base32(&self) -> String {
        base32(&self.0)
    }

    /// The code of time step `step`.
    pub fn code_at(&self, step: i64) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &self.0);
        let tag = hmac::sign(&key, &step.to_be_bytes());
        let mac = tag.as_ref();
        // RFC 4226 §5.3: dynamic truncation.
        let offset = usize::from(mac[mac.len() - 1] & 0x0f);
        let binary = u32::from_be_bytes([
            mac[offset],
            mac[offset + 1],
            mac[offset + 2],
            mac[offset + 3],
        ]) & 0x7fff_ffff;
        format!(
            "{:0width$}",
            binary % 10u32.pow(DIGITS as u32),
            width = DIGITS
        )
    }

    /// The step `code` belongs to, among those within [`DRIFT_STEPS`] of the
    /// step of `unix_time`, and later than `used_up_to` (a code, once used,
    /// is spent, and so is every earlier one: no replay). `None` if none.
    pub fn verify(&self, code: &str, unix_time: i64, used_up_to: Option<i64>) -> Option<i64> {
        let code = code.trim();
        if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let now = step_of(unix_time);
        // Every candidate is compared, in constant time, whichever matches.
        let mut found = None;
        for step in (now - DRIFT_STEPS)..=(now + DRIFT_STEPS) {
            let matches =
                verify_slices_are_equal(self.code_at(step).as_bytes(), code.as_bytes()).is_ok();
            if matches && used_up_to.is_none_or(|used| step > used) && found.is_none() {
                found = Some(step);
            }
        }
        found
    }
}

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret([REDACTED])")
    }
}

/// The time step of a Unix time.
pub fn step_of(unix_time: i64) -> i64 {
    unix_time.div_euclid(STEP_SECS)
}

/// The `otpauth://totp/` URI of a secret (the Key Uri Format of Google
/// Authenticator, which every app follows), labelled `issuer:account`.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &TotpSecret) -> String {
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        percent_encode(issuer),
        percent_encode(account),
        secret.to_base32(),
        percent_encode(issuer),
    )
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// RFC 4648 §6 base32, without padding.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B's SHA-1 secret.
    fn rfc_secret() -> TotpSecret {
        TotpSecret::from_bytes(b"12345678901234567890").unwrap()
    }

    #[test]
    fn codes_match_the_rfc_6238_test_vectors() {
        // The RFC's eight-digit values, of which six digits are shown.
        for (time, code) in [
            (59, "287082"),
            (1_111_111_109, "081804"),
            (1_111_111_111, "050471"),
            (1_234_567_890, "005924"),
            (2_000_000_000, "279037"),
            (20_000_000_000, "353130"),
        ] {
            assert_eq!(rfc_secret().code_at(step_of(time)), code, "T = {time}");
        }
    }

    #[test]
    fn a_code_is_accepted_one_step_either_side_and_no_further() {
        let secret = rfc_secret();
        let now = 1_234_567_890;
        let step = step_of(now);
        for offset in -1..=1 {
            let code = secret.code_at(step + offset);
            assert_eq!(secret.verify(&code, now, None), Some(step + offset));
        }
        for offset in [-2, 2] {
            let code = secret.code_at(step + offset);
            assert_eq!(secret.verify(&code, now, None), None);
        }
    }

    #[test]
    fn a_used_step_and_every_earlier_one_are_spent() {
        let secret = rfc_secret();
        let now = 1_234_567_890;
        let step = step_of(now);
        let code = secret.code_at(step);
        assert_eq!(secret.verify(&code, now, Some(step)), None);
        assert_eq!(secret.verify(&code, now, Some(step + 1)), None);
        assert_eq!(secret.verify(&code, now, Some(step - 1)), Some(step));
    }

    #[test]
    fn malformed_codes_are_refused() {
        let secret = rfc_secret();
        for code in ["", "12345", "1234567", "12a456", "１２３４５６"] {
            assert_eq!(secret.verify(code, 59, None), None, "{code:?}");
        }
        // Spaces around a code are the typist's, not the code's.
        assert_eq!(secret.verify(" 287082 ", 59, None), Some(1));
    }

    #[test]
    fn base32_follows_rfc_4648() {
        for (raw, encoded) in [
            (&b""[..], ""),
            (b"f", "MY"),
            (b"fo", "MZXQ"),
            (b"foo", "MZXW6"),
            (b"foob", "MZXW6YQ"),
            (b"fooba", "MZXW6YTB"),
            (b"foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32(raw), encoded);
        }
        assert_eq!(TotpSecret::generate().to_base32().len(), 32);
        let secret = TotpSecret::generate();
        let read = TotpSecret::from_base32(&secret.to_base32().to_lowercase()).unwrap();
        assert_eq!(read.as_bytes(), secret.as_bytes());
        assert!(TotpSecret::from_base32("MZXW6").is_none(), "too short");
        assert!(TotpSecret::from_base32("1!").is_none(), "not base32");
    }

    #[test]
    fn the_uri_names_issuer_and_account_encoded() {
        let uri = otpauth_uri("Acme Co", "alice@example.com", &rfc_secret());
        assert_eq!(
            uri,
            "otpauth://totp/Acme%20Co:alice%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=Acme%20Co&algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn a_secret_does_not_show_in_debug_output() {
        assert_eq!(format!("{:?}", rfc_secret()), "TotpSecret([REDACTED])");
    }
}
