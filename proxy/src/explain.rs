//! `kaname explain`: each listener's stack and each route's, outermost
//! first — read from the same step lists the running proxy is built from
//! (`pipeline::listener_steps`, `pipeline::route_steps`), in config words.

use std::fmt::Write;

use kaname_config::Config;

use crate::pipeline::{self, Step};

pub fn explain(cfg: &Config) -> String {
    let mut out = String::new();
    for l in &cfg.listeners {
        let protocol = cfg
            .words
            .listeners
            .get(&l.name)
            .and_then(|w| w.get("protocol"))
            .unwrap_or("auto");
        let _ = writeln!(
            out,
            "listener {} on {} (protocol: {protocol})",
            l.name, l.listen
        );
        steps(&mut out, cfg, "  ", &pipeline::listener_steps(l));
        let route_words = cfg.words.routes.get(&l.name);
        for (i, r) in l.routes.iter().enumerate() {
            let matcher = route_words
                .and_then(|w| w.get(i))
                .and_then(|w| w.get("match"))
                .unwrap_or("{}");
            let _ = writeln!(out, "  route {} (match: {matcher})", r.name);
            match pipeline::route_steps(cfg, l, r) {
                Some(s) => steps(&mut out, cfg, "    ", &s),
                None => {
                    let _ = writeln!(out, "    (names a filter or upstream the config lacks)");
                }
            }
        }
        let _ = writeln!(out, "  no route");
        steps(&mut out, cfg, "    ", &pipeline::no_route_steps());
    }
    out
}

fn steps(out: &mut String, cfg: &Config, indent: &str, steps: &[Step<'_>]) {
    for (n, step) in steps.iter().enumerate() {
        let (name, what) = step.describe(cfg);
        let _ = writeln!(out, "{indent}{}. {name} {what}", n + 1);
    }
}
