//! A real gRPC service and client for the tests, written by hand the way
//! tonic's generated code is (no protoc): prost messages, tonic's server
//! machinery (`tonic::server::Grpc`) dispatched by path and served over h2c
//! by hyper, and `tonic::client::Grpc` over one `tonic::transport::Channel`.
//!
//! The server is hyper's plain HTTP/2 server, not tonic's `Server`, on
//! purpose: tonic's server enforces `grpc-timeout` itself, and the deadline
//! tests must see kaname cut the call, not the upstream.
//!
//! Service `kaname.test.Echo`:
//! - `Unary`: echoes `message` and `payload`; sleeps `delay_ms` first; answers
//!   `fail_code` for the first `fail_times` calls of its `key`; waits for
//!   `rendezvous` calls of its `key` to be in flight at once before answering.
//! - `ServerStream`: `count` replies, `seq` 0.., `interval_ms` apart, then OK.
//! - `ClientStream`: one reply once the client ends its stream: the messages
//!   joined by `,` and `seq` = how many there were.
//! - `Bidi`: one reply per message, sent as soon as the message arrives.
//!
//! - `helloworld.Greeter/SayHello`: `Hello <name>` (counted under key `hello`).
//!
//! Every answer carries initial metadata `x-server: <name>` and
//! `x-seen-meta: <the request's x-test-meta>` (and the binary `x-bin-bin`
//! sent back as it came), and every OK answer trailing
//! metadata `x-trailer: done` next to `grpc-status`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;
use tonic::{Code, Status, Streaming};
use tonic_prost::ProstCodec;

use super::net::{accept_each, bind_loopback};

pub const SERVICE: &str = "kaname.test.Echo";
pub const UNARY: &str = "/kaname.test.Echo/Unary";
pub const SERVER_STREAM: &str = "/kaname.test.Echo/ServerStream";
pub const CLIENT_STREAM: &str = "/kaname.test.Echo/ClientStream";
pub const BIDI: &str = "/kaname.test.Echo/Bidi";

/// Messages up to this size pass both ends (tonic's default is 4 MiB).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
    #[prost(uint64, tag = "3")]
    pub delay_ms: u64,
    /// A gRPC code number; 0 = never fail.
    #[prost(int32, tag = "4")]
    pub fail_code: i32,
    #[prost(uint32, tag = "5")]
    pub fail_times: u32,
    /// Groups calls for `fail_times`, `rendezvous` and `calls()`.
    #[prost(string, tag = "6")]
    pub key: String,
    /// ServerStream: how many replies.
    #[prost(uint32, tag = "7")]
    pub count: u32,
    #[prost(uint32, tag = "8")]
    pub rendezvous: u32,
    /// ServerStream: pause between replies.
    #[prost(uint64, tag = "9")]
    pub interval_ms: u64,
    /// ServerStream: after the replies, end with this gRPC code in the
    /// trailers (0 = OK).
    #[prost(int32, tag = "10")]
    pub end_code: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
    #[prost(string, tag = "3")]
    pub server: String,
    #[prost(uint32, tag = "4")]
    pub seq: u32,
}

/// `helloworld.Greeter/SayHello`, the service grpc's own examples serve, so
/// `examples/grpc/` can be tried with them and tested with this server.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    #[prost(string, tag = "1")]
    pub message: String,
}

pub const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

impl EchoRequest {
    pub fn msg(message: &str) -> Self {
        EchoRequest {
            message: message.to_string(),
            ..Default::default()
        }
    }
}

/// The server's codec: encodes replies, decodes requests.
type ServerCodec = ProstCodec<EchoReply, EchoRequest>;
type BoxFut<T> = Pin<Box<dyn Future<Output = Result<tonic::Response<T>, Status>> + Send>>;
type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

struct State {
    name: String,
    /// Calls per `key`, counted when the call's first message is read.
    calls: watch::Sender<HashMap<String, u32>>,
    /// Request heads of every call, in arrival order.
    heads: Mutex<Vec<HeaderMap>>,
}

impl State {
    /// Counts a call of `key`; returns its number, from 1.
    fn count(&self, key: &str) -> u32 {
        let mut n = 0;
        self.calls.send_modify(|m| {
            let c = m.entry(key.to_string()).or_insert(0);
            *c += 1;
            n = *c;
        });
        n
    }
}

/// The gRPC echo server on 127.0.0.1 (h2c); stops accepting on drop.
pub struct GrpcUpstream {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl GrpcUpstream {
    pub async fn start(name: &str) -> GrpcUpstream {
        let listener = bind_loopback("grpc upstream").await;
        let addr = listener.local_addr().expect("grpc upstream addr");
        let state = Arc::new(State {
            name: name.to_string(),
            calls: watch::channel(HashMap::new()).0,
            heads: Mutex::new(Vec::new()),
        });
        let accept_state = state.clone();
        let task = accept_each(listener, move |stream| {
            let state = accept_state.clone();
            async move {
                let svc = hyper::service::service_fn(move |req| route(state.clone(), req));
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(1000)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
        });
        GrpcUpstream { addr, state, task }
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Calls of `key` received so far.
    pub fn calls(&self, key: &str) -> u32 {
        self.state.calls.borrow().get(key).copied().unwrap_or(0)
    }

    /// Request heads received so far.
    pub fn heads(&self) -> Vec<HeaderMap> {
        self.state.heads.lock().expect("lock").clone()
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type HttpBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, Status>;

/// What generated server code does: pick the method by path, hand the
/// request to `tonic::server::Grpc` with that method's handler.
async fn route(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<HttpBody>, Infallible> {
    state
        .heads
        .lock()
        .expect("lock")
        .push(req.headers().clone());
    let meta = req.headers().get("x-test-meta").cloned();
    let bin = req.headers().get("x-bin-bin").cloned();
    let mut grpc = tonic::server::Grpc::new(ServerCodec::default())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let s = state.clone();
    let res = match req.uri().path() {
        UNARY => grpc.unary(Unary(s), req).await,
        SERVER_STREAM => grpc.server_streaming(ServerStream(s), req).await,
        CLIENT_STREAM => grpc.client_streaming(ClientStream(s), req).await,
        BIDI => grpc.streaming(Bidi(s), req).await,
        SAY_HELLO => {
            tonic::server::Grpc::new(ProstCodec::<HelloReply, HelloRequest>::default())
                .unary(SayHello(s), req)
                .await
        }
        _ => Status::unimplemented("no such method").into_http(),
    };
    let (mut parts, body) = res.into_parts();
    parts.headers.insert(
        "x-server",
        HeaderValue::from_str(&state.name).expect("server name"),
    );
    if let Some(v) = meta {
        parts.headers.insert("x-seen-meta", v);
    }
    if let Some(v) = bin {
        parts.headers.insert("x-bin-bin", v);
    }
    // Custom trailing metadata next to grpc-status (tonic has no API for
    // trailers on an OK answer; generated servers would add a layer too).
    let body = body
        .map_frame(|frame| match frame.into_trailers() {
            Ok(mut t) => {
                if t.get("grpc-status").is_some_and(|v| v == "0") {
                    t.insert("x-trailer", HeaderValue::from_static("done"));
                }
                Frame::trailers(t)
            }
            Err(frame) => frame,
        })
        .boxed_unsync();
    Ok(Response::from_parts(parts, body))
}

fn reply(state: &State, message: String, payload: Vec<u8>, seq: u32) -> EchoReply {
    EchoReply {
        message,
        payload,
        server: state.name.clone(),
        seq,
    }
}

/// The scripted part of a call: count it, fail it, hold it.
async fn script(state: &State, req: &EchoRequest) -> Result<(), Status> {
    let n = state.count(&req.key);
    if req.fail_code != 0 && n <= req.fail_times {
        let code = Code::from_i32(req.fail_code);
        return Err(Status::new(
            code,
            format!("scripted failure {n} of {}", req.fail_times),
        ));
    }
    if req.rendezvous > 0 {
        let mut rx = state.calls.subscribe();
        let want = req.rendezvous;
        let key = req.key.clone();
        let met = tokio::time::timeout(
            Duration::from_secs(30),
            rx.wait_for(|m| m.get(&key).copied().unwrap_or(0) >= want),
        )
        .await;
        if !matches!(met, Ok(Ok(_))) {
            return Err(Status::internal(format!(
                "only {} of {want} calls were in flight at once",
                state.calls.borrow().get(&key).copied().unwrap_or(0)
            )));
        }
    }
    if req.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(req.delay_ms)).await;
    }
    Ok(())
}

struct Unary(Arc<State>);
impl tonic::server::UnaryService<EchoRequest> for Unary {
    type Response = EchoReply;
    type Future = BoxFut<EchoReply>;
    fn call(&mut self, request: tonic::Request<EchoRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let req = request.into_inner();
            script(&state, &req).await?;
            Ok(tonic::Response::new(reply(
                &state,
                req.message,
                req.payload,
                0,
            )))
        })
    }
}

struct ServerStream(Arc<State>);
impl tonic::server::ServerStreamingService<EchoRequest> for ServerStream {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFut<ReplyStream>;
    fn call(&mut self, request: tonic::Request<EchoRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let req = request.into_inner();
            script(&state, &req).await?;
            let pause = Duration::from_millis(req.interval_ms);
            let stream = futures_util::stream::unfold(0u32, move |i| {
                let state = state.clone();
                let message = format!("{} #{i}", req.message);
                async move {
                    if i == req.count && req.end_code != 0 {
                        let end = Status::new(Code::from_i32(req.end_code), "scripted end");
                        return Some((Err(end), i + 1));
                    }
                    if i >= req.count {
                        return None;
                    }
                    if i > 0 && !pause.is_zero() {
                        tokio::time::sleep(pause).await;
                    }
                    Some((Ok(reply(&state, message, Vec::new(), i)), i + 1))
                }
            });
            let stream: ReplyStream = Box::pin(stream);
            Ok(tonic::Response::new(stream))
        })
    }
}

struct ClientStream(Arc<State>);
impl tonic::server::ClientStreamingService<EchoRequest> for ClientStream {
    type Response = EchoReply;
    type Future = BoxFut<EchoReply>;
    fn call(&mut self, request: tonic::Request<Streaming<EchoRequest>>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let mut input = request.into_inner();
            let mut messages = Vec::new();
            let mut payload = Vec::new();
            while let Some(msg) = input.message().await? {
                if messages.is_empty() {
                    script(&state, &msg).await?;
                }
                messages.push(msg.message);
                payload.extend_from_slice(&msg.payload);
            }
            let n = messages.len() as u32;
            Ok(tonic::Response::new(reply(
                &state,
                messages.join(","),
                payload,
                n,
            )))
        })
    }
}

struct Bidi(Arc<State>);
impl tonic::server::StreamingService<EchoRequest> for Bidi {
    type Response = EchoReply;
    type ResponseStream = ReplyStream;
    type Future = BoxFut<ReplyStream>;
    fn call(&mut self, request: tonic::Request<Streaming<EchoRequest>>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let input = request.into_inner();
            // One reply per message as it arrives: nothing waits for the end.
            let stream = input.enumerate().map(move |(i, msg)| {
                let msg = msg?;
                Ok(reply(
                    &state,
                    format!("echo {}", msg.message),
                    msg.payload,
                    i as u32,
                ))
            });
            let stream: ReplyStream = Box::pin(stream);
            Ok(tonic::Response::new(stream))
        })
    }
}

struct SayHello(Arc<State>);
impl tonic::server::UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = BoxFut<HelloReply>;
    fn call(&mut self, request: tonic::Request<HelloRequest>) -> Self::Future {
        let state = self.0.clone();
        Box::pin(async move {
            let name = request.into_inner().name;
            state.count("hello");
            Ok(tonic::Response::new(HelloReply {
                message: format!("Hello {name}"),
            }))
        })
    }
}

/// The transport under the client: a tonic `Channel`, or hyper's client.
type Transport = tower::util::BoxCloneService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    TransportError,
>;

/// A transport's error, boxed. (A bare `Box<dyn Error>` as the service's
/// error trips a higher-ranked lifetime check in spawned calls.)
#[derive(Debug)]
pub struct TransportError(Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A tonic client of `kaname.test.Echo`.
#[derive(Clone)]
pub struct EchoClient {
    inner: tonic::client::Grpc<Transport>,
}

impl EchoClient {
    /// Over ONE h2c connection to `http://127.0.0.1:port`: a tonic `Channel`
    /// multiplexes every call (and every clone's) on its one connection. Like
    /// every gRPC library it also enforces a call's deadline itself.
    pub async fn connect(port: u16) -> EchoClient {
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e:?}"));
        let transport = tower::ServiceBuilder::new()
            .map_err(|e: tonic::transport::Error| TransportError(Box::new(e)))
            .service(channel);
        Self::over(Transport::new(transport), port)
    }

    /// Over hyper's h2c client, which sends `grpc-timeout` but does not
    /// enforce it: what the client gets at the deadline is kaname's doing.
    pub fn connect_no_deadline(port: u16) -> EchoClient {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<tonic::body::Body>();
        let transport = tower::ServiceBuilder::new()
            .map_response(|res: Response<Incoming>| res.map(tonic::body::Body::new))
            .map_err(|e: hyper_util::client::legacy::Error| TransportError(Box::new(e)))
            .service(client);
        Self::over(Transport::new(transport), port)
    }

    /// Over h2 in TLS (ALPN `h2`) to `https://localhost:port`, trusting
    /// what `tls` trusts; no client-side deadline either.
    pub fn connect_tls(port: u16, tls: rustls::ClientConfig) -> EchoClient {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http2()
            .build();
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build::<_, tonic::body::Body>(https);
        let transport = tower::ServiceBuilder::new()
            .map_response(|res: Response<Incoming>| res.map(tonic::body::Body::new))
            .map_err(|e: hyper_util::client::legacy::Error| TransportError(Box::new(e)))
            .service(client);
        Self::over_origin(
            Transport::new(transport),
            &format!("https://localhost:{port}"),
        )
    }

    fn over(transport: Transport, port: u16) -> EchoClient {
        Self::over_origin(transport, &format!("http://127.0.0.1:{port}"))
    }

    fn over_origin(transport: Transport, origin: &str) -> EchoClient {
        let origin: http::Uri = origin.parse().expect("origin");
        let inner = tonic::client::Grpc::with_origin(transport, origin)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        EchoClient { inner }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))
    }

    /// A unary call to `path` (any path, to reach unknown services too).
    pub async fn unary_at(
        &mut self,
        path: &'static str,
        req: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static(path);
        self.inner.unary(req, path, ClientCodec::default()).await
    }

    pub async fn unary(
        &mut self,
        req: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, Status> {
        self.unary_at(UNARY, req).await
    }

    pub async fn say_hello(&mut self, name: &str) -> Result<tonic::Response<HelloReply>, Status> {
        self.ready().await?;
        let req = tonic::Request::new(HelloRequest {
            name: name.to_string(),
        });
        let path = PathAndQuery::from_static(SAY_HELLO);
        let codec = ProstCodec::<HelloRequest, HelloReply>::default();
        self.inner.unary(req, path, codec).await
    }

    pub async fn server_stream(
        &mut self,
        req: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<Streaming<EchoReply>>, Status> {
        self.ready().await?;
        let path = PathAndQuery::from_static(SERVER_STREAM);
        self.inner
            .server_streaming(req, path, ClientCodec::default())
            .await
    }

    pub async fn client_stream<S>(
        &mut self,
        req: tonic::Request<S>,
    ) -> Result<tonic::Response<EchoReply>, Status>
    where
        S: Stream<Item = EchoRequest> + Send + 'static,
    {
        self.ready().await?;
        let path = PathAndQuery::from_static(CLIENT_STREAM);
        self.inner
            .client_streaming(req, path, ClientCodec::default())
            .await
    }

    pub async fn bidi<S>(
        &mut self,
        req: tonic::Request<S>,
    ) -> Result<tonic::Response<Streaming<EchoReply>>, Status>
    where
        S: Stream<Item = EchoRequest> + Send + 'static,
    {
        self.ready().await?;
        let path = PathAndQuery::from_static(BIDI);
        self.inner
            .streaming(req, path, ClientCodec::default())
            .await
    }
}

/// The client's codec: encodes requests, decodes replies.
type ClientCodec = ProstCodec<EchoRequest, EchoReply>;

/// A metadata value of a response or status, as text.
pub fn meta<'a>(map: &'a tonic::metadata::MetadataMap, key: &str) -> Option<&'a str> {
    map.get(key).and_then(|v| v.to_str().ok())
}
