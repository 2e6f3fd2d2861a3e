//! The `authorize` filter's settings (authorization.md), with file:line:col
//! errors for an unknown key, a rule with no condition or two decisions,
//! a bad glob or CIDR.

use std::time::Duration;

use crate::authorize::{
    glob_error, Authorize, AuthzDecision, AuthzMode, AuthzRule, ClaimValue, Conditions,
    ExternalPolicy, IpNet,
};
use crate::error::Errors;
use crate::node::{Node, Value};
use crate::read::{self, Map};

pub(crate) const CONDITIONS: &[&str] = &[
    "methods",
    "hosts",
    "paths",
    "headers",
    "identities",
    "claims",
    "authenticated",
    "source_ips",
];

pub(crate) const AUTHORIZE_KEYS: &[&str] = &["mode", "default", "rules", "external"];
pub(crate) const RULE_KEYS: &[&str] = &["name", "allow", "deny"];
pub(crate) const EXTERNAL_KEYS: &[&str] =
    &["url", "timeout", "on_error", "cache", "include_headers"];
/// `mode` and a decision (`default`, `on_error`): the words, in the order
/// the parser maps them.
pub(crate) const MODES: &[&str] = &["enforce", "audit"];
pub(crate) const DECISIONS: &[&str] = &["allow", "deny"];

pub fn authorize(name: &str, node: &Node, errs: &mut Errors) -> Option<Authorize> {
    let place = format!("in authorize filter {name:?}");
    let m = Map::new(node, &place, AUTHORIZE_KEYS, errs)?;
    let mode = m
        .opt("mode", errs, |n, e| read::choice(n, MODES, e))
        .map_or(AuthzMode::Enforce, |i| {
            [AuthzMode::Enforce, AuthzMode::Audit][i]
        });
    let default = m
        .opt("default", errs, decision)
        .unwrap_or(AuthzDecision::Deny);
    let rules = match m.get("rules") {
        Some(n) => rules(name, n, errs)?,
        None => Vec::new(),
    };
    let external = m.opt("external", errs, |n, e| external(name, n, e));
    if rules.is_empty() && external.is_none() && m.get("rules").is_none() {
        errs.at(
            m.mark,
            format!("authorize filter {name:?} has no rules and no external service; it would only apply its default"),
        );
    }
    Some(Authorize {
        mode,
        default,
        rules,
        external,
    })
}

fn decision(node: &Node, errs: &mut Errors) -> Option<AuthzDecision> {
    read::choice(node, DECISIONS, errs).map(|i| [AuthzDecision::Allow, AuthzDecision::Deny][i])
}

fn rules(filter: &str, node: &Node, errs: &mut Errors) -> Option<Vec<AuthzRule>> {
    let items = read::list(node, errs)?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let place = format!("in rule {} of authorize filter {filter:?}", i + 1);
        let Some(m) = Map::new(item, &place, RULE_KEYS, errs) else {
            continue;
        };
        let name = m
            .opt("name", errs, read::nonempty)
            .unwrap_or_else(|| format!("rule-{}", i + 1));
        let (decision, body) = match (m.get("allow"), m.get("deny")) {
            (Some(b), None) => (AuthzDecision::Allow, b),
            (None, Some(b)) => (AuthzDecision::Deny, b),
            (Some(_), Some(_)) => {
                errs.at(
                    m.mark,
                    format!("rule {name:?} has both allow and deny; a rule has one"),
                );
                continue;
            }
            (None, None) => {
                errs.at(m.mark, format!("rule {name:?} has neither allow nor deny"));
                continue;
            }
        };
        if let Some(conditions) = conditions(&name, body, errs) {
            out.push(AuthzRule {
                name,
                decision,
                conditions,
            });
        }
    }
    Some(out)
}

fn conditions(rule: &str, node: &Node, errs: &mut Errors) -> Option<Conditions> {
    let place = format!("in rule {rule:?}");
    let m = Map::new(node, &place, CONDITIONS, errs)?;
    let c = Conditions {
        methods: m.opt("methods", errs, read::methods).unwrap_or_default(),
        hosts: m
            .opt("hosts", errs, read::one_or_more)
            .unwrap_or_default()
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        paths: m.opt("paths", errs, globs).unwrap_or_default(),
        headers: m.opt("headers", errs, headers).unwrap_or_default(),
        identities: m
            .opt("identities", errs, read::one_or_more)
            .unwrap_or_default(),
        claims: m.opt("claims", errs, claims).unwrap_or_default(),
        authenticated: m.opt("authenticated", errs, read::boolean),
        source_ips: m.opt("source_ips", errs, cidrs).unwrap_or_default(),
    };
    // By the keys written: a condition whose values were all refused has
    // its own error already.
    if !CONDITIONS.iter().any(|k| m.get(k).is_some()) {
        errs.at(
            node.mark,
            format!(
                "rule {rule:?} has no condition; give at least one of {}",
                CONDITIONS.join(", ")
            ),
        );
        return None;
    }
    (!c.is_empty()).then_some(c)
}

fn globs(node: &Node, errs: &mut Errors) -> Option<Vec<String>> {
    let items = read::list(node, errs)?;
    let mut out = Vec::new();
    for item in items {
        let Some(glob) = read::nonempty(item, errs) else {
            continue;
        };
        match glob_error(&glob) {
            Some(why) => errs.at(item.mark, format!("invalid path glob {glob:?}: {why}")),
            None => out.push(glob),
        }
    }
    Some(out)
}

fn cidrs(node: &Node, errs: &mut Errors) -> Option<Vec<IpNet>> {
    let items = read::list(node, errs)?;
    let mut out = Vec::new();
    for item in items {
        let Some(text) = read::string(item, errs) else {
            continue;
        };
        match IpNet::parse(text.trim()) {
            Some(net) => out.push(net),
            None => errs.at(
                item.mark,
                format!("invalid CIDR {text:?}: expected an address and prefix length, like 10.0.0.0/8 or fd00::/8"),
            ),
        }
    }
    Some(out)
}

/// `{ name: value | [values] }`, names lower-cased.
fn headers(node: &Node, errs: &mut Errors) -> Option<Vec<(String, Vec<String>)>> {
    let m = Map::any(node, "in headers", errs)?;
    let mut out = Vec::new();
    for (key, _, value) in m.entries() {
        if let Some(values) = read::one_or_more(value, errs) {
            out.push((key.to_ascii_lowercase(), values));
        }
    }
    Some(out)
}

fn claims(node: &Node, errs: &mut Errors) -> Option<Vec<(String, Vec<ClaimValue>)>> {
    let m = Map::any(node, "in claims", errs)?;
    let mut out = Vec::new();
    for (key, _, value) in m.entries() {
        let values = match &value.value {
            Value::Seq(items) => items.iter().filter_map(|n| claim_value(n, errs)).collect(),
            _ => claim_value(value, errs).into_iter().collect(),
        };
        out.push((key.to_string(), values));
    }
    Some(out)
}

fn claim_value(node: &Node, errs: &mut Errors) -> Option<ClaimValue> {
    let Some(s) = node.scalar().filter(|_| !node.is_null()) else {
        errs.at(
            node.mark,
            format!(
                "expected a claim value (a string, number or boolean), found {}",
                node.describe()
            ),
        );
        return None;
    };
    if s.plain {
        match s.text.as_str() {
            "true" => return Some(ClaimValue::Bool(true)),
            "false" => return Some(ClaimValue::Bool(false)),
            t => {
                if let Ok(n) = t.parse::<f64>() {
                    return Some(ClaimValue::Number(n));
                }
            }
        }
    }
    Some(ClaimValue::Str(s.text.clone()))
}

fn external(filter: &str, node: &Node, errs: &mut Errors) -> Option<ExternalPolicy> {
    let place = format!("in external of authorize filter {filter:?}");
    let m = Map::new(node, &place, EXTERNAL_KEYS, errs)?;
    let url = m.req("url", errs, url);
    let timeout = m
        .opt("timeout", errs, read::positive_duration)
        .unwrap_or(Duration::from_millis(100));
    let on_error = m
        .opt("on_error", errs, decision)
        .unwrap_or(AuthzDecision::Deny);
    let cache = m
        .opt("cache", errs, read::duration)
        .unwrap_or(Duration::ZERO);
    let include_headers = m
        .opt("include_headers", errs, |n, e| {
            let items = read::list(n, e)?;
            Some(
                items
                    .iter()
                    .filter_map(|i| read::header_name(i, e))
                    .collect(),
            )
        })
        .unwrap_or_default();
    Some(ExternalPolicy {
        url: url?,
        timeout,
        on_error,
        cache,
        include_headers,
    })
}

/// An http:// or https:// URL with a host.
fn url(node: &Node, errs: &mut Errors) -> Option<String> {
    let text = read::nonempty(node, errs)?;
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => Some(text),
        _ => {
            errs.at(
                node.mark,
                format!("expected an http:// or https:// URL, found {text:?}"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::authorize::{AuthzDecision, ClaimValue};
    use crate::types::FilterKind;

    const HEAD: &str = "listeners:
  main:
    listen: 127.0.0.1:8080
    routes:
      - { match: { path_prefix: / }, upstream: app, filters: [auth, policy] }
upstreams:
  app: { endpoints: [127.0.0.1:3000] }
filters:
  auth: { jwt: { algorithms: [HS256], secret: 0123456789abcdef0123456789abcdef } }
  policy:
    authorize:
";

    fn errors(body: &str) -> String {
        match crate::parse("f.yaml", &format!("{HEAD}{body}")) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_policy_reads_back_typed() {
        let cfg = crate::parse(
            "f.yaml",
            &format!(
                "{HEAD}      mode: audit
      rules:
        - {{ name: readers, allow: {{ methods: [get], paths: [/api/**], claims: {{ scope: orders:read, level: [1, 2] }} }} }}
        - deny: {{ source_ips: [10.0.0.0/8], hosts: [API.example.com] }}
      external: {{ url: http://127.0.0.1:8181/v1/data/allow, cache: 10s, include_headers: [X-Tenant] }}
"
            ),
        )
        .expect("valid");
        let FilterKind::Authorize(a) = &cfg.filter("policy").unwrap().kind else {
            unreachable!()
        };
        assert_eq!(a.default, AuthzDecision::Deny);
        assert_eq!(a.rules[0].conditions.methods, ["GET"]);
        assert_eq!(
            a.rules[0].conditions.claims[1].1,
            [ClaimValue::Number(1.0), ClaimValue::Number(2.0)]
        );
        assert_eq!(a.rules[1].name, "rule-2");
        assert_eq!(a.rules[1].conditions.hosts, ["api.example.com"]);
        let e = a.external.as_ref().unwrap();
        assert_eq!(e.timeout, std::time::Duration::from_millis(100));
        assert_eq!(e.include_headers, ["x-tenant"]);
    }

    #[test]
    fn mistakes_are_errors_with_their_place() {
        assert_eq!(
            errors("      rules: [{ allow: { path: [/a] } }]\n"),
            "f.yaml:12:24: rule \"rule-1\" has no condition; give at least one of methods, hosts, paths, headers, identities, claims, authenticated, source_ips\n\
             f.yaml:12:26: unknown key \"path\" in rule \"rule-1\"; did you mean \"paths\"?"
        );
        assert_eq!(
            errors("      rules: [{ allow: { paths: [\"/a/**b\"] } }]\n"),
            "f.yaml:12:34: invalid path glob \"/a/**b\": ** must be a whole segment (/a/**/b)"
        );
        assert!(
            errors("      rules: [{ allow: { source_ips: [10.0.0.0/33] } }]\n")
                .starts_with("f.yaml:12:39: invalid CIDR \"10.0.0.0/33\"")
        );
        assert!(
            errors("      rules: [{ allow: { paths: [/a] }, deny: { paths: [/b] } }]\n")
                .contains("has both allow and deny")
        );
        assert!(errors("      defualt: allow\n").contains("did you mean \"default\"?"));
    }

    #[test]
    fn claims_need_a_jwt_filter_before() {
        let body = "      rules: [{ allow: { claims: { scope: read } } }]\n";
        assert_eq!(errors(body), "");
        let swapped = format!("{HEAD}{body}").replace("[auth, policy]", "[policy, auth]");
        let e = crate::parse("f.yaml", &swapped).unwrap_err().to_string();
        assert_eq!(
            e,
            "f.yaml:5:63: authorize filter \"policy\" has rules on claims but route \"main-1\" has no jwt filter before it"
        );
    }

    #[test]
    fn identities_without_client_ca_are_warned() {
        let cfg = crate::parse(
            "f.yaml",
            &format!("{HEAD}      rules: [{{ name: web, allow: {{ identities: [\"spiffe://c/web\"] }} }}]\n"),
        )
        .expect("valid");
        assert_eq!(
            crate::warnings(&cfg),
            ["authorize filter \"policy\" rule \"web\" matches identities, but listener \"main\" has no tls.client_ca, so its requests have none"]
        );
    }
}
