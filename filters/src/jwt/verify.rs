//! Checking one token: cheap shape checks on the raw text first (size,
//! three base64url parts, a header naming an allowed `alg`, no `crit`),
//! then the signature and claims with `jsonwebtoken`, then the filter's
//! `required_claims`. Every refusal is a [`Rejection`]: the metric result
//! and the RFC 6750 `error_description` the client sees.

use std::borrow::Cow;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind as JwtError;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use super::keys::KeyEntry;

/// Tokens longer than this are refused unparsed.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// At most this many keys are tried for one token (kid-less tokens).
const MAX_CANDIDATES: usize = 8;

/// The `result` label of `kaname_jwt_validations_total` for a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Missing,
    Malformed,
    Expired,
    NotYetValid,
    BadSignature,
    WrongIssuer,
    WrongAudience,
    UnknownKey,
    Forbidden,
    /// More than one token in the request (RFC 6750 §2): 400, never verified.
    InvalidRequest,
}

impl Failure {
    pub const ALL: [Failure; 10] = [
        Failure::Missing,
        Failure::Malformed,
        Failure::Expired,
        Failure::NotYetValid,
        Failure::BadSignature,
        Failure::WrongIssuer,
        Failure::WrongAudience,
        Failure::UnknownKey,
        Failure::Forbidden,
        Failure::InvalidRequest,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::Expired => "expired",
            Failure::NotYetValid => "not_yet_valid",
            Failure::BadSignature => "bad_signature",
            Failure::WrongIssuer => "wrong_issuer",
            Failure::WrongAudience => "wrong_audience",
            Failure::UnknownKey => "unknown_key",
            Failure::Forbidden => "forbidden",
            Failure::InvalidRequest => "invalid_request",
        }
    }
}

/// Why a request was refused; the description is kaname's own text (never
/// echoes the token), safe in a quoted header parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub failure: Failure,
    pub description: Cow<'static, str>,
}

impl Rejection {
    pub fn new(failure: Failure, description: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            failure,
            description: description.into(),
        }
    }
}

fn malformed(d: &'static str) -> Rejection {
    Rejection::new(Failure::Malformed, d)
}

/// What the header says, after the shape checks.
#[derive(Debug)]
pub struct TokenHeader {
    pub alg: Algorithm,
    pub kid: Option<String>,
}

/// A token that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Arc<Map<String, Value>>,
    pub exp: u64,
}

/// The checks of one filter, built once.
pub struct Verifier {
    /// One `Validation` per allowed algorithm: jsonwebtoken wants every
    /// algorithm of a `Validation` in the key's family.
    validations: Vec<(Algorithm, Validation)>,
    required_claims: Vec<String>,
    pub leeway: u64,
}

impl Verifier {
    pub fn new(
        allowed: &[Algorithm],
        issuers: &[String],
        audiences: &[String],
        leeway_secs: u64,
        required_claims: &[String],
    ) -> Verifier {
        let validations = allowed
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = leeway_secs;
                v.validate_exp = true;
                v.validate_nbf = true;
                let mut spec = vec!["exp"];
                if !issuers.is_empty() {
                    // jsonwebtoken lets a token without `iss` pass set_issuer.
                    v.set_issuer(issuers);
                    spec.push("iss");
                }
                if audiences.is_empty() {
                    v.validate_aud = false;
                } else {
                    v.set_audience(audiences);
                    spec.push("aud");
                }
                v.set_required_spec_claims(&spec);
                (alg, v)
            })
            .collect();
        Verifier {
            validations,
            required_claims: required_claims.to_vec(),
            leeway: leeway_secs,
        }
    }

    pub fn allows(&self, alg: Algorithm) -> bool {
        self.validations.iter().any(|(a, _)| *a == alg)
    }

    /// Shape checks on the raw token, before any key is looked at.
    pub fn inspect(&self, token: &str) -> Result<TokenHeader, Rejection> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(malformed("token is too large"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("token must have three dot-separated parts"));
        };
        if [header, payload]
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(is_base64url))
        {
            return Err(malformed("token is not base64url"));
        }
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| malformed("token header is not base64url"))?;
        let Ok(Value::Object(header)) = serde_json::from_slice::<Value>(&header) else {
            return Err(malformed("token header is not a JSON object"));
        };
        let alg = match header.get("alg") {
            Some(Value::String(s)) if s.eq_ignore_ascii_case("none") => {
                return Err(Rejection::new(
                    Failure::BadSignature,
                    "unsigned tokens (alg none) are not accepted",
                ))
            }
            Some(Value::String(s)) => s.parse::<Algorithm>().ok().filter(|a| self.allows(*a)),
            _ => return Err(malformed("token header has no alg")),
        };
        let Some(alg) = alg else {
            return Err(Rejection::new(
                Failure::BadSignature,
                "token algorithm is not accepted",
            ));
        };
        // RFC 7515 §4.1.11: extensions listed in `crit` must be understood;
        // kaname understands none.
        if header.contains_key("crit") {
            return Err(malformed(
                "token has critical header parameters kaname does not support",
            ));
        }
        // Checked after `alg`, so an unsigned token is named as such.
        if sig.is_empty() {
            return Err(Rejection::new(
                Failure::BadSignature,
                "token has no signature",
            ));
        }
        if !sig.bytes().all(is_base64url) {
            return Err(malformed("token is not base64url"));
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(malformed("token header kid is not a string")),
        };
        Ok(TokenHeader { alg, kid })
    }

    /// Signature and claims, with each candidate key in turn.
    pub fn verify(
        &self,
        token: &str,
        header: &TokenHeader,
        candidates: &[&KeyEntry],
    ) -> Result<Verified, Rejection> {
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(Rejection::new(
                Failure::BadSignature,
                "token algorithm is not accepted",
            ));
        };
        let mut last = Rejection::new(Failure::BadSignature, "invalid signature");
        for entry in candidates.iter().take(MAX_CANDIDATES) {
            match jsonwebtoken::decode::<Map<String, Value>>(token, &entry.key, validation) {
                Ok(data) => return self.check_claims(data.claims),
                Err(e) => {
                    last = map_error(e.kind());
                    if last.failure != Failure::BadSignature {
                        // The signature matched this key; the claims failed.
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn check_claims(&self, claims: Map<String, Value>) -> Result<Verified, Rejection> {
        if let Some(missing) = self
            .required_claims
            .iter()
            .find(|c| claims.get(c.as_str()).is_none_or(Value::is_null))
        {
            return Err(Rejection::new(
                Failure::Forbidden,
                format!("token lacks the required claim {}", header_safe(missing)),
            ));
        }
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Ok(Verified {
            claims: Arc::new(claims),
            exp,
        })
    }
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// A config-given name, reduced to characters safe in a quoted header
/// parameter.
fn header_safe(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
        .collect()
}

fn map_error(kind: &JwtError) -> Rejection {
    match kind {
        JwtError::ExpiredSignature => Rejection::new(Failure::Expired, "token expired"),
        JwtError::ImmatureSignature => {
            Rejection::new(Failure::NotYetValid, "token not valid yet (nbf)")
        }
        JwtError::InvalidIssuer => Rejection::new(Failure::WrongIssuer, "wrong issuer"),
        JwtError::InvalidAudience => Rejection::new(Failure::WrongAudience, "wrong audience"),
        JwtError::MissingRequiredClaim(c) => match c.as_str() {
            "iss" => Rejection::new(Failure::WrongIssuer, "token has no issuer"),
            "aud" => Rejection::new(Failure::WrongAudience, "token has no audience"),
            "exp" => malformed("token has no expiry (exp)"),
            _ => malformed("token lacks a registered claim"),
        },
        JwtError::InvalidClaimFormat(_) => malformed("token has a claim of the wrong type"),
        JwtError::InvalidSignature
        | JwtError::InvalidAlgorithm
        | JwtError::InvalidEcdsaKey
        | JwtError::InvalidEddsaKey
        | JwtError::InvalidRsaKey(_)
        | JwtError::InvalidKeyFormat => Rejection::new(Failure::BadSignature, "invalid signature"),
        JwtError::Base64(_) => malformed("token is not base64url"),
        JwtError::Json(_) | JwtError::Utf8(_) => malformed("token payload is not a JSON object"),
        _ => malformed("malformed token"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::keys::{KeySet, Lookup};
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn verifier() -> Verifier {
        Verifier::new(
            &[Algorithm::HS256],
            &["me".into()],
            &["orders".into()],
            0,
            &["sub".into()],
        )
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn token(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn check(v: &Verifier, token: &str) -> Result<Verified, Rejection> {
        let keys = KeySet::from_secret(SECRET, &[Algorithm::HS256]);
        let header = v.inspect(token)?;
        let Lookup::Found(c) = keys.lookup(header.kid.as_deref(), header.alg) else {
            panic!("no key")
        };
        v.verify(token, &header, &c)
    }

    fn failure(token: &str) -> Failure {
        check(&verifier(), token).unwrap_err().failure
    }

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn valid_token() {
        let t = token(json!({"sub": "u", "iss": "me", "aud": "orders", "exp": now() + 60}));
        let ok = check(&verifier(), &t).unwrap();
        assert_eq!(ok.claims["sub"], "u");
        assert_eq!(ok.exp, now() + 60);
    }

    #[test]
    fn claim_failures_map_to_results() {
        let base = || json!({"sub": "u", "iss": "me", "aud": ["x", "orders"], "exp": now() + 60});
        let with = |k: &str, v: Value| {
            let mut c = base();
            c[k] = v;
            token(c)
        };
        let without = |k: &str| {
            let mut c = base();
            c.as_object_mut().unwrap().remove(k);
            token(c)
        };
        assert_eq!(failure(&with("exp", json!(now() - 10))), Failure::Expired);
        assert_eq!(
            failure(&with("nbf", json!(now() + 100))),
            Failure::NotYetValid
        );
        assert_eq!(failure(&with("iss", json!("you"))), Failure::WrongIssuer);
        assert_eq!(failure(&without("iss")), Failure::WrongIssuer);
        assert_eq!(
            failure(&with("aud", json!("billing"))),
            Failure::WrongAudience
        );
        assert_eq!(failure(&without("aud")), Failure::WrongAudience);
        assert_eq!(failure(&without("exp")), Failure::Malformed);
        assert_eq!(failure(&with("exp", json!("soon"))), Failure::Malformed);
        let r = check(&verifier(), &without("sub")).unwrap_err();
        assert_eq!(r.failure, Failure::Forbidden);
        assert_eq!(r.description, "token lacks the required claim sub");
    }

    #[test]
    fn leeway_applies() {
        let v = Verifier::new(&[Algorithm::HS256], &[], &[], 30, &[]);
        let t = token(json!({"exp": now() - 10}));
        assert!(check(&v, &t).is_ok());
        let t = token(json!({"exp": now() - 60}));
        assert_eq!(check(&v, &t).unwrap_err().failure, Failure::Expired);
    }

    #[test]
    fn shape_checks() {
        let good = token(json!({"sub": "u", "iss": "me", "aud": "orders", "exp": now() + 60}));
        let (h, rest) = good.split_once('.').unwrap();
        let v = verifier();
        let desc = |t: &str| v.inspect(t).unwrap_err().description.into_owned();
        assert_eq!(
            desc(&format!("{good}.x")),
            "token must have three dot-separated parts"
        );
        assert_eq!(
            desc(&good[..good.rfind('.').unwrap()]),
            "token must have three dot-separated parts"
        );
        assert_eq!(desc(&format!("{h}.{rest}!")), "token is not base64url");
        assert_eq!(desc(&"a".repeat(MAX_TOKEN_BYTES + 1)), "token is too large");
        let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64("{}"));
        assert_eq!(desc(&none), "unsigned tokens (alg none) are not accepted");
        let nosig = format!("{}.{}.", b64(r#"{"alg":"HS256"}"#), b64("{}"));
        assert_eq!(desc(&nosig), "token has no signature");
        let none = format!("{}.{}.AA", b64(r#"{"alg":"none"}"#), b64("{}"));
        assert_eq!(
            v.inspect(&none).unwrap_err(),
            Rejection::new(
                Failure::BadSignature,
                "unsigned tokens (alg none) are not accepted"
            )
        );
        let rs = format!("{}.{}.AA", b64(r#"{"alg":"RS256"}"#), b64("{}"));
        assert_eq!(desc(&rs), "token algorithm is not accepted");
        let crit = format!(
            "{}.{}.AA",
            b64(r#"{"alg":"HS256","crit":["exp"],"exp":1}"#),
            b64("{}")
        );
        assert_eq!(v.inspect(&crit).unwrap_err().failure, Failure::Malformed);
        let kid = format!("{}.{}.AA", b64(r#"{"alg":"HS256","kid":"k1"}"#), b64("{}"));
        assert_eq!(v.inspect(&kid).unwrap().kid.as_deref(), Some("k1"));
    }

    #[test]
    fn wrong_secret_is_bad_signature() {
        let t = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "u", "iss": "me", "aud": "orders", "exp": now() + 60}),
            &EncodingKey::from_secret(b"another secret"),
        )
        .unwrap();
        assert_eq!(failure(&t), Failure::BadSignature);
    }
}
