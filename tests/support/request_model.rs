//! Helpers for tests/request_model.rs: raw HTTP/1.1 on tokio sockets (a
//! client side that reads a response exactly as it came, and scripted
//! upstreams that answer exactly the bytes a test gives them), a permissive
//! upstream that resolves paths as python's http.server does, an h2c-capable
//! upstream (`Upgrade: h2c` → 101 → HTTP/2 on the same connection), and an
//! HTTP/2 client (the `h2` crate) that sends `:path` as given.
//!
//! Every read here has a deadline; every server loop ends with its task.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::net::{accept_each, bind_loopback};

/// The longest request or response head read here.
const MAX_HEAD: usize = 64 * 1024;

// === raw wire ===

/// A TCP stream with a read buffer: lines, heads and bodies read with a
/// deadline.
pub struct Wire {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "deadline passed")
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed")
}

impl Wire {
    pub fn new(stream: TcpStream) -> Wire {
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn connect(port: u16) -> Wire {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        Wire::new(stream)
    }

    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Half-closes: sends FIN, keeps reading.
    pub async fn shutdown_write(&mut self) -> io::Result<()> {
        self.stream.shutdown().await
    }

    /// Reads more into the buffer; Ok(false) on EOF.
    async fn fill(&mut self, until: Option<Instant>) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = match until {
            Some(t) => tokio::time::timeout_at(t, self.stream.read(&mut chunk))
                .await
                .map_err(|_| timed_out())??,
            None => self.stream.read(&mut chunk).await?,
        };
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// A head up to and without its blank line; None on EOF before any byte.
    async fn head(&mut self, until: Option<Instant>) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                let head = self.buf[..at].to_vec();
                self.buf.drain(..at + 4);
                return Ok(Some(head));
            }
            if self.buf.len() > MAX_HEAD {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
            }
            if !self.fill(until).await? {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(eof())
                };
            }
        }
    }

    /// One line without its CRLF.
    async fn line(&mut self, until: Option<Instant>) -> io::Result<Vec<u8>> {
        loop {
            if let Some(at) = find(&self.buf, b"\r\n") {
                let line = self.buf[..at].to_vec();
                self.buf.drain(..at + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            if !self.fill(until).await? {
                return Err(eof());
            }
        }
    }

    /// Appends `n` bytes to `out`, as many as came before an error.
    async fn take(
        &mut self,
        n: usize,
        out: &mut Vec<u8>,
        until: Option<Instant>,
    ) -> io::Result<()> {
        let mut left = n;
        loop {
            let k = left.min(self.buf.len());
            out.extend(self.buf.drain(..k));
            left -= k;
            if left == 0 {
                return Ok(());
            }
            if !self.fill(until).await? {
                return Err(eof());
            }
        }
    }

    /// A chunked body into `out`; Ok once the last chunk and trailers came.
    async fn chunked(&mut self, out: &mut Vec<u8>, until: Option<Instant>) -> io::Result<()> {
        loop {
            let line = self.line(until).await?;
            let size = String::from_utf8_lossy(&line);
            let size = size.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size, 16).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, format!("chunk size {size:?}"))
            })?;
            if size == 0 {
                while !self.line(until).await?.is_empty() {}
                return Ok(());
            }
            self.take(size, out, until).await?;
            let mut crlf = Vec::new();
            self.take(2, &mut crlf, until).await?;
        }
    }

    /// One response (its body by its framing), within `deadline`.
    pub async fn response(&mut self, deadline: Duration) -> RawResponse {
        let until = Instant::now() + deadline;
        let mut resp = RawResponse::default();
        let head = match self.head(Some(until)).await {
            Ok(Some(head)) => head,
            Ok(None) => {
                resp.closed = true;
                return resp;
            }
            Err(e) => {
                resp.closed = e.kind() != io::ErrorKind::TimedOut;
                resp.error = Some(e.to_string());
                resp.head = String::from_utf8_lossy(&self.buf).into_owned();
                return resp;
            }
        };
        resp.head = String::from_utf8_lossy(&head).into_owned();
        let (status_line, headers) = parse_head(&resp.head);
        resp.status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        resp.headers = headers;
        let read = if resp.status < 200 || resp.status == 204 || resp.status == 304 {
            Ok(())
        } else if resp
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
        {
            self.chunked(&mut resp.body, Some(until)).await
        } else if let Some(len) = resp.header("content-length") {
            match len.trim().parse::<usize>() {
                Ok(n) => self.take(n, &mut resp.body, Some(until)).await,
                Err(_) => Err(io::Error::new(io::ErrorKind::InvalidData, "content-length")),
            }
        } else {
            // Delimited by the end of the connection.
            let (body, closed) = self.read_to_close(until - Instant::now()).await;
            resp.body = body;
            if closed {
                Ok(())
            } else {
                Err(timed_out())
            }
        };
        match read {
            Ok(()) => resp.complete = true,
            Err(e) => {
                resp.closed = e.kind() != io::ErrorKind::TimedOut;
                resp.error = Some(e.to_string());
            }
        }
        resp
    }

    /// Everything until the peer closes (or resets) or `deadline`; whether
    /// it closed.
    pub async fn read_to_close(&mut self, deadline: Duration) -> (Vec<u8>, bool) {
        let until = Instant::now() + deadline;
        let closed = loop {
            match self.fill(Some(until)).await {
                Ok(true) => {}
                Ok(false) => break true,
                Err(e) => break e.kind() != io::ErrorKind::TimedOut,
            }
        };
        (std::mem::take(&mut self.buf), closed)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The first line and the header fields (names lower-cased) of a head.
fn parse_head(head: &str) -> (String, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    (first, headers)
}

/// A response as read off the wire.
#[derive(Debug, Default)]
pub struct RawResponse {
    /// 0 when no head came.
    pub status: u16,
    /// The head as received (status line and fields).
    pub head: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended as its framing said.
    pub complete: bool,
    /// The connection ended (EOF or reset) while reading.
    pub closed: bool,
    pub error: Option<String>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn header_count(&self, name: &str) -> usize {
        self.headers.iter().filter(|(k, _)| k == name).count()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Status line and body, for failure messages.
    pub fn summary(&self) -> String {
        format!(
            "{:?} body {:?}{}",
            self.head.lines().next().unwrap_or("<no head>"),
            self.text(),
            self.error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )
    }
}

/// Connects, sends `raw` and reads one response.
pub async fn raw_exchange(port: u16, raw: &[u8], deadline: Duration) -> RawResponse {
    let mut wire = Wire::connect(port).await;
    if let Err(e) = wire.send(raw).await {
        return RawResponse {
            closed: true,
            error: Some(format!("write: {e}")),
            ..RawResponse::default()
        };
    }
    wire.response(deadline).await
}

// === raw request parsing, for the scripted upstreams ===

/// A request as a raw upstream received it.
#[derive(Debug, Clone, Default)]
pub struct RawRequest {
    pub method: String,
    /// The request target, byte for byte.
    pub target: String,
    /// Header fields, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One request off `wire`; None on EOF between requests.
async fn read_request(wire: &mut Wire, until: Option<Instant>) -> io::Result<Option<RawRequest>> {
    let Some(head) = wire.head(until).await? else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&head).into_owned();
    let (line, headers) = parse_head(&head);
    let mut parts = line.split(' ');
    let mut req = RawRequest {
        method: parts.next().unwrap_or_default().to_string(),
        target: parts.next().unwrap_or_default().to_string(),
        headers,
        body: Vec::new(),
    };
    if req
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
    {
        let mut body = Vec::new();
        wire.chunked(&mut body, until).await?;
        req.body = body;
    } else if let Some(n) = req.header("content-length").and_then(|v| v.parse().ok()) {
        let mut body = Vec::new();
        wire.take(n, &mut body, until).await?;
        req.body = body;
    }
    Ok(Some(req))
}

// === scripted raw upstream ===

/// What a raw upstream does after writing its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Waits for the next request on the connection.
    KeepAlive,
    /// Closes with FIN.
    Close,
}

/// The bytes a raw upstream writes for a request.
pub struct Reply {
    pub bytes: Vec<u8>,
    pub after: After,
}

impl Reply {
    pub fn keep(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            bytes: bytes.into(),
            after: After::KeepAlive,
        }
    }

    pub fn close(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply {
            bytes: bytes.into(),
            after: After::Close,
        }
    }
}

/// `200 OK` with a Content-Length body.
pub fn ok_reply(body: &str) -> Reply {
    Reply::keep(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ))
}

type Handler = Arc<dyn Fn(&RawRequest) -> Reply + Send + Sync>;

struct RawState {
    handler: Handler,
    requests: Mutex<Vec<RawRequest>>,
    hits: watch::Sender<usize>,
    connections: AtomicUsize,
    /// Close a connection this long after its last answer (or its start),
    /// alternating FIN and RST by connection.
    idle_close: Option<Duration>,
}

/// An upstream on a raw socket: reads HTTP/1.1 requests, records them, and
/// writes the bytes its handler returns. Stops on drop.
pub struct RawUpstream {
    pub addr: SocketAddr,
    state: Arc<RawState>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start(handler: impl Fn(&RawRequest) -> Reply + Send + Sync + 'static) -> Self {
        Self::serve(Arc::new(handler), None).await
    }

    /// Keep-alive, but each connection is closed `idle` after its last
    /// answer: even connections with FIN, odd ones with RST (SO_LINGER 0).
    pub async fn closing_idle(
        idle: Duration,
        handler: impl Fn(&RawRequest) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Self::serve(Arc::new(handler), Some(idle)).await
    }

    async fn serve(handler: Handler, idle_close: Option<Duration>) -> Self {
        let listener = bind_loopback("raw upstream").await;
        let addr = listener.local_addr().expect("raw upstream addr");
        let state = Arc::new(RawState {
            handler,
            requests: Mutex::new(Vec::new()),
            hits: watch::channel(0).0,
            connections: AtomicUsize::new(0),
            idle_close,
        });
        let accept_state = state.clone();
        let task = accept_each(listener, move |stream| {
            let state = accept_state.clone();
            let index = state.connections.fetch_add(1, Ordering::SeqCst);
            raw_connection(state, Wire::new(stream), index)
        });
        RawUpstream { addr, state, task }
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<RawRequest> {
        self.state.requests.lock().expect("lock").clone()
    }

    pub fn hits(&self) -> usize {
        *self.state.hits.borrow()
    }

    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn raw_connection(state: Arc<RawState>, mut wire: Wire, index: usize) {
    loop {
        let until = state.idle_close.map(|d| Instant::now() + d);
        let req = match read_request(&mut wire, until).await {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                if index % 2 == 1 {
                    // RST: SO_LINGER 0, then close.
                    let _ = wire.stream.set_zero_linger();
                } else {
                    let _ = wire.stream.shutdown().await;
                }
                return;
            }
            Err(_) => return,
        };
        let reply = (state.handler)(&req);
        state.requests.lock().expect("lock").push(req);
        state.hits.send_modify(|n| *n += 1);
        if wire.send(&reply.bytes).await.is_err() {
            return;
        }
        if reply.after == After::Close {
            let _ = wire.stream.shutdown().await;
            return;
        }
    }
}

// === the permissive upstream ===

/// How a lenient origin (python's `http.server`: `unquote` then
/// `posixpath.normpath`, plus backslash as a separator as Windows servers
/// take it) reads a request target: the path of an absolute-form target,
/// query dropped, percent-decoded once, dot segments resolved (never above
/// the root), repeated slashes collapsed. Case is kept.
pub fn permissive_resolve(target: &str) -> String {
    let mut path = target;
    if let Some(rest) = path
        .strip_prefix("http://")
        .or_else(|| path.strip_prefix("https://"))
    {
        path = rest.find('/').map_or("/", |i| &rest[i..]);
    }
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let decoded = percent_decode_once(path.as_bytes());
    let decoded = String::from_utf8_lossy(&decoded).replace('\\', "/");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn percent_decode_once(s: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' && i + 2 < s.len() {
            if let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

/// The permissive upstream: `SECRET` for any target that resolves under
/// `/api/` (case-sensitive), `public` otherwise. Records every raw target.
pub async fn permissive_upstream() -> RawUpstream {
    RawUpstream::start(|req| {
        if permissive_resolve(&req.target).starts_with("/api/") {
            ok_reply("SECRET")
        } else {
            ok_reply("public")
        }
    })
    .await
}

// === the h2c upstream ===

/// What the h2c upstream saw of one request.
#[derive(Debug, Clone)]
pub struct H2cSeen {
    pub version: Version,
    pub path: String,
    pub headers: HeaderMap,
}

/// An origin that honours `Upgrade: h2c`: it answers 101 and then serves
/// HTTP/2 on the upgraded connection, where `/api/secret` is `SECRET`.
/// Plain HTTP/1.1 requests get `public`. Stops on drop.
pub struct H2cUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<H2cSeen>>>,
    task: JoinHandle<()>,
}

type FullBody = Full<Bytes>;

impl H2cUpstream {
    pub async fn start() -> H2cUpstream {
        let listener = bind_loopback("h2c upstream").await;
        let addr = listener.local_addr().expect("h2c upstream addr");
        let seen: Arc<Mutex<Vec<H2cSeen>>> = Arc::default();
        let accept_seen = seen.clone();
        let task = accept_each(listener, move |stream| {
            let seen = accept_seen.clone();
            async move {
                let svc = service_fn(move |req| h2c_h1(seen.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            }
        });
        H2cUpstream { addr, seen, task }
    }

    pub fn seen(&self) -> Vec<H2cSeen> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for H2cUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(seen: &Mutex<Vec<H2cSeen>>, req: &Request<Incoming>) {
    seen.lock().expect("lock").push(H2cSeen {
        version: req.version(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        headers: req.headers().clone(),
    });
}

async fn h2c_h1(
    seen: Arc<Mutex<Vec<H2cSeen>>>,
    mut req: Request<Incoming>,
) -> Result<Response<FullBody>, Infallible> {
    record(&seen, &req);
    let wants_h2c = req
        .headers()
        .get(http::header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"h2c"));
    if wants_h2c {
        let upgrade = hyper::upgrade::on(&mut req);
        let seen = seen.clone();
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else {
                return;
            };
            let svc = service_fn(move |req| h2c_h2(seen.clone(), req));
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(upgraded, svc)
                .await;
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "Upgrade")
            .header("upgrade", "h2c")
            .body(Full::new(Bytes::new()))
            .expect("101");
        return Ok(resp);
    }
    let _ = req.into_body().collect().await;
    Ok(Response::new(Full::new(Bytes::from_static(b"public"))))
}

async fn h2c_h2(
    seen: Arc<Mutex<Vec<H2cSeen>>>,
    req: Request<Incoming>,
) -> Result<Response<FullBody>, Infallible> {
    record(&seen, &req);
    let body: &'static [u8] = if req.uri().path() == "/api/secret" {
        b"SECRET"
    } else {
        b"h2 public"
    };
    Ok(Response::new(Full::new(Bytes::from_static(body))))
}

// === HTTP/2 client (h2 crate) ===

/// An HTTP/2 answer.
#[derive(Debug)]
pub struct H2Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl H2Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP/2 connection (prior knowledge) to kaname on `port`.
pub async fn h2_connect(port: u16) -> Result<h2::client::SendRequest<Bytes>, String> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (client, conn) = h2::client::handshake(tcp)
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Sends `req` (its URI path sent as `:path` byte for byte) with `body` on
/// a new connection and reads the whole answer within `deadline`.
pub async fn h2_send(
    port: u16,
    req: Request<()>,
    body: Option<Bytes>,
    deadline: Duration,
) -> Result<H2Response, String> {
    let fut = async {
        let client = h2_connect(port).await?;
        let mut client = client.ready().await.map_err(|e| format!("ready: {e}"))?;
        let (resp, mut send) = client
            .send_request(req, body.is_none())
            .map_err(|e| format!("send_request: {e}"))?;
        if let Some(body) = body {
            send.send_data(body, true)
                .map_err(|e| format!("send_data: {e}"))?;
        }
        let resp = resp.await.map_err(|e| format!("response: {e}"))?;
        let (parts, mut recv) = resp.into_parts();
        let mut body = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.map_err(|e| format!("body: {e}"))?;
            let _ = recv.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        Ok(H2Response {
            status: parts.status,
            headers: parts.headers,
            body: body.into(),
        })
    };
    tokio::time::timeout(deadline, fut)
        .await
        .map_err(|_| format!("no whole HTTP/2 answer within {deadline:?}"))?
}

/// `GET http://{authority}{path}` as an h2 request (None when `http`
/// cannot hold that path in a URI).
pub fn h2_get(authority: &str, path: &str) -> Option<Request<()>> {
    let uri: http::Uri = format!("http://{authority}{path}").parse().ok()?;
    Request::get(uri).body(()).ok()
}
