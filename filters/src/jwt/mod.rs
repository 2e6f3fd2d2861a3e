//! The `jwt` filter: lets a request through only with a valid JSON Web
//! Token, and tells the upstream who the caller is.
//!
//! ```yaml
//! auth:
//!   jwt:
//!     issuer: https://auth.example.com
//!     audiences: [orders]
//!     algorithms: [RS256, ES256]
//!     jwks: { url: https://auth.example.com/.well-known/jwks.json, refresh: 5m }
//!     leeway: 30s
//!     required_claims: [sub]
//!     forward_claims: { sub: x-user-id }
//!     forward_token: false
//! ```
//!
//! - The algorithm is taken from the filter's `algorithms` and the key's
//!   type ([`keys`]), never from the token alone; `none` is never accepted.
//! - Keys come from a JWKS file or URL kept fresh by [`jwks_cache`], or an
//!   HS* `secret`.
//! - Refusals are 401 `unauthenticated` with `WWW-Authenticate: Bearer
//!   error="invalid_token", error_description="..."` (no `error` when the
//!   token is missing, RFC 6750 §3.1), 403 `forbidden` when a required
//!   claim is absent, or 400 `invalid_request` (`error="invalid_request"`)
//!   when the request carries more than one token ([`token`]); gRPC calls
//!   get the trailers-only form.
//! - A valid request gets `forward_claims` headers (client-sent ones of
//!   those names always removed), loses the token — every copy of it —
//!   unless `forward_token: true`, and carries [`VerifiedClaims`] in its
//!   extensions.
//! - Verified tokens are cached ([`token_cache`]) until their `exp`.

pub mod claims_headers;
pub mod jwks_cache;
pub mod keys;
pub mod token;
pub mod token_cache;
pub mod verify;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderValue, WWW_AUTHENTICATE};
use http::{Request, Response};
use jsonwebtoken::Algorithm;
use kaname_config::types::Jwt as JwtConfig;
use prometheus::IntCounter;
use serde_json::{Map, Value};
use tower::{Layer, Service};

use crate::claims::VerifiedClaims;
use crate::registry::{BuildContext, BuildError, BuiltFilter, RouteInfo};
use crate::{
    call_async, ready_call, Body, ErrorKind, ProxyError, RouteFuture, RouteLayer, RouteService,
};
use claims_headers::ForwardClaims;
use jwks_cache::{JwksCache, Refresher, TaskGuard};
use keys::{KeySet, Lookup};
use token::{Extracted, TokenPlace};
use token_cache::TokenCache;
use verify::{Failure, Rejection, Verifier, MAX_TOKEN_BYTES};

/// Verified tokens kept per filter.
const TOKEN_CACHE_CAPACITY: usize = 10_000;

/// A built jwt filter: its keys, refresh task and caches, shared by every
/// route that names it.
pub struct Jwt {
    layer: JwtLayer,
}

/// The filter on a route, as a tower layer (the same on every route).
#[derive(Clone)]
pub struct JwtLayer {
    shared: Arc<Shared>,
}

/// The jwt service of one route.
#[derive(Clone)]
pub struct JwtService {
    shared: Arc<Shared>,
    inner: RouteService,
}

struct Shared {
    /// The filter's name, for `RefusedBy` on its refusals.
    name: Arc<str>,
    source: TokenPlace,
    forward_token: bool,
    forward: ForwardClaims,
    verifier: Verifier,
    keys: Arc<JwksCache>,
    tokens: TokenCache,
    results: Results,
    _task: TaskGuard,
}

/// `kaname_jwt_validations_total{filter,result}`, resolved once.
struct Results {
    ok: IntCounter,
    by_failure: Vec<(Failure, IntCounter)>,
}

// === impl Jwt ===

impl Jwt {
    pub fn new(name: &str, cfg: &JwtConfig, ctx: &BuildContext<'_>) -> Result<Self, BuildError> {
        let invalid = |message: String| BuildError::Invalid {
            filter: name.to_string(),
            message,
        };
        let allowed = cfg
            .algorithms
            .iter()
            .map(|a| a.parse::<Algorithm>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| invalid("unknown algorithm".into()))?;
        if allowed.is_empty() {
            return Err(invalid("no algorithm is allowed".into()));
        }
        let forward = ForwardClaims::new(&cfg.forward_claims).map_err(invalid)?;
        let m = ctx.metrics;
        let (keys, task) = match (&cfg.secret, &cfg.jwks) {
            (Some(secret), _) => (
                JwksCache::fixed(KeySet::from_secret(secret.as_bytes(), &allowed)),
                TaskGuard::none(),
            ),
            (None, Some(source)) => JwksCache::spawn(Refresher {
                filter: name.to_string(),
                fetcher: (ctx.jwks_fetcher)(source),
                refresh: match source {
                    kaname_config::types::JwksSource::Url { refresh, .. } => *refresh,
                    // A file is re-read as often, so a rotated file is seen.
                    kaname_config::types::JwksSource::File(_) => {
                        std::time::Duration::from_secs(300)
                    }
                },
                allowed: allowed.clone(),
                success: m.jwks_refreshes_total.with_label_values(&[name, "success"]),
                failure: m.jwks_refreshes_total.with_label_values(&[name, "failure"]),
            }),
            (None, None) => return Err(invalid("needs jwks or secret".into())),
        };
        let results = Results {
            ok: m.jwt_validations_total.with_label_values(&[name, "ok"]),
            by_failure: Failure::ALL
                .iter()
                .map(|f| {
                    (
                        *f,
                        m.jwt_validations_total
                            .with_label_values(&[name, f.label()]),
                    )
                })
                .collect(),
        };
        let verifier = Verifier::new(
            &allowed,
            &cfg.issuers,
            &cfg.audiences,
            cfg.leeway.as_secs(),
            &cfg.required_claims,
        );
        Ok(Jwt {
            layer: JwtLayer {
                shared: Arc::new(Shared {
                    name: name.into(),
                    source: TokenPlace::new(cfg.from.clone()),
                    forward_token: cfg.forward_token,
                    forward,
                    verifier,
                    keys,
                    // `cache: false` (capacity 0) is for measuring what the cache saves.
                    tokens: TokenCache::new(if cfg.cache { TOKEN_CACHE_CAPACITY } else { 0 }),
                    results,
                    _task: task,
                }),
            },
        })
    }

    /// The filter's layer (the same for every route).
    pub fn route_layer(&self, _route: &RouteInfo) -> JwtLayer {
        self.layer.clone()
    }
}

impl BuiltFilter for Jwt {
    fn layer(&self, route: &RouteInfo) -> RouteLayer {
        RouteLayer::boxed(self.route_layer(route))
    }
}

impl Layer<RouteService> for JwtLayer {
    type Service = JwtService;

    fn layer(&self, inner: RouteService) -> JwtService {
        JwtService {
            shared: self.shared.clone(),
            inner,
        }
    }
}

// === impl JwtService ===

impl Service<Request<Body>> for JwtService {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> RouteFuture {
        call_async(self, req, Self::run)
    }
}

impl JwtService {
    async fn run(mut self, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let shared = &self.shared;
        match shared.authenticate(&req).await {
            Ok(claims) => {
                shared.results.ok.inc();
                let req = shared.prepare(req, claims);
                ready_call(&mut self.inner, req).await
            }
            Err(rejection) => {
                shared.count(rejection.failure);
                Err(refusal(&rejection, &shared.name))
            }
        }
    }
}

// === impl Shared ===

impl Shared {
    async fn authenticate(
        &self,
        req: &Request<Body>,
    ) -> Result<Arc<Map<String, Value>>, Rejection> {
        let token = match token::extract(&self.source, req) {
            Extracted::One(token) => token,
            Extracted::Missing => {
                return Err(Rejection::new(Failure::Missing, "missing bearer token"))
            }
            Extracted::Several(why) => return Err(Rejection::new(Failure::InvalidRequest, why)),
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejection::new(Failure::Malformed, "token is too large"));
        }
        self.keys.wait_first_fetch().await;
        let now = jsonwebtoken::get_current_timestamp();
        let mut current = self.keys.current();
        if let Some(claims) = self.tokens.get(&token, current.generation, now) {
            return Ok(claims);
        }
        let header = self.verifier.inspect(&token)?;
        if matches!(
            current.keys.lookup(header.kid.as_deref(), header.alg),
            Lookup::NoKeys | Lookup::UnknownKid
        ) && self.keys.refetch().await
        {
            current = self.keys.current();
        }
        let verified = match current.keys.lookup(header.kid.as_deref(), header.alg) {
            Lookup::Found(candidates) => self.verifier.verify(&token, &header, &candidates)?,
            Lookup::NoKeys => {
                return Err(Rejection::new(
                    Failure::UnknownKey,
                    "signing keys not available yet",
                ))
            }
            Lookup::UnknownKid => {
                return Err(Rejection::new(
                    Failure::UnknownKey,
                    "no signing key matches the token's kid",
                ))
            }
            Lookup::WrongAlgorithm => {
                return Err(Rejection::new(
                    Failure::BadSignature,
                    "token algorithm does not match its signing key",
                ))
            }
        };
        self.tokens.insert(
            &token,
            current.generation,
            verified.exp.saturating_add(self.verifier.leeway),
            verified.claims.clone(),
            now,
        );
        Ok(verified.claims)
    }

    /// What a verified request carries to the upstream. With
    /// `forward_token: true` the one verified token stays where it was (a
    /// second copy was refused before); otherwise every copy goes.
    fn prepare(&self, mut req: Request<Body>, claims: Arc<Map<String, Value>>) -> Request<Body> {
        self.forward.apply(&claims, req.headers_mut());
        if !self.forward_token {
            token::strip(&self.source, &mut req);
        }
        req.extensions_mut().insert(VerifiedClaims(claims));
        req
    }

    fn count(&self, failure: Failure) {
        if let Some((_, c)) = self.results.by_failure.iter().find(|(f, _)| *f == failure) {
            c.inc();
        }
    }
}

/// kaname's answer for a refusal, with RFC 6750's `WWW-Authenticate`.
fn refusal(r: &Rejection, filter: &Arc<str>) -> ProxyError {
    let (kind, challenge) = match r.failure {
        // §3.1: no error code when the request had no token at all.
        Failure::Missing => (ErrorKind::Unauthenticated, "Bearer".to_string()),
        // §3.1: "uses more than one method for including an access token".
        Failure::InvalidRequest => (
            ErrorKind::InvalidRequest,
            format!(
                "Bearer error=\"invalid_request\", error_description=\"{}\"",
                r.description
            ),
        ),
        Failure::Forbidden => (
            ErrorKind::Forbidden,
            format!(
                "Bearer error=\"insufficient_scope\", error_description=\"{}\"",
                r.description
            ),
        ),
        _ => (
            ErrorKind::Unauthenticated,
            format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                r.description
            ),
        ),
    };
    let mut e = ProxyError::refused(kind, filter, r.description.clone());
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        e.headers.insert(WWW_AUTHENTICATE, v);
    }
    e
}

#[cfg(test)]
mod tests;
