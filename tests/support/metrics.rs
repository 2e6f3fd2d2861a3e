//! Reading kaname's `/metrics`, and waiting for a sample to reach a value.
//!
//! Waits here are bounded polls for the event itself (the sample), never a
//! sleep standing in for it.

use std::time::{Duration, Instant};

use super::client::HttpClient;
use super::kaname::Kaname;

/// How long a wait for a sample may take.
pub const METRIC_DEADLINE: Duration = Duration::from_secs(10);
/// How often `/metrics` is read while waiting.
const METRIC_POLL: Duration = Duration::from_millis(20);

/// `GET /metrics` on the admin port, on a connection of its own (closed
/// after the answer: the admin port counts connections); asserts the 200.
pub async fn metrics(k: &Kaname) -> String {
    let res = HttpClient::http1_no_pool()
        .get(&k.admin_url("/metrics"))
        .await;
    assert_eq!(res.status, 200, "/metrics: {}", res.text());
    res.text()
}

/// `GET /metrics` with `Authorization: Bearer token` (`admin.token`);
/// asserts the 200.
pub async fn metrics_with_token(k: &Kaname, token: &str) -> String {
    let req = http::Request::get(k.admin_url("/metrics"))
        .header("authorization", format!("Bearer {token}"))
        .body(super::client::empty())
        .expect("request");
    let res = HttpClient::http1_no_pool().send(req).await;
    assert_eq!(res.status, 200, "/metrics: {}", res.text());
    res.text()
}

/// The sample `selector` now, 0 when it does not exist.
pub async fn metric(k: &Kaname, selector: &str) -> f64 {
    metric_value(&metrics(k).await, selector).unwrap_or(0.0)
}

/// `kaname_limits_hit_total{limit="…"}` now, 0 when it does not exist.
pub async fn limit_hits(k: &Kaname, limit: &str) -> f64 {
    metric(k, &format!("kaname_limits_hit_total{{limit=\"{limit}\"}}")).await
}

/// Polls `/metrics` until `done` holds for the sample `selector` (None when
/// it does not exist), at most `deadline`. Returns whether it held and the
/// last `/metrics` text, for the caller to assert on.
pub async fn poll_metric(
    k: &Kaname,
    selector: &str,
    deadline: Duration,
    done: impl Fn(Option<f64>) -> bool,
) -> (bool, String) {
    let start = Instant::now();
    loop {
        let text = metrics(k).await;
        if done(metric_value(&text, selector)) {
            return (true, text);
        }
        if start.elapsed() >= deadline {
            return (false, text);
        }
        tokio::time::sleep(METRIC_POLL).await;
    }
}

/// Waits (at most `METRIC_DEADLINE`) until the sample `selector` is `want`;
/// returns the `/metrics` text that showed it.
pub async fn wait_metric(k: &Kaname, selector: &str, want: f64) -> String {
    let (held, text) = poll_metric(k, selector, METRIC_DEADLINE, |v| v == Some(want)).await;
    assert!(
        held,
        "{selector} is {:?}, not {want}, {METRIC_DEADLINE:?} later",
        metric_value(&text, selector)
    );
    text
}

/// Waits (at most `deadline`) until the sample `selector` (0 when it does
/// not exist) is at least `min`; returns the `/metrics` text that showed it.
pub async fn wait_metric_at_least(
    k: &Kaname,
    selector: &str,
    min: f64,
    deadline: Duration,
) -> String {
    let (held, text) = poll_metric(k, selector, deadline, |v| v.unwrap_or(0.0) >= min).await;
    assert!(
        held,
        "{selector} is {:?}, not at least {min}, {deadline:?} later",
        metric_value(&text, selector)
    );
    text
}

/// Polls `cond` until it holds, at most `deadline`; whether it held.
pub async fn eventually(deadline: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond().await {
            return true;
        }
        if start.elapsed() >= deadline {
            return false;
        }
        tokio::time::sleep(METRIC_POLL).await;
    }
}

/// The value of the sample `selector` (`name` or `name{a="x",b="y"}`) in
/// Prometheus text, whatever the order of the labels; None when no sample
/// has exactly these labels.
pub fn metric_value(text: &str, selector: &str) -> Option<f64> {
    let (name, want) = match selector.split_once('{') {
        Some((name, labels)) => (name, parse_labels(labels.trim_end_matches('}'))),
        None => (selector, Vec::new()),
    };
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (got, value) = if let Some(inner) = rest.strip_prefix('{') {
            let Some((inner, value)) = inner.split_once('}') else {
                continue;
            };
            (parse_labels(inner), value)
        } else if rest.starts_with(' ') {
            (Vec::new(), rest)
        } else {
            continue; // a longer name sharing this prefix
        };
        if got == want {
            return value.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

fn parse_labels(inner: &str) -> Vec<(String, String)> {
    // Label values in these tests never hold `"` or `,`.
    let mut out: Vec<(String, String)> = inner
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect();
    out.sort();
    out
}
