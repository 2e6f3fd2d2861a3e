//! Conditions, the failures `retry` retries on and `circuit_breaker`
//! counts (`connect_failure`, `5xx`, `503`, `unavailable`, ...): one
//! reading for both filters.

use crate::error::Errors;
use crate::node::Node;
use crate::read;
use crate::suggest::did_you_mean;
use crate::types::Condition;

pub use crate::GRPC_CODE_NAMES as GRPC_CODES;

pub(crate) const NAMED: &[&str] = &["connect_failure", "reset", "timeout", "5xx"];

pub fn conditions(node: &Node, errs: &mut Errors) -> Option<Vec<Condition>> {
    let items = read::list(node, errs)?;
    Some(items.iter().filter_map(|n| condition(n, errs)).collect())
}

fn condition(node: &Node, errs: &mut Errors) -> Option<Condition> {
    let text = read::string(node, errs)?;
    let found = match text.as_str() {
        "connect_failure" => Some(Condition::ConnectFailure),
        "reset" => Some(Condition::Reset),
        "timeout" => Some(Condition::Timeout),
        "5xx" => Some(Condition::Status5xx),
        t => match t.parse::<u16>() {
            Ok(code) if (100..=599).contains(&code) => Some(Condition::Status(code)),
            Ok(_) => None,
            Err(_) => GRPC_CODES
                .iter()
                .position(|c| *c == t)
                .and_then(|i| u32::try_from(i).ok())
                .map(Condition::Grpc),
        },
    };
    if found.is_none() {
        let hint = did_you_mean(&text, NAMED.iter().chain(GRPC_CODES.iter()).copied());
        errs.at(
            node.mark,
            format!("expected a condition: connect_failure, reset, timeout, 5xx, an HTTP status or a gRPC status name, found {text:?}{hint}"),
        );
    }
    found
}
