//! Which answers match a list of conditions (`retry_on` of a retry filter,
//! `failure_on` of a circuit breaker). Only the response head (and, for gRPC,
//! trailers the caller has already read) is looked at, never the body.

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use http::{HeaderMap, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use kaname_config::types::Condition;

use crate::body::{Body, BoxError};
use crate::context::UpstreamFailure;
use crate::ProxyError;

/// gRPC `UNAVAILABLE`: breakers and outlier detection count it like a 503.
pub const GRPC_UNAVAILABLE: u32 = 14;

/// The `grpc-status` in a trailers-only head or in trailers.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// What one finished try looked like, as far as conditions care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Set when kaname made the answer because the try failed.
    pub failure: Option<UpstreamFailure>,
    pub status: StatusCode,
    /// From the head (trailers-only answer) or from trailers.
    pub grpc: Option<u32>,
}

impl Observed {
    /// An answer from the upstream.
    pub fn of<B>(res: &Response<B>) -> Self {
        Observed {
            failure: None,
            status: res.status(),
            grpc: grpc_status(res.headers()),
        }
    }

    /// What kaname's answer for `e` will look like to the client: its
    /// status, or for gRPC its 200 and `grpc-status`.
    pub fn of_error(e: &ProxyError, grpc: bool) -> Self {
        Observed {
            failure: e.failure,
            status: e.status(grpc),
            grpc: grpc.then(|| e.kind.grpc_status()),
        }
    }

    pub fn of_result<B>(result: &Result<Response<B>, ProxyError>, grpc: bool) -> Self {
        match result {
            Ok(res) => Self::of(res),
            Err(e) => Self::of_error(e, grpc),
        }
    }
}

/// True when any condition matches.
pub fn matches(conditions: &[Condition], o: &Observed) -> bool {
    conditions.iter().any(|c| match c {
        Condition::ConnectFailure => o.failure == Some(UpstreamFailure::Connect),
        Condition::Reset => o.failure == Some(UpstreamFailure::Reset),
        Condition::Timeout => o.failure == Some(UpstreamFailure::Timeout),
        Condition::Status5xx => o.status.is_server_error(),
        Condition::Status(code) => o.status.as_u16() == *code,
        Condition::Grpc(code) => o.grpc == Some(*code),
    })
}

/// For breakers: `matches`, plus gRPC UNAVAILABLE counting as a 503 when
/// 5xx or 503 is listed (the contract's gRPC section).
pub fn is_failure(conditions: &[Condition], o: &Observed) -> bool {
    matches(conditions, o)
        || (o.grpc == Some(GRPC_UNAVAILABLE)
            && conditions
                .iter()
                .any(|c| matches!(c, Condition::Status5xx | Condition::Status(503))))
}

/// For a gRPC answer whose head has no `grpc-status` (so it is in the
/// trailers): reads the body while it stays within `cap` bytes. When the
/// whole body and its trailers arrive within the cap, the status is known
/// before anything reached the client and the try can still be retried;
/// otherwise the answer is passed on as it is (never retried), its frames
/// read so far put back in front. After the first message only frames already
/// received are read, so a stream waiting on its client is passed on at once
/// (then never retried) instead of hanging; routes with no gRPC code in
/// `retry_on` never peek.
pub async fn peek_grpc_trailers(res: Response<Body>, cap: usize) -> (Response<Body>, Observed) {
    let mut observed = Observed::of(&res);
    let (parts, mut body) = res.into_parts();
    let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = Vec::new();
    let mut len = 0usize;
    let mut rest = None;
    let mut seen_data = false;
    loop {
        // Once a message has come, read only what is already here: a stream
        // (bidi, server-streaming) may send nothing more until the client has
        // that message, so waiting for its trailers would hang the call.
        let next = if seen_data {
            match body.frame().now_or_never() {
                Some(next) => next,
                None => {
                    rest = Some(body);
                    break;
                }
            }
        } else {
            body.frame().await
        };
        match next {
            None => break,
            Some(Err(e)) => {
                observed.failure = Some(UpstreamFailure::Reset);
                frames.push(Err(e));
                break;
            }
            Some(Ok(frame)) => {
                if let Some(t) = frame.trailers_ref() {
                    observed.grpc = grpc_status(t);
                    frames.push(Ok(frame));
                    break;
                }
                len += frame.data_ref().map_or(0, |d| d.len());
                seen_data |= frame.is_data();
                frames.push(Ok(frame));
                if len > cap {
                    rest = Some(body);
                    break;
                }
            }
        }
    }
    let head = futures_util::stream::iter(frames);
    let body: Body = match rest {
        None => BodyExt::boxed(StreamBody::new(head)),
        Some(rest) => {
            observed.grpc = None;
            BodyExt::boxed(StreamBody::new(head.chain(BodyStream::new(rest))))
        }
    };
    (Response::from_parts(parts, body), observed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(status: u16, grpc: Option<&str>) -> Response<()> {
        let mut r = Response::new(());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(g) = grpc {
            r.headers_mut().insert("grpc-status", g.parse().unwrap());
        }
        r
    }

    fn failed(failure: UpstreamFailure) -> Observed {
        let e = ProxyError::upstream(crate::ErrorKind::UpstreamUnavailable, failure, "x");
        Observed::of_error(&e, false)
    }

    #[test]
    fn conditions_match_what_they_name() {
        let on = [
            Condition::ConnectFailure,
            Condition::Status(503),
            Condition::Grpc(8),
        ];
        assert!(matches(&on, &Observed::of(&res(503, None))));
        assert!(!matches(&on, &Observed::of(&res(500, None))));
        assert!(matches(&on, &failed(UpstreamFailure::Connect)));
        assert!(!matches(&on, &failed(UpstreamFailure::Reset)));
        assert!(matches(&on, &Observed::of(&res(200, Some("8")))));
        assert!(!matches(&on, &Observed::of(&res(200, Some("14")))));
        assert!(matches(
            &[Condition::Status5xx],
            &Observed::of(&res(504, None))
        ));
    }

    fn grpc_answer(parts: &[&'static [u8]], status: &str) -> Response<Body> {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p))))
            .collect();
        let mut t = HeaderMap::new();
        t.insert("grpc-status", status.parse().unwrap());
        frames.push(Ok(Frame::trailers(t)));
        Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
            frames,
        ))))
    }

    #[tokio::test]
    async fn peeks_small_answers_and_passes_large_ones_on() {
        let (res, o) = peek_grpc_trailers(grpc_answer(&[b"abc", b"def"], "14"), 16).await;
        assert_eq!(o.grpc, Some(14));
        let c = res.into_body().collect().await.unwrap();
        assert_eq!(c.trailers().unwrap()["grpc-status"], "14");
        assert_eq!(c.to_bytes(), "abcdef");

        let (res, o) = peek_grpc_trailers(grpc_answer(&[b"abc", b"def", b"ghi"], "14"), 4).await;
        assert_eq!(o.grpc, None, "too large to know before sending");
        let c = res.into_body().collect().await.unwrap();
        assert_eq!(c.trailers().unwrap()["grpc-status"], "14");
        assert_eq!(c.to_bytes(), "abcdefghi");
    }

    #[tokio::test]
    async fn a_stream_that_pauses_after_a_message_is_passed_on() {
        // One message, then nothing until the client answers (bidi).
        let frames = futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(
            Bytes::from_static(b"abc"),
        ))])
        .chain(futures_util::stream::pending());
        let res = Response::new(BodyExt::boxed(StreamBody::new(frames)));
        let (res, o) = peek_grpc_trailers(res, 1024).await;
        assert_eq!(o.grpc, None, "not known without waiting");
        let mut body = res.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "abc");
    }

    #[test]
    fn grpc_unavailable_is_a_breaker_failure_like_503() {
        let o = Observed::of(&res(200, Some("14")));
        assert!(is_failure(&[Condition::Status5xx], &o));
        assert!(is_failure(&[Condition::Status(503)], &o));
        assert!(!is_failure(&[Condition::Timeout], &o));
        assert!(!is_failure(
            &[Condition::Status5xx],
            &Observed::of(&res(200, Some("0")))
        ));
    }
}
