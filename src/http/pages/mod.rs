//! The hosted pages of the OAuth provider: `GET /oauth/authorize` and the
//! login, second-step and consent forms it leads through. Server-rendered
//! HTML, a strict content security policy, a CSRF token on every form, and
//! the browser's session in an `HttpOnly`, `SameSite=Lax` cookie. The only
//! script is the passkeys' (`/oauth/passkeys.js`), on the pages that offer
//! one. These are pages, not API: they are outside the API document.

mod account;
mod links;
mod views;

use axum::{
    Router,
    body::Bytes,
    extract::{FromRequest, RawQuery, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;

use super::{
    AppState,
    cookies::origin_of,
    error::AppError,
    extract::{ClientInfo, body_rejection},
};
use crate::{
    auth::{
        AuthError,
        mfa::Proof,
        oauth::{AuthorizeParams, AuthorizeRefusal, LogoutParams, ValidAuthorize, ValidLogout},
        sessions::TokenPair,
    },
    limits::Throttle,
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/oauth/authorize", get(authorize))
        .route("/oauth/login", post(login))
        .route("/oauth/passkey", post(passkey_login))
        .route("/oauth/mfa", post(mfa))
        .route("/oauth/consent", post(consent))
        .route("/oauth/logout", get(logout_get).post(logout_post))
        .route("/oauth/pages.css", get(stylesheet))
        .route(views::SCRIPT_PATH, get(script))
        .merge(links::router())
        .merge(account::router())
}

/// The browser's session: the refresh token of a session the pages opened.
pub(super) const SESSION_COOKIE: &str = "authgate_sso";
/// The double-submit CSRF token of the forms.
const FORM_COOKIE: &str = "authgate_form";
/// Where a login goes back to: an authorization request, nothing else.
const RETURN_PREFIX: &str = "/oauth/authorize?";

/// A cookie's value from the request. Two cookies of one name (one
/// planted from a sibling domain or for a narrower path) are ambiguous, so
/// neither counts.
fn cookie<'a>(state: &AppState, headers: &'a HeaderMap, name: &'static str) -> Option<&'a str> {
    let name = cookie_name(state, name);
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(key, _)| *key == name)
        .map(|(_, value)| value);
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// The cookies' names: with `Secure`, the `__Host-` prefix, so that no
/// sibling domain and no plain-HTTP answer can set them (RFC 6265bis).
fn cookie_name(state: &AppState, name: &'static str) -> &'static str {
    match (state.cookies.secure, name) {
        (true, SESSION_COOKIE) => "__Host-authgate_sso",
        (true, FORM_COOKIE) => "__Host-authgate_form",
        _ => name,
    }
}

fn set_cookie(
    res: &mut Response,
    state: &AppState,
    name: &'static str,
    value: &str,
    max_age: Option<u64>,
) {
    let name = cookie_name(state, name);
    let secure = if state.cookies.secure { "; Secure" } else { "" };
    let age = max_age
        .map(|s| format!("; Max-Age={s}"))
        .unwrap_or_default();
    // Path=/: the account page at /account reads them too.
    let cookie = format!("{name}={value}{age}; Path=/; HttpOnly; SameSite=Lax{secure}");
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        res.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// The form token of this browser, and whether it must be set.
fn form_token(state: &AppState, headers: &HeaderMap) -> (String, bool) {
    match cookie(state, headers, FORM_COOKIE).filter(|t| t.len() == 43) {
        Some(token) => (token.to_owned(), false),
        None => {
            let mut bytes = [0u8; 32];
            rand::fill(&mut bytes);
            (URL_SAFE_NO_PAD.encode(bytes), true)
        }
    }
}

/// Whether a form post comes from these pages: the token in the form is
/// the one in the cookie (which another site can neither read nor set),
/// and the `Origin`, when the browser sends one, is this service's.
fn same_site_form(state: &AppState, headers: &HeaderMap, csrf: Option<&str>) -> bool {
    let Some(expected) = cookie(state, headers, FORM_COOKIE) else {
        return false;
    };
    // Why the length: an empty or short token (planted with its cookie)
    // is none this service made.
    if expected.len() != 43 {
        return false;
    }
    let token_ok = csrf.is_some_and(|given| {
        crate::crypto::same_digest(
            &sha2::Digest::finalize(sha2::Digest::chain_update(sha2::Sha256::default(), given))
                .into(),
            &sha2::Digest::finalize(sha2::Digest::chain_update(
                sha2::Sha256::default(),
                expected,
            ))
            .into(),
        )
    });
    let origin_ok = match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        None => true,
        Some(origin) => origin_of(&state.public_url).is_some_and(|public| {
            public == origin || crate::config::same_loopback(&public, origin)
        }),
    };
    token_ok && origin_ok
}

/// A page with the policy it needs: nothing but this origin's stylesheet,
/// forms posting here, and (after a form) the redirect to `redirect_uri`.
fn html_page(
    status: StatusCode,
    page: views::Page,
    redirect_uri: Option<&str>,
    form: Option<(&str, bool)>,
    state: &AppState,
) -> Response {
    // Why the redirect URI's origin in form-action: browsers hold the
    // redirects that follow a form post to it too.
    let target = redirect_uri
        .and_then(|u| url::Url::parse(u).ok())
        .map(|u| match u.origin() {
            url::Origin::Tuple(..) => u.origin().ascii_serialization(),
            url::Origin::Opaque(_) => format!("{}:", u.scheme()),
        })
        .map(|o| format!(" {o}"))
        .unwrap_or_default();
    // The logo may live elsewhere: its origin, and no other, may serve images.
    let logo = state.pages_logo.as_deref();
    let logo_origin = logo
        .and_then(|u| url::Url::parse(u).ok())
        .map(|u| format!(" {}", u.origin().ascii_serialization()))
        .unwrap_or_default();
    // The passkey script, where a page has it, and the calls it makes to
    // this origin. Why a nonce and not 'self': no other script of this
    // origin (Swagger UI's, say) may run on a page that holds a session's
    // forms, and nothing inline.
    let nonce = page.has_script().then(|| {
        let mut bytes = [0u8; 16];
        rand::fill(&mut bytes);
        URL_SAFE_NO_PAD.encode(bytes)
    });
    let script = nonce
        .as_deref()
        .map(|n| format!("; script-src 'nonce-{n}'; connect-src 'self'"))
        .unwrap_or_default();
    let policy = format!(
        "default-src 'none'; style-src 'self'; img-src 'self'{logo_origin}; \
         form-action 'self'{target}; frame-ancestors 'none'; base-uri 'none'{script}"
    );
    let body = page.render(logo, nonce.as_deref()).into_string();
    let mut res = (status, Html(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&policy) {
        res.headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, value);
    }
    // Why not `no-referrer` as elsewhere: under it a browser sends
    // `Origin: null` with the pages' own forms, and the origin check could
    // not tell them from another site's. Other origins still get nothing.
    res.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if let Some((token, true)) = form {
        set_cookie(&mut res, state, FORM_COOKIE, token, None);
    }
    res
}

fn refused_page(state: &AppState, status: StatusCode, message: &str) -> Response {
    html_page(status, views::refused(message), None, None, state)
}

/// A page form's body. One that cannot be read (past the size limit,
/// stalled, cut off) is answered with a page that says so, as every other
/// refusal here is, not the framework's plain text.
struct FormBody(Bytes);

impl FromRequest<AppState> for FormBody {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        Bytes::from_request(req, state)
            .await
            .map(Self)
            .map_err(|rejection| {
                let (status, message) = match body_rejection(rejection) {
                    AppError::PayloadTooLarge => (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "The form is too large to be read.",
                    ),
                    AppError::RequestTimeout => (
                        StatusCode::REQUEST_TIMEOUT,
                        "The form did not arrive in time. Try again.",
                    ),
                    _ => (StatusCode::BAD_REQUEST, "The form could not be read."),
                };
                refused_page(state, status, message)
            })
    }
}

/// `redirect_uri` with the answer's parameters, and `iss` (RFC 9207).
fn back_to_client(state: &AppState, redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return refused_page(
            state,
            StatusCode::BAD_REQUEST,
            "The redirect address is invalid.",
        );
    };
    {
        let mut query = url.query_pairs_mut();
        for (key, value) in params {
            query.append_pair(key, value);
        }
        query.append_pair("iss", state.services.tokens.issuer());
    }
    let mut res = StatusCode::FOUND.into_response();
    if let Ok(location) = HeaderValue::from_str(url.as_str()) {
        res.headers_mut().insert(header::LOCATION, location);
    }
    res
}

fn refusal(state: &AppState, refusal: AuthorizeRefusal) -> Response {
    match refusal {
        AuthorizeRefusal::Shown(message) => refused_page(state, StatusCode::BAD_REQUEST, &message),
        AuthorizeRefusal::Redirected {
            redirect_uri,
            error,
            description,
            state: client_state,
        } => {
            let mut params = vec![
                ("error", error),
                ("error_description", description.as_str()),
            ];
            if let Some(s) = client_state.as_deref() {
                params.push(("state", s));
            }
            back_to_client(state, &redirect_uri, &params)
        }
    }
}

/// What a throttled attempt is told: how long to wait, in whole seconds.
fn wait_words(throttle: Throttle) -> String {
    format!(
        "Too many attempts. Try again in {} seconds.",
        throttle.wait.as_secs().max(1)
    )
}

/// What a service failure shows: a page, never a stack of JSON.
fn failure_page(state: &AppState, err: AuthError) -> Response {
    match err {
        AuthError::Throttled(t) => {
            refused_page(state, StatusCode::TOO_MANY_REQUESTS, &wait_words(t))
        }
        AuthError::Unavailable(_) | AuthError::Overloaded(_) => refused_page(
            state,
            StatusCode::SERVICE_UNAVAILABLE,
            "The service is busy. Try again in a moment.",
        ),
        other => {
            tracing::error!(error = %other, "page request failed");
            refused_page(
                state,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong.",
            )
        }
    }
}

/// The authorization request's parameters as the hidden fields of a form.
fn request_fields(params: &AuthorizeParams) -> Vec<(&'static str, String)> {
    [
        ("response_type", &params.response_type),
        ("client_id", &params.client_id),
        ("redirect_uri", &params.redirect_uri),
        ("scope", &params.scope),
        ("state", &params.state),
        ("nonce", &params.nonce),
        ("code_challenge", &params.code_challenge),
        ("code_challenge_method", &params.code_challenge_method),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
    .collect()
}

fn as_hidden<'a>(fields: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    fields.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Where the flow stands for a browser: the login page, the consent page,
/// or the code on its way to the client.
async fn continue_flow(
    state: &AppState,
    headers: &HeaderMap,
    params: &AuthorizeParams,
    request: ValidAuthorize,
    session_token: Option<&str>,
) -> Response {
    let oauth = &state.services.oauth;
    let (form, new_form) = form_token(state, headers);
    let session = match session_token {
        Some(token) => match oauth.browser_session(token).await {
            Ok(found) => found,
            Err(e) => return failure_page(state, e),
        },
        None => None,
    };
    let Some(session) = session else {
        let query = serde_urlencoded::to_string(params).unwrap_or_default();
        let return_to = format!("{RETURN_PREFIX}{query}");
        let fields = [("csrf", form.as_str()), ("return_to", return_to.as_str())];
        return html_page(
            StatusCode::OK,
            views::login(&request.client.name, &fields, None, ""),
            Some(&request.redirect_uri),
            Some((&form, new_form)),
            state,
        );
    };
    match oauth.needs_consent(session.user.id, &request).await {
        Err(e) => return failure_page(state, e),
        Ok(true) => {
            let mut fields = request_fields(params);
            fields.push(("csrf", form.clone()));
            let who = session
                .user
                .username
                .clone()
                .or_else(|| session.user.email.clone())
                .unwrap_or_default();
            return html_page(
                StatusCode::OK,
                views::consent(
                    &request.client.name,
                    &who,
                    &request.scope.names(),
                    &as_hidden(&fields),
                ),
                Some(&request.redirect_uri),
                Some((&form, new_form)),
                state,
            );
        }
        Ok(false) => {}
    }
    issue(state, &session, &request).await
}

async fn issue(
    state: &AppState,
    session: &crate::auth::oauth::BrowserSession,
    request: &ValidAuthorize,
) -> Response {
    match state.services.oauth.issue_code(session, request).await {
        Ok(code) => {
            let mut params = vec![("code", code.as_str())];
            if let Some(s) = request.state.as_deref() {
                params.push(("state", s));
            }
            back_to_client(state, &request.redirect_uri, &params)
        }
        Err(AuthError::InvalidRefreshToken) => refused_page(
            state,
            StatusCode::BAD_REQUEST,
            "Your session ended. Go back to the application and sign in again.",
        ),
        Err(e) => failure_page(state, e),
    }
}

/// `GET /oauth/authorize`: the authorization endpoint (RFC 6749 §3.1).
async fn authorize(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let params: AuthorizeParams = match serde_urlencoded::from_str(query.as_deref().unwrap_or("")) {
        Ok(params) => params,
        Err(_) => {
            return refused_page(&state, StatusCode::BAD_REQUEST, "The request is malformed.");
        }
    };
    match state.services.oauth.check_authorize(&params).await {
        Err(e) => failure_page(&state, e),
        Ok(Err(refused)) => refusal(&state, refused),
        Ok(Ok(request)) => {
            continue_flow(
                &state,
                &headers,
                &params,
                request,
                cookie(&state, &headers, SESSION_COOKIE),
            )
            .await
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct LoginForm {
    login: Option<String>,
    password: Option<String>,
    code: Option<String>,
    mfa_token: Option<String>,
    csrf: Option<String>,
    return_to: Option<String>,
    /// A passkey's ceremony and the authenticator's answer (JSON).
    challenge_id: Option<String>,
    credential: Option<String>,
    /// On the second step's forms: the user has a passkey to offer.
    passkey: Option<String>,
}

impl LoginForm {
    /// The hidden fields of the login forms that follow this one.
    fn carried(&self) -> [(&str, &str); 2] {
        [
            ("csrf", self.csrf.as_deref().unwrap_or_default()),
            ("return_to", self.return_to.as_deref().unwrap_or_default()),
        ]
    }

    /// A passkey's ceremony and answer, when the form carries one.
    fn passkey_answer<T: serde::de::DeserializeOwned>(&self) -> Option<Option<(uuid::Uuid, T)>> {
        passkey_answer(self.challenge_id.as_deref(), self.credential.as_deref())
    }
}

/// The ceremony's id and the authenticator's answer (JSON) a form carries:
/// `None` when it carries no answer, `Some(None)` when they are malformed.
fn passkey_answer<T: serde::de::DeserializeOwned>(
    challenge_id: Option<&str>,
    credential: Option<&str>,
) -> Option<Option<(uuid::Uuid, T)>> {
    let credential = credential.filter(|c| !c.is_empty())?;
    let id = challenge_id.and_then(|id| uuid::Uuid::parse_str(id).ok());
    Some(id.zip(serde_json::from_str(credential).ok()))
}

/// Where a login form goes back to: an authorization request (checked
/// again), or the account page.
enum Return {
    Authorize(Box<ValidAuthorize>),
    Account,
}

impl Return {
    /// Whom the user signs in to, as the login page says.
    fn name(&self) -> &str {
        match self {
            Return::Authorize(request) => &request.client.name,
            Return::Account => "your account",
        }
    }

    fn redirect_uri(&self) -> Option<&str> {
        match self {
            Return::Authorize(request) => Some(&request.redirect_uri),
            Return::Account => None,
        }
    }
}

async fn returning(state: &AppState, return_to: Option<&str>) -> Result<Return, Response> {
    if return_to == Some(account::PATH) {
        return Ok(Return::Account);
    }
    let Some(query) = return_to.and_then(|r| r.strip_prefix(RETURN_PREFIX)) else {
        return Err(refused_page(
            state,
            StatusCode::BAD_REQUEST,
            "The request is malformed.",
        ));
    };
    let params: AuthorizeParams = serde_urlencoded::from_str(query)
        .map_err(|_| refused_page(state, StatusCode::BAD_REQUEST, "The request is malformed."))?;
    match state.services.oauth.check_authorize(&params).await {
        Err(e) => Err(failure_page(state, e)),
        Ok(Err(refused)) => Err(refusal(state, refused)),
        Ok(Ok(request)) => Ok(Return::Authorize(Box::new(request))),
    }
}

fn parse_form<T: serde::de::DeserializeOwned>(body: &Bytes) -> Option<T> {
    serde_urlencoded::from_bytes(body).ok()
}

/// A form of these pages posted from this site: parsed, its CSRF token
/// checked ([`same_site_form`]); else the page that says why.
fn own_form<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, Box<Response>> {
    #[derive(Deserialize)]
    struct Token {
        csrf: Option<String>,
    }
    let (Some(form), Some(Token { csrf })) = (parse_form::<T>(body), parse_form::<Token>(body))
    else {
        return Err(Box::new(refused_page(
            state,
            StatusCode::BAD_REQUEST,
            "The form is malformed.",
        )));
    };
    if !same_site_form(state, headers, csrf.as_deref()) {
        return Err(Box::new(refused_page(
            state,
            StatusCode::FORBIDDEN,
            "The form expired. Go back and try again.",
        )));
    }
    Ok(form)
}

/// A session opened by a form: its cookie set, back to the request.
fn signed_in(state: &AppState, pair: &TokenPair, return_to: &str) -> Response {
    // The query written anew, percent-encoded: what was posted may hold
    // raw bytes no header should carry.
    let location = match return_to.split_once('?') {
        Some((path, query)) => {
            let pairs = url::form_urlencoded::parse(query.as_bytes());
            let query = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish();
            format!("{path}?{query}")
        }
        None => return_to.to_owned(),
    };
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        res.headers_mut().insert(header::LOCATION, location);
    }
    set_cookie(
        &mut res,
        state,
        SESSION_COOKIE,
        &pair.refresh_token,
        Some(pair.refresh_expires_in),
    );
    res
}

/// A login form of these pages ([`own_form`]) and where it goes back to.
async fn login_form(
    state: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(LoginForm, Return), Response> {
    let form: LoginForm = own_form(state, headers, body).map_err(|res| *res)?;
    let target = returning(state, form.return_to.as_deref()).await?;
    Ok((form, target))
}

/// `POST /oauth/login`: the login form.
async fn login(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Response {
    let (form, target) = match login_form(&state, &headers, &body).await {
        Ok(posted) => posted,
        Err(res) => return res,
    };
    let typed = form.login.clone().unwrap_or_default();
    let result = state
        .services
        .login
        .with_password(&client, &typed, form.password.as_deref().unwrap_or(""))
        .await;
    match result {
        Ok(pair) => signed_in(&state, &pair, form.return_to.as_deref().unwrap_or_default()),
        Err(AuthError::MfaRequired(challenge)) => {
            let passkey = challenge.factor_types.contains(&"passkey");
            second_step(&state, &form, &target, &challenge.mfa_token, passkey, None)
        }
        Err(AuthError::InvalidCredentials) => login_again(
            &state,
            &form,
            &target,
            StatusCode::UNAUTHORIZED,
            "Wrong username, email or password.",
        ),
        Err(e) => login_refused(&state, &form, &target, e),
    }
}

/// The login page again, saying why.
fn login_again(
    state: &AppState,
    form: &LoginForm,
    target: &Return,
    status: StatusCode,
    message: &str,
) -> Response {
    let typed = form.login.as_deref().unwrap_or_default();
    html_page(
        status,
        views::login(target.name(), &form.carried(), Some(message), typed),
        target.redirect_uri(),
        None,
        state,
    )
}

/// What the login page says of a refusal every way in shares.
fn login_refused(state: &AppState, form: &LoginForm, target: &Return, err: AuthError) -> Response {
    match err {
        AuthError::EmailNotVerified => login_again(
            state,
            form,
            target,
            StatusCode::FORBIDDEN,
            "Verify your email address first: follow the link we sent you.",
        ),
        AuthError::Throttled(t) => login_again(
            state,
            form,
            target,
            StatusCode::TOO_MANY_REQUESTS,
            &wait_words(t),
        ),
        e => failure_page(state, e),
    }
}

/// The second step's page, for `mfa_token`; with the passkey button when
/// the user has one.
fn second_step(
    state: &AppState,
    form: &LoginForm,
    target: &Return,
    mfa_token: &str,
    passkey: bool,
    error: Option<(StatusCode, &str)>,
) -> Response {
    let [csrf, return_to] = form.carried();
    let mut fields = vec![csrf, return_to, ("mfa_token", mfa_token)];
    if passkey {
        fields.push(("passkey", "1"));
    }
    let (status, message) = error.map_or((StatusCode::OK, None), |(s, m)| (s, Some(m)));
    html_page(
        status,
        views::mfa(&fields, message, passkey),
        target.redirect_uri(),
        None,
        state,
    )
}

/// A passkey's answer to a ceremony unknown, used or expired.
const SPENT_CEREMONY: &str = "That passkey answer was used already or came too late. Try again.";

/// `POST /oauth/passkey`: the login page's passkey, its answer posted by
/// the page's script.
async fn passkey_login(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Response {
    let (form, target) = match login_form(&state, &headers, &body).await {
        Ok(posted) => posted,
        Err(res) => return res,
    };
    let Some(Some((challenge_id, credential))) = form.passkey_answer() else {
        return login_again(
            &state,
            &form,
            &target,
            StatusCode::BAD_REQUEST,
            "The passkey's answer did not arrive. Try again.",
        );
    };
    let result = state
        .services
        .passkeys
        .finish_login(&client, challenge_id, &credential)
        .await;
    match result {
        Ok(pair) => signed_in(&state, &pair, form.return_to.as_deref().unwrap_or_default()),
        // One answer for every passkey that proves no account, as the API's.
        Err(AuthError::InvalidCredentials) => login_again(
            &state,
            &form,
            &target,
            StatusCode::UNAUTHORIZED,
            "That passkey did not sign you in.",
        ),
        Err(AuthError::Invalid { .. }) => login_again(
            &state,
            &form,
            &target,
            StatusCode::BAD_REQUEST,
            SPENT_CEREMONY,
        ),
        Err(e) => login_refused(&state, &form, &target, e),
    }
}

/// `POST /oauth/mfa`: the second step's form.
async fn mfa(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Response {
    let (form, target) = match login_form(&state, &headers, &body).await {
        Ok(posted) => posted,
        Err(res) => return res,
    };
    let mfa_token = form.mfa_token.clone().unwrap_or_default();
    let passkey = form.passkey.is_some();
    let again = |status: StatusCode, message: &str| {
        second_step(
            &state,
            &form,
            &target,
            &mfa_token,
            passkey,
            Some((status, message)),
        )
    };
    let proof = match form.passkey_answer() {
        Some(Some((challenge_id, credential))) => Proof::Passkey {
            challenge_id,
            credential: Box::new(credential),
        },
        Some(None) => {
            return again(
                StatusCode::BAD_REQUEST,
                "The passkey's answer did not arrive. Try again.",
            );
        }
        None => {
            let code: String = form
                .code
                .as_deref()
                .unwrap_or_default()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            // Six digits are an app's code; anything else is tried as a
            // recovery code.
            if code.bytes().all(|b| b.is_ascii_digit()) {
                Proof::Code(code)
            } else {
                Proof::RecoveryCode(code)
            }
        }
    };
    let wrong = match proof {
        Proof::Passkey { .. } => "That passkey is not right. Try again.",
        _ => "That code is not right. Try again.",
    };
    let result = state
        .services
        .mfa
        .verify_login(&client, &mfa_token, &proof)
        .await;
    match result {
        Ok(pair) => signed_in(&state, &pair, form.return_to.as_deref().unwrap_or_default()),
        Err(AuthError::InvalidCode) => again(StatusCode::UNAUTHORIZED, wrong),
        Err(AuthError::Invalid { .. }) => again(StatusCode::BAD_REQUEST, SPENT_CEREMONY),
        Err(AuthError::InvalidMfaToken) => login_again(
            &state,
            &form,
            &target,
            StatusCode::UNAUTHORIZED,
            "The sign-in took too long or had too many tries. Sign in again.",
        ),
        Err(e) => failure_page(&state, e),
    }
}

#[derive(Debug, Default, Deserialize)]
struct ConsentForm {
    #[serde(flatten)]
    params: AuthorizeParams,
    decision: Option<String>,
}

/// `POST /oauth/consent`: Allow or Deny.
async fn consent(
    State(state): State<AppState>,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Response {
    let form: ConsentForm = match own_form(&state, &headers, &body) {
        Ok(form) => form,
        Err(res) => return *res,
    };
    let request = match state.services.oauth.check_authorize(&form.params).await {
        Err(e) => return failure_page(&state, e),
        Ok(Err(refused)) => return refusal(&state, refused),
        Ok(Ok(request)) => request,
    };
    let session = match cookie(&state, &headers, SESSION_COOKIE) {
        Some(token) => match state.services.oauth.browser_session(token).await {
            Ok(found) => found,
            Err(e) => return failure_page(&state, e),
        },
        None => None,
    };
    let Some(session) = session else {
        // The session ended while the page was open: sign in again.
        return continue_flow(&state, &headers, &form.params, request, None).await;
    };
    match form.decision.as_deref() {
        Some("allow") => {
            if let Err(e) = state
                .services
                .oauth
                .remember_consent(session.user.id, &request)
                .await
            {
                return failure_page(&state, e);
            }
            issue(&state, &session, &request).await
        }
        Some("deny") => {
            let mut params = vec![
                ("error", "access_denied"),
                ("error_description", "The user denied the request."),
            ];
            if let Some(s) = request.state.as_deref() {
                params.push(("state", s));
            }
            back_to_client(&state, &request.redirect_uri, &params)
        }
        _ => refused_page(&state, StatusCode::BAD_REQUEST, "The form is malformed."),
    }
}

/// Ends the browser's session (and the hint's), clears its cookie, and
/// goes back to the client if it asked, else says so.
async fn sign_out(
    state: &AppState,
    client: &crate::auth::Client,
    headers: &HeaderMap,
    request: &ValidLogout,
) -> Response {
    let browser = cookie(state, headers, SESSION_COOKIE);
    if let Err(e) = state.services.oauth.logout(client, browser, request).await {
        return failure_page(state, e);
    }
    let mut res = match &request.redirect {
        Some(uri) => {
            let Ok(mut url) = url::Url::parse(uri) else {
                return refused_page(
                    state,
                    StatusCode::BAD_REQUEST,
                    "The redirect address is invalid.",
                );
            };
            if let Some(s) = request.state.as_deref() {
                url.query_pairs_mut().append_pair("state", s);
            }
            let mut res = StatusCode::FOUND.into_response();
            if let Ok(location) = HeaderValue::from_str(url.as_str()) {
                res.headers_mut().insert(header::LOCATION, location);
            }
            res
        }
        None => html_page(StatusCode::OK, views::signed_out(), None, None, state),
    };
    set_cookie(&mut res, state, SESSION_COOKIE, "", Some(0));
    res
}

/// `GET /oauth/logout` (OpenID Connect RP-Initiated Logout 1.0): with an
/// `id_token_hint` this service issued, signs out at once; without one,
/// asks first, so that a link on another site cannot sign anyone out.
async fn logout_get(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Ok(params) = serde_urlencoded::from_str::<LogoutParams>(query.as_deref().unwrap_or(""))
    else {
        return refused_page(&state, StatusCode::BAD_REQUEST, "The request is malformed.");
    };
    let request = match state.services.oauth.check_logout(&params).await {
        Err(e) => return failure_page(&state, e),
        Ok(Err(why)) => return refused_page(&state, StatusCode::BAD_REQUEST, &why),
        Ok(Ok(request)) => request,
    };
    if request.hint.is_some() {
        return sign_out(&state, &client, &headers, &request).await;
    }
    let (form, new_form) = form_token(&state, &headers);
    let mut fields: Vec<(&str, String)> = vec![("csrf", form.clone())];
    for (name, value) in [
        ("client_id", &params.client_id),
        ("post_logout_redirect_uri", &params.post_logout_redirect_uri),
        ("state", &params.state),
    ] {
        if let Some(value) = value {
            fields.push((name, value.clone()));
        }
    }
    let hidden: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    html_page(
        StatusCode::OK,
        views::logout_confirm(request.client_name.as_deref(), &hidden),
        request.redirect.as_deref(),
        Some((&form, new_form)),
        &state,
    )
}

#[derive(Debug, Default, Deserialize)]
struct LogoutForm {
    #[serde(flatten)]
    params: LogoutParams,
}

/// `POST /oauth/logout`: the confirmation's form.
async fn logout_post(
    State(state): State<AppState>,
    ClientInfo(client): ClientInfo,
    headers: HeaderMap,
    FormBody(body): FormBody,
) -> Response {
    let form: LogoutForm = match own_form(&state, &headers, &body) {
        Ok(form) => form,
        Err(res) => return *res,
    };
    let request = match state.services.oauth.check_logout(&form.params).await {
        Err(e) => return failure_page(&state, e),
        Ok(Err(why)) => return refused_page(&state, StatusCode::BAD_REQUEST, &why),
        Ok(Ok(request)) => request,
    };
    sign_out(&state, &client, &headers, &request).await
}

/// A file of the pages, compiled in: cached an hour.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
        ],
        body,
    )
        .into_response()
}

/// The passkey script: served from here, where the pages' policy lets it
/// run by its nonce.
async fn script() -> Response {
    asset("text/javascript; charset=utf-8", views::SCRIPT)
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", views::STYLESHEET)
}

#[cfg(test)]
mod tests {
    use crate::config::same_loopback;

    #[test]
    fn one_loopback_server_by_two_names_is_one_origin() {
        assert!(same_loopback(
            "http://127.0.0.1:8010",
            "http://localhost:8010"
        ));
        assert!(same_loopback("http://localhost:8010", "http://[::1]:8010"));
    }

    #[test]
    fn another_port_scheme_or_host_is_another_origin() {
        assert!(!same_loopback(
            "http://127.0.0.1:8010",
            "http://localhost:8011"
        ));
        assert!(!same_loopback(
            "http://127.0.0.1:8010",
            "https://localhost:8010"
        ));
        assert!(!same_loopback(
            "http://127.0.0.1:8010",
            "http://evil.example:8010"
        ));
        assert!(!same_loopback(
            "https://login.example.com",
            "https://login.example.com.evil"
        ));
        assert!(!same_loopback("http://127.0.0.1:8010", "null"));
    }
}
