//! Whole-file tests: the contract's full example, one-pass errors,
//! cross-checks, redaction, odd input.

use std::time::Duration;

use super::*;

const FULL: &str = include_str!("../testdata/full.yaml");

fn env(name: &str) -> Option<String> {
    match name {
        "JWT_SECRET" => Some("s3cr3t-value-of-at-least-32-bytes".into()),
        "PORT" => Some("8081".into()),
        _ => None,
    }
}

fn ok(text: &str) -> Config {
    parse_with_env("kaname.yaml", text, &env).unwrap_or_else(|e| panic!("{e}"))
}

fn errors(text: &str) -> String {
    match parse_with_env("kaname.yaml", text, &env) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn full_example_parses() {
    let cfg = ok(FULL);
    assert_eq!(cfg.admin.listen.to_string(), "127.0.0.1:9901");
    assert_eq!(cfg.shutdown_grace, Duration::from_secs(30));
    assert_eq!(cfg.log.format, LogFormat::Json);
    let names: Vec<_> = cfg.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["inbound", "outbound"]);
    let inbound = &cfg.listeners[0];
    assert_eq!(inbound.max_request_body, Some(10 << 20));
    let tls = inbound.tls.as_ref().unwrap();
    assert_eq!(tls.client_ca.as_deref(), Some("/etc/kaname/tls/ca.crt"));
    assert_eq!(
        tls.allowed_identities,
        ["spiffe://cluster.local/ns/shop/sa/web"]
    );
    let r = &inbound.routes[0];
    assert_eq!(r.name, "orders-api");
    assert_eq!(
        r.matcher.methods,
        Some(vec!["GET".to_string(), "POST".to_string()])
    );
    assert_eq!(
        r.matcher.headers,
        vec![("x-api-version".to_string(), "2".to_string())]
    );
    assert_eq!(r.filters, ["auth", "per-user", "retries", "breaker"]);
    assert_eq!(r.timeout, Some(Duration::from_secs(2)));
    assert_eq!(cfg.listeners[1].routes[0].name, "outbound-1");
    let orders = cfg.upstream("orders").unwrap();
    assert_eq!(
        orders.endpoints,
        [Endpoint {
            host: "127.0.0.1".into(),
            port: 3000
        }]
    );
    assert_eq!(orders.health_check.as_ref().unwrap().path, "/healthz");
    let payments = cfg.upstream("payments").unwrap();
    assert_eq!(
        payments.tls.as_ref().unwrap().server_name.as_deref(),
        Some("payments.shop.svc")
    );
    assert_eq!(cfg.filters.len(), 5);
    let FilterKind::Jwt(jwt) = &cfg.filter("auth").unwrap().kind else {
        panic!()
    };
    assert_eq!(
        jwt.forward_claims[1],
        ("scope".to_string(), "x-user-scope".to_string())
    );
    assert_eq!(
        jwt.jwks,
        Some(JwksSource::File("/etc/kaname/jwks.json".into()))
    );
    let FilterKind::Retry(retry) = &cfg.filter("retries").unwrap().kind else {
        panic!()
    };
    assert_eq!(retry.per_try_timeout, Some(Duration::from_millis(500)));
    let FilterKind::CircuitBreaker(b) = &cfg.filter("breaker").unwrap().kind else {
        panic!()
    };
    assert_eq!(b.failure_rate.as_ref().unwrap().min_requests, 20);
    let FilterKind::ConcurrencyLimit(c) = &cfg.filter("protect").unwrap().kind else {
        panic!()
    };
    assert_eq!((c.max_in_flight, c.max_queue), (64, 256));
    assert!(warnings(&cfg).is_empty());
}

#[test]
fn redacted_yaml_hides_secrets_and_reads_back() {
    let text = FULL
        .replace(
            "      # secret: ${JWT_SECRET}",
            "      secret: ${JWT_SECRET}",
        )
        .replace("      jwks: { file: /etc/kaname/jwks.json }", "")
        .replace("[RS256, ES256]", "[HS256]");
    let cfg = ok(&text);
    let FilterKind::Jwt(jwt) = &cfg.filter("auth").unwrap().kind else {
        panic!()
    };
    assert_eq!(
        jwt.secret.as_deref(),
        Some("s3cr3t-value-of-at-least-32-bytes")
    );
    let y = &cfg.redacted_yaml;
    assert!(!y.contains("s3cr3t"), "{y}");
    assert!(!y.contains("tls.key"), "{y}");
    assert!(y.contains("secret: \"<redacted>\""), "{y}");
    // `<redacted>` is too short for an HS256 secret (RFC 7518 §3.2): put a
    // long enough one back to read the rest of the file again.
    let back = ok(&y.replace(
        "secret: \"<redacted>\"",
        "secret: \"<redacted>-placeholder-of-32-bytes-or-more\"",
    ));
    assert_eq!(
        back.listeners,
        cfg.listeners
            .iter()
            .cloned()
            .map(|mut l| {
                if let Some(t) = &mut l.tls {
                    t.key = "<redacted>".into()
                }
                l
            })
            .collect::<Vec<_>>()
    );
}

const SMALL: &str = "\
listeners:
  main:
    listen: 127.0.0.1:${PORT}
    routes:
      - match: { path_prefix: / }
        upstream: app
        filters: &chain [auth, limit]
      - upstream: app
        filters: *chain
upstreams:
  app: { endpoints: [127.0.0.1:3000] }
filters:
  auth: { jwt: { secret: small-config-secret-of-32-bytes!, algorithms: [HS256] } }
  limit: { rate_limit: { key: jwt:sub, rate: 10/s } }
";

#[test]
fn anchors_env_and_defaults() {
    let cfg = ok(SMALL);
    let l = &cfg.listeners[0];
    assert_eq!(l.listen.to_string(), "127.0.0.1:8081");
    assert_eq!(l.routes[1].name, "main-2");
    assert_eq!(l.routes[1].filters, ["auth", "limit"]);
    assert!(cfg.redacted_yaml.contains("listen: \"<redacted>\""));
    let u = cfg.upstream("app").unwrap();
    assert_eq!(
        (u.protocol, u.load_balancing),
        (UpstreamProtocol::Http1, LoadBalancing::P2cEwma)
    );
    assert_eq!(u.connect_timeout, Duration::from_secs(1));
}

#[test]
fn all_errors_in_one_pass_sorted() {
    let text = SMALL
        .replace("[auth, limit]", "[limit, auht]")
        .replace(
            "upstream: app\n        filters: &",
            "upstream: ap\n        filters: &",
        )
        .replace("${PORT}", "${NOPE}")
        .replace("rate: 10/s", "rate: 10/s, burst: lots")
        + "  retries: { retry: { atempts: 2 } }\n";
    assert_eq!(
        errors(&text),
        "kaname.yaml:3:13: environment variable \"NOPE\" is not set and has no default\n\
         kaname.yaml:6:19: route \"main-1\" names unknown upstream \"ap\"; did you mean \"app\"?\n\
         kaname.yaml:7:26: rate_limit filter \"limit\" keys on jwt:sub but route \"main-1\" has no jwt filter before it\n\
         kaname.yaml:7:26: rate_limit filter \"limit\" keys on jwt:sub but route \"main-2\" has no jwt filter before it\n\
         kaname.yaml:7:33: route \"main-1\" names unknown filter \"auht\"; did you mean \"auth\"?\n\
         kaname.yaml:7:33: route \"main-2\" names unknown filter \"auht\"; did you mean \"auth\"?\n\
         kaname.yaml:14:59: expected a whole number, found \"lots\"\n\
         kaname.yaml:15:23: unknown key \"atempts\" in retry filter \"retries\"; did you mean \"attempts\"?"
    );
}

#[test]
fn addresses_must_differ() {
    let text = "\
admin: { listen: 127.0.0.1:9000 }
listeners:
  a: { listen: 0.0.0.0:9000, routes: [{upstream: u}] }
  b: { listen: 127.0.0.1:8000, routes: [{upstream: u}] }
  c: { listen: 127.0.0.1:8000, routes: [{upstream: u}] }
  d: { listen: 127.0.0.1:0, routes: [{upstream: u}] }
  e: { listen: 127.0.0.1:0, routes: [{upstream: u}] }
upstreams: { u: { endpoints: [a:1] } }
";
    assert_eq!(
        errors(text),
        "kaname.yaml:3:16: listener \"a\" listens on 0.0.0.0:9000, already used by admin\n\
         kaname.yaml:5:16: listener \"c\" listens on 127.0.0.1:8000, already used by listener \"b\""
    );
}

#[test]
fn unsupported_and_duplicates() {
    let text = "\
listeners:
  a: { listen: 127.0.0.1:1, routes: [{name: r, upstream: u}] }
  a: { listen: 127.0.0.1:2, routes: [{name: r, upstream: u}] }
upstreams: { u: { endpoints: [a:1] } }
";
    assert_eq!(
        errors(text),
        "kaname.yaml:3:3: duplicate key \"a\" in listeners"
    );
}

#[test]
fn warns_about_grpc_to_http1() {
    let text = "\
listeners:
  a: { listen: 127.0.0.1:1, routes: [{name: g, match: {path_prefix: /shop.Orders/}, upstream: u}] }
upstreams: { u: { endpoints: [a:1] } }
";
    assert_eq!(
        warnings(&ok(text)),
        ["route \"g\" can receive gRPC but upstream \"u\" is http1; gRPC needs protocol: http2"]
    );
}

#[test]
fn warns_about_a_breaker_outside_a_retry() {
    let route = |filters: &str| {
        format!(
            "\
listeners:
  a: {{ listen: 127.0.0.1:1, routes: [{{name: r, upstream: u, filters: [{filters}]}}] }}
upstreams: {{ u: {{ endpoints: [a:1] }} }}
filters:
  tries: {{ retry: {{}} }}
  cb: {{ circuit_breaker: {{ consecutive_failures: 5 }} }}
"
        )
    };
    assert_eq!(
        warnings(&ok(&route("cb, tries"))),
        ["route \"r\" lists circuit_breaker \"cb\" before retry \"tries\": the breaker then counts one outcome per request, not per try, and opens late while the retries go on; list the retry first (filters: [tries, cb])"]
    );
    assert!(warnings(&ok(&route("tries, cb"))).is_empty());
}

#[test]
fn missing_file() {
    let e = load("/nonexistent/kaname.yaml").unwrap_err();
    assert_eq!(
        e.to_string(),
        "/nonexistent/kaname.yaml: cannot read /nonexistent/kaname.yaml: No such file or directory (name the config file with -c FILE or $KANAME_CONFIG)"
    );
}

#[test]
fn garbage_never_panics() {
    let odd = [
        "",
        "~",
        "---",
        "...",
        "[",
        "{",
        "]",
        "a: [",
        "\"unterminated",
        "- - - -",
        "? a\n: b",
        "!!binary x",
        "&a *a",
        "a: *b",
        "listeners: 5",
        "listeners: [1, 2]",
        "listeners: {a: 1}",
        "listeners: {a: {routes: 1}}",
        "listeners: {a: {routes: [1, null, [], {}]}}",
        "filters: {f: 1}",
        "filters: {f: {jwt: [1]}}",
        "upstreams: {u: {endpoints: [\":\", \"[\", \"]:1\", \"a:\", \"a:b:c\"]}}",
        "\u{0}",
        "\t",
        "a:\n\tb: 1",
        "{? [a]: b}",
        "listeners: {a: {listen: \"${\", routes: []}}",
        "<<: [1]",
        "{<<: {a: 1}}",
        "listeners:\n  x:\n    listen: 1.2.3.4:99999\n",
        "log: {level: [x]}",
        "shutdown_grace: 99999999999999999999h",
        "filters: {r: {rate_limit: {key: \"header:\", rate: \"4294967296/s\"}}}",
        "filters: {c: {circuit_breaker: {failure_rate: {threshold: .nan}}}}",
    ];
    for text in odd {
        let result = std::panic::catch_unwind(|| parse_with_env("f", text, &env));
        assert!(result.is_ok(), "panicked on {text:?}");
    }
    // Deep nesting stops at the parser's recursion limit, not the stack.
    let deep = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(parse_with_env("f", &deep, &env).is_err());
    let deep_map: String = (0..2000)
        .map(|i| format!("{}k:\n", "  ".repeat(i)))
        .collect();
    assert!(parse_with_env("f", &deep_map, &env).is_err());
    // Lots of random YAML punctuation.
    const JUNK: &[u8] = b"ab:- []{}&*!|>'\"\n#%@`,?~";
    let mut x: u32 = 7;
    for _ in 0..200 {
        let bytes: String = (0..64)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                char::from(JUNK[(x >> 16) as usize % JUNK.len()])
            })
            .collect();
        let _ = parse_with_env("f", &bytes, &env);
    }
}

#[test]
fn tracing_start_traces_is_off_by_default_and_checked() {
    let base = "listeners:\n  l:\n    listen: 127.0.0.1:1\n    routes:\n      - upstream: u\nupstreams:\n  u:\n    endpoints: [127.0.0.1:2]\n";
    assert!(!ok(base).tracing.start_traces);
    assert!(
        ok(&format!("tracing: {{ start_traces: true }}\n{base}"))
            .tracing
            .start_traces
    );
    let e = errors(&format!("tracing: {{ start_trace: true }}\n{base}"));
    assert!(e.contains("kaname.yaml:1:12"), "{e}");
    assert!(e.contains("start_traces"), "did-you-mean: {e}");
}

#[test]
fn tracing_otlp_defaults_and_errors() {
    let base = "listeners:\n  l:\n    listen: 127.0.0.1:1\n    routes:\n      - upstream: u\nupstreams:\n  u:\n    endpoints: [127.0.0.1:2]\n";
    let t = ok(&format!(
        "tracing: {{ otlp: {{ endpoint: \"http://127.0.0.1:4317\" }} }}\n{base}"
    ))
    .tracing;
    assert!(t.start_traces, "on by default with otlp");
    let o = t.otlp.unwrap();
    assert_eq!(o.protocol, OtlpProtocol::Grpc);
    assert_eq!(o.timeout, Duration::from_secs(5));
    assert_eq!(o.service_name, "kaname");
    assert_eq!(o.sampling, 1.0);
    assert_eq!(o.max_queue, 2048);
    let t = ok(&format!(
        "tracing:\n  start_traces: false\n  otlp:\n    endpoint: http://c:4318\n    protocol: http/protobuf\n    headers: {{ X-Tenant: a }}\n{base}"
    ))
    .tracing;
    assert!(!t.start_traces);
    let o = t.otlp.unwrap();
    assert_eq!(o.endpoint, "http://c:4318/v1/traces", "the standard path");
    assert_eq!(o.headers, [("x-tenant".to_string(), "a".to_string())]);

    // `at` is the text the error points at.
    for (otlp, at, says) in [
        ("{ endpoint: c:4317 }", "c:4317", "http:// or https://"),
        (
            "{ endpoint: \"http://c:4317/v1/traces\" }",
            "\"http",
            "no path",
        ),
        (
            "{ endpoint: \"http://u:p@c:4317\" }",
            "\"http",
            "no user-info",
        ),
        (
            "{ endpoint: \"http://c\", sampling: 2 }",
            "2",
            "ratio from 0 to 1",
        ),
        (
            "{ endpoint: \"http://c\", max_queue: 0 }",
            "0",
            "at least 1",
        ),
        (
            "{ endpoint: \"http://c\", protocol: http }",
            "http }",
            "http/protobuf",
        ),
        (
            "{ endpoint: \"http://c\", samplng: 1 }",
            "samplng",
            "did you mean \"sampling\"",
        ),
        (
            "{ sampling: 0.5 }",
            "{ sampling",
            "missing key \"endpoint\"",
        ),
        (
            "{ endpoint: \"http://c\", headers: { \"a b\": x } }",
            "\"a b",
            "invalid header name",
        ),
    ] {
        let line = format!("tracing: {{ otlp: {otlp} }}");
        let col = line.find(at).unwrap() + 1;
        let e = errors(&format!("{line}\n{base}"));
        assert!(e.contains(&format!("kaname.yaml:1:{col}:")), "{otlp}: {e}");
        assert!(e.contains(says), "{otlp}: {e}");
    }
}

#[test]
fn queue_routes_are_checked() {
    let base = "queues:\n  reports: { delivery: { concurrency: 2 } }\nfilters:\n  r: { retry: { attempts: 2 } }\n  b: { circuit_breaker: { consecutive_failures: 3 } }\nupstreams:\n  u:\n    endpoints: [127.0.0.1:2]\n";
    let cfg = ok(&format!(
        "{base}listeners:\n  l:\n    listen: 127.0.0.1:1\n    routes:\n      - {{ upstream: u, queue: reports }}\n"
    ));
    assert_eq!(cfg.listeners[0].routes[0].queue.as_deref(), Some("reports"));
    assert_eq!(cfg.queues[0].delivery.concurrency, 2);
    assert_eq!(cfg.data_dir, "./kaname-data");
    let e = errors(&format!(
        "{base}listeners:\n  l:\n    listen: 127.0.0.1:1\n    routes:\n      - {{ upstream: u, queue: report }}\n"
    ));
    assert!(
        e.contains("kaname.yaml:13:31: route \"l-1\" names unknown queue \"report\""),
        "{e}"
    );
    assert!(e.contains("did you mean \"reports\""), "{e}");
    let e = errors(&format!(
        "{base}listeners:\n  l:\n    listen: 127.0.0.1:1\n    routes:\n      - {{ upstream: u, queue: reports, filters: [r, b] }}\n"
    ));
    assert!(e.contains("kaname.yaml:13:50: route \"l-1\" hands requests to queue \"reports\": its retry filter"), "{e}");
    assert!(e.contains("its circuit_breaker filter \"b\""), "{e}");
    let e = errors(&format!("queues:\n  q: {{ store: shared }}\n{base}listeners:\n  l:\n    listen: 127.0.0.1:1\n    routes: [{{ upstream: u }}]\n").replacen("queues:\n  reports: { delivery: { concurrency: 2 } }\n", "", 1));
    assert!(
        e.contains(
            "kaname.yaml:2:15: unknown store \"shared\", neither local nor a name under stores"
        ),
        "{e}"
    );
}

#[test]
fn stores_are_read_checked_and_redacted() {
    let text = "\
stores:
  shared:
    redis:
      url: redis://:hunter2-password@redis.shop.svc:6380/1
      timeout: 20ms
listeners:
  a: { listen: 127.0.0.1:1, routes: [{ upstream: u, filters: [per-user] }] }
upstreams: { u: { endpoints: [a:1] } }
filters:
  per-user: { rate_limit: { key: client_ip, rate: 10/s, store: shared, on_store_error: deny } }
queues:
  q: { store: shared, visibility_timeout: 2m }
";
    let cfg = ok(text);
    let s = cfg.store("shared").expect("store");
    assert_eq!(
        (s.redis.host.as_str(), s.redis.port, s.redis.db),
        ("redis.shop.svc", 6380, 1)
    );
    assert_eq!(s.redis.timeout, Duration::from_millis(20));
    assert_eq!(s.redis.key_prefix, "kaname:");
    assert!(!format!("{s:?}").contains("hunter2"));
    let FilterKind::RateLimit(r) = &cfg.filter("per-user").expect("filter").kind else {
        panic!()
    };
    assert_eq!(r.store.as_deref(), Some("shared"));
    assert_eq!(r.on_store_error, store::OnStoreError::Deny);
    assert_eq!(cfg.queues[0].visibility_timeout, Duration::from_secs(120));
    assert!(
        !cfg.redacted_yaml.contains("hunter2"),
        "{}",
        cfg.redacted_yaml
    );
    assert!(
        cfg.redacted_yaml
            .contains("url: \"redis://<redacted>@redis.shop.svc:6380/1\""),
        "{}",
        cfg.redacted_yaml
    );

    let e = errors(&text.replace("store: shared, on", "store: shard, on"));
    assert!(
        e.contains("kaname.yaml:10:64: unknown store \"shard\", neither local nor a name under stores; did you mean \"shared\"?"),
        "{e}"
    );
    let e = errors(&text.replace(
        "redis://:hunter2-password@redis.shop.svc:6380/1",
        "http://:hunter2@x",
    ));
    assert!(
        e.contains("kaname.yaml:4:12: redis url \"http://<redacted>@x\": expected a redis:// or rediss:// URL"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
    let e = errors(&text.replace(":6380/1", ":6380/one"));
    assert!(e.contains("kaname.yaml:4:12: redis url"), "{e}");
    assert!(e.contains("the path is the database number"), "{e}");
}
