//! TLS on rustls with the aws-lc-rs provider only (never ring: with both
//! compiled in, rustls cannot pick a process default and panics).
//!
//! - [`server`]: termination on a listener, mutual TLS, client identities;
//! - [`client`]: origination to an upstream, with a client certificate;
//! - [`files`]: reading and checking the PEM files (`kaname check`);
//! - [`identity`]: URI and DNS SANs of a client certificate;
//! - [`watch`]: rotation, by polling the files.

pub mod client;
pub mod files;
pub mod identity;
pub mod io;
pub mod server;
pub mod watch;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// The one crypto provider, chosen explicitly for every config.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
