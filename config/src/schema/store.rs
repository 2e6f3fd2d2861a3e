//! `stores:`: state shared across replicas, on Redis, named once and used by
//! name (`store: NAME` in a rate_limit filter or a queue).

use schemars::JsonSchema;

use super::values::{choice, scalar, Duration, NonEmpty, Text};
use crate::parse::store::ON_STORE_ERROR;

/// A shared store.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Store {
    /// A Redis (or Redis-protocol) server.
    redis: Redis,
}

/// A Redis server.
#[derive(JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Redis {
    /// `redis://host:6379/0`, `rediss://` for TLS; a password as
    /// `redis://:${REDIS_PASSWORD}@host:6379/0`.
    url: NonEmpty,
    /// One command, at most `10s`; slower is an error. Default `50ms`.
    timeout: Option<Duration>,
    /// Every key kaname writes starts with it. Default `kaname:`.
    key_prefix: Option<Text>,
    /// `rediss://` only: PEM CA certificates the server's certificate must
    /// chain to (a private CA). Default: the system's CA certificates.
    ca_file: Option<NonEmpty>,
}

scalar! {
    /// What a rate limit decides while its store fails: `local` (this
    /// process's own bucket, same settings), `allow` or `deny`.
    OnStoreError = choice(ON_STORE_ERROR);
}
