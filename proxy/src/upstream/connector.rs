//! The connector of an upstream's pool: TCP, then TLS when the upstream has
//! a `tls` section. TLS is decided by the upstream, not by the URI scheme,
//! so requests keep their `http` URIs (the pool keys connections by
//! endpoint; the name to verify comes from `server_name`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use http::uri::Authority;
use http::Uri;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use kaname_filters::BoxError;
use tokio::net::TcpStream;

use super::endpoint::Endpoint;
use crate::tls::client::ClientTls;

/// The upstream's endpoints, shared with it: what the pool's keys stand
/// for. hyper-util's pool keys connections by the request URI's scheme and
/// authority and hashes that key with SipHash, a write per byte, three
/// times a request (checkout, return, the idle list); an address such as
/// `127.0.0.1:8080` cost ~3,000 instructions a request, 5% of a
/// passthrough (bench/README.md). The URI carries the endpoint's short
/// `pool_key` instead and the connector dials the address it stands for.
pub type EndpointList = Arc<ArcSwap<Vec<Arc<Endpoint>>>>;

/// What to dial for `uri`: the address its key stands for, or the URI
/// itself when it names an IP address (health checks, HTTP/2
/// connections). Anything else is refused: a key whose endpoint left the
/// upstream must never go to DNS (`e7` could name a host there).
fn dial(endpoints: &EndpointList, uri: Uri) -> Result<Uri, BoxError> {
    let authority = uri.authority().map(Authority::as_str).unwrap_or_default();
    if let Some(e) = endpoints
        .load()
        .iter()
        .find(|e| e.pool_key.as_str() == authority)
    {
        return Ok(e.connect_uri.clone());
    }
    let host = uri.host().unwrap_or_default();
    if host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_ok()
    {
        return Ok(uri);
    }
    Err(format!("endpoint {authority} is no longer in the upstream").into())
}

#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    endpoints: EndpointList,
    /// Err: the TLS files did not load, so every connect fails with why
    /// (never falls back to plain text).
    tls: Result<Option<Arc<ClientTls>>, Arc<str>>,
}

impl Connector {
    pub fn new(
        http: HttpConnector,
        tls: Result<Option<Arc<ClientTls>>, String>,
        endpoints: EndpointList,
    ) -> Self {
        Connector {
            http,
            endpoints,
            tls: tls.map_err(Arc::from),
        }
    }
}

/// An upstream connection as the pool sees it: TCP, or TLS over TCP.
///
/// Why not hyper-rustls's stream as it is: for a TCP stream hyper-util's
/// `Connected` carries `HttpInfo` (the two addresses), which the pool
/// inserts into the extensions of every response, allocating them: ~550
/// instructions a request, for addresses nothing in kaname reads. This
/// says only what the pool acts on: whether TLS negotiated HTTP/2.
pub struct UpstreamIo(MaybeHttpsStream<TokioIo<TcpStream>>);

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        match &self.0 {
            MaybeHttpsStream::Https(s) if s.inner().get_ref().1.alpn_protocol() == Some(b"h2") => {
                Connected::new().negotiated_h2()
            }
            _ => Connected::new(),
        }
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tower::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let uri = match dial(&self.endpoints, uri) {
            Ok(uri) => uri,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let tcp = self.http.call(uri.clone());
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = tcp.await?;
            match tls {
                Ok(None) => Ok(UpstreamIo(MaybeHttpsStream::Http(tcp))),
                Ok(Some(tls)) => tls.connect(&uri, tcp).await.map(UpstreamIo),
                Err(why) => Err(why.to_string().into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_dials_its_address_an_ip_dials_itself_a_name_is_refused() {
        let endpoint = Arc::new(Endpoint::new("127.0.0.1:8080".parse().expect("addr")));
        let key = endpoint.pool_key.to_string();
        let to = endpoint.connect_uri.clone();
        let endpoints: EndpointList = Arc::new(ArcSwap::from_pointee(vec![endpoint]));
        let dial = |u: &str| dial(&endpoints, u.parse().expect("uri"));
        assert_eq!(dial(&format!("http://{key}/")).ok(), Some(to));
        let ip = "http://10.0.0.1:9000/";
        assert_eq!(dial(ip).ok(), Some(Uri::from_static(ip)));
        let v6 = "http://[::1]:9000/";
        assert_eq!(dial(v6).ok(), Some(Uri::from_static(v6)));
        // A key of no endpoint here, or any name: never to DNS.
        let e = dial("http://e0/").expect_err("unknown key");
        assert!(e.to_string().contains("e0"), "{e}");
        assert!(dial("http://localhost:8080/").is_err());
        endpoints.store(Arc::new(Vec::new()));
        assert!(
            dial(&format!("http://{key}/")).is_err(),
            "gone with its endpoint"
        );
    }
}
