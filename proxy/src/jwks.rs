//! Fetching JWKS documents for jwt filters: from a file, or with a GET over
//! HTTP or HTTPS. (The jwt filter itself never touches files or sockets;
//! it retries, backs off and keeps the last good keys.)
//!
//! HTTPS uses rustls with the aws-lc-rs provider named explicitly (never
//! ring, see rust-stack.md trap 1) and the Mozilla roots of webpki-roots.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kaname_config::JwksSource;
use kaname_filters::JwksFetcher;
use rustls::RootCertStore;

use crate::forward::error_chain;

/// A JWKS document larger than this is refused (real ones are a few KiB).
const MAX_JWKS_BYTES: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Fetch<'a> = Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send + 'a>>;

/// Every `jwks.file` of a jwt filter, read and parsed as the filter would:
/// unreadable, not a JWKS, or without a key for the filter's algorithms.
pub fn check_files(cfg: &kaname_config::Config) -> Vec<crate::tls::files::Problem> {
    use crate::tls::files::{FileError, Problem};
    let mut out = Vec::new();
    for f in &cfg.filters {
        let kaname_config::FilterKind::Jwt(j) = &f.kind else {
            continue;
        };
        let Some(JwksSource::File(path)) = &j.jwks else {
            continue;
        };
        let problem = match crate::tls::files::read(path) {
            Err(e) => Some(e.problem),
            Ok(doc) => {
                let allowed: Vec<jsonwebtoken::Algorithm> =
                    j.algorithms.iter().filter_map(|a| a.parse().ok()).collect();
                match kaname_filters::jwt::keys::KeySet::from_jwks(&doc, &allowed) {
                    Err(e) => Some(format!("not a usable JWKS: {e}")),
                    Ok((keys, _)) if keys.is_empty() => Some(format!(
                        "no key in it for the filter's algorithms [{}]",
                        j.algorithms.join(", ")
                    )),
                    Ok(_) => None,
                }
            }
        };
        if let Some(problem) = problem {
            out.push(Problem {
                key_path: vec![
                    "filters".into(),
                    f.name.clone(),
                    "jwt".into(),
                    "jwks".into(),
                    "file".into(),
                ],
                place: format!("jwt filter \"{}\" jwks.file", f.name),
                error: FileError::new(path, problem),
            });
        }
    }
    out
}

pub fn fetcher(source: &JwksSource) -> Arc<dyn JwksFetcher> {
    match source {
        JwksSource::File(path) => Arc::new(FileFetcher(path.clone())),
        JwksSource::Url { url, .. } => match HttpFetcher::new(url, None) {
            Ok(f) => Arc::new(f),
            Err(e) => Arc::new(BrokenFetcher(e)),
        },
    }
}

struct FileFetcher(String);

impl JwksFetcher for FileFetcher {
    fn fetch(&self) -> Fetch<'_> {
        Box::pin(async move {
            tokio::fs::read(&self.0)
                .await
                .map(Bytes::from)
                .map_err(|e| format!("cannot read JWKS file {}: {e}", self.0))
        })
    }
}

/// GET over HTTP or HTTPS, with a pooled client.
pub struct HttpFetcher {
    url: Uri,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl HttpFetcher {
    /// `roots`: trust these instead of the Mozilla roots (tests).
    pub fn new(url: &str, roots: Option<RootCertStore>) -> Result<Self, String> {
        let url: Uri = url
            .parse()
            .map_err(|e| format!("invalid JWKS URL {url}: {e}"))?;
        let connector = crate::tls::client::web_connector(roots, CONNECT_TIMEOUT)
            .map_err(|e| format!("TLS setup for JWKS: {e}"))?;
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(HttpFetcher { url, client })
    }

    async fn get(&self) -> Result<Bytes, String> {
        let req = Request::get(self.url.clone())
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, "kaname")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let res = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("GET {}: {}", self.url, error_chain(&e)))?;
        if res.status() != StatusCode::OK {
            return Err(format!("GET {}: status {}", self.url, res.status()));
        }
        let body = Limited::new(res.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| format!("GET {}: reading the body: {e}", self.url))?;
        Ok(body.to_bytes())
    }
}

impl JwksFetcher for HttpFetcher {
    fn fetch(&self) -> Fetch<'_> {
        Box::pin(self.get())
    }
}

/// A URL that could not even be set up: every fetch fails with why.
struct BrokenFetcher(String);

impl JwksFetcher for BrokenFetcher {
    fn fetch(&self) -> Fetch<'_> {
        let e = self.0.clone();
        Box::pin(async move { Err(e) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use hyper_util::server::conn::auto;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::net::TcpListener;

    const DOC: &str = r#"{"keys":[]}"#;

    /// A CA and a leaf for `localhost`, generated here.
    fn ca_and_leaf() -> (
        CertificateDer<'static>,
        CertificateDer<'static>,
        PrivateKeyDer<'static>,
    ) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        (ca_cert.der().clone(), leaf.der().clone(), key)
    }

    /// Serves `DOC` over HTTPS (or plain HTTP without a cert) on loopback.
    async fn serve(tls: Option<(CertificateDer<'static>, PrivateKeyDer<'static>)>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let acceptor = tls.map(|(cert, key)| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let cfg = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![cert], key)
                .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
        });
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let status = if req.uri().path() == "/jwks" {
                            200
                        } else {
                            404
                        };
                        let mut res =
                            http::Response::new(Full::new(Bytes::from_static(DOC.as_bytes())));
                        *res.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(res)
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(a) => {
                            if let Ok(tls) = a.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                            }
                        }
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn https_with_a_trusted_ca() {
        let (ca, leaf, key) = ca_and_leaf();
        let port = serve(Some((leaf, key))).await;
        let mut roots = RootCertStore::empty();
        roots.add(ca).unwrap();
        let f = HttpFetcher::new(&format!("https://localhost:{port}/jwks"), Some(roots)).unwrap();
        assert_eq!(f.fetch().await.unwrap(), DOC.as_bytes());
        let missing = HttpFetcher::new(
            &format!("https://localhost:{port}/nope"),
            Some({
                let mut r = RootCertStore::empty();
                r.add(ca_and_leaf().0).unwrap();
                r
            }),
        )
        .unwrap();
        // Another CA: the handshake must fail.
        let err = missing.fetch().await.unwrap_err();
        assert!(err.to_lowercase().contains("certificate"), "{err}");
    }

    #[tokio::test]
    async fn https_with_public_roots_refuses_a_private_ca() {
        let (_, leaf, key) = ca_and_leaf();
        let port = serve(Some((leaf, key))).await;
        let f = fetcher(&JwksSource::Url {
            url: format!("https://localhost:{port}/jwks"),
            refresh: Duration::from_secs(60),
        });
        let err = f.fetch().await.unwrap_err();
        assert!(
            err.contains("UnknownIssuer") || err.contains("certificate"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn http_and_status() {
        let port = serve(None).await;
        let ok = HttpFetcher::new(&format!("http://127.0.0.1:{port}/jwks"), None).unwrap();
        assert_eq!(ok.fetch().await.unwrap(), DOC.as_bytes());
        let nf = HttpFetcher::new(&format!("http://127.0.0.1:{port}/other"), None).unwrap();
        assert!(nf.fetch().await.unwrap_err().contains("404"));
    }

    #[tokio::test]
    async fn file_and_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, DOC).unwrap();
        let f = fetcher(&JwksSource::File(path.display().to_string()));
        assert_eq!(f.fetch().await.unwrap(), DOC.as_bytes());
        let f = fetcher(&JwksSource::File("/nonexistent/jwks.json".into()));
        assert!(f.fetch().await.unwrap_err().contains("cannot read"));
    }
}
