use super::*;

use http::HeaderValue;

fn otlp(sampling: f64, max_queue: usize) -> kaname_config::Tracing {
    kaname_config::Tracing {
        start_traces: true,
        otlp: Some(Otlp {
            // Nothing listens there: exports fail, which these tests do
            // not wait for.
            endpoint: "http://127.0.0.1:9".into(),
            protocol: kaname_config::OtlpProtocol::Grpc,
            headers: vec![],
            timeout: Duration::from_millis(100),
            service_name: "kaname".into(),
            resource: vec![],
            sampling,
            max_queue,
        }),
    }
}

fn with_traceparent(v: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("traceparent", HeaderValue::from_static(v));
    h
}

const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const UNSAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";

#[test]
fn nothing_to_do_builds_nothing() {
    let m = Metrics::new();
    let off = kaname_config::Tracing::default();
    assert!(Tracing::build(&off, &m).unwrap().is_none());
}

#[test]
fn propagation_only_keeps_a_valid_header_and_starts_a_missing_one() {
    let m = Metrics::new();
    let cfg = kaname_config::Tracing {
        start_traces: true,
        otlp: None,
    };
    let t = Tracing::build(&cfg, &m).unwrap().unwrap();
    assert!(!t.records());
    let mut h = with_traceparent(SAMPLED);
    let Started::Ids(ids) = t.start(&mut h) else {
        panic!("ids")
    };
    assert_eq!(ids.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(ids.span_id, None, "no span recorded here");
    assert_eq!(h["traceparent"], SAMPLED);

    for mut h in [HeaderMap::new(), with_traceparent("00-zz-11-01")] {
        let Started::Ids(ids) = t.start(&mut h) else {
            panic!("a new trace")
        };
        let made = h["traceparent"].to_str().unwrap().to_owned();
        assert!(made.contains(&ids.trace_id.to_string()), "{made}");
        assert!(made.ends_with("-01"), "{made}");
    }

    let cfg = kaname_config::Tracing::default();
    let passing = Tracing {
        config: cfg,
        recorder: None,
    };
    assert!(matches!(
        passing.start(&mut HeaderMap::new()),
        Started::Untraced
    ));
}

#[tokio::test]
async fn parent_based_sampling_and_what_the_upstream_is_sent() {
    let m = Metrics::new();
    let never = Tracing::build(&otlp(0.0, 16), &m).unwrap().unwrap();
    // A caller's "not sampled" goes on unchanged.
    let mut h = with_traceparent(UNSAMPLED);
    assert!(matches!(never.start(&mut h), Started::Ids(_)));
    assert_eq!(h["traceparent"], UNSAMPLED);
    // A new trace at ratio 0: its ids go on, flagged not sampled.
    let mut h = HeaderMap::new();
    let Started::Ids(ids) = never.start(&mut h) else {
        panic!("not recorded")
    };
    let sent = h["traceparent"].to_str().unwrap();
    assert!(sent.starts_with(&format!("00-{}-", ids.trace_id)), "{sent}");
    assert!(sent.ends_with("-00"), "{sent}");
    // A caller's "sampled" is recorded even at ratio 0.
    let mut h = with_traceparent(SAMPLED);
    let Started::Recorded(mut server) = never.start(&mut h) else {
        panic!("recorded")
    };
    assert_eq!(
        server.ids.trace_id.to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    // Each try: its own span id in the header, numbered.
    let endpoint = crate::upstream::Endpoint::new("127.0.0.1:8080".parse().unwrap());
    let app: Arc<str> = "app".into();
    let mut first = HeaderMap::new();
    let mut second = HeaderMap::new();
    let a = server
        .trace
        .start_try(&mut first, &Method::GET, &app, &endpoint);
    let b = server
        .trace
        .start_try(&mut second, &Method::GET, &app, &endpoint);
    assert_ne!(first["traceparent"], second["traceparent"]);
    assert_eq!(server.trace.0.attempts.load(Ordering::Relaxed), 2);
    let server_span = server.ids.span_id.unwrap().to_string();
    assert!(!first["traceparent"]
        .to_str()
        .unwrap()
        .contains(&server_span));
    a.end();
    b.end();
    server.answered(StatusCode::OK, &HeaderMap::new());
    server.end();
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_never_waits() {
    let m = Metrics::new();
    let t = Tracing::build(&otlp(1.0, 2), &m).unwrap().unwrap();
    // The export task cannot run before this test yields (one thread):
    // two spans fit, the other three are dropped at once.
    for _ in 0..5 {
        let Started::Recorded(s) = t.start(&mut HeaderMap::new()) else {
            panic!("recorded")
        };
        s.end();
    }
    let full = m
        .tracing_spans_dropped_total
        .with_label_values(&["queue_full"])
        .get();
    assert_eq!(full, 3);
}

#[test]
fn words_of_spans() {
    assert_eq!(host_of("example.com:8080"), "example.com");
    assert_eq!(host_of("example.com"), "example.com");
    assert_eq!(host_of("[::1]:80"), "::1");
    assert_eq!(method_name(&Method::POST), "POST");
    let odd = Method::from_bytes(b"PURGE").unwrap();
    assert_eq!(method_name(&odd), "HTTP", "span names stay few");
    assert_eq!(method_value(&odd), Value::from("_OTHER"));
    assert_eq!(version_word(http::Version::HTTP_2), "2");
}

#[test]
fn ratio_sampling_follows_the_trace_id() {
    let id = |low: u64| TraceId::from_bytes(((7u128 << 64) | u128::from(low)).to_be_bytes());
    assert!(!ratio_samples(0.0, id(0)), "ratio 0 samples nothing");
    assert!(
        ratio_samples(1.0, id(u64::MAX)),
        "ratio 1 samples everything"
    );
    assert!(
        ratio_samples(0.01, id(0)),
        "the lowest ids are sampled first"
    );
    assert!(!ratio_samples(0.01, id(u64::MAX)));
    // About the ratio over many random ids.
    let n = 20_000;
    let sampled = (0..n)
        .filter(|_| {
            ratio_samples(
                0.25,
                TraceId::from_bytes(rand::random::<u128>().to_be_bytes()),
            )
        })
        .count();
    assert!(
        (4_000..6_000).contains(&sampled),
        "{sampled} of {n} at 0.25"
    );
}
