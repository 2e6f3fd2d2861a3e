//! Active health checks: every `interval`, a GET of `path` to each endpoint
//! through the upstream's own pool. A 2xx within `timeout` passes.
//! `unhealthy_after` failures in a row take an endpoint out of rotation,
//! `healthy_after` passes in a row bring it back. Endpoints start healthy,
//! so a restart of kaname does not wait a round of checks to send traffic.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use http::{header, HeaderValue, Request, Version};
use http_body_util::BodyExt;
use kaname_config::{HealthCheck, UpstreamProtocol};
use tokio::time::MissedTickBehavior;

use super::endpoint::Endpoint;
use super::Upstream;

/// Runs the checks of `up` until it is dropped (a reload that changed it).
pub fn spawn(up: Weak<Upstream>, cfg: HealthCheck) {
    tokio::spawn(run(up, cfg));
}

/// Passes (> 0) or failures (< 0) in a row, by endpoint.
type Streaks = HashMap<SocketAddr, i64>;

async fn run(up: Weak<Upstream>, cfg: HealthCheck) {
    let mut streaks = Streaks::new();
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(up) = up.upgrade() else { return };
        let endpoints = up.endpoints();
        let results =
            futures_util::future::join_all(endpoints.iter().map(|e| probe(&up, e, &cfg))).await;
        streaks.retain(|addr, _| endpoints.iter().any(|e| e.addr == *addr));
        for (ep, result) in endpoints.iter().zip(results) {
            judge(&up.name, ep, result, &cfg, &mut streaks);
        }
    }
}

fn judge(
    upstream: &str,
    ep: &Endpoint,
    result: Result<(), String>,
    cfg: &HealthCheck,
    streaks: &mut Streaks,
) {
    let streak = streaks.entry(ep.addr).or_insert(0);
    *streak = match (&result, *streak) {
        (Ok(()), s) if s > 0 => s + 1,
        (Ok(()), _) => 1,
        (Err(_), s) if s < 0 => s - 1,
        (Err(_), _) => -1,
    };
    let passing = ep.passes_checks();
    if passing && *streak <= -i64::from(cfg.unhealthy_after.max(1)) {
        let why = result.err().unwrap_or_default();
        tracing::warn!(%upstream, endpoint = %ep.addr, %why, "endpoint failed its health checks; out of rotation");
        ep.set_healthy(false);
    } else if !passing && *streak >= i64::from(cfg.healthy_after.max(1)) {
        tracing::info!(%upstream, endpoint = %ep.addr, "endpoint passed its health checks; back in rotation");
        ep.set_healthy(true);
    }
}

async fn probe(up: &Upstream, ep: &Arc<Endpoint>, cfg: &HealthCheck) -> Result<(), String> {
    let uri = format!("http://{}{}", ep.authority, cfg.path);
    let mut req = Request::get(uri)
        .body(kaname_filters::body::empty())
        .map_err(|e| e.to_string())?;
    if let Ok(v) = HeaderValue::from_str(ep.authority.as_str()) {
        req.headers_mut().insert(header::HOST, v);
    }
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("kaname-health-check"),
    );
    if up.config.protocol == UpstreamProtocol::Http2 {
        *req.version_mut() = Version::HTTP_2;
        req.headers_mut().remove(header::HOST);
    }
    let exchange = async {
        let res = up
            .client
            .request(req)
            .await
            .map_err(|e| crate::forward::error_chain(&e))?;
        let status = res.status();
        // Read the body so the connection goes back to the pool.
        res.into_body().collect().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("status {status}"))
        }
    };
    match tokio::time::timeout(cfg.timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {:?}", cfg.timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn streaks_move_the_verdict() {
        let cfg = HealthCheck {
            path: "/healthz".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_after: 3,
            healthy_after: 2,
        };
        let ep = Endpoint::new(([127, 0, 0, 1], 9).into());
        let mut s = Streaks::new();
        let fail = || Err("refused".to_string());
        judge("u", &ep, fail(), &cfg, &mut s);
        judge("u", &ep, fail(), &cfg, &mut s);
        judge("u", &ep, Ok(()), &cfg, &mut s);
        judge("u", &ep, fail(), &cfg, &mut s);
        judge("u", &ep, fail(), &cfg, &mut s);
        assert!(ep.is_healthy());
        judge("u", &ep, fail(), &cfg, &mut s);
        assert!(!ep.is_healthy());
        judge("u", &ep, Ok(()), &cfg, &mut s);
        assert!(!ep.is_healthy());
        judge("u", &ep, Ok(()), &cfg, &mut s);
        assert!(ep.is_healthy());
    }
}
