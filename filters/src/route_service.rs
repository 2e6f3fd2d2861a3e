//! The boxed service every filter wraps and every route ends in.
//!
//! tower's `BoxCloneSyncService` allocates on every clone and boxes every
//! future again, and each layer clones its inner service per request (to
//! move it into its future): a dozen allocations per request in a
//! four-filter chain. Here the service sits behind an `Arc`: a clone is a
//! reference count, and a service whose future is already boxed is not
//! boxed twice. Every kaname service is always ready, so `poll_ready` is
//! `Ready` and a call clones the shared service (cheap: its state is in
//! `Arc`s) to get the `&mut` tower asks for.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

use crate::Body;

/// The future of a route service.
pub type RouteFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

trait Call: Send + Sync {
    fn call(&self, req: Request<Body>) -> RouteFuture;
}

/// A service whose future is already a [`RouteFuture`].
struct Boxed<S>(S);
/// A service whose future still needs a box.
struct Unboxed<S>(S);

impl<S> Call for Boxed<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future = RouteFuture>
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
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone + Send + Sync,
    S::Future: Send + 'static,
{
    fn call(&self, req: Request<Body>) -> RouteFuture {
        Box::pin(self.0.clone().call(req))
    }
}

/// A shared, always-ready service from requests to responses.
#[derive(Clone)]
pub struct RouteService(Arc<dyn Call>);

impl RouteService {
    /// Any always-ready service; its futures are boxed.
    pub fn new<S>(service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
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
                Error = Infallible,
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
    type Error = Infallible;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> RouteFuture {
        self.0.call(req)
    }
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

    #[tokio::test]
    async fn clones_share_one_service_and_answer() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let svc = RouteService::new(tower::service_fn(move |_req: Request<Body>| {
            seen.fetch_add(1, Ordering::Relaxed);
            async { Ok::<_, Infallible>(Response::new(crate::body::empty())) }
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
