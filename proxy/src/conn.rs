//! One client connection: served until it ends, drained on shutdown, and
//! closed once idle for the listener's `idle_timeout` (no request in flight
//! and no byte either way), as Envoy's `idle_timeout` does. `H2Guard`, the
//! IO under hyper, tells `Activity` of every byte.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

/// What the idle timer looks at, shared by the IO wrapper and the service.
pub struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last byte read or written.
    last_ms: AtomicU64,
    /// Milliseconds since `epoch` a request or response last moved (any
    /// byte on HTTP/1.1; a HEADERS or DATA frame on HTTP/2, where control
    /// frames move nothing): `stream_idle_timeout`.
    progress_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// A request came on this connection (HTTP/2's first HEADERS are bounded
    /// by `header_read_timeout`, as HTTP/1's first head).
    requested: AtomicBool,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            progress_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requested: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A byte was read or written (see `last_ms`).
    pub fn touch(&self) {
        // Relaxed and racy on purpose: the timer only needs roughly when.
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A request or response moved (see `progress_ms`).
    pub fn progress(&self) {
        self.progress_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Both at once, with one reading of the clock (a few per request:
    /// they showed in instruction counts).
    pub fn moved(&self) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        self.progress_ms.store(now, Ordering::Relaxed);
    }

    /// When requests in flight will have moved nothing for `timeout`.
    pub fn stall_deadline(&self, timeout: Duration) -> Instant {
        self.epoch + Duration::from_millis(self.progress_ms.load(Ordering::Relaxed)) + timeout
    }

    /// A request (or its response body) is in flight.
    pub fn has_requests(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// A request came on this connection.
    pub fn has_had_requests(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    /// Requests are in flight and none moved a byte for `timeout`.
    pub fn is_stalled(&self, timeout: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() >= self.stall_deadline(timeout)
    }

    /// Marks a request in flight until the guard drops.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.progress();
        self.requested.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// When the connection will have been idle for `timeout`, or None when
    /// a request is in flight (checked again after `timeout`).
    pub fn idle_deadline(&self, timeout: Duration) -> Instant {
        let last = self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        last + timeout
    }

    pub fn is_idle(&self, timeout: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && Instant::now() >= self.idle_deadline(timeout)
    }
}

pub struct RequestGuard(Arc<Activity>);

pin_project_lite::pin_project! {
    /// A response body holding its request's guard: a request counts as in
    /// flight (for `idle_timeout` and `stream_idle_timeout`) until its
    /// response body ends or is dropped. A plain wrapper, not another box.
    pub struct GuardedBody<B> {
        #[pin]
        inner: B,
        guard: Option<RequestGuard>,
    }
}

impl<B> GuardedBody<B> {
    pub fn new(inner: B, guard: RequestGuard) -> Self {
        GuardedBody {
            inner,
            guard: Some(guard),
        }
    }
}

impl<B: http_body::Body> http_body::Body for GuardedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(None) | Poll::Ready(Some(Err(_))) = polled {
            this.guard.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.moved();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_without_requests_and_after_timeout() {
        let a = Activity::new();
        let t = Duration::from_secs(5);
        a.touch();
        assert!(!a.is_idle(t));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(a.is_idle(t));
        let g = a.request();
        assert!(!a.is_idle(t), "a request in flight keeps it open");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(!a.is_idle(t));
        drop(g);
        assert!(!a.is_idle(t), "the end of a request is activity");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(a.is_idle(t));
        a.moved();
        assert!(!a.is_idle(t), "a byte either way is activity");
        assert!(a.stall_deadline(t) > Instant::now(), "and progress");
    }
}
