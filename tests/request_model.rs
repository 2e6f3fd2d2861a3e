//! The request model end to end (request-model.md): what kaname checks is
//! what the upstream receives. Paths are normalized before routing, the
//! authority is one, `h2c` never opens a tunnel, hop-by-hop headers cannot
//! be abused, broken upstream framing never reaches a client as a complete
//! answer, a client's broken body is never the upstream's failure, and a
//! stale pooled upstream connection never reaches a client as an error.
//!
//! Requests are written byte for byte on raw sockets (and as raw HTTP/2
//! `:path` through the `h2` crate), so no client library rewrites them.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use jsonwebtoken::Algorithm;
use serde_json::json;
use support::h2_frames::{frame, get_block, PREFACE};
use support::jwt::{now, text_secret_key};
use support::request_model::{
    h2_connect, h2_get, h2_send, ok_reply, permissive_resolve, permissive_upstream, raw_exchange,
    H2cUpstream, RawUpstream, Reply, Wire,
};
use support::{
    endpoints_yaml, metric_value, metrics, one_route_config, poll_metric, HttpClient, Kaname,
    TestUpstream, WsEchoServer,
};
use tokio_tungstenite::tungstenite::Message;

/// How long one raw exchange may take.
const DEADLINE: Duration = Duration::from_secs(10);
const ISSUER: &str = "https://issuer.test";
/// HS256 needs at least 32 bytes (RFC 7518 §3.2).
const JWT_SECRET: &str = "request-model-secret-0123456789-abcdefghij";

// === helpers ===

/// A sample's value, 0 when the series does not exist.
fn sample(text: &str, selector: &str) -> f64 {
    metric_value(text, selector).unwrap_or(0.0)
}

/// A valid HS256 token for the jwt filter of `protected_config`.
fn token() -> String {
    let claims = json!({
        "sub": "alice", "iss": ISSUER, "aud": ["orders"],
        "exp": now() + 3600, "iat": now(),
    });
    text_secret_key(Algorithm::HS256, JWT_SECRET).sign(&claims)
}

/// Listener `main`: `/api/` behind a jwt filter, then a catch-all without
/// filters, both to upstream `app` at `up`; `listener_extra` goes under the
/// listener.
fn protected_config(up: SocketAddr, listener_extra: &str) -> String {
    format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
{listener_extra}    routes:
      - match: {{ path_prefix: /api/ }}
        upstream: app
        filters: [auth]
      - match: {{ path_prefix: / }}
        upstream: app
upstreams:
  app:
    endpoints: [{up}]
filters:
  auth:
    jwt:
      issuer: {ISSUER}
      audiences: [orders]
      algorithms: [HS256]
      secret: {JWT_SECRET}
"
    )
}

/// `GET target` with a Host, `extra` header lines (each ending CRLF) and
/// `Connection: close`.
fn get_raw(target: &str, extra: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nhost: 127.0.0.1\r\n{extra}connection: close\r\n\r\n")
        .into_bytes()
}

/// Waits (bounded) until the upstreams together saw `n` request heads.
async fn wait_total_hits(ups: &[TestUpstream], n: usize, what: &str) {
    let start = Instant::now();
    loop {
        let total: usize = ups.iter().map(|u| u.hits()).sum();
        if total >= n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: the upstreams saw {total} request heads, expected {n} within 5 s \
             (kaname did not forward the head before the body ended?)"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// === 1. bypass matrix ===

/// Path forms that a lenient origin resolves to `/api/secret` (or that try
/// to): none may get past the jwt route without a token.
const BYPASS_FORMS: &[&str] = &[
    "/public/../api/secret",
    "/%61pi/secret",
    "//api/secret",
    "/./api/secret",
    "/public/..%2fapi%2fsecret",
    "/public/%2e%2e/api/secret",
    "/public/%2E%2E/api/secret",
    "/public/.%2e/api/secret",
    "/public/%2e./api/secret",
    "/public/..%5capi%5csecret",
    "/public/..\\api\\secret",
    "/%2561pi/secret",
    "/public/%252e%252e/api/secret",
    "///api/secret",
    "/public//../api/secret",
    "/api/secret%00",
    "/public/..;/api/secret",
    "/%2fapi/secret",
    "/public/../../api/secret",
    "/.%2e/api/secret",
    "/api%2fsecret",
    "/API/secret",
    "/public/%2e%2e%2fapi/secret",
    "/public%2f..%2fapi/secret",
    "/public/..%c0%afapi/secret",
    "/%u0061pi/secret",
    "/public/%2e%2e%5capi/secret",
    "/public/....//api/secret",
    "/%2e%2e/api/secret",
    "/public/%2e%2e/%61pi/secret",
    "/public/%2e%2e%2f%2e%2e%2fapi/secret",
    "/public/..%2F..%2Fapi%2Fsecret",
    "/public/.././api/secret",
    "/public/%2e%2e//api//secret",
    "/public/%2e%2e/api/secret?x=/public/",
    "/public/..%00/api/secret",
    "/public/..%09/api/secret",
    "/public/..\\/api/secret",
    "/public/%2E%2e%2F%2e%2E%2Fapi/secret",
    "/ApI/../api/secret",
    "http://x/public/../api/secret",
    "http://x//api/secret",
    "http://x/%61pi/secret",
    "http://x/public/%2e%2e/api/secret",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bypass_matrix_never_reaches_the_protected_route_without_a_token() {
    // The permissive upstream itself, so the matrix means something.
    assert_eq!(
        permissive_resolve("/public/..%2fapi%2fsecret"),
        "/api/secret"
    );
    assert_eq!(permissive_resolve("http://x//api/secret?q"), "/api/secret");
    assert_eq!(permissive_resolve("/API/secret"), "/API/secret");

    let up = permissive_upstream().await;
    let k = Kaname::start(&protected_config(up.addr, "")).await;
    let port = k.port("main");
    let bearer = format!("authorization: Bearer {}\r\n", token());

    // Controls: the token opens /api/, and the dot segment is resolved by
    // kaname before the upstream sees it.
    let resp = raw_exchange(port, &get_raw("/api/secret", &bearer), DEADLINE).await;
    assert_eq!(
        resp.text(),
        "SECRET",
        "control with a token: {}",
        resp.summary()
    );
    let resp = raw_exchange(port, &get_raw("/public/../api/secret", &bearer), DEADLINE).await;
    assert_eq!(
        resp.text(),
        "SECRET",
        "dot segments with a token: {}",
        resp.summary()
    );
    let last = up.requests().pop().expect("the upstream saw the request");
    assert_eq!(last.target, "/api/secret", "what the upstream received");
    let resp = raw_exchange(port, &get_raw("/api/secret", ""), DEADLINE).await;
    assert_eq!(resp.status, 401, "no token: {}", resp.summary());
    let resp = raw_exchange(port, &get_raw("/public/x", ""), DEADLINE).await;
    assert_eq!(
        resp.text(),
        "public",
        "the public route: {}",
        resp.summary()
    );
    let mut tokened = 2;

    let mut table = Vec::new();
    let mut leaks = Vec::new();
    for form in BYPASS_FORMS {
        let before = up.requests().len();
        let resp = raw_exchange(port, &get_raw(form, ""), DEADLINE).await;
        let got: Vec<String> = up.requests()[before..]
            .iter()
            .map(|r| r.target.clone())
            .collect();
        let line = format!(
            "HTTP/1.1 {form:<42} -> {} upstream got {got:?}",
            resp.status
        );
        if resp.text().contains("SECRET") || resp.head.contains("SECRET") {
            leaks.push(line.clone());
        }
        table.push(line);
    }

    // HTTP/2: the same forms as `:path` (absolute ones are HTTP/1.1's).
    let authority = format!("127.0.0.1:{port}");
    let mut control = h2_get(&authority, "/api/secret").expect("uri");
    control.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token()).parse().expect("header"),
    );
    let resp = h2_send(port, control, None, DEADLINE)
        .await
        .expect("HTTP/2 control request");
    assert_eq!(resp.text(), "SECRET", "HTTP/2 control with a token");
    tokened += 1;
    let resp = h2_send(
        port,
        h2_get(&authority, "/public/x").expect("uri"),
        None,
        DEADLINE,
    )
    .await
    .expect("HTTP/2 public request");
    assert_eq!(resp.text(), "public", "HTTP/2 public route");
    for form in BYPASS_FORMS.iter().filter(|f| f.starts_with('/')) {
        let Some(req) = h2_get(&authority, form) else {
            table.push(format!("HTTP/2   {form:<42} -> not a URI for the client"));
            continue;
        };
        let before = up.requests().len();
        let line = match h2_send(port, req, None, DEADLINE).await {
            Ok(resp) => {
                let got: Vec<String> = up.requests()[before..]
                    .iter()
                    .map(|r| r.target.clone())
                    .collect();
                let line = format!(
                    "HTTP/2   {form:<42} -> {} upstream got {got:?}",
                    resp.status
                );
                if resp.text().contains("SECRET") {
                    leaks.push(line.clone());
                }
                line
            }
            Err(e) => format!("HTTP/2   {form:<42} -> error {e}"),
        };
        table.push(line);
    }
    println!("{}", table.join("\n"));
    assert!(leaks.is_empty(), "SECRET without a token: {leaks:#?}");
    // Only the token-carrying requests ever resolved under /api/ upstream.
    let secret_hits = up
        .requests()
        .iter()
        .filter(|r| permissive_resolve(&r.target).starts_with("/api/"))
        .count();
    assert_eq!(
        secret_hits,
        tokened,
        "requests the upstream resolved under /api/ (only the {tokened} with a token may): {:#?}",
        up.requests().iter().map(|r| &r.target).collect::<Vec<_>>()
    );
}

// === 2. normalization reaches the upstream ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalized_path_is_what_the_upstream_receives() {
    let echo = TestUpstream::start("echo").await;
    let api = TestUpstream::start("api").await;
    let yaml = format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: /api/ }}
        case_sensitive: false
        upstream: api
      - match: {{ path_prefix: / }}
        upstream: echo
  nomerge:
    listen: 127.0.0.1:0
    merge_slashes: false
    routes:
      - upstream: echo
  decode:
    listen: 127.0.0.1:0
    escaped_slashes: decode
    routes:
      - upstream: echo
  keep:
    listen: 127.0.0.1:0
    escaped_slashes: keep
    routes:
      - upstream: echo
upstreams:
  echo:
    endpoints: [{}]
  api:
    endpoints: [{}]
",
        echo.addr, api.addr
    );
    let k = Kaname::start(&yaml).await;
    let (main, nomerge, decode, keep) = (
        k.port("main"),
        k.port("nomerge"),
        k.port("decode"),
        k.port("keep"),
    );
    // (listener port, target, what the echo upstream must receive; None: 400)
    let cases: &[(u16, &str, Option<&str>)] = &[
        (main, "/a/./b/../c//d?x=%2e%2e", Some("/a/c/d?x=%2e%2e")),
        (main, "/%7euser/%41b", Some("/~user/Ab")),
        (main, "/a%3ab", Some("/a%3Ab")),
        (main, "/a/%2e%2E/b", Some("/b")),
        (main, "/a/../..", None),
        (main, "/a%2Fb", None),
        (main, "/a%5Cb", None),
        (main, "/a%00b", None),
        (main, "/a%7Fb", None),
        (nomerge, "//a//b", Some("//a//b")),
        (nomerge, "/a/./b/../c", Some("/a/c")),
        (decode, "/a%2Fb", Some("/a/b")),
        (decode, "/a%2F..%2Fb", Some("/b")),
        (keep, "/a%2Fb", Some("/a%2Fb")),
    ];
    let mut wrong = Vec::new();
    for (port, target, want) in cases {
        let before = echo.recorded().len();
        let resp = raw_exchange(*port, &get_raw(target, ""), DEADLINE).await;
        let got = echo.recorded().get(before).map(|r| r.path.clone());
        let ok = match want {
            Some(want) => resp.status == 200 && got.as_deref() == Some(*want),
            None => resp.status == 400 && got.is_none(),
        };
        if !ok {
            wrong.push(format!(
                "port {port} {target}: want {want:?}, got {} and upstream {got:?}",
                resp.status
            ));
        }
    }
    // HTTP/2 `:path` alike.
    let before = echo.recorded().len();
    let req = h2_get(&format!("127.0.0.1:{main}"), "/a/./b/../c//d?x=%2e%2e").expect("uri");
    match h2_send(main, req, None, DEADLINE).await {
        Ok(resp) if resp.status == 200 => {
            let got = echo.recorded().get(before).map(|r| r.path.clone());
            if got.as_deref() != Some("/a/c/d?x=%2e%2e") {
                wrong.push(format!("HTTP/2 :path: upstream got {got:?}"));
            }
        }
        other => wrong.push(format!("HTTP/2 :path: {other:?}")),
    }
    // case_sensitive: false matches /API/x on the /api/ route.
    let resp = raw_exchange(main, &get_raw("/API/x", ""), DEADLINE).await;
    if resp.status != 200 || resp.header("x-upstream") != Some("api") {
        wrong.push(format!(
            "/API/x on a case-insensitive /api/ route: {} x-upstream {:?}",
            resp.status,
            resp.header("x-upstream")
        ));
    }
    assert!(wrong.is_empty(), "normalization: {wrong:#?}");
}

// === 3. authority ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_authority_routes_and_reaches_the_upstream() {
    let public = TestUpstream::start("public").await;
    let admin = TestUpstream::start("admin").await;
    let yaml = format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - match: {{ host: public.example }}
        upstream: public
      - match: {{ host: admin.example }}
        upstream: admin
upstreams:
  public:
    endpoints: [{}]
  admin:
    endpoints: [{}]
",
        public.addr, admin.addr
    );
    let k = Kaname::start(&yaml).await;
    let port = k.port("main");

    // Absolute form: its authority replaces Host (RFC 9112 §3.2.2).
    let raw =
        b"GET http://public.example/x HTTP/1.1\r\nhost: admin.example\r\nconnection: close\r\n\r\n";
    let resp = raw_exchange(port, raw, DEADLINE).await;
    assert_eq!(resp.status, 200, "absolute form: {}", resp.summary());
    assert_eq!(
        resp.header("x-upstream"),
        Some("public"),
        "routed by the target's authority"
    );
    let got = public.last();
    assert_eq!(
        got.header("host"),
        Some("public.example"),
        "Host the upstream received"
    );
    assert_eq!(
        got.headers.get_all("host").iter().count(),
        1,
        "one Host upstream"
    );

    let bad: &[(&str, &[u8])] = &[
        ("no Host", b"GET /x HTTP/1.1\r\nconnection: close\r\n\r\n"),
        (
            "two Host headers",
            b"GET /x HTTP/1.1\r\nhost: public.example\r\nhost: admin.example\r\nconnection: close\r\n\r\n",
        ),
        (
            "two equal Host headers",
            b"GET /x HTTP/1.1\r\nhost: public.example\r\nhost: public.example\r\nconnection: close\r\n\r\n",
        ),
        ("Host: a b", b"GET /x HTTP/1.1\r\nhost: a b\r\nconnection: close\r\n\r\n"),
        ("Host: a@b", b"GET /x HTTP/1.1\r\nhost: a@b\r\nconnection: close\r\n\r\n"),
        (
            "Host with userinfo",
            b"GET /x HTTP/1.1\r\nhost: admin.example@public.example\r\nconnection: close\r\n\r\n",
        ),
    ];
    let mut wrong = Vec::new();
    for (name, raw) in bad {
        let resp = raw_exchange(port, raw, DEADLINE).await;
        if resp.status != 400 {
            wrong.push(format!("{name}: {}", resp.summary()));
        }
    }

    // HTTP/2: :authority is the authority; a differing host header is a 400.
    let ok = h2_get("public.example", "/x").expect("uri");
    match h2_send(port, ok, None, DEADLINE).await {
        Ok(resp) if resp.status == 200 => {
            if public.last().header("host") != Some("public.example") {
                wrong.push(format!(
                    "HTTP/2: upstream Host {:?}",
                    public.last().header("host")
                ));
            }
        }
        other => wrong.push(format!("HTTP/2 with :authority alone: {other:?}")),
    }
    let mut same = h2_get("public.example", "/x").expect("uri");
    same.headers_mut()
        .insert("host", "public.example".parse().expect("header"));
    match h2_send(port, same, None, DEADLINE).await {
        Ok(resp) if resp.status == 200 => {}
        other => wrong.push(format!("HTTP/2 host == :authority: {other:?}")),
    }
    let mut two = h2_get("public.example", "/x").expect("uri");
    two.headers_mut()
        .insert("host", "admin.example".parse().expect("header"));
    match h2_send(port, two, None, DEADLINE).await {
        Ok(resp) if resp.status == 400 => {}
        other => wrong.push(format!("HTTP/2 host != :authority: {other:?}")),
    }
    let mut valid = 3;
    // Userinfo in an absolute-form target: refused, or routed by its host
    // with a clean Host upstream; never to admin.
    let raw = b"GET http://admin.example@public.example/x HTTP/1.1\r\nhost: public.example\r\nconnection: close\r\n\r\n";
    let resp = raw_exchange(port, raw, DEADLINE).await;
    println!("userinfo in the target: {}", resp.summary());
    if resp.status == 200 {
        valid += 1;
        let host = public.last().header("host").map(str::to_string);
        if resp.header("x-upstream") != Some("public") || host.as_deref() != Some("public.example")
        {
            wrong.push(format!(
                "userinfo target: served by {:?} with Host {host:?}",
                resp.header("x-upstream")
            ));
        }
    } else if resp.status != 400 {
        wrong.push(format!("userinfo target: {}", resp.summary()));
    }
    assert!(wrong.is_empty(), "authority: {wrong:#?}");
    assert_eq!(admin.hits(), 0, "the admin upstream was never reached");
    assert_eq!(
        public.hits(),
        valid,
        "only the valid requests reached public"
    );
}

// === 4. methods and targets ===

/// An HTTP/2 upstream gets the request's authority as `:authority`, not
/// the endpoint's address (one connection per endpoint carries them all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_upstream_receives_the_requests_authority() {
    let up = TestUpstream::start("h2").await;
    let yaml = format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: / }}
        upstream: h2
upstreams:
  h2:
    endpoints: [{}]
    protocol: http2
",
        up.addr
    );
    let k = Kaname::start(&yaml).await;
    let port = k.port("main");
    for (i, host) in ["orders.example", "Orders.Example:8443", "a.example"]
        .iter()
        .enumerate()
    {
        let raw = format!("GET /x{i} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let resp = raw_exchange(port, raw.as_bytes(), DEADLINE).await;
        assert_eq!(resp.status, 200, "{host}: {}", resp.summary());
        let got = up.last();
        assert_eq!(got.version, http::Version::HTTP_2);
        assert_eq!(got.authority.as_deref(), Some(*host), ":authority upstream");
        assert!(got.header("host").is_none(), "no Host beside :authority");
    }
    // Over HTTP/2 from the client too: its :authority goes on.
    let resp = HttpClient::http2()
        .get(&format!("http://127.0.0.1:{port}/h2"))
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        up.last().authority.as_deref(),
        Some(format!("127.0.0.1:{port}").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_asterisk_forms_are_answered_by_kaname() {
    let up = TestUpstream::start("up").await;
    let k = Kaname::start(&one_route_config(up.addr, "", "")).await;
    let port = k.port("main");
    let cases: &[(&str, &[u8], u16)] = &[
        (
            "CONNECT",
            b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nhost: 127.0.0.1:443\r\n\r\n",
            405,
        ),
        (
            "OPTIONS *",
            b"OPTIONS * HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n",
            200,
        ),
        (
            "GET *",
            b"GET * HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n",
            400,
        ),
    ];
    let mut wrong = Vec::new();
    for (name, raw, want) in cases {
        let resp = raw_exchange(port, raw, DEADLINE).await;
        if resp.status != *want {
            wrong.push(format!("{name}: want {want}, got {}", resp.summary()));
        }
    }
    // HTTP/2 CONNECT too.
    let connect = Request::connect("127.0.0.1:443").body(()).expect("request");
    match h2_send(port, connect, None, DEADLINE).await {
        Ok(resp) if resp.status == 405 => {}
        other => wrong.push(format!("HTTP/2 CONNECT: {other:?}")),
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(up.hits(), 0, "the upstream saw none of them");
}

// === 5. h2c smuggling ===

/// Preface, empty SETTINGS and a `GET path` HEADERS frame on stream 1
/// (HPACK: static `:method GET`, `:scheme http`, literal `:path` and
/// `:authority` without indexing).
fn h2_attack(path: &str) -> Vec<u8> {
    let block = get_block(path);
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out.extend(frame(0x1, 0x1 | 0x4, 1, &block));
    out
}

const H2C_UPGRADE: &str = "GET /public HTTP/1.1\r\nhost: 127.0.0.1\r\n\
    connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n\
    http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";

/// Reads until `needle` shows up, the peer closes, or 5 s.
async fn read_until_contains(wire: &mut Wire, needle: &[u8]) -> Vec<u8> {
    let start = Instant::now();
    let mut all = Vec::new();
    while start.elapsed() < Duration::from_secs(5) {
        let (got, closed) = wire.read_to_close(Duration::from_millis(200)).await;
        all.extend(got);
        if closed || all.windows(needle.len()).any(|w| w == needle) {
            break;
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_is_never_forwarded_nor_tunnelled() {
    let up = H2cUpstream::start().await;

    // The upstream really is h2c-capable: straight to it, the attack works.
    let mut direct = Wire::new(
        tokio::net::TcpStream::connect(up.addr)
            .await
            .expect("connect to the h2c upstream"),
    );
    direct.send(H2C_UPGRADE.as_bytes()).await.expect("write");
    let resp = direct.response(DEADLINE).await;
    assert_eq!(
        resp.status,
        101,
        "the h2c upstream upgrades: {}",
        resp.summary()
    );
    direct.send(&h2_attack("/api/secret")).await.expect("write");
    let got = read_until_contains(&mut direct, b"SECRET").await;
    assert!(
        got.windows(6).any(|w| w == b"SECRET"),
        "the h2c upstream serves /api/secret over the tunnel ({} bytes)",
        got.len()
    );
    let direct_seen = up.seen().len();

    let k = Kaname::start(&protected_config(up.addr, "")).await;
    let port = k.port("main");
    let variants = [
        H2C_UPGRADE.to_string(),
        "GET /public HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: http2-settings,upgrade\r\n\
         upgrade: H2C\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            .to_string(),
        // Upgrade without its Connection token: a lax origin upgrades anyway.
        "GET /public HTTP/1.1\r\nhost: 127.0.0.1\r\nupgrade: h2c\r\n\
         http2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            .to_string(),
    ];
    let mut wrong = Vec::new();
    for (i, raw) in variants.iter().enumerate() {
        let before = up.seen().len();
        wrong.extend(
            h2c_through_kaname(port, raw, &up, before)
                .await
                .into_iter()
                .map(|e| format!("variant {i}: {e}")),
        );
    }
    let h2_seen: Vec<_> = up.seen()[direct_seen..]
        .iter()
        .filter(|s| s.version == http::Version::HTTP_2)
        .cloned()
        .collect();
    if !h2_seen.is_empty() {
        wrong.push(format!(
            "HTTP/2 reached the upstream through kaname: {h2_seen:?}"
        ));
    }
    assert!(wrong.is_empty(), "h2c through kaname: {wrong:#?}");
}

/// Sends one h2c upgrade request through kaname, then HTTP/2 frames on the
/// same connection; returns what went wrong.
async fn h2c_through_kaname(port: u16, raw: &str, up: &H2cUpstream, before: usize) -> Vec<String> {
    let mut wrong = Vec::new();
    let mut wire = Wire::connect(port).await;
    wire.send(raw.as_bytes()).await.expect("write");
    let resp = wire.response(DEADLINE).await;
    if resp.status != 200 || resp.text() != "public" {
        wrong.push(format!(
            "want a plain 200 \"public\", got {}",
            resp.summary()
        ));
    }
    let seen = up.seen()[before..].to_vec();
    if seen.len() != 1 {
        wrong.push(format!(
            "the upstream saw {} requests: {seen:?}",
            seen.len()
        ));
    }
    for req in &seen {
        let connection = req
            .headers
            .get("connection")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if req.version != http::Version::HTTP_11
            || req.headers.contains_key("upgrade")
            || req.headers.contains_key("http2-settings")
            || connection.contains("upgrade")
            || connection.contains("http2-settings")
        {
            wrong.push(format!("the upstream saw an upgrade: {req:?}"));
        }
    }
    // The connection is still HTTP/1.1: HTTP/2 frames on it get nothing.
    let _ = wire.send(&h2_attack("/api/secret")).await;
    let (after, closed) = wire.read_to_close(Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&after);
    if text.contains("SECRET") {
        wrong.push(format!("SECRET through kaname: {text:?}"));
    }
    if !(closed || text.starts_with("HTTP/1.1 4")) {
        wrong.push(format!(
            "HTTP/2 frames on the HTTP/1.1 connection: expected a 4xx or a close, got {text:?}"
        ));
    }
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_still_works_when_allowed() {
    let ws = WsEchoServer::start().await;
    let k = Kaname::start(&one_route_config(
        ws.addr,
        "    upgrades: [websocket]\n",
        "",
    ))
    .await;
    let port = k.port("main");
    let connect = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws"));
    let (mut socket, resp) = tokio::time::timeout(DEADLINE, connect)
        .await
        .expect("websocket handshake in time")
        .expect("websocket handshake through kaname");
    assert_eq!(resp.status(), 101);
    let exchange = async {
        socket
            .send(Message::text("through kaname"))
            .await
            .expect("send");
        let echoed = socket.next().await.expect("a reply").expect("reply ok");
        assert_eq!(echoed, Message::text("through kaname"));
        socket.close(None).await.expect("close");
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("websocket echo in time");
}

// === 6. unsolicited 101 ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsolicited_101_from_the_upstream_is_a_502() {
    let up = RawUpstream::start(|_| {
        Reply::keep(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n",
        )
    })
    .await;
    let k = Kaname::start(&one_route_config(up.addr, "", "")).await;
    let port = k.port("main");

    let resp = raw_exchange(port, &get_raw("/plain", ""), DEADLINE).await;
    assert_eq!(resp.status, 502, "101 to a plain GET: {}", resp.summary());
    assert_eq!(up.hits(), 1, "the request reached the upstream");

    // An upgrade the listener does not allow is stripped: same answer.
    let raw = get_raw("/foo", "upgrade: foo\r\nconnection: upgrade\r\n");
    // get_raw adds `connection: close` after; both are fine for the test.
    let resp = raw_exchange(port, &raw, DEADLINE).await;
    assert_eq!(
        resp.status,
        502,
        "101 to a disallowed upgrade: {}",
        resp.summary()
    );
    let last = up.requests().pop().expect("recorded");
    assert_eq!(
        last.header("upgrade"),
        None,
        "Upgrade: foo reached the upstream"
    );
}

// === 7. connection-nominated headers ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_nominate_headers_kaname_relies_on() {
    let up = TestUpstream::start("up").await;
    let k = Kaname::start(&one_route_config(up.addr, "", "")).await;
    let port = k.port("main");
    let trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let raw = format!(
        "GET /hop HTTP/1.1\r\nhost: 127.0.0.1\r\n\
         connection: x-forwarded-for, x-request-id, x-custom, x-forwarded-proto, traceparent\r\n\
         x-request-id: abc\r\nx-custom: 1\r\ntraceparent: {trace}\r\n\r\n"
    );
    let resp = raw_exchange(port, raw.as_bytes(), DEADLINE).await;
    assert_eq!(resp.status, 200, "{}", resp.summary());
    let got = up.last();
    let xff = got.header("x-forwarded-for").unwrap_or_default();
    assert!(
        xff.contains("127.0.0.1"),
        "x-forwarded-for {xff:?} in {:?}",
        got.headers
    );
    assert_eq!(got.header("x-request-id"), Some("abc"), "x-request-id kept");
    assert_eq!(
        got.header("x-custom"),
        None,
        "a nominated header is hop-by-hop"
    );
    assert!(
        got.header("x-forwarded-proto").is_some(),
        "x-forwarded-proto kept"
    );
    assert!(
        got.header("traceparent")
            .is_some_and(|t| t.starts_with("00-0af7651916cd43dd8448eb211c80319c-")),
        "traceparent kept: {:?}",
        got.header("traceparent")
    );
    assert_eq!(
        got.header("connection"),
        None,
        "Connection itself is hop-by-hop"
    );
}

/// A claim header kaname sets (`forward_claims`) survives a client naming
/// it in `Connection`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_drop_a_claim_header() {
    let up = TestUpstream::start("up").await;
    let yaml = format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: / }}
        upstream: up
        filters: [auth]
upstreams:
  up:
    endpoints: [{}]
filters:
  auth:
    jwt:
      issuer: {ISSUER}
      audiences: [orders]
      algorithms: [HS256]
      secret: {JWT_SECRET}
      forward_claims: {{ sub: x-user-id }}
",
        up.addr
    );
    let k = Kaname::start(&yaml).await;
    let port = k.port("main");
    let raw = format!(
        "GET /claims HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {}\r\n\
         connection: x-user-id, x-request-id\r\nx-user-id: mallory\r\n\r\n",
        token()
    );
    let resp = raw_exchange(port, raw.as_bytes(), DEADLINE).await;
    assert_eq!(resp.status, 200, "{}", resp.summary());
    let got = up.last();
    assert_eq!(
        got.header("x-user-id"),
        Some("alice"),
        "the claim header from the token, whatever Connection says: {:?}",
        got.headers
    );
    assert_eq!(got.headers.get_all("x-user-id").iter().count(), 1);
    assert!(got.header("x-request-id").is_some(), "x-request-id kept");
}

// === 8. broken response framing ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_with_content_length_and_chunked_loses_its_content_length() {
    let up = RawUpstream::start(|_| {
        Reply::keep(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        )
    })
    .await;
    let k = Kaname::start(&one_route_config(up.addr, "", "")).await;
    let port = k.port("main");

    let mut wire = Wire::connect(port).await;
    wire.send(b"GET /clte HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let resp = wire.response(DEADLINE).await;
    assert_eq!(resp.status, 200, "{}", resp.summary());
    assert!(
        resp.header("content-length").is_none() || resp.header("transfer-encoding").is_none(),
        "both Content-Length and Transfer-Encoding reached the client:\n{}",
        resp.head
    );
    assert!(resp.complete, "whole body: {}", resp.summary());
    assert_eq!(resp.text(), "abc");
    assert!(resp.header_count("content-length") <= 1, "{}", resp.head);
    if let Some(cl) = resp.header("content-length") {
        assert_eq!(cl, "3", "a Content-Length, if any, is the body's");
    }

    let r = HttpClient::http2()
        .try_get(&format!("http://127.0.0.1:{port}/clte"), DEADLINE)
        .await
        .expect("HTTP/2 client");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "abc");
    assert_ne!(
        r.header("content-length"),
        Some("5"),
        "content-length 5 over HTTP/2"
    );
}

/// The pool keys upstream connections by a short name of the endpoint, not
/// its address (proxy/src/upstream/connector.rs): that name must never
/// reach the upstream. An HTTP/1.0 request without Host gets the
/// endpoint's address as Host (as it did when hyper-util set it from the
/// URI); a request with Host keeps its own; both over one pooled connection.
#[tokio::test]
async fn the_pool_key_is_never_sent_a_request_without_host_names_the_endpoint() {
    let up = RawUpstream::start(|_| ok_reply("ok")).await;
    let k = Kaname::start(&one_route_config(up.addr, "", "")).await;
    let port = k.port("main");
    let mut wire = Wire::connect(port).await;
    wire.send(b"GET /old HTTP/1.0\r\n\r\n")
        .await
        .expect("write");
    let resp = wire.response(DEADLINE).await;
    assert_eq!(resp.status, 200, "{}", resp.summary());
    let mut wire = Wire::connect(port).await;
    wire.send(b"GET /new HTTP/1.1\r\nhost: svc.example:8080\r\n\r\n")
        .await
        .expect("write");
    let resp = wire.response(DEADLINE).await;
    assert_eq!(resp.status, 200, "{}", resp.summary());
    let seen = up.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].header("host"), Some(up.addr.to_string().as_str()));
    assert_eq!(seen[1].header("host"), Some("svc.example:8080"));
    for r in &seen {
        assert!(
            r.target.starts_with('/'),
            "origin-form target: {}",
            r.target
        );
        assert_eq!(r.headers.iter().filter(|(n, _)| n == "host").count(), 1);
    }
    assert_eq!(
        up.connections(),
        1,
        "the second request reused the pooled connection"
    );
}

/// A client that names pool keys (`e1`, `e2`, ...: the short names kaname's
/// pool uses for endpoints) as its Host or absolute-form target changes
/// nothing kaname dials: each request reaches the route's one upstream over
/// the pooled connection, with the authority the client sent as its Host.
#[tokio::test]
async fn a_client_naming_pool_keys_changes_nothing_kaname_dials() {
    let up = RawUpstream::start(|_| ok_reply("ok")).await;
    let k = Kaname::start(&one_route_config(up.addr, "", "")).await;
    let port = k.port("main");
    let mut wire = Wire::connect(port).await;
    let mut sent = Vec::new();
    for n in 0..4 {
        let key = format!("e{n}");
        for head in [
            format!("GET /host HTTP/1.1\r\nhost: {key}\r\n\r\n"),
            format!("GET http://{key}/abs HTTP/1.1\r\nhost: {key}\r\n\r\n"),
        ] {
            wire.send(head.as_bytes()).await.expect("write");
            let resp = wire.response(DEADLINE).await;
            assert_eq!(resp.status, 200, "{head:?}: {}", resp.summary());
            sent.push(key.clone());
        }
    }
    let seen = up.requests();
    assert_eq!(seen.len(), sent.len(), "{seen:?}");
    for (r, key) in seen.iter().zip(&sent) {
        assert_eq!(r.header("host"), Some(key.as_str()), "{r:?}");
        assert!(r.target.starts_with('/'), "origin-form: {}", r.target);
    }
    assert_eq!(
        up.connections(),
        1,
        "one pooled connection to the one endpoint"
    );
}

/// An HTTP/1.0 upstream (Python's http.server) does not make kaname answer
/// an HTTP/1.1 client in HTTP/1.0: kaname answers in its own version and
/// the client's connection stays open for the next request.
#[tokio::test]
async fn an_http_1_0_upstream_is_answered_in_http_1_1() {
    let up = RawUpstream::start(|_| Reply::close("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        .await;
    let k = Kaname::start(&one_route_config(up.addr, "", "")).await;
    let mut wire = Wire::connect(k.port("main")).await;
    for i in 0..2 {
        wire.send(b"GET /old HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
            .await
            .expect("write");
        let resp = wire.response(DEADLINE).await;
        assert!(
            resp.head.starts_with("HTTP/1.1 200"),
            "request {i}: {}",
            resp.head
        );
        assert_eq!(resp.body, b"ok");
        assert!(
            !resp.closed,
            "request {i}: the connection was closed: {}",
            resp.summary()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_shorter_than_content_length_ends_the_connection() {
    let up =
        RawUpstream::start(|_| Reply::close("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))
            .await;
    let k = Kaname::start(&one_route_config(up.addr, "", "")).await;
    let port = k.port("main");

    // Keep-alive request: the connection must end, not wait for reuse.
    let mut wire = Wire::connect(port).await;
    wire.send(b"GET /short HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    let resp = wire.response(DEADLINE).await;
    println!(
        "HTTP/1.1 short body: {} complete={} closed={}",
        resp.summary(),
        resp.complete,
        resp.closed
    );
    if resp.status == 200 {
        assert!(
            !resp.complete,
            "a complete body of {} bytes reached the client: {}\n{}",
            resp.body.len(),
            resp.summary(),
            resp.head
        );
        assert!(resp.body.len() < 10, "{} body bytes", resp.body.len());
        assert!(
            resp.closed,
            "the connection stayed open after a short body ({} of 10 bytes): {}",
            resp.body.len(),
            resp.summary()
        );
    } else if resp.status == 0 {
        // hyper had not flushed the head when the upstream's body broke:
        // the connection is closed with nothing sent, which is cut too
        // (faults.rs accepts the same).
        assert!(
            resp.closed,
            "no answer and the connection stayed open: {}",
            resp.summary()
        );
    } else {
        assert!(
            resp.status >= 500,
            "a short body is refused or cut: {}",
            resp.summary()
        );
    }

    match HttpClient::http2()
        .try_get(&format!("http://127.0.0.1:{port}/short"), DEADLINE)
        .await
    {
        Err(e) => println!("HTTP/2 short body: {e}"),
        Ok(r) => assert!(
            r.status.as_u16() >= 500,
            "HTTP/2 client got a complete {} with {} body bytes ({:?})",
            r.status,
            r.body.len(),
            r.text()
        ),
    }
}

// === 9. a client's broken body poisons neither breaker nor outlier ===

const BROKEN_EACH: usize = 16;

fn poison_config(ups: &[TestUpstream], listener_extra: &str) -> String {
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
{listener_extra}    routes:
      - match: {{ path_prefix: / }}
        upstream: up
        filters: [breaker]
upstreams:
  up:
    endpoints: {}
    load_balancing: round_robin
    outlier_detection: {{ consecutive_failures: 3, eject_for: 60s, max_ejected_percent: 100 }}
filters:
  breaker:
    circuit_breaker:
      consecutive_failures: 3
      open_for: 60s
      failure_on: [connect_failure, reset, timeout, 5xx]
",
        endpoints_yaml(&addrs)
    )
}

/// Content-Length 100, 5 bytes, FIN (write side only): the status read.
async fn broken_cl_fin(port: u16, ups: &[TestUpstream], seen: usize) -> u16 {
    let mut wire = Wire::connect(port).await;
    wire.send(b"POST /poison HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 100\r\n\r\nhello")
        .await
        .expect("write");
    wait_total_hits(ups, seen + 1, "content-length short").await;
    wire.shutdown_write().await.expect("shutdown write");
    wire.response(DEADLINE).await.status
}

/// Chunked without its last chunk, FIN.
async fn broken_chunked_fin(port: u16, ups: &[TestUpstream], seen: usize) -> u16 {
    let mut wire = Wire::connect(port).await;
    wire.send(b"POST /poison HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .expect("write");
    wait_total_hits(ups, seen + 1, "unterminated chunked").await;
    wire.shutdown_write().await.expect("shutdown write");
    wire.response(DEADLINE).await.status
}

/// A chunk with 20 KB of chunk extension after a good one.
async fn broken_chunk_extension(port: u16, ups: &[TestUpstream], seen: usize) -> u16 {
    let mut wire = Wire::connect(port).await;
    wire.send(b"POST /poison HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .expect("write");
    wait_total_hits(ups, seen + 1, "oversized chunk extension").await;
    let mut bad = b"5;x=".to_vec();
    bad.extend(std::iter::repeat_n(b'a', 20 * 1024));
    bad.extend_from_slice(b"\r\nworld\r\n0\r\n\r\n");
    let _ = wire.send(&bad).await;
    wire.response(DEADLINE).await.status
}

/// HTTP/2: HEADERS and some DATA, then RST_STREAM(CANCEL).
async fn broken_h2_reset(
    client: &mut h2::client::SendRequest<Bytes>,
    port: u16,
    ups: &[TestUpstream],
    seen: usize,
) {
    let ready = client.clone().ready().await.expect("h2 ready");
    *client = ready;
    let req = Request::post(format!("http://127.0.0.1:{port}/poison"))
        .body(())
        .expect("request");
    let (_resp, mut send) = client.send_request(req, false).expect("send_request");
    send.send_data(Bytes::from_static(b"hello"), false)
        .expect("send_data");
    wait_total_hits(ups, seen + 1, "HTTP/2 reset mid-upload").await;
    send.send_reset(h2::Reason::CANCEL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_client_bodies_open_no_breaker_and_eject_nothing() {
    let ups = vec![
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
        TestUpstream::start("c").await,
        TestUpstream::start("d").await,
    ];
    let k = Kaname::start(&poison_config(&ups, "")).await;
    let port = k.port("main");

    let mut statuses: HashMap<&str, Vec<u16>> = HashMap::new();
    let mut seen = 0;
    for _ in 0..BROKEN_EACH {
        let s = broken_cl_fin(port, &ups, seen).await;
        statuses
            .entry("content-length short + FIN")
            .or_default()
            .push(s);
        seen += 1;
        let s = broken_chunked_fin(port, &ups, seen).await;
        statuses
            .entry("unterminated chunked + FIN")
            .or_default()
            .push(s);
        seen += 1;
        let s = broken_chunk_extension(port, &ups, seen).await;
        statuses
            .entry("oversized chunk extension")
            .or_default()
            .push(s);
        seen += 1;
    }
    let mut h2 = h2_connect(port).await.expect("HTTP/2 connection");
    for _ in 0..BROKEN_EACH {
        broken_h2_reset(&mut h2, port, &ups, seen).await;
        seen += 1;
    }
    let sent = seen as f64;

    let cancelled = r#"kaname_upstream_attempts_total{upstream="up",outcome="cancelled"}"#;
    let (_, text) = poll_metric(&k, cancelled, Duration::from_secs(5), |v| {
        v.unwrap_or(0.0) >= sent
    })
    .await;
    let mut wrong = Vec::new();
    for (form, got) in &statuses {
        if got.iter().any(|s| *s != 400) {
            wrong.push(format!("{form}: client statuses {got:?}, want all 400"));
        }
    }
    if sample(&text, cancelled) != sent {
        wrong.push(format!(
            "{cancelled} = {}, want {sent} (one cancelled try per broken body)",
            sample(&text, cancelled)
        ));
    }
    for outcome in ["reset", "timeout", "connect_failure", "http_error"] {
        let sel = format!(r#"kaname_upstream_attempts_total{{upstream="up",outcome="{outcome}"}}"#);
        if sample(&text, &sel) != 0.0 {
            wrong.push(format!("{sel} = {}", sample(&text, &sel)));
        }
    }
    let state = |s: &str| {
        format!(r#"kaname_circuit_breaker_state{{filter="breaker",upstream="up",state="{s}"}}"#)
    };
    if metric_value(&text, &state("closed")) != Some(1.0) || sample(&text, &state("open")) != 0.0 {
        wrong.push(format!(
            "breaker: closed={:?} open={:?} half_open={:?}",
            metric_value(&text, &state("closed")),
            metric_value(&text, &state("open")),
            metric_value(&text, &state("half_open"))
        ));
    }
    let ejections = sample(&text, r#"kaname_upstream_ejections_total{upstream="up"}"#);
    if ejections != 0.0 {
        wrong.push(format!("{ejections} outlier ejections"));
    }
    for u in &ups {
        let sel = format!(
            r#"kaname_upstream_endpoint_healthy{{upstream="up",endpoint="{}"}}"#,
            u.addr
        );
        if metric_value(&text, &sel) != Some(1.0) {
            wrong.push(format!("{sel} = {:?}", metric_value(&text, &sel)));
        }
    }

    // Every endpoint still serves, and nothing is refused as circuit_open.
    let client = HttpClient::http1();
    let mut served = BTreeSet::new();
    for i in 0..8 {
        let r = client
            .get(&format!("http://127.0.0.1:{port}/after/{i}"))
            .await;
        if r.status != 200 {
            wrong.push(format!(
                "GET after the broken bodies: {} {:?} {}",
                r.status,
                r.header("kaname-error"),
                r.text()
            ));
        }
        if let Some(name) = r.header("x-upstream") {
            served.insert(name.to_string());
        }
    }
    if served.len() != 4 {
        wrong.push(format!(
            "endpoints serving afterwards: {served:?}, want all 4"
        ));
    }
    assert!(wrong.is_empty(), "{} broken bodies sent: {wrong:#?}", seen);
}

/// With a retry filter on the route: a broken body is never retried,
/// whether it was small enough to buffer for retries or streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_client_bodies_are_never_retried() {
    let ups = vec![
        TestUpstream::start("a").await,
        TestUpstream::start("b").await,
    ];
    let yaml = poison_config(&ups, "").replace("filters: [breaker]", "filters: [retries, breaker]")
        + "  retries:
    retry:
      attempts: 3
      methods: [GET, POST]
      retry_on: [connect_failure, reset, timeout, 502, 503, 504]
      backoff: { base: 1ms, max: 5ms }
      max_body_bytes: 64KiB
";
    let k = Kaname::start(&yaml).await;
    let port = k.port("main");
    let mut statuses = Vec::new();
    // Small: within max_body_bytes (kaname may buffer it before any try).
    for _ in 0..4 {
        let mut wire = Wire::connect(port).await;
        wire.send(b"POST /small HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 100\r\n\r\nhello")
            .await
            .expect("write");
        wire.shutdown_write().await.expect("shutdown write");
        statuses.push(("small", wire.response(DEADLINE).await.status));
    }
    // Large: over max_body_bytes, streamed to the upstream once.
    for _ in 0..4 {
        let seen: usize = ups.iter().map(|u| u.hits()).sum();
        let mut wire = Wire::connect(port).await;
        let mut raw =
            b"POST /large HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 200000\r\n\r\n".to_vec();
        raw.extend(std::iter::repeat_n(b'x', 70 * 1024));
        wire.send(&raw).await.expect("write");
        wait_total_hits(&ups, seen + 1, "large broken body").await;
        wire.shutdown_write().await.expect("shutdown write");
        statuses.push(("large", wire.response(DEADLINE).await.status));
    }
    let text = metrics(&k).await;
    let mut wrong: Vec<String> = statuses
        .iter()
        .filter(|(_, s)| *s != 400)
        .map(|(form, s)| format!("{form}: status {s}, want 400"))
        .collect();
    let retries = sample(
        &text,
        r#"kaname_retries_total{route="main-1",upstream="up"}"#,
    );
    if retries != 0.0 {
        wrong.push(format!("{retries} retries of broken client bodies"));
    }
    let recorded: Vec<String> = ups
        .iter()
        .flat_map(|u| u.recorded())
        .map(|r| r.path)
        .collect();
    let hits: usize = ups.iter().map(|u| u.hits()).sum();
    if hits > 8 {
        wrong.push(format!(
            "{hits} tries reached the upstreams for 8 broken bodies: {recorded:?}"
        ));
    }
    let open = r#"kaname_circuit_breaker_state{filter="breaker",upstream="up",state="open"}"#;
    if sample(&text, open) != 0.0 {
        wrong.push("breaker open".into());
    }
    let ejections = sample(&text, r#"kaname_upstream_ejections_total{upstream="up"}"#);
    if ejections != 0.0 {
        wrong.push(format!("{ejections} ejections"));
    }
    let r = HttpClient::http1()
        .get(&format!("http://127.0.0.1:{port}/after"))
        .await;
    if r.status != 200 {
        wrong.push(format!("GET afterwards: {} {}", r.status, r.text()));
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

// === 10. a stalled body is a 408, not the upstream's fault ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_gets_408_and_leaves_the_breaker_closed() {
    let ups = vec![TestUpstream::start("a").await];
    let k = Kaname::start(&poison_config(&ups, "    request_body_timeout: 1s\n")).await;
    let port = k.port("main");
    for i in 0..4 {
        let started = Instant::now();
        let mut wire = Wire::connect(port).await;
        wire.send(b"POST /slow HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: 10\r\n\r\nab")
            .await
            .expect("write");
        let resp = wire.response(DEADLINE).await;
        assert_eq!(
            resp.status,
            408,
            "stalled body {i} after {:?}: {}",
            started.elapsed(),
            resp.summary()
        );
    }
    // HTTP/2: HEADERS with content-length 10, two bytes of DATA, then nothing.
    let started = Instant::now();
    let mut client = h2_connect(port)
        .await
        .expect("HTTP/2 connection")
        .ready()
        .await
        .expect("h2 ready");
    let req = Request::post(format!("http://127.0.0.1:{port}/slow"))
        .header("content-length", "10")
        .body(())
        .expect("request");
    let (resp, mut send) = client.send_request(req, false).expect("send_request");
    send.send_data(Bytes::from_static(b"ab"), false)
        .expect("send_data");
    let resp = tokio::time::timeout(DEADLINE, resp)
        .await
        .expect("an HTTP/2 answer to a stalled body within 10 s")
        .expect("HTTP/2 response");
    assert_eq!(
        resp.status(),
        408,
        "HTTP/2 stalled body after {:?}",
        started.elapsed()
    );
    drop(send);

    let text = metrics(&k).await;
    let state = |s: &str| {
        format!(r#"kaname_circuit_breaker_state{{filter="breaker",upstream="up",state="{s}"}}"#)
    };
    assert_eq!(
        metric_value(&text, &state("closed")),
        Some(1.0),
        "breaker closed"
    );
    assert_eq!(sample(&text, &state("open")), 0.0, "breaker not open");
    assert_eq!(
        sample(
            &text,
            r#"kaname_upstream_attempts_total{upstream="up",outcome="timeout"}"#
        ),
        0.0,
        "a stalled client counted as an upstream timeout"
    );
    let r = HttpClient::http1()
        .get(&format!("http://127.0.0.1:{port}/after"))
        .await;
    assert_eq!(
        r.status,
        200,
        "served afterwards: {:?} {}",
        r.header("kaname-error"),
        r.text()
    );
}

// === 11. stale pooled upstream connections ===

/// How many GETs `stale_pooled_connections_are_resent` sends (POSTs: half
/// as many). The issue's figure is 1,000; the default, 200, keeps the test
/// near 30 s. Set KANAME_STALE_N=1000 to run the issue's count.
fn stale_n() -> usize {
    std::env::var("KANAME_STALE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// Sends `n` requests made by `make` one after another, 90–110 ms apart;
/// returns the failures (non-200 or errors).
async fn spaced_requests(
    n: usize,
    make: impl Fn(usize) -> Request<support::client::Body>,
) -> Vec<String> {
    let client = HttpClient::http1();
    let bound = Duration::from_millis(250) * n as u32 + Duration::from_secs(10);
    let started = Instant::now();
    let mut failures = Vec::new();
    for i in 0..n {
        assert!(
            started.elapsed() < bound,
            "request {i} of {n} still running after {bound:?}"
        );
        match client.try_send(make(i), Duration::from_secs(5)).await {
            Ok(r) if r.status == 200 => {}
            Ok(r) => failures.push(format!(
                "#{i}: {} {:?} {}",
                r.status,
                r.header("kaname-error"),
                r.text()
            )),
            Err(e) => failures.push(format!("#{i}: {e}")),
        }
        let gap = rand::random_range(90..=110);
        tokio::time::sleep(Duration::from_millis(gap)).await;
    }
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_pooled_connections_are_resent() {
    let up = RawUpstream::closing_idle(Duration::from_millis(100), |req| {
        ok_reply(&format!("id {}", req.header("x-req-id").unwrap_or("-")))
    })
    .await;
    let k = Kaname::start(&one_route_config(up.addr, "", "")).await;
    let port = k.port("main");
    let n = stale_n();

    let get_failures = spaced_requests(n, |i| {
        Request::get(format!("http://127.0.0.1:{port}/stale"))
            .header("x-req-id", format!("get-{i}"))
            .body(support::empty())
            .expect("request")
    })
    .await;
    let get_connections = up.connections();

    let posts = n / 2;
    let post_failures = spaced_requests(posts, |i| {
        Request::post(format!("http://127.0.0.1:{port}/stale"))
            .header("x-req-id", format!("post-{i}"))
            .body(support::full(format!("order {i}")))
            .expect("request")
    })
    .await;

    let mut by_id: HashMap<String, usize> = HashMap::new();
    for r in up.requests() {
        *by_id
            .entry(r.header("x-req-id").unwrap_or("-").to_string())
            .or_default() += 1;
    }
    let twice: Vec<_> = by_id
        .iter()
        .filter(|(id, count)| id.starts_with("post-") && **count > 1)
        .collect();
    println!(
        "stale pool: {n} GETs, {} failed; {posts} POSTs, {} failed; {} upstream connections \
         ({get_connections} during the GETs)",
        get_failures.len(),
        post_failures.len(),
        up.connections()
    );
    for f in &post_failures {
        println!("POST failure (allowed): {f}");
    }
    assert!(
        get_connections >= 10,
        "the upstream closed idle connections ({get_connections} opened): the race was exercised"
    );
    assert!(
        get_failures.is_empty(),
        "{} of {n} GETs failed on stale pooled connections: {:#?}",
        get_failures.len(),
        &get_failures[..get_failures.len().min(10)]
    );
    assert!(
        twice.is_empty(),
        "POSTs that reached the upstream twice: {twice:?} ({} of {posts} POSTs failed: {:?})",
        post_failures.len(),
        &post_failures[..post_failures.len().min(5)]
    );
}
