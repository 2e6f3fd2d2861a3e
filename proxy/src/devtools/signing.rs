//! Signing keys and the JWS compact form (RFC 7515 §7.1), with aws-lc-rs.
//!
//! Tokens are signed here with aws-lc-rs directly, not with jsonwebtoken:
//! kaname's jwt filter verifies with jsonwebtoken, so a token from
//! `kaname token` meets a second implementation on its way in.

use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use aws_lc_rs::{hmac, rand::SystemRandom, rsa};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use serde_json::{Map, Value};

use super::alg::{Alg, KeyKind};

/// A private key read from a PEM file, of one of the kinds kaname verifies.
pub enum PrivateKey {
    Rsa(rsa::KeyPair),
    /// Parsed for the curve's fixed-size (r‖s) signatures JWS uses.
    Ec(EcdsaKeyPair, KeyKind),
    Ed25519(Ed25519KeyPair),
}

/// Why a PEM file gives no usable private key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("holds no unencrypted private key (PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\"): {0}")]
    NoKey(String),
    #[error("holds a private key that is not RSA, EC P-256, EC P-384 or Ed25519, or is malformed")]
    Unsupported,
    #[error("holds an RSA key kaname cannot sign with ({}); it takes 2048 to 8192 bits", words(.0))]
    BadRsa(&'static str),
}

impl PrivateKey {
    /// The first private key of a PEM document: PKCS#8 (`PRIVATE KEY`),
    /// PKCS#1 (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`).
    pub fn from_pem(pem: &[u8]) -> Result<PrivateKey, KeyFileError> {
        let der =
            PrivateKeyDer::from_pem_slice(pem).map_err(|e| KeyFileError::NoKey(e.to_string()))?;
        match der {
            PrivateKeyDer::Pkcs1(d) => rsa::KeyPair::from_der(d.secret_pkcs1_der())
                .map(PrivateKey::Rsa)
                .map_err(|e| KeyFileError::BadRsa(e.description_())),
            PrivateKeyDer::Sec1(d) => {
                Self::ec(d.secret_sec1_der(), EcdsaKeyPair::from_private_key_der)
            }
            PrivateKeyDer::Pkcs8(d) => {
                let der = d.secret_pkcs8_der();
                if let Ok(k) = Ed25519KeyPair::from_pkcs8(der) {
                    return Ok(PrivateKey::Ed25519(k));
                }
                if let Ok(k) = Self::ec(der, EcdsaKeyPair::from_pkcs8) {
                    return Ok(k);
                }
                match rsa::KeyPair::from_pkcs8(der) {
                    Ok(k) => Ok(PrivateKey::Rsa(k)),
                    // An RSA key aws-lc refuses (too small) says so; any
                    // other failure is a key of another kind.
                    Err(e) if is_rsa_pkcs8(der) => Err(KeyFileError::BadRsa(e.description_())),
                    Err(_) => Err(KeyFileError::Unsupported),
                }
            }
            _ => Err(KeyFileError::Unsupported),
        }
    }

    /// An EC key on P-256 or P-384, read by `parse`.
    fn ec<E>(
        der: &[u8],
        parse: fn(&'static signature::EcdsaSigningAlgorithm, &[u8]) -> Result<EcdsaKeyPair, E>,
    ) -> Result<PrivateKey, KeyFileError> {
        let curves = [
            (&signature::ECDSA_P256_SHA256_FIXED_SIGNING, KeyKind::EcP256),
            (&signature::ECDSA_P384_SHA384_FIXED_SIGNING, KeyKind::EcP384),
        ];
        curves
            .into_iter()
            .find_map(|(alg, kind)| parse(alg, der).ok().map(|k| PrivateKey::Ec(k, kind)))
            .ok_or(KeyFileError::Unsupported)
    }

    pub fn kind(&self) -> KeyKind {
        match self {
            PrivateKey::Rsa(_) => KeyKind::Rsa,
            PrivateKey::Ec(_, kind) => *kind,
            PrivateKey::Ed25519(_) => KeyKind::Ed25519,
        }
    }
}

/// aws-lc's reasons are CamelCase (`TooSmall`): as words, `too small`.
fn words(reason: &str) -> String {
    let mut out = String::new();
    for c in reason.chars() {
        if c.is_ascii_uppercase() && !out.is_empty() {
            out.push(' ');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The rsaEncryption OID (1.2.840.113549.1.1.1) as DER, which a PKCS#8
/// RSA key carries in its AlgorithmIdentifier.
fn is_rsa_pkcs8(der: &[u8]) -> bool {
    const RSA_OID: [u8; 11] = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    der.windows(RSA_OID.len()).take(32).any(|w| w == RSA_OID)
}

/// What signs a token: an HMAC secret or a private key.
pub enum Signer {
    /// Boxed: aws-lc's HMAC key is over a kilobyte.
    Secret(Box<hmac::Key>),
    Key(PrivateKey),
}

impl Signer {
    /// An HMAC key for `alg` (HS256/384/512); other algorithms give None.
    pub fn secret(alg: Alg, secret: &[u8]) -> Option<Signer> {
        let h = match alg {
            Alg::HS256 => hmac::HMAC_SHA256,
            Alg::HS384 => hmac::HMAC_SHA384,
            Alg::HS512 => hmac::HMAC_SHA512,
            _ => return None,
        };
        Some(Signer::Secret(Box::new(hmac::Key::new(h, secret))))
    }

    /// The signature of `msg` with `alg`. None when `alg` does not fit the
    /// key (the caller checks that first) or the backend fails.
    fn sign(&self, alg: Alg, msg: &[u8]) -> Option<Vec<u8>> {
        let rng = SystemRandom::new();
        match (self, alg) {
            (Signer::Secret(key), Alg::HS256 | Alg::HS384 | Alg::HS512) => {
                Some(hmac::sign(key, msg).as_ref().to_vec())
            }
            (Signer::Key(PrivateKey::Rsa(key)), _) => {
                let padding: &'static dyn signature::RsaEncoding = match alg {
                    Alg::RS256 => &signature::RSA_PKCS1_SHA256,
                    Alg::RS384 => &signature::RSA_PKCS1_SHA384,
                    Alg::RS512 => &signature::RSA_PKCS1_SHA512,
                    Alg::PS256 => &signature::RSA_PSS_SHA256,
                    Alg::PS384 => &signature::RSA_PSS_SHA384,
                    Alg::PS512 => &signature::RSA_PSS_SHA512,
                    _ => return None,
                };
                let mut sig = vec![0; key.public_modulus_len()];
                key.sign(padding, &rng, msg, &mut sig).ok()?;
                Some(sig)
            }
            (Signer::Key(PrivateKey::Ec(key, kind)), _) if alg.key_kind() == *kind => {
                Some(key.sign(&rng, msg).ok()?.as_ref().to_vec())
            }
            (Signer::Key(PrivateKey::Ed25519(key)), Alg::EdDSA) => {
                Some(key.sign(msg).as_ref().to_vec())
            }
            _ => None,
        }
    }
}

/// `header.payload.signature`, each part base64url without padding; the
/// header is `{"alg": alg, "typ": "JWT"}` plus `kid` when given.
pub fn compact(
    alg: Alg,
    kid: Option<&str>,
    claims: &Map<String, Value>,
    signer: &Signer,
) -> Option<String> {
    let mut header = Map::new();
    header.insert("alg".into(), alg.name().into());
    header.insert("typ".into(), "JWT".into());
    if let Some(kid) = kid {
        header.insert("kid".into(), kid.into());
    }
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(Value::Object(header).to_string()),
        URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string())
    );
    let sig = signer.sign(alg, signing_input.as_bytes())?;
    Some(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// The public key of `key` as a JWK's key members: `kty` and `n`,`e` /
/// `crv`,`x`,`y` / `crv`,`x` (RFC 7518 §6, RFC 8037 §2).
pub fn public_jwk(key: &PrivateKey) -> Map<String, Value> {
    let b64 = |b: &[u8]| Value::String(URL_SAFE_NO_PAD.encode(b));
    let mut jwk = Map::new();
    match key {
        PrivateKey::Rsa(k) => {
            let public = k.public_key();
            jwk.insert("kty".into(), "RSA".into());
            jwk.insert(
                "n".into(),
                b64(public.modulus().big_endian_without_leading_zero()),
            );
            jwk.insert(
                "e".into(),
                b64(public.exponent().big_endian_without_leading_zero()),
            );
        }
        PrivateKey::Ec(k, kind) => {
            // SEC1 uncompressed point: 0x04 ‖ x ‖ y.
            let point = k.public_key().as_ref();
            let coords = point.get(1..).unwrap_or_default();
            let (x, y) = coords.split_at(coords.len() / 2);
            let crv = if *kind == KeyKind::EcP384 {
                "P-384"
            } else {
                "P-256"
            };
            jwk.insert("kty".into(), "EC".into());
            jwk.insert("crv".into(), crv.into());
            jwk.insert("x".into(), b64(x));
            jwk.insert("y".into(), b64(y));
        }
        PrivateKey::Ed25519(k) => {
            jwk.insert("kty".into(), "OKP".into());
            jwk.insert("crv".into(), "Ed25519".into());
            jwk.insert("x".into(), b64(k.public_key().as_ref()));
        }
    }
    jwk
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    /// A key of `kind` as a PKCS#8 PEM document.
    pub(crate) fn pem_of(kind: KeyKind) -> String {
        crate::devtools::keys::generate(kind)
            .map(|g| g.pem)
            .expect("generate")
    }

    /// Verifies `token` with jsonwebtoken and `jwk`: what kaname's filter does.
    fn verify(token: &str, alg: Alg, jwk: &Map<String, Value>) -> Map<String, Value> {
        let jwk: Jwk = serde_json::from_value(Value::Object(jwk.clone())).expect("JWK");
        let key = DecodingKey::from_jwk(&jwk).expect("decoding key");
        let mut v = Validation::new(alg.name().parse::<Algorithm>().expect("alg"));
        v.required_spec_claims.clear();
        v.validate_exp = false;
        jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v)
            .expect("verifies")
            .claims
    }

    fn claims() -> Map<String, Value> {
        let mut c = Map::new();
        c.insert("sub".into(), "alice".into());
        c.insert("roles".into(), serde_json::json!(["a", "b"]));
        c
    }

    #[test]
    fn every_asymmetric_algorithm_signs_what_jsonwebtoken_verifies() {
        let rsa = PrivateKey::from_pem(pem_of(KeyKind::Rsa).as_bytes()).expect("rsa");
        let rsa_jwk = public_jwk(&rsa);
        let rsa = Signer::Key(rsa);
        for alg in [
            Alg::RS256,
            Alg::RS384,
            Alg::RS512,
            Alg::PS256,
            Alg::PS384,
            Alg::PS512,
        ] {
            let token = compact(alg, Some("k"), &claims(), &rsa).expect("sign");
            assert_eq!(verify(&token, alg, &rsa_jwk), claims(), "{alg}");
        }
        for (kind, alg) in [
            (KeyKind::EcP256, Alg::ES256),
            (KeyKind::EcP384, Alg::ES384),
            (KeyKind::Ed25519, Alg::EdDSA),
        ] {
            let key = PrivateKey::from_pem(pem_of(kind).as_bytes()).expect("key");
            assert_eq!(key.kind(), kind);
            let jwk = public_jwk(&key);
            let token = compact(alg, None, &claims(), &Signer::Key(key)).expect("sign");
            assert_eq!(verify(&token, alg, &jwk), claims(), "{alg}");
        }
    }

    #[test]
    fn hmac_tokens_verify_and_carry_the_header() {
        let secret = b"a-secret-of-at-least-sixty-four-bytes-for-hs512-0123456789abcdef";
        for alg in [Alg::HS256, Alg::HS384, Alg::HS512] {
            let signer = Signer::secret(alg, secret).expect("hmac");
            let token = compact(alg, Some("kid-1"), &claims(), &signer).expect("sign");
            let header = jsonwebtoken::decode_header(&token).expect("header");
            assert_eq!(header.kid.as_deref(), Some("kid-1"));
            assert_eq!(header.typ.as_deref(), Some("JWT"));
            let mut v = Validation::new(alg.name().parse().expect("alg"));
            v.required_spec_claims.clear();
            v.validate_exp = false;
            let key = DecodingKey::from_secret(secret);
            assert!(
                jsonwebtoken::decode::<Value>(&token, &key, &v).is_ok(),
                "{alg}"
            );
            let wrong = DecodingKey::from_secret(b"another secret");
            assert!(jsonwebtoken::decode::<Value>(&token, &wrong, &v).is_err());
        }
        assert!(Signer::secret(Alg::RS256, secret).is_none());
    }

    #[test]
    fn a_key_signs_only_its_own_algorithms() {
        let ec = Signer::Key(PrivateKey::from_pem(pem_of(KeyKind::EcP256).as_bytes()).expect("ec"));
        assert!(compact(Alg::ES384, None, &claims(), &ec).is_none());
        assert!(compact(Alg::RS256, None, &claims(), &ec).is_none());
        let hs = Signer::secret(Alg::HS256, b"x").expect("hmac");
        assert!(compact(Alg::EdDSA, None, &claims(), &hs).is_none());
    }

    #[test]
    fn pkcs1_and_sec1_pem_are_read_too() {
        // PKCS#1 "RSA PRIVATE KEY" and SEC1 "EC PRIVATE KEY": the forms
        // `openssl genrsa -traditional` and `openssl ecparam -genkey` write.
        let ec = EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).expect("ec");
        let sec1 = ec.private_key().as_der().expect("sec1");
        let pem = crate::devtools::keys::pem("EC PRIVATE KEY", sec1.as_ref());
        let key = PrivateKey::from_pem(pem.as_bytes()).expect("sec1 key");
        assert_eq!(key.kind(), KeyKind::EcP384);
        assert_eq!(public_jwk(&key)["crv"], "P-384");
    }

    #[test]
    fn files_without_a_usable_key_say_why() {
        let err = |pem: &str| PrivateKey::from_pem(pem.as_bytes()).err().expect("refused");
        assert!(matches!(err("not a pem"), KeyFileError::NoKey(_)));
        let cert_only = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(err(cert_only), KeyFileError::NoKey(_)));
        let junk = crate::devtools::keys::pem("PRIVATE KEY", b"\x30\x03\x02\x01\x00");
        assert_eq!(err(&junk), KeyFileError::Unsupported);
        assert!(err(&junk).to_string().contains("not RSA, EC P-256"));
    }

    #[test]
    fn reasons_read_as_words() {
        assert_eq!(
            KeyFileError::BadRsa("TooSmall").to_string(),
            "holds an RSA key kaname cannot sign with (too small); it takes 2048 to 8192 bits"
        );
    }

    #[test]
    fn public_jwk_members() {
        let ed = PrivateKey::from_pem(pem_of(KeyKind::Ed25519).as_bytes()).expect("ed");
        let jwk = public_jwk(&ed);
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        // 32 bytes: 43 base64url characters.
        assert_eq!(jwk["x"].as_str().map(str::len), Some(43));
        let ec = PrivateKey::from_pem(pem_of(KeyKind::EcP256).as_bytes()).expect("ec");
        let jwk = public_jwk(&ec);
        assert_eq!(
            (jwk["kty"].as_str(), jwk["crv"].as_str()),
            (Some("EC"), Some("P-256"))
        );
        assert_eq!(jwk["x"].as_str().map(str::len), Some(43));
        assert_eq!(jwk["y"].as_str().map(str::len), Some(43));
        let rsa = PrivateKey::from_pem(pem_of(KeyKind::Rsa).as_bytes()).expect("rsa");
        let jwk = public_jwk(&rsa);
        assert_eq!(jwk["e"], "AQAB");
        // 2048 bits = 256 bytes: 342 base64url characters.
        assert_eq!(jwk["n"].as_str().map(str::len), Some(342));
    }
}
