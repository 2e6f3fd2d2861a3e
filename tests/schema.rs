//! `kaname schema` end to end: it prints the JSON Schema the repo keeps in
//! `docs/kaname.schema.json`, and a real validator (Python's `jsonschema`)
//! given that schema agrees with `kaname check`: it accepts the demo config
//! and a config using every form of value the parser takes, and refuses
//! misspelt keys and wrong values that `kaname check` refuses.
//! (Every example config is validated in tests/examples.rs.)

mod support;

use std::process::Command;

use support::schema::{committed_schema, repo, validate_texts, REGENERATE};
use support::KANAME;

/// `kaname check` on a text: its exit code and stderr.
fn check(text: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kaname.yaml");
    std::fs::write(&path, text).expect("write");
    let mut cmd = Command::new(KANAME);
    cmd.arg("check")
        .arg("-c")
        .arg(&path)
        .current_dir(dir.path())
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run kaname check");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// examples/demo.yaml with its `{PORT}` placeholders filled, as `kaname
/// demo` does.
fn demo_config() -> String {
    let text = std::fs::read_to_string(repo().join("examples/demo.yaml")).expect("read demo");
    text.replace("{PROXY}", "19001")
        .replace("{ADMIN}", "19002")
        .replace("{ECHO}", "19003")
}

#[test]
fn the_committed_schema_is_what_kaname_schema_prints() {
    let out = Command::new(KANAME)
        .arg("schema")
        .output()
        .expect("run kaname schema");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).expect("UTF-8");
    let committed = std::fs::read_to_string(committed_schema()).unwrap_or_default();
    assert!(
        printed == committed,
        "docs/kaname.schema.json is not what `kaname schema` prints: regenerate it with\n    {REGENERATE}"
    );
    let schema: serde_json::Value = serde_json::from_str(&printed).expect("JSON");
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert!(
        schema["$defs"]["Retry"]["properties"]["attempts"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("Default `3`")),
        "descriptions come from the doc comments"
    );
}

#[test]
fn the_demo_config_is_valid_and_misspelt_keys_are_not() {
    let demo = demo_config();
    assert!(demo.contains("      attempts: 3\n"));
    let cases = [
        ("demo", demo.clone()),
        (
            "misspelt retry key",
            demo.replace("      attempts: 3\n", "      atempts: 3\n"),
        ),
        (
            "misspelt top-level key",
            demo.replace("\nfilters:\n", "\nfilter:\n"),
        ),
        (
            "misspelt filter kind",
            demo.replace("    circuit_breaker:\n", "    circuit_braker:\n"),
        ),
        (
            "misspelt route key",
            demo.replace("        timeout: 1s\n", "        timout: 1s\n"),
        ),
    ];
    let texts: Vec<(&str, &str)> = cases.iter().map(|(n, t)| (*n, t.as_str())).collect();
    let results = validate_texts(&committed_schema(), &texts);
    assert_eq!(results[0], Ok(()), "the demo config is valid");
    for ((name, text), (result, misspelt)) in cases[1..].iter().zip(results[1..].iter().zip([
        "atempts",
        "filter",
        "circuit_braker",
        "timout",
    ])) {
        let errors = result.as_ref().expect_err(name);
        assert!(
            errors.contains(&format!("'{misspelt}'")),
            "{name}: the validator names the key: {errors}"
        );
        // kaname check refuses the same file, naming the same key.
        let (code, stderr) = check(text, &[]);
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("{misspelt:?}")),
            "{name}: {stderr}"
        );
    }
    assert!(
        results[1]
            .as_ref()
            .unwrap_err()
            .contains("/filters/retries/retry: Additional properties are not allowed ('atempts' was unexpected)"),
        "{:?}",
        results[1]
    );
}

/// A config that writes values every way the parser takes them: `${VAR}`
/// in numbers, booleans, sizes and words, quoted numbers, numbers where
/// text goes, words in any case, anchors, merge keys and `x-` keys.
const EVERY_FORM: &str = include_str!("schema_every_form.yaml");

#[test]
fn a_config_using_every_form_of_value_is_valid_for_both() {
    let env = [(
        "JWT_SECRET",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    )];
    let (code, stderr) = check(EVERY_FORM, &env);
    assert_eq!(code, Some(0), "kaname check: {stderr}");
    let results = validate_texts(&committed_schema(), &[("every-form", EVERY_FORM)]);
    assert_eq!(results[0], Ok(()), "the schema refuses what kaname accepts");
}

#[test]
fn wrong_values_are_refused_by_both() {
    let demo = demo_config();
    let cases = [
        ("a duration without a unit", "timeout: 1s", "timeout: 1"),
        ("an unknown word", "format: text", "format: txt"),
        ("a rate without a period", "rate: 5/s", "rate: 5"),
        ("zero attempts", "attempts: 3", "attempts: 0"),
        ("a list expected", "filters: [auth]", "filters: auth"),
        (
            "no endpoints",
            "endpoints: [127.0.0.1:19003]",
            "endpoints: []",
        ),
        (
            "two filter kinds",
            "    circuit_breaker:\n",
            "    retry: {}\n    circuit_breaker:\n",
        ),
        (
            "jwks and secret",
            "      secret: kaname-demo",
            "      jwks: { file: jwks.json }\n      secret: kaname-demo",
        ),
        (
            "a key without a value",
            "      open_for: 10s",
            "      open_for:",
        ),
    ];
    let texts: Vec<(String, String)> = cases
        .iter()
        .map(|(name, from, to)| {
            assert!(
                demo.contains(from),
                "{name}: {from:?} not in the demo config"
            );
            (name.to_string(), demo.replacen(from, to, 1))
        })
        .collect();
    let refs: Vec<(&str, &str)> = texts
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    let results = validate_texts(&committed_schema(), &refs);
    for ((name, text), result) in texts.iter().zip(results) {
        assert!(result.is_err(), "{name}: the schema accepts it");
        let (code, stderr) = check(text, &[]);
        assert_eq!(code, Some(1), "{name}: kaname check accepts it: {stderr}");
    }
}
