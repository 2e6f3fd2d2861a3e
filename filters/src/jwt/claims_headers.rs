//! `forward_claims`: verified claims copied into request headers for the
//! upstream. Headers of those names sent by the client are always removed
//! first, so a client can never forge `x-user-id`.

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use serde_json::{Map, Value};

/// Claim -> header pairs, header names parsed once at build time.
#[derive(Debug, Clone, Default)]
pub struct ForwardClaims {
    pairs: Vec<(String, HeaderName)>,
}

impl ForwardClaims {
    pub fn new(pairs: &[(String, String)]) -> Result<Self, String> {
        let pairs = pairs
            .iter()
            .map(|(claim, header)| {
                HeaderName::from_bytes(header.as_bytes())
                    .map(|h| (claim.clone(), h))
                    .map_err(|_| format!("forward_claims: invalid header name {header:?}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(ForwardClaims { pairs })
    }

    /// Removes every configured header, then sets those whose claim the
    /// token has. A claim that cannot be a header value (control
    /// characters) is left out rather than sent mangled.
    pub fn apply(&self, claims: &Map<String, Value>, headers: &mut HeaderMap) {
        for (_, header) in &self.pairs {
            headers.remove(header);
        }
        for (claim, header) in &self.pairs {
            let Some(text) = claims.get(claim).and_then(claim_text) else {
                continue;
            };
            match HeaderValue::from_str(&text) {
                Ok(v) => {
                    headers.insert(header.clone(), v);
                }
                Err(_) => {
                    tracing::debug!(claim, "claim is not a valid header value; not forwarded")
                }
            }
        }
    }
}

/// A claim as header text: strings as is, numbers and booleans written out,
/// arrays space-joined (their items by the same rule), objects as JSON.
/// Null gives None.
pub fn claim_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|item| match item {
                    Value::Array(_) => Some(item.to_string()),
                    other => claim_text(other),
                })
                .collect::<Vec<_>>()
                .join(" "),
        ),
        Value::Object(_) => Some(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_by_type() {
        assert_eq!(claim_text(&json!("u1")).as_deref(), Some("u1"));
        assert_eq!(claim_text(&json!(42)).as_deref(), Some("42"));
        assert_eq!(claim_text(&json!(1.5)).as_deref(), Some("1.5"));
        assert_eq!(claim_text(&json!(false)).as_deref(), Some("false"));
        assert_eq!(
            claim_text(&json!(["read", "write", 3])).as_deref(),
            Some("read write 3")
        );
        assert_eq!(claim_text(&json!({"a": 1})).as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(claim_text(&json!(null)), None);
    }

    #[test]
    fn client_headers_are_replaced_or_removed() {
        let fwd = ForwardClaims::new(&[
            ("sub".into(), "x-user-id".into()),
            ("scope".into(), "x-user-scope".into()),
        ])
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-user-id", HeaderValue::from_static("admin"));
        headers.append("x-user-id", HeaderValue::from_static("root"));
        headers.insert("x-user-scope", HeaderValue::from_static("all"));
        let claims = json!({"sub": "alice"});
        fwd.apply(claims.as_object().unwrap(), &mut headers);
        let ids: Vec<_> = headers.get_all("x-user-id").iter().collect();
        assert_eq!(ids, ["alice"]);
        // The token has no scope: the client's header is gone, not kept.
        assert!(headers.get("x-user-scope").is_none());
    }

    #[test]
    fn bad_header_value_is_left_out() {
        let fwd = ForwardClaims::new(&[("sub".into(), "x-user-id".into())]).unwrap();
        let mut headers = HeaderMap::new();
        fwd.apply(json!({"sub": "a\nb"}).as_object().unwrap(), &mut headers);
        assert!(headers.is_empty());
    }
}
