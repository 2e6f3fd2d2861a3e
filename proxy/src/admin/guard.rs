//! The checks every admin request passes before it is served.
//!
//! - `Host` (and the authority of an absolute-form target) must be a
//!   loopback name or address (`localhost`, `127.x.y.z`, `[::1]`), or the
//!   admin port's own address, any port, or a name of `admin.allowed_hosts`
//!   (exact, case-insensitive): a page on another site that a DNS rebinding
//!   points at 127.0.0.1 still sends its own name, and gets 403. No `Host`
//!   (or two) is 400.
//! - A request that can change something (anything but GET and HEAD)
//!   carrying `Origin` comes from a browser page: 403.
//! - With `admin.token`, every path but `/live` and `/ready` needs
//!   `Authorization: Bearer <token>` (compared in constant time): 401 with
//!   `WWW-Authenticate: Bearer` otherwise.

use std::net::{IpAddr, SocketAddr};

use http::{header, HeaderValue, Method, Request};
use kaname_config::Admin;
use kaname_filters::body::Body;
use kaname_filters::ErrorKind;

/// Paths that stay open when `admin.token` is set (probes).
const OPEN_PATHS: &[&str] = &["/live", "/ready"];

/// The answer refusing `req`, or None when it may be served.
pub fn refusal<B>(
    req: &Request<B>,
    admin: &Admin,
    local: Option<SocketAddr>,
) -> Option<http::Response<Body>> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) => h,
        (None, _) => return Some(bad_request("a Host header is required")),
        (Some(_), Some(_)) => return Some(bad_request("more than one Host header")),
    };
    let host_ok = host
        .to_str()
        .ok()
        .is_some_and(|h| host_allowed(h, admin, local));
    let target_ok = req
        .uri()
        .authority()
        .is_none_or(|a| host_allowed(a.as_str(), admin, local));
    if !(host_ok && target_ok) {
        return Some(ErrorKind::Forbidden.response(
            "the admin port answers only requests for localhost, a loopback address, its own address or a name of admin.allowed_hosts (Host)",
            false,
        ));
    }
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    if !safe && req.headers().contains_key(header::ORIGIN) {
        return Some(ErrorKind::Forbidden.response(
            "a request from a web page (Origin) cannot change the admin port's state",
            false,
        ));
    }
    match &admin.token {
        Some(token) if !OPEN_PATHS.contains(&req.uri().path()) => unauthorized(req, token),
        _ => None,
    }
}

fn bad_request(message: &str) -> http::Response<Body> {
    ErrorKind::BadRequest.response(message, false)
}

/// `host` is `name`, `name:port`, `[v6]` or `[v6]:port`.
fn host_allowed(host: &str, admin: &Admin, local: Option<SocketAddr>) -> bool {
    let Some(name) = host_name(host) else {
        return false;
    };
    // A name is never bracketed (`[localhost]` is neither name nor address).
    let named = |n: &str| !host.starts_with('[') && n.eq_ignore_ascii_case(name);
    if named("localhost") || admin.allowed_hosts.iter().any(|h| named(h)) {
        return true;
    }
    let Ok(ip) = name.parse::<IpAddr>() else {
        return false;
    };
    let ip = ip.to_canonical();
    let own = |addr: SocketAddr| {
        let a = addr.ip().to_canonical();
        !a.is_unspecified() && a == ip
    };
    ip.is_loopback() || own(admin.listen) || local.is_some_and(own)
}

/// The host of a `Host` value without its port (and brackets); None when
/// it is not of that form.
fn host_name(host: &str) -> Option<&str> {
    let port_ok = |p: &str| p.is_empty() || p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        let port = match after {
            "" => "",
            _ => after.strip_prefix(':')?,
        };
        return port_ok(port).then_some(inner);
    }
    let (name, port) = host.split_once(':').unwrap_or((host, ""));
    (!name.is_empty() && port_ok(port)).then_some(name)
}

/// The 401 answer when `req` lacks `Bearer <token>`.
fn unauthorized<B>(req: &Request<B>, token: &str) -> Option<http::Response<Body>> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer(v.as_bytes()));
    match given {
        Some(given) if constant_time_eq(given, token.as_bytes()) => None,
        Some(_) => Some(challenge(
            "the admin token is wrong",
            "Bearer realm=\"kaname admin\", error=\"invalid_token\"",
        )),
        None => Some(challenge(
            "this admin endpoint needs Authorization: Bearer <admin.token>",
            "Bearer realm=\"kaname admin\"",
        )),
    }
}

fn challenge(message: &str, www_authenticate: &'static str) -> http::Response<Body> {
    let mut res = ErrorKind::Unauthenticated.response(message, false);
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(www_authenticate),
    );
    res
}

/// The credentials of `Bearer <credentials>` (scheme in any case).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|b| *b != b' ')?;
    Some(&rest[start..])
}

/// Equal bytes, in time that depends on the lengths only (never on where
/// the first difference is).
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(!*e);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9901);

    fn admin(listen: &str, token: Option<&str>) -> Admin {
        Admin {
            listen: listen.parse().unwrap(),
            token: token.map(str::to_string),
            header_timeout: Admin::DEFAULT_HEADER_TIMEOUT,
            allowed_hosts: Vec::new(),
        }
    }

    fn allowed(host: &str, listen: SocketAddr, local: Option<SocketAddr>) -> bool {
        let mut a = admin("127.0.0.1:1", None);
        a.listen = listen;
        host_allowed(host, &a, local)
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn status(r: Option<http::Response<Body>>) -> u16 {
        r.map_or(200, |res| res.status().as_u16())
    }

    #[test]
    fn hosts() {
        let local = Some("10.1.2.3:9901".parse().unwrap());
        for ok in [
            "localhost",
            "LOCALHOST:9901",
            "127.0.0.1",
            "127.0.0.1:9901",
            "127.8.9.10:1",
            "[::1]",
            "[::1]:9901",
            "[::ffff:127.0.0.1]:9901",
            "10.1.2.3:9901",
        ] {
            assert!(allowed(ok, LISTEN, local), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9901",
            "localhost.evil.example",
            "foo.localhost",
            "10.1.2.4:9901",
            "0.0.0.0:9901",
            "127.0.0.1:99x",
            "::1",
            "[::1",
            "[::1]x",
            "[localhost]",
            "",
            ":9901",
            "2130706433",
        ] {
            assert!(!allowed(bad, LISTEN, local), "{bad}");
        }
        // The listen address itself, when it is a specific one.
        let listen: SocketAddr = "192.168.1.5:9901".parse().unwrap();
        assert!(allowed("192.168.1.5:9901", listen, None));
        assert!(!allowed("0.0.0.0", "0.0.0.0:9901".parse().unwrap(), None));
    }

    #[test]
    fn allowed_hosts() {
        let mut a = admin("0.0.0.0:9901", None);
        a.allowed_hosts = vec!["orders".into(), "orders.shop.svc".into()];
        for ok in [
            "orders",
            "orders:9901",
            "ORDERS:1",
            "Orders.Shop.Svc",
            "localhost",
        ] {
            assert!(host_allowed(ok, &a, None), "{ok}");
        }
        for bad in [
            "payments:9901",
            "orders.evil.example",
            "evil.orders",
            "ordersx",
            "orders.",
            "[orders]",
            "orders:x",
            "orders:9901:1",
        ] {
            assert!(!host_allowed(bad, &a, None), "{bad}");
        }
        let r = |host| {
            status(refusal(
                &req("GET", "/metrics", &[("host", host)]),
                &a,
                None,
            ))
        };
        assert_eq!(r("orders:9901"), 200);
        assert_eq!(r("payments:9901"), 403);
    }

    #[test]
    fn requests() {
        let a = admin("127.0.0.1:9901", None);
        let h = |v| ("host", v);
        assert_eq!(
            status(refusal(
                &req("GET", "/metrics", &[h("localhost")]),
                &a,
                None
            )),
            200
        );
        assert_eq!(
            status(refusal(
                &req("GET", "/metrics", &[h("evil.example")]),
                &a,
                None
            )),
            403
        );
        assert_eq!(status(refusal(&req("GET", "/metrics", &[]), &a, None)), 400);
        assert_eq!(
            status(refusal(
                &req("GET", "/metrics", &[h("localhost"), h("localhost")]),
                &a,
                None
            )),
            400
        );
        // An absolute-form target names the host too.
        assert_eq!(
            status(refusal(
                &req("GET", "http://evil.example/metrics", &[h("localhost")]),
                &a,
                None
            )),
            403
        );
        let origin = ("origin", "http://evil.example");
        assert_eq!(
            status(refusal(
                &req("POST", "/reload", &[h("localhost"), origin]),
                &a,
                None
            )),
            403
        );
        assert_eq!(
            status(refusal(
                &req("GET", "/config", &[h("localhost"), origin]),
                &a,
                None
            )),
            200
        );
        assert_eq!(
            status(refusal(
                &req("POST", "/reload", &[h("localhost")]),
                &a,
                None
            )),
            200
        );
    }

    #[test]
    fn token() {
        let a = admin("0.0.0.0:9901", Some("s3cr3t-token"));
        let h = ("host", "localhost");
        for path in ["/metrics", "/config", "/nope"] {
            let r = refusal(&req("GET", path, &[h]), &a, None).expect("refused");
            assert_eq!(r.status(), 401, "{path}");
            assert_eq!(
                r.headers()["www-authenticate"],
                "Bearer realm=\"kaname admin\""
            );
        }
        assert_eq!(
            status(refusal(&req("POST", "/reload", &[h]), &a, None)),
            401
        );
        for path in ["/live", "/ready"] {
            assert_eq!(
                status(refusal(&req("GET", path, &[h]), &a, None)),
                200,
                "{path}"
            );
        }
        for good in ["Bearer s3cr3t-token", "bearer  s3cr3t-token"] {
            let r = req("GET", "/metrics", &[h, ("authorization", good)]);
            assert_eq!(status(refusal(&r, &a, None)), 200, "{good}");
        }
        for bad in [
            "Bearer s3cr3t-toke",
            "Bearer s3cr3t-token2",
            "Basic s3cr3t-token",
            "s3cr3t-token",
            "Bearer ",
        ] {
            let r = req("GET", "/metrics", &[h, ("authorization", bad)]);
            assert_eq!(status(refusal(&r, &a, None)), 401, "{bad}");
        }
    }

    #[test]
    fn equal_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abd", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
        assert!(constant_time_eq(b"", b""));
    }
}
