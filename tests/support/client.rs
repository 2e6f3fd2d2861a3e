//! HTTP/1.1 and HTTP/2 (h2c prior knowledge) clients for the tests.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// How long one request (head and whole body) may take in the helpers.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|n| match n {}).boxed()
}

pub fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|n| match n {}).boxed()
}

/// A whole response, body collected.
#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}, body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// Asserts one of kaname's own error answers: status, `kaname-error`
    /// header, JSON content type and `{"error": kind, "message": "..."}`.
    pub fn assert_kaname_error(&self, status: u16, kind: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "status for a {kind} answer; body {:?}",
            self.text()
        );
        assert_eq!(
            self.header("kaname-error"),
            Some(kind),
            "kaname-error header"
        );
        let ct = self.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with("application/json"),
            "content-type of a {kind} answer is {ct:?}"
        );
        let body = self.json();
        assert_eq!(body["error"], kind, "error field in {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "message field should be a non-empty string in {body}"
        );
    }
}

/// A hyper-util legacy client, HTTP/1.1 or HTTP/2 prior knowledge.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Body>,
}

impl HttpClient {
    pub fn http1() -> Self {
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// HTTP/1.1 from a given local address (any of 127.0.0.0/8 works on
    /// Linux loopback), to look like another client host.
    pub fn http1_from(local: std::net::IpAddr) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_local_address(Some(local));
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// HTTP/2 over cleartext by prior knowledge (h2c).
    pub fn http2() -> Self {
        HttpClient {
            inner: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    /// A client that opens a new connection for every request.
    pub fn http1_no_pool() -> Self {
        HttpClient {
            inner: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
        }
    }

    /// Sends and returns the response head; the body streams.
    pub async fn send_streaming(&self, req: Request<Body>) -> Response<Incoming> {
        let uri = req.uri().clone();
        match tokio::time::timeout(REQUEST_DEADLINE, self.inner.request(req)).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => panic!("request to {uri} failed: {}", error_chain(&e)),
            Err(_) => panic!("no response from {uri} within {REQUEST_DEADLINE:?}"),
        }
    }

    /// Sends and collects the whole response, within `REQUEST_DEADLINE`.
    pub async fn send(&self, req: Request<Body>) -> TestResponse {
        let uri = req.uri().clone();
        match self.try_send(req, REQUEST_DEADLINE).await {
            Ok(resp) => resp,
            Err(e) => panic!("request to {uri}: {e}"),
        }
    }

    pub async fn try_send(
        &self,
        req: Request<Body>,
        deadline: Duration,
    ) -> Result<TestResponse, String> {
        let fut = async {
            let resp = self.inner.request(req).await.map_err(|e| error_chain(&e))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("reading body: {}", error_chain(&e)))?
                .to_bytes();
            Ok(TestResponse {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(deadline, fut)
            .await
            .map_err(|_| format!("no whole response within {deadline:?}"))?
    }

    pub async fn get(&self, url: &str) -> TestResponse {
        self.send(get(url)).await
    }

    pub async fn try_get(&self, url: &str, deadline: Duration) -> Result<TestResponse, String> {
        self.try_send(get(url), deadline).await
    }
}

pub fn get(url: &str) -> Request<Body> {
    Request::get(url).body(empty()).expect("build GET request")
}

/// An error and all its sources on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
