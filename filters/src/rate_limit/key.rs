//! Which bucket a request spends from: the configured key read from the
//! request, resolved once per filter (header names parsed at build time).

use http::{HeaderName, Request};
use kaname_config::types::RateLimitKey;

use super::buckets::Key;
use crate::claims::VerifiedClaims;
use crate::context::RequestContext;

/// The `key:` of a rate_limit filter, ready to read requests.
#[derive(Debug, Clone)]
pub enum KeySource {
    Global,
    ClientIp,
    Header(HeaderName),
    Claim(String),
}

impl KeySource {
    pub fn new(key: &RateLimitKey) -> Result<Self, String> {
        Ok(match key {
            RateLimitKey::Global => KeySource::Global,
            RateLimitKey::ClientIp => KeySource::ClientIp,
            RateLimitKey::Header(name) => KeySource::Header(
                HeaderName::try_from(name.as_str())
                    .map_err(|e| format!("key header:{name}: {e}"))?,
            ),
            RateLimitKey::JwtClaim(claim) => KeySource::Claim(claim.clone()),
        })
    }

    /// The bucket key of `req`; `Key::Anonymous` when the request carries
    /// none (no such header, no verified claims, no such claim).
    pub fn key_of<B>(&self, req: &Request<B>, hasher: &impl std::hash::BuildHasher) -> Key {
        let found = match self {
            KeySource::Global => return Key::Global,
            KeySource::ClientIp => req
                .extensions()
                .get::<RequestContext>()
                .map(|c| Key::Ip(c.client_addr.ip())),
            KeySource::Header(name) => req
                .headers()
                .get(name)
                .map(|v| Key::text(v.as_bytes(), hasher)),
            KeySource::Claim(claim) => req
                .extensions()
                .get::<VerifiedClaims>()
                .and_then(|c| c.get_str(claim))
                .map(|v| Key::text(v.as_bytes(), hasher)),
        };
        found.unwrap_or(Key::Anonymous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn req() -> http::request::Builder {
        Request::get("http://x/")
    }

    #[test]
    fn reads_each_kind_of_key() {
        let h = std::hash::RandomState::new();
        let r = req().header("x-api-key", "abc").body(()).expect("request");
        let header = KeySource::new(&RateLimitKey::Header("x-api-key".into())).expect("valid");
        assert_eq!(header.key_of(&r, &h), Key::Text(b"abc"[..].into()));
        assert_eq!(KeySource::Global.key_of(&r, &h), Key::Global);
        // No context, no claims: anonymous.
        assert_eq!(KeySource::ClientIp.key_of(&r, &h), Key::Anonymous);
        assert_eq!(
            KeySource::Claim("sub".into()).key_of(&r, &h),
            Key::Anonymous
        );
        let other = KeySource::new(&RateLimitKey::Header("x-other".into())).expect("valid");
        assert_eq!(other.key_of(&r, &h), Key::Anonymous);
    }

    #[test]
    fn reads_client_ip_and_claims_from_extensions() {
        let h = std::hash::RandomState::new();
        let mut r = req().body(()).expect("request");
        r.extensions_mut().insert(RequestContext {
            client_ip: http::HeaderValue::from_static("10.0.0.7"),
            tls: false,
            peer: None,
            client_addr: "10.1.2.3:5555".parse().expect("addr"),
            listener: "l".into(),
            route: "r".into(),
            upstream: "u".into(),
            grpc: false,
            body: None,
        });
        let serde_json::Value::Object(map) = serde_json::json!({"sub": "user-7", "tier": 3}) else {
            unreachable!()
        };
        r.extensions_mut().insert(VerifiedClaims(Arc::new(map)));
        assert_eq!(
            KeySource::ClientIp.key_of(&r, &h),
            Key::Ip("10.1.2.3".parse().expect("ip"))
        );
        assert_eq!(
            KeySource::Claim("sub".into()).key_of(&r, &h),
            Key::Text(b"user-7"[..].into())
        );
        assert_eq!(
            KeySource::Claim("tier".into()).key_of(&r, &h),
            Key::Text(b"3"[..].into())
        );
        assert_eq!(
            KeySource::Claim("none".into()).key_of(&r, &h),
            Key::Anonymous
        );
    }
}
