//! tracing set-up: json or text on stderr; RUST_LOG wins over the config.
//! `log.level` is reloadable (a reload handle on the filter); the format is
//! chosen once, at start.

use std::sync::OnceLock;

use kaname_config::{Log, LogFormat};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// Set when the level comes from the config (not RUST_LOG) and may change.
static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// `log.level` as a filter. The access log has its own target, always on at
/// info: the routes' `access_log` flag decides, so a reload can turn it on
/// or off and `level: warn` keeps it.
fn filter_of(level: &str) -> EnvFilter {
    let filter = EnvFilter::new(level);
    match "kaname::access=info".parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    }
}

pub fn init(log: &Log) {
    let (filter, from_config) = match EnvFilter::try_from_default_env() {
        Ok(f) => (f, false),
        Err(_) => (filter_of(&log.level), true),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match log.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr)
                    .with_ansi(ansi),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr).with_ansi(ansi))
            .try_init(),
    };
    if installed.is_ok() && from_config {
        let _ = LEVEL.set(handle);
    }
}

/// Applies a reloaded `log.level` (no-op when RUST_LOG set the level).
pub fn set_level(level: &str) {
    if let Some(h) = LEVEL.get() {
        if let Err(e) = h.reload(filter_of(level)) {
            tracing::warn!(error = %e, "log level not changed");
        }
    }
}
