//! A queue route's terminal step: the request, as it would be forwarded,
//! stored as a job; `202 Accepted` only once the store says it is durable.
//!
//! Refused here, and not stored: a body over `max_body_bytes` (413), a
//! callback URL to a host the queue does not allow (400), an
//! `Idempotency-Key` reused for another request (422), a full queue (503
//! with `Retry-After`).

use std::sync::Arc;
use std::task::{Context, Poll};

use aws_lc_rs::digest;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kaname_config::types::PrioritySource;
use kaname_filters::body::declared_length;
use kaname_filters::claims::VerifiedClaims;
use kaname_filters::{Body, ErrorKind, ProxyError, RouteFuture};

use super::job::{now_ms, priority_of, Job, JobId, JobStatus, NORMAL};
use super::store::{Accepted, NewJob};
use super::QueueRuntime;

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The longest `Idempotency-Key` kept (a key is stored with its job).
const MAX_KEY: usize = 256;

/// The terminal service of a route with `queue:`.
#[derive(Clone)]
pub struct Enqueue {
    pub queue: Arc<QueueRuntime>,
    /// The route's upstream: where the job will be delivered.
    pub upstream: Arc<str>,
}

impl tower::Service<Request<Body>> for Enqueue {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> RouteFuture {
        let this = self.clone();
        Box::pin(async move { this.accept(req).await })
    }
}

impl Enqueue {
    async fn accept(&self, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let q = &self.queue.config;
        let max = q.max_body_bytes;
        let too_large = || {
            ProxyError::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "request body is larger than queue {:?}'s max_body_bytes ({max} bytes)",
                    q.name
                ),
            )
        };
        if declared_length(req.headers()).is_some_and(|n| n > max) {
            return Err(too_large());
        }
        let (parts, body) = req.into_parts();
        let body = match read_body(body, max).await {
            Ok(Some(b)) => b,
            Ok(None) => return Err(too_large()),
            Err(e) => {
                return Err(ProxyError::new(
                    ErrorKind::BadRequest,
                    format!("the request body could not be read: {e}"),
                ))
            }
        };
        let mut headers = parts.headers;
        let priority = match &q.priority {
            Some(PrioritySource::Header(h)) => headers
                .remove(h.as_str())
                .and_then(|v| v.to_str().ok().map(priority_of))
                .unwrap_or(NORMAL),
            Some(PrioritySource::Claim(c)) => parts
                .extensions
                .get::<VerifiedClaims>()
                .and_then(|claims| claims.get_str(c))
                .map_or(NORMAL, |v| priority_of(&v)),
            None => NORMAL,
        };
        let callback = match &q.callback {
            Some(cb) => match headers.remove(cb.header.as_str()) {
                Some(url) => Some(callback_url(&url, cb)?),
                None => None,
            },
            None => None,
        };
        let target = parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |pq| pq.as_str().to_string());
        let idempotency = match headers.remove(&IDEMPOTENCY_KEY) {
            Some(k) => {
                let key = k
                    .to_str()
                    .ok()
                    .filter(|k| !k.is_empty() && k.len() <= MAX_KEY);
                let Some(key) = key else {
                    return Err(ProxyError::new(
                        ErrorKind::BadRequest,
                        format!("Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters"),
                    ));
                };
                Some((
                    key.to_string(),
                    fingerprint(parts.method.as_str(), &target, &body),
                ))
            }
            None => None,
        };
        // What the body's framing was is the delivery's to set again.
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::TRANSFER_ENCODING);
        headers.remove(header::EXPECT);
        let now = now_ms();
        let job = Job {
            queue: q.name.clone(),
            upstream: self.upstream.to_string(),
            method: parts.method.as_str().to_string(),
            target,
            headers: stored(&headers),
            priority,
            seq: 0,
            due_ms: 0,
            created_ms: now,
            updated_ms: now,
            status: JobStatus::Queued,
            attempts: 0,
            result: None,
            error: None,
            callback,
            idempotency,
        };
        let id = JobId::random();
        let accepted = self
            .queue
            .store
            .accept(NewJob {
                id,
                job,
                body,
                max_depth: q.max_depth,
            })
            .await
            .map_err(|e| {
                match e {
                    // Said by the store itself, at most once a minute.
                    super::store::StoreError::Shared { .. } => {
                        tracing::debug!(queue = %q.name, error = %e, "storing a job failed")
                    }
                    _ => tracing::error!(queue = %q.name, error = %e, "storing a job failed"),
                }
                ProxyError::new(
                    ErrorKind::Overloaded,
                    format!("queue {:?} could not store the request", q.name),
                )
            })?;
        let c = &self.queue.counters;
        match accepted {
            Accepted::New { .. } => {
                c.accepted.inc();
                self.queue.wake.notify_one();
                Ok(answer(id, JobStatus::Queued))
            }
            Accepted::Duplicate { id, status } => {
                c.duplicate.inc();
                Ok(answer(id, status))
            }
            Accepted::Mismatch => Err(ProxyError::new(
                ErrorKind::IdempotencyMismatch,
                "this Idempotency-Key was used for another request (method, path or body differ)",
            )),
            Accepted::Full => {
                c.rejected_full.inc();
                Err(ProxyError::new(
                    ErrorKind::Overloaded,
                    format!(
                        "queue {:?} has {} jobs waiting (max_depth)",
                        q.name, q.max_depth
                    ),
                )
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("1")))
            }
        }
    }
}

/// The whole body, or None when it is longer than `max`.
async fn read_body(mut body: Body, max: u64) -> Result<Option<Bytes>, kaname_filters::BoxError> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if (out.len() + data.len()) as u64 > max {
                return Ok(None);
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Some(out.freeze()))
}

/// The callback URL, if its host is allowed: refused at acceptance, so a
/// caller cannot make kaname call an address of its choosing (SSRF).
fn callback_url(
    value: &HeaderValue,
    cb: &kaname_config::queue::Callback,
) -> Result<String, ProxyError> {
    let refuse = |why: &str| ProxyError::new(ErrorKind::CallbackNotAllowed, why.to_string());
    let text = value
        .to_str()
        .map_err(|_| refuse("the callback URL is not ASCII"))?;
    let uri: http::Uri = text
        .parse()
        .map_err(|_| refuse("the callback URL does not parse"))?;
    if !matches!(uri.scheme_str(), Some("http") | Some("https")) {
        return Err(refuse("the callback URL must be http:// or https://"));
    }
    let Some(authority) = uri.authority() else {
        return Err(refuse("the callback URL has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(refuse("the callback URL must not carry user-info"));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if !cb.allows(host) {
        return Err(refuse(
            "the callback URL's host is not in the queue's allowed_hosts",
        ));
    }
    Ok(text.to_string())
}

/// What makes two requests "the same" for an `Idempotency-Key`.
fn fingerprint(method: &str, target: &str, body: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(method.as_bytes());
    ctx.update(b"\0");
    ctx.update(target.as_bytes());
    ctx.update(b"\0");
    ctx.update(body);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

fn stored(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

/// `202 Accepted`, `Location` and the job JSON of the contract.
fn answer(id: JobId, status: JobStatus) -> Response<Body> {
    let url = format!("/.kaname/jobs/{id}");
    let body = serde_json::json!({
        "job": id.to_string(),
        "status": status.as_str(),
        "status_url": url,
    })
    .to_string();
    let mut res = Response::new(kaname_filters::body::full(body));
    *res.status_mut() = StatusCode::ACCEPTED;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&url) {
        h.insert(header::LOCATION, v);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cb() -> kaname_config::queue::Callback {
        kaname_config::queue::Callback {
            header: "x-callback-url".into(),
            allowed_hosts: vec!["hooks.svc".into(), "*.internal".into(), "10.0.0.1".into()],
            secret: "0123456789abcdef0123".into(),
            attempts: 1,
        }
    }

    #[test]
    fn callback_urls_to_other_hosts_are_refused() {
        let ok = |u: &'static str| callback_url(&HeaderValue::from_static(u), &cb());
        assert!(ok("http://hooks.svc/done").is_ok());
        assert!(ok("https://a.internal:8443/x").is_ok());
        assert!(ok("http://10.0.0.1/x").is_ok());
        for bad in [
            "http://169.254.169.254/latest/meta-data",
            "http://hooks.svc.evil.com/",
            "http://hooks.svc@evil.com/",
            "http://evil.com#@hooks.svc/",
            "file:///etc/passwd",
            "gopher://hooks.svc/",
            "/relative",
            "http://127.0.0.1/",
        ] {
            let e = ok(bad).expect_err(bad);
            assert_eq!(e.kind, ErrorKind::CallbackNotAllowed, "{bad}");
        }
    }

    #[test]
    fn a_fingerprint_covers_method_target_and_body() {
        let a = fingerprint("POST", "/r?x=1", b"body");
        assert_eq!(a, fingerprint("POST", "/r?x=1", b"body"));
        assert_ne!(a, fingerprint("PUT", "/r?x=1", b"body"));
        assert_ne!(a, fingerprint("POST", "/r?x=2", b"body"));
        assert_ne!(a, fingerprint("POST", "/r?x=1", b"bodY"));
        assert_ne!(
            fingerprint("POST", "/a", b"b/c"),
            fingerprint("POST", "/a\0b", b"/c")
        );
    }
}
