//! The request's deadline: the route's `timeout` or the gRPC client's
//! `grpc-timeout`, whichever is sooner. It is put in the request
//! (`Deadline`, for the forwarder and breakers to tell a timeout from a
//! client going away) and enforced here: no answer by then is a 504
//! `upstream_timeout` — or the client's 408 while its body is still
//! arriving. A gRPC call's streamed answer is bounded too
//! (`grpc_deadline.rs`).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use kaname_filters::client_body::ClientBodyWatch;
use kaname_filters::context::Deadline;
use kaname_filters::{
    ready_call, Body, ErrorKind, ProxyError, RequestContext, RouteFuture, RouteService,
    UpstreamFailure,
};
use tokio::time::Instant;
use tower::{Layer, Service};

#[derive(Clone)]
pub struct DeadlineLayer {
    /// The route's `timeout`.
    pub timeout: Option<Duration>,
    pub upstream: Arc<str>,
}

#[derive(Clone)]
pub struct DeadlineService {
    inner: RouteService,
    layer: DeadlineLayer,
}

impl Layer<RouteService> for DeadlineLayer {
    type Service = DeadlineService;
    fn layer(&self, inner: RouteService) -> DeadlineService {
        DeadlineService {
            inner,
            layer: self.clone(),
        }
    }
}

impl Service<Request<Body>> for DeadlineService {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> RouteFuture {
        let grpc = RequestContext::grpc_of(&req);
        let grpc_deadline = grpc.then(|| grpc_timeout(req.headers())).flatten();
        let Some(limit) = self.layer.timeout.into_iter().chain(grpc_deadline).min() else {
            return self.inner.call(req);
        };
        let at = Instant::now() + limit;
        req.extensions_mut().insert(Deadline(at));
        let watch = ClientBodyWatch::of(req.extensions()).cloned();
        let upstream = self.layer.upstream.clone();
        let mut inner = self.inner.clone();
        Box::pin(async move {
            match tokio::time::timeout_at(at, ready_call(&mut inner, req)).await {
                Ok(Ok(res)) if grpc_deadline.is_some() => {
                    Ok(crate::grpc_deadline::bound(res, at, &upstream))
                }
                Ok(result) => result,
                // Cut while the client was still sending its body: the
                // client's doing, not the upstream's.
                Err(_) if watch.as_ref().is_some_and(ClientBodyWatch::incomplete) => {
                    Err(ProxyError::new(
                        ErrorKind::RequestTimeout,
                        format!("request body still arriving after {limit:?}"),
                    ))
                }
                Err(_) => Err(ProxyError::upstream(
                    ErrorKind::UpstreamTimeout,
                    UpstreamFailure::Timeout,
                    format!("no response from upstream \"{upstream}\" within {limit:?}"),
                )),
            }
        })
    }
}

/// The `grpc-timeout` header as a duration (`1S`, `250m`, `100u`, ...).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (n, unit) = v.split_at(v.len() - 1);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            grpc_timeout(&m)
        };
        assert_eq!(h("1S"), Some(Duration::from_secs(1)));
        assert_eq!(h("250m"), Some(Duration::from_millis(250)));
        assert_eq!(h("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(h("5"), None);
        assert_eq!(h("1000000000S"), None, "more than 8 digits");
        assert_eq!(h("1x"), None);
    }
}
