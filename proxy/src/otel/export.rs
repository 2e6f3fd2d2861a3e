//! Ended spans leave in the background: a bounded queue the request path
//! only ever `try_send`s to, one task that batches and exports by OTLP.
//!
//! Why not the SDK's `BatchSpanProcessor`: it counts the spans it drops
//! only internally (tracing.md asks for `kaname_tracing_spans_dropped_total`
//! by reason) and runs on its own thread with a blocking executor, while
//! kaname already has a tokio runtime. This is the same design (bounded
//! queue, batches, one export at a time), counted.
//!
//! Why not opentelemetry-otlp's exporter: see [`super::encode`]. A batch is
//! encoded there and sent here, by hyper: OTLP/gRPC is one unary call (a
//! length-prefixed message, the answer's `grpc-status`), OTLP/HTTP one
//! POST of the same bytes.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kaname_config::{Otlp, OtlpProtocol};
use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::encode::RequestEncoder;
use super::TracingError;
use crate::metrics::Metrics;

/// Spans per export call (the SDK's default batch).
const BATCH: usize = 512;
/// How long a batch waits to fill once its first span is queued.
const GATHER: Duration = Duration::from_secs(1);
/// A collector in trouble is said at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The export task of one `tracing.otlp` section.
pub struct ExportTask {
    queue: SpanQueue,
    finish: std::sync::Arc<Notify>,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// The SDK's span processor: queues each ended span or counts it dropped.
#[derive(Clone)]
pub struct SpanQueue {
    tx: mpsc::Sender<SpanData>,
    queue_full: IntCounter,
    /// Told when a batch's worth is queued: the export task sleeps through
    /// a batch's gathering instead of waking for every span.
    batch_ready: std::sync::Arc<Notify>,
}

impl std::fmt::Debug for SpanQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanQueue")
            .field("capacity", &self.tx.max_capacity())
            .finish()
    }
}

impl SpanProcessor for SpanQueue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        // Never waits: a full queue (a slow or absent collector) costs the
        // span, not the request.
        if self.tx.try_send(span).is_err() {
            self.queue_full.inc();
        } else if self.tx.max_capacity() - self.tx.capacity() >= BATCH {
            self.batch_ready.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// What wakes the export task early: shutdown, a full batch.
struct Wakers {
    finish: std::sync::Arc<Notify>,
    batch_ready: std::sync::Arc<Notify>,
}

/// The export outcome counters and the collector's last complaint.
struct Counters {
    exported: IntCounter,
    failed: IntCounter,
    queue_full: IntCounter,
}

impl ExportTask {
    pub fn start(
        otlp: &Otlp,
        resource: &Resource,
        scope: &InstrumentationScope,
        metrics: &Metrics,
    ) -> Result<Self, TracingError> {
        let collector = Collector::new(otlp, RequestEncoder::new(resource, scope))?;
        let (tx, rx) = mpsc::channel(otlp.max_queue);
        let dropped = |reason| {
            metrics
                .tracing_spans_dropped_total
                .with_label_values(&[reason])
        };
        let counters = Counters {
            exported: metrics.tracing_spans_exported_total.clone(),
            failed: dropped("export_failed"),
            queue_full: dropped("queue_full"),
        };
        let finish = std::sync::Arc::new(Notify::new());
        let batch_ready = std::sync::Arc::new(Notify::new());
        let task = tokio::spawn(run(
            collector,
            rx,
            otlp.timeout,
            otlp.endpoint.clone(),
            counters,
            Wakers {
                finish: finish.clone(),
                batch_ready: batch_ready.clone(),
            },
        ));
        Ok(ExportTask {
            queue: SpanQueue {
                tx,
                queue_full: dropped("queue_full"),
                batch_ready,
            },
            finish,
            task: Mutex::new(Some(task)),
        })
    }

    pub fn queue(&self) -> SpanQueue {
        self.queue.clone()
    }

    /// Exports what is queued now and stops, within `grace`.
    pub async fn finish(&self, grace: Duration) {
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        let Some(task) = task else { return };
        self.finish.notify_one();
        if tokio::time::timeout(grace, task).await.is_err() {
            tracing::warn!("spans still queued at shutdown were not exported in time");
        }
    }
}

impl Drop for ExportTask {
    fn drop(&mut self) {
        // The task also ends when the last queue handle goes (every span
        // of this section ended); this only hurries a replaced exporter.
        self.finish.notify_one();
    }
}

async fn run(
    collector: Collector,
    mut rx: mpsc::Receiver<SpanData>,
    timeout: Duration,
    endpoint: String,
    c: Counters,
    Wakers {
        finish,
        batch_ready,
    }: Wakers,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH);
    let mut complaint = Complaint::default();
    let mut finishing = false;
    loop {
        if !finishing {
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => if n == 0 { break },
                () = finish.notified() => finishing = true,
            }
        }
        // Finishing: whatever is queued, without waiting for more.
        if !finishing && batch.len() + rx.len() < BATCH {
            // Fewer, fuller exports: let the batch fill for a moment, woken
            // once when it is full, not by each span (a wake and a timer
            // per span cost ~1,500 instructions a request at sampling 1.0).
            tokio::select! {
                () = tokio::time::sleep(GATHER) => {}
                () = batch_ready.notified() => {}
                () = finish.notified() => finishing = true,
            }
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(span) => batch.push(span),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            break;
        }
        let n = batch.len() as u64;
        let sent = tokio::time::timeout(timeout, collector.export(&batch)).await;
        batch.clear();
        match sent {
            Ok(Ok(())) => c.exported.inc_by(n),
            Ok(Err(e)) => {
                c.failed.inc_by(n);
                complaint.say(&endpoint, &e, &c);
            }
            Err(_) => {
                c.failed.inc_by(n);
                complaint.say(
                    &endpoint,
                    &format!("no answer within timeout {timeout:?}"),
                    &c,
                );
            }
        }
        if c.queue_full.get() > complaint.queue_full_seen {
            complaint.say(
                &endpoint,
                "the span queue is full (tracing.otlp.max_queue)",
                &c,
            );
        }
    }
}

/// The at-most-once-a-minute warning about a collector in trouble.
#[derive(Default)]
struct Complaint {
    last: Option<Instant>,
    queue_full_seen: u64,
}

impl Complaint {
    fn say(&mut self, endpoint: &str, why: &str, c: &Counters) {
        if self.last.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        self.queue_full_seen = c.queue_full.get();
        tracing::warn!(
            endpoint,
            error = why,
            dropped_export_failed = c.failed.get(),
            dropped_queue_full = c.queue_full.get(),
            "spans are being dropped (said at most once a minute)"
        );
    }
}

/// The gRPC method of OTLP's trace service.
const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// What is read of a collector's answer (an `ExportTraceServiceResponse`, a
/// status): a collector cannot make the exporter hold more.
const MAX_ANSWER: usize = 64 * 1024;

/// One collector endpoint, by OTLP/gRPC or OTLP/HTTP (protobuf).
struct Collector {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    headers: HeaderMap,
    grpc: bool,
    encoder: RequestEncoder,
}

impl Collector {
    fn new(otlp: &Otlp, encoder: RequestEncoder) -> Result<Self, TracingError> {
        let grpc = otlp.protocol == OtlpProtocol::Grpc;
        let given: Uri = otlp
            .endpoint
            .parse()
            .map_err(|e| TracingError(format!("endpoint {:?}: {e}", otlp.endpoint)))?;
        // gRPC: the method's path on the endpoint's authority; HTTP: the
        // URL as given (`…/v1/traces`).
        let uri = if grpc {
            let mut parts = given.into_parts();
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static(GRPC_EXPORT));
            Uri::from_parts(parts)
                .map_err(|e| TracingError(format!("endpoint {:?}: {e}", otlp.endpoint)))?
        } else {
            given
        };
        let mut headers = HeaderMap::new();
        for (k, v) in &otlp.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| TracingError(format!("header {k:?}: {e}")))?;
            let value = HeaderValue::from_str(v).map_err(|_| {
                TracingError(format!("header {k:?}: a value a header cannot carry"))
            })?;
            headers.insert(name, value);
        }
        let content_type = if grpc {
            headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
            "application/grpc"
        } else {
            "application/x-protobuf"
        };
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static(content_type),
        );
        let connector = crate::tls::client::web_connector(None, otlp.timeout)
            .map_err(|e| TracingError(format!("TLS setup: {e}")))?;
        let client = Client::builder(TokioExecutor::new())
            .http2_only(grpc)
            .build(connector);
        Ok(Collector {
            client,
            uri,
            headers,
            grpc,
            encoder,
        })
    }

    /// One export call; Err says why the collector did not take it.
    async fn export(&self, spans: &[SpanData]) -> Result<(), String> {
        let body = Bytes::from(self.encoder.encode(spans, self.grpc));
        let mut req = Request::post(self.uri.clone())
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        *req.headers_mut() = self.headers.clone();
        let res = self.client.request(req).await.map_err(|e| {
            use std::error::Error as _;
            match e.source() {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            }
        })?;
        let status = res.status();
        let (parts, body) = res.into_parts();
        let answer = Limited::new(body, MAX_ANSWER).collect().await;
        if !self.grpc {
            return match status.is_success() {
                true => Ok(()),
                false => Err(format!("HTTP {status}")),
            };
        }
        if status != StatusCode::OK {
            return Err(format!("HTTP {status} to a gRPC call"));
        }
        // Trailers-only answers carry the status in the head.
        let trailers = answer.ok().and_then(|a| a.trailers().cloned());
        let grpc_status = parts
            .headers
            .get("grpc-status")
            .or_else(|| trailers.as_ref().and_then(|t| t.get("grpc-status")));
        match grpc_status.and_then(|v| v.to_str().ok()) {
            Some("0") => Ok(()),
            Some(code) => {
                let message = parts
                    .headers
                    .get("grpc-message")
                    .or_else(|| trailers.as_ref().and_then(|t| t.get("grpc-message")))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                Err(format!("grpc-status {code} {message}"))
            }
            None => Err("a gRPC answer without grpc-status".into()),
        }
    }
}
