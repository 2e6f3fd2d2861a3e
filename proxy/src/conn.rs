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

/// What the connection's timer looks at, shared by the IO wrapper and the
/// service. Moves are counted, not timed: a clock reading on every read,
/// write, request and response end showed in instruction counts (four a
/// request), and only the timer needs to know when ([`ActivityLook`]).
pub struct Activity {
    /// Reads and writes of any byte (`idle_timeout`).
    touches: AtomicU64,
    /// Moves of a request or response (any byte on HTTP/1.1; a HEADERS or
    /// DATA frame on HTTP/2, where control frames move nothing; a request
    /// starting or ending): `stream_idle_timeout`.
    moves: AtomicU64,
    in_flight: AtomicUsize,
    /// A request came on this connection (HTTP/2's first HEADERS are bounded
    /// by `header_read_timeout`, as HTTP/1's first head).
    requested: AtomicBool,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            touches: AtomicU64::new(0),
            moves: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            requested: AtomicBool::new(false),
        })
    }

    /// A byte was read or written (see `touches`).
    pub fn touch(&self) {
        // An add, not a load and a store: a lost update could bring a count
        // back to a value the timer saw, hiding a move.
        self.touches.fetch_add(1, Ordering::Relaxed);
    }

    /// A request or response moved, with bytes either way (see `moves`).
    pub fn moved(&self) {
        self.touches.fetch_add(1, Ordering::Relaxed);
        self.moves.fetch_add(1, Ordering::Relaxed);
    }

    /// A request (or its response body) is in flight.
    pub fn has_requests(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// A request came on this connection.
    pub fn has_had_requests(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    /// Marks a request in flight until the guard drops.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.moved();
        self.requested.store(true, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// The timer's first look, at `now`.
    pub fn look(&self, now: Instant) -> ActivityLook {
        ActivityLook {
            touches: self.touches.load(Ordering::Relaxed),
            touched_at: now,
            moves: self.moves.load(Ordering::Relaxed),
            moved_at: now,
            looked_at: now,
        }
    }
}

/// The connection timer's view of [`Activity`]: when it last saw each count
/// change. A count that changed since the previous look changed at the
/// latest at this look, so a timeout judged from these times never acts
/// early; it may act late by the time between looks, which the timer bounds
/// by looking every eighth of a timeout ([`ActivityLook::next_look`]).
#[derive(Debug, Clone, Copy)]
pub struct ActivityLook {
    touches: u64,
    touched_at: Instant,
    moves: u64,
    moved_at: Instant,
    looked_at: Instant,
}

impl ActivityLook {
    /// Looks again at `now`.
    pub fn update(&mut self, a: &Activity, now: Instant) {
        let touches = a.touches.load(Ordering::Relaxed);
        if touches != self.touches {
            self.touches = touches;
            self.touched_at = now;
        }
        let moves = a.moves.load(Ordering::Relaxed);
        if moves != self.moves {
            self.moves = moves;
            self.moved_at = now;
        }
        self.looked_at = now;
    }

    /// When requests in flight will have moved nothing for `timeout`, as
    /// far as the looks so far tell.
    pub fn stall_deadline(&self, timeout: Duration) -> Instant {
        self.moved_at + timeout
    }

    /// When the connection will have been idle for `timeout`, likewise.
    pub fn idle_deadline(&self, timeout: Duration) -> Instant {
        self.touched_at + timeout
    }

    /// When to look again: an eighth of the shorter timeout after this
    /// look (at least 1 ms), so a timeout acts at most that late.
    pub fn next_look(&self, idle: Duration, stream_idle: Duration) -> Instant {
        self.looked_at + (idle.min(stream_idle) / 8).max(Duration::from_millis(1))
    }

    /// Requests are in flight and none moved for `timeout`, at the last look.
    pub fn is_stalled(&self, a: &Activity, timeout: Duration) -> bool {
        a.has_requests() && self.looked_at >= self.stall_deadline(timeout)
    }

    /// No request is in flight and no byte moved for `timeout`, at the last
    /// look.
    pub fn is_idle(&self, a: &Activity, timeout: Duration) -> bool {
        !a.has_requests() && self.looked_at >= self.idle_deadline(timeout)
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
        let mut seen = a.look(Instant::now());
        a.touch();
        tokio::time::advance(Duration::from_secs(6)).await;
        seen.update(&a, Instant::now());
        assert!(!seen.is_idle(&a, t), "a byte since the last look");
        tokio::time::advance(Duration::from_secs(6)).await;
        seen.update(&a, Instant::now());
        assert!(seen.is_idle(&a, t));
        let g = a.request();
        seen.update(&a, Instant::now());
        assert!(!seen.is_idle(&a, t), "a request in flight keeps it open");
        tokio::time::advance(Duration::from_secs(6)).await;
        seen.update(&a, Instant::now());
        assert!(!seen.is_idle(&a, t));
        assert!(seen.is_stalled(&a, t), "in flight, nothing moved for 6 s");
        drop(g);
        seen.update(&a, Instant::now());
        assert!(!seen.is_idle(&a, t), "the end of a request is activity");
        tokio::time::advance(Duration::from_secs(6)).await;
        seen.update(&a, Instant::now());
        assert!(seen.is_idle(&a, t));
        a.moved();
        seen.update(&a, Instant::now());
        assert!(!seen.is_idle(&a, t), "a byte either way is activity");
        assert!(seen.stall_deadline(t) > Instant::now(), "and progress");
    }

    /// A move between two looks counts as made at the second: a timeout
    /// never acts before its time, and at most a look's interval after.
    #[tokio::test(start_paused = true)]
    async fn a_move_counts_at_the_next_look_never_earlier() {
        let a = Activity::new();
        let (idle, stream) = (Duration::from_secs(8), Duration::from_secs(80));
        let mut seen = a.look(Instant::now());
        let every = seen.next_look(idle, stream) - Instant::now();
        assert_eq!(every, Duration::from_secs(1), "an eighth of the shorter");
        tokio::time::advance(Duration::from_millis(100)).await;
        a.touch();
        let moved = Instant::now();
        tokio::time::advance(Duration::from_millis(900)).await;
        seen.update(&a, Instant::now());
        assert!(seen.idle_deadline(idle) >= moved + idle, "never early");
        assert!(
            seen.idle_deadline(idle) <= moved + idle + every,
            "late by a look at most"
        );
    }
}
