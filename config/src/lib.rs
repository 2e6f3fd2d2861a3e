//! kaname's configuration: one YAML file, read into the typed [`Config`].
//!
//! Every error names the file, line and column; all errors are found in one
//! pass. The YAML is read into a tree that keeps positions ([`node`]), `${VAR}`
//! is substituted ([`env`]), each section is read by its own module
//! ([`parse`]), then names and addresses are checked across sections
//! ([`validate`]).
#![forbid(unsafe_code)]

pub mod authorize;
pub mod queue;
pub mod store;

/// gRPC status names by code, lower case, as `retry_on` and `failure_on`
/// take them (`unavailable` is 14). The one table: the parser, `/config`
/// and the proxy's metric labels (upper case) read it.
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];
mod env;
mod error;
mod locate;
mod node;
mod parse;
mod read;
mod redact;
mod redact_queue;
mod redact_store;
mod schema;
mod suggest;
pub mod types;
mod units;
mod validate;
mod words;

pub use error::{ConfigError, ConfigErrors, Limit};
pub use locate::locate;
pub use node::{MAX_DEPTH, MAX_EXPANDED_BYTES, MAX_EXPANSION_FACTOR};
pub use redact::{duration as duration_words, priority_word, redact_url, size as size_words};
pub use schema::schema_json;
pub use types::*;
pub use words::{ConfigWords, Words};

use error::Errors;

/// The filter kinds the proxy implements: every kind the config language
/// knows ([`FilterKindName::NAMES`]). A kind known but left out of this list
/// would be an error (`filter kind "X" is not supported yet`).
pub const SUPPORTED_FILTER_KINDS: &[&str] = FilterKindName::NAMES;

/// Reads and validates a file. `file` is used as given in error messages.
pub fn load(file: &str) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(file) {
        Ok(text) => parse(file, &text),
        Err(e) => {
            let reason = e.to_string();
            let reason = match reason.find(" (os error") {
                Some(i) => &reason[..i],
                None => &reason,
            };
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                " (name the config file with -c FILE or $KANAME_CONFIG)"
            } else {
                ""
            };
            Err(ConfigErrors(vec![ConfigError {
                file: file.to_string(),
                line: 0,
                column: 0,
                message: format!("cannot read {file}: {reason}{hint}"),
                limit: None,
            }]))
        }
    }
}

/// Parses and validates YAML text; `file` names it in errors. Uses the
/// process environment for `${VAR}`.
pub fn parse(file: &str, text: &str) -> Result<Config, ConfigErrors> {
    parse_with_env(file, text, &|name| std::env::var(name).ok())
}

/// Same with an explicit environment lookup (for tests).
pub fn parse_with_env(
    file: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut errs = Errors::new(file);
    let mut root = match node::load(text) {
        Ok(root) => root,
        Err(e) => {
            match e.limit {
                Some(limit) => errs.limit(e.mark, e.message, limit),
                None => errs.at(e.mark, e.message),
            }
            return Err(errs.finish());
        }
    };
    env::substitute(&mut root, env, &mut errs);
    let (mut cfg, marks) = parse::config(file, &root, &mut errs);
    validate::cross_check(&cfg, &marks, &mut errs);
    if !errs.is_empty() {
        return Err(errs.finish());
    }
    cfg.redacted_yaml = redact::redacted_yaml(&cfg, &root);
    cfg.words = words::words(&cfg, &root);
    Ok(cfg)
}

/// Non-fatal remarks on a valid config, one line each (no position), e.g.
/// a route that can receive gRPC sent to an http1 upstream.
pub fn warnings(cfg: &Config) -> Vec<String> {
    validate::warnings(cfg)
}

#[cfg(test)]
mod limits_tests;
#[cfg(test)]
mod tests;
