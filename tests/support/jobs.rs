//! Jobs of the asynchronous hand-off, seen from outside: an upstream that
//! records every delivery (`kaname-job-id`, `kaname-delivery-attempt`) and
//! can be scripted or held, and the calls a client makes on a queue route
//! and on `/.kaname/jobs/<id>`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::sync::Semaphore;

use super::net::{accept_each, bind_loopback};
use super::{full, HttpClient, Kaname, TestResponse};

/// One delivery as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub job: String,
    pub attempt: u32,
    pub path: String,
    pub body: Bytes,
    pub headers: http::HeaderMap,
}

/// An upstream that records deliveries, answers by `script(n)` (n counts
/// deliveries from 0) and, while `hold` has no permits, holds each one.
pub struct JobUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Delivery>>>,
    pub hold: Arc<Semaphore>,
    arrived: Arc<tokio::sync::Notify>,
}

type Script = Arc<dyn Fn(usize) -> (u16, &'static str) + Send + Sync>;

impl JobUpstream {
    pub async fn start(
        script: impl Fn(usize) -> (u16, &'static str) + Send + Sync + 'static,
    ) -> Self {
        Self::start_held(script, usize::MAX >> 4).await
    }

    pub async fn start_held(
        script: impl Fn(usize) -> (u16, &'static str) + Send + Sync + 'static,
        permits: usize,
    ) -> Self {
        let listener = bind_loopback("job upstream").await;
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let hold = Arc::new(Semaphore::new(permits));
        let arrived = Arc::new(tokio::sync::Notify::new());
        let script: Script = Arc::new(script);
        let n = Arc::new(AtomicUsize::new(0));
        let (s, h, a) = (seen.clone(), hold.clone(), arrived.clone());
        accept_each(listener, move |stream| {
            let (seen, hold, arrived, script, n) =
                (s.clone(), h.clone(), a.clone(), script.clone(), n.clone());
            async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (seen, hold, arrived, script, n) = (
                        seen.clone(),
                        hold.clone(),
                        arrived.clone(),
                        script.clone(),
                        n.clone(),
                    );
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let header = |k: &str| {
                            parts
                                .headers
                                .get(k)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string()
                        };
                        let i = n.fetch_add(1, Ordering::SeqCst);
                        seen.lock().unwrap().push(Delivery {
                            job: header("kaname-job-id"),
                            attempt: header("kaname-delivery-attempt").parse().unwrap_or(0),
                            path: parts.uri.to_string(),
                            body,
                            headers: parts.headers.clone(),
                        });
                        arrived.notify_waiters();
                        let permit = hold.acquire().await;
                        drop(permit);
                        let (status, text) = script(i);
                        let mut res = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
                        *res.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(res)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            }
        });
        JobUpstream {
            addr,
            seen,
            hold,
            arrived,
        }
    }

    pub fn seen(&self) -> Vec<Delivery> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until at least `n` deliveries arrived (within 15 s).
    pub async fn wait_deliveries(&self, n: usize) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let arrived = self.arrived.notified();
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!("{} of {n} deliveries within 15 s: {:#?}", seen.len(), seen);
            }
        }
    }
}

pub fn post(k: &Kaname, path: &str, body: &'static str) -> Request<super::client::Body> {
    Request::post(k.url("main", path)).body(full(body)).unwrap()
}

pub async fn status(k: &Kaname, id: &str) -> Value {
    let res = HttpClient::http1()
        .get(&k.url("main", &format!("/.kaname/jobs/{id}")))
        .await;
    assert_eq!(res.status, 200, "{}", res.text());
    res.json()
}

/// Polls the job until its status is `want` (within 15 s).
pub async fn wait_status(k: &Kaname, id: &str, want: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let v = status(k, id).await;
        if v["status"] == want {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} not {want} within 15 s: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn accepted(res: &TestResponse) -> String {
    assert_eq!(res.status, 202, "{}", res.text());
    let v = res.json();
    let id = v["job"].as_str().expect("job id").to_string();
    assert_eq!(id.len(), 22);
    assert_eq!(v["status_url"], format!("/.kaname/jobs/{id}"));
    assert_eq!(
        res.header("location"),
        Some(format!("/.kaname/jobs/{id}").as_str())
    );
    id
}
