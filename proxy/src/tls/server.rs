//! TLS termination for a listener: the rustls server config (certificate,
//! ALPN by listener protocol, client certificates verified against
//! `client_ca`), swapped whole when its files change, and the handshake
//! with its timeout, failure counter and the client's verified identity.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use http::{HeaderName, HeaderValue};
use kaname_config::{Listener, ListenerProtocol, ListenerTls};
use prometheus::{Gauge, IntCounter};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::files;
use super::identity::PeerNames;

/// The TLS side of one listener, shared by its connections.
pub struct ServerTls {
    listener: String,
    settings: ListenerTls,
    protocol: ListenerProtocol,
    /// Swapped on rotation; each handshake takes the config of its moment.
    config: ArcSwap<ServerConfig>,
    handshake_timeout: Duration,
    header: HeaderName,
    failures: IntCounter,
    expiry: Gauge,
}

/// What a request needs to know of its connection's TLS session.
#[derive(Debug)]
pub struct ConnTls {
    /// The listener's `identity_header`: removed from every request, then
    /// set from the client certificate when there is one.
    pub header: HeaderName,
    pub identity: Option<HeaderValue>,
    /// Every name of the certificate, for authorize rules' `identities`.
    pub peer: Option<Arc<kaname_filters::context::PeerIdentity>>,
    /// False when the certificate names none of `allowed_identities` (403).
    pub allowed: bool,
}

/// Serves the one certificate of the config it was built into.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A rustls server config from the listener's files; also the notAfter of
/// the served certificate.
fn server_config(
    t: &ListenerTls,
    protocol: ListenerProtocol,
) -> Result<(Arc<ServerConfig>, i64), String> {
    let provider = super::provider();
    let cert = files::cert_and_key(&t.cert, &t.key, &provider).map_err(|problems| {
        problems
            .iter()
            .map(|(_, e)| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &t.client_ca {
        Some(ca) => {
            let roots = files::ca_roots(ca).map_err(|e| e.to_string())?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{ca}: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(Fixed(cert.key)));
    config.alpn_protocols = match protocol {
        ListenerProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        ListenerProtocol::Http1 => vec![b"http/1.1".to_vec()],
        ListenerProtocol::Http2 => vec![b"h2".to_vec()],
    };
    Ok((Arc::new(config), cert.not_after))
}

impl ServerTls {
    /// Loads the listener's TLS files (None without `tls`) and starts
    /// watching them.
    pub fn build(l: &Listener, metrics: &Metrics) -> Result<Option<Arc<ServerTls>>, String> {
        let Some(t) = &l.tls else {
            return Ok(None);
        };
        let (config, not_after) = server_config(t, l.protocol)
            .map_err(|e| format!("listener \"{}\" tls: {e}", l.name))?;
        let header = HeaderName::from_bytes(t.identity_header.as_bytes())
            .map_err(|e| format!("listener \"{}\" tls.identity_header: {e}", l.name))?;
        let expiry = metrics
            .tls_cert_expiry_timestamp_seconds
            .with_label_values(&[&l.name]);
        expiry.set(not_after as f64);
        let tls = Arc::new(ServerTls {
            listener: l.name.clone(),
            settings: t.clone(),
            protocol: l.protocol,
            config: ArcSwap::new(config),
            handshake_timeout: l.header_read_timeout,
            header,
            failures: metrics
                .tls_handshake_failures_total
                .with_label_values(&[&l.name]),
            expiry,
        });
        super::watch::spawn(&tls);
        Ok(Some(tls))
    }

    /// The TLS handshake, bounded by the listener's `header_read_timeout`.
    /// A failure (timeout, bad or missing client certificate) is counted and
    /// logged at debug level; the connection is then dropped.
    pub async fn accept(&self, tcp: TcpStream) -> Option<(TlsStream<TcpStream>, Arc<ConnTls>)> {
        let peer = tcp.peer_addr().ok();
        let acceptor = TlsAcceptor::from(self.config.load_full());
        let stream = match tokio::time::timeout(self.handshake_timeout, acceptor.accept(tcp)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.failures.inc();
                tracing::debug!(listener = %self.listener, ?peer, error = %e, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                self.failures.inc();
                tracing::debug!(listener = %self.listener, ?peer, timeout = ?self.handshake_timeout, "TLS handshake timed out");
                return None;
            }
        };
        let names = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(PeerNames::of);
        let conn = match names {
            Some(n) => ConnTls {
                header: self.header.clone(),
                identity: n.identity().and_then(|i| HeaderValue::from_str(i).ok()),
                allowed: n.allowed_by(&self.settings.allowed_identities),
                peer: Some(Arc::new(kaname_filters::context::PeerIdentity {
                    names: n.uris.iter().chain(&n.dns).cloned().collect(),
                })),
            },
            None => ConnTls {
                header: self.header.clone(),
                identity: None,
                allowed: self.settings.allowed_identities.is_empty(),
                peer: None,
            },
        };
        Some((stream, Arc::new(conn)))
    }
}

impl super::watch::Reload for ServerTls {
    fn files(&self) -> Vec<String> {
        let t = &self.settings;
        let mut f = vec![t.cert.clone(), t.key.clone()];
        f.extend(t.client_ca.clone());
        f
    }

    fn reload(&self) -> Result<(), String> {
        let (config, not_after) = server_config(&self.settings, self.protocol)?;
        self.config.store(config);
        self.expiry.set(not_after as f64);
        Ok(())
    }

    fn describe(&self) -> String {
        format!("listener \"{}\"", self.listener)
    }
}
