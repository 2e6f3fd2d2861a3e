//! `allowed_identities`: the TLS handshake accepts any certificate of
//! `client_ca`; which identities may send requests is decided here, per
//! request, so a refused client gets a 403 it can read (not a failed
//! handshake) and the refusal is counted on its route.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use kaname_filters::{Body, ErrorKind, ProxyError, RouteFuture, RouteService};
use tower::{Layer, Service};

use crate::tls::server::ConnTls;

#[derive(Clone)]
pub struct IdentityCheckLayer {
    pub listener: Arc<str>,
}

#[derive(Clone)]
pub struct IdentityCheck {
    inner: RouteService,
    listener: Arc<str>,
}

impl Layer<RouteService> for IdentityCheckLayer {
    type Service = IdentityCheck;
    fn layer(&self, inner: RouteService) -> IdentityCheck {
        IdentityCheck {
            inner,
            listener: self.listener.clone(),
        }
    }
}

impl Service<Request<Body>> for IdentityCheck {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> RouteFuture {
        match req.extensions().get::<Arc<ConnTls>>() {
            Some(t) if !t.allowed => {
                let id = t
                    .identity
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let message = format!(
                    "client identity {id:?} is not allowed on listener \"{}\"",
                    self.listener
                );
                super::refuse(ProxyError::new(ErrorKind::Forbidden, message))
            }
            _ => self.inner.call(req),
        }
    }
}
