//! The `stores` section (stores.md), and the names filters and queues give
//! it, checked once every section is read.

use std::time::Duration;

use crate::error::Errors;
use crate::node::{Mark, Node, Value};
use crate::read::{self, Map};
use crate::store::{parse_url, OnStoreError, Redis, Store};

pub(crate) const STORE_KEYS: &[&str] = &["redis"];
pub(crate) const REDIS_KEYS: &[&str] = &["url", "timeout", "key_prefix", "ca_file"];
/// `on_store_error`, in the order the parser maps them.
pub(crate) const ON_STORE_ERROR: &[&str] = &["local", "allow", "deny"];

/// Above this a "timeout" no longer protects a request's latency.
const MAX_TIMEOUT: Duration = Duration::from_secs(10);

pub fn store(name: &str, name_mark: Mark, node: &Node, errs: &mut Errors) -> Option<Store> {
    if name == "local" {
        errs.at(
            name_mark,
            "store name \"local\" is taken: it means this process's own state",
        );
    }
    let place = format!("in store {name:?}");
    let m = Map::new(node, &place, STORE_KEYS, errs)?;
    let redis = m.req("redis", errs, |n, e| redis(name, n, e))?;
    Some(Store {
        name: name.to_string(),
        redis,
    })
}

fn redis(store: &str, node: &Node, errs: &mut Errors) -> Option<Redis> {
    let place = format!("in redis of store {store:?}");
    let m = Map::new(node, &place, REDIS_KEYS, errs)?;
    let url = m.req("url", errs, |n, e| {
        let url = read::nonempty(n, e)?;
        match parse_url(&url) {
            Ok(parts) => Some((url, parts)),
            Err(why) => {
                e.at(
                    n.mark,
                    format!("redis url {:?}: {why}", crate::redact::redact_url(&url)),
                );
                None
            }
        }
    });
    let timeout = m
        .opt("timeout", errs, |n, e| {
            let d = read::positive_duration(n, e)?;
            if d > MAX_TIMEOUT {
                e.at(
                    n.mark,
                    "timeout is at most 10s: every request waiting on the store waits this long when it is down",
                );
                return None;
            }
            Some(d)
        })
        .unwrap_or(Redis::DEFAULT_TIMEOUT);
    let key_prefix = m
        .opt("key_prefix", errs, read::string)
        .unwrap_or_else(|| Redis::DEFAULT_PREFIX.to_string());
    let ca_file = m.opt("ca_file", errs, read::nonempty);
    let (url, parts) = url?;
    if let (Some(mark), false) = (m.key_mark("ca_file"), parts.tls) {
        errs.at(
            mark,
            "ca_file is for a TLS store: the url must start with rediss://",
        );
    }
    Some(Redis {
        url,
        tls: parts.tls,
        host: parts.host,
        port: parts.port,
        db: parts.db,
        timeout,
        key_prefix,
        ca_file,
    })
}

/// `store:` of a rate_limit filter or a queue: `local` or a store's name
/// (checked against `stores:` by [`check_names`]).
pub fn store_name(node: &Node, errs: &mut Errors) -> Option<Option<String>> {
    let s = read::nonempty(node, errs)?;
    Some((s != "local").then_some(s))
}

pub fn on_store_error(node: &Node, errs: &mut Errors) -> Option<OnStoreError> {
    let i = read::choice(node, ON_STORE_ERROR, errs)?;
    Some([OnStoreError::Local, OnStoreError::Allow, OnStoreError::Deny][i])
}

/// Every `store:` under `filters` and `queues` names `local` or an entry of
/// `stores:`; the error is at the name.
pub fn check_names(top: &Map<'_>, stores: &[String], errs: &mut Errors) {
    let mut check = |node: &Node| {
        let Some(s) = node.scalar() else {
            return;
        };
        if s.text == "local" || stores.contains(&s.text) {
            return;
        }
        let hint = crate::suggest::did_you_mean(
            &s.text,
            stores.iter().map(String::as_str).chain(["local"]),
        );
        errs.at(
            node.mark,
            format!(
                "unknown store {:?}, neither local nor a name under stores{hint}",
                s.text
            ),
        );
    };
    for section in ["filters", "queues"] {
        let Some(Value::Map(entries)) = top.get(section).map(|n| &n.value) else {
            continue;
        };
        for (_, body) in entries {
            let node = match section {
                "filters" => body.get("rate_limit").and_then(|r| r.get("store")),
                _ => body.get("store"),
            };
            if let Some(node) = node {
                check(node);
            }
        }
    }
}
