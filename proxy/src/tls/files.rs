//! Reading certificate, key and CA files, with one precise message per
//! problem: a file that is missing or unreadable, holds no PEM of the right
//! kind, a key that does not match its certificate, an expired certificate,
//! a CA that is not a CA. `kaname check`, start-up and reload all go
//! through [`check`], so they agree on what is wrong.

use std::sync::Arc;

use kaname_config::Config;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

/// A problem with one file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct FileError {
    pub path: String,
    pub problem: String,
}

impl FileError {
    pub(crate) fn new(path: &str, problem: impl Into<String>) -> Self {
        FileError {
            path: path.to_owned(),
            problem: problem.into(),
        }
    }
}

/// Which key of a `tls` section a certificate/key problem belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsKey {
    Cert,
    Key,
}

/// A problem and the `tls` key naming the file.
pub type Problems = Vec<(TlsKey, FileError)>;

/// A served or presented certificate, its key, and its notAfter (unix time).
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub not_after: i64,
}

pub(crate) fn read(path: &str) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|e| {
        let text = e.to_string();
        // "No such file or directory (os error 2)": the number says nothing more.
        let text = text.split(" (os error").next().unwrap_or(&text);
        FileError::new(path, format!("cannot read the file: {text}"))
    })
}

/// Every PEM certificate in the file, at least one.
pub fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FileError::new(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(FileError::new(
            path,
            "no certificate in the file (expected PEM \"BEGIN CERTIFICATE\")",
        ));
    }
    Ok(certs)
}

/// The private key of the file (PKCS#8, PKCS#1 or SEC1 PEM).
pub fn private_key(path: &str) -> Result<PrivateKeyDer<'static>, FileError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => FileError::new(
            path,
            "no private key in the file (expected PEM \"BEGIN PRIVATE KEY\")",
        ),
        e => FileError::new(path, format!("bad PEM: {e}")),
    })
}

/// Runs `f` on the parsed certificate; its error becomes the file's problem.
fn with_x509<T>(
    path: &str,
    der: &CertificateDer<'_>,
    f: impl FnOnce(&X509Certificate<'_>) -> Result<T, String>,
) -> Result<T, FileError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| FileError::new(path, format!("not a valid X.509 certificate: {e}")))?;
    f(&cert).map_err(|p| FileError::new(path, p))
}

/// Refuses a certificate outside its validity period; returns its notAfter.
fn in_validity(cert: &X509Certificate<'_>, what: &str) -> Result<i64, String> {
    let v = cert.validity();
    let now = unix_now() as i64;
    if v.not_after.timestamp() < now {
        return Err(format!("{what} expired on {}", v.not_after));
    }
    if v.not_before.timestamp() > now {
        return Err(format!("{what} is not valid before {}", v.not_before));
    }
    Ok(v.not_after.timestamp())
}

fn is_ca(cert: &X509Certificate<'_>) -> Option<bool> {
    match cert.basic_constraints() {
        Ok(Some(bc)) => Some(bc.value.ca),
        _ => None,
    }
}

/// A certificate chain (leaf first) and the key it was issued for.
pub fn cert_and_key(
    cert_path: &str,
    key_path: &str,
    provider: &CryptoProvider,
) -> Result<LoadedCert, Problems> {
    let mut problems = Problems::new();
    let chain = certs(cert_path).and_then(|chain| {
        let not_after = with_x509(cert_path, &chain[0], |c| {
            if is_ca(c) == Some(true) {
                // rustls refuses it as a leaf (CaUsedAsEndEntity), so say it here.
                return Err("is a CA certificate (basicConstraints CA:TRUE); serve a leaf certificate signed by the CA".into());
            }
            in_validity(c, "certificate")
        })?;
        Ok((chain, not_after))
    });
    let key = private_key(key_path).and_then(|k| {
        provider
            .key_provider
            .load_private_key(k)
            .map_err(|e| FileError::new(key_path, format!("unusable private key: {e}")))
    });
    let (chain, not_after, key) = match (chain, key) {
        (Ok((chain, not_after)), Ok(key)) => (chain, not_after, key),
        (chain, key) => {
            if let Err(e) = chain {
                problems.push((TlsKey::Cert, e));
            }
            if let Err(e) = key {
                problems.push((TlsKey::Key, e));
            }
            return Err(problems);
        }
    };
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) => Ok(LoadedCert {
            key: Arc::new(certified),
            not_after,
        }),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => Err(vec![(
            TlsKey::Key,
            FileError::new(
                key_path,
                format!("the key does not match the certificate {cert_path}"),
            ),
        )]),
        Err(e) => Err(vec![(
            TlsKey::Key,
            FileError::new(
                key_path,
                format!("cannot check the key against {cert_path}: {e}"),
            ),
        )]),
    }
}

/// Trust anchors from a CA file: every certificate in it must be a CA
/// (basicConstraints CA:TRUE) and within its validity period.
pub fn ca_roots(path: &str) -> Result<RootCertStore, FileError> {
    let mut roots = RootCertStore::empty();
    for der in certs(path)? {
        with_x509(path, &der, |c| {
            let subject = c.subject().to_string();
            match is_ca(c) {
                Some(true) => {}
                Some(false) => {
                    return Err(format!(
                        "certificate \"{subject}\" is not a CA (basicConstraints CA:FALSE)"
                    ))
                }
                None => {
                    return Err(format!(
                        "certificate \"{subject}\" is not a CA (no basicConstraints extension)"
                    ))
                }
            }
            in_validity(c, &format!("CA certificate \"{subject}\"")).map(|_| ())
        })?;
        roots
            .add(der)
            .map_err(|e| FileError::new(path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// One problem of a config's TLS or JWKS files, with where the config
/// names it.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Keys from the root of the YAML file to the key naming the file.
    pub key_path: Vec<String>,
    /// `listener "in" tls.cert`.
    pub place: String,
    pub error: FileError,
}

/// Loads every TLS and JWKS file the config names, as the running proxy
/// would: a file that is missing or does not parse is an error of `check`,
/// of start and of reload, not a 401 on every request later.
pub fn check(cfg: &Config) -> Vec<Problem> {
    let mut out = check_tls(cfg);
    out.extend(crate::jwks::check_files(cfg));
    out.extend(check_store_cas(cfg));
    out
}

/// Each TLS store's `ca_file`, read as the store's client will read it.
fn check_store_cas(cfg: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    for s in &cfg.stores {
        let Some(ca) = &s.redis.ca_file else { continue };
        if let Err(error) = ca_roots(ca) {
            out.push(Problem {
                key_path: vec![
                    "stores".into(),
                    s.name.clone(),
                    "redis".into(),
                    "ca_file".into(),
                ],
                place: format!("store \"{}\" redis.ca_file", s.name),
                error,
            });
        }
    }
    out
}

fn check_tls(cfg: &Config) -> Vec<Problem> {
    let provider = super::provider();
    let mut out = Vec::new();
    let mut push = |section: &str, name: &str, key: &str, error: FileError| {
        let what = if section == "listeners" {
            "listener"
        } else {
            "upstream"
        };
        out.push(Problem {
            key_path: vec![section.into(), name.into(), "tls".into(), key.into()],
            place: format!("{what} \"{name}\" tls.{key}"),
            error,
        });
    };
    for l in &cfg.listeners {
        let Some(t) = &l.tls else { continue };
        if let Err(problems) = cert_and_key(&t.cert, &t.key, &provider) {
            for (k, e) in problems {
                push("listeners", &l.name, key_name(k), e);
            }
        }
        if let Some(ca) = &t.client_ca {
            if let Err(e) = ca_roots(ca) {
                push("listeners", &l.name, "client_ca", e);
            }
        }
    }
    for u in &cfg.upstreams {
        let Some(t) = &u.tls else { continue };
        if let (Some(c), Some(k)) = (&t.cert, &t.key) {
            if let Err(problems) = cert_and_key(c, k, &provider) {
                for (k, e) in problems {
                    push("upstreams", &u.name, key_name(k), e);
                }
            }
        }
        if let Some(ca) = &t.ca {
            if let Err(e) = ca_roots(ca) {
                push("upstreams", &u.name, "ca", e);
            }
        }
    }
    out
}

fn key_name(k: TlsKey) -> &'static str {
    match k {
        TlsKey::Cert => "cert",
        TlsKey::Key => "key",
    }
}

/// `FILE:LINE:COL: listener "in" tls.cert: /path: problem`, one per problem;
/// the position is that of the key in the file (0:0 if it cannot be found).
pub fn report(cfg: &Config, problems: &[Problem]) -> Vec<String> {
    let text = std::fs::read_to_string(&cfg.file).unwrap_or_default();
    problems
        .iter()
        .map(|p| {
            let path: Vec<&str> = p.key_path.iter().map(String::as_str).collect();
            let (line, col) = kaname_config::locate(&text, &path).unwrap_or((0, 0));
            format!("{}:{line}:{col}: {}: {}", cfg.file, p.place, p.error)
        })
        .collect()
}

/// [`check`] then [`report`].
pub fn check_report(cfg: &Config) -> Vec<String> {
    report(cfg, &check(cfg))
}

/// Seconds since the Unix epoch, now (0 if the clock is before it).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
