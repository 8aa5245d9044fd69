//! authgate: an authentication and authorization service.
//!
//! Users sign up and log in; they get a short-lived JWT access token and a
//! long-lived, rotating, opaque refresh token; admins manage users and roles.
//! `main.rs` only calls [`cli::run`]; [`startup::Application`] builds the
//! service, which tests start on port 0.

pub mod cli;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod http;
pub mod ratelimit;
pub mod sessions;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
