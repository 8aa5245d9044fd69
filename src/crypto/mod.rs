//! Primitives: password hashing on a bounded pool, random refresh tokens,
//! token signing keys, sealing of stored secrets, and TOTP.

pub mod passwords;
pub mod queue;
pub mod refresh;
pub mod sealing;
pub mod signing;
pub mod totp;
