//! Logging, set up once at start-up.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// `RUST_LOG` filters (default `info`; the WebAuthn library's own lines
/// off, as it logs every malformed answer a client sends at ERROR, and the
/// service logs each refusal itself); `format` picks human or JSON lines.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,webauthn_rs_core=off"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.compact().try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
