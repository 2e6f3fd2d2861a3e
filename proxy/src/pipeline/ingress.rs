//! The listener's steps, before a route is chosen: the request model, the
//! request id, the peer's identity header, and the router that hands the
//! request to its route's stack (or to the listener's no-route stack).
//! Each is a pass-through tower service: its future is the inner one's, so
//! these steps box nothing.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use kaname_filters::{
    is_grpc, Body, ErrorKind, ProxyError, RequestContext, RouteFuture, RouteService,
};
use tower::{Layer, Service};

use crate::chain::RouteTable;
use crate::headers::{ensure_request_id, strip_hop_by_hop};
use crate::request_model::{Refusal, RequestModel};
use crate::tls::server::ConnTls;

/// Why no route serves a request: in its extensions, for the no-route
/// stack's terminal ([`super::Unrouted`]) to answer.
#[derive(Debug, Clone)]
pub enum NotRouted {
    /// The request model refused it (or it was `OPTIONS *`).
    Model(Refusal),
    /// Its client certificate names no allowed identity.
    Identity,
    /// No route matches.
    NoRoute(String),
}

// === request model ===

/// Puts the request in its one normalized form and strips hop-by-hop
/// headers (request-model.md); a refused request goes on, marked, to the
/// no-route stack, so it is counted and logged like any other.
#[derive(Clone)]
pub struct RequestModelLayer(pub Arc<RequestModel>);

#[derive(Clone)]
pub struct RequestModelService {
    model: Arc<RequestModel>,
    inner: RouteService,
}

impl Layer<RouteService> for RequestModelLayer {
    type Service = RequestModelService;
    fn layer(&self, inner: RouteService) -> RequestModelService {
        RequestModelService {
            model: self.0.clone(),
            inner,
        }
    }
}

impl Service<Request<Body>> for RequestModelService {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> RouteFuture {
        let (mut parts, body) = req.into_parts();
        // Nothing after this reads the raw target.
        let model = self.model.apply(&mut parts);
        strip_hop_by_hop(&mut parts.headers, matches!(model, Ok(true)));
        // After the strip: a content-type named in Connection never reaches
        // the upstream, so it cannot make a request gRPC here either.
        let grpc = is_grpc(&parts.headers);
        if let Some(ctx) = parts.extensions.get_mut::<RequestContext>() {
            ctx.grpc = grpc;
        }
        if let Err(refusal) = model {
            parts.extensions.insert(NotRouted::Model(refusal));
        }
        self.inner.call(Request::from_parts(parts, body))
    }
}

// === request id ===

/// Keeps the client's `x-request-id` or sets a new one; the observe layer
/// puts it on the answer.
#[derive(Clone)]
pub struct RequestIdLayer;

#[derive(Clone)]
pub struct RequestIdService(RouteService);

impl Layer<RouteService> for RequestIdLayer {
    type Service = RequestIdService;
    fn layer(&self, inner: RouteService) -> RequestIdService {
        RequestIdService(inner)
    }
}

impl Service<Request<Body>> for RequestIdService {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> RouteFuture {
        ensure_request_id(req.headers_mut());
        self.0.call(req)
    }
}

// === peer identity ===

/// On a TLS listener: the identity header is kaname's word, never the
/// client's — removed, then set from the client certificate's identity.
#[derive(Clone)]
pub struct PeerIdentityLayer;

#[derive(Clone)]
pub struct PeerIdentityService(RouteService);

impl Layer<RouteService> for PeerIdentityLayer {
    type Service = PeerIdentityService;
    fn layer(&self, inner: RouteService) -> PeerIdentityService {
        PeerIdentityService(inner)
    }
}

impl Service<Request<Body>> for PeerIdentityService {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> RouteFuture {
        if let Some(t) = req.extensions().get::<Arc<ConnTls>>().cloned() {
            let h = req.headers_mut();
            h.remove(&t.header);
            if let Some(id) = &t.identity {
                h.insert(t.header.clone(), id.clone());
            }
        }
        self.0.call(req)
    }
}

// === router ===

/// The listener's terminal: the first route that matches gets the request
/// (its stack), else the no-route stack does.
#[derive(Clone)]
pub struct Router(pub Arc<RouteTable>);

impl Service<Request<Body>> for Router {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> RouteFuture {
        let table = &self.0;
        if req.extensions().get::<NotRouted>().is_some() {
            return table.no_route.clone().call(req);
        }
        // A client whose identity is not allowed learns nothing of the
        // routes: 403 on any path (a routed request gets it from its
        // route's identity step, counted on that route).
        let denied = req
            .extensions()
            .get::<Arc<ConnTls>>()
            .is_some_and(|t| !t.allowed);
        if let Some(jobs) = table.jobs.as_ref().filter(|_| !denied) {
            if req.uri().path().starts_with(crate::queue::api::PREFIX) {
                return jobs.clone().call(req);
            }
        }
        let (parts, body) = req.into_parts();
        let found = table.find(&parts);
        req = Request::from_parts(parts, body);
        match found {
            Some(route) => {
                if let Some(ctx) = req.extensions_mut().get_mut::<RequestContext>() {
                    ctx.route = route.name.clone();
                    ctx.upstream = route.upstream.clone();
                }
                route.stack.clone().call(req)
            }
            None => {
                let why = if denied {
                    NotRouted::Identity
                } else {
                    NotRouted::NoRoute(format!(
                        "no route for {} {}",
                        req.method(),
                        req.uri().path()
                    ))
                };
                req.extensions_mut().insert(why);
                table.no_route.clone().call(req)
            }
        }
    }
}

/// The no-route stack's terminal: answers what [`NotRouted`] says.
#[derive(Clone)]
pub struct Unrouted {
    pub listener: Arc<str>,
}

impl Service<Request<Body>> for Unrouted {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<Body>) -> RouteFuture {
        let answer = match req.extensions_mut().remove::<NotRouted>() {
            Some(NotRouted::Model(refusal)) => refusal.answer(),
            Some(NotRouted::Identity) => Err(ProxyError::new(
                ErrorKind::Forbidden,
                format!(
                    "client identity is not allowed on listener \"{}\"",
                    self.listener
                ),
            )),
            Some(NotRouted::NoRoute(msg)) => Err(ProxyError::new(ErrorKind::NoRoute, msg)),
            None => Err(ProxyError::new(
                ErrorKind::NoRoute,
                format!("no route for {} {}", req.method(), req.uri().path()),
            )),
        };
        Box::pin(std::future::ready(answer))
    }
}
