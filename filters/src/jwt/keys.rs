//! Verification keys, parsed once: from a JWKS document or an HS* secret.
//!
//! Each key carries the algorithms it may verify: those its type allows
//! (RSA: RS*/PS*; EC P-256: ES256; EC P-384: ES384; Ed25519: EdDSA; a
//! secret: HS*), narrowed by the JWK's own `alg` when it has one, and by
//! the filter's `algorithms`. A token's `alg` only picks among these, so an
//! HS256 token "signed" with an RSA public key's bytes finds no key.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

/// One verification key.
pub struct KeyEntry {
    pub kid: Option<String>,
    pub key: DecodingKey,
    /// Never empty: a key no allowed algorithm can use is not kept.
    pub algs: Vec<Algorithm>,
}

/// The keys of one filter at one moment.
#[derive(Default)]
pub struct KeySet {
    entries: Vec<KeyEntry>,
}

/// What the key set holds for a token's `kid` and `alg`.
pub enum Lookup<'a> {
    /// Keys to try, in document order.
    Found(Vec<&'a KeyEntry>),
    /// No key at all (not fetched yet).
    NoKeys,
    /// Keys, but none with this `kid`.
    UnknownKid,
    /// Keys with this `kid` (or without kids), none for this algorithm.
    WrongAlgorithm,
}

impl KeySet {
    /// The single key of an HS* filter. The secret's bytes are used as is.
    pub fn from_secret(secret: &[u8], allowed: &[Algorithm]) -> KeySet {
        let algs = intersect(&HMAC, allowed);
        let entries = if algs.is_empty() {
            Vec::new()
        } else {
            vec![KeyEntry {
                kid: None,
                key: DecodingKey::from_secret(secret),
                algs,
            }]
        };
        KeySet { entries }
    }

    /// Parses a JWKS document. Keys that are malformed, meant for
    /// encryption, or of no allowed algorithm are skipped (one odd key must
    /// not take down the others); the count of skipped keys is returned.
    pub fn from_jwks(doc: &[u8], allowed: &[Algorithm]) -> Result<(KeySet, usize), String> {
        let value: serde_json::Value =
            serde_json::from_slice(doc).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let keys = value
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or("JWKS has no \"keys\" array")?;
        let mut entries = Vec::new();
        let mut skipped = 0;
        for key in keys {
            match serde_json::from_value::<Jwk>(key.clone())
                .ok()
                .and_then(|jwk| entry(&jwk, allowed))
            {
                Some(e) => entries.push(e),
                None => skipped += 1,
            }
        }
        Ok((KeySet { entries }, skipped))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The keys a token with this `kid` and `alg` may be verified with.
    /// A key without a kid matches any token; a token without a kid may be
    /// verified by any key.
    pub fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        if self.entries.is_empty() {
            return Lookup::NoKeys;
        }
        let by_kid: Vec<&KeyEntry> = self
            .entries
            .iter()
            .filter(|e| match (kid, e.kid.as_deref()) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            })
            .collect();
        if by_kid.is_empty() {
            return Lookup::UnknownKid;
        }
        let found: Vec<&KeyEntry> = by_kid
            .into_iter()
            .filter(|e| e.algs.contains(&alg))
            .collect();
        if found.is_empty() {
            Lookup::WrongAlgorithm
        } else {
            Lookup::Found(found)
        }
    }
}

const HMAC: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];
const RSA: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

fn intersect(of_key: &[Algorithm], allowed: &[Algorithm]) -> Vec<Algorithm> {
    of_key
        .iter()
        .copied()
        .filter(|a| allowed.contains(a))
        .collect()
}

fn entry(jwk: &Jwk, allowed: &[Algorithm]) -> Option<KeyEntry> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &RSA,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return None,
        },
        AlgorithmParameters::OctetKey(_) => &HMAC,
        _ => return None,
    };
    let mut algs = intersect(by_type, allowed);
    if let Some(named) = jwk.common.key_algorithm {
        // The JWK names its algorithm: only that one (KeyAlgorithm and
        // Algorithm share their spellings).
        let named: Option<Algorithm> = named.to_string().parse().ok();
        algs.retain(|a| Some(*a) == named);
    }
    if algs.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(KeyEntry {
        kid: jwk.common.key_id.clone(),
        key,
        algs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Algorithm; 12] = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    // A real P-256 and Ed25519 public key (RFC 7515 A.3 and RFC 8037 A.2).
    const JWKS: &str = r#"{"keys": [
        {"kty":"EC","crv":"P-256","kid":"ec1",
         "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
         "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        {"kty":"OKP","crv":"Ed25519","kid":"ed1",
         "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        {"kty":"EC","crv":"P-256","kid":"enc","use":"enc",
         "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
         "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        {"kty":"weird","kid":"w"},
        {"kty":"RSA","kid":"r1","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}
    ]}"#;

    #[test]
    fn keys_carry_the_algorithms_of_their_type() {
        let (set, skipped) = KeySet::from_jwks(JWKS.as_bytes(), &ALL).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(skipped, 2, "the encryption key and the unknown kty");
        assert!(matches!(
            set.lookup(Some("ec1"), Algorithm::ES256),
            Lookup::Found(k) if k.len() == 1
        ));
        assert!(matches!(
            set.lookup(Some("ec1"), Algorithm::ES384),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            set.lookup(Some("ed1"), Algorithm::EdDSA),
            Lookup::Found(_)
        ));
        // The RSA key names RS256: PS256 with it is refused.
        assert!(matches!(
            set.lookup(Some("r1"), Algorithm::RS256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            set.lookup(Some("r1"), Algorithm::PS256),
            Lookup::WrongAlgorithm
        ));
        // An RSA public key is never an HMAC secret.
        assert!(matches!(
            set.lookup(Some("r1"), Algorithm::HS256),
            Lookup::WrongAlgorithm
        ));
        assert!(matches!(
            set.lookup(Some("nope"), Algorithm::ES256),
            Lookup::UnknownKid
        ));
        // No kid: every key of the algorithm is a candidate.
        assert!(matches!(
            set.lookup(None, Algorithm::ES256),
            Lookup::Found(_)
        ));
    }

    #[test]
    fn allowed_algorithms_narrow_the_keys() {
        let (set, skipped) = KeySet::from_jwks(JWKS.as_bytes(), &[Algorithm::ES256]).unwrap();
        assert_eq!((set.len(), skipped), (1, 4));
        assert!(matches!(
            set.lookup(Some("ed1"), Algorithm::EdDSA),
            Lookup::UnknownKid
        ));
    }

    #[test]
    fn bad_documents() {
        assert!(KeySet::from_jwks(b"nope", &ALL).is_err());
        assert!(KeySet::from_jwks(br#"{"keys": 3}"#, &ALL).is_err());
        let (set, _) = KeySet::from_jwks(br#"{"keys": []}"#, &ALL).unwrap();
        assert!(set.is_empty());
        assert!(matches!(set.lookup(None, Algorithm::ES256), Lookup::NoKeys));
    }

    #[test]
    fn secret_serves_hmac_only() {
        let set = KeySet::from_secret(b"s3cr3t", &[Algorithm::HS256, Algorithm::RS256]);
        assert!(matches!(
            set.lookup(Some("any"), Algorithm::HS256),
            Lookup::Found(_)
        ));
        assert!(matches!(
            set.lookup(None, Algorithm::HS384),
            Lookup::WrongAlgorithm
        ));
    }
}
