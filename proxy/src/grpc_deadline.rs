//! A gRPC call's deadline once its messages flow. The listener's timeout
//! covers the wait for the response head; a streaming call whose head came
//! in time may still run past the client's `grpc-timeout`. An HTTP answer
//! could only be cut there, but a gRPC one can end properly: with trailers
//! saying DEADLINE_EXCEEDED, as the client's library expects.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use kaname_filters::{Body, BoxError};
use tokio::time::{Instant, Sleep};

pin_project_lite::pin_project! {
    /// Passes the response body through until `deadline`; a call still
    /// streaming then ends with `grpc-status: 4` trailers (dropping the
    /// upstream's stream, which resets it).
    pub struct DeadlineBody {
        #[pin]
        inner: Body,
        #[pin]
        sleep: Sleep,
        message: String,
        done: bool,
    }
}

impl DeadlineBody {
    pub fn new(inner: Body, deadline: Instant, message: String) -> Self {
        DeadlineBody {
            inner,
            sleep: tokio::time::sleep_until(deadline),
            message,
            done: false,
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        // What the upstream already sent still goes out, even at the deadline.
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                *this.done = frame.is_trailers();
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(other) => {
                *this.done = other.is_none();
                return Poll::Ready(other);
            }
            Poll::Pending => {}
        }
        if this.sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        *this.done = true;
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("4"));
        if let Ok(v) = HeaderValue::from_str(&kaname_filters::grpc_percent_encode(this.message)) {
            t.insert("grpc-message", v);
        }
        t.insert("kaname-error", HeaderValue::from_static("upstream_timeout"));
        Poll::Ready(Some(Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // Trailers may be added, data never: the inner upper bound holds.
        let mut hint = SizeHint::new();
        if let Some(upper) = self.inner.size_hint().upper() {
            hint.set_upper(upper);
        }
        hint
    }
}

/// A gRPC response whose call must end by `deadline` (the client sent
/// `grpc-timeout`); a trailers-only answer has nothing left to bound.
pub fn bound(res: Response<Body>, deadline: Instant, upstream: &str) -> Response<Body> {
    if res.headers().contains_key("grpc-status") {
        return res;
    }
    let message = format!("call to upstream \"{upstream}\" ran past its deadline");
    res.map(|b| DeadlineBody::new(b, deadline, message).boxed())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::StreamBody;

    use super::*;

    /// A body that sends one message, then nothing for an hour.
    fn stalled() -> Body {
        let frames = futures_util::stream::unfold(0u8, |n| async move {
            if n == 0 {
                let frame = Frame::data(bytes::Bytes::from_static(b"\0\0\0\0\0"));
                return Some((Ok::<_, BoxError>(frame), 1));
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
            None
        });
        StreamBody::new(frames).boxed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_past_its_deadline_ends_with_deadline_exceeded() {
        let deadline = Instant::now() + Duration::from_millis(500);
        let body = DeadlineBody::new(stalled(), deadline, "deadline 500ms".into());
        let collected = body.collect().await.expect("body");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "4");
        assert_eq!(trailers["grpc-message"], "deadline 500ms");
        assert_eq!(trailers["kaname-error"], "upstream_timeout");
        assert_eq!(
            collected.to_bytes().len(),
            5,
            "the message sent in time passed"
        );
        assert!(Instant::now() >= deadline);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ending_in_time_is_untouched() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        let inner = http_body_util::Full::new(bytes::Bytes::from_static(b"abc"))
            .map_err(|n| match n {})
            .with_trailers(async move { Some(Ok(t)) })
            .boxed();
        let deadline = Instant::now() + Duration::from_secs(1);
        let collected = DeadlineBody::new(inner, deadline, String::new())
            .collect()
            .await
            .expect("body");
        assert_eq!(collected.trailers().expect("trailers")["grpc-status"], "0");
        assert_eq!(collected.to_bytes(), "abc");
    }
}
