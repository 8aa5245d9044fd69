//! The settings parsers: any value of any setting is taken or refused with
//! a message, never a panic; a taken one yields its warnings and choices.
#![no_main]

use authgate::config::Config;
use clap::Parser;
use libfuzzer_sys::fuzz_target;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    config: Config,
}

const FLAGS: &[&str] = &[
    "--database-url",
    "--listen",
    "--jwt-secret",
    "--issuer",
    "--audience",
    "--access-token-ttl",
    "--refresh-token-ttl",
    "--refresh-reuse-grace",
    "--session-max-age",
    "--trusted-proxies",
    "--hash-workers",
    "--argon2-memory-kib",
    "--reserved-usernames",
    "--rate-limit-store",
    "--redis-url",
    "--redis-prefix",
    "--header-read-timeout",
    "--max-connections",
    "--smtp-url",
    "--public-url",
    "--allowed-origins",
    "--cors-origins",
    "--introspection-clients",
    "--key-encryption-key",
    "--jwt-alg",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, value)) = data.split_first() else {
        return;
    };
    let flag = FLAGS[selector as usize % FLAGS.len()];
    let value = String::from_utf8_lossy(value);
    if let Ok(args) = Args::try_parse_from(["authgate", flag, &value]) {
        let _ = args.config.warnings();
        let _ = args.config.limit_backend();
    }
});
