//! The client of an authorize filter's external policy service: POST JSON
//! over HTTP or HTTPS (rustls, aws-lc-rs, Mozilla roots), pooled, the
//! answer's body bounded. (The filter applies its `timeout`, reads the
//! answer and caches decisions; it never opens a socket.)

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{ConfigBuilderExt, HttpsConnector};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kaname_config::authorize::ExternalPolicy;
use kaname_filters::authorize::PolicyClient;

use crate::forward::error_chain;

/// A decision larger than this is refused (real ones are a few bytes).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub fn client(cfg: &ExternalPolicy) -> Arc<dyn PolicyClient> {
    match HttpPolicy::new(&cfg.url) {
        Ok(c) => Arc::new(c),
        Err(e) => Arc::new(Broken(e)),
    }
}

struct HttpPolicy {
    url: Uri,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpPolicy {
    fn new(url: &str) -> Result<Self, String> {
        let url: Uri = url
            .parse()
            .map_err(|e| format!("invalid policy URL {url}: {e}"))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup for the policy service: {e}"))?
            .with_webpki_roots()
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(HttpPolicy { url, client })
    }

    async fn send(&self, body: Bytes) -> Result<(u16, Bytes), String> {
        let req = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "kaname")
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let res = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("POST {}: {}", self.url, error_chain(&e)))?;
        let status = res.status().as_u16();
        let body = Limited::new(res.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("POST {}: reading the answer: {e}", self.url))?;
        Ok((status, body.to_bytes()))
    }
}

impl PolicyClient for HttpPolicy {
    fn post(&self, body: Bytes) -> kaname_filters::authorize::PolicyCall<'_> {
        Box::pin(self.send(body))
    }
}

/// A URL that could not be set up: every call fails with why.
struct Broken(String);

impl PolicyClient for Broken {
    fn post(&self, _: Bytes) -> kaname_filters::authorize::PolicyCall<'_> {
        let e = self.0.clone();
        Box::pin(async move { Err(e) })
    }
}
