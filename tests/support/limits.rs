//! Helpers for the rate_limit and concurrency_limit tests: a slow upstream
//! that counts how many requests it holds at once, and a bounded,
//! concurrent request runner.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::task::JoinHandle;

use super::client::{full, Body};
use super::net::{accept_each, bind_loopback};

#[derive(Default)]
struct Counts {
    now: AtomicUsize,
    max: AtomicUsize,
    hits: AtomicUsize,
}

/// An upstream answering every request after `delay`, counting the
/// requests it holds at once (the most ever is `max_concurrent`).
pub struct CountingUpstream {
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

impl CountingUpstream {
    pub async fn start(delay: Duration) -> CountingUpstream {
        let listener = bind_loopback("counting upstream").await;
        let addr = listener.local_addr().expect("upstream addr");
        let counts = Arc::new(Counts::default());
        let accept_counts = counts.clone();
        let task = accept_each(listener, move |stream| {
            let counts = accept_counts.clone();
            async move {
                let svc = service_fn(move |req| answer(counts.clone(), delay, req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
        });
        CountingUpstream { addr, counts, task }
    }

    /// The most requests held at once so far.
    pub fn max_concurrent(&self) -> usize {
        self.counts.max.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.counts.hits.load(Ordering::SeqCst)
    }
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Decrements the count however the handler ends (a dropped connection
/// cancels it mid-sleep).
struct Inside(Arc<Counts>);

impl Drop for Inside {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn answer(
    counts: Arc<Counts>,
    delay: Duration,
    _req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    counts.hits.fetch_add(1, Ordering::SeqCst);
    let n = counts.now.fetch_add(1, Ordering::SeqCst) + 1;
    counts.max.fetch_max(n, Ordering::SeqCst);
    let inside = Inside(counts);
    tokio::time::sleep(delay).await;
    drop(inside);
    Ok(Response::new(full("ok")))
}

/// `admin:`-less kaname config: listener `main` on a port the kernel picks,
/// one catch-all route `main-1` to upstream `up` at `upstream` through
/// `route_filters`, with `filters_yaml` (already indented by two spaces) as
/// `filters:`.
pub fn limits_config(upstream: SocketAddr, route_filters: &str, filters_yaml: &str) -> String {
    format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    protocol: auto
    routes:
      - match: {{ path_prefix: / }}
        upstream: up
        filters: [{route_filters}]
upstreams:
  up:
    endpoints: [{upstream}]
filters:
{filters_yaml}"
    )
}
