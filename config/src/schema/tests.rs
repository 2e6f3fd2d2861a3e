//! The schema against the parser: every object of the schema has exactly
//! the keys the parser's key list for that section has, so a key added to
//! the parser (or removed) without the schema fails here.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::parse::{
    self, authorize, circuit_breaker, filter, jwt, listener, queue, retry, store, tracing, upstream,
};
use crate::FilterKindName;

/// Each object of `$defs` and the parser's key list for its section.
const SECTIONS: &[(&str, &[&str])] = &[
    ("Admin", parse::ADMIN_KEYS),
    ("Log", parse::LOG_KEYS),
    ("Tracing", tracing::TRACING_KEYS),
    ("Otlp", tracing::OTLP_KEYS),
    ("Listener", listener::LISTENER_KEYS),
    ("Http2", listener::HTTP2_KEYS),
    ("ListenerTls", listener::TLS_KEYS),
    ("Route", listener::ROUTE_KEYS),
    ("RouteMatch", listener::MATCH_KEYS),
    ("Upstream", upstream::KEYS),
    ("Pool", upstream::POOL_KEYS),
    ("HealthCheck", upstream::HEALTH_CHECK_KEYS),
    ("OutlierDetection", upstream::OUTLIER_KEYS),
    ("UpstreamTls", upstream::TLS_KEYS),
    ("Jwt", jwt::KEYS),
    ("Jwks", jwt::JWKS_KEYS),
    ("TokenSource", jwt::FROM_KEYS),
    ("RateLimit", filter::RATE_LIMIT_KEYS),
    ("Retry", retry::RETRY_KEYS),
    ("Backoff", retry::BACKOFF_KEYS),
    ("RetryBudget", retry::BUDGET_KEYS),
    ("CircuitBreaker", circuit_breaker::BREAKER_KEYS),
    ("FailureRate", circuit_breaker::FAILURE_RATE_KEYS),
    ("ConcurrencyLimit", filter::CONCURRENCY_KEYS),
    ("Authorize", authorize::AUTHORIZE_KEYS),
    ("Rule", authorize::RULE_KEYS),
    ("Conditions", authorize::CONDITIONS),
    ("External", authorize::EXTERNAL_KEYS),
    ("Queue", queue::QUEUE_KEYS),
    ("Delivery", queue::DELIVERY_KEYS),
    ("Callback", queue::CALLBACK_KEYS),
    ("Store", store::STORE_KEYS),
    ("Redis", store::REDIS_KEYS),
];

/// Choices: objects of which exactly one key is written.
const CHOICES: &[(&str, &[&str])] = &[
    ("Filter", FilterKindName::NAMES),
    // `filter::priority_source`: `{ header: NAME }` or `{ claim: NAME }`.
    ("Priority", &["header", "claim"]),
];

fn schema() -> Value {
    serde_json::from_str(&super::schema_json()).expect("the schema is JSON")
}

/// Every object schema (one with `properties`), by JSON pointer.
fn objects<'v>(at: &str, value: &'v Value, out: &mut Vec<(String, &'v Value)>) {
    match value {
        Value::Object(map) => {
            if map.get("properties").is_some_and(Value::is_object) {
                out.push((at.to_string(), value));
            }
            for (key, v) in map {
                objects(&format!("{at}/{key}"), v, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                objects(&format!("{at}/{i}"), v, out);
            }
        }
        _ => {}
    }
}

fn keys(object: &Value) -> BTreeSet<String> {
    object["properties"]
        .as_object()
        .expect("properties")
        .keys()
        .cloned()
        .collect()
}

fn assert_same(at: &str, schema: BTreeSet<String>, parser: &[&str]) {
    let parser: BTreeSet<String> = parser.iter().map(|k| k.to_string()).collect();
    let missing: Vec<_> = parser.difference(&schema).collect();
    let extra: Vec<_> = schema.difference(&parser).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "schema object {at}: keys the parser reads but the schema lacks: {missing:?}; \
         keys in the schema the parser refuses: {extra:?} (src/schema/ mirrors src/parse/)"
    );
}

#[test]
fn every_object_has_the_parsers_keys() {
    let schema = schema();
    let mut found = Vec::new();
    objects("", &schema, &mut found);
    let mut seen = BTreeSet::new();
    for (at, object) in &found {
        assert_eq!(
            object.get("additionalProperties"),
            Some(&Value::Bool(false)),
            "schema object {at} must be closed, so a misspelt key is refused"
        );
        if at.is_empty() {
            assert_same("(the top level)", keys(object), parse::TOP_KEYS);
            continue;
        }
        let name = at
            .strip_prefix("/$defs/")
            .filter(|n| !n.contains('/'))
            .unwrap_or_else(|| panic!("schema object {at} is not in $defs"));
        let (list, one) = match SECTIONS.iter().find(|(n, _)| *n == name) {
            Some((_, list)) => (*list, false),
            None => match CHOICES.iter().find(|(n, _)| *n == name) {
                Some((_, list)) => (*list, true),
                None => panic!("schema object {at} has no parser key list in SECTIONS"),
            },
        };
        assert_same(at, keys(object), list);
        let bounds = (object.get("minProperties"), object.get("maxProperties"));
        let exactly_one = bounds == (Some(&1.into()), Some(&1.into()));
        assert_eq!(
            exactly_one, one,
            "{at}: exactly one key is written of CHOICES only"
        );
        seen.insert(name);
    }
    for (name, _) in SECTIONS.iter().chain(CHOICES) {
        assert!(
            seen.contains(name),
            "SECTIONS names {name}, which the schema has no object for"
        );
    }
}

#[test]
fn every_key_is_described() {
    let schema = schema();
    let mut found = Vec::new();
    objects("", &schema, &mut found);
    for (at, object) in found {
        for (key, property) in object["properties"].as_object().unwrap() {
            let description = property.get("description").and_then(Value::as_str);
            assert!(
                description.is_some_and(|d| !d.is_empty()),
                "{at}: key {key:?} has no description (a doc comment on its field)"
            );
        }
    }
}

#[test]
fn the_words_are_the_parsers() {
    let schema = schema();
    let defs = &schema["$defs"];
    let words = |name: &str| defs[name]["anyOf"][0]["enum"].clone();
    assert_eq!(
        words("ListenerProtocol"),
        serde_json::json!(listener::PROTOCOLS)
    );
    assert_eq!(words("LogLevel"), serde_json::json!(parse::LEVELS));
    assert_eq!(words("Algorithm"), serde_json::json!(jwt::ALGORITHMS));
    assert_eq!(
        defs["Condition"]["anyOf"][0]["enum"]
            .as_array()
            .map(Vec::len),
        Some(crate::parse::condition::NAMED.len() + crate::GRPC_CODE_NAMES.len())
    );
}

#[test]
fn it_is_draft_2020_12_pretty_json_with_a_newline() {
    let text = super::schema_json();
    assert!(text.ends_with("}\n"));
    assert!(text.starts_with("{\n  \""));
    let schema = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["required"], serde_json::json!(["listeners"]));
    assert_eq!(schema["patternProperties"], serde_json::json!({"^x-": {}}));
    assert!(
        !text.contains("\"null\""),
        "no key takes null: the parser refuses a key without a value"
    );
}
