//! `kaname keys`: a key pair for the jwt filter. The private key goes to
//! `DIR/KID.pem` (PKCS#8 PEM, mode 0600, never overwritten); the public key
//! is added to `DIR/jwks.json` as a JWK, so a second run with another kid
//! is a key rotation: the filter trusts both until the old one is removed.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{Map, Value};

use super::alg::{Alg, KeyKind};
use super::signing::{public_jwk, PrivateKey};
use crate::{EXIT_RUNTIME, EXIT_USAGE};

/// `kaname keys --alg ALG --kid KID --out DIR`.
#[derive(clap::Args, Debug)]
pub struct KeysArgs {
    /// RS256 (RSA 2048), ES256 (P-256), ES384 (P-384) or EdDSA (Ed25519);
    /// RS384/512 and PS256/384/512 make an RSA key too.
    #[arg(long, value_name = "ALG")]
    pub alg: String,
    /// The key id: names the file (KID.pem) and the JWK's `kid`, which a
    /// token's header names (`kaname token --kid KID`).
    #[arg(long, value_name = "KID")]
    pub kid: String,
    /// The directory for KID.pem and jwks.json (created if absent).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// Why no key pair was made. Nothing is written when one of these is
/// returned (a private key written just before a failing jwks.json write
/// is removed again).
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("unknown algorithm {0:?}; one of: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA")]
    UnknownAlg(String),
    #[error("{0} signs with a shared secret, there is no key pair to make: give the jwt filter `secret: ${{VAR}}` and sign with `kaname token --secret-env VAR`")]
    Hmac(Alg),
    #[error("invalid --kid {0:?}: use letters, digits, '.', '_' and '-', not starting with '.' (it names the file KID.pem)")]
    BadKid(String),
    #[error("{0} exists; kaname keys never overwrites a private key (choose another --kid)")]
    PemExists(PathBuf),
    #[error("{path} already has a key with kid {kid:?} (choose another --kid)")]
    DuplicateKid { path: PathBuf, kid: String },
    #[error("{path} is not a JWKS document ({reason}); expected {{\"keys\": [...]}}")]
    BadJwks { path: PathBuf, reason: String },
    #[error("cannot {what} {path}: {}", super::io_reason(.source))]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key generation failed")]
    Generate,
}

impl KeysError {
    pub fn exit_code(&self) -> u8 {
        match self {
            KeysError::Io { .. } | KeysError::Generate => EXIT_RUNTIME,
            _ => EXIT_USAGE,
        }
    }
}

/// What one run did.
#[derive(Debug)]
pub struct Made {
    pub alg: Alg,
    pub pem_path: PathBuf,
    pub jwks_path: PathBuf,
    /// Every kid of jwks.json after the run, in file order.
    pub kids: Vec<String>,
}

/// Runs `kaname keys` and prints what it wrote, or the error.
pub fn main(args: &KeysArgs) -> ExitCode {
    match make(args) {
        Ok(made) => {
            let kid = &args.kid;
            println!(
                "wrote {} ({} private key, PKCS#8 PEM, mode 0600)",
                made.pem_path.display(),
                made.alg
            );
            println!(
                "added kid {kid:?} to {} (kids: {})",
                made.jwks_path.display(),
                made.kids.join(", ")
            );
            println!(
                "sign a token with it: kaname token --key {} --kid {kid} --alg {}",
                made.pem_path.display(),
                made.alg
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kaname keys: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Makes the key pair: `DIR/KID.pem` and a JWK added to `DIR/jwks.json`.
pub fn make(args: &KeysArgs) -> Result<Made, KeysError> {
    let alg = Alg::from_name(&args.alg).ok_or_else(|| KeysError::UnknownAlg(args.alg.clone()))?;
    if alg.is_hmac() {
        return Err(KeysError::Hmac(alg));
    }
    let kid = args.kid.as_str();
    if !valid_kid(kid) {
        return Err(KeysError::BadKid(kid.to_string()));
    }
    let dir = &args.out;
    fs::create_dir_all(dir).map_err(|source| KeysError::Io {
        what: "create the directory",
        path: dir.clone(),
        source,
    })?;
    let pem_path = dir.join(format!("{kid}.pem"));
    let jwks_path = dir.join("jwks.json");
    let mut keys = read_jwks(&jwks_path)?;
    if keys
        .iter()
        .any(|k| k.get("kid").and_then(Value::as_str) == Some(kid))
    {
        return Err(KeysError::DuplicateKid {
            path: jwks_path,
            kid: kid.to_string(),
        });
    }
    if pem_path.exists() {
        return Err(KeysError::PemExists(pem_path));
    }

    let generated = generate(alg.key_kind())?;
    let mut jwk = public_jwk(&generated.key);
    jwk.insert("kid".into(), kid.into());
    jwk.insert("alg".into(), alg.name().into());
    jwk.insert("use".into(), "sig".into());
    keys.push(Value::Object(jwk));

    write_private(&pem_path, generated.pem.as_bytes())?;
    if let Err(e) = write_jwks(&jwks_path, &keys) {
        // No private key without its public half in the set.
        let _ = fs::remove_file(&pem_path);
        return Err(e);
    }
    let kids = keys
        .iter()
        .map(|k| {
            k.get("kid")
                .and_then(Value::as_str)
                .unwrap_or("-")
                .to_string()
        })
        .collect();
    Ok(Made {
        alg,
        pem_path,
        jwks_path,
        kids,
    })
}

/// Letters, digits, `.`, `_`, `-`; not empty, not starting with `.`, at
/// most 64: safe as a file name and in a header.
fn valid_kid(kid: &str) -> bool {
    !kid.is_empty()
        && kid.len() <= 64
        && !kid.starts_with('.')
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The `keys` of an existing jwks.json; none when the file is absent.
fn read_jwks(path: &Path) -> Result<Vec<Value>, KeysError> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(KeysError::Io {
                what: "read",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let bad = |reason: String| KeysError::BadJwks {
        path: path.to_path_buf(),
        reason,
    };
    let doc: Value = serde_json::from_slice(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    match doc.get("keys") {
        Some(Value::Array(keys)) => Ok(keys.clone()),
        _ => Err(bad("no \"keys\" array".into())),
    }
}

/// Created, never replaced, readable by its owner only.
fn write_private(path: &Path, pem: &[u8]) -> Result<(), KeysError> {
    let io = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeysError::PemExists(path.to_path_buf())
        } else {
            KeysError::Io {
                what: "write",
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(pem)
        .and_then(|()| file.sync_all())
        .map_err(io)
}

/// Written whole under another name, then renamed over jwks.json: a
/// sidecar re-reading the file sees the old set or the new one, never half.
fn write_jwks(path: &Path, keys: &[Value]) -> Result<(), KeysError> {
    let mut doc = Map::new();
    doc.insert("keys".into(), Value::Array(keys.to_vec()));
    let mut text =
        serde_json::to_string_pretty(&Value::Object(doc)).map_err(|e| KeysError::Io {
            what: "serialise",
            path: path.to_path_buf(),
            source: e.into(),
        })?;
    text.push('\n');
    let tmp = path.with_file_name(format!(".jwks.json.{}.tmp", std::process::id()));
    let io = |what, source| KeysError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    fs::write(&tmp, text).map_err(|e| io("write", e))?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io("replace", e)
    })
}

/// A new private key and its PKCS#8 PEM.
pub struct Generated {
    pub key: PrivateKey,
    pub pem: String,
}

/// A new key of `kind` (RSA: 2048 bits). The PEM is read back to give the
/// key, so the JWK is made from exactly what the file holds.
pub fn generate(kind: KeyKind) -> Result<Generated, KeysError> {
    let pkcs8: Vec<u8> = match kind {
        KeyKind::Rsa => {
            let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|_| KeysError::Generate)?;
            kp.as_der()
                .map_err(|_| KeysError::Generate)?
                .as_ref()
                .to_vec()
        }
        KeyKind::EcP256 | KeyKind::EcP384 => {
            let alg = if kind == KeyKind::EcP256 {
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING
            };
            let kp = EcdsaKeyPair::generate(alg).map_err(|_| KeysError::Generate)?;
            kp.to_pkcs8v1()
                .map_err(|_| KeysError::Generate)?
                .as_ref()
                .to_vec()
        }
        KeyKind::Ed25519 => {
            // PKCS#8 v1, as `openssl genpkey -algorithm ed25519` writes.
            let kp = Ed25519KeyPair::generate().map_err(|_| KeysError::Generate)?;
            kp.to_pkcs8v1()
                .map_err(|_| KeysError::Generate)?
                .as_ref()
                .to_vec()
        }
        KeyKind::Secret { .. } => return Err(KeysError::Generate),
    };
    let pem = pem("PRIVATE KEY", &pkcs8);
    let key = PrivateKey::from_pem(pem.as_bytes()).map_err(|_| KeysError::Generate)?;
    Ok(Generated { key, pem })
}

/// RFC 7468 text: base64 in lines of 64 between BEGIN and END lines.
pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 is ASCII: each chunk is a str.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn args(alg: &str, kid: &str, out: &Path) -> KeysArgs {
        KeysArgs {
            alg: alg.into(),
            kid: kid.into(),
            out: out.to_path_buf(),
        }
    }

    fn jwks(dir: &Path) -> Vec<Value> {
        let text = fs::read_to_string(dir.join("jwks.json")).expect("jwks.json");
        serde_json::from_str::<Value>(&text).expect("JSON")["keys"]
            .as_array()
            .expect("keys")
            .clone()
    }

    #[test]
    fn a_second_run_adds_a_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("keys");
        let first = make(&args("RS256", "k1", &out)).expect("first");
        assert_eq!(first.kids, ["k1"]);
        let second = make(&args("eddsa", "k2", &out)).expect("second");
        assert_eq!(second.alg, Alg::EdDSA);
        assert_eq!(second.kids, ["k1", "k2"]);
        let keys = jwks(&out);
        assert_eq!(keys[0]["kty"], "RSA");
        assert_eq!(keys[0]["alg"], "RS256");
        assert_eq!(keys[0]["use"], "sig");
        assert_eq!(keys[1]["kty"], "OKP");
        assert_eq!(keys[1]["kid"], "k2");
        for kid in ["k1", "k2"] {
            let meta = fs::metadata(out.join(format!("{kid}.pem"))).expect("pem");
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{kid}.pem");
        }
        // The JWK is the public half of the file's key.
        let pem = fs::read(out.join("k2.pem")).expect("pem");
        let key = PrivateKey::from_pem(&pem).expect("key");
        assert_eq!(public_jwk(&key)["x"], keys[1]["x"]);
    }

    #[test]
    fn refuses_a_duplicate_kid_and_an_existing_pem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path();
        make(&args("ES256", "a", out)).expect("first");
        let before = fs::read(out.join("jwks.json")).expect("jwks");
        let pem_before = fs::read(out.join("a.pem")).expect("pem");
        let e = make(&args("ES256", "a", out)).expect_err("duplicate");
        assert!(matches!(e, KeysError::DuplicateKid { .. }), "{e}");
        assert_eq!(e.exit_code(), EXIT_USAGE);
        // A PEM without a JWK (a kid removed from the set by hand) is kept too.
        fs::write(out.join("b.pem"), "keep me").expect("write");
        let e = make(&args("ES256", "b", out)).expect_err("pem exists");
        assert!(matches!(e, KeysError::PemExists(_)), "{e}");
        assert_eq!(fs::read(out.join("jwks.json")).expect("jwks"), before);
        assert_eq!(fs::read(out.join("a.pem")).expect("pem"), pem_before);
        assert_eq!(
            fs::read_to_string(out.join("b.pem")).expect("pem"),
            "keep me"
        );
    }

    #[test]
    fn refuses_bad_arguments_and_a_broken_jwks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path();
        assert!(matches!(
            make(&args("HS256", "a", out)),
            Err(KeysError::Hmac(Alg::HS256))
        ));
        assert!(matches!(
            make(&args("ES512", "a", out)),
            Err(KeysError::UnknownAlg(_))
        ));
        for kid in ["", "../x", ".hidden", "a b", "a/b"] {
            assert!(
                matches!(make(&args("ES256", kid, out)), Err(KeysError::BadKid(_))),
                "{kid:?}"
            );
        }
        fs::write(out.join("jwks.json"), r#"{"kys": []}"#).expect("write");
        let e = make(&args("ES256", "a", out)).expect_err("bad jwks");
        assert!(e.to_string().contains("no \"keys\" array"), "{e}");
        assert!(!out.join("a.pem").exists(), "nothing written");
    }

    #[test]
    fn pem_lines_are_64_characters() {
        let text = pem("PRIVATE KEY", &[7u8; 100]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "-----BEGIN PRIVATE KEY-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines.last().copied(), Some("-----END PRIVATE KEY-----"));
    }
}
