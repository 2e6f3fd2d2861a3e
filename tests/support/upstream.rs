//! Real upstream servers on 127.0.0.1, in process: a recording echo server
//! (optionally slow) served by hyper-util's auto builder (HTTP/1.1 and h2c),
//! and a WebSocket echo server.
//!
//! The echo server answers, by request:
//! - `/echo-body`: the request body streamed back as is;
//! - `?size=N`: N bytes of `x` streamed in 64 KiB chunks (request body drained);
//! - `?status=N`: that status;
//! - `?hop=1`: adds hop-by-hop headers to the response
//!   (`Connection: x-up-custom`, `X-Up-Custom: 1`, `Keep-Alive: timeout=5`);
//! - otherwise a JSON summary
//!   `{"server","method","path","version","headers":{..},"body_len"}`
//!   (the body is counted frame by frame, never held whole).
//!
//! Every answer carries `x-upstream: <server name>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::client::{full, Body, BoxError};
use super::net::{accept_each, bind_loopback};

/// What an upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// Path and query.
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
    /// Bytes of request body; None for `/echo-body` (streamed back, not counted).
    pub body_len: Option<u64>,
    /// The target's authority: HTTP/2's `:authority` (None for HTTP/1.1's
    /// origin form, whose authority is `Host`).
    pub authority: Option<String>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

struct State {
    name: String,
    delay: Duration,
    /// Requests whose head arrived (counted before any delay).
    hits: watch::Sender<usize>,
    recorded: Mutex<Vec<Recorded>>,
}

/// A recording echo server; stops accepting on drop.
pub struct TestUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl TestUpstream {
    pub async fn start(name: &str) -> TestUpstream {
        Self::slow(name, Duration::ZERO).await
    }

    /// Waits `delay` after each request head before answering.
    pub async fn slow(name: &str, delay: Duration) -> TestUpstream {
        let listener = bind_loopback("upstream").await;
        let addr = listener.local_addr().expect("upstream addr");
        let state = Arc::new(State {
            name: name.to_string(),
            delay,
            hits: watch::channel(0).0,
            recorded: Mutex::new(Vec::new()),
        });
        let accept_state = state.clone();
        let task = accept_each(listener, move |stream| {
            let state = accept_state.clone();
            async move {
                let svc = service_fn(move |req| handle(state.clone(), req));
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            }
        });
        TestUpstream { addr, state, task }
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Request heads received so far.
    pub fn hits(&self) -> usize {
        *self.state.hits.borrow()
    }

    /// Requests recorded so far (a request is recorded once its body is read).
    pub fn recorded(&self) -> Vec<Recorded> {
        self.state.recorded.lock().expect("lock").clone()
    }

    pub fn last(&self) -> Recorded {
        self.recorded()
            .pop()
            .unwrap_or_else(|| panic!("upstream {} recorded no request", self.name()))
    }

    /// Waits until at least `n` request heads arrived, at most `deadline`.
    pub async fn wait_hits(&self, n: usize, deadline: Duration) {
        let mut rx = self.state.hits.subscribe();
        let waited = tokio::time::timeout(deadline, rx.wait_for(|h| *h >= n)).await;
        assert!(
            matches!(waited, Ok(Ok(_))),
            "upstream {} saw {} requests, expected {n} within {deadline:?}",
            self.name(),
            self.hits()
        );
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    state.hits.send_modify(|n| *n += 1);
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    let (parts, mut body) = req.into_parts();
    let query = parts.uri.query().unwrap_or_default().to_string();
    let param = |key: &str| {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| v.to_string())
        })
    };
    let status = param("status")
        .and_then(|s| s.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut resp = Response::builder()
        .status(status)
        .header("x-upstream", state.name.as_str());
    if param("hop").is_some() {
        resp = resp
            .header("connection", "x-up-custom")
            .header("x-up-custom", "1")
            .header("keep-alive", "timeout=5");
    }
    let mut rec = Recorded {
        method: parts.method.clone(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        version: parts.version,
        headers: parts.headers.clone(),
        body_len: None,
        authority: parts.uri.authority().map(|a| a.to_string()),
    };

    if parts.uri.path() == "/echo-body" {
        state.recorded.lock().expect("lock").push(rec);
        let echoed = body.map_err(BoxError::from).boxed();
        return Ok(resp.body(echoed).expect("response"));
    }

    // Count the request body frame by frame.
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => len += frame.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    rec.body_len = Some(len);
    state.recorded.lock().expect("lock").push(rec.clone());

    if let Some(size) = param("size").and_then(|s| s.parse::<u64>().ok()) {
        return Ok(resp.body(sized_body(size)).expect("response"));
    }

    let mut headers = serde_json::Map::new();
    for name in rec.headers.keys() {
        let values: Vec<&str> = rec
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<binary>"))
            .collect();
        headers.insert(name.to_string(), values.join(", ").into());
    }
    let summary = serde_json::json!({
        "server": state.name,
        "method": rec.method.as_str(),
        "path": rec.path,
        "version": format!("{:?}", rec.version),
        "headers": headers,
        "body_len": len,
    });
    Ok(resp
        .header("content-type", "application/json")
        .body(full(summary.to_string()))
        .expect("response"))
}

static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// `size` bytes of `x`, generated lazily in 64 KiB chunks (never held whole).
pub fn sized_body(size: u64) -> Body {
    let stream = futures_util::stream::unfold(size, |left| async move {
        if left == 0 {
            return None;
        }
        let n = left.min(CHUNK.len() as u64) as usize;
        let frame = Frame::data(Bytes::from_static(&CHUNK[..n]));
        Some((Ok::<_, BoxError>(frame), left - n as u64))
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// A WebSocket server echoing text and binary messages; stops on drop.
pub struct WsEchoServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl WsEchoServer {
    pub async fn start() -> WsEchoServer {
        let listener = bind_loopback("ws upstream").await;
        let addr = listener.local_addr().expect("ws upstream addr");
        let task = accept_each(listener, |stream| async move {
            let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            let (mut tx, mut rx) = ws.split();
            while let Some(Ok(msg)) = rx.next().await {
                if msg.is_text() || msg.is_binary() {
                    if tx.send(msg).await.is_err() {
                        break;
                    }
                } else if msg.is_close() {
                    break;
                }
            }
        });
        WsEchoServer { addr, task }
    }
}

impl Drop for WsEchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
