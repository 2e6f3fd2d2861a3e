//! kaname (要), a sidecar proxy, as a library: the binary (`main.rs`) is
//! its command line; a test can start a whole sidecar in-process
//! ([`Sidecar`]) and get its bound addresses back.
//!
//! `docs/architecture.md` walks one request through the modules.
#![forbid(unsafe_code)]

mod admin;
pub mod app;
pub mod chain;
pub mod cli;
mod conn;
pub mod demo;
pub mod devtools;
mod drain;
pub mod explain;
pub mod fd_budget;
pub mod forward;
mod grpc_codes;
mod grpc_deadline;
mod h1_guard;
mod h2_guard;
mod headers;
mod jwks;
pub mod listener;
pub mod logging;
pub mod metrics;
mod normalize;
pub mod otel;
pub mod pipeline;
mod policy;
pub mod queue;
pub mod request_metrics;
mod request_model;
pub mod router;
pub mod serve;
mod sidecar;
pub mod store;
pub mod tls;
mod tunnel;
pub mod upstream;
mod watch;

pub use sidecar::{BoundAddrs, Sidecar};

/// Exit codes of the contract.
pub const EXIT_INVALID_CONFIG: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_RUNTIME: u8 = 3;
