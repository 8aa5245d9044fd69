//! Black-box tests: the real server on a random port, each test on a fresh
//! database, every test run against both SQLite and PostgreSQL.

#[path = "../common/mod.rs"]
mod common;
mod helpers;

mod admin;
mod health;
mod login;
mod refresh;
mod signup;
mod tokens;
