//! The route matcher (proxy/src/router.rs, included by path): any match
//! spec compiles or is refused, and any request head matches or not, never
//! a panic. Host matching ignores case and the port.
#![no_main]

#[path = "../../proxy/src/router.rs"]
#[allow(dead_code)]
mod router;

use kaname_config::{PathMatch, RouteMatch};
use libfuzzer_sys::fuzz_target;
use router::Matcher;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Fields separated by NUL: path kind, path, method, header name, header
    // value, route host, request target, request host.
    let f: Vec<&str> = text.split('\0').collect();
    let get = |i: usize| f.get(i).copied().unwrap_or("");
    let path = match get(0).len() % 4 {
        0 => None,
        1 => Some(PathMatch::Exact(get(1).into())),
        2 => Some(PathMatch::Prefix(get(1).into())),
        _ => Some(PathMatch::Regex(get(1).chars().take(64).collect())),
    };
    let spec = RouteMatch {
        path,
        methods: (!get(2).is_empty()).then(|| vec![get(2).to_string()]),
        headers: if get(3).is_empty() {
            vec![]
        } else {
            vec![(get(3).to_string(), get(4).to_string())]
        },
        host: (!get(5).is_empty()).then(|| get(5).to_string()),
    };
    let Ok(m) = Matcher::compile(&spec) else {
        return;
    };
    let mut b = http::Request::builder().uri(get(6));
    if !get(7).is_empty() {
        b = b.header("host", get(7));
    }
    if let Ok(req) = b.body(()) {
        let (parts, ()) = req.into_parts();
        let _ = m.matches(&parts);
    }
    // A host route matches its own host whatever the case and the port.
    if let Some(host) = spec.host.as_deref() {
        let host_only = RouteMatch {
            path: None,
            methods: None,
            headers: vec![],
            host: Some(host.to_string()),
        };
        let m = Matcher::compile(&host_only).expect("a host-only match compiles");
        let with_port = format!("{}:8080", host.to_ascii_uppercase());
        if let Ok(req) = http::Request::builder()
            .uri("/")
            .header("host", &with_port)
            .body(())
        {
            if !host.contains(':') && !host.contains('[') && host.is_ascii() {
                let (parts, ()) = req.into_parts();
                assert!(m.matches(&parts), "{with_port} did not match host {host}");
            }
        }
    }
});
