//! `kaname check -c FILE` end to end: the real binary on broken files must
//! print exactly `FILE:LINE:COL: message` lines and exit 1; a valid file
//! exits 0 with a one-line summary.

use std::path::Path;
use std::process::Command;

/// A valid file; each broken case below changes one thing in it.
const BASE: &str = "\
admin:
  listen: 127.0.0.1:19901
listeners:
  main:
    listen: 127.0.0.1:18001
    routes:
      - name: api
        match: { path_prefix: /api/ }
        upstream: app
        timeout: 2s
        filters: [auth, per-user, retries]
upstreams:
  app:
    endpoints: [127.0.0.1:3000]
filters:
  auth:
    jwt:
      algorithms: [HS256]
      secret: ${KANAME_TEST_SECRET}
  per-user:
    rate_limit: { key: jwt:sub, rate: 100/s }
  retries:
    retry:
      attempts: 3
";

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `kaname check` in `dir` with the test secret set unless `unset`.
fn run_in(dir: &Path, args: &[&str], with_secret: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kaname"));
    cmd.current_dir(dir).args(args).env_remove("RUST_LOG");
    if with_secret {
        // 32 bytes at least: HS256's shortest secret (RFC 7518 §3.2).
        cmd.env("KANAME_TEST_SECRET", "not-a-real-secret-but-long-enough");
    } else {
        cmd.env_remove("KANAME_TEST_SECRET");
    }
    let out = cmd.output().expect("run kaname");
    Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn check_text(text: &str, with_secret: bool) -> Output {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("kaname.yaml"), text).expect("write config");
    run_in(dir.path(), &["check", "-c", "kaname.yaml"], with_secret)
}

/// `text` must fail with exactly these stderr lines.
fn assert_errors(text: &str, expected: &[&str]) {
    assert_errors_env(text, expected, true);
}

fn assert_errors_env(text: &str, expected: &[&str], with_secret: bool) {
    let out = check_text(text, with_secret);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines, expected, "stderr for:\n{text}");
    assert_eq!(out.code, Some(1), "exit code; stderr: {}", out.stderr);
    assert_eq!(out.stdout, "", "nothing on stdout for an invalid file");
}

fn with(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "{from:?} is not in BASE");
    BASE.replacen(from, to, 1)
}

#[test]
fn valid_file_prints_a_summary() {
    let out = check_text(BASE, true);
    assert_eq!(out.stderr, "");
    assert_eq!(
        out.stdout,
        "kaname.yaml: ok (1 listener, 1 route, 1 upstream, 3 filters)\n"
    );
    assert_eq!(out.code, Some(0));
}

#[test]
fn misspelt_key_names_the_nearest_one() {
    // The example from the contract, at the same line and column.
    let text = "\
listeners:
  main:
    listen: 127.0.0.1:18001
    routes:
      - match: { path_prefix: /api/ }
        upstream: app
        filters: [retries]
upstreams:
  app:
    endpoints: [127.0.0.1:3000]
filters:
  retries:
    retry:
      atempts: 3
";
    assert_errors(
        text,
        &["kaname.yaml:14:7: unknown key \"atempts\" in retry filter \"retries\"; did you mean \"attempts\"?"],
    );
}

#[test]
fn bad_duration() {
    assert_errors(
        &with("timeout: 2s", "timeout: fast"),
        &["kaname.yaml:10:18: expected a duration like \"250ms\" or \"2s\", found \"fast\""],
    );
}

#[test]
fn unknown_upstream() {
    assert_errors(
        &with("upstream: app", "upstream: ap"),
        &["kaname.yaml:9:19: route \"api\" names unknown upstream \"ap\"; did you mean \"app\"?"],
    );
}

#[test]
fn unknown_filter() {
    assert_errors(
        &with("per-user, retries]", "per-user, retires]"),
        &["kaname.yaml:11:35: route \"api\" names unknown filter \"retires\"; did you mean \"retries\"?"],
    );
}

#[test]
fn unset_variable() {
    assert_errors_env(
        BASE,
        &["kaname.yaml:19:15: environment variable \"KANAME_TEST_SECRET\" is not set and has no default"],
        false,
    );
}

#[test]
fn two_listeners_on_one_address() {
    let text = with(
        "upstreams:\n",
        "  other:\n    listen: 0.0.0.0:18001\n    routes: [{ upstream: app }]\nupstreams:\n",
    );
    assert_errors(
        &text,
        &["kaname.yaml:13:13: listener \"other\" listens on 0.0.0.0:18001, already used by listener \"main\""],
    );
}

#[test]
fn listener_on_the_admin_address() {
    assert_errors(
        &with("listen: 127.0.0.1:18001", "listen: 127.0.0.1:19901"),
        &["kaname.yaml:5:13: listener \"main\" listens on 127.0.0.1:19901, already used by admin"],
    );
}

#[test]
fn regex_that_does_not_compile() {
    assert_errors(
        &with("{ path_prefix: /api/ }", "{ path_regex: \"^/api/(v1\" }"),
        &["kaname.yaml:8:30: path_regex \"^/api/(v1\" does not compile: unclosed group"],
    );
}

#[test]
fn empty_and_malformed_endpoints() {
    assert_errors(
        &with("[127.0.0.1:3000]", "[]"),
        &["kaname.yaml:14:16: upstream \"app\" has no endpoints"],
    );
    assert_errors(
        &with("[127.0.0.1:3000]", "[127.0.0.1]"),
        &["kaname.yaml:14:17: expected an endpoint like \"host:port\" or \"10.0.0.1:8080\", found \"127.0.0.1\""],
    );
}

#[test]
fn filter_with_two_kinds() {
    assert_errors(
        &with("      attempts: 3\n", "      attempts: 3\n    circuit_breaker: {}\n"),
        &["kaname.yaml:25:5: filter \"retries\" has two kinds, \"retry\" and \"circuit_breaker\"; a filter has exactly one"],
    );
}

#[test]
fn unknown_filter_kind() {
    assert_errors(
        &with("    retry:\n", "    retyr:\n"),
        &["kaname.yaml:23:5: unknown filter kind \"retyr\" in filter \"retries\"; did you mean \"retry\"?"],
    );
}

#[test]
fn jwt_algorithm_none() {
    assert_errors(
        &with("[HS256]", "[HS256, none]"),
        &["kaname.yaml:18:27: algorithm \"none\" is never accepted"],
    );
}

#[test]
fn jwt_key_sources() {
    assert_errors(
        &with(
            "      secret: ${KANAME_TEST_SECRET}\n",
            "      secret: ${KANAME_TEST_SECRET}\n      jwks: { file: /etc/jwks.json }\n",
        ),
        &["kaname.yaml:19:7: jwt filter \"auth\" has both jwks and secret; use one"],
    );
    assert_errors(
        &with(
            "      secret: ${KANAME_TEST_SECRET}\n",
            "      jwks: { file: /etc/jwks.json }\n",
        ),
        &["kaname.yaml:18:20: algorithm \"HS256\" needs secret, not jwks"],
    );
}

#[test]
fn rate_limit_on_a_claim_needs_jwt_first() {
    assert_errors(
        &with("[auth, per-user, retries]", "[per-user, auth, retries]"),
        &["kaname.yaml:11:19: rate_limit filter \"per-user\" keys on jwt:sub but route \"api\" has no jwt filter before it"],
    );
}

#[test]
fn route_match_with_two_paths() {
    assert_errors(
        &with("{ path_prefix: /api/ }", "{ path_prefix: /api/, path: /x }"),
        &["kaname.yaml:8:38: route \"api\" match has both path_prefix and path; use one"],
    );
}

#[test]
fn out_of_range_numbers() {
    assert_errors(
        &with("attempts: 3", "attempts: 0"),
        &["kaname.yaml:24:17: attempts must be at least 1 (it counts the first try)"],
    );
    assert_errors(
        &(BASE.to_string()
            + "  breaker:\n    circuit_breaker:\n      failure_rate: { threshold: 1.5 }\n"),
        &["kaname.yaml:27:34: threshold is a fraction greater than 0 and at most 1, found 1.5"],
    );
    assert_errors(
        &(BASE.to_string() + "  protect:\n    concurrency_limit: { max_in_flight: 0 }\n"),
        &["kaname.yaml:26:41: expected at least 1, found 0"],
    );
}

#[test]
fn bad_rate() {
    assert_errors(
        &with("rate: 100/s", "rate: 100/d"),
        &["kaname.yaml:21:39: expected a rate like \"100/s\", \"10/m\" or \"5/h\", found \"100/d\""],
    );
}

#[test]
fn duplicate_key() {
    assert_errors(
        &with(
            "        timeout: 2s\n",
            "        timeout: 2s\n        timeout: 3s\n",
        ),
        &["kaname.yaml:11:9: duplicate key \"timeout\" in route \"api\""],
    );
}

#[test]
fn empty_file() {
    assert_errors(
        "",
        &["kaname.yaml:1:1: the file is empty; expected a mapping with at least \"listeners\""],
    );
}

#[test]
fn yaml_syntax_error() {
    let out = check_text(&with("per-user, retries]", "per-user, retries"), true);
    assert_eq!(out.code, Some(1));
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(lines[0].starts_with("kaname.yaml:12:"), "{}", out.stderr);
    assert!(lines[0].contains("invalid YAML"), "{}", out.stderr);
}

#[test]
fn several_errors_all_reported_in_order() {
    let text = with("timeout: 2s", "timeout: fast")
        .replacen("upstream: app", "upstream: ap", 1)
        .replacen("attempts: 3", "attempts: 0", 1)
        .replacen("upstreams:", "upstream:", 1);
    assert_errors_env(
        &text,
        &[
            "kaname.yaml:9:19: route \"api\" names unknown upstream \"ap\"",
            "kaname.yaml:10:18: expected a duration like \"250ms\" or \"2s\", found \"fast\"",
            "kaname.yaml:12:1: unknown key \"upstream\" at the top level; did you mean \"upstreams\"?",
            "kaname.yaml:19:15: environment variable \"KANAME_TEST_SECRET\" is not set and has no default",
            "kaname.yaml:24:17: attempts must be at least 1 (it counts the first try)",
        ],
        false,
    );
}

#[test]
fn anchors_merge_keys_and_variables() {
    let text = "\
x-defaults: &defaults
  timeout: 2s
  upstream: app
listeners:
  main:
    listen: 127.0.0.1:${KANAME_TEST_PORT:-18002}
    routes:
      - <<: *defaults
        match: { path: /a }
        filters: &chain [limit]
      - <<: *defaults
        filters: *chain
upstreams:
  app: { endpoints: [\"127.0.0.1:3000\"], protocol: http2 }
filters:
  limit: { rate_limit: { key: client_ip, rate: 10/s } }
";
    let out = check_text(text, true);
    assert_eq!(out.stderr, "");
    assert_eq!(
        out.stdout,
        "kaname.yaml: ok (1 listener, 2 routes, 1 upstream, 1 filter)\n"
    );
    assert_eq!(out.code, Some(0));
}

#[test]
fn grpc_route_to_http1_upstream_is_a_warning() {
    let out = check_text(
        &with("path_prefix: /api/", "path_prefix: /shop.Orders/"),
        true,
    );
    assert_eq!(
        out.stderr,
        "warning: route \"api\" can receive gRPC but upstream \"app\" is http1; gRPC needs protocol: http2\n"
    );
    assert_eq!(out.code, Some(0));
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_in(dir.path(), &["check", "-c", "missing.yaml"], true);
    assert_eq!(
        out.stderr,
        "missing.yaml: cannot read missing.yaml: No such file or directory (name the config file with -c FILE or $KANAME_CONFIG)\n"
    );
    assert_eq!(out.code, Some(1));
}

#[test]
fn usage_error_exits_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_in(dir.path(), &["check", "--no-such-flag"], true);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
}

/// `kaname explain` prints the listener's stack and each route's, outside
/// in (the route's filters in their order), in config words with secrets
/// redacted; a broken file is refused as by `check`.
#[test]
fn explain_prints_each_routes_chain_in_order_without_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("kaname.yaml"), BASE).expect("write config");
    let out = run_in(dir.path(), &["explain", "-c", "kaname.yaml"], true);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0],
        "listener main on 127.0.0.1:18001 (protocol: auto)"
    );
    // Each line is `N. step what`; the route's stack starts after its line.
    let step = |l: &&str| l.trim_start().split(' ').nth(1).unwrap_or("").to_string();
    let listener_steps: Vec<String> = lines[1..4].iter().map(step).collect();
    assert_eq!(
        listener_steps,
        ["request_model", "request_id", "router"],
        "{}",
        out.stdout
    );
    assert_eq!(
        lines[4], "  route api (match: {path_prefix: /api/})",
        "{}",
        out.stdout
    );
    let route_steps: Vec<String> = lines[5..13].iter().map(step).collect();
    assert_eq!(
        route_steps,
        [
            "observe",
            "rescue",
            "forwarded",
            "deadline",
            "jwt",
            "rate_limit",
            "retry",
            "forward"
        ],
        "{}",
        out.stdout
    );
    // Config words, not Rust debug output.
    assert!(
        lines[8].ends_with("timeout: 2s, or grpc-timeout when sooner"),
        "{}",
        out.stdout
    );
    assert!(
        lines[10].contains("per-user {key: jwt:sub, rate: 100/s"),
        "{}",
        out.stdout
    );
    assert!(
        lines[12].contains("upstream app {endpoints: [\"127.0.0.1:3000\"], protocol: http1"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("Some("), "{}", out.stdout);
    assert!(out.stdout.contains("\"<redacted>\""), "{}", out.stdout);
    assert!(!out.stdout.contains("not-a-real-secret"), "{}", out.stdout);

    std::fs::write(
        dir.path().join("kaname.yaml"),
        with("upstream: app", "upstream: ap"),
    )
    .expect("write config");
    let out = run_in(dir.path(), &["explain", "-c", "kaname.yaml"], true);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.starts_with("kaname.yaml:9:19: "),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout, "");
}

/// BASE with `protect` (a concurrency_limit taking priority from `source`)
/// on route `api`, named in `route_filters`.
fn with_protect(source: &str, route_filters: &str) -> String {
    format!(
        "{}  protect:\n    concurrency_limit: {{ max_in_flight: 4, priority: {source} }}\n",
        with("[auth, per-user, retries]", route_filters)
    )
}

#[test]
fn priority_from_a_client_header_on_an_open_listener_is_a_warning() {
    let text = with_protect("{ header: x-priority }", "[auth, protect, retries]");
    // Loopback only: a sidecar's own clients, no warning.
    let out = check_text(&text, true);
    assert_eq!((out.stderr.as_str(), out.code), ("", Some(0)));
    let open = text.replacen("listen: 127.0.0.1:18001", "listen: 0.0.0.0:18001", 1);
    let out = check_text(&open, true);
    assert_eq!(
        out.stderr,
        "warning: filter \"protect\" takes priority from client header \"x-priority\" on listener \"main\" (0.0.0.0:18001), which any client can set; use priority.claim or a route priority\n"
    );
    assert_eq!(out.code, Some(0));
    // A route priority replaces the header on its route.
    let pinned = open.replacen(
        "timeout: 2s\n",
        "timeout: 2s\n        priority: normal\n",
        1,
    );
    let out = check_text(&pinned, true);
    assert_eq!((out.stderr.as_str(), out.code), ("", Some(0)));
    // A verified claim is no client's say.
    let claim = with_protect("{ claim: tier }", "[auth, protect, retries]").replacen(
        "listen: 127.0.0.1:18001",
        "listen: 0.0.0.0:18001",
        1,
    );
    let out = check_text(&claim, true);
    assert_eq!((out.stderr.as_str(), out.code), ("", Some(0)));
}

#[test]
fn priority_from_a_claim_needs_jwt_first() {
    assert_errors(
        &with_protect("{ claim: tier }", "[protect, auth, retries]"),
        &["kaname.yaml:11:19: concurrency_limit filter \"protect\" takes priority from claim \"tier\" but route \"api\" has no jwt filter before it"],
    );
    assert_errors(
        &with("timeout: 2s\n", "timeout: 2s\n        priority: urgent\n"),
        &["kaname.yaml:11:19: expected one of high, normal, low, found \"urgent\""],
    );
}

/// `config_depth`: BASE with an `x-` key nesting 5,000 block sequences
/// (10 KB). Refused where the 65th level starts, not a stack overflow.
#[test]
fn yaml_nested_5000_levels_deep_is_refused_with_position() {
    let text = format!("{BASE}x-deep:\n{}x\n", "- ".repeat(5000));
    let line = BASE.lines().count() + 2;
    // The root mapping is level 1: the 64th `- ` opens level 65.
    assert_errors(
        &text,
        &[&format!(
            "kaname.yaml:{line}:127: YAML nested deeper than 64 levels (config_depth)"
        )],
    );
}

/// `config_expansion`: BASE with one 100 KiB string aliased 20,000 times
/// (183 KB that would expand to 2 GB). Refused at the first alias that
/// takes the document past 16× its size.
#[test]
fn alias_bomb_of_a_big_string_is_refused_with_position() {
    let text = format!(
        "{BASE}x-s: &s \"{}\"\nx-b: [{}]\n",
        "a".repeat(100 * 1024),
        vec!["*s"; 20_000].join(", ")
    );
    let out = check_text(&text, true);
    assert_eq!(out.code, Some(1), "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    let len = text.len();
    let message = format!(
        ": aliases expand the document past 16× its size (config_expansion: {:.1} MiB allowed for {:.0} KiB)",
        (16 * len) as f64 / f64::from(1 << 20),
        len as f64 / 1024.0
    );
    let (position, rest) = lines[0].split_at(lines[0].find(": ").expect("position"));
    assert_eq!(rest, message, "{}", out.stderr);
    let prefix = format!("kaname.yaml:{}:", BASE.lines().count() + 2);
    let column: usize = position
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{position} on the line of the aliases"))
        .parse()
        .expect("column");
    // One of the first 30 aliases (`x-b: [` then `*s, ` each): 16 copies
    // of the file at most were made before the refusal.
    assert_eq!((column - 7) % 4, 0, "at an alias: {column}");
    assert!(
        (column - 7) / 4 < 30,
        "refused early: alias {}",
        (column - 7) / 4 + 1
    );
}

/// `kaname explain` hides a JWKS URL's user-info and query, as `/config`
/// does.
#[test]
fn explain_hides_the_user_info_and_query_of_a_jwks_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "{}  remote:\n    jwt:\n      algorithms: [RS256]\n      jwks: {{ url: \"https://user:pass@keys.example/jwks.json?key=abc\" }}\n",
        with("[auth, per-user, retries]", "[remote, per-user, retries]")
    );
    std::fs::write(dir.path().join("kaname.yaml"), text).expect("write config");
    let out = run_in(dir.path(), &["explain", "-c", "kaname.yaml"], true);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    assert!(
        out.stdout
            .contains("\"https://<redacted>@keys.example/jwks.json?<redacted>\""),
        "{}",
        out.stdout
    );
    for hidden in ["user:pass", "pass@", "key=abc", "abc"] {
        assert!(!out.stdout.contains(hidden), "{hidden:?}: {}", out.stdout);
    }
}

/// With `tracing.otlp`, every route's stack starts with the trace step,
/// saying where spans go and how many.
#[test]
fn explain_shows_the_trace_step_outermost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = format!(
        "tracing:\n  otlp: {{ endpoint: \"http://127.0.0.1:4317\", sampling: 0.01, headers: {{ authorization: \"Bearer explain-secret\" }} }}\n{BASE}"
    );
    std::fs::write(dir.path().join("kaname.yaml"), text).expect("write config");
    let out = run_in(dir.path(), &["explain", "-c", "kaname.yaml"], true);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let route = out
        .stdout
        .lines()
        .position(|l| l.starts_with("  route api"))
        .expect("route api");
    let first = out.stdout.lines().nth(route + 1).expect("a step");
    assert!(
        first.trim_start().starts_with("1. trace "),
        "{}",
        out.stdout
    );
    assert!(
        first.contains("otlp grpc to http://127.0.0.1:4317, sampling: 0.01"),
        "{first}"
    );
    assert!(!out.stdout.contains("explain-secret"), "{}", out.stdout);
}

/// A queue route ends in the enqueue step (not forward), in config words;
/// `check` refuses a retry filter on it and an unknown queue, with place.
#[test]
fn a_queue_route_is_explained_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "queues:\n  reports: { delivery: { concurrency: 2 }, callback: { allowed_hosts: [hooks], secret: explain-callback-secret } }\nlisteners:\n  main:\n    listen: 127.0.0.1:18001\n    routes:\n      - { name: r, match: { path_prefix: /r/ }, upstream: app, queue: reports }\nupstreams:\n  app: { endpoints: [127.0.0.1:3000] }\n";
    std::fs::write(dir.path().join("kaname.yaml"), text).expect("write config");
    let out = run_in(dir.path(), &["explain", "-c", "kaname.yaml"], true);
    assert_eq!(out.code, Some(0), "stderr: {}", out.stderr);
    let route: Vec<&str> = out
        .stdout
        .lines()
        .skip_while(|l| !l.starts_with("  route r "))
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .collect();
    let last = *route.last().expect("the route's steps");
    assert!(last.contains("5. enqueue queue reports stores the request and answers 202; delivered to upstream app"), "{}", out.stdout);
    assert!(last.contains("concurrency: 2"), "{last}");
    assert!(
        !out.stdout.contains("explain-callback-secret"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(" forward "), "{}", out.stdout);

    let bad = text.replace("queue: reports }", "queue: reports, filters: [retries] }")
        + "filters:\n  retries: { retry: { attempts: 2 } }\n";
    std::fs::write(dir.path().join("kaname.yaml"), bad).expect("write config");
    let out = run_in(dir.path(), &["check", "-c", "kaname.yaml"], true);
    assert_eq!(out.code, Some(1));
    assert!(out.stderr.contains("kaname.yaml:7:"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("its retry filter \"retries\" would never run"),
        "{}",
        out.stderr
    );
}

/// A `jwks.file` that is missing, not a JWKS, or without a key for the
/// filter's algorithms is an error of `check` (and of `run`), placed at
/// the `file` key, not a 401 on every request later.
#[test]
fn jwks_files_are_read_by_check_and_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |file: &str| {
        format!(
            "admin: {{ listen: 127.0.0.1:0 }}\nlisteners:\n  main:\n    listen: 127.0.0.1:0\n    routes: [{{ upstream: app, filters: [auth] }}]\nupstreams:\n  app: {{ endpoints: [127.0.0.1:3000] }}\nfilters:\n  auth:\n    jwt:\n      algorithms: [ES256]\n      jwks: {{ file: {file} }}\n"
        )
    };
    let rsa_only = r#"{"keys":[{"kty":"RSA","kid":"r","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"}]}"#;
    for (file, contents, says) in [
        (
            "missing.json",
            None,
            "cannot read the file: No such file or directory",
        ),
        ("garbage.json", Some("not json"), "not a usable JWKS"),
        (
            "rsa.json",
            Some(rsa_only),
            "no key in it for the filter's algorithms [ES256]",
        ),
    ] {
        let path = dir.path().join(file);
        if let Some(c) = contents {
            std::fs::write(&path, c).expect("write jwks");
        }
        std::fs::write(
            dir.path().join("kaname.yaml"),
            config(&path.display().to_string()),
        )
        .expect("write config");
        let out = run_in(dir.path(), &["check", "-c", "kaname.yaml"], true);
        assert_eq!(out.code, Some(1), "{file}: {}", out.stderr);
        assert!(
            out.stderr
                .starts_with("kaname.yaml:12:15: jwt filter \"auth\" jwks.file: "),
            "{file}: {}",
            out.stderr
        );
        assert!(out.stderr.contains(says), "{file}: {}", out.stderr);
        let out = run_in(dir.path(), &["run", "-c", "kaname.yaml"], true);
        assert_eq!(out.code, Some(1), "run refuses it too: {}", out.stderr);
        assert!(out.stderr.contains(says), "{}", out.stderr);
    }
}
