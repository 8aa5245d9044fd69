#![allow(dead_code)]
//! One service for every run of a target: a SQLite file of its own, a
//! generated EdDSA key, and the router without a listener.

use std::sync::OnceLock;

use authgate::{app::Application, config::Config, http::AppState};
use clap::Parser;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: Config,
}

pub struct Fixture {
    pub runtime: tokio::runtime::Runtime,
    pub state: AppState,
    pub router: axum::Router,
}

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = std::env::temp_dir().join(format!("authgate-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a work directory");
        let url = format!("sqlite://{}?mode=rwc", dir.join("fuzz.db").display());
        let outbox = dir.join("outbox");
        let args = Args::try_parse_from([
            "authgate",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &url,
            "--mail-outbox",
            outbox.to_str().expect("a UTF-8 path"),
            "--hash-workers",
            "1",
            "--argon2-memory-kib",
            "7168",
            "--argon2-iterations",
            "5",
        ])
        .expect("valid settings");
        let state = runtime.block_on(async {
            let app = Application::build(args.config).await.expect("the service builds");
            app.state().clone()
        });
        let router = authgate::http::router(state.clone());
        Fixture {
            runtime,
            state,
            router,
        }
    })
}
