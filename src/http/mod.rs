//! The HTTP API: one module per resource, each with its own `router()`.

mod admin;
mod audit;
mod auth;
mod client_ip;
mod clients;
pub mod cookies;
pub mod error;
pub mod extract;
mod grants;
mod health;
mod keys;
mod links;
mod mfa;
mod oauth;
mod openapi;
mod pages;
mod passkeys;
mod provider;
pub mod server;
mod users;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    extract::{DefaultBodyLimit, MatchedPath, Request},
    http::HeaderName,
};
use ipnet::IpNet;
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::{DefaultOnFailure, TraceLayer},
};
use tracing::Level;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

pub use auth::{OAuthError, TokenResponse};
pub use clients::ClientView;
pub use keys::KeyView;
pub use users::UserResponse;

use crate::auth::Services;
use error::AppError;

/// What every handler shares: the services, and whose `X-Forwarded-For` to
/// believe. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub services: Services,
    pub trusted_proxies: Arc<[IpNet]>,
    /// Where clients reach the service (`AUTHGATE_PUBLIC_URL`), without a
    /// trailing slash: the base of the URLs in discovery documents.
    pub public_url: Arc<str>,
    /// How browser session cookies are set and checked.
    pub cookies: Arc<cookies::CookiePolicy>,
    /// Origins allowed by CORS; none: no CORS layer.
    pub cors_origins: Arc<[String]>,
    /// The logo on the hosted pages (`AUTHGATE_PAGES_LOGO_URL`).
    pub pages_logo: Option<Arc<str>>,
}

/// Request bodies larger than this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "authgate",
        description = include_str!("../../docs/api.md")
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "auth", description = "Accounts, logins and tokens"),
        (name = "users", description = "The current user"),
        (name = "admin", description = "User management (role `admin`)"),
        (name = "health", description = "Probes"),
        (name = "oauth", description = "The OAuth 2.1 / OpenID Connect provider, for registered clients"),
        (name = "keys", description = "Signing keys and discovery, for services that verify tokens"),
    )
)]
struct ApiDoc;

use openapi::SecuritySchemes;
pub use openapi::openapi;

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(auth::router())
        .merge(oauth::router())
        .merge(provider::router())
        .merge(links::router())
        .merge(mfa::router())
        .merge(passkeys::router())
        .merge(users::router())
        .merge(grants::router())
        .merge(admin::router())
        .merge(clients::router())
        .merge(audit::router())
        .merge(health::router())
        .merge(keys::router())
}

/// Each request's span carries the method, the matched route (not the raw
/// path) and the request id.
fn request_span(req: &Request) -> tracing::Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(req.uri().path(), MatchedPath::as_str);
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!(
        "request",
        method = %req.method(),
        route,
        request_id = id,
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    )
}

/// Completes the request's span with what came of it.
fn record_outcome(res: &axum::response::Response, latency: Duration, span: &tracing::Span) {
    span.record("status", res.status().as_u16());
    span.record("latency_ms", latency.as_secs_f64() * 1000.0);
}

/// Counts each request and its latency by route (the route's pattern, never
/// the raw path: ids would make a series per user), method and status.
async fn record_request(req: Request, next: axum::middleware::Next) -> axum::response::Response {
    if !crate::metrics::enabled() {
        return next.run(req).await;
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method: &'static str = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!(
        "authgate_http_requests_total",
        "route" => route.clone(),
        "method" => method,
        "status" => status
    )
    .increment(1);
    metrics::histogram!(
        "authgate_http_request_duration_seconds",
        "route" => route,
        "method" => method
    )
    .record(started.elapsed().as_secs_f64());
    res
}

/// Keeps a client's `X-Request-Id` only if it is one short printable token;
/// otherwise it is dropped and a fresh one generated, so that logs and
/// responses never echo attacker-chosen bytes or lengths.
async fn screen_request_id(mut req: Request) -> Request {
    let mut ids = req.headers().get_all(REQUEST_ID).iter();
    let acceptable = match (ids.next(), ids.next()) {
        (Some(id), None) => {
            (1..=MAX_REQUEST_ID).contains(&id.len())
                && id
                    .as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
        }
        (None, _) => true,
        (Some(_), Some(_)) => false,
    };
    if !acceptable {
        req.headers_mut().remove(REQUEST_ID);
    }
    req
}

/// The longest any request may take: beyond it, 503 with `Retry-After` as a
/// problem document. Waits for the database end sooner, at 5 s.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

async fn deadline(req: Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(REQUEST_DEADLINE, next.run(req)).await {
        Ok(res) => res,
        Err(_) => AppError::Unavailable(anyhow::anyhow!(
            "the request took longer than {REQUEST_DEADLINE:?}"
        ))
        .into_response(),
    }
}

/// A body announced larger than the limit is refused before any of it is
/// read: the client learns at once, and nothing waits for bytes that would
/// be thrown away.
async fn refuse_oversized(req: Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > BODY_LIMIT as u64) {
        return AppError::PayloadTooLarge.into_response();
    }
    next.run(req).await
}

/// Headers every answer carries (OWASP's REST and HTTP header guidance):
/// no content sniffing, no referrer leaking a link's token, no framing, and
/// nothing stored by caches unless the route said otherwise (the JWKS and
/// discovery documents are public and say so). API answers are data, never
/// a page: their policy allows nothing. `/docs` gets the least Swagger UI
/// needs: its own scripts and styles, and requests to this origin.
async fn security_headers(req: Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::http::{HeaderValue, header};
    let docs = req.uri().path().starts_with("/docs");
    let mut res = next.run(req).await;
    let headers = res.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers
        .entry(header::REFERRER_POLICY)
        .or_insert(HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    // A page sets its own policy; everything else gets the API's or the docs'.
    let policy = if docs { DOCS_POLICY } else { API_POLICY };
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(policy));
    res
}

const API_POLICY: &str =
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
const DOCS_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";

const REQUEST_ID: &str = "x-request-id";
const MAX_REQUEST_ID: usize = 64;

/// The whole application: API routes, docs, and the layers around them.
pub fn router(state: AppState) -> Router {
    let (api, mut spec) = api_router().split_for_parts();
    openapi::complete(&mut spec);
    let request_id = HeaderName::from_static(REQUEST_ID);
    let cors = cors_layer(&state.cors_origins);
    let router = api
        .with_state(state.clone())
        .merge(pages::router().with_state(state))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", spec))
        .fallback(|| async { AppError::NotFound })
        .method_not_allowed_fallback(|| async { AppError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(record_request))
        .layer(axum::middleware::from_fn(refuse_oversized))
        .layer(axum::middleware::from_fn(deadline))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(
                    |res: &axum::response::Response, latency: Duration, span: &tracing::Span| {
                        record_outcome(res, latency, span);
                    },
                )
                // Internal errors log themselves with their cause; a deliberate
                // 503 under overload is not worth an error line per request.
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .layer(axum::middleware::map_request(screen_request_id));
    let router = match cors {
        Some(cors) => router.layer(cors),
        None => router,
    };
    // Outermost: CORS preflight answers carry the headers too.
    router.layer(axum::middleware::from_fn(security_headers))
}

/// CORS for the listed origins only, with credentials (cookie sessions);
/// none without a list: browsers then keep other sites' pages out.
fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    use axum::http::{HeaderValue, Method, header};
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static(cookies::CSRF_HEADER),
                HeaderName::from_static(REQUEST_ID),
            ])
            .expose_headers([
                header::RETRY_AFTER,
                header::WWW_AUTHENTICATE,
                HeaderName::from_static(REQUEST_ID),
            ])
            .max_age(Duration::from_secs(600)),
    )
}
