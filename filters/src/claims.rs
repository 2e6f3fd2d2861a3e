//! The claims of a verified token, placed in the request's extensions by
//! the `jwt` filter so later filters (rate limiting by `jwt:sub`) can use
//! them without parsing the token again.

/// The payload of a token the `jwt` filter verified.
#[derive(Debug, Clone)]
pub struct VerifiedClaims(pub std::sync::Arc<serde_json::Map<String, serde_json::Value>>);

impl VerifiedClaims {
    /// A claim as text: strings as they are, numbers and booleans written
    /// out; None for an absent claim, null, an array or an object.
    pub fn get_str(&self, claim: &str) -> Option<String> {
        match self.0.get(claim)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_str_by_type() {
        let json =
            serde_json::json!({"sub": "u1", "n": 42, "b": true, "a": [1], "o": {}, "z": null});
        let serde_json::Value::Object(map) = json else {
            unreachable!()
        };
        let c = VerifiedClaims(std::sync::Arc::new(map));
        assert_eq!(c.get_str("sub").as_deref(), Some("u1"));
        assert_eq!(c.get_str("n").as_deref(), Some("42"));
        assert_eq!(c.get_str("b").as_deref(), Some("true"));
        assert_eq!(c.get_str("a"), None);
        assert_eq!(c.get_str("o"), None);
        assert_eq!(c.get_str("z"), None);
        assert_eq!(c.get_str("missing"), None);
    }
}
