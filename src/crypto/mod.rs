//! Primitives: password hashing on a bounded pool, random refresh tokens,
//! token signing keys, sealing of stored secrets, and TOTP.

pub mod passwords;
pub mod queue;
pub mod refresh;
pub mod sealing;
pub mod signing;
pub mod totp;

/// Whether two digests are equal, in time that does not depend on where
/// they differ: a comparison that stops early would tell a guesser how much
/// of a guess was right.
pub fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
