//! Token extraction (header with prefix, query parameter, cookie) and the
//! shape checks on a raw token (`Verifier::inspect`: three parts, base64url,
//! header JSON, algorithm) never panic, whatever the request carries.
#![no_main]

use http::Request;
use jsonwebtoken::Algorithm;
use kaname_config::types::TokenSource;
use kaname_filters::jwt::token::{extract, strip, Extracted, TokenPlace};
use kaname_filters::jwt::verify::Verifier;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let verifier = Verifier::new(
        &[Algorithm::RS256, Algorithm::ES256, Algorithm::HS256],
        &["https://issuer".to_string()],
        &["api".to_string()],
        30,
        &[],
    );
    if let Ok(token) = std::str::from_utf8(data) {
        let _ = verifier.inspect(token);
    }
    // The same bytes as a header value, a query string and a cookie.
    let sources = [
        TokenSource::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        },
        TokenSource::Query("access_token".into()),
        TokenSource::Cookie("session".into()),
    ];
    let mut builder = Request::builder().header("authorization", data);
    if let Ok(q) = std::str::from_utf8(data) {
        builder = builder.uri(format!("/p?{q}"));
    }
    let Ok(mut req) = builder.header("cookie", data).body(()) else {
        return;
    };
    for source in sources.map(TokenPlace::new).iter() {
        if let Extracted::One(token) = extract(source, &req) {
            assert!(!token.is_empty());
            let _ = verifier.inspect(&token);
        }
        strip(source, &mut req);
        assert!(
            matches!(extract(source, &req), Extracted::Missing),
            "token still there after strip"
        );
    }
});
