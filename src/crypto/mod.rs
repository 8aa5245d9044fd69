//! Primitives: password hashing on a bounded pool, and random refresh tokens.

pub mod passwords;
pub mod queue;
pub mod refresh;
