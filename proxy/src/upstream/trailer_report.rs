//! Outlier detection for a gRPC answer whose `grpc-status` comes in the
//! trailers: the try is reported when they arrive (UNAVAILABLE is a
//! failure, as in the head), or when the body breaks (a reset).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use kaname_filters::retry::classify::{grpc_status, GRPC_UNAVAILABLE};
use kaname_filters::{Body, BoxError};

use super::{Endpoint, Upstream};

/// Passes the body through; reports the try to outlier detection once.
pub struct TrailerReport {
    inner: Body,
    pending: Option<(Arc<Upstream>, Arc<Endpoint>)>,
}

impl TrailerReport {
    pub fn new(inner: Body, upstream: Arc<Upstream>, endpoint: Arc<Endpoint>) -> Self {
        TrailerReport {
            inner,
            pending: Some((upstream, endpoint)),
        }
    }

    fn report(&mut self, failed: bool) {
        if let Some((up, ep)) = self.pending.take() {
            up.report(&ep, failed);
        }
    }
}

impl HttpBody for TrailerReport {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref() {
                    let unavailable = grpc_status(t) == Some(GRPC_UNAVAILABLE);
                    this.report(unavailable);
                }
            }
            Poll::Ready(Some(Err(_))) => this.report(true),
            Poll::Ready(None) => this.report(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
