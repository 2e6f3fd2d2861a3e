//! The asynchronous hand-off (async.md): routes with `queue:` store the
//! request and answer 202; each queue delivers its jobs to the route's
//! upstream later.

pub mod job;
pub mod local;
pub mod store;
