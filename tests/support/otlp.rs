//! A real OTLP trace receiver: the official protobufs (the
//! `opentelemetry-proto` crate's generated types), served over gRPC (the
//! generated `TraceServiceServer` on HTTP/2) or HTTP/protobuf (`POST
//! /v1/traces`, decoded with prost). It keeps every span it decodes and the
//! headers of every export, and can be stopped (its port closed, its open
//! connections cut) mid-test.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use prost::Message;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::net::bind_loopback;

/// SpanKind numbers of the protocol.
pub const SERVER: i32 = 2;
pub const CLIENT: i32 = 3;
/// Status codes of the protocol.
pub const STATUS_ERROR: i32 = 2;

/// One decoded span, ids in lower-case hex as `traceparent` writes them.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    pub kind: i32,
    pub attributes: HashMap<String, Attr>,
    pub status_code: i32,
    /// The resource's attributes.
    pub resource: HashMap<String, Attr>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    Int(i64),
    Other,
}

impl ReceivedSpan {
    pub fn str(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key) {
            Some(Attr::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key) {
            Some(Attr::Int(i)) => Some(*i),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
pub enum Protocol {
    Grpc,
    Http,
}

#[derive(Default)]
struct Store {
    spans: Mutex<Vec<ReceivedSpan>>,
    exports: Mutex<Vec<HeaderMap>>,
    changed: watch::Sender<usize>,
}

impl Store {
    fn take(&self, req: ExportTraceServiceRequest, headers: HeaderMap) {
        let mut spans = self.spans.lock().expect("lock");
        for rs in req.resource_spans {
            let resource = rs.resource.map(|r| attrs(r.attributes)).unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    spans.push(ReceivedSpan {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        name: s.name,
                        kind: s.kind,
                        attributes: attrs(s.attributes),
                        status_code: s.status.map_or(0, |st| st.code),
                        resource: resource.clone(),
                    });
                }
            }
        }
        let n = spans.len();
        drop(spans);
        self.exports.lock().expect("lock").push(headers);
        self.changed.send_replace(n);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attrs(list: Vec<KeyValue>) -> HashMap<String, Attr> {
    list.into_iter()
        .map(|kv| {
            let v = match kv.value.and_then(|v| v.value) {
                Some(any_value::Value::StringValue(s)) => Attr::Str(s),
                Some(any_value::Value::IntValue(i)) => Attr::Int(i),
                _ => Attr::Other,
            };
            (kv.key, v)
        })
        .collect()
}

#[derive(Clone)]
struct Sink(Arc<Store>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        self.0.take(request.into_inner(), headers);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The receiver; stopped on drop.
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    store: Arc<Store>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn grpc() -> OtlpReceiver {
        Self::start(Protocol::Grpc).await
    }

    pub async fn http() -> OtlpReceiver {
        Self::start(Protocol::Http).await
    }

    async fn start(protocol: Protocol) -> OtlpReceiver {
        let listener = bind_loopback("otlp receiver").await;
        let addr = listener.local_addr().expect("receiver addr");
        let store = Arc::new(Store::default());
        let (stop, stopped) = watch::channel(false);
        let s = store.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let store = s.clone();
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let io = TokioIo::new(stream);
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match protocol {
                        Protocol::Grpc => {
                            let svc =
                                TowerToHyperService::new(TraceServiceServer::new(Sink(store)));
                            let conn = builder.serve_connection(io, svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = stopped.wait_for(|s| *s) => {}
                            }
                        }
                        Protocol::Http => {
                            let svc = hyper::service::service_fn(move |req| {
                                http_export(store.clone(), req)
                            });
                            let conn = builder.serve_connection(io, svc);
                            tokio::select! {
                                _ = conn => {}
                                _ = stopped.wait_for(|s| *s) => {}
                            }
                        }
                    }
                });
            }
        });
        OtlpReceiver {
            addr,
            protocol,
            store,
            stop,
            task,
        }
    }

    /// What `tracing.otlp.endpoint` says for this receiver.
    pub fn endpoint(&self) -> String {
        match self.protocol {
            Protocol::Grpc => format!("http://{}", self.addr),
            Protocol::Http => format!("http://{}/v1/traces", self.addr),
        }
    }

    /// The `tracing:` section pointing at this receiver, with `extra`
    /// lines (each indented four spaces) under `otlp:`.
    pub fn tracing_yaml(&self, extra: &str) -> String {
        let protocol = match self.protocol {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http/protobuf",
        };
        format!(
            "tracing:\n  otlp:\n    endpoint: {}\n    protocol: {protocol}\n{extra}",
            self.endpoint()
        )
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.store.spans.lock().expect("lock").clone()
    }

    /// The headers (gRPC metadata) of every export received.
    pub fn exports(&self) -> Vec<HeaderMap> {
        self.store.exports.lock().expect("lock").clone()
    }

    /// The spans of `trace_id`, once there are at least `n` (within 10 s).
    pub async fn wait_trace(&self, trace_id: &str, n: usize) -> Vec<ReceivedSpan> {
        let mut changed = self.store.changed.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let found: Vec<ReceivedSpan> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            if found.len() >= n {
                return found;
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                panic!(
                    "trace {trace_id}: {} of {n} spans within 10 s; all received: {:#?}",
                    found.len(),
                    self.spans()
                );
            }
        }
    }

    /// Stops the receiver: the port closes and open connections are cut.
    pub fn stop(&self) {
        self.task.abort();
        self.stop.send_replace(true);
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn http_export(
    store: Arc<Store>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let answer = |status: StatusCode, body: Bytes| {
        let mut res = Response::new(Full::new(body));
        *res.status_mut() = status;
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-protobuf"),
        );
        Ok(res)
    };
    if req.uri().path() != "/v1/traces"
        || req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.as_bytes())
            != Some(b"application/x-protobuf")
    {
        return answer(StatusCode::NOT_FOUND, Bytes::new());
    }
    let headers = req.headers().clone();
    let Ok(body) = req.into_body().collect().await else {
        return answer(StatusCode::BAD_REQUEST, Bytes::new());
    };
    match ExportTraceServiceRequest::decode(body.to_bytes()) {
        Ok(decoded) => {
            store.take(decoded, headers);
            let ok = ExportTraceServiceResponse {
                partial_success: None,
            };
            answer(StatusCode::OK, ok.encode_to_vec().into())
        }
        Err(_) => answer(StatusCode::BAD_REQUEST, Bytes::new()),
    }
}
