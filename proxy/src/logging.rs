//! tracing set-up: json or text on stderr; RUST_LOG wins over the config.

use kaname_config::{Log, LogFormat};
use tracing_subscriber::EnvFilter;

pub fn init(log: &Log) {
    let mut filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    if !log.access_log {
        if let Ok(d) = "kaname::access=off".parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
