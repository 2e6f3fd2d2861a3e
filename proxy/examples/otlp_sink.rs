//! A real OTLP/gRPC trace receiver for the tracing benchmark
//! (bench/tracing.sh): the official protobufs (`opentelemetry-proto`'s
//! generated `TraceServiceServer`), every export decoded and its spans
//! counted. Prints the totals when stopped (SIGTERM or Ctrl-C).
//!
//!   cargo run --release --example otlp_sink -- 127.0.0.1:18317

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

#[derive(Default)]
struct Counts {
    spans: AtomicU64,
    exports: AtomicU64,
}

#[derive(Clone)]
struct Sink(Arc<Counts>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        self.0.spans.fetch_add(spans as u64, Ordering::Relaxed);
        self.0.exports.fetch_add(1, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("otlp_sink: listening on {}", listener.local_addr()?);
    let counts = Arc::new(Counts::default());
    let sink = Sink(counts.clone());
    let accept = async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let svc = TowerToHyperService::new(TraceServiceServer::new(sink.clone()));
            tokio::spawn(async move {
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        () = accept => {}
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!(
        "otlp_sink: {} spans in {} exports",
        counts.spans.load(Ordering::Relaxed),
        counts.exports.load(Ordering::Relaxed)
    );
    Ok(())
}
