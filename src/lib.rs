//! authgate: an authentication and authorization service.
//!
//! Users sign up and log in; they get a short-lived JWT access token and a
//! long-lived, rotating, opaque refresh token; admins manage users and roles.
//! `main.rs` only calls [`cli::run`]; [`app::Application`] builds the
//! service, which tests start on port 0.
//!
//! The arrows run one way: [`http`] → [`auth`] (the services) → [`store`],
//! [`crypto`], [`limits`] → [`domain`].

pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod http;
pub mod limits;
pub mod mail;
pub mod metrics;
pub mod store;
pub mod telemetry;
