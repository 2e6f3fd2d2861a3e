//! Upstreams that fail on purpose, for the resilience tests: each request
//! (other than `GET /healthz`, which always answers 200 while the server
//! runs) is numbered from 0 and the script says what to do with it. A server
//! can be killed (listener and every open connection closed at once) and
//! started again on the same port, held meanwhile.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::client::{full, Body};
use super::net::{accept_each, bind_loopback, ClosedPort};

/// What the server does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// 200 `ok from <name>`.
    Ok,
    /// That status, no body.
    Status(u16),
    /// Reads the request, then closes the connection without an answer.
    Reset,
    /// Never answers (for a minute).
    Hang,
}

type Script = Box<dyn FnMut(usize) -> Act + Send>;

struct State {
    name: String,
    hits: AtomicUsize,
    health_hits: AtomicUsize,
    bodies: Mutex<Vec<Bytes>>,
    script: Mutex<Script>,
}

impl State {
    fn new(name: &str, script: impl FnMut(usize) -> Act + Send + 'static) -> Arc<State> {
        Arc::new(State {
            name: name.to_string(),
            hits: AtomicUsize::new(0),
            health_hits: AtomicUsize::new(0),
            bodies: Mutex::new(Vec::new()),
            script: Mutex::new(Box::new(script)),
        })
    }
}

/// A scripted upstream; killed on drop.
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ScriptedUpstream {
    pub async fn start(name: &str, script: impl FnMut(usize) -> Act + Send + 'static) -> Self {
        let listener = bind_loopback("scripted upstream").await;
        Self::serve(listener, State::new(name, script))
    }

    /// Starts on `port`, the port of a killed server (see `kill`), where
    /// connections were refused until now.
    pub fn start_on(
        port: ClosedPort,
        name: &str,
        script: impl FnMut(usize) -> Act + Send + 'static,
    ) -> Self {
        Self::serve(port.listen(), State::new(name, script))
    }

    /// Kills the server: its listener and every open connection are closed
    /// at once. Its port stays held, not listening (connections to it are
    /// refused, and no other socket can take it), for `start_on`.
    pub async fn kill(mut self) -> ClosedPort {
        let _ = self.stop.send(true);
        self.task.abort();
        // The listener is closed once the accept task is gone.
        let _ = (&mut self.task).await;
        ClosedPort::at(self.addr)
    }

    fn serve(listener: TcpListener, state: Arc<State>) -> Self {
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = watch::channel(false);
        let accept_state = state.clone();
        let task = accept_each(listener, move |stream| {
            let state = accept_state.clone();
            let mut stopped = stopped.clone();
            async move {
                let svc = service_fn(move |req| handle(state.clone(), req));
                let builder = auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                // Killing the server drops every connection at once.
                tokio::select! {
                    _ = conn => {}
                    _ = stopped.wait_for(|s| *s) => {}
                }
            }
        });
        ScriptedUpstream {
            addr,
            state,
            stop,
            task,
        }
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Requests received (health checks not counted).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn health_hits(&self) -> usize {
        self.state.health_hits.load(Ordering::SeqCst)
    }

    /// The request bodies received, in order.
    pub fn bodies(&self) -> Vec<Bytes> {
        self.state.bodies.lock().expect("lock").clone()
    }

    pub fn set_script(&self, script: impl FnMut(usize) -> Act + Send + 'static) {
        *self.state.script.lock().expect("lock") = Box::new(script);
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        self.task.abort();
    }
}

#[derive(Debug)]
struct Hangup;
impl std::fmt::Display for Hangup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("scripted reset")
    }
}
impl std::error::Error for Hangup {}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Hangup> {
    if req.uri().path() == "/healthz" {
        state.health_hits.fetch_add(1, Ordering::SeqCst);
        return Ok(Response::new(full("healthy")));
    }
    let n = state.hits.fetch_add(1, Ordering::SeqCst);
    let act = (state.script.lock().expect("lock"))(n);
    let body = match req.into_body().collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    };
    state.bodies.lock().expect("lock").push(body);
    let status = match act {
        Act::Ok => {
            let text = format!("ok from {}", state.name);
            let mut res = Response::new(full(text));
            res.headers_mut()
                .insert("x-upstream", state.name.parse().expect("name"));
            return Ok(res);
        }
        Act::Status(s) => s,
        // An error from the service makes hyper close the connection.
        Act::Reset => return Err(Hangup),
        Act::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            500
        }
    };
    let mut res = Response::new(full(Bytes::new()));
    *res.status_mut() = StatusCode::from_u16(status).expect("status");
    Ok(res)
}
