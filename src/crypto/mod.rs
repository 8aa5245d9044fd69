//! Primitives: password hashing on a bounded pool, random refresh tokens,
//! token signing keys, and sealing of stored secrets.

pub mod passwords;
pub mod queue;
pub mod refresh;
pub mod sealing;
pub mod signing;
