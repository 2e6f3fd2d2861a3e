//! An `authorize` filter's rules, compiled: each condition of
//! authorization.md against the request's facts.

use std::net::IpAddr;

use http::{HeaderMap, Method};
use kaname_config::authorize::{AuthzDecision, AuthzRule, ClaimValue, Conditions, IpNet};
use serde_json::{Map, Value};

use super::glob::PathGlob;

/// What the rules look at, read once per request.
pub struct Facts<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// The authority without its port, lower case.
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The verified client certificate's names (URI SANs first).
    pub identities: &'a [String],
    /// A verified token's claims (a jwt filter before this one).
    pub claims: Option<&'a Map<String, Value>>,
    pub source_ip: Option<IpAddr>,
}

#[derive(Debug)]
pub struct Rule {
    pub name: std::sync::Arc<str>,
    pub decision: AuthzDecision,
    when: Compiled,
}

#[derive(Debug)]
struct Compiled {
    methods: Vec<Method>,
    hosts: Vec<String>,
    paths: Vec<PathGlob>,
    headers: Vec<(String, Vec<String>)>,
    identities: Vec<String>,
    claims: Vec<(Vec<String>, Vec<ClaimValue>)>,
    authenticated: Option<bool>,
    source_ips: Vec<IpNet>,
}

impl Rule {
    pub fn new(r: &AuthzRule) -> Rule {
        let Conditions {
            methods,
            hosts,
            paths,
            headers,
            identities,
            claims,
            authenticated,
            source_ips,
        } = &r.conditions;
        Rule {
            name: r.name.as_str().into(),
            decision: r.decision,
            when: Compiled {
                methods: methods
                    .iter()
                    .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect(),
                hosts: hosts.clone(),
                paths: paths.iter().map(|p| PathGlob::new(p)).collect(),
                headers: headers.clone(),
                identities: identities.clone(),
                claims: claims
                    .iter()
                    .map(|(path, values)| {
                        (path.split('.').map(str::to_owned).collect(), values.clone())
                    })
                    .collect(),
                authenticated: *authenticated,
                source_ips: source_ips.clone(),
            },
        }
    }

    /// Every listed condition holds.
    pub fn matches(&self, f: &Facts<'_>) -> bool {
        let c = &self.when;
        (c.methods.is_empty() || c.methods.contains(f.method))
            && (c.hosts.is_empty()
                || f.host
                    .is_some_and(|h| c.hosts.iter().any(|p| host_matches(p, h))))
            && (c.paths.is_empty() || c.paths.iter().any(|g| g.matches(f.path)))
            && c.headers.iter().all(|(name, values)| {
                f.headers.get_all(name.as_str()).iter().any(|v| {
                    v.to_str()
                        .is_ok_and(|v| values.iter().any(|want| want == v))
                })
            })
            && (c.identities.is_empty()
                || f.identities
                    .iter()
                    .any(|id| c.identities.iter().any(|p| identity_matches(p, id))))
            && c.claims.iter().all(|(path, values)| {
                f.claims
                    .and_then(|claims| claim_at(claims, path))
                    .is_some_and(|v| values.iter().any(|want| claim_matches(v, want)))
            })
            && c.authenticated
                .is_none_or(|want| want == f.claims.is_some())
            && (c.source_ips.is_empty()
                || f.source_ip
                    .is_some_and(|ip| c.source_ips.iter().any(|n| n.contains(ip))))
    }
}

/// `*.example.com` matches any name below example.com; otherwise exact.
fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
        None => pattern == host,
    }
}

/// A trailing `*` is a prefix wildcard; otherwise exact.
fn identity_matches(pattern: &str, id: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => id.starts_with(prefix),
        None => pattern == id,
    }
}

/// The claim at a dotted path (`realm_access.roles`).
fn claim_at<'a>(claims: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut v = claims.get(first)?;
    for key in rest {
        v = v.as_object()?.get(key)?;
    }
    Some(v)
}

/// Equal, or an array holding it, or (a string) a space-separated word of
/// it, as OAuth 2.0's `scope`.
fn claim_matches(claim: &Value, want: &ClaimValue) -> bool {
    let equal = |v: &Value| match (v, want) {
        (Value::String(s), ClaimValue::Str(w)) => s == w,
        (Value::Number(n), ClaimValue::Number(w)) => n.as_f64() == Some(*w),
        (Value::Bool(b), ClaimValue::Bool(w)) => b == w,
        _ => false,
    };
    match claim {
        Value::Array(items) => items.iter().any(equal),
        Value::String(s) => {
            equal(claim) || matches!(want, ClaimValue::Str(w) if s.split(' ').any(|word| word == w))
        }
        other => equal(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn claims_by_equality_membership_words_and_dotted_paths() {
        let c = claims(json!({
            "sub": "u1", "scope": "orders:read orders:write", "role": ["clerk", "viewer"],
            "realm_access": {"roles": ["admin"]}, "level": 3, "staff": true
        }));
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        let s = |t: &str| ClaimValue::Str(t.into());
        let at = |p: &str| claim_at(&c, &path(p)).unwrap();
        assert!(claim_matches(at("sub"), &s("u1")));
        assert!(claim_matches(at("scope"), &s("orders:write")));
        assert!(!claim_matches(at("scope"), &s("orders")));
        assert!(claim_matches(at("role"), &s("clerk")));
        assert!(!claim_matches(at("role"), &s("admin")));
        assert!(claim_matches(at("realm_access.roles"), &s("admin")));
        assert!(claim_matches(at("level"), &ClaimValue::Number(3.0)));
        assert!(!claim_matches(at("level"), &s("3")), "types are kept");
        assert!(claim_matches(at("staff"), &ClaimValue::Bool(true)));
        assert!(claim_at(&c, &path("realm_access.nope")).is_none());
        assert!(claim_at(&c, &path("sub.deeper")).is_none());
    }

    #[test]
    fn hosts_and_identities_by_wildcard() {
        assert!(host_matches("*.example.com", "api.example.com"));
        assert!(host_matches("*.example.com", "a.b.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "badexample.com"));
        assert!(host_matches("orders", "orders"));
        assert!(identity_matches(
            "spiffe://c/ns/batch/*",
            "spiffe://c/ns/batch/sa/job"
        ));
        assert!(!identity_matches(
            "spiffe://c/ns/batch/*",
            "spiffe://c/ns/web/sa/x"
        ));
        assert!(identity_matches("web.shop", "web.shop"));
    }
}
