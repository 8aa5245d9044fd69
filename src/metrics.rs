//! Prometheus metrics, served on a listener of their own
//! (`AUTHGATE_METRICS_LISTEN`, off by default) so that they never share the
//! public port. Labels name routes, outcomes and limits, never a user.
//!
//! The flows record with the `metrics` macros wherever they decide; without
//! a listener no recorder is installed and the macros cost next to nothing.

use std::{future::Future, sync::OnceLock, time::Duration};

use axum::{Router, http::header, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

/// Request latencies, in seconds: from a cached `/users/me` to a login
/// waiting for its hash.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Whether metrics are recorded in this process: without a listener, the
/// per-request work (labels, timings) is skipped.
pub fn enabled() -> bool {
    HANDLE.get().is_some()
}

/// The process's recorder, installed once: the `metrics` macros write to
/// one global recorder, which every service of the process shares.
pub fn recorder() -> anyhow::Result<PrometheusHandle> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    handle.render(),
                )
                    .into_response()
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "authgate_http_requests_total",
        "Requests by route, method and status"
    );
    describe_histogram!(
        "authgate_http_request_duration_seconds",
        Unit::Seconds,
        "Request latency by route and method"
    );
    describe_counter!("authgate_logins_total", "Password logins by outcome");
    describe_counter!("authgate_signups_total", "Signups by outcome");
    describe_counter!("authgate_refreshes_total", "Token refreshes by outcome");
    describe_counter!(
        "authgate_refresh_reuse_detected_total",
        "Refresh tokens presented again after their grace window: sessions revoked"
    );
    describe_counter!(
        "authgate_throttled_total",
        "Requests refused by a limit, by its policy"
    );
    describe_gauge!(
        "authgate_hash_queue_depth",
        "Password hashes waiting for a worker"
    );
    describe_histogram!(
        "authgate_hash_wait_seconds",
        Unit::Seconds,
        "How long a password hash waited for a worker"
    );
    describe_gauge!(
        "authgate_db_connections",
        "Database connections by pool and state"
    );
    describe_counter!(
        "authgate_session_cache_total",
        "Session liveness lookups by result (hit, miss, stale)"
    );
}

/// How often the gauges sampled from outside (database pools) are read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
