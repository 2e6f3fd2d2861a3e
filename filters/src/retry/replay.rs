//! A request body that can be sent again, byte for byte (trap 4: a hyper
//! body is not Clone). The first try streams the client's body as it
//! arrives and keeps a copy up to `max_body_bytes`; a retry replays the copy
//! and then goes on reading the client's body where the first try stopped.
//! Past the cap the copy is dropped and the request can no longer be
//! retried: large bodies are streamed once, never held whole.
//!
//! The copies of all requests together are bounded too (limits.md,
//! `replay_buffer`): every byte kept is taken from one process-wide
//! [`BufferPool`], shared by every retry filter. A chunk that would take the
//! pool past the filter's `max_buffered_bytes` is not kept: that request
//! drops its copy (its bytes go back to the pool at once) and is sent once,
//! never retried. A copy's bytes also go back once no retry can use it (the
//! retry loop is done with the request and its last try has sent them) and
//! at the latest when the request's last body is dropped. Both refusals
//! (`max_body_bytes`, declared or read, and the pool) are counted in
//! `kaname_limits_hit_total{limit="replay_buffer"}`.
//!
//! Only the newest body reads: when a retry asks for a new body, the older
//! one (possibly still held by a connection of the pool) fails at its next
//! read, so two tries never interleave the client's bytes.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use prometheus::IntCounter;

use crate::body::{Body, BoxError};

#[derive(Debug, thiserror::Error)]
#[error("request body superseded by a retry")]
pub struct Superseded;

/// Bytes kept for replay by all requests at once. The process has one,
/// [`BufferPool::global`], shared by every retry filter (and kept across
/// reloads); tests make their own.
#[derive(Debug, Default)]
pub struct BufferPool {
    held: AtomicUsize,
}

impl BufferPool {
    /// The process's pool.
    pub fn global() -> Arc<BufferPool> {
        static GLOBAL: LazyLock<Arc<BufferPool>> = LazyLock::new(Arc::default);
        GLOBAL.clone()
    }

    /// Bytes kept now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Takes `n` bytes, unless that would take the pool past `limit`.
    fn take(&self, n: usize, limit: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|total| *total <= limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        if n > 0 {
            self.held.fetch_sub(n, Ordering::AcqRel);
        }
    }
}

/// What one retry filter lets a request keep for replay.
#[derive(Debug)]
pub struct ReplayLimits {
    pub pool: Arc<BufferPool>,
    /// `max_body_bytes`: the most one request keeps.
    pub per_request: usize,
    /// `max_buffered_bytes`: the pool's total past which this filter's
    /// requests keep nothing more. Filters with different values share the
    /// pool, so the process keeps at most the largest value configured.
    pub total: usize,
    /// `kaname_limits_hit_total{limit="replay_buffer"}`.
    pub refused: IntCounter,
}

struct Shared {
    /// The client's body, until it ends.
    inner: Option<Body>,
    /// Every data frame read so far, while a copy is kept.
    chunks: Vec<Bytes>,
    /// Bytes in `chunks`, all taken from the pool.
    len: usize,
    /// Chunks the newest body has sent.
    sent: usize,
    trailers: Option<HeaderMap>,
    ended: bool,
    /// New data is copied into `chunks`.
    keeping: bool,
    /// A retry could still resend the whole body.
    replayable: bool,
    /// The body allowed to read.
    generation: u64,
    limits: Arc<ReplayLimits>,
}

impl Shared {
    /// Drops the copy and gives its bytes back. Only once the newest body
    /// has sent every chunk kept (or none will read them again).
    fn drop_copy(&mut self) {
        self.chunks = Vec::new();
        self.limits.pool.give_back(std::mem::take(&mut self.len));
    }

    /// The body cannot be kept (a cap, or a broken client body): sent once.
    fn stop_keeping(&mut self) {
        self.keeping = false;
        self.replayable = false;
        self.drop_copy();
    }

    /// Keeps `data`, if both caps allow; else stops keeping, counted.
    fn keep(&mut self, data: &Bytes) {
        let l = &self.limits;
        let fits = self.len + data.len() <= l.per_request && l.pool.take(data.len(), l.total);
        if fits {
            self.len += data.len();
            self.chunks.push(data.clone());
            self.sent = self.chunks.len();
        } else {
            self.limits.refused.inc();
            self.stop_keeping();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.limits.pool.give_back(self.len);
    }
}

/// The shared record of one request body; hands out a body per try. When
/// dropped (the retry loop is done with the request), the copy is no longer
/// kept: its bytes go back to the pool as soon as the last try has sent
/// them.
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
    hint: SizeHint,
}

impl Replay {
    /// `too_large`: the declared length is over `max_body_bytes` already,
    /// so no copy is kept at all.
    pub fn new(body: Body, limits: Arc<ReplayLimits>, too_large: bool) -> Self {
        let hint = body.size_hint();
        let ended = body.is_end_stream();
        if too_large {
            limits.refused.inc();
        }
        Replay {
            shared: Arc::new(Mutex::new(Shared {
                inner: (!ended).then_some(body),
                chunks: Vec::new(),
                len: 0,
                sent: 0,
                trailers: None,
                ended,
                keeping: !too_large,
                replayable: !too_large,
                generation: 0,
                limits,
            })),
            hint,
        }
    }

    /// The body of the first try.
    pub fn first(&self) -> Body {
        self.body_for(0)
    }

    /// A body for the next try, from the first byte; None when the body can
    /// no longer be replayed. Older bodies stop reading.
    pub fn next(&self) -> Option<Body> {
        let generation = {
            let mut s = self.shared.lock().ok()?;
            if !s.replayable {
                return None;
            }
            s.generation += 1;
            s.sent = 0;
            s.generation
        };
        Some(self.body_for(generation))
    }

    /// True while a retry could still resend the whole body.
    pub fn replayable(&self) -> bool {
        self.shared.lock().map(|s| s.replayable).unwrap_or(false)
    }

    fn body_for(&self, generation: u64) -> Body {
        ReplayBody {
            shared: self.shared.clone(),
            hint: self.hint,
            generation,
            trailers_sent: false,
        }
        .boxed()
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        let Ok(mut s) = self.shared.lock() else {
            return;
        };
        // No retry will come: keep nothing more, and give the copy back
        // now unless the newest body still has chunks of it to send.
        s.keeping = false;
        s.replayable = false;
        if s.sent >= s.chunks.len() {
            s.drop_copy();
        }
    }
}

struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    hint: SizeHint,
    generation: u64,
    trailers_sent: bool,
}

impl HttpBody for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Ok(mut guard) = this.shared.lock() else {
            return Poll::Ready(Some(Err("request body state poisoned".into())));
        };
        let s = &mut *guard;
        if s.generation != this.generation {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if s.sent < s.chunks.len() {
            let chunk = s.chunks[s.sent].clone();
            s.sent += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if !s.keeping && !s.chunks.is_empty() {
            // Every chunk sent again and no retry to come.
            s.drop_copy();
            s.sent = 0;
        }
        if s.ended {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(t) = s.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        }
        let Some(inner) = s.inner.as_mut() else {
            s.ended = true;
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.ended = true;
                s.inner = None;
                this.trailers_sent = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // A broken client body cannot be sent again.
                s.stop_keeping();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if s.keeping {
                        s.keep(data);
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    s.trailers = Some(t.clone());
                    s.ended = true;
                    s.inner = None;
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.shared.lock().is_ok_and(|s| {
            s.generation == self.generation
                && s.ended
                && s.sent >= s.chunks.len()
                && (self.trailers_sent || s.trailers.is_none())
        })
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};

    fn chunked(parts: &[&'static [u8]], trailers: Option<HeaderMap>) -> Body {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        if let Some(t) = trailers {
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    async fn collect(b: Body) -> (Bytes, Option<HeaderMap>) {
        let c = b.collect().await.expect("body");
        let t = c.trailers().cloned();
        (c.to_bytes(), t)
    }

    /// Limits on a pool of the test's own (tests run in parallel).
    fn limits(per_request: usize, total: usize) -> Arc<ReplayLimits> {
        Arc::new(ReplayLimits {
            pool: Arc::default(),
            per_request,
            total,
            refused: IntCounter::new("refused", "refused").expect("counter"),
        })
    }

    fn caps(per_request: usize) -> Arc<ReplayLimits> {
        limits(per_request, usize::MAX)
    }

    #[tokio::test]
    async fn replays_byte_for_byte_with_trailers() {
        let mut t = HeaderMap::new();
        t.insert("x-sum", "1".parse().unwrap());
        let r = Replay::new(chunked(&[b"hello ", b"world"], Some(t)), caps(64), false);
        let first = collect(r.first()).await;
        assert_eq!(first.0, "hello world");
        assert!(r.replayable());
        let again = collect(r.next().unwrap()).await;
        assert_eq!(again, first);
        assert_eq!(again.1.unwrap()["x-sum"], "1");
    }

    #[tokio::test]
    async fn retry_after_a_partial_read_continues_from_the_client() {
        let r = Replay::new(chunked(&[b"ab", b"cd", b"ef"], None), caps(64), false);
        let mut first = r.first();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        let second = r.next().unwrap();
        // The old body stops once a newer one exists.
        assert!(first.frame().await.unwrap().is_err());
        assert_eq!(collect(second).await.0, "abcdef");
    }

    #[tokio::test]
    async fn over_the_cap_is_streamed_once() {
        let l = caps(15);
        let r = Replay::new(
            chunked(&[b"0123456789", b"0123456789"], None),
            l.clone(),
            false,
        );
        assert_eq!(collect(r.first()).await.0.len(), 20);
        assert!(!r.replayable());
        assert!(r.next().is_none());
        assert_eq!((l.pool.held(), l.refused.get()), (0, 1));
        let declared = Replay::new(
            Full::new(Bytes::from_static(b"x"))
                .map_err(|n| match n {})
                .boxed(),
            l.clone(),
            true,
        );
        assert!(declared.next().is_none());
        assert_eq!(l.refused.get(), 2);
    }

    #[tokio::test]
    async fn an_untouched_body_is_replayable() {
        // A connect failure drops the first body unread.
        let r = Replay::new(chunked(&[b"abc"], None), caps(8), false);
        drop(r.first());
        assert_eq!(collect(r.next().unwrap()).await.0, "abc");
        let empty = Replay::new(crate::body::empty(), caps(8), false);
        assert!(empty.first().is_end_stream());
    }

    /// limits.md `replay_buffer`: 20 concurrent 50 MiB POSTs under
    /// `max_body_bytes: 1GiB` used to keep 1.4 GB.
    #[tokio::test]
    async fn two_bodies_over_the_pool_the_second_is_sent_once() {
        // 60 bytes each, 100 for all: together they do not fit.
        let l = limits(80, 100);
        let one = Replay::new(chunked(&[&[1; 30], &[1; 30]], None), l.clone(), false);
        let two = Replay::new(chunked(&[&[2; 30], &[2; 30]], None), l.clone(), false);
        let (mut b1, mut b2) = (one.first(), two.first());
        // Interleaved, as concurrent requests are.
        for _ in 0..2 {
            assert!(b1.frame().await.unwrap().is_ok());
            assert!(b2.frame().await.unwrap().is_ok());
        }
        assert!(b1.frame().await.is_none() && b2.frame().await.is_none());
        // The second one's second chunk would have made 120: it gave its
        // 30 bytes back and cannot be retried; the first one can.
        assert!(one.replayable());
        assert!(!two.replayable() && two.next().is_none());
        assert_eq!((l.pool.held(), l.refused.get()), (60, 1));
        assert_eq!(
            collect(one.next().unwrap()).await.0,
            Bytes::from(vec![1; 60])
        );
        // Done with both requests: nothing held.
        drop((one, two, b1, b2));
        assert_eq!(l.pool.held(), 0);
        // Room again for a third.
        let three = Replay::new(chunked(&[&[3; 30], &[3; 30]], None), l.clone(), false);
        assert_eq!(collect(three.first()).await.0.len(), 60);
        assert!(three.replayable());
        assert_eq!(l.pool.held(), 60);
        drop(three);
        assert_eq!(l.pool.held(), 0);
    }

    #[tokio::test]
    async fn the_copy_goes_back_once_no_retry_can_use_it() {
        let l = limits(64, 64);
        // The loop is done (Replay dropped) while the last try still reads:
        // the copy goes back once that try has sent it, the rest of the
        // client's body is no longer kept, and the try gets every byte.
        let r = Replay::new(chunked(&[b"ab", b"cd", b"ef"], None), l.clone(), false);
        let mut first = r.first();
        for _ in 0..2 {
            first.frame().await.unwrap().unwrap();
        }
        assert_eq!(l.pool.held(), 4);
        let second = r.next().unwrap();
        drop((r, first));
        assert_eq!(l.pool.held(), 4, "the last try has not sent the copy yet");
        let mut second = second;
        let mut got = Vec::new();
        while let Some(frame) = second.frame().await {
            got.extend_from_slice(&frame.unwrap().into_data().unwrap());
            assert!(l.pool.held() <= 4);
        }
        assert_eq!(got, b"abcdef");
        assert_eq!(l.pool.held(), 0);
        // A body fully sent when the loop is done gives its copy back at once.
        let r = Replay::new(chunked(&[b"xyz"], None), l.clone(), false);
        assert_eq!(collect(r.first()).await.0, "xyz");
        assert_eq!(l.pool.held(), 3);
        drop(r);
        assert_eq!((l.pool.held(), l.refused.get()), (0, 0));
    }
}
