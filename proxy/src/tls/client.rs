//! TLS origination to an upstream: trust anchors from `ca` (Mozilla's
//! roots without it), a client certificate with `cert` + `key` (mutual TLS
//! to a peer sidecar), the SNI and verified name `server_name`, ALPN `h2`
//! for `protocol: http2`. The config is swapped when its files change.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use hyper_rustls::{ConfigBuilderExt, MaybeHttpsStream};
use hyper_util::rt::TokioIo;
use kaname_config::{Upstream, UpstreamProtocol, UpstreamTls};
use kaname_filters::BoxError;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::files;

/// The connector of kaname's own calls out (a JWKS, an OTLP/HTTP
/// collector): http:// or https:// against `roots` (Mozilla's without),
/// HTTP/1.1 or HTTP/2 by ALPN.
pub fn web_connector(
    roots: Option<rustls::RootCertStore>,
    connect_timeout: Duration,
) -> Result<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    rustls::Error,
> {
    let builder = ClientConfig::builder_with_provider(super::provider())
        .with_safe_default_protocol_versions()?;
    let tls = match roots {
        Some(roots) => builder.with_root_certificates(roots),
        None => builder.with_webpki_roots(),
    }
    .with_no_client_auth();
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

/// The TLS side of one upstream, shared by its connection pool.
pub struct ClientTls {
    upstream: String,
    settings: UpstreamTls,
    protocol: UpstreamProtocol,
    config: ArcSwap<ClientConfig>,
    /// `server_name`, or the endpoints' one host name; None: the address.
    server_name: Option<ServerName<'static>>,
    handshake_timeout: Duration,
}

/// Presents the one client certificate of the config it was built into.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesClientCert for Fixed {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn client_config(t: &UpstreamTls, protocol: UpstreamProtocol) -> Result<Arc<ClientConfig>, String> {
    let provider = super::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &t.ca {
        Some(ca) => builder.with_root_certificates(files::ca_roots(ca).map_err(|e| e.to_string())?),
        None => builder.with_webpki_roots(),
    };
    let mut config = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            let loaded = files::cert_and_key(cert, key, &provider).map_err(|problems| {
                problems
                    .iter()
                    .map(|(_, e)| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
            builder.with_client_cert_resolver(Arc::new(Fixed(loaded.key)))
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match protocol {
        UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
        UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
    };
    Ok(Arc::new(config))
}

impl ClientTls {
    /// Loads the upstream's TLS files (None without `tls`) and starts
    /// watching them.
    pub fn build(u: &Upstream) -> Result<Option<Arc<ClientTls>>, String> {
        let Some(t) = &u.tls else {
            return Ok(None);
        };
        let config = client_config(t, u.protocol)
            .map_err(|e| format!("upstream \"{}\" tls: {e}", u.name))?;
        // The pool connects to resolved addresses, so the name to verify
        // cannot come from the URI unless the endpoints are addresses.
        let mut hosts: Vec<&str> = u.endpoints.iter().map(|e| e.host.as_str()).collect();
        hosts.sort_unstable();
        hosts.dedup();
        let name = match (&t.server_name, hosts.as_slice()) {
            (Some(n), _) => Some(n.clone()),
            (None, [one]) => Some((*one).to_owned()),
            _ => None,
        };
        let server_name = name
            .map(|n| {
                ServerName::try_from(n.clone())
                    .map_err(|e| format!("upstream \"{}\" tls.server_name {n:?}: {e}", u.name))
            })
            .transpose()?;
        let tls = Arc::new(ClientTls {
            upstream: u.name.clone(),
            settings: t.clone(),
            protocol: u.protocol,
            config: ArcSwap::new(config),
            server_name,
            handshake_timeout: u.connect_timeout,
        });
        super::watch::spawn(&tls);
        Ok(Some(tls))
    }

    /// The handshake over a connected socket, bounded by `connect_timeout`.
    pub async fn connect(
        &self,
        uri: &Uri,
        tcp: TokioIo<TcpStream>,
    ) -> Result<MaybeHttpsStream<TokioIo<TcpStream>>, BoxError> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => {
                let host = uri.host().unwrap_or_default();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                ServerName::try_from(host.to_owned())?
            }
        };
        let connector = TlsConnector::from(self.config.load_full());
        let stream = tokio::time::timeout(
            self.handshake_timeout,
            connector.connect(name, TokioIo::new(tcp)),
        )
        .await
        .map_err(|_| {
            format!(
                "TLS handshake with upstream \"{}\" timed out",
                self.upstream
            )
        })??;
        Ok(MaybeHttpsStream::Https(TokioIo::new(stream)))
    }
}

impl super::watch::Reload for ClientTls {
    fn files(&self) -> Vec<String> {
        let t = &self.settings;
        [&t.ca, &t.cert, &t.key]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    fn reload(&self) -> Result<(), String> {
        self.config
            .store(client_config(&self.settings, self.protocol)?);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("upstream \"{}\"", self.upstream)
    }
}
