//! The client's request body, watched. A try that fails because this body
//! broke — ended early, reset, stalled, over its limit — failed because of
//! the client, never the upstream: no breaker or outlier count, no retry,
//! no 502 (request-model.md, "Who failed"). The listener wraps every body in
//! a [`ClientBody`] and puts its [`ClientBodyWatch`] in the request's
//! context (`RequestContext::body`), so the forwarder and the filters ask
//! one place whatever error hyper's client or h2 turned the failure into.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::BoxError;

/// Why a client's body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBodyFailure {
    /// It ended before its declared length, was reset, or its framing broke.
    Ended,
    /// No byte came for `request_body_timeout`.
    Stalled,
    /// It grew past the route's `max_request_body`.
    TooLarge,
}

const STREAMING: u8 = 0;
const COMPLETE: u8 = 1;
const ENDED: u8 = 2;
const STALLED: u8 = 3;
const TOO_LARGE: u8 = 4;

/// Shared view of how a [`ClientBody`] is doing; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ClientBodyWatch(Arc<WatchState>);

#[derive(Debug)]
struct WatchState {
    state: AtomicU8,
    /// The body was asked for more and the client has not sent it yet.
    waiting: AtomicBool,
    /// `max_request_body` (`u64::MAX`: none). Set by the route's body-limit
    /// step after the listener wrapped the body, so the body is boxed once.
    limit: AtomicU64,
}

impl Default for WatchState {
    fn default() -> Self {
        WatchState {
            state: AtomicU8::new(STREAMING),
            waiting: AtomicBool::new(false),
            limit: AtomicU64::new(u64::MAX),
        }
    }
}

impl ClientBodyWatch {
    /// Bounds the body to `limit` bytes from now on (the route's
    /// `max_request_body`); more is a `TooLarge` failure (413).
    pub fn limit_to(&self, limit: u64) {
        self.0.limit.store(limit, Ordering::Relaxed);
    }

    /// The failure, once the body has failed.
    pub fn failure(&self) -> Option<ClientBodyFailure> {
        match self.0.state.load(Ordering::Acquire) {
            ENDED => Some(ClientBodyFailure::Ended),
            STALLED => Some(ClientBodyFailure::Stalled),
            TOO_LARGE => Some(ClientBodyFailure::TooLarge),
            _ => None,
        }
    }

    /// The client is to blame for a cut try: its body failed, or kaname
    /// asked for more of it and is still waiting (Envoy, too, starts a
    /// route timeout only once the request is complete). A body nobody is
    /// reading — the upstream does not take it — is not the client's doing.
    pub fn incomplete(&self) -> bool {
        match self.0.state.load(Ordering::Acquire) {
            COMPLETE => false,
            STREAMING => self.0.waiting.load(Ordering::Acquire),
            _ => true,
        }
    }

    fn set(&self, state: u8) {
        // Only the first verdict counts.
        let _ =
            self.0
                .state
                .compare_exchange(STREAMING, state, Ordering::AcqRel, Ordering::Acquire);
    }

    fn waiting(&self, waiting: bool) {
        self.0.waiting.store(waiting, Ordering::Release);
    }

    /// Finds the watch of a request, in its [`RequestContext`] (set by the
    /// listener).
    ///
    /// [`RequestContext`]: crate::RequestContext
    pub fn of(ext: &http::Extensions) -> Option<&ClientBodyWatch> {
        ext.get::<crate::RequestContext>()?.body.as_ref()
    }
}

/// The error a [`ClientBody`] yields; the forwarder needs no downcast of it
/// (it asks the watch), but it reads well in logs.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the client's request body broke off: {0}")]
    Ended(BoxError),
    #[error("the client's request body sent no byte for {0:?}")]
    Stalled(Duration),
    #[error("request body is larger than the limit of {0} bytes")]
    TooLarge(u64),
}

pin_project_lite::pin_project! {
    /// A request body with a size limit and an idle timer, reporting its end
    /// to a [`ClientBodyWatch`].
    pub struct ClientBody<B> {
        #[pin]
        inner: B,
        watch: ClientBodyWatch,
        read: u64,
        idle: Option<Duration>,
        timer: Option<Pin<Box<Sleep>>>,
        done: bool,
    }
}

impl<B: HttpBody> ClientBody<B> {
    /// `limit`: `max_request_body`; `idle`: `request_body_timeout`.
    pub fn new(inner: B, limit: Option<u64>, idle: Option<Duration>) -> (Self, ClientBodyWatch) {
        let watch = ClientBodyWatch::default();
        if let Some(limit) = limit {
            watch.limit_to(limit);
        }
        if inner.is_end_stream() {
            // Nothing to send: hyper will never poll it.
            watch.set(COMPLETE);
        }
        let body = ClientBody {
            inner,
            watch: watch.clone(),
            read: 0,
            idle,
            timer: None,
            done: false,
        };
        (body, watch)
    }
}

impl<B> HttpBody for ClientBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let polled = this.inner.as_mut().poll_frame(cx);
        if polled.is_ready() {
            this.watch.waiting(false);
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.read += data.len() as u64;
                    let limit = this.watch.0.limit.load(Ordering::Relaxed);
                    if *this.read > limit {
                        *this.done = true;
                        this.watch.set(TOO_LARGE);
                        return Poll::Ready(Some(Err(Box::new(ClientBodyError::TooLarge(limit)))));
                    }
                }
                if this.inner.is_end_stream() {
                    // The last frame (HTTP/2 END_STREAM, or the declared
                    // length reached): the sender may never poll again.
                    *this.done = true;
                    this.watch.set(COMPLETE);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                *this.done = true;
                this.watch.set(ENDED);
                Poll::Ready(Some(Err(Box::new(ClientBodyError::Ended(e.into())))))
            }
            Poll::Ready(None) => {
                *this.done = true;
                this.watch.set(COMPLETE);
                Poll::Ready(None)
            }
            Poll::Pending => {
                // The idle timer counts only time spent waiting on the
                // client: it starts again each time a wait starts (after
                // upstream backpressure too).
                let started = !this.watch.0.waiting.swap(true, Ordering::AcqRel);
                let Some(idle) = *this.idle else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                if started {
                    timer.as_mut().reset(Instant::now() + idle);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    *this.done = true;
                    this.watch.set(STALLED);
                    return Poll::Ready(Some(Err(Box::new(ClientBodyError::Stalled(idle)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Frames = Vec<Result<Frame<Bytes>, BoxError>>;

    fn body(frames: Frames) -> impl HttpBody<Data = Bytes, Error = BoxError> {
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_whole_body_is_complete() {
        let (b, watch) = ClientBody::new(
            body(vec![Ok(Frame::data(Bytes::from("abc")))]),
            Some(3),
            None,
        );
        assert!(!watch.incomplete(), "not asked for yet");
        let bytes = b.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "abc");
        assert!(!watch.incomplete());
        assert_eq!(watch.failure(), None);
    }

    #[tokio::test]
    async fn an_empty_body_is_complete_at_once() {
        let (_b, watch) = ClientBody::new(http_body_util::Empty::<Bytes>::new(), None, None);
        assert!(!watch.incomplete());
    }

    #[tokio::test]
    async fn a_body_nobody_reads_is_not_the_clients() {
        let (b, watch) =
            ClientBody::new(body(vec![Ok(Frame::data(Bytes::from("ab")))]), None, None);
        assert!(
            !watch.incomplete(),
            "never asked for: not waiting on the client"
        );
        drop(b);
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timer_counts_only_waits_on_the_client() {
        use futures_util::FutureExt;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Frame<Bytes>, BoxError>>();
        let stream =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|f| (f, rx)) },
            );
        let idle = Duration::from_secs(30);
        let (b, watch) = ClientBody::new(StreamBody::new(Box::pin(stream)), None, Some(idle));
        let mut b = Box::pin(b);
        assert!(b.frame().now_or_never().is_none(), "waiting on the client");
        assert!(watch.incomplete());
        tx.send(Ok(Frame::data(Bytes::from("a")))).unwrap();
        assert!(b.frame().now_or_never().is_some());
        assert!(
            !watch.incomplete(),
            "the upstream is not reading: not the client's"
        );
        // 40 s of upstream backpressure: the body is not polled.
        tokio::time::advance(Duration::from_secs(40)).await;
        assert!(
            b.frame().now_or_never().is_none(),
            "a new wait, not a stall"
        );
        assert_eq!(watch.failure(), None);
        tokio::time::advance(Duration::from_secs(31)).await;
        let stalled = b.frame().now_or_never().expect("ready").expect("a frame");
        assert!(stalled.is_err());
        assert_eq!(watch.failure(), Some(ClientBodyFailure::Stalled));
    }

    #[tokio::test]
    async fn a_broken_body_is_the_clients() {
        let frames: Frames = vec![Ok(Frame::data(Bytes::from("ab"))), Err("reset".into())];
        let (b, watch) = ClientBody::new(body(frames), None, None);
        assert!(b.collect().await.is_err());
        assert_eq!(watch.failure(), Some(ClientBodyFailure::Ended));
        assert!(watch.incomplete());
    }

    #[tokio::test]
    async fn over_the_limit() {
        let frames: Frames = vec![Ok(Frame::data(Bytes::from("abcd")))];
        let (b, watch) = ClientBody::new(body(frames), Some(3), None);
        let e = b.collect().await.unwrap_err();
        assert!(e.to_string().contains("limit of 3"), "{e}");
        assert_eq!(watch.failure(), Some(ClientBodyFailure::TooLarge));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out() {
        let stalled = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, BoxError>,
        >());
        let (b, watch) = ClientBody::new(stalled, None, Some(Duration::from_secs(30)));
        let e = b.collect().await.unwrap_err();
        assert!(e.to_string().contains("30s"), "{e}");
        assert_eq!(watch.failure(), Some(ClientBodyFailure::Stalled));
    }
}
