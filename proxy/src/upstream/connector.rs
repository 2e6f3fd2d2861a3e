//! The connector of an upstream's pool: TCP, then TLS when the upstream has
//! a `tls` section. TLS is decided by the upstream, not by the URI scheme,
//! so requests keep their `http` URIs (the pool keys connections by
//! address; the name to verify comes from `server_name`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use kaname_filters::BoxError;
use tokio::net::TcpStream;

use crate::tls::client::ClientTls;

#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    /// Err: the TLS files did not load, so every connect fails with why
    /// (never falls back to plain text).
    tls: Result<Option<Arc<ClientTls>>, Arc<str>>,
}

impl Connector {
    pub fn new(http: HttpConnector, tls: Result<Option<Arc<ClientTls>>, String>) -> Self {
        Connector {
            http,
            tls: tls.map_err(Arc::from),
        }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = MaybeHttpsStream<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tcp = self.http.call(uri.clone());
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = tcp.await?;
            match tls {
                Ok(None) => Ok(MaybeHttpsStream::Http(tcp)),
                Ok(Some(tls)) => tls.connect(&uri, tcp).await,
                Err(why) => Err(why.to_string().into()),
            }
        })
    }
}
