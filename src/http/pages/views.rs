//! The hosted pages' HTML, compiled in (maud escapes every value). One
//! stylesheet, themed by CSS variables; one script, for passkeys, on the
//! pages that offer one (and nothing else needs it).

use maud::{DOCTYPE, Markup, html};

/// The hidden fields a form carries back: the CSRF token and its context.
pub type Hidden<'a> = &'a [(&'a str, &'a str)];

/// A page's title and body, put in the shell (head, stylesheet, logo) when
/// it is sent.
pub struct Page {
    title: String,
    body: Markup,
    script: bool,
}

fn page(title: &str, body: Markup) -> Page {
    Page {
        title: title.to_owned(),
        body,
        script: false,
    }
}

/// Where the passkey script is served.
pub const SCRIPT_PATH: &str = "/oauth/passkeys.js";
/// The passkey script.
pub const SCRIPT: &str = include_str!("passkeys.js");

/// The script's address in the pages: with its digest, so that a cached
/// copy of an older build's script is never run against newer pages.
static SCRIPT_SRC: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(SCRIPT.as_bytes());
    let version: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("{SCRIPT_PATH}?v={version}")
});

impl Page {
    /// Whether the page loads the passkey script (its policy must allow it).
    pub fn has_script(&self) -> bool {
        self.script
    }

    fn with_script(mut self) -> Self {
        self.script = true;
        self
    }

    /// The whole document, with the deployment's logo above the title; the
    /// script, if the page has it, carries `nonce`, which its policy names.
    pub fn render(self, logo: Option<&str>, nonce: Option<&str>) -> Markup {
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (self.title) " · authgate" }
                    link rel="stylesheet" href="/oauth/pages.css";
                    @if self.script {
                        script src=(*SCRIPT_SRC) nonce=[nonce] defer {}
                    }
                }
                body {
                    main {
                        @if let Some(logo) = logo {
                            img.logo src=(logo) alt="";
                        }
                        h1 { (self.title) }
                        (self.body)
                    }
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
pub fn login(client_name: &str, fields: Hidden, message: Option<&str>, login: &str) -> Page {
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
            (passkey_form("login", "/oauth/passkey", fields, "Sign in with a passkey"))
        },
    )
    .with_script()
}

/// A passkey's form: the script fills in the ceremony's id and the
/// authenticator's answer, and posts it. Without the script (or WebAuthn)
/// its button stays hidden.
fn passkey_form(kind: &str, action: &str, fields: Hidden, button: &str) -> Markup {
    html! {
        form.passkey method="post" action=(action) {
            (hidden(fields))
            input type="hidden" name="challenge_id";
            input type="hidden" name="credential";
            p.error.passkey-error role="alert" hidden {}
            button.secondary type="button" data-passkey=(kind) hidden { (button) }
        }
    }
}

/// The second step: a code from the authenticator app, or a recovery code;
/// or the user's passkey, when `passkey`.
pub fn mfa(fields: Hidden, message: Option<&str>, passkey: bool) -> Page {
    let page = page(
        "Two-step verification",
        html! {
            @if passkey {
                p { "Use your passkey, or enter a code from your authenticator app or one of your recovery codes." }
            } @else {
                p { "Enter the code from your authenticator app, or one of your recovery codes." }
            }
            (error(message))
            form method="post" action="/oauth/mfa" {
                (hidden(fields))
                label for="code" { "Code" }
                input id="code" name="code" type="text" inputmode="numeric"
                    autocomplete="one-time-code" required;
                button type="submit" { "Verify" }
            }
            @if passkey {
                (passkey_form("mfa", "/oauth/mfa", fields, "Use a passkey"))
            }
        },
    );
    if passkey { page.with_script() } else { page }
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
pub fn consent(client_name: &str, user: &str, scopes: &[String], fields: Hidden) -> Page {
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
pub fn logout_confirm(client_name: Option<&str>, fields: Hidden) -> Page {
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
pub fn signed_out() -> Page {
    page(
        "You are signed out",
        html! {
            p { "You can close this window." }
        },
    )
}

/// A mailed link's landing page: one button spends the link (a mail
/// scanner that opens the link spends nothing).
pub fn link(title: &str, intro: &str, action: &str, button: &str, fields: Hidden) -> Page {
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
pub fn new_password(fields: Hidden, message: Option<&str>) -> Page {
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
pub fn done(title: &str, message: &str) -> Page {
    page(
        title,
        html! {
            p { (message) }
        },
    )
}

/// A session as the account page lists it.
pub struct SessionRow {
    pub id: String,
    pub device: String,
    pub ip: String,
    pub last_used: String,
    pub current: bool,
}

/// A second factor as the account page lists it.
pub struct FactorRow {
    pub id: String,
    pub kind: &'static str,
    pub name: String,
}

/// What the account page shows.
pub struct AccountView<'a> {
    pub username: Option<&'a str>,
    pub email: Option<&'a str>,
    pub email_verified: bool,
    pub sessions: Vec<SessionRow>,
    pub factors: Vec<FactorRow>,
    pub recovery_codes_left: u32,
    pub csrf: &'a str,
    pub notice: Option<&'a str>,
    pub error: Option<&'a str>,
}

/// `/account`: the profile, the sessions, the password, the second factors.
pub fn account(view: &AccountView) -> Page {
    let csrf = [("csrf", view.csrf)];
    page(
        "Your account",
        html! {
            @if let Some(notice) = view.notice {
                p.notice role="status" { (notice) }
            }
            (error(view.error))
            section {
                h2 { "Profile" }
                dl {
                    @if let Some(username) = view.username {
                        dt { "Username" } dd { (username) }
                    }
                    @if let Some(email) = view.email {
                        dt { "Email" }
                        dd { (email) @if view.email_verified { " (verified)" } @else { " (not verified)" } }
                    }
                }
            }
            section {
                h2 { "Sessions" }
                ul.sessions {
                    @for s in &view.sessions {
                        li {
                            span { (s.device) " · " (s.ip) " · last used " (s.last_used)
                                @if s.current { strong { " · this browser" } } }
                            form method="post" action="/account/sessions/end" {
                                (hidden(&csrf))
                                input type="hidden" name="session_id" value=(s.id);
                                button.secondary.small type="submit" { "Sign out" }
                            }
                        }
                    }
                }
            }
            section {
                h2 { "Password" }
                form method="post" action="/account/password" {
                    (hidden(&csrf))
                    label for="current_password" { "Current password" }
                    input id="current_password" name="current_password" type="password"
                        autocomplete="current-password" required;
                    label for="new_password" { "New password" }
                    input id="new_password" name="new_password" type="password"
                        autocomplete="new-password" required minlength="8";
                    label for="repeat" { "Repeat the new password" }
                    input id="repeat" name="repeat" type="password"
                        autocomplete="new-password" required minlength="8";
                    button type="submit" { "Change password" }
                }
            }
            section {
                h2 { "Two-step verification" }
                @if view.factors.is_empty() {
                    p { "Only your password protects this account." }
                } @else {
                    ul.factors {
                        @for f in &view.factors {
                            li {
                                span { (f.name) " (" (f.kind) ")" }
                                form method="post" action="/account/mfa/remove" {
                                    (hidden(&csrf))
                                    input type="hidden" name="factor_id" value=(f.id);
                                    button.secondary.small type="submit"
                                        aria-label={ "Remove " (f.name) } { "Remove" }
                                }
                            }
                        }
                    }
                    p { (view.recovery_codes_left) " recovery codes left." }
                }
                form method="post" action="/account/mfa/totp" {
                    (hidden(&csrf))
                    button.secondary type="submit" { "Set up an authenticator app" }
                }
                form method="post" action="/account/passkeys" {
                    (hidden(&csrf))
                    label for="passkey_name" { "Passkey name" }
                    input id="passkey_name" name="name" type="text" maxlength="64"
                        value="Passkey" required;
                    button.secondary type="submit" { "Add a passkey" }
                }
            }
            form method="post" action="/oauth/logout" {
                (hidden(&csrf))
                button.secondary type="submit" { "Sign out" }
            }
        },
    )
}

/// The enrolment of an authenticator app: the QR code, the secret, and the
/// first code.
pub fn enrol(qr_svg: &str, secret: &str, fields: Hidden, message: Option<&str>) -> Page {
    page(
        "Set up an authenticator app",
        html! {
            p { "Scan this code with the app, or type in the key below." }
            div.qr { (maud::PreEscaped(qr_svg)) }
            p.secret { code { (secret) } }
            (error(message))
            form method="post" action="/account/mfa/totp/confirm" {
                (hidden(fields))
                label for="code" { "Code" }
                input id="code" name="code" type="text" inputmode="numeric"
                    autocomplete="one-time-code" required;
                button type="submit" { "Verify" }
            }
        },
    )
}

/// A passkey's registration, its name chosen: the authenticator (the
/// script passes it `options` and posts its answer).
pub fn new_passkey(name: &str, options: &str, fields: Hidden) -> Page {
    page(
        "Add a passkey",
        html! {
            p { "Your device or security key keeps the passkey; it signs you in without a password." }
            p { "Name: " strong { (name) } }
            form.passkey method="post" action="/account/passkeys/finish" data-options=(options) {
                (hidden(fields))
                input type="hidden" name="credential";
                p.error.passkey-error role="alert" hidden {}
                p.no-passkeys { "This browser cannot make passkeys." }
                button type="button" data-passkey="register" hidden { "Create passkey" }
            }
            p { a href="/account" { "Back to your account" } }
        },
    )
    .with_script()
}

/// The recovery codes, shown once.
pub fn recovery_codes(codes: &[String]) -> Page {
    page(
        "Keep your recovery codes",
        html! {
            p { "Each code signs you in once if you lose your second step. They are shown only now." }
            ul.codes { @for c in codes { li { code { (c) } } } }
            p { a href="/account" { "Back to your account" } }
        },
    )
}

/// A request that cannot go back to where it came from.
pub fn refused(message: &str) -> Page {
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
main { width: 100%; max-width: 460px; margin: 2rem 1rem; padding: 2rem; background: var(--ag-card);
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
h2 { font-size: 1.05rem; margin: 1.6rem 0 .4rem; }
dl { display: grid; grid-template-columns: auto 1fr; gap: .3rem 1rem; margin: 0; }
dt { font-weight: 600; } dd { margin: 0; }
ul.sessions, ul.factors { list-style: none; padding: 0; }
ul.sessions li, ul.factors li { display: flex; align-items: center; justify-content: space-between; gap: .6rem;
  padding: .4rem 0; border-bottom: 1px solid var(--ag-border); font-size: .9rem; }
button.small { width: auto; margin: 0; padding: .3rem .7rem; font-size: .85rem; white-space: nowrap; }
.notice { color: var(--ag-text); font-weight: 600; }
.logo { display: block; max-height: 48px; max-width: 100%; margin: 0 auto 1rem; }
.qr svg { width: 200px; height: 200px; display: block; margin: 0 auto; }
.secret { text-align: center; word-break: break-all; }
ul.codes { columns: 2; font-family: monospace; }
form.passkey { margin-top: .4rem; }
[hidden] { display: none !important; }
.js-passkeys .no-passkeys { display: none; }
"#;
