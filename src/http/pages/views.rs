//! The hosted pages' HTML, compiled in (maud escapes every value). No
//! scripts; one stylesheet, themed by CSS variables.

use maud::{DOCTYPE, Markup, html};

/// The hidden fields a form carries back: the CSRF token and its context.
pub type Hidden<'a> = &'a [(&'a str, &'a str)];

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · authgate" }
                link rel="stylesheet" href="/oauth/pages.css";
            }
            body {
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

fn hidden(fields: Hidden) -> Markup {
    html! {
        @for (name, value) in fields {
            input type="hidden" name=(name) value=(value);
        }
    }
}

fn error(message: Option<&str>) -> Markup {
    html! {
        @if let Some(message) = message {
            p.error role="alert" { (message) }
        }
    }
}

/// The login form, for `client_name`.
pub fn login(client_name: &str, fields: Hidden, message: Option<&str>, login: &str) -> Markup {
    page(
        "Sign in",
        html! {
            p { "to continue to " strong { (client_name) } }
            (error(message))
            form method="post" action="/oauth/login" {
                (hidden(fields))
                label for="login" { "Username or email" }
                input id="login" name="login" type="text" autocomplete="username webauthn"
                    required value=(login);
                label for="password" { "Password" }
                input id="password" name="password" type="password"
                    autocomplete="current-password" required;
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// The second step: a code from the authenticator app, or a recovery code.
pub fn mfa(fields: Hidden, message: Option<&str>) -> Markup {
    page(
        "Two-step verification",
        html! {
            p { "Enter the code from your authenticator app, or one of your recovery codes." }
            (error(message))
            form method="post" action="/oauth/mfa" {
                (hidden(fields))
                label for="code" { "Code" }
                input id="code" name="code" type="text" inputmode="numeric"
                    autocomplete="one-time-code" required;
                button type="submit" { "Verify" }
            }
        },
    )
}

/// What a scope lets a client do, in words.
fn describe_scope(scope: &str) -> String {
    match scope {
        "openid" => "Know who you are".into(),
        "profile" => "See your username".into(),
        "email" => "See your email address".into(),
        "offline_access" => "Stay signed in when you are away".into(),
        other => format!("Use “{other}”"),
    }
}

/// The consent page.
pub fn consent(client_name: &str, user: &str, scopes: &[String], fields: Hidden) -> Markup {
    page(
        "Allow access?",
        html! {
            p { strong { (client_name) } " wants to:" }
            ul.scopes {
                @for scope in scopes {
                    li { (describe_scope(scope)) }
                }
            }
            p.who { "Signed in as " (user) }
            form method="post" action="/oauth/consent" {
                (hidden(fields))
                div.buttons {
                    button type="submit" name="decision" value="allow" { "Allow" }
                    button.secondary type="submit" name="decision" value="deny" { "Deny" }
                }
            }
        },
    )
}

/// Asks before signing out (a link alone must not sign anyone out).
pub fn logout_confirm(client_name: Option<&str>, fields: Hidden) -> Markup {
    page(
        "Sign out?",
        html! {
            @if let Some(name) = client_name {
                p { strong { (name) } " asks to sign you out." }
            } @else {
                p { "Sign out of this service on this browser?" }
            }
            form method="post" action="/oauth/logout" {
                (hidden(fields))
                button type="submit" { "Sign out" }
            }
        },
    )
}

/// After signing out, when no application asked to have the browser back.
pub fn signed_out() -> Markup {
    page(
        "You are signed out",
        html! {
            p { "You can close this window." }
        },
    )
}

/// A mailed link's landing page: one button spends the link (a mail
/// scanner that opens the link spends nothing).
pub fn link(title: &str, intro: &str, action: &str, button: &str, fields: Hidden) -> Markup {
    page(
        title,
        html! {
            p { (intro) }
            form method="post" action=(action) {
                (hidden(fields))
                button type="submit" { (button) }
            }
        },
    )
}

/// The reset link's page: the new password, twice.
pub fn new_password(fields: Hidden, message: Option<&str>) -> Markup {
    page(
        "Choose a new password",
        html! {
            p { "Every session of your account ends when the new password is set." }
            (error(message))
            form method="post" action="/oauth/password-reset" {
                (hidden(fields))
                label for="new_password" { "New password" }
                input id="new_password" name="new_password" type="password"
                    autocomplete="new-password" required minlength="8";
                label for="repeat" { "Repeat the new password" }
                input id="repeat" name="repeat" type="password"
                    autocomplete="new-password" required minlength="8";
                button type="submit" { "Set password" }
            }
        },
    )
}

/// A plain message.
pub fn done(title: &str, message: &str) -> Markup {
    page(
        title,
        html! {
            p { (message) }
        },
    )
}

/// A request that cannot go back to where it came from.
pub fn refused(message: &str) -> Markup {
    page(
        "This request cannot be completed",
        html! {
            p.error role="alert" { (message) }
            p { "Go back to the application and try again." }
        },
    )
}

/// The stylesheet: every color and the radius are variables a deployment
/// can override.
pub const STYLESHEET: &str = r#":root {
  --ag-bg: #f5f6f8; --ag-card: #ffffff; --ag-text: #1d2330; --ag-muted: #5b6475;
  --ag-accent: #2f5bea; --ag-accent-text: #ffffff; --ag-error: #b42318;
  --ag-border: #d5d9e0; --ag-radius: 8px;
  --ag-font: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
}
* { box-sizing: border-box; }
body { margin: 0; min-height: 100vh; display: flex; align-items: center; justify-content: center;
  background: var(--ag-bg); color: var(--ag-text); font-family: var(--ag-font); }
main { width: 100%; max-width: 380px; margin: 2rem 1rem; padding: 2rem; background: var(--ag-card);
  border: 1px solid var(--ag-border); border-radius: var(--ag-radius); }
h1 { font-size: 1.4rem; margin: 0 0 1rem; }
p { color: var(--ag-muted); line-height: 1.4; }
label { display: block; margin: 1rem 0 .3rem; font-weight: 600; }
input[type=text], input[type=password] { width: 100%; padding: .6rem .7rem; font: inherit;
  border: 1px solid var(--ag-border); border-radius: var(--ag-radius); }
button { margin-top: 1.2rem; width: 100%; padding: .7rem; font: inherit; font-weight: 600;
  color: var(--ag-accent-text); background: var(--ag-accent); border: 0; border-radius: var(--ag-radius);
  cursor: pointer; }
button.secondary { color: var(--ag-text); background: transparent; border: 1px solid var(--ag-border); }
.buttons { display: flex; gap: .6rem; }
.error { color: var(--ag-error); font-weight: 600; }
ul.scopes { padding-left: 1.2rem; line-height: 1.7; }
"#;
