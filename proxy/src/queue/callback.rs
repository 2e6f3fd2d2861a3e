//! Callbacks (async.md): the finished job's JSON POSTed to the URL the
//! caller named (its host checked against `allowed_hosts` at acceptance),
//! signed so the receiver can tell it is kaname's and refuse replays:
//! `kaname-timestamp: <unix seconds>` and `kaname-signature:
//! sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`. Retried up to
//! `attempts` times with a doubling pause; a callback pending when the
//! process stops is not sent again.

use std::time::Duration;

use aws_lc_rs::hmac;
use bytes::Bytes;
use http::{header, HeaderValue, Request};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kaname_config::queue::Callback;
use prometheus::IntCounter;

/// One try of a callback.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct CallbackClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl CallbackClient {
    pub fn new() -> Result<CallbackClient, String> {
        let connector = crate::tls::client::web_connector(None, TIMEOUT)
            .map_err(|e| format!("callback TLS setup: {e}"))?;
        Ok(CallbackClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// Sends `body` to `url` in the background, retried; counts the end.
    pub fn send(
        &self,
        cb: &Callback,
        url: String,
        body: String,
        success: IntCounter,
        failure: IntCounter,
    ) {
        let client = self.client.clone();
        let key = hmac::Key::new(hmac::HMAC_SHA256, cb.secret.as_bytes());
        let attempts = cb.attempts.max(1);
        tokio::spawn(async move {
            let body = Bytes::from(body);
            let mut pause = Duration::from_millis(200);
            for attempt in 1..=attempts {
                match post(&client, &key, &url, body.clone()).await {
                    Ok(()) => {
                        success.inc();
                        return;
                    }
                    Err(e) if attempt == attempts => {
                        tracing::warn!(url = %crate::queue::callback::shown(&url), error = %e, attempts, "callback failed");
                    }
                    Err(_) => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_secs(30));
                    }
                }
            }
            failure.inc();
        });
    }
}

/// The URL as logs show it: without its query (it may carry a token).
pub fn shown(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// `sha256=<hex>` of `"<timestamp>.<body>"`.
pub fn signature(key: &hmac::Key, timestamp: u64, body: &[u8]) -> String {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

async fn post(
    client: &Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    key: &hmac::Key,
    url: &str,
    body: Bytes,
) -> Result<(), String> {
    let timestamp = super::job::now_ms() / 1000;
    let req = Request::post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "kaname")
        .header("kaname-timestamp", HeaderValue::from(timestamp))
        .header("kaname-signature", signature(key, timestamp, &body))
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let res = tokio::time::timeout(TIMEOUT, client.request(req))
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?}"))?
        .map_err(|e| crate::forward::error_chain(&e))?;
    if res.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", res.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_of_timestamp_dot_body() {
        // openssl dgst -sha256 -hmac secret <<< -n "1700000000.{}"
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"secret");
        let sig = signature(&key, 1_700_000_000, b"{}");
        assert!(sig.starts_with("sha256="));
        assert_eq!(sig.len(), 7 + 64);
        assert_ne!(
            sig,
            signature(&key, 1_700_000_001, b"{}"),
            "the timestamp is signed"
        );
        assert_ne!(sig, signature(&key, 1_700_000_000, b"{ }"));
        assert_eq!(shown("https://h/cb?token=abc"), "https://h/cb");
    }
}
