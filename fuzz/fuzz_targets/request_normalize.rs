//! Request normalization (proxy/src/normalize.rs, included by path): any
//! path is normalized or refused, never a panic, and a normal path is a
//! fixed point (idempotent, borrowed) with no dot segment and, when slashes
//! are merged, no `//`. `request_authority` never panics and never answers
//! an authority with userinfo.
#![no_main]

#[path = "../../proxy/src/normalize.rs"]
#[allow(dead_code)]
mod normalize;

use std::borrow::Cow;

use http::{header, HeaderMap, HeaderValue, Uri, Version};
use libfuzzer_sys::fuzz_target;
use normalize::{normalize_path, request_authority, EscapedSlashes, PathOptions};

fuzz_target!(|data: &[u8]| {
    // First byte: options and version; then fields separated by NUL: path,
    // Host value, request target.
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut f = rest.split(|&b| b == 0);
    let path = String::from_utf8_lossy(f.next().unwrap_or_default());
    let opts = PathOptions {
        merge_slashes: flags & 1 == 0,
        escaped_slashes: match (flags >> 1) & 3 {
            0 => EscapedSlashes::Reject,
            1 => EscapedSlashes::Decode,
            _ => EscapedSlashes::Keep,
        },
    };
    if let Ok(out) = normalize_path(&path, opts) {
        assert!(out.starts_with('/'), "{path:?} -> {out:?}");
        match normalize_path(&out, opts) {
            Ok(Cow::Borrowed(again)) => assert_eq!(again, &*out),
            other => panic!("not idempotent: {path:?} -> {out:?} -> {other:?}"),
        }
        assert!(!out.contains("/./") && !out.contains("/../"), "{out:?}");
        assert!(!out.ends_with("/.") && !out.ends_with("/.."), "{out:?}");
        assert!(!opts.merge_slashes || !out.contains("//"), "{out:?}");
    }

    let mut headers = HeaderMap::new();
    if let Some(value) = f.next().and_then(|h| HeaderValue::from_bytes(h).ok()) {
        if flags & 0x40 != 0 {
            headers.append(header::HOST, value.clone());
        }
        headers.append(header::HOST, value);
    }
    let uri = f
        .next()
        .and_then(|t| Uri::try_from(t).ok())
        .unwrap_or_default();
    let version = match (flags >> 3) & 7 {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        2 | 3 => Version::HTTP_11,
        4 | 5 => Version::HTTP_2,
        _ => Version::HTTP_3,
    };
    if let Ok(Some(a)) = request_authority(version, &uri, &headers) {
        assert!(!a.as_str().contains('@'), "{}", a.as_str());
        // Later steps parse it (an HTTP/2 upstream's `:authority`).
        assert!(http::uri::Authority::try_from(a.as_str()).is_ok(), "{}", a.as_str());
    }
});
