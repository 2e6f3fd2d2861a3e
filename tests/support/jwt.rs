//! Keys, tokens and a JWKS server for the jwt tests. Every key is generated
//! here with aws-lc-rs (the same backend kaname uses); tokens are signed
//! with jsonwebtoken, or forged by hand for the attacks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::AsDer;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::net::{accept_each, bind_loopback, ClosedPort};

/// Every algorithm kaname accepts.
pub const ALL_ALGORITHMS: [Algorithm; 12] = [
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

pub fn alg_name(alg: Algorithm) -> String {
    format!("{alg:?}")
}

/// A signing key and its public JWK.
pub struct TestKey {
    pub alg: Algorithm,
    pub kid: String,
    pub encoding: EncodingKey,
    /// The public JWK (with `kid` and `alg`); for HS* the secret as `oct`.
    pub jwk: Value,
    /// RSA only: the public key as SubjectPublicKeyInfo DER (for the
    /// key-confusion attack).
    pub public_der: Option<Vec<u8>>,
}

impl TestKey {
    /// A fresh key for `alg` (RSA 2048 bits).
    pub fn generate(alg: Algorithm, kid: &str) -> TestKey {
        let mut public_der = None;
        let encoding = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                // 64 bytes: long enough for HS512 (RFC 7518 §3.2).
                let mut secret = [0u8; 64];
                aws_lc_rs::rand::fill(&mut secret).expect("random secret");
                EncodingKey::from_secret(&secret)
            }
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => {
                use aws_lc_rs::signature::KeyPair as _;
                let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .expect("generate RSA key");
                let pkcs8 = kp.as_der().expect("RSA PKCS#8");
                public_der = Some(
                    kp.public_key()
                        .as_der()
                        .expect("RSA SPKI")
                        .as_ref()
                        .to_vec(),
                );
                EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes())
                    .expect("RSA encoding key")
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                let signing = if alg == Algorithm::ES256 {
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING
                } else {
                    &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING
                };
                let kp =
                    aws_lc_rs::signature::EcdsaKeyPair::generate(signing).expect("generate EC key");
                EncodingKey::from_ec_der(kp.to_pkcs8v1().expect("EC PKCS#8").as_ref())
            }
            _ => {
                // EdDSA (Algorithm is non-exhaustive).
                let kp =
                    aws_lc_rs::signature::Ed25519KeyPair::generate().expect("generate Ed25519 key");
                EncodingKey::from_ed_der(kp.to_pkcs8v1().expect("Ed25519 PKCS#8").as_ref())
            }
        };
        let mut jwk: Jwk = Jwk::from_encoding_key(&encoding, alg).expect("JWK from key");
        jwk.common.key_id = Some(kid.to_string());
        TestKey {
            alg,
            kid: kid.to_string(),
            encoding,
            jwk: serde_json::to_value(&jwk).expect("JWK to JSON"),
            public_der,
        }
    }

    /// For HS* keys: the secret, as a `secret:` config value would give it.
    pub fn secret(&self) -> String {
        let k = self.jwk["k"].as_str().expect("oct key");
        String::from_utf8(URL_SAFE_NO_PAD.decode(k).expect("b64")).unwrap_or_default()
    }

    /// A token with `alg` and `kid` in its header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.clone());
        self.sign_with(h, claims)
    }

    pub fn sign_with(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign token")
    }
}

/// An HMAC key over printable text, so it can sit in a YAML `secret:`.
pub fn text_secret_key(alg: Algorithm, secret: &str) -> TestKey {
    let encoding = EncodingKey::from_secret(secret.as_bytes());
    TestKey {
        alg,
        kid: "hs".into(),
        encoding,
        jwk: json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(secret)}),
        public_der: None,
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("ascii"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// `{"keys": [...]}` of these keys' public JWKs.
pub fn jwks(keys: &[&TestKey]) -> String {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

pub fn b64(data: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// A token assembled by hand: header and payload JSON, and a signature
/// segment as given.
pub fn forge(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string()),
        b64(claims.to_string()),
        signature
    )
}

/// An HS256 token whose "secret" is `secret` (the key-confusion attack
/// signs with an RSA public key's bytes).
pub fn hs256_with_secret(kid: &str, claims: &Value, secret: &[u8]) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.to_string());
    jsonwebtoken::encode(&h, claims, &EncodingKey::from_secret(secret)).expect("sign")
}

/// A JWKS server on loopback: serves the current document at `/jwks`,
/// counts fetches, and can be stopped (connections close after each
/// answer, so a stopped server really is down).
pub struct JwksServer {
    pub addr: SocketAddr,
    doc: Arc<Mutex<String>>,
    fetches: Arc<AtomicUsize>,
    task: Option<JoinHandle<()>>,
    /// The port, held without listening once stopped.
    held: Option<ClosedPort>,
}

impl JwksServer {
    pub async fn start(doc: &str) -> JwksServer {
        Self::serve(bind_loopback("JWKS").await, doc)
    }

    /// Starts on `port`, where connections were refused until now.
    pub fn start_on(port: ClosedPort, doc: &str) -> JwksServer {
        Self::serve(port.listen(), doc)
    }

    fn serve(listener: TcpListener, doc: &str) -> JwksServer {
        let addr = listener.local_addr().expect("JWKS addr");
        let doc = Arc::new(Mutex::new(doc.to_string()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (d, f) = (doc.clone(), fetches.clone());
        let task = accept_each(listener, move |stream| {
            let (d, f) = (d.clone(), f.clone());
            async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let body = d.lock().expect("lock").clone();
                    if req.uri().path() == "/jwks" {
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .header("connection", "close")
                                .body(Full::new(Bytes::from(body)))
                                .expect("response"),
                        )
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            }
        });
        JwksServer {
            addr,
            doc,
            fetches,
            task: Some(task),
            held: None,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/jwks", self.addr)
    }

    pub fn set(&self, doc: &str) {
        *self.doc.lock().expect("lock") = doc.to_string();
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Stops accepting. The port stays held, not listening: connections
    /// to it are refused, and no other server can take it.
    pub async fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
            self.held = Some(ClosedPort::at(self.addr));
        }
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}
