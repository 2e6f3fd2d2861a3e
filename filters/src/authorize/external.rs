//! The external policy service of an `authorize` filter (authorization.md):
//! an OPA-shaped input POSTed as JSON, `{"result": …}` read back, within
//! `timeout`, its decisions kept for `cache`. The filter never opens a
//! socket: the proxy gives it a [`PolicyClient`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use kaname_config::authorize::{AuthzDecision, ExternalPolicy};
use prometheus::{Histogram, IntCounter};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::rules::Facts;

/// The answer of one call: its status and body, or why there is none.
pub type PolicyCall<'a> = Pin<Box<dyn Future<Output = Result<(u16, Bytes), String>> + Send + 'a>>;

/// Sends one decision request to the policy service.
pub trait PolicyClient: Send + Sync {
    /// POSTs `body` (JSON); the status and body of the answer.
    fn post(&self, body: Bytes) -> PolicyCall<'_>;
}

/// What the service said.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Allowed, with headers to add to the request.
    Allow(Vec<(HeaderName, HeaderValue)>),
    Deny,
}

/// Why the service gave no verdict (the `kind` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    Timeout,
    Status,
    Body,
    Connect,
}

impl CallError {
    pub const ALL: [CallError; 4] = [
        CallError::Timeout,
        CallError::Status,
        CallError::Body,
        CallError::Connect,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CallError::Timeout => "timeout",
            CallError::Status => "status",
            CallError::Body => "body",
            CallError::Connect => "connect",
        }
    }
}

/// Headers a policy answer may never set on a request: the request's
/// framing, routing and kaname's own.
const PROTECTED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "x-request-id",
];

/// Decisions kept at most (the cache is bounded whatever `cache` says).
const CACHE_ENTRIES: usize = 10_000;

pub struct External {
    client: Arc<dyn PolicyClient>,
    pub timeout: Duration,
    pub on_error: AuthzDecision,
    ttl: Duration,
    cache: quick_cache::sync::Cache<String, (Verdict, Instant)>,
    include_headers: Vec<HeaderName>,
    pub duration: Histogram,
    pub errors: [IntCounter; 4],
}

impl External {
    pub fn new(
        cfg: &ExternalPolicy,
        client: Arc<dyn PolicyClient>,
        duration: Histogram,
        errors: [IntCounter; 4],
    ) -> Self {
        External {
            client,
            timeout: cfg.timeout,
            on_error: cfg.on_error,
            ttl: cfg.cache,
            cache: quick_cache::sync::Cache::new(if cfg.cache.is_zero() {
                1
            } else {
                CACHE_ENTRIES
            }),
            include_headers: cfg
                .include_headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            duration,
            errors,
        }
    }

    /// The service's verdict for `facts` (cached), or why there is none.
    pub async fn decide(&self, f: &Facts<'_>, query: Option<&str>) -> Result<Verdict, CallError> {
        let key = (!self.ttl.is_zero()).then(|| self.cache_key(f));
        if let Some(k) = &key {
            if let Some((verdict, until)) = self.cache.get(k) {
                if Instant::now() < until {
                    return Ok(verdict);
                }
            }
        }
        let body = Bytes::from(self.input(f, query).to_string());
        let started = Instant::now();
        let answer = tokio::time::timeout(self.timeout, self.client.post(body)).await;
        self.duration.observe(started.elapsed().as_secs_f64());
        let verdict = match answer {
            Err(_) => Err(CallError::Timeout),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "policy service unreachable");
                Err(CallError::Connect)
            }
            Ok(Ok((200, body))) => parse(&body).ok_or(CallError::Body),
            Ok(Ok((status, _))) => {
                tracing::debug!(status, "policy service answered an error status");
                Err(CallError::Status)
            }
        };
        match (&verdict, key) {
            (Ok(v), Some(k)) => self.cache.insert(k, (v.clone(), Instant::now() + self.ttl)),
            (Err(e), _) => {
                if let Some(i) = CallError::ALL.iter().position(|x| x == e) {
                    self.errors[i].inc();
                }
            }
            _ => {}
        }
        verdict
    }

    /// (method, path, identity, subject) as the contract says, and the
    /// headers the service is sent, since its answer may depend on them.
    fn cache_key(&self, f: &Facts<'_>) -> String {
        let sub = f
            .claims
            .and_then(|c| c.get("sub"))
            .map(Value::to_string)
            .unwrap_or_default();
        let mut key = format!(
            "{}\u{0}{}\u{0}{}\u{0}{}",
            f.method,
            f.path,
            f.identities.first().map_or("", String::as_str),
            sub
        );
        for h in &self.include_headers {
            key.push('\u{0}');
            for v in f.headers.get_all(h) {
                key.push_str(v.to_str().unwrap_or(""));
                key.push('\u{1}');
            }
        }
        key
    }

    fn input(&self, f: &Facts<'_>, query: Option<&str>) -> Value {
        let headers: serde_json::Map<String, Value> = self
            .include_headers
            .iter()
            .filter_map(|h| {
                let v = f.headers.get(h)?.to_str().ok()?;
                Some((h.as_str().to_owned(), Value::from(v)))
            })
            .collect();
        json!({ "input": {
            "method": f.method.as_str(),
            "path": f.path,
            "query": query.unwrap_or(""),
            "host": f.host,
            "identity": f.identities.first(),
            "claims": f.claims,
            "source_ip": f.source_ip.map(|ip| ip.to_string()),
            "headers": headers,
        }})
    }
}

/// `{"result": true}`, `{"result": false}` or no result, or
/// `{"result": {"allow": bool, "headers": {..}}}`; None for anything else.
fn parse(body: &[u8]) -> Option<Verdict> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let result = v.as_object()?.get("result");
    Some(match result {
        None | Some(Value::Null) | Some(Value::Bool(false)) => Verdict::Deny,
        Some(Value::Bool(true)) => Verdict::Allow(Vec::new()),
        Some(Value::Object(o)) => match o.get("allow") {
            Some(Value::Bool(true)) => Verdict::Allow(added_headers(o.get("headers"))?),
            Some(Value::Bool(false)) | None => Verdict::Deny,
            Some(_) => return None,
        },
        Some(_) => return None,
    })
}

fn added_headers(v: Option<&Value>) -> Option<Vec<(HeaderName, HeaderValue)>> {
    let Some(v) = v else { return Some(Vec::new()) };
    let mut out = Vec::new();
    for (name, value) in v.as_object()? {
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        if PROTECTED.contains(&name.as_str()) {
            tracing::warn!(header = %name, "policy service asked to set a protected header; ignored");
            continue;
        }
        out.push((name, HeaderValue::from_str(value.as_str()?).ok()?));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_of_the_data_api() {
        assert_eq!(parse(br#"{"result": true}"#), Some(Verdict::Allow(vec![])));
        assert_eq!(parse(br#"{"result": false}"#), Some(Verdict::Deny));
        assert_eq!(parse(br#"{}"#), Some(Verdict::Deny), "undefined is a deny");
        let v =
            parse(br#"{"result": {"allow": true, "headers": {"x-tenant": "t1", "host": "evil"}}}"#);
        assert_eq!(
            v,
            Some(Verdict::Allow(vec![(
                HeaderName::from_static("x-tenant"),
                HeaderValue::from_static("t1")
            )]))
        );
        assert_eq!(
            parse(br#"{"result": {"allow": false}}"#),
            Some(Verdict::Deny)
        );
        assert_eq!(parse(b"not json"), None);
        assert_eq!(parse(br#"{"result": "yes"}"#), None);
        assert_eq!(parse(br#"[true]"#), None);
    }
}
