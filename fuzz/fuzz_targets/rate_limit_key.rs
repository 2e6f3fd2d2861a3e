//! Reading a rate-limit key from any header value never panics, and equal
//! values give equal keys.
#![no_main]

use http::Request;
use kaname_config::types::RateLimitKey;
use kaname_filters::rate_limit::{Key, KeySource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let hasher = std::hash::RandomState::new();
    let source = KeySource::new(&RateLimitKey::Header("x-api-key".into())).expect("key source");
    let Ok(req) = Request::builder().header("x-api-key", data).body(()) else {
        return;
    };
    let a = source.key_of(&req, &hasher);
    let b = source.key_of(&req, &hasher);
    assert_eq!(a, b);
    assert!(a != Key::Anonymous);
    // A claim key without verified claims is anonymous.
    let claim = KeySource::new(&RateLimitKey::JwtClaim("sub".into())).expect("claim");
    assert!(claim.key_of(&req, &hasher) == Key::Anonymous);
    // A header name from the input: valid ones build, invalid ones are refused.
    if let Ok(name) = std::str::from_utf8(data) {
        let _ = KeySource::new(&RateLimitKey::Header(name.to_string()));
    }
});
