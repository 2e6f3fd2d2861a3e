//! The boxed service every layer of a route wraps and every route ends in,
//! the boxed layer a built filter gives a route, and the one helper that
//! turns a filter's async body into a route future.
//!
//! tower's `BoxCloneSyncService` allocates on every clone and boxes every
//! future again, and each layer clones its inner service per request (to
//! move it into its future): a dozen allocations per request in a
//! four-filter chain. Here the service sits behind an `Arc`: a clone is a
//! reference count, and a service whose future is already boxed is not
//! boxed twice. Every kaname service is always ready, so `poll_ready` is
//! `Ready` and a call clones the shared service (cheap: its state is in
//! `Arc`s) to get the `&mut` tower asks for. Layers that wrap it still poll
//! it (`ServiceExt::ready`), so a tower middleware with back-pressure
//! stacked into a route keeps it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use crate::{Body, ProxyError};

/// The future of a route service.
pub type RouteFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send>>;

trait Call: Send + Sync {
    fn call(&self, req: Request<Body>) -> RouteFuture;
}

/// A service whose future is already a [`RouteFuture`].
struct Boxed<S>(S);
/// A service whose future still needs a box: any tower service, which may
/// not always be ready, so each call on a clone waits for its readiness
/// first (`oneshot`) — a stacked middleware's back-pressure holds.
struct Unboxed<S>(S);

impl<S> Call for Boxed<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError, Future = RouteFuture>
        + Clone
        + Send
        + Sync,
{
    fn call(&self, req: Request<Body>) -> RouteFuture {
        self.0.clone().call(req)
    }
}

impl<S> Call for Unboxed<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    fn call(&self, req: Request<Body>) -> RouteFuture {
        Box::pin(tower::ServiceExt::oneshot(self.0.clone(), req))
    }
}

/// A shared, always-ready service from requests to responses.
#[derive(Clone)]
pub struct RouteService(Arc<dyn Call>);

impl RouteService {
    /// Any always-ready service; its futures are boxed.
    pub fn new<S>(service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        RouteService(Arc::new(Unboxed(service)))
    }

    /// An always-ready service whose futures are boxed already.
    pub fn from_boxed<S>(service: S) -> Self
    where
        S: Service<
                Request<Body>,
                Response = Response<Body>,
                Error = ProxyError,
                Future = RouteFuture,
            > + Clone
            + Send
            + Sync
            + 'static,
    {
        RouteService(Arc::new(Boxed(service)))
    }
}

impl Service<Request<Body>> for RouteService {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> RouteFuture {
        self.0.call(req)
    }
}

/// A tower layer over route services, boxed: what a built filter gives each
/// route it is on (`BuiltFilter::layer`), and what the proxy stacks.
#[derive(Clone)]
pub struct RouteLayer(Arc<dyn Layer<RouteService, Service = RouteService> + Send + Sync>);

impl RouteLayer {
    /// Any tower layer whose services take and give kaname's types: a
    /// filter's own, or a tower / tower-http middleware. Its services'
    /// futures are boxed.
    pub fn new<L>(layer: L) -> Self
    where
        L: Layer<RouteService> + Send + Sync + 'static,
        L::Service: Service<Request<Body>, Response = Response<Body>, Error = ProxyError>
            + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as Service<Request<Body>>>::Future: Send + 'static,
    {
        RouteLayer(Arc::new(Boxing(layer, RouteService::new)))
    }

    /// A layer whose services' futures are [`RouteFuture`]s already.
    pub fn boxed<L>(layer: L) -> Self
    where
        L: Layer<RouteService> + Send + Sync + 'static,
        L::Service: Service<
                Request<Body>,
                Response = Response<Body>,
                Error = ProxyError,
                Future = RouteFuture,
            > + Clone
            + Send
            + Sync
            + 'static,
    {
        RouteLayer(Arc::new(Boxing(layer, RouteService::from_boxed)))
    }
}

impl Layer<RouteService> for RouteLayer {
    type Service = RouteService;

    fn layer(&self, inner: RouteService) -> RouteService {
        self.0.layer(inner)
    }
}

impl std::fmt::Debug for RouteLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteLayer")
    }
}

/// A layer whose services are boxed into route services by `box_it`.
struct Boxing<L, S>(L, fn(S) -> RouteService);

impl<L, S> Layer<RouteService> for Boxing<L, S>
where
    L: Layer<RouteService, Service = S>,
{
    type Service = RouteService;

    fn layer(&self, inner: RouteService) -> RouteService {
        (self.1)(self.0.layer(inner))
    }
}

/// The call of a service whose work is an async fn taking the service by
/// value (`run`): the service that was polled ready moves into the future,
/// a clone stays for the next call (tower's rule for cloned services).
pub fn call_async<T, F, Fut>(service: &mut T, req: Request<Body>, run: F) -> RouteFuture
where
    T: Clone,
    F: FnOnce(T, Request<Body>) -> Fut,
    Fut: Future<Output = Result<Response<Body>, ProxyError>> + Send + 'static,
{
    let clone = service.clone();
    let ready = std::mem::replace(service, clone);
    Box::pin(run(ready, req))
}

/// Calls `inner` once it is ready: what a layer does with its inner route
/// service (always ready today, but a stacked tower middleware may not be).
pub async fn ready_call(
    inner: &mut RouteService,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    use tower::ServiceExt;
    inner.ready().await?.call(req).await
}

impl std::fmt::Debug for RouteService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteService")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ok_service() -> RouteService {
        RouteService::new(tower::service_fn(|_req: Request<Body>| async {
            Ok::<_, ProxyError>(Response::new(crate::body::empty()))
        }))
    }

    #[tokio::test]
    async fn a_tower_http_layer_stacks_into_a_route() {
        use http::{HeaderName, HeaderValue};
        use tower_http::set_header::SetResponseHeaderLayer;
        let layer = RouteLayer::new(SetResponseHeaderLayer::overriding(
            HeaderName::from_static("x-stacked"),
            HeaderValue::from_static("yes"),
        ));
        let mut svc = layer.layer(ok_service());
        let res = svc.call(Request::new(crate::body::empty())).await.unwrap();
        assert_eq!(res.headers()["x-stacked"], "yes");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stacked_middlewares_back_pressure_holds() {
        // tower's concurrency limit of 1 over an upstream that takes 1s:
        // the second call waits for the first (its readiness), not panics.
        let slow = RouteService::new(tower::service_fn(|_req: Request<Body>| async {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            Ok::<_, ProxyError>(Response::new(crate::body::empty()))
        }));
        let svc = RouteLayer::new(tower::limit::ConcurrencyLimitLayer::new(1)).layer(slow);
        let started = tokio::time::Instant::now();
        let (a, b) = tokio::join!(
            svc.clone().call(Request::new(crate::body::empty())),
            svc.clone().call(Request::new(crate::body::empty())),
        );
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(started.elapsed(), std::time::Duration::from_secs(2));
    }

    #[tokio::test]
    async fn clones_share_one_service_and_answer() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let svc = RouteService::new(tower::service_fn(move |_req: Request<Body>| {
            seen.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, ProxyError>(Response::new(crate::body::empty())) }
        }));
        let mut a = svc.clone();
        let mut b = svc;
        assert!(Arc::ptr_eq(&a.0, &b.0));
        let ra = a.call(Request::new(crate::body::empty())).await.unwrap();
        let rb = b.call(Request::new(crate::body::empty())).await.unwrap();
        assert_eq!((ra.status().as_u16(), rb.status().as_u16()), (200, 200));
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }
}
