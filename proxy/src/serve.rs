//! Which HTTP a client connection speaks, and the hyper connection serving it.
//!
//! hyper-util's `auto` connection reads the first bytes itself to look for
//! the HTTP/2 preface, then gives them back to hyper's HTTP/1 codec as a
//! read of their own. That first read is 24 bytes, so hyper's next read
//! finds its 8 KiB buffer short of the 8 KiB it reads ahead and doubles it:
//! every HTTP/1 connection then holds a 16 KiB read buffer for its life
//! (massif, bench/README.md), and its future is as large as an HTTP/2
//! connection's. Here the protocol is known before hyper reads — the
//! listener serves one, TLS's ALPN names one, or a peek at a cleartext
//! connection's first bytes shows it — and hyper's own HTTP/1 or HTTP/2
//! connection serves it. Only a connection whose first bytes are a part of
//! the preface (or a TLS client that named no protocol) goes to `auto`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::server::conn::{http1, http2};
use hyper::service::{HttpService, Service};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use kaname_config::ListenerProtocol;
use kaname_filters::BoxError;

use crate::tls::io::ServerIo;

/// What the connection speaks, as far as can be told before hyper reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// Not known yet: hyper-util's `auto` reads and decides.
    Unknown,
}

/// The client connection preface of HTTP/2 (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Finds the protocol of a new connection. On cleartext this waits for the
/// first bytes (the caller bounds the wait) and peeks at them: nothing is
/// consumed, so hyper reads them in its first read.
pub async fn detect(io: &ServerIo, listener: ListenerProtocol) -> io::Result<Protocol> {
    match listener {
        ListenerProtocol::Http1 => return Ok(Protocol::Http1),
        ListenerProtocol::Http2 => return Ok(Protocol::Http2),
        ListenerProtocol::Auto => {}
    }
    match io {
        ServerIo::Tls(tls) => Ok(match tls.get_ref().1.alpn_protocol() {
            Some(b"h2") => Protocol::Http2,
            Some(b"http/1.1") => Protocol::Http1,
            _ => Protocol::Unknown,
        }),
        ServerIo::Plain(tcp) => {
            let mut first = [0u8; PREFACE.len()];
            let n = tcp.peek(&mut first).await?;
            Ok(of_first_bytes(&first[..n]))
        }
    }
}

/// The protocol the first bytes of a cleartext connection show.
fn of_first_bytes(first: &[u8]) -> Protocol {
    if first.is_empty() || !PREFACE.starts_with(first) {
        // Not HTTP/2 (or the client closed: hyper sees the end).
        Protocol::Http1
    } else if first.len() == PREFACE.len() {
        Protocol::Http2
    } else {
        // A part of the preface: a peek cannot wait for the rest.
        Protocol::Unknown
    }
}

/// The settings a listener serves connections with, one builder per way.
pub struct ServeBuilders {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
    pub auto: auto::Builder<TokioExecutor>,
}

/// What hyper's three connections ask of the service a connection is
/// served by (one name for the bounds the impls below share).
pub trait ConnService:
    Service<
        Request<Incoming>,
        Response = Response<Self::ResBody>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Unpin
{
    type ResBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static;
}

impl<S, B> ConnService for S
where
    S: Service<Request<Incoming>, Response = Response<B>> + Unpin,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
    type ResBody = B;
}

/// And of its IO.
pub trait ConnIo: Read + Write + Unpin + Send + 'static {}

impl<T: Read + Write + Unpin + Send + 'static> ConnIo for T {}

/// A client connection being served.
// The HTTP/1 variant is the large one on purpose: it is the usual one, and
// boxing it would cost an allocation and a pointer hop per connection.
#[allow(clippy::large_enum_variant)]
pub enum Served<'a, I, S>
where
    S: HttpService<Incoming>,
{
    /// Inline: the connection almost every request comes on.
    Http1(http1::UpgradeableConnection<I, S>),
    /// Boxed: rarer, and larger (hpack tables, stream store).
    Http2(Pin<Box<http2::Connection<I, S, TokioExecutor>>>),
    Auto(Pin<Box<auto::UpgradeableConnection<'a, I, S, TokioExecutor>>>),
}

impl<'a, I: ConnIo, S: ConnService> Served<'a, I, S> {
    pub fn new(builders: &'a ServeBuilders, protocol: Protocol, io: I, service: S) -> Self {
        match protocol {
            Protocol::Http1 => {
                Served::Http1(builders.http1.serve_connection(io, service).with_upgrades())
            }
            Protocol::Http2 => {
                Served::Http2(Box::pin(builders.http2.serve_connection(io, service)))
            }
            Protocol::Unknown => Served::Auto(Box::pin(
                builders.auto.serve_connection_with_upgrades(io, service),
            )),
        }
    }

    /// Finishes the requests in flight, takes no new ones, then ends.
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        match self.get_mut() {
            Served::Http1(c) => Pin::new(c).graceful_shutdown(),
            Served::Http2(c) => c.as_mut().graceful_shutdown(),
            Served::Auto(c) => c.as_mut().graceful_shutdown(),
        }
    }
}

impl<I: ConnIo, S: ConnService> Future for Served<'_, I, S> {
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Served::Http1(c) => Pin::new(c).poll(cx).map_err(Into::into),
            Served::Http2(c) => c.as_mut().poll(cx).map_err(Into::into),
            Served::Auto(c) => c.as_mut().poll(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_the_protocol() {
        assert_eq!(of_first_bytes(b"GET / HTTP/1.1\r\n"), Protocol::Http1);
        assert_eq!(of_first_bytes(b"P"), Protocol::Unknown);
        assert_eq!(of_first_bytes(b"PRI * HTTP/2.0\r\n"), Protocol::Unknown);
        assert_eq!(of_first_bytes(PREFACE), Protocol::Http2);
        // "POST" shares only its first byte with the preface.
        assert_eq!(of_first_bytes(b"POST / HTTP/1.1\r\n"), Protocol::Http1);
        assert_eq!(
            of_first_bytes(b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n"),
            Protocol::Http1
        );
        assert_eq!(of_first_bytes(b""), Protocol::Http1);
    }
}
