//! The `authorize` filter (authorization.md): what a verified caller may
//! do. Ordered `allow`/`deny` rules, the first whose conditions all hold
//! decides; none does — the external policy service, when there is one,
//! then `default`. A deny is 403 `forbidden` (PERMISSION_DENIED for gRPC)
//! with a message that names no rule; the access log names it. In
//! `mode: audit` a deny is logged and counted and the request passes.
//!
//! ```yaml
//! orders-policy:
//!   authorize:
//!     default: deny
//!     rules:
//!       - name: readers
//!         allow: { methods: [GET], paths: [/api/orders/**], claims: { scope: orders:read } }
//!     external: { url: http://127.0.0.1:8181/v1/data/http/authz/allow, timeout: 100ms }
//! ```
//!
//! Rules decide without leaving the request's task (no boxed future): only
//! a request that reaches the external service is boxed. The conditions
//! are in `rules.rs`, path globs in `glob.rs`, the service in `external.rs`.

mod external;
mod glob;
mod rules;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, Request, Response};
use kaname_config::authorize::{Authorize as AuthorizeConfig, AuthzDecision, AuthzMode};
use tower::{Layer, Service};

pub use external::{CallError, PolicyCall, PolicyClient, Verdict};
pub use glob::PathGlob;
pub use rules::{Facts, Rule};

use crate::claims::VerifiedClaims;
use crate::context::RequestContext;
use crate::metrics::{LazyCounter, Metrics};
use crate::registry::{BuildContext, BuildError, BuiltFilter, RouteInfo};
use crate::{ready_call, Body, ErrorKind, ProxyError, RouteFuture, RouteLayer, RouteService};

/// A built authorize filter, the same on every route naming it.
pub struct Authorize {
    layer: AuthorizeLayer,
}

#[derive(Clone)]
pub struct AuthorizeLayer(Arc<Policy>);

#[derive(Clone)]
pub struct AuthorizeService {
    inner: RouteService,
    policy: Arc<Policy>,
}

/// Who decided, with its counters (`kaname_authz_decisions_total`).
struct Decider {
    name: Arc<str>,
    allow: LazyCounter,
    deny: LazyCounter,
    audit_deny: LazyCounter,
}

struct Policy {
    filter: Arc<str>,
    audit: bool,
    /// A rule matches on `hosts`, or the external service is sent the host:
    /// only then is the request's host read (and lower-cased).
    needs_host: bool,
    rules: Vec<(Rule, Decider)>,
    default: (AuthzDecision, Decider),
    external: Option<(external::External, Decider, Decider)>,
}

// === impl Authorize ===

impl Authorize {
    pub fn new(
        name: &str,
        cfg: &AuthorizeConfig,
        ctx: &BuildContext<'_>,
    ) -> Result<Self, BuildError> {
        let m: &Arc<Metrics> = ctx.metrics;
        let decider = |rule: &str| {
            let c = |d: &str| LazyCounter::new(&m.authz_decisions_total, &[name, rule, d]);
            Decider {
                name: rule.into(),
                allow: c("allow"),
                deny: c("deny"),
                audit_deny: c("audit_deny"),
            }
        };
        let external = cfg.external.as_ref().map(|e| {
            let errors = CallError::ALL.map(|k| {
                m.authz_external_errors_total
                    .with_label_values(&[name, k.label()])
            });
            let duration = m.authz_external_duration_seconds.with_label_values(&[name]);
            (
                external::External::new(e, (ctx.policy_client)(e), duration, errors),
                decider("external"),
                decider("external_error"),
            )
        });
        Ok(Authorize {
            layer: AuthorizeLayer(Arc::new(Policy {
                filter: name.into(),
                audit: cfg.mode == AuthzMode::Audit,
                needs_host: cfg.external.is_some()
                    || cfg.rules.iter().any(|r| !r.conditions.hosts.is_empty()),
                rules: cfg
                    .rules
                    .iter()
                    .map(|r| (Rule::new(r), decider(&r.name)))
                    .collect(),
                default: (cfg.default, decider("default")),
                external,
            })),
        })
    }

    pub fn route_layer(&self, _route: &RouteInfo) -> AuthorizeLayer {
        self.layer.clone()
    }
}

impl BuiltFilter for Authorize {
    fn layer(&self, route: &RouteInfo) -> RouteLayer {
        RouteLayer::boxed(self.route_layer(route))
    }
}

impl Layer<RouteService> for AuthorizeLayer {
    type Service = AuthorizeService;
    fn layer(&self, inner: RouteService) -> AuthorizeService {
        AuthorizeService {
            inner,
            policy: self.0.clone(),
        }
    }
}

// === impl AuthorizeService ===

/// The facts of `req` (borrowed from it) and what else the service reads.
fn facts<'a>(req: &'a Request<Body>, host: &'a str) -> Facts<'a> {
    let ctx = req.extensions().get::<RequestContext>();
    Facts {
        method: req.method(),
        path: req.uri().path(),
        host: (!host.is_empty()).then_some(host),
        headers: req.headers(),
        identities: ctx
            .and_then(|c| c.peer.as_deref())
            .map_or(&[], |p| p.names.as_slice()),
        claims: req.extensions().get::<VerifiedClaims>().map(|c| &*c.0),
        source_ip: ctx.map(|c| c.client_addr.ip()),
    }
}

/// The request's authority without its port, lower case.
fn host_of(req: &Request<Body>) -> String {
    let Some(h) = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
    else {
        return String::new();
    };
    let name = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        h.rsplit_once(':').map_or(h, |(n, _)| n)
    };
    name.to_ascii_lowercase()
}

impl Service<Request<Body>> for AuthorizeService {
    type Response = Response<Body>;
    type Error = ProxyError;
    type Future = RouteFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> RouteFuture {
        let p = &self.policy;
        let host = if p.needs_host {
            host_of(&req)
        } else {
            String::new()
        };
        let decided = {
            let f = facts(&req, &host);
            p.rules
                .iter()
                .find(|(rule, _)| rule.matches(&f))
                .map(|(rule, d)| (rule.decision, d))
        };
        let (decision, by) = match (decided, &p.external) {
            (Some(d), _) => d,
            (None, None) => (p.default.0, &p.default.1),
            (None, Some(_)) => {
                let policy = p.clone();
                let mut inner = self.inner.clone();
                return Box::pin(async move {
                    let mut req = req;
                    let Some((ext, by, by_error)) = &policy.external else {
                        return ready_call(&mut inner, req).await;
                    };
                    let verdict = {
                        let f = facts(&req, &host);
                        ext.decide(&f, req.uri().query()).await
                    };
                    let (decision, by) = match verdict {
                        Ok(Verdict::Allow(headers)) => {
                            for (name, value) in headers {
                                req.headers_mut().insert(name, value);
                            }
                            (AuthzDecision::Allow, by)
                        }
                        Ok(Verdict::Deny) => (AuthzDecision::Deny, by),
                        Err(e) => {
                            tracing::warn!(filter = %policy.filter, error = e.label(), "policy service failed; on_error applies");
                            (ext.on_error, by_error)
                        }
                    };
                    match policy.apply(decision, by, &req) {
                        Ok(()) => ready_call(&mut inner, req).await,
                        Err(e) => Err(e),
                    }
                });
            }
        };
        match p.apply(decision, by, &req) {
            Ok(()) => self.inner.call(req),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
}

impl Policy {
    /// Counts the decision; a deny is the refusal (or, audited, a log line).
    fn apply(
        &self,
        decision: AuthzDecision,
        by: &Decider,
        req: &Request<Body>,
    ) -> Result<(), ProxyError> {
        match decision {
            AuthzDecision::Allow => {
                by.allow.inc();
                Ok(())
            }
            AuthzDecision::Deny if self.audit => {
                by.audit_deny.inc();
                tracing::info!(
                    target: "kaname::authz",
                    filter = %self.filter,
                    rule = %by.name,
                    method = %req.method(),
                    path = req.uri().path(),
                    "audit: would deny"
                );
                Ok(())
            }
            AuthzDecision::Deny => {
                by.deny.inc();
                // The client is not told which rule refused it.
                let mut e =
                    ProxyError::refused(ErrorKind::Forbidden, &self.filter, "access denied");
                e.rule = Some(by.name.clone());
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// For other filters' unit tests, which build no authorize filter.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub fn no_policy(_: &kaname_config::authorize::ExternalPolicy) -> Arc<dyn PolicyClient> {
        unreachable!("no authorize filter in this test")
    }
}
