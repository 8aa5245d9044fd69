//! `/account`: the signed-in user's own page: profile, sessions (each with
//! "Sign out"), the password, second factors (an authenticator app with a
//! QR code, passkeys; each with "Remove"). Every change is a form with the
//! CSRF token, under the browser's session.

use axum::{
    Router,
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use uuid::Uuid;
use webauthn_rs::prelude::RegisterPublicKeyCredential;

use super::{
    FormBody, SESSION_COOKIE, cookie, failure_page, form_token, html_page, own_form,
    passkey_answer, refused_page, views, wait_words,
};
use crate::{
    auth::{AuthError, sessions::Authenticated},
    domain::{Email, Password, Username},
    http::{
        AppState,
        extract::{ClientInfo, factor_name},
    },
};

/// Where the page is, and where a login for it goes back to.
pub const PATH: &str = "/account";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(PATH, get(account))
        .route("/account/sessions/end", post(end_session))
        .route("/account/password", post(change_password))
        .route("/account/mfa/totp", post(enrol))
        .route("/account/mfa/totp/confirm", post(confirm))
        .route("/account/mfa/remove", post(remove_factor))
        .route("/account/passkeys", post(start_passkey))
        .route("/account/passkeys/finish", post(finish_passkey))
}

/// The signed-in user of this browser, if any.
async fn caller(state: &AppState, headers: &HeaderMap) -> Result<Option<Authenticated>, Response> {
    let Some(token) = cookie(state, headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    state
        .services
        .sessions
        .browser_caller(token)
        .await
        .map_err(|e| failure_page(state, e))
}

fn see_account(done: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("{PATH}?done={done}")) {
        res.headers_mut().insert(header::LOCATION, location);
    }
    res
}

/// The login page, coming back here.
fn sign_in_first(state: &AppState, headers: &HeaderMap) -> Response {
    let (form, new_form) = form_token(state, headers);
    let fields = [("csrf", form.as_str()), ("return_to", PATH)];
    html_page(
        StatusCode::OK,
        views::login("your account", &fields, None, ""),
        None,
        Some((&form, new_form)),
        state,
    )
}

/// What a `done` marker says: fixed sentences, never the query's text.
fn notice(query: Option<&str>) -> Option<&'static str> {
    #[derive(Deserialize)]
    struct Done {
        done: Option<String>,
    }
    let done = serde_urlencoded::from_str::<Done>(query.unwrap_or(""))
        .ok()?
        .done?;
    match done.as_str() {
        "password" => Some("Your password is changed. Your other sessions have ended."),
        "session" => Some("The session is signed out."),
        "passkey" => Some("The passkey is added."),
        "removed" => Some("The second step is removed."),
        _ => None,
    }
}

async fn render(
    state: &AppState,
    headers: &HeaderMap,
    who: &Authenticated,
    notice: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let services = &state.services;
    let sessions = match services.sessions.list(who).await {
        Ok(s) => s,
        Err(e) => return failure_page(state, e),
    };
    let factors = match services.mfa.factors(who.user_id).await {
        Ok(f) => f,
        Err(e) => return failure_page(state, e),
    };
    let (form, new_form) = form_token(state, headers);
    let user = &who.user.user;
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    let view = views::AccountView {
        username: user.username.as_deref(),
        email: user.email.as_deref(),
        email_verified: user.email_verified,
        sessions: sessions
            .into_iter()
            .map(|s| views::SessionRow {
                id: s.id.to_string(),
                device: s.user_agent.unwrap_or_else(|| "Unknown device".into()),
                ip: s.ip.unwrap_or_default(),
                last_used: s
                    .last_used_at
                    .unwrap_or(s.created_at)
                    .format(&format)
                    .unwrap_or_default(),
                current: s.current,
            })
            .collect(),
        factors: factors
            .factors
            .into_iter()
            .map(|f| views::FactorRow {
                id: f.id.to_string(),
                kind: if f.kind == "passkey" {
                    "passkey"
                } else {
                    "authenticator app"
                },
                name: f.name,
            })
            .collect(),
        recovery_codes_left: factors.recovery_codes_left,
        csrf: &form,
        notice,
        error,
    };
    html_page(
        status,
        views::account(&view),
        None,
        Some((&form, new_form)),
        state,
    )
}

/// `GET /account`.
async fn account(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    match caller(&state, &headers).await {
        Err(res) => res,
        Ok(None) => sign_in_first(&state, &headers),
        Ok(Some(who)) => {
            render(
                &state,
                &headers,
                &who,
                notice(query.as_deref()),
                None,
                StatusCode::OK,
            )
            .await
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct AccountForm {
    csrf: Option<String>,
    session_id: Option<String>,
    current_password: Option<String>,
    new_password: Option<String>,
    repeat: Option<String>,
    factor_id: Option<String>,
    code: Option<String>,
    name: Option<String>,
    challenge_id: Option<String>,
    credential: Option<String>,
}

/// A signed-in browser's request: what refusing a change needs.
struct SignedIn<'a> {
    state: &'a AppState,
    headers: &'a HeaderMap,
    who: Authenticated,
}

impl SignedIn<'_> {
    /// The account page again, saying why a change was refused.
    async fn refuse(&self, status: StatusCode, message: &str) -> Response {
        render(
            self.state,
            self.headers,
            &self.who,
            None,
            Some(message),
            status,
        )
        .await
    }
}

/// A form of this page, from this site, by a signed-in browser.
async fn posted<'a>(
    state: &'a AppState,
    headers: &'a HeaderMap,
    body: &Bytes,
) -> Result<(AccountForm, SignedIn<'a>), Response> {
    let form: AccountForm = own_form(state, headers, body).map_err(|res| *res)?;
    match caller(state, headers).await? {
        Some(who) => Ok((
            form,
            SignedIn {
                state,
                headers,
                who,
            },
        )),
        None => Err(sign_in_first(state, headers)),
    }
}

/// An id a form carries (of a session, of a factor).
fn form_id(raw: Option<&str>) -> Option<Uuid> {
    raw.and_then(|s| Uuid::parse_str(s).ok())
}

/// `POST /account/sessions/end`: signs one session out.
async fn end_session(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Response {
    let (form, here) = match posted(&state, &headers, &body).await {
        Ok(posted) => posted,
        Err(res) => return res,
    };
    let Some(id) = form_id(form.session_id.as_deref()) else {
        return refused_page(&state, StatusCode::BAD_REQUEST, "The form is malformed.");
    };
    match state.services.sessions.end(&here.who, &client, id).await {
        Ok(()) | Err(AuthError::NotFound) => see_account("session"),
        Err(e) => failure_page(&state, e),
    }
}

/// `POST /account/password`.
async fn change_password(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Response {
    let (form, here) = match posted(&state, &headers, &body).await {
        Ok(posted) => posted,
        Err(res) => return res,
    };
    let unfit = StatusCode::UNPROCESSABLE_ENTITY;
    let new = form.new_password.unwrap_or_default();
    if form.repeat.as_deref() != Some(new.as_str()) {
        return here.refuse(unfit, "The two new passwords differ.").await;
    }
    let user = &here.who.user.user;
    let username = user
        .username
        .as_deref()
        .and_then(|u| Username::parse(u).ok());
    let email = user.email.as_deref().and_then(|e| Email::parse(e).ok());
    let password = match Password::parse(&new, username.as_ref(), email.as_ref()) {
        Ok(p) => p,
        Err(e) => return here.refuse(unfit, &format!("The new password {e}.")).await,
    };
    let current = form.current_password.unwrap_or_default();
    match state
        .services
        .accounts
        .change_password(&here.who, &client, &current, password)
        .await
    {
        Ok(()) => see_account("password"),
        Err(AuthError::WrongPassword) => here.refuse(unfit, "The current password is wrong.").await,
        Err(AuthError::InsufficientAuthentication) => here.refuse(unfit, SECOND_STEP_FIRST).await,
        Err(AuthError::Throttled(t)) => here.refuse(unfit, &wait_words(t)).await,
        Err(e) => failure_page(&state, e),
    }
}

/// The QR code of an `otpauth://` URI, as inline SVG.
fn qr_svg(uri: &str) -> String {
    match qrcode::QrCode::new(uri.as_bytes()) {
        Ok(code) => {
            let svg = code
                .render::<qrcode::render::svg::Color>()
                .min_dimensions(200, 200)
                .build();
            // The element alone: an XML declaration has no place in HTML.
            svg.find("<svg")
                .map_or(svg.clone(), |at| svg[at..].to_owned())
        }
        Err(_) => String::new(),
    }
}

/// `POST /account/mfa/totp`: a new authenticator app, unconfirmed.
async fn enrol(
    State(state): State<AppState>,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Response {
    let (form, here) = match posted(&state, &headers, &body).await {
        Ok(posted) => posted,
        Err(res) => return res,
    };
    match state.services.mfa.enroll_totp(&here.who, None).await {
        Ok(enrolment) => {
            let id = enrolment.id.to_string();
            let csrf = form.csrf.unwrap_or_default();
            let fields = [("csrf", csrf.as_str()), ("factor_id", id.as_str())];
            html_page(
                StatusCode::OK,
                views::enrol(
                    &qr_svg(&enrolment.otpauth_uri),
                    &enrolment.secret,
                    &fields,
                    None,
                ),
                None,
                None,
                &state,
            )
        }
        Err(AuthError::InsufficientAuthentication) => {
            here.refuse(StatusCode::FORBIDDEN, SECOND_STEP_FIRST).await
        }
        Err(e) => failure_page(&state, e),
    }
}

/// What a change that needs a session of two factors says to one of one.
const SECOND_STEP_FIRST: &str = "Sign out and in again with your second step first.";

/// `POST /account/mfa/totp/confirm`: the app's first code; the recovery
/// codes, once.
async fn confirm(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Response {
    let (form, here) = match posted(&state, &headers, &body).await {
        Ok(posted) => posted,
        Err(res) => return res,
    };
    let Some(id) = form_id(form.factor_id.as_deref()) else {
        return refused_page(&state, StatusCode::BAD_REQUEST, "The form is malformed.");
    };
    let code = form.code.unwrap_or_default();
    match state
        .services
        .mfa
        .confirm_totp(&client, &here.who, id, code.trim())
        .await
    {
        Ok(codes) => html_page(
            StatusCode::OK,
            views::recovery_codes(&codes),
            None,
            None,
            &state,
        ),
        Err(AuthError::Invalid { .. }) => {
            let csrf = form.csrf.unwrap_or_default();
            let id = id.to_string();
            let fields = [("csrf", csrf.as_str()), ("factor_id", id.as_str())];
            html_page(
                StatusCode::UNPROCESSABLE_ENTITY,
                views::enrol(
                    "",
                    "",
                    &fields,
                    Some("That code is not right. Try the next one."),
                ),
                None,
                None,
                &state,
            )
        }
        Err(AuthError::NotFound) => refused_page(
            &state,
            StatusCode::BAD_REQUEST,
            "This setup expired. Start again from your account page.",
        ),
        Err(e) => failure_page(&state, e),
    }
}

/// `POST /account/mfa/remove`: takes a second factor (an app, a passkey)
/// off the account; only from a session of two factors.
async fn remove_factor(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Response {
    let (form, here) = match posted(&state, &headers, &body).await {
        Ok(posted) => posted,
        Err(res) => return res,
    };
    let Some(id) = form_id(form.factor_id.as_deref()) else {
        return refused_page(&state, StatusCode::BAD_REQUEST, "The form is malformed.");
    };
    match state.services.mfa.remove(&client, &here.who, id).await {
        Ok(()) => see_account("removed"),
        // Not this user's, or gone already (another tab): say so.
        Err(AuthError::NotFound) => {
            here.refuse(
                StatusCode::NOT_FOUND,
                "That second step is not on this account (it may be removed already).",
            )
            .await
        }
        Err(AuthError::InsufficientAuthentication) => {
            here.refuse(StatusCode::FORBIDDEN, SECOND_STEP_FIRST).await
        }
        Err(e) => failure_page(&state, e),
    }
}

const TOO_MANY_PASSKEYS: &str = "This account holds as many passkeys as it may.";
const UNFIT_NAME: &str = "A passkey's name is at most 64 characters, without control or \
                          invisible characters (some emoji hold invisible joiners).";
const DEFAULT_PASSKEY_NAME: &str = "Passkey";

/// `POST /account/passkeys`: starts a registration; the page that follows
/// hands the options to the authenticator.
async fn start_passkey(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Response {
    let (form, here) = match posted(&state, &headers, &body).await {
        Ok(posted) => posted,
        Err(res) => return res,
    };
    // The name is checked before the authenticator makes anything: a
    // refusal after it would leave a passkey on the device and none here.
    let name = match factor_name(form.name.as_deref()) {
        Ok(name) => name.unwrap_or(DEFAULT_PASSKEY_NAME).to_owned(),
        Err(_) => {
            return here
                .refuse(StatusCode::UNPROCESSABLE_ENTITY, UNFIT_NAME)
                .await;
        }
    };
    match state
        .services
        .passkeys
        .start_registration(&client, &here.who)
        .await
    {
        Ok(started) => {
            let csrf = form.csrf.unwrap_or_default();
            let id = started.challenge_id.to_string();
            let fields = [
                ("csrf", csrf.as_str()),
                ("challenge_id", id.as_str()),
                ("name", name.as_str()),
            ];
            html_page(
                StatusCode::OK,
                views::new_passkey(&name, &started.options.to_string(), &fields),
                None,
                None,
                &state,
            )
        }
        Err(AuthError::InsufficientAuthentication) => {
            here.refuse(StatusCode::FORBIDDEN, SECOND_STEP_FIRST).await
        }
        Err(AuthError::Invalid { .. }) => {
            here.refuse(StatusCode::UNPROCESSABLE_ENTITY, TOO_MANY_PASSKEYS)
                .await
        }
        Err(e) => failure_page(&state, e),
    }
}

/// `POST /account/passkeys/finish`: the authenticator's answer (posted by
/// the page's script); the recovery codes if it is the first factor.
async fn finish_passkey(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Response {
    let (form, here) = match posted(&state, &headers, &body).await {
        Ok(posted) => posted,
        Err(res) => return res,
    };
    let answer = passkey_answer::<RegisterPublicKeyCredential>(
        form.challenge_id.as_deref(),
        form.credential.as_deref(),
    );
    let Some(Some((challenge_id, credential))) = answer else {
        return here
            .refuse(
                StatusCode::BAD_REQUEST,
                "The passkey's answer did not arrive. Add it again.",
            )
            .await;
    };
    let name = match factor_name(form.name.as_deref()) {
        Ok(name) => name,
        Err(_) => {
            return here
                .refuse(StatusCode::UNPROCESSABLE_ENTITY, UNFIT_NAME)
                .await;
        }
    };
    match state
        .services
        .passkeys
        .finish_registration(&client, &here.who, challenge_id, &credential, name)
        .await
    {
        Ok(registered) => match registered.recovery_codes {
            Some(codes) => html_page(
                StatusCode::CREATED,
                views::recovery_codes(&codes),
                None,
                None,
                &state,
            ),
            None => see_account("passkey"),
        },
        Err(AuthError::InsufficientAuthentication) => {
            here.refuse(StatusCode::FORBIDDEN, SECOND_STEP_FIRST).await
        }
        Err(AuthError::Conflict(_)) => {
            here.refuse(StatusCode::CONFLICT, "This passkey is registered already.")
                .await
        }
        Err(AuthError::Invalid { field, .. }) => {
            let message = if field == "passkeys" {
                TOO_MANY_PASSKEYS
            } else {
                "The passkey was not added: it took too long or did not answer as it should. \
                 Add it again."
            };
            here.refuse(StatusCode::UNPROCESSABLE_ENTITY, message).await
        }
        Err(e) => failure_page(&state, e),
    }
}
