//! One HTTP/2 connection per endpoint of an `protocol: http2` upstream,
//! shared by every request to it.
//!
//! Why not hyper-util's pooled client, as HTTP/1.1 upstreams use: it keys
//! connections by the request URI's authority, which HTTP/2 also sends as
//! `:authority`. Sending the client's authority on (request-model.md) would
//! then open a connection per authority a client invents; sending the
//! endpoint's address instead loses what the route matched. Here the
//! connection belongs to the endpoint and the authority to the request.

use std::sync::Mutex;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kaname_filters::{Body, BoxError};

use super::connector::Connector;

/// The connection of one endpoint: made on first use, made again when the
/// upstream closes it.
#[derive(Default)]
pub struct H2Conn {
    current: Mutex<Option<SendRequest<Body>>>,
    /// One connect at a time: requests that find no connection wait for it.
    connecting: tokio::sync::Mutex<()>,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum H2Error {
    /// No connection could be made (TCP, TLS or the HTTP/2 handshake).
    #[error("connect: {0}")]
    Connect(BoxError),
    /// The connection broke, or the stream was reset, before the answer.
    #[error(transparent)]
    Request(#[from] hyper::Error),
}

impl H2Error {
    pub fn is_connect(&self) -> bool {
        matches!(self, H2Error::Connect(_))
    }

    /// The request never reached the upstream (the connection was closing):
    /// safe to send again on a new connection.
    pub fn not_sent(&self) -> bool {
        matches!(self, H2Error::Request(e) if e.is_canceled() || e.is_closed())
    }
}

impl std::fmt::Debug for H2Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("H2Conn")
    }
}

impl H2Conn {
    /// Sends `req` (its URI absolute, with the authority to show) on the
    /// endpoint's connection, made through `connector` to `endpoint`.
    pub async fn send(
        &self,
        connector: &Connector,
        endpoint: &Uri,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, H2Error> {
        let mut sender = self.sender(connector, endpoint).await?;
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    }

    fn open(&self) -> Option<SendRequest<Body>> {
        let current = self.current.lock().ok()?;
        current.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    async fn sender(
        &self,
        connector: &Connector,
        endpoint: &Uri,
    ) -> Result<SendRequest<Body>, H2Error> {
        if let Some(s) = self.open() {
            return Ok(s);
        }
        // Boxed: the connect (TCP, TLS, HTTP/2 handshake) is rare and its
        // state large; inline it would grow every try's future (and every
        // route's forward future, HTTP/1 ones too) by kilobytes.
        Box::pin(self.connect(connector, endpoint)).await
    }

    async fn connect(
        &self,
        connector: &Connector,
        endpoint: &Uri,
    ) -> Result<SendRequest<Body>, H2Error> {
        let _one = self.connecting.lock().await;
        if let Some(s) = self.open() {
            return Ok(s);
        }
        let io = tower::ServiceExt::oneshot(connector.clone(), endpoint.clone())
            .await
            .map_err(H2Error::Connect)?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| H2Error::Connect(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        if let Ok(mut current) = self.current.lock() {
            *current = Some(sender.clone());
        }
        Ok(sender)
    }
}
