//! A whole sidecar in-process: what `kaname run` starts, from a config
//! string, on the caller's tokio runtime. For tests (paused clocks, no
//! process to spawn) and for embedding.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kaname::app::StartError> {
//! let sidecar = kaname::Sidecar::start(
//!     "admin: { listen: 127.0.0.1:0 }
//! listeners:
//!   main:
//!     listen: 127.0.0.1:0
//!     routes: [{ match: { path_prefix: / }, upstream: app }]
//! upstreams:
//!   app: { endpoints: [127.0.0.1:8080] }
//! ",
//! )
//! .await?;
//! let addr = sidecar.addrs().await.listeners["main"];
//! # let _ = addr;
//! sidecar.shutdown().await;
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;

use crate::app::{App, StartError};

pub use crate::app::BoundAddrs;

/// A running sidecar; dropped, its listeners keep serving until the
/// runtime ends, so call [`Sidecar::shutdown`] to drain it.
pub struct Sidecar {
    app: Arc<App>,
}

impl Sidecar {
    /// Parses, validates and starts `yaml` (named `<inline>` in errors).
    /// `listen: 127.0.0.1:0` binds a free port; [`Sidecar::addrs`] says
    /// which. A reload reads no file, so `POST /reload` fails.
    pub async fn start(yaml: &str) -> Result<Sidecar, StartError> {
        let config = kaname_config::parse("<inline>", yaml).map_err(|errors| {
            StartError::Config(
                errors
                    .0
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })?;
        let app = App::start("<inline>".into(), config, None).await?;
        Ok(Sidecar { app })
    }

    /// The bound addresses of the admin port and of every listener.
    pub async fn addrs(&self) -> BoundAddrs {
        self.app.addresses().await
    }

    /// `/ready` turns 503, listeners stop, requests in flight finish
    /// within `shutdown_grace`.
    pub async fn shutdown(self) {
        self.app.shutdown().await;
    }
}
