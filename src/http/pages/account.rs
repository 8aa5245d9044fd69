//! `/account`: the signed-in user's own page: profile, sessions (each with
//! "Sign out"), the password, and an authenticator app with a QR code.
//! Every change is a form with the CSRF token, under the browser's session.

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

use super::{
    SESSION_COOKIE, cookie, failure_page, form_token, html_page, own_form, refused_page, views,
};
use crate::{
    auth::{AuthError, sessions::Authenticated},
    domain::{Email, Password, Username},
    http::{AppState, extract::ClientInfo},
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
}

/// A form of this page, from this site, by a signed-in browser.
async fn posted(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(AccountForm, Authenticated), Response> {
    let form: AccountForm = own_form(state, headers, body).map_err(|res| *res)?;
    match caller(state, headers).await? {
        Some(who) => Ok((form, who)),
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
    body: Bytes,
) -> Response {
    let (form, who) = match posted(&state, &headers, &body).await {
        Ok(posted) => posted,
        Err(res) => return res,
    };
    let Some(id) = form_id(form.session_id.as_deref()) else {
        return refused_page(&state, StatusCode::BAD_REQUEST, "The form is malformed.");
    };
    match state.services.sessions.end(&who, &client, id).await {
        Ok(()) | Err(AuthError::NotFound) => see_account("session"),
        Err(e) => failure_page(&state, e),
    }
}

/// `POST /account/password`.
async fn change_password(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (form, who) = match posted(&state, &headers, &body).await {
        Ok(posted) => posted,
        Err(res) => return res,
    };
    let refuse = |message: &str| {
        let message = message.to_owned();
        let (state, headers, who) = (&state, &headers, &who);
        async move {
            render(
                state,
                headers,
                who,
                None,
                Some(&message),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
    };
    let new = form.new_password.unwrap_or_default();
    if form.repeat.as_deref() != Some(new.as_str()) {
        return refuse("The two new passwords differ.").await;
    }
    let user = &who.user.user;
    let username = user
        .username
        .as_deref()
        .and_then(|u| Username::parse(u).ok());
    let email = user.email.as_deref().and_then(|e| Email::parse(e).ok());
    let password = match Password::parse(&new, username.as_ref(), email.as_ref()) {
        Ok(p) => p,
        Err(e) => return refuse(&format!("The new password {e}.")).await,
    };
    let current = form.current_password.unwrap_or_default();
    match state
        .services
        .accounts
        .change_password(&who, &client, &current, password)
        .await
    {
        Ok(()) => see_account("password"),
        Err(AuthError::WrongPassword) => refuse("The current password is wrong.").await,
        Err(AuthError::InsufficientAuthentication) => {
            refuse("Sign out and in again with your second step first.").await
        }
        Err(AuthError::Throttled(t)) => {
            refuse(&format!(
                "Too many attempts. Try again in {} seconds.",
                t.wait.as_secs().max(1)
            ))
            .await
        }
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
async fn enrol(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let (form, who) = match posted(&state, &headers, &body).await {
        Ok(posted) => posted,
        Err(res) => return res,
    };
    match state.services.mfa.enroll_totp(&who, None).await {
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
            render(
                &state,
                &headers,
                &who,
                None,
                Some("Sign out and in again with your second step first."),
                StatusCode::FORBIDDEN,
            )
            .await
        }
        Err(e) => failure_page(&state, e),
    }
}

/// `POST /account/mfa/totp/confirm`: the app's first code; the recovery
/// codes, once.
async fn confirm(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (form, who) = match posted(&state, &headers, &body).await {
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
        .confirm_totp(&client, &who, id, code.trim())
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
        Err(AuthError::Throttled(t)) => refused_page(
            &state,
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "Too many attempts. Try again in {} seconds.",
                t.wait.as_secs().max(1)
            ),
        ),
        Err(e) => failure_page(&state, e),
    }
}
