//! Buckets shared by every sidecar naming the same store (stores.md). The
//! proxy gives the filter a [`SharedBuckets`] (filters open no sockets);
//! this file holds what the filter needs of it: the key a bucket has in the
//! store, and the decision while the store fails (`on_store_error`).

use std::future::Future;
use std::pin::Pin;

use http::Request;
use kaname_config::store::OnStoreError;

use super::buckets::Decision;
use super::key::KeySource;
use crate::claims::VerifiedClaims;
use crate::context::RequestContext;

/// Takes a token from a bucket held in a store, atomically for every
/// sidecar sharing it. A failure (store down, slower than its timeout) is
/// reported, counted and warned about by the store; the filter then decides
/// by `on_store_error`.
pub trait SharedBuckets: Send + Sync {
    fn take(&self, key: Vec<u8>) -> SharedDecision;
}

pub type SharedDecision = Pin<Box<dyn Future<Output = Result<Decision, StoreUnavailable>> + Send>>;

/// The store gave no decision in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreUnavailable;

/// Values longer than this are hashed: a store key stays small whatever
/// header a client sends.
const MAX_KEY_BYTES: usize = 64;

impl KeySource {
    /// The bucket's key in the store: the same for every sidecar (no
    /// per-process hashing), typed so values of different kinds never meet.
    pub fn shared_key_of<B>(&self, req: &Request<B>) -> Vec<u8> {
        let text = |kind: &[u8], value: &[u8]| {
            let mut k = kind.to_vec();
            if value.len() <= MAX_KEY_BYTES {
                k.extend_from_slice(value);
            } else {
                // SHA-256: a client cannot make two values share a bucket.
                k.extend_from_slice(b"sha256:");
                let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value);
                for b in d.as_ref() {
                    k.extend_from_slice(format!("{b:02x}").as_bytes());
                }
            }
            k
        };
        let found = match self {
            KeySource::Global => return b"global".to_vec(),
            KeySource::ClientIp => req
                .extensions()
                .get::<RequestContext>()
                .map(|c| format!("ip:{}", c.client_addr.ip()).into_bytes()),
            KeySource::Header(name) => req.headers().get(name).map(|v| text(b"v:", v.as_bytes())),
            KeySource::Claim(claim) => req
                .extensions()
                .get::<VerifiedClaims>()
                .and_then(|c| c.get_str(claim))
                .map(|v| text(b"v:", v.as_bytes())),
        };
        found.unwrap_or_else(|| b"anonymous".to_vec())
    }
}

/// The decision while the store fails, when not the local bucket's.
pub fn fallback(on_error: OnStoreError, burst: u32) -> Option<Decision> {
    match on_error {
        OnStoreError::Local => None,
        OnStoreError::Allow => Some(Decision::Allow {
            remaining: burst,
            reset: std::time::Duration::ZERO,
        }),
        OnStoreError::Deny => Some(Decision::Deny {
            wait: std::time::Duration::from_secs(1),
            reset: std::time::Duration::from_secs(1),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kaname_config::types::RateLimitKey;

    #[test]
    fn store_keys_are_typed_and_bounded() {
        let header = KeySource::new(&RateLimitKey::Header("x-key".into())).expect("valid");
        let r = Request::get("/")
            .header("x-key", "abc")
            .body(())
            .expect("request");
        assert_eq!(header.shared_key_of(&r), b"v:abc");
        let long = "k".repeat(1000);
        let r = Request::get("/")
            .header("x-key", &long)
            .body(())
            .expect("request");
        let k = header.shared_key_of(&r);
        assert!(
            k.starts_with(b"v:sha256:") && k.len() == 2 + 7 + 64,
            "{k:?}"
        );
        let r = Request::get("/").body(()).expect("request");
        assert_eq!(header.shared_key_of(&r), b"anonymous");
        assert_eq!(KeySource::Global.shared_key_of(&r), b"global");
        // Not "v:global": a header value cannot take the global bucket.
        let r = Request::get("/")
            .header("x-key", "global")
            .body(())
            .expect("request");
        assert_eq!(header.shared_key_of(&r), b"v:global");
    }

    #[test]
    fn fallbacks() {
        assert!(fallback(OnStoreError::Local, 5).is_none());
        assert!(matches!(
            fallback(OnStoreError::Allow, 5),
            Some(Decision::Allow { remaining: 5, .. })
        ));
        assert!(matches!(
            fallback(OnStoreError::Deny, 5),
            Some(Decision::Deny { .. })
        ));
    }
}
