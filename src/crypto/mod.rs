//! Password hashing, access-token signing and refresh-token generation.

pub mod passwords;
pub mod refresh;
pub mod tokens;
