//! The admin port: /live, /ready, /config, /metrics, POST /reload.
//!
//! Hardened as limits.md's "Admin port" asks:
//! - HTTP/1.1 only (hyper's http1 server: no HTTP/2, no h2c, no upgrades);
//! - at most [`MAX_CONNECTIONS`] connections at once, more are closed at
//!   accept; a request head must arrive within `admin.header_timeout`
//!   (default 10s, idle keep-alive connections included), else the
//!   connection is closed. Counted in
//!   `kaname_limits_hit_total{limit="admin_header_timeout"}`: each
//!   connection refused at accept, and each one cut off before it sent a
//!   whole first head (a keep-alive connection closed idle after serving,
//!   as a scraper's between scrapes, is normal and not counted);
//! - the request checks of [`guard`]: `Host` (DNS rebinding), `Origin` on a
//!   POST (cross-site requests), and `admin.token` when set.

mod guard;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use kaname_filters::body::{self, Body};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::app::App;

/// Admin connections open at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 64;

/// The largest request head read (hyper's buffer; its floor is 8 KiB).
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The `limit` label of every refusal here (limits.md).
const LIMIT: &str = "admin_header_timeout";

pub async fn serve(listener: TcpListener, app: Arc<App>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            app.metrics.limit_hit(LIMIT);
            tracing::debug!(
                max = MAX_CONNECTIONS,
                "admin connection refused: too many open"
            );
            drop(stream);
            continue;
        };
        let local = stream.local_addr().ok();
        let header_timeout = app.runtime.load().config.admin.header_timeout;
        let app = app.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEAD_BYTES);
            let conn_app = app.clone();
            let served = Arc::new(AtomicBool::new(false));
            let served_here = served.clone();
            let svc = hyper::service::service_fn(move |req| {
                served_here.store(true, Ordering::Relaxed);
                handle(conn_app.clone(), local, req)
            });
            if let Err(e) = http.serve_connection(TokioIo::new(stream), svc).await {
                if e.is_timeout() && !served.load(Ordering::Relaxed) {
                    app.metrics.limit_hit(LIMIT);
                    tracing::debug!(
                        "admin connection closed: no request head within {header_timeout:?}"
                    );
                }
            }
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

async fn handle(
    app: Arc<App>,
    local: Option<SocketAddr>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let admin = app.runtime.load().config.admin.clone();
    let mut res = match guard::refusal(&req, &admin, local) {
        None => route(&app, req).await,
        Some(refused) => refused,
    };
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(res)
}

async fn route(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    match (req.method(), req.uri().path()) {
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
    }
}
