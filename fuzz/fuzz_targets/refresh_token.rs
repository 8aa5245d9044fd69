//! Refresh-token parsing: the shape check, the hash, the sealed successor
//! and the access token id take any input without a panic.
#![no_main]

use authgate::crypto::refresh;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize).min(data.len());
    let (presented, sealed) = data.split_at(split);
    let presented = String::from_utf8_lossy(presented);
    let _ = refresh::looks_valid(&presented);
    let _ = refresh::hash(&presented);
    let _ = refresh::access_token_id(&presented);
    // Bytes nobody sealed never open.
    assert!(refresh::open_successor(&presented, sealed).is_none());
});
