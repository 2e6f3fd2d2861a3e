//! Shared stores (stores.md): state that several sidecars share, on Redis.

use std::time::Duration;

/// A `stores:` entry.
#[derive(Clone, PartialEq)]
pub struct Store {
    pub name: String,
    pub redis: Redis,
}

/// `redis:` of a store: where it is and how long one command may take.
#[derive(Clone, PartialEq)]
pub struct Redis {
    /// As written (after `${VAR}` substitution): `redis://[user:pass@]host[:port][/db]`
    /// or `rediss://` for TLS. Holds the password: never printed whole.
    pub url: String,
    /// `rediss://`.
    pub tls: bool,
    pub host: String,
    /// Default 6379.
    pub port: u16,
    /// Default 0.
    pub db: u32,
    /// One command; slower is an error. Default 50ms.
    pub timeout: Duration,
    /// Every key kaname writes starts with it. Default `kaname:`.
    pub key_prefix: String,
    /// `rediss://` only: the CA certificates (PEM) the server's is checked
    /// against instead of the system's. Read by check, start and reload.
    pub ca_file: Option<String>,
}

impl Redis {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);
    pub const DEFAULT_PREFIX: &'static str = "kaname:";

    /// The URL without its password, for messages and logs.
    pub fn display_url(&self) -> String {
        crate::redact::redact_url(&self.url)
    }
}

/// The password is never printed.
impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.display_url())
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("name", &self.name)
            .field("redis", &self.redis)
            .finish()
    }
}

/// `rate_limit.on_store_error`: what decides while the store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreError {
    /// This process's own bucket, with the same settings.
    #[default]
    Local,
    Allow,
    Deny,
}

/// The parts of a `redis://` URL kaname checks, or what is wrong with it.
pub(crate) struct RedisUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub db: u32,
}

/// Reads `redis://[user[:pass]@]host[:port][/db]` (`rediss://` for TLS).
pub(crate) fn parse_url(url: &str) -> Result<RedisUrl, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("redis://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("rediss://") {
        (true, r)
    } else {
        return Err("expected a redis:// or rediss:// URL".into());
    };
    if rest.contains(['?', '#']) {
        return Err(
            "a query or fragment is not read; put the database number in the path (/0)".into(),
        );
    }
    let (authority, path) = match rest.find('/') {
        // A password with a '/' must be percent-encoded, as in any URL.
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let host_port = match authority.rfind('@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6
                .split_once(']')
                .ok_or("an IPv6 address needs its closing ]")?;
            (h, after.strip_prefix(':'))
        }
        None => match host_port.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Err("the URL names no host".into());
    }
    let port = match port {
        None => 6379,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port {p:?} is not a port number (1-65535)"))?,
    };
    let db = match path.trim_start_matches('/') {
        "" => 0,
        d => d
            .parse::<u32>()
            .map_err(|_| format!("the path is the database number, like /0, found {path:?}"))?,
    };
    Ok(RedisUrl {
        tls,
        host: host.to_string(),
        port,
        db,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_urls() {
        let u = parse_url("redis://:pw@redis.shop.svc:6380/2").expect("valid");
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.db),
            (false, "redis.shop.svc", 6380, 2)
        );
        let u = parse_url("rediss://user:p%40ss@[::1]").expect("valid");
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.db),
            (true, "::1", 6379, 0)
        );
        for bad in [
            "http://x",
            "redis://",
            "redis://:pw@",
            "redis://h:0",
            "redis://h:99999",
            "redis://h/zero",
            "redis://h/0?x=1",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }
}
