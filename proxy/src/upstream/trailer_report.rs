//! A gRPC answer whose `grpc-status` comes in the trailers: the try is
//! judged when they arrive, for outlier detection (UNAVAILABLE is a
//! failure, as in the head) and for its `kaname_upstream_attempts_total`
//! outcome (a non-zero status is `grpc_error`); a body that breaks is a
//! reset.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use kaname_filters::retry::classify::{grpc_status, GRPC_UNAVAILABLE};
use kaname_filters::{Body, BoxError};
use prometheus::IntCounter;

use super::{Endpoint, Upstream};

/// The attempt outcome counters a trailer can end in.
pub struct TrailerOutcomes {
    pub success: IntCounter,
    pub grpc_error: IntCounter,
    pub reset: IntCounter,
}

/// Passes the body through; judges the try once.
pub struct TrailerReport {
    inner: Body,
    pending: Option<(Arc<Upstream>, Arc<Endpoint>, TrailerOutcomes)>,
}

impl TrailerReport {
    pub fn new(
        inner: Body,
        upstream: Arc<Upstream>,
        endpoint: Arc<Endpoint>,
        outcomes: TrailerOutcomes,
    ) -> Self {
        TrailerReport {
            inner,
            pending: Some((upstream, endpoint, outcomes)),
        }
    }

    /// `code`: the trailers' grpc-status (None: no trailers); `broken`: the
    /// body failed.
    fn report(&mut self, code: Option<u32>, broken: bool) {
        if let Some((up, ep, outcomes)) = self.pending.take() {
            let outcome = match code {
                _ if broken => &outcomes.reset,
                Some(c) if c != 0 => &outcomes.grpc_error,
                _ => &outcomes.success,
            };
            outcome.inc();
            up.report(&ep, broken || code == Some(GRPC_UNAVAILABLE));
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
                    this.report(grpc_status(t), false);
                }
            }
            Poll::Ready(Some(Err(_))) => this.report(None, true),
            Poll::Ready(None) => this.report(None, false),
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
