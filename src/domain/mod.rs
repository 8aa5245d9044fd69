//! Domain types that parse, not validate: once a value of one of these types
//! exists it is known to be well-formed.

mod email;
mod password;
mod role;
mod user;
mod username;

pub use email::Email;
pub use password::{Password, PasswordError};
pub use role::{Role, Roles};
pub use user::User;
pub use username::{Username, passes_for};

/// The key an identifier typed at login is looked up by, and under which
/// usernames and emails are unique: ASCII letters lower-cased, nothing else
/// changed. Usernames and emails are ASCII, so this is exact; a non-ASCII
/// identifier (say `\u{212A}ate`, with a Kelvin sign) matches no account,
/// where full Unicode lower-casing would have made it `kate`.
pub fn login_key(typed: &str) -> String {
    typed.to_ascii_lowercase()
}
