//! `kaname demo`: a built-in echo upstream and a sidecar in front of it,
//! on free loopback ports, with curl commands to try.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;

use http::{header, HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use kaname_filters::body::{self, Body};
use tokio::net::TcpListener;

use crate::app::App;
use crate::devtools::token::{self, TokenArgs};
use crate::{EXIT_INVALID_CONFIG, EXIT_RUNTIME};

/// The demo config; `{PROXY}`, `{ADMIN}` and `{ECHO}` become the ports.
const DEMO_CONFIG: &str = include_str!("../../examples/demo.yaml");

pub fn run() -> ExitCode {
    let rt = match crate::app::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    rt.block_on(async {
        let echo = match TcpListener::bind("127.0.0.1:0")
            .await
            .and_then(|l| Ok((l.local_addr()?, l)))
        {
            Ok((addr, l)) => {
                tokio::spawn(serve_echo(l));
                addr
            }
            Err(e) => {
                eprintln!("kaname demo: cannot bind the echo upstream: {e}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
        let (Some(proxy), Some(admin)) = (free_port(), free_port()) else {
            eprintln!("kaname demo: no free loopback port");
            return ExitCode::from(EXIT_RUNTIME);
        };
        let text = DEMO_CONFIG
            .replace("{PROXY}", &proxy.to_string())
            .replace("{ADMIN}", &admin.to_string())
            .replace("{ECHO}", &echo.port().to_string());
        let config = match kaname_config::parse("<demo>", &text) {
            Ok(c) => c,
            Err(errors) => {
                eprintln!("kaname demo: the built-in config is invalid:\n{errors}");
                return ExitCode::from(EXIT_INVALID_CONFIG);
            }
        };
        crate::logging::init(&config.log);
        let token = demo_token(&config);
        let app = match App::start("<demo>".into(), config, None).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("kaname demo: {e}");
                return e.exit_code();
            }
        };
        print_banner(proxy, admin, echo);
        print_jwt_banner(proxy, token.as_ref());
        app.run_until_signalled().await
    })
}

fn free_port() -> Option<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ok()
}

fn print_banner(proxy: u16, admin: u16, echo: SocketAddr) {
    println!(
        "kaname demo: proxy on http://127.0.0.1:{proxy}, admin on http://127.0.0.1:{admin}, echo upstream on http://{echo}"
    );
    println!(
        r#"
Try:
  # forwarded to the echo upstream, which shows what it received
  curl -i http://127.0.0.1:{proxy}/api/hello
  # HTTP/2 (prior knowledge) on the same port
  curl -i --http2-prior-knowledge http://127.0.0.1:{proxy}/api/hello
  # no route: kaname's own 404 with a JSON body
  curl -i http://127.0.0.1:{proxy}/nowhere
  # rate limit (10 at once, then 5/s per client): the last ones get 429 with Retry-After
  for i in $(seq 15); do curl -s -o /dev/null -w '%{{http_code}} ' http://127.0.0.1:{proxy}/api/hello; done; echo
  # overload: 4 slow requests inside, 8 queued for 500ms, then 503 overloaded
  for i in $(seq 10); do curl -s -o /dev/null -w '%{{http_code}}\n' 'http://127.0.0.1:{proxy}/api/x?delay_ms=1500' & done; wait
  # a retry saving a request: the echo fails the first 2 tries of each request
  # (503), the third answers 200 (the access log line says attempts=3)
  curl -i 'http://127.0.0.1:{proxy}/flaky/?fail_first=2'
  # a failing upstream: each try counts toward the breaker, so the first
  # request's 3 tries open the circuit: then 503 at once, kaname-error: circuit_open
  for i in $(seq 5); do curl -s -o /dev/null -w '%{{http_code}} %header{{kaname-error}}\n' 'http://127.0.0.1:{proxy}/flaky/?status=503'; done
  # slow upstream cut by the route timeout (504)
  curl -i 'http://127.0.0.1:{proxy}/slow/?delay_ms=3000'
  # the admin port
  curl http://127.0.0.1:{admin}/metrics | grep kaname_requests_total
  curl http://127.0.0.1:{admin}/config
Ctrl-C stops it."#
    );
}

/// The variable the demo's `kaname token` line reads the secret from.
const DEMO_SECRET_ENV: &str = "KANAME_DEMO_SECRET";

/// A token for the demo's `auth` filter, and the `kaname token` command
/// line that makes one like it.
struct DemoToken {
    token: String,
    command: String,
}

/// The token is made by `kaname token`'s own code from the arguments the
/// printed command line shows (HS256 with the secret of the embedded
/// config, valid for ten years), so the line and the curl just work.
fn demo_token(config: &kaname_config::Config) -> Option<DemoToken> {
    let jwt = config.filters.iter().find_map(|f| match &f.kind {
        kaname_config::FilterKind::Jwt(j) => Some(j),
        _ => None,
    })?;
    let secret = jwt.secret.clone()?;
    let args = TokenArgs {
        secret_env: Some(DEMO_SECRET_ENV.into()),
        sub: Some("demo-user".into()),
        iss: Some(jwt.issuers.first()?.clone()),
        ttl: Some("3650d".into()),
        ..TokenArgs::default()
    };
    let env = |name: &str| (name == DEMO_SECRET_ENV).then(|| secret.clone());
    let minted = token::mint(&args, &env, jsonwebtoken::get_current_timestamp()).ok()?;
    // As the demo was started (`kaname`, `./target/release/kaname`), so the
    // line pastes where the demo's command did.
    let program = std::env::args().next().unwrap_or_else(|| "kaname".into());
    let command = format!(
        "{DEMO_SECRET_ENV}={} {}",
        token::shell_quote(&secret),
        args.command_line(&program)
    );
    Some(DemoToken {
        token: minted.token,
        command,
    })
}

fn print_jwt_banner(proxy: u16, token: Option<&DemoToken>) {
    let Some(DemoToken { token, command }) = token else {
        return;
    };
    println!(
        r#"
JWT authentication on /secure/ (filter "auth", HS256):
  # a valid token: forwarded, the upstream sees x-user-id: demo-user
  curl -i http://127.0.0.1:{proxy}/secure/hello -H 'Authorization: Bearer {token}'
  # no token: 401 with WWW-Authenticate: Bearer
  curl -i http://127.0.0.1:{proxy}/secure/hello
  # a tampered token: 401, error_description="invalid signature"
  curl -i http://127.0.0.1:{proxy}/secure/hello -H 'Authorization: Bearer {token}x'
  # a token like the one above, from kaname token (docs/configuration.md "First JWT in one minute"):
  {command}"#
    );
}

/// Answers every request with what it received, as JSON. `?delay_ms=N`
/// waits first; `?status=N` sets the status; `?fail_first=N` answers 503 to
/// the first N tries of a request (tries of one request share its
/// `x-request-id`), to show a retry saving it.
async fn serve_echo(listener: TcpListener) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), hyper::service::service_fn(echo))
            .into_owned();
        tokio::spawn(conn);
    }
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

pub async fn echo(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    if let Some(ms) = query_param(&req, "delay_ms") {
        tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
    }
    let mut status = query_param(&req, "status")
        .and_then(|s| http::StatusCode::from_u16(u16::try_from(s).ok()?).ok())
        .unwrap_or(http::StatusCode::OK);
    if let Some(n) = query_param(&req, "fail_first") {
        if failing_try(&req, n) {
            status = http::StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let method = req.method().to_string();
    let path = req.uri().to_string();
    let body_len = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    let json = serde_json::json!({
        "method": method, "path": path, "headers": headers, "body_bytes": body_len,
    });
    let mut res = Response::new(body::full(format!("{json:#}\n")));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

/// Tries seen per `x-request-id`, for `?fail_first=N`. Bounded: a client
/// sending fresh ids only clears it.
static TRIES: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, u64>>> =
    std::sync::LazyLock::new(Default::default);

/// True while this request's tries so far are at most `n`.
fn failing_try(req: &Request<Incoming>, n: u64) -> bool {
    let id = req
        .headers()
        .get("x-request-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let Ok(mut tries) = TRIES.lock() else {
        return false;
    };
    if tries.len() >= 10_000 {
        tries.clear();
    }
    let seen = tries.entry(id).or_insert(0);
    *seen += 1;
    *seen <= n
}
