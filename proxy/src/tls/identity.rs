//! The identity of a verified client certificate: its URI SANs (SPIFFE IDs)
//! and DNS SANs, checked against a listener's `allowed_identities`.

use rustls::pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

/// The names a client certificate vouches for, URI SANs first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerNames {
    pub uris: Vec<String>,
    pub dns: Vec<String>,
}

impl PeerNames {
    /// The SANs of `cert` (already verified by rustls; only read here).
    pub fn of(cert: &CertificateDer<'_>) -> PeerNames {
        let mut names = PeerNames::default();
        let Ok((_, x509)) = X509Certificate::from_der(cert) else {
            return names;
        };
        if let Ok(Some(san)) = x509.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::URI(u) => names.uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => names.dns.push((*d).to_owned()),
                    _ => {}
                }
            }
        }
        names
    }

    /// The identity sent upstream: the first URI SAN, else the first DNS SAN.
    pub fn identity(&self) -> Option<&str> {
        self.uris.first().or(self.dns.first()).map(String::as_str)
    }

    /// True when `allowed` is empty (any client of the CA) or names one of
    /// the certificate's URI or DNS SANs (exact, case-sensitive match).
    pub fn allowed_by(&self, allowed: &[String]) -> bool {
        allowed.is_empty()
            || self
                .uris
                .iter()
                .chain(&self.dns)
                .any(|n| allowed.iter().any(|a| a == n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(sans: &[rcgen::SanType]) -> CertificateDer<'static> {
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans.to_vec();
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    #[test]
    fn uri_sans_come_first_and_any_san_may_be_allowed() {
        let der = cert(&[
            rcgen::SanType::DnsName("web.shop.svc".try_into().expect("dns")),
            rcgen::SanType::URI(
                "spiffe://cluster.local/ns/shop/sa/web"
                    .try_into()
                    .expect("uri"),
            ),
        ]);
        let names = PeerNames::of(&der);
        assert_eq!(
            names.identity(),
            Some("spiffe://cluster.local/ns/shop/sa/web")
        );
        assert!(names.allowed_by(&["web.shop.svc".into()]));
        assert!(names.allowed_by(&[]));
        assert!(!names.allowed_by(&["spiffe://cluster.local/ns/shop/sa/other".into()]));
    }

    #[test]
    fn dns_only_certificate() {
        let names = PeerNames::of(&cert(&[rcgen::SanType::DnsName(
            "b.example".try_into().expect("dns"),
        )]));
        assert_eq!(names.identity(), Some("b.example"));
    }
}
