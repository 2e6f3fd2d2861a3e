//! The admin port: /live, /ready, /config, /metrics, POST /reload.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use kaname_filters::body::{self, Body};
use tokio::net::TcpListener;

use crate::app::App;

pub async fn serve(listener: TcpListener, app: Arc<App>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(app.clone(), req));
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body_text: String) -> Response<Body> {
    let mut res = Response::new(body::full(body_text));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

async fn handle(app: Arc<App>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    let res = match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, PLAIN, "live\n".into()),
        (&Method::GET, "/ready") => {
            if app.draining.load(Ordering::SeqCst) {
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "draining\n".into())
            } else if app.ready.load(Ordering::SeqCst) {
                text(StatusCode::OK, PLAIN, "ready\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, "starting\n".into())
            }
        }
        (&Method::GET, "/config") => {
            let yaml = app.runtime.load().config.redacted_yaml.clone();
            text(StatusCode::OK, "application/yaml", yaml)
        }
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            app.metrics.render(),
        ),
        (&Method::POST, "/reload") => match app.reload().await {
            Ok(msg) => text(StatusCode::OK, PLAIN, format!("{msg}\n")),
            Err(errors) => text(StatusCode::BAD_REQUEST, PLAIN, errors.join("\n") + "\n"),
        },
        (_, "/live" | "/ready" | "/config" | "/metrics" | "/reload") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "method not allowed\n".into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found; try /live /ready /config /metrics, or POST /reload\n".into(),
        ),
    };
    Ok(res)
}
