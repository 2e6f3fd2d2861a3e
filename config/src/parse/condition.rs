//! Conditions, the failures `retry` retries on and `circuit_breaker`
//! counts (`connect_failure`, `5xx`, `503`, `unavailable`, ...): one
//! reading for both filters.

use crate::error::Errors;
use crate::node::Node;
use crate::read;
use crate::suggest::did_you_mean;
use crate::types::Condition;

/// gRPC status names, lower case, by code.
pub const GRPC_CODES: &[&str] = &[
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

const NAMED: &[&str] = &["connect_failure", "reset", "timeout", "5xx"];

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
        let hint = did_you_mean(&text, NAMED.iter().chain(GRPC_CODES).copied());
        errs.at(
            node.mark,
            format!("expected a condition: connect_failure, reset, timeout, 5xx, an HTTP status or a gRPC status name, found {text:?}{hint}"),
        );
    }
    found
}
