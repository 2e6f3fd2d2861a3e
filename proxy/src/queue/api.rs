//! `GET` and `DELETE /.kaname/jobs/<id>` on a listener with a queue route
//! (async.md): the router sends these paths to a stack of their own
//! (observed, rescued, answered here), so no route's filters apply (the id
//! is the capability) and nothing is forwarded. One id space per listener:
//! a job of a queue this listener does not route to is not found here.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use kaname_filters::{Body, ErrorKind, ProxyError, RouteFuture};
use tower::Service;

use super::job::Job;
use super::job::{now_ms, JobId};
use super::store::{Cancel, JobStore};
use super::QueueSet;

pub const PREFIX: &str = "/.kaname/jobs/";

/// The route label the jobs endpoint is counted under.
pub const ROUTE: &str = ".kaname/jobs";

/// The terminal of a listener's jobs stack.
#[derive(Clone)]
pub struct JobsApi {
    pub queues: Arc<QueueSet>,
    /// The queues this listener's routes hand requests to.
    pub names: Arc<[String]>,
}

impl Service<Request<Body>> for JobsApi {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> RouteFuture {
        let id = req.uri().path().strip_prefix(PREFIX).and_then(JobId::parse);
        let method = req.method().clone();
        let this = self.clone();
        Box::pin(async move { this.answer(method, id).await })
    }
}

fn no_job() -> ProxyError {
    ProxyError::new(ErrorKind::NoJob, "no such job (or it has expired)")
}

impl JobsApi {
    async fn answer(
        &self,
        method: Method,
        id: Option<JobId>,
    ) -> Result<Response<Body>, ProxyError> {
        let Some(id) = id else {
            return Err(no_job());
        };
        let (store, job) = self.find(id).await?.ok_or_else(no_job)?;
        match method {
            Method::GET | Method::HEAD => Ok(json(StatusCode::OK, job.view(id).to_string())),
            Method::DELETE => {
                let keep = self
                    .queues
                    .get(&job.queue)
                    .map_or(std::time::Duration::from_secs(86_400), |q| {
                        q.config.keep_finished
                    });
                let now = now_ms();
                match store
                    .cancel(id, now + keep.as_millis() as u64, now)
                    .await
                    .map_err(|e| ProxyError::new(ErrorKind::Overloaded, e.to_string()))?
                {
                    Cancel::Cancelled(cancelled) => {
                        if let Some(q) = self.queues.get(&job.queue) {
                            q.counters.cancelled.inc();
                            q.call_back(id, &cancelled);
                        }
                        let mut res = Response::new(kaname_filters::body::empty());
                        *res.status_mut() = StatusCode::NO_CONTENT;
                        Ok(res)
                    }
                    Cancel::NotFound => Err(no_job()),
                    Cancel::Conflict => Err(ProxyError::new(
                        ErrorKind::JobConflict,
                        format!(
                            "the job is {}: only a queued job can be cancelled",
                            job.status.as_str()
                        ),
                    )),
                }
            }
            _ => Err(ProxyError::new(
                ErrorKind::MethodNotAllowed,
                "jobs are read with GET and cancelled with DELETE",
            )
            .with_header(header::ALLOW, HeaderValue::from_static("GET, HEAD, DELETE"))),
        }
    }
}

impl JobsApi {
    /// The job and the store it is in: each store this listener's queues
    /// use is asked (the embedded one, shared ones), each once.
    async fn find(&self, id: JobId) -> Result<Option<(Arc<dyn JobStore>, Job)>, ProxyError> {
        let mut asked: Vec<Arc<dyn JobStore>> = Vec::new();
        for name in self.names.iter() {
            let Some(q) = self.queues.get(name) else {
                continue;
            };
            if asked.iter().any(|s| Arc::ptr_eq(s, &q.store)) {
                continue;
            }
            asked.push(q.store.clone());
            let found = q
                .store
                .get(id)
                .await
                .map_err(|e| ProxyError::new(ErrorKind::Overloaded, e.to_string()))?
                .filter(|j| self.names.contains(&j.queue));
            if let Some(job) = found {
                return Ok(Some((q.store.clone(), job)));
            }
        }
        Ok(None)
    }
}

fn json(status: StatusCode, body: String) -> Response<Body> {
    let mut res = Response::new(kaname_filters::body::full(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
