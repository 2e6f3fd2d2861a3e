//! tracing set-up: json or text on stderr; RUST_LOG wins over the config.

use kaname_config::{Log, LogFormat};
use tracing_subscriber::EnvFilter;

pub fn init(log: &Log) {
    // The access log has its own target, on whatever `level` says: the
    // routes' `access_log` flag decides, so a reload can turn it on or off.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let filter = EnvFilter::new(&log.level);
        match "kaname::access=info".parse() {
            Ok(d) => filter.add_directive(d),
            Err(_) => filter,
        }
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
