//! A request body that can be sent again, byte for byte (trap 4: a hyper
//! body is not Clone). The first try streams the client's body as it
//! arrives and keeps a copy up to `max_body_bytes`; a retry replays the copy
//! and then goes on reading the client's body where the first try stopped.
//! Past the cap the copy is dropped and the request can no longer be
//! retried: large bodies are streamed once, never held whole.
//!
//! Only the newest body reads: when a retry asks for a new body, the older
//! one (possibly still held by a connection of the pool) fails at its next
//! read, so two tries never interleave the client's bytes.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{Body, BoxError};

#[derive(Debug, thiserror::Error)]
#[error("request body superseded by a retry")]
pub struct Superseded;

struct Shared {
    /// The client's body, until it ends.
    inner: Option<Body>,
    /// Every data frame read so far (cleared on overflow).
    chunks: Vec<Bytes>,
    len: usize,
    trailers: Option<HeaderMap>,
    ended: bool,
    /// The body outgrew the cap or failed: no retry can resend it.
    overflowed: bool,
    /// The body allowed to read.
    generation: u64,
}

/// The shared record of one request body; hands out a body per try.
#[derive(Clone)]
pub struct Replay {
    shared: Arc<Mutex<Shared>>,
    cap: usize,
    hint: SizeHint,
}

impl Replay {
    /// `too_large`: the declared length is over the cap already, so no copy
    /// is kept at all.
    pub fn new(body: Body, cap: usize, too_large: bool) -> Self {
        let hint = body.size_hint();
        let ended = body.is_end_stream();
        Replay {
            shared: Arc::new(Mutex::new(Shared {
                inner: (!ended).then_some(body),
                chunks: Vec::new(),
                len: 0,
                trailers: None,
                ended,
                overflowed: too_large,
                generation: 0,
            })),
            cap,
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
            if s.overflowed {
                return None;
            }
            s.generation += 1;
            s.generation
        };
        Some(self.body_for(generation))
    }

    /// True while a retry could still resend the whole body.
    pub fn replayable(&self) -> bool {
        self.shared.lock().map(|s| !s.overflowed).unwrap_or(false)
    }

    fn body_for(&self, generation: u64) -> Body {
        ReplayBody {
            shared: self.shared.clone(),
            cap: self.cap,
            hint: self.hint,
            generation,
            pos: 0,
            trailers_sent: false,
        }
        .boxed()
    }
}

struct ReplayBody {
    shared: Arc<Mutex<Shared>>,
    cap: usize,
    hint: SizeHint,
    generation: u64,
    /// Chunks of `shared.chunks` this body has sent.
    pos: usize,
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
        if this.pos < s.chunks.len() {
            let chunk = s.chunks[this.pos].clone();
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
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
                s.overflowed = true;
                s.chunks = Vec::new();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !s.overflowed {
                        if s.len + data.len() <= this.cap {
                            s.len += data.len();
                            s.chunks.push(data.clone());
                            this.pos = s.chunks.len();
                        } else {
                            s.overflowed = true;
                            s.chunks = Vec::new();
                        }
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
                && self.pos >= s.chunks.len()
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

    #[tokio::test]
    async fn replays_byte_for_byte_with_trailers() {
        let mut t = HeaderMap::new();
        t.insert("x-sum", "1".parse().unwrap());
        let r = Replay::new(chunked(&[b"hello ", b"world"], Some(t)), 64, false);
        let first = collect(r.first()).await;
        assert_eq!(first.0, "hello world");
        assert!(r.replayable());
        let again = collect(r.next().unwrap()).await;
        assert_eq!(again, first);
        assert_eq!(again.1.unwrap()["x-sum"], "1");
    }

    #[tokio::test]
    async fn retry_after_a_partial_read_continues_from_the_client() {
        let r = Replay::new(chunked(&[b"ab", b"cd", b"ef"], None), 64, false);
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
        let r = Replay::new(chunked(&[b"0123456789", b"0123456789"], None), 15, false);
        assert_eq!(collect(r.first()).await.0.len(), 20);
        assert!(!r.replayable());
        assert!(r.next().is_none());
        let declared = Replay::new(
            Full::new(Bytes::from_static(b"x"))
                .map_err(|n| match n {})
                .boxed(),
            15,
            true,
        );
        assert!(declared.next().is_none());
    }

    #[tokio::test]
    async fn an_untouched_body_is_replayable() {
        // A connect failure drops the first body unread.
        let r = Replay::new(chunked(&[b"abc"], None), 8, false);
        drop(r.first());
        assert_eq!(collect(r.next().unwrap()).await.0, "abc");
        let empty = Replay::new(crate::body::empty(), 8, false);
        assert!(empty.first().is_end_stream());
    }
}
