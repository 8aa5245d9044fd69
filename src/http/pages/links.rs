//! The landing pages of the mailed links (`AUTHGATE_PUBLIC_URL` + the
//! link's path): email verification, password reset, email change. A page
//! shows what the link does; only its form spends the link's token.

use axum::{
    Router,
    body::Bytes,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::Response,
    routing::{get, post},
};
use serde::Deserialize;

use super::{FormBody, form_token, html_page, own_form, refused_page, views};
use crate::{
    auth::{AuthError, Client},
    http::{AppState, extract::ClientInfo},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/verify-email", get(verify_email_page))
        .route("/oauth/verify-email", post(verify_email))
        .route("/auth/password/reset", get(reset_page))
        .route("/oauth/password-reset", post(reset))
        .route("/auth/email/confirm", get(confirm_email_page))
        .route("/oauth/email-confirm", post(confirm_email))
}

#[derive(Debug, Default, Deserialize)]
struct LinkForm {
    token: Option<String>,
    csrf: Option<String>,
    new_password: Option<String>,
    repeat: Option<String>,
}

/// The link's `token`, from the page's query.
fn token_of(query: Option<&str>) -> Option<String> {
    serde_urlencoded::from_str::<LinkForm>(query.unwrap_or(""))
        .ok()?
        .token
        .filter(|t| !t.is_empty() && t.len() <= 128)
}

const INVALID: &str = "This link is invalid, expired or used. Ask for a new one.";

/// A link whose page has one button: it spends the link as it is.
#[derive(Clone, Copy)]
enum OneButton {
    VerifyEmail,
    ConfirmEmail,
}

impl OneButton {
    /// The page's title, text, form action and button.
    fn page(self) -> (&'static str, &'static str, &'static str, &'static str) {
        match self {
            OneButton::VerifyEmail => (
                "Verify your email address",
                "Confirm that this address is yours.",
                "/oauth/verify-email",
                "Verify my address",
            ),
            OneButton::ConfirmEmail => (
                "Confirm your new email address",
                "Your account's address changes to this one when you confirm.",
                "/oauth/email-confirm",
                "Confirm the new address",
            ),
        }
    }

    /// What the page says once the link is spent.
    fn done(self) -> (&'static str, &'static str) {
        match self {
            OneButton::VerifyEmail => (
                "Address verified",
                "Your email address is verified. You can close this window.",
            ),
            OneButton::ConfirmEmail => (
                "Address changed",
                "Your account now uses this email address.",
            ),
        }
    }

    async fn spend(self, state: &AppState, token: &str, client: &Client) -> Result<(), AuthError> {
        let flows = &state.services.flows;
        match self {
            OneButton::VerifyEmail => flows.verify_email(token, client).await.map(|_| ()),
            OneButton::ConfirmEmail => flows.confirm_email_change(token, client).await.map(|_| ()),
        }
    }
}

/// The link's landing page: its button posts the token.
fn landing(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
    link: OneButton,
) -> Response {
    let Some(token) = token_of(query) else {
        return refused_page(state, StatusCode::BAD_REQUEST, INVALID);
    };
    let (form, new_form) = form_token(state, headers);
    let fields = [("token", token.as_str()), ("csrf", form.as_str())];
    let (title, intro, action, button) = link.page();
    html_page(
        StatusCode::OK,
        views::link(title, intro, action, button, &fields),
        None,
        Some((&form, new_form)),
        state,
    )
}

/// The button's post: the link spent, or why not.
async fn spend(
    state: &AppState,
    client: &Client,
    headers: &HeaderMap,
    body: &Bytes,
    link: OneButton,
) -> Response {
    let form: LinkForm = match own_form(state, headers, body) {
        Ok(form) => form,
        Err(res) => return *res,
    };
    let result = link
        .spend(state, form.token.as_deref().unwrap_or_default(), client)
        .await;
    let (title, message) = link.done();
    outcome(state, result, title, message)
}

/// What a spent (or refused) link shows.
fn outcome(
    state: &AppState,
    result: Result<(), AuthError>,
    title: &str,
    message: &str,
) -> Response {
    match result {
        Ok(()) => html_page(
            StatusCode::OK,
            views::done(title, message),
            None,
            None,
            state,
        ),
        Err(AuthError::InvalidLink) => refused_page(state, StatusCode::BAD_REQUEST, INVALID),
        Err(AuthError::Conflict(_)) => refused_page(
            state,
            StatusCode::CONFLICT,
            "Another account has taken this address meanwhile.",
        ),
        Err(e) => super::failure_page(state, e),
    }
}

async fn verify_email_page(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    landing(&state, &headers, query.as_deref(), OneButton::VerifyEmail)
}

async fn verify_email(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Response {
    spend(&state, &client, &headers, &body, OneButton::VerifyEmail).await
}

async fn confirm_email_page(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    landing(&state, &headers, query.as_deref(), OneButton::ConfirmEmail)
}

async fn confirm_email(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Response {
    spend(&state, &client, &headers, &body, OneButton::ConfirmEmail).await
}

async fn reset_page(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(token) = token_of(query.as_deref()) else {
        return refused_page(&state, StatusCode::BAD_REQUEST, INVALID);
    };
    let (form, new_form) = form_token(&state, &headers);
    let fields = [("token", token.as_str()), ("csrf", form.as_str())];
    html_page(
        StatusCode::OK,
        views::new_password(&fields, None),
        None,
        Some((&form, new_form)),
        &state,
    )
}

async fn reset(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Response {
    let form: LinkForm = match own_form(&state, &headers, &body) {
        Ok(form) => form,
        Err(res) => return *res,
    };
    let token = form.token.clone().unwrap_or_default();
    let csrf = form.csrf.clone().unwrap_or_default();
    let again = |status: StatusCode, message: &str| {
        let fields = [("token", token.as_str()), ("csrf", csrf.as_str())];
        html_page(
            status,
            views::new_password(&fields, Some(message)),
            None,
            None,
            &state,
        )
    };
    let password = form.new_password.clone().unwrap_or_default();
    if form.repeat.as_deref() != Some(password.as_str()) {
        return again(
            StatusCode::UNPROCESSABLE_ENTITY,
            "The two passwords differ.",
        );
    }
    match state
        .services
        .flows
        .reset_password(&token, &password, &client)
        .await
    {
        Err(AuthError::Invalid { message, .. }) => again(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("The password {message}."),
        ),
        result => outcome(
            &state,
            result,
            "Password set",
            "Your new password is set, and every session of your account has ended. \
             Sign in again with the new password.",
        ),
    }
}
