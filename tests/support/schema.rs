//! The config's JSON Schema (`kaname schema`, kept in
//! `docs/kaname.schema.json`) checked by a real validator: Python's
//! `jsonschema` (Draft202012Validator), YAML read by PyYAML as YAML 1.2's
//! core schema reads it (`schema_validate.py` beside this file).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The copy of the schema in the repo.
pub fn committed_schema() -> PathBuf {
    repo().join("docs/kaname.schema.json")
}

/// How to make `docs/kaname.schema.json` again.
pub const REGENERATE: &str = "cargo run -q --bin kaname -- schema > docs/kaname.schema.json";

/// Validates each file against `schema`: `Ok` or the validator's messages,
/// one line each (`/json/pointer: message`), in the order of `files`.
/// Panics when the validator cannot run: a missing tool is a failure,
/// never a skip.
pub fn validate(schema: &Path, files: &[PathBuf]) -> Vec<Result<(), String>> {
    let script = repo().join("tests/support/schema_validate.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(schema)
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 (needed to validate against the JSON Schema): {e}")
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{} failed ({}): {stderr}",
        script.display(),
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    files
        .iter()
        .map(|file| {
            let name = file.display().to_string();
            let ok = format!("ok {name}");
            let invalid = format!("invalid {name}: ");
            let errors: Vec<&str> = stdout
                .lines()
                .filter_map(|l| l.strip_prefix(&invalid))
                .collect();
            match (stdout.lines().any(|l| l == ok), errors.is_empty()) {
                (true, true) => Ok(()),
                (false, false) => Err(errors.join("\n")),
                _ => panic!("no verdict for {name} in the validator's output:\n{stdout}{stderr}"),
            }
        })
        .collect()
}

/// [`validate`] for texts: each is written to a file named after it first.
pub fn validate_texts(schema: &Path, texts: &[(&str, &str)]) -> Vec<Result<(), String>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let files: Vec<PathBuf> = texts
        .iter()
        .enumerate()
        .map(|(i, (name, text))| {
            let safe: String = name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            let path = dir.path().join(format!("{i}-{safe}.yaml"));
            std::fs::write(&path, text).expect("write");
            path
        })
        .collect();
    validate(schema, &files)
}
