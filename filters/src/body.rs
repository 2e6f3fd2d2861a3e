//! One body type for requests and responses everywhere (trap 5 of the stack notes).

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every request and response inside kaname.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body holding `bytes` whole.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// How a watched body ended (see [`OnEnd`]).
#[derive(Debug)]
pub enum BodyEnd<'a> {
    /// The trailers arrived (gRPC's `grpc-status` is there).
    Trailers(&'a http::HeaderMap),
    /// The body ended without trailers.
    Eof,
    /// The body broke (the upstream reset or closed early).
    Error,
    /// The body was dropped before its end (the client went away).
    Dropped,
}

/// Passes a body through and calls `on_end` once, with how it ended: the
/// one mechanism behind every "judge a gRPC call by its trailers" in kaname
/// (breaker, outlier detection, metrics).
pub struct OnEnd<F: FnOnce(BodyEnd<'_>)> {
    inner: Body,
    on_end: Option<F>,
}

impl<F> OnEnd<F>
where
    F: FnOnce(BodyEnd<'_>) + Send + Sync + Unpin + 'static,
{
    /// `inner` with `on_end` watching it, boxed back into a [`Body`].
    pub fn wrap(inner: Body, on_end: F) -> Body {
        OnEnd {
            inner,
            on_end: Some(on_end),
        }
        .boxed()
    }
}

impl<F: FnOnce(BodyEnd<'_>)> Drop for OnEnd<F> {
    fn drop(&mut self) {
        if let Some(f) = self.on_end.take() {
            f(BodyEnd::Dropped);
        }
    }
}

impl<F> http_body::Body for OnEnd<F>
where
    F: FnOnce(BodyEnd<'_>) + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        let end = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame.trailers_ref().map(BodyEnd::Trailers),
            Poll::Ready(Some(Err(_))) => Some(BodyEnd::Error),
            Poll::Ready(None) => Some(BodyEnd::Eof),
            Poll::Pending => None,
        };
        if let Some(end) = end {
            if let Some(f) = this.on_end.take() {
                f(end);
            }
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

/// The `Content-Length` a message declares, when it is one valid number.
pub fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn watched(inner: Body) -> (Body, Arc<Mutex<Vec<String>>>) {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        let body = OnEnd::wrap(inner, move |end| {
            log.lock()
                .unwrap()
                .push(format!("{end:?}").chars().take(8).collect());
        });
        (body, seen)
    }

    #[tokio::test]
    async fn on_end_is_called_once_at_the_end_or_on_drop() {
        let (body, seen) = watched(full("data"));
        body.collect().await.unwrap();
        assert_eq!(*seen.lock().unwrap(), ["Eof"], "after the data frame, once");

        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let inner = full("data")
            .with_trailers(async move { Some(Ok(trailers)) })
            .boxed();
        let (body, seen) = watched(inner);
        body.collect().await.unwrap();
        assert_eq!(*seen.lock().unwrap(), ["Trailers"]);

        let (body, seen) = watched(full("data"));
        drop(body);
        assert_eq!(*seen.lock().unwrap(), ["Dropped"]);
    }
}
