//! The limits on the YAML itself, through the whole pipeline:
//! `config_depth` and `config_expansion`.

use super::*;

fn env(name: &str) -> Option<String> {
    (name == "PORT").then(|| "8081".to_string())
}

/// A valid file; the tests add an `x-` key to it.
const BASE: &str = "listeners:\n  l:\n    listen: 127.0.0.1:1\n    routes:\n      - upstream: u\nupstreams:\n  u:\n    endpoints: [127.0.0.1:2]\n";

/// Runs `f` on a thread with a 256 KiB stack (tokio's threads have 2 MiB):
/// a recursion on the nesting would overflow it and abort the test binary.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

/// The last line of [`deep_x_key`]: three mappings deep, the last one
/// merged.
const BOTTOM: &str = "- {a: &a \"${PORT}\", b: *a, c: {<<: {secret: s}}}\n";

/// `levels` collections in all, the root mapping being level 1: lists under
/// its `x-deep` key, then [`BOTTOM`] with a `${VAR}`, an alias and a merge.
fn deep_x_key(levels: usize) -> String {
    let mut text = format!("{BASE}x-deep:\n");
    for i in 0..levels - 5 {
        text.push_str(&format!("{}- \n", "  ".repeat(i)));
    }
    text.push_str(&"  ".repeat(levels - 5));
    text.push_str(BOTTOM);
    text
}

#[test]
fn sixty_four_levels_pass_everything_on_a_small_stack() {
    let text = deep_x_key(64);
    let (cfg, tree) = on_small_stack(move || {
        let cfg = parse_with_env("kaname.yaml", &text, &env);
        // Everything else that walks the tree: Debug, Clone, Eq, Drop.
        let tree = node::load(&text).expect("loads");
        let copy = tree.clone();
        assert_eq!(copy, tree);
        let shown = format!("{tree:#?}");
        drop(copy);
        (cfg, shown)
    });
    let cfg = cfg.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.listeners.len(), 1);
    // 60 lists under x-deep, two in BASE.
    assert_eq!(tree.matches("Seq(").count(), 62);
    assert_eq!(tree.matches("${PORT}").count(), 2, "anchored and aliased");
}

#[test]
fn sixty_five_levels_are_a_config_error_with_position() {
    let text = deep_x_key(65);
    // The innermost mapping, `{secret: s}`, is level 65.
    let last = text.lines().count();
    let column = 2 * 60 + BOTTOM.find("{secret").unwrap() + 1;
    let e = parse_with_env("kaname.yaml", &text, &env).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("kaname.yaml:{last}:{column}: YAML nested deeper than 64 levels (config_depth)")
    );
    assert_eq!(e.limit(), Some(Limit::ConfigDepth));
}

#[test]
fn five_thousand_levels_under_an_x_key_are_refused_on_a_small_stack() {
    let text = format!("{BASE}x-deep:\n{}x\n", "- ".repeat(5000));
    let e = on_small_stack(move || parse_with_env("kaname.yaml", &text, &env).unwrap_err());
    let line = BASE.lines().count() + 2;
    assert_eq!(
        e.to_string(),
        format!("kaname.yaml:{line}:127: YAML nested deeper than 64 levels (config_depth)")
    );
    assert_eq!(e.limit(), Some(Limit::ConfigDepth));
}

#[test]
fn an_alias_bomb_of_a_big_string_is_refused_within_budget() {
    let text = format!(
        "{BASE}x-s: &s \"{}\"\nx-b: [{}]\n",
        "a".repeat(100 * 1024),
        vec!["*s"; 20_000].join(", ")
    );
    let len = text.len();
    let e = on_small_stack(move || parse_with_env("kaname.yaml", &text, &env).unwrap_err());
    assert_eq!(e.limit(), Some(Limit::ConfigExpansion));
    assert_eq!(e.0.len(), 1, "{e}");
    let err = &e.0[0];
    // Refused at the first alias past 16× the file's size: at most 16× of
    // it was ever copied, whatever the 20,000 aliases would have made.
    let refused_at = 15 * len / (100 * 1024 + 8) + 1;
    assert!(refused_at < 30);
    assert_eq!(
        (err.line, err.column),
        (BASE.lines().count() + 2, 7 + 4 * (refused_at - 1))
    );
    assert_eq!(
        err.message,
        format!(
            "aliases expand the document past 16× its size (config_expansion: {:.1} MiB allowed for {:.0} KiB)",
            (16 * len) as f64 / (1 << 20) as f64,
            len as f64 / 1024.0
        )
    );
}

#[test]
fn unset_variables_repeated_by_aliases_are_reported_once() {
    // Each alias repeats 100 unset variables (poisoned positions are a set,
    // not a list searched for each of the copies).
    let vars: Vec<String> = (0..100)
        .map(|i| format!("v{i}: \"${{NOPE{i}}}\""))
        .collect();
    let text = format!(
        "{BASE}x-v: &v {{{}}}\nx-all: [{}]\n",
        vars.join(", "),
        ["*v"; 10].join(", ")
    );
    let e = parse_with_env("kaname.yaml", &text, &env).unwrap_err();
    assert_eq!(e.0.len(), 100, "one error per variable, not per copy: {e}");
}
