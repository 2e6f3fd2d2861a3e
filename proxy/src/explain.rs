//! `kaname explain`: each route's chain of layers, outside in.

use std::fmt::Write;

use kaname_config::{Config, FilterKind, JwksSource};

pub fn explain(cfg: &Config) -> String {
    let mut out = String::new();
    for l in &cfg.listeners {
        let _ = writeln!(
            out,
            "listener {} on {} ({:?})",
            l.name, l.listen, l.protocol
        );
        for r in &l.routes {
            let _ = writeln!(out, "  route {} {:?}", r.name, r.matcher);
            let _ = writeln!(
                out,
                "    0. request model: path normalized (merge_slashes {}, escaped_slashes {:?}), one authority, upgrades {:?}, request_body_timeout {:?}",
                l.merge_slashes, l.escaped_slashes, l.upgrades, l.request_body_timeout
            );
            let _ = writeln!(out, "    1. request id, metrics, access log");
            let mut n = 2;
            if let Some(t) = r.timeout {
                let _ = writeln!(out, "    {n}. route timeout {t:?}");
                n += 1;
            }
            for name in &r.filters {
                if let Some(f) = cfg.filter(name) {
                    let _ = writeln!(
                        out,
                        "    {n}. {} \"{}\": {}",
                        f.kind.kind_name(),
                        f.name,
                        settings(&f.kind)
                    );
                    n += 1;
                }
            }
            if let Some(u) = cfg.upstream(&r.upstream) {
                let eps: Vec<String> = u
                    .endpoints
                    .iter()
                    .map(|e| format!("{}:{}", e.host, e.port))
                    .collect();
                let _ = writeln!(
                    out,
                    "    {n}. upstream \"{}\" {:?} {:?} [{}] connect_timeout {:?}",
                    u.name,
                    u.protocol,
                    u.load_balancing,
                    eps.join(", "),
                    u.connect_timeout
                );
            }
        }
    }
    out
}

fn settings(kind: &FilterKind) -> String {
    // Debug of the typed settings shows every effective value, defaults
    // included; secrets must not leak.
    match kind {
        FilterKind::Jwt(j) => {
            let mut j = j.clone();
            if j.secret.is_some() {
                j.secret = Some("<redacted>".into());
            }
            // The user-info and query of a JWKS URL, as /config hides them.
            if let Some(JwksSource::Url { url, .. }) = &mut j.jwks {
                *url = kaname_config::redact_url(url);
            }
            format!("{j:?}")
        }
        other => format!("{other:?}"),
    }
}
