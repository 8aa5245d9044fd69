//! Domain types that parse, not validate: once a value of one of these types
//! exists it is known to be well-formed.

mod email;
mod oauth;
mod password;
mod role;
mod user;
mod username;

pub use email::Email;
pub use oauth::{ClientName, RedirectUri, Scope, Scopes};
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

/// What no name shown to people may hold: control characters, and the
/// characters that show nothing (Unicode's default-ignorable code points of
/// the basic plane: zero-width spaces and joiners, direction marks and
/// overrides, soft hyphens, variation selectors, fillers) or break a line.
/// A name is shown in lists and mail, where they could make it pass for
/// another.
pub const UNSHOWN: &[(char, char)] = &[
    ('\u{0000}', '\u{001F}'),
    ('\u{007F}', '\u{009F}'),
    ('\u{00AD}', '\u{00AD}'),
    ('\u{034F}', '\u{034F}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{2028}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FE00}', '\u{FE0F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF0}', '\u{FFFB}'),
];

/// Whether `c` is one of [`UNSHOWN`].
pub fn is_unshown(c: char) -> bool {
    UNSHOWN.iter().any(|&(a, b)| (a..=b).contains(&c))
}
