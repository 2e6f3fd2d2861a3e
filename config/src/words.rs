//! Each part of a config in config words — the keys and values a user
//! writes, as one line of flow YAML — for `kaname explain`. Rendered by the
//! same code as `/config` (`redact.rs`), so secrets and `${VAR}` values are
//! `<redacted>` here too, and a new field shows here as soon as it shows
//! there.

use std::collections::BTreeMap;

use crate::node::Node;
use crate::redact::{quoted, Render, Src, REDACTED, Y};
use crate::types::Config;

/// One config item's settings, key by key, each value as flow YAML.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Words(Vec<(String, String)>);

impl Words {
    fn of(y: Y) -> Self {
        match y {
            Y::Map(entries) => Words(entries.iter().map(|(k, v)| (k.clone(), flow(v))).collect()),
            other => Words(vec![(String::new(), flow(&other))]),
        }
    }

    /// The value of `key`, as written.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `key: value, …` of `keys` that are set, in that order.
    pub fn pick(&self, keys: &[&str]) -> String {
        let picked: Vec<String> = keys
            .iter()
            .filter_map(|k| self.get(k).map(|v| format!("{k}: {v}")))
            .collect();
        picked.join(", ")
    }

    /// Every key, as a flow mapping `{key: value, …}`.
    pub fn all(&self) -> String {
        let all: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| format!("{}: {v}", quoted(k)))
            .collect();
        format!("{{{}}}", all.join(", "))
    }
}

/// The words of every listener, route, upstream and filter of a config.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigWords {
    pub listeners: BTreeMap<String, Words>,
    /// Per listener, its routes in order.
    pub routes: BTreeMap<String, Vec<Words>>,
    pub upstreams: BTreeMap<String, Words>,
    /// A filter's settings under its kind (`{key: jwt:sub, rate: 100/s}`).
    pub filters: BTreeMap<String, Words>,
}

pub(crate) fn words(cfg: &Config, root: &Node) -> ConfigWords {
    let r = Render::new(root);
    let src = Src::Exact(root);
    let mut out = ConfigWords::default();
    let ls = src.key("listeners");
    for l in &cfg.listeners {
        let lsrc = ls.key(&l.name);
        out.listeners
            .insert(l.name.clone(), Words::of(r.listener(l, lsrc)));
        let routes = lsrc.key("routes");
        let route_words = l
            .routes
            .iter()
            .enumerate()
            .map(|(i, route)| Words::of(r.route(route, routes.item(i, l.routes.len()))))
            .collect();
        out.routes.insert(l.name.clone(), route_words);
    }
    let us = src.key("upstreams");
    for u in &cfg.upstreams {
        out.upstreams
            .insert(u.name.clone(), Words::of(r.upstream(u, us.key(&u.name))));
    }
    let fs = src.key("filters");
    for f in &cfg.filters {
        // `{rate_limit: {…}}`: the settings under the kind.
        let settings = match r.filter(f, fs.key(&f.name)) {
            Y::Map(mut entries) if entries.len() == 1 => entries.remove(0).1,
            other => other,
        };
        out.filters.insert(f.name.clone(), Words::of(settings));
    }
    out
}

/// `y` on one line: flow mappings and sequences.
fn flow(y: &Y) -> String {
    match y {
        Y::Plain(t) => t.clone(),
        Y::Str(t) => quoted(t),
        Y::Redacted => format!("\"{REDACTED}\""),
        Y::Map(entries) => {
            let e: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{}: {}", quoted(k), flow(v)))
                .collect();
            format!("{{{}}}", e.join(", "))
        }
        Y::Seq(items) => {
            let i: Vec<String> = items.iter().map(flow).collect();
            format!("[{}]", i.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn words_are_config_words_with_secrets_redacted() {
        let cfg = crate::parse(
            "t.yaml",
            "listeners:
  main:
    listen: 127.0.0.1:8080
    routes:
      - match: { path_prefix: /api/ }
        upstream: app
        filters: [auth]
upstreams:
  app: { endpoints: [127.0.0.1:9000], load_balancing: p2c_ewma }
filters:
  auth:
    jwt: { issuer: https://issuer.example, audiences: [api], algorithms: [HS256], secret: not-a-real-secret-of-32-bytes-xx }
",
        )
        .expect("valid");
        let w = &cfg.words;
        assert_eq!(w.listeners["main"].get("protocol"), Some("auto"));
        assert_eq!(
            w.routes["main"][0].get("match"),
            Some("{path_prefix: /api/}")
        );
        assert_eq!(w.upstreams["app"].get("load_balancing"), Some("p2c_ewma"));
        let jwt = w.filters["auth"].all();
        assert!(jwt.contains("secret: \"<redacted>\""), "{jwt}");
        assert!(!jwt.contains("not-a-real-secret"), "{jwt}");
    }
}
