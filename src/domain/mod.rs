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
pub use username::Username;
