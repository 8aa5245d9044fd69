//! Black-box tests: the real server on a random port, each test on a fresh
//! database, every test run against both SQLite and PostgreSQL.

#[path = "../common/mod.rs"]
mod common;
mod helpers;

mod account;
mod admin;
mod audit;
mod authorize;
mod browser;
mod clients;
mod connections;
mod cookies;
mod disk;
mod headers;
mod health;
mod instances;
mod introspection;
mod keys;
mod links;
mod login;
mod me;
mod metrics;
mod mfa;
mod outage;
mod outbox;
mod page_passkeys;
mod passkeys;
mod provider;
mod refresh;
mod signup;
mod throttling;
mod tokens;
mod verifiers;

use libtest_mimic::{Arguments, Trial};

fn main() {
    let pg = common::postgres_reachable();
    let modules: &[fn(bool) -> Vec<Trial>] = &[
        account::trials,
        admin::trials,
        audit::trials,
        authorize::trials,
        browser::trials,
        clients::trials,
        connections::trials,
        connections::memory_trials,
        cookies::trials,
        disk::trials,
        headers::trials,
        health::trials,
        health::postgres_only_trials,
        instances::trials,
        introspection::trials,
        keys::trials,
        links::trials,
        login::trials,
        me::trials,
        metrics::trials,
        mfa::trials,
        outage::trials,
        outage::more_trials,
        outbox::trials,
        page_passkeys::trials,
        outbox::postgres_only_trials,
        passkeys::trials,
        provider::trials,
        refresh::trials,
        signup::trials,
        throttling::trials,
        tokens::trials,
        verifiers::trials,
    ];
    let trials = modules.iter().flat_map(|trials| trials(pg)).collect();
    libtest_mimic::run(&Arguments::from_args(), trials).exit();
}
