//! TLS for the end-to-end tests: a test CA made with rcgen that issues
//! server and client certificates (written as PEM files), and a client that
//! makes one TLS connection per request so each test sees its handshake:
//! the certificate served, the ALPN protocol, or the failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::client::{error_chain, Body, TestResponse};

/// A certificate authority for one test.
pub struct TestCa {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate and its key, as PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A (year, month, day) date.
pub type Ymd = (i32, u8, u8);

/// What a leaf is issued for.
pub struct LeafSpec<'a> {
    pub dns: &'a [&'a str],
    pub uris: &'a [&'a str],
    /// Valid from/to these (year, month, day); None: rcgen's default (1975 to 4096).
    pub validity: Option<(Ymd, Ymd)>,
    /// Issued with CA:FALSE (the default is no basicConstraints at all).
    pub not_ca: bool,
}

impl Default for LeafSpec<'_> {
    fn default() -> Self {
        LeafSpec {
            dns: &["localhost"],
            uris: &[],
            validity: None,
            not_ca: true,
        }
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        TestCa {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `localhost` (server and client use).
    pub fn leaf(&self) -> Leaf {
        self.issue(&LeafSpec::default())
    }

    /// A client leaf with one URI SAN (a SPIFFE ID).
    pub fn client(&self, uri: &str) -> Leaf {
        self.issue(&LeafSpec {
            dns: &[],
            uris: &[uri],
            ..LeafSpec::default()
        })
    }

    pub fn issue(&self, spec: &LeafSpec<'_>) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(spec.dns.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        for u in spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI((*u).try_into().expect("URI SAN")));
        }
        params.distinguished_name.push(
            DnType::CommonName,
            spec.dns
                .first()
                .or(spec.uris.first())
                .copied()
                .unwrap_or("leaf"),
        );
        params.is_ca = if spec.not_ca {
            IsCa::ExplicitNoCa
        } else {
            IsCa::NoCa
        };
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // None: rcgen's default, valid from 1975 to 4096.
        if let Some(((y1, m1, d1), (y2, m2, d2))) = spec.validity {
            params.not_before = rcgen::date_time_ymd(y1, m1, d1);
            params.not_after = rcgen::date_time_ymd(y2, m2, d2);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Leaf {
    /// Writes `NAME.crt` and `NAME.key` in `dir`; returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        write_atomic(&cert, &self.cert_pem);
        write_atomic(&key, &self.key_pem);
        (cert, key)
    }

    pub fn cert_der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("leaf PEM")
    }
}

/// Writes by rename, as cert-manager and editors do, so a reader never
/// sees half a file.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// A rustls client config trusting `ca_pem`, presenting `client` if given,
/// offering `alpn` (aws-lc-rs, chosen explicitly).
pub fn client_config(ca_pem: &str, client: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("add CA");
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots);
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(
                vec![leaf.cert_der()],
                PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("key PEM"),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// As `client_config` without a client certificate, offering TLS 1.2 only.
pub fn client_config_tls12(ca_pem: &str, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("add CA");
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .expect("TLS 1.2")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A response over TLS and what the handshake showed.
#[derive(Debug)]
pub struct TlsResponse {
    pub response: TestResponse,
    /// The leaf certificate the server served.
    pub served: CertificateDer<'static>,
    pub alpn: Option<Vec<u8>>,
    /// The TLS version the handshake agreed on.
    pub tls_version: Option<rustls::ProtocolVersion>,
}

/// One request on a new TLS connection to `addr` (SNI `localhost`); h2
/// when the server picked it by ALPN, else HTTP/1.1. Err: the handshake or
/// the exchange failed (a server that refuses the client certificate after
/// a TLS 1.3 handshake shows up here as a failed exchange).
pub async fn send_tls(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    req: Request<Body>,
) -> Result<TlsResponse, String> {
    let fut = async move {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from("localhost").expect("server name");
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (_, session) = tls.get_ref();
        let served = session
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or("no server certificate")?;
        let alpn = session.alpn_protocol().map(|p| p.to_vec());
        let tls_version = session.protocol_version();
        let io = TokioIo::new(tls);
        let res = if alpn.as_deref() == Some(b"h2") {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(|e| format!("h2 handshake: {}", error_chain(&e)))?;
            tokio::spawn(conn);
            sender.send_request(req).await
        } else {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("h1 handshake: {}", error_chain(&e)))?;
            tokio::spawn(conn);
            sender.send_request(req).await
        }
        .map_err(|e| format!("exchange: {}", error_chain(&e)))?;
        let (parts, body) = res.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("body: {}", error_chain(&e)))?
            .to_bytes();
        Ok(TlsResponse {
            response: TestResponse {
                status: parts.status,
                version: parts.version,
                headers: parts.headers,
                body,
            },
            served,
            alpn,
            tls_version,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "no response within 10s".to_string())?
}
