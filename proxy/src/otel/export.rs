//! Ended spans leave in the background: a bounded queue the request path
//! only ever `try_send`s to, one task that batches and exports by OTLP.
//!
//! Why not the SDK's `BatchSpanProcessor`: it counts the spans it drops
//! only internally (tracing.md asks for `kaname_tracing_spans_dropped_total`
//! by reason) and runs on its own thread with a blocking executor, while
//! tonic's channel wants the tokio runtime kaname already has. This is
//! the same design (bounded queue, batches, one export at a time), counted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use kaname_config::{Otlp, OtlpProtocol};
use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter as _, SpanProcessor};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

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
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
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
        metrics: &Metrics,
    ) -> Result<Self, TracingError> {
        let mut exporter = exporter(otlp)?;
        exporter.set_resource(resource);
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
        let task = tokio::spawn(run(
            exporter,
            rx,
            otlp.timeout,
            otlp.endpoint.clone(),
            counters,
            finish.clone(),
        ));
        Ok(ExportTask {
            queue: SpanQueue {
                tx,
                queue_full: dropped("queue_full"),
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
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    timeout: Duration,
    endpoint: String,
    c: Counters,
    finish: std::sync::Arc<Notify>,
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
        if finishing {
            // Whatever is queued, without waiting for more.
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(span) => batch.push(span),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
        } else {
            // Fewer, fuller exports: let the batch fill for a moment.
            let until = Instant::now() + GATHER;
            while batch.len() < BATCH {
                let room = BATCH - batch.len();
                let more = tokio::time::timeout_at(until, rx.recv_many(&mut batch, room));
                match more.await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        let spans = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
        let n = spans.len() as u64;
        match tokio::time::timeout(timeout, exporter.export(spans)).await {
            Ok(Ok(())) => c.exported.inc_by(n),
            Ok(Err(e)) => {
                c.failed.inc_by(n);
                complaint.say(&endpoint, &e.to_string(), &c);
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
    let _ = exporter.shutdown();
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

fn exporter(otlp: &Otlp) -> Result<opentelemetry_otlp::SpanExporter, TracingError> {
    let builder = opentelemetry_otlp::SpanExporter::builder();
    let built = match otlp.protocol {
        OtlpProtocol::Grpc => {
            let mut headers = http::HeaderMap::new();
            for (k, v) in &otlp.headers {
                let name = http::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|e| TracingError(format!("header {k:?}: {e}")))?;
                let value = http::HeaderValue::from_str(v).map_err(|_| {
                    TracingError(format!("header {k:?}: a value a header cannot carry"))
                })?;
                headers.insert(name, value);
            }
            let mut b = builder
                .with_tonic()
                .with_endpoint(otlp.endpoint.clone())
                .with_timeout(otlp.timeout)
                .with_metadata(tonic::metadata::MetadataMap::from_headers(headers));
            if otlp.endpoint.starts_with("https://") {
                b = b.with_tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots());
            }
            b.build()
        }
        OtlpProtocol::HttpProtobuf => {
            let headers: HashMap<String, String> = otlp.headers.iter().cloned().collect();
            let connector = crate::tls::client::web_connector(None, otlp.timeout)
                .map_err(|e| TracingError(format!("TLS setup: {e}")))?;
            let client = opentelemetry_http::hyper::HyperClient::new(connector, otlp.timeout, None);
            builder
                .with_http()
                .with_endpoint(otlp.endpoint.clone())
                .with_timeout(otlp.timeout)
                .with_protocol(Protocol::HttpBinary)
                .with_headers(headers)
                .with_http_client(client)
                .build()
        }
    };
    built.map_err(|e| TracingError(e.to_string()))
}
