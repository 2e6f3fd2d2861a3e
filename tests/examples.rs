//! No example can rot: every YAML and JSON file under `examples/` must
//! parse, every kaname config there must pass `kaname check` with no
//! warning, and the deployment examples must agree with the configs they
//! ship (ports, probes, grace periods, metric names).
//!
//! Which YAML is a kaname config: any YAML document with a top-level
//! `listeners:` key (the one key every kaname config has and no Kubernetes,
//! compose or Prometheus file does), and any such document embedded as a
//! `*.yaml` / `*.yml` value of a Kubernetes ConfigMap's `data`. Files named
//! `kaname*.yaml` must be configs (a guard against the rule missing one);
//! the Prometheus files beside them end in `.yml` (`kaname-rules.yml`).
//!
//! Placeholders: `{UPPER}` (the `kaname demo` template, examples/demo.yaml)
//! is replaced by a port (`kaname check` binds none); `${VAR}` without a
//! default is set from `EXAMPLE_ENV` for the `kaname check` process. `kaname check` runs in the
//! config's directory; a directory with a `make-certs.sh` (examples/mtls) gets
//! its certificates made first, in a temporary copy.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use saphyr::{LoadableYamlNode, YamlOwned as Yaml};
use support::KANAME;

/// Values for `${VAR}` references without a default in example configs.
const EXAMPLE_ENV: &[(&str, &str)] = &[
    ("JWT_SECRET", "example-secret-at-least-32-bytes-long"),
    ("ADMIN_TOKEN", "example-admin-token"),
    ("REDIS_PASSWORD", "example-redis-password"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn examples_dir() -> PathBuf {
    repo().join("examples")
}

/// Every file under `dir`, recursively, sorted.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn ext(path: &Path) -> &str {
    path.extension().and_then(|e| e.to_str()).unwrap_or("")
}

fn is_yaml(path: &Path) -> bool {
    matches!(ext(path), "yaml" | "yml")
}

fn rel(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn load_yaml(name: &str, text: &str) -> Vec<Yaml> {
    Yaml::load_from_str(text).unwrap_or_else(|e| panic!("{name}: invalid YAML: {e}"))
}

fn get<'a>(node: &'a Yaml, path: &[&str]) -> Option<&'a Yaml> {
    let mut node = node;
    for key in path {
        node = node.as_mapping_get(key)?;
    }
    Some(node)
}

fn get_str<'a>(node: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    get(node, path)?.as_str()
}

fn is_kaname_config(doc: &Yaml) -> bool {
    doc.as_mapping_get("listeners").is_some()
}

/// A kaname config found in examples/: where it came from and its text.
struct FoundConfig {
    origin: String,
    text: String,
    /// The file itself, when the config is a whole file (checked in place so
    /// errors name the real file and line).
    path: Option<PathBuf>,
    /// The directory it lives in.
    dir: PathBuf,
}

/// Every kaname config under examples/, whole files and ConfigMap entries.
fn kaname_configs() -> Vec<FoundConfig> {
    let mut found = Vec::new();
    for path in walk(&examples_dir()).into_iter().filter(|p| is_yaml(p)) {
        let text = read(&path);
        let filled = fill_placeholders(&text);
        let docs = load_yaml(&rel(&path), filled.as_deref().unwrap_or(&text));
        let named_kaname = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("kaname") && n.ends_with(".yaml"));
        if docs.len() == 1 && is_kaname_config(&docs[0]) {
            found.push(FoundConfig {
                origin: rel(&path),
                text,
                path: Some(path.clone()),
                dir: path.parent().expect("parent").to_path_buf(),
            });
            continue;
        }
        assert!(
            !named_kaname || docs.iter().any(|d| get_str(d, &["kind"]).is_some()),
            "{}: named kaname* but not a kaname config (no top-level listeners:)",
            rel(&path)
        );
        for doc in &docs {
            if get_str(doc, &["kind"]) != Some("ConfigMap") {
                continue;
            }
            let name = get_str(doc, &["metadata", "name"]).unwrap_or("?");
            let Some(data) = get(doc, &["data"]).and_then(|d| d.as_mapping()) else {
                continue;
            };
            for (key, value) in data {
                let (Some(key), Some(value)) = (key.as_str(), value.as_str()) else {
                    continue;
                };
                if !(key.ends_with(".yaml") || key.ends_with(".yml")) {
                    continue;
                }
                let origin = format!("{} (ConfigMap {name}, {key})", rel(&path));
                let inner = load_yaml(&origin, value);
                if inner.len() == 1 && is_kaname_config(&inner[0]) {
                    found.push(FoundConfig {
                        origin,
                        text: value.to_string(),
                        path: None,
                        dir: path.parent().expect("parent").to_path_buf(),
                    });
                }
            }
        }
    }
    found
}

/// `{UPPER}` placeholders, replaced by distinct ports.
fn fill_placeholders(text: &str) -> Option<String> {
    let re = regex::Regex::new(r"\{([A-Z][A-Z0-9_]*)\}").expect("regex");
    let names: BTreeSet<String> = re
        .captures_iter(text)
        // `${VAR}` is an environment reference, not a template placeholder.
        .filter(|c| {
            let start = c.get(0).expect("match").start();
            start == 0 || &text[start - 1..start] != "$"
        })
        .map(|c| c[1].to_string())
        .collect();
    if names.is_empty() {
        return None;
    }
    // `kaname check` binds nothing: any distinct ports do.
    let mut out = text.to_string();
    for (i, name) in names.into_iter().enumerate() {
        out = out.replace(&format!("{{{name}}}"), &(19_000 + i).to_string());
    }
    Some(out)
}

/// `${VAR}` references without a default.
fn required_env(text: &str) -> Vec<String> {
    let re = regex::Regex::new(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}").expect("regex");
    re.captures_iter(text).map(|c| c[1].to_string()).collect()
}

/// An example directory with this script needs its certificates made
/// before its configs can be checked (they are not committed).
const MAKE_CERTS: &str = "make-certs.sh";

fn make_certs(script: &Path, out: &Path) {
    let run = Command::new("sh")
        .arg(script)
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        run.status.success(),
        "{} failed (needs openssl): {}",
        rel(script),
        String::from_utf8_lossy(&run.stderr)
    );
}

fn run_check(path: &Path, cwd: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(KANAME);
    cmd.current_dir(cwd)
        .arg("check")
        .arg("-c")
        .arg(path)
        .env_remove("KANAME_CONFIG")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run kaname check")
}

#[test]
fn every_yaml_and_json_file_under_examples_parses() {
    let files = walk(&examples_dir());
    let mut yaml = 0;
    let mut json = 0;
    for path in &files {
        let text = read(path);
        if is_yaml(path) {
            // A template (examples/demo.yaml) is YAML once its placeholders
            // are filled, as `kaname demo` does.
            let text = fill_placeholders(&text).unwrap_or(text);
            let docs = load_yaml(&rel(path), &text);
            assert!(!docs.is_empty(), "{}: no YAML document", rel(path));
            for (i, doc) in docs.iter().enumerate() {
                assert!(
                    !doc.is_badvalue() && !doc.is_null(),
                    "{}: document {i} is empty or invalid",
                    rel(path)
                );
            }
            yaml += 1;
        } else if ext(path) == "json" {
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", rel(path)));
            json += 1;
        }
    }
    // The walk found the examples: a broken walk must not pass silently.
    assert!(yaml >= 15, "only {yaml} YAML files found under examples/");
    assert!(json >= 2, "only {json} JSON files found under examples/");
}

#[test]
fn multi_document_yaml_is_read_whole() {
    let docs = load_yaml(
        "service.yaml",
        &read(&examples_dir().join("kubernetes/service.yaml")),
    );
    let kinds: Vec<_> = docs.iter().filter_map(|d| get_str(d, &["kind"])).collect();
    assert_eq!(kinds, ["Service", "Service"]);
}

#[test]
fn every_kaname_config_under_examples_passes_check() {
    let configs = kaname_configs();
    let origins: Vec<&str> = configs.iter().map(|c| c.origin.as_str()).collect();
    for expected in [
        "examples/quickstart.yaml",
        "examples/demo.yaml",
        "examples/compose/kaname-orders.yaml",
        "examples/compose/kaname-payments.yaml",
        "examples/kubernetes/configmap.yaml (ConfigMap orders-kaname, kaname.yaml)",
    ] {
        assert!(
            origins.contains(&expected),
            "{expected} not recognised as a kaname config; found {origins:?}"
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let mounts = mounted_dirs(dir.path());
    let mut mounted = BTreeSet::new();
    for (i, config) in configs.iter().enumerate() {
        let env: Vec<(&str, &str)> = required_env(&config.text)
            .iter()
            .map(|name| {
                *EXAMPLE_ENV
                    .iter()
                    .find(|(k, _)| k == name)
                    .unwrap_or_else(|| {
                        panic!(
                            "{}: ${{{name}}} has no default; add a value to EXAMPLE_ENV",
                            config.origin
                        )
                    })
            })
            .collect();
        let mut filled = fill_placeholders(&config.text);
        // Files the deployment mounts (a JWKS from a Secret or a compose
        // volume): the config names them where the container sees them.
        for (inside, host) in &mounts {
            let text = filled.as_deref().unwrap_or(&config.text);
            let inside = format!("{inside}/");
            if text.contains(&inside) {
                mounted.insert(config.origin.clone());
                filled = Some(text.replace(&inside, &format!("{}/", host.display())));
            }
        }
        // Relative paths in a config (certificates) are relative to the
        // directory it is run from: its own, as the examples' READMEs say.
        let mut cwd = config.dir.clone();
        let path = match (&config.path, filled) {
            (Some(path), None) if !config.dir.join(MAKE_CERTS).exists() => path.clone(),
            (_, filled) => {
                let work = dir.path().join(format!("example-{i}"));
                std::fs::create_dir(&work).expect("mkdir");
                if config.dir.join(MAKE_CERTS).exists() {
                    make_certs(&config.dir.join(MAKE_CERTS), &work.join("certs"));
                    cwd = work.clone();
                }
                let name = config
                    .path
                    .as_ref()
                    .and_then(|p| p.file_name())
                    .map_or_else(|| "kaname.yaml".into(), |n| n.to_os_string());
                let path = work.join(name);
                std::fs::write(&path, filled.unwrap_or_else(|| config.text.clone()))
                    .expect("write config");
                path
            }
        };
        let out = run_check(&path, &cwd, &env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains(": ok ("),
            "kaname check failed on {} ({}):\n{stdout}{stderr}",
            config.origin,
            out.status
        );
        assert!(
            !stderr.contains("warning"),
            "kaname check warns about {}:\n{stderr}",
            config.origin
        );
        eprintln!("kaname check ok: {}", config.origin);
    }
    // Issue 24: one Kubernetes example and the compose example take their
    // jwt filter's keys from a mounted JWKS file.
    for expected in [
        "examples/compose/kaname-orders.yaml",
        "examples/kubernetes/configmap.yaml (ConfigMap orders-kaname, kaname.yaml)",
    ] {
        assert!(
            mounted.contains(expected),
            "{expected} reads no mounted file; mounts: {mounts:?}"
        );
    }
}

/// Directories the examples' deployments mount beside the config, as
/// (path in the container, where the test has the same files): compose's
/// directory volumes, and the Kubernetes sidecar's Secret volumes with the
/// Secret's `stringData` written under `scratch`.
fn mounted_dirs(scratch: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let compose_dir = examples_dir().join("compose");
    let compose = &load_yaml("compose.yaml", &read(&compose_dir.join("compose.yaml")))[0];
    if let Some(services) = get(compose, &["services"]).and_then(|s| s.as_mapping()) {
        for (_, service) in services {
            for volume in seq(service.as_mapping_get("volumes")) {
                let spec = volume.as_str().unwrap_or_default();
                let mut parts = spec.split(':');
                let (Some(host), Some(inside)) = (parts.next(), parts.next()) else {
                    continue;
                };
                let host = compose_dir.join(host);
                if host.is_dir() {
                    out.push((inside.to_string(), host));
                }
            }
        }
    }
    let k8s = examples_dir().join("kubernetes");
    let secrets = load_yaml("secret.yaml", &read(&k8s.join("secret.yaml")));
    let deploy = &load_yaml("deployment.yaml", &read(&k8s.join("deployment.yaml")))[0];
    let pod = get(deploy, &["spec", "template", "spec"]).expect("pod spec");
    let volumes = seq(pod.as_mapping_get("volumes"));
    for container in seq(pod.as_mapping_get("initContainers")) {
        for mount in seq(container.as_mapping_get("volumeMounts")) {
            let name = get_str(&mount, &["name"]).expect("volumeMount name");
            let inside = get_str(&mount, &["mountPath"]).expect("mountPath");
            let Some(secret_name) = volumes
                .iter()
                .find(|v| get_str(v, &["name"]) == Some(name))
                .and_then(|v| get_str(v, &["secret", "secretName"]))
            else {
                continue;
            };
            let secret = secrets
                .iter()
                .find(|s| get_str(s, &["metadata", "name"]) == Some(secret_name))
                .unwrap_or_else(|| {
                    panic!("deployment.yaml mounts Secret {secret_name}, which secret.yaml lacks")
                });
            let host = scratch.join(format!("secret-{secret_name}"));
            std::fs::create_dir_all(&host).expect("mkdir");
            let data = get(secret, &["stringData"]).and_then(|d| d.as_mapping());
            for (key, value) in data.into_iter().flatten() {
                let (Some(key), Some(value)) = (key.as_str(), value.as_str()) else {
                    continue;
                };
                std::fs::write(host.join(key), value).expect("write Secret file");
            }
            out.push((inside.to_string(), host));
        }
    }
    out
}

/// The first line of a kaname config file under examples/: editors with
/// yaml-language-server check the file against the schema as it is typed.
const MODELINE: &str = "# yaml-language-server: $schema=";

#[test]
fn every_kaname_config_file_under_examples_names_the_schema() {
    let schema = support::schema::committed_schema()
        .canonicalize()
        .expect("docs/kaname.schema.json exists");
    let configs = kaname_configs();
    let files: Vec<&PathBuf> = configs.iter().filter_map(|c| c.path.as_ref()).collect();
    assert!(files.len() >= 8, "only {} config files", files.len());
    for path in &files {
        let text = read(path);
        let first = text.lines().next().unwrap_or("");
        let target = first.strip_prefix(MODELINE).unwrap_or_else(|| {
            panic!(
                "{}: the first line must be `{MODELINE}<path to docs/kaname.schema.json>`",
                rel(path)
            )
        });
        let resolved = path.parent().expect("parent").join(target);
        assert_eq!(
            resolved.canonicalize().ok().as_ref(),
            Some(&schema),
            "{}: {target} is not docs/kaname.schema.json",
            rel(path)
        );
    }
    // YAML that is not a kaname config does not claim the schema.
    for path in walk(&examples_dir()).into_iter().filter(|p| is_yaml(p)) {
        if !files.contains(&&path) {
            assert!(
                !read(&path).contains("kaname.schema.json"),
                "{} is not a kaname config but names its schema",
                rel(&path)
            );
        }
    }
}

#[test]
fn every_kaname_config_under_examples_matches_the_schema() {
    // ConfigMap entries too: the schema checks what kaname reads.
    let configs = kaname_configs();
    let texts: Vec<(String, String)> = configs
        .iter()
        .map(|c| {
            let text = fill_placeholders(&c.text).unwrap_or_else(|| c.text.clone());
            (c.origin.clone(), text)
        })
        .collect();
    let refs: Vec<(&str, &str)> = texts
        .iter()
        .map(|(o, t)| (o.as_str(), t.as_str()))
        .collect();
    let results = support::schema::validate_texts(&support::schema::committed_schema(), &refs);
    assert!(results.len() >= 9, "only {} configs", results.len());
    for ((origin, _), result) in texts.iter().zip(results) {
        if let Err(errors) = result {
            panic!("{origin} does not match docs/kaname.schema.json:\n{errors}");
        }
    }
}

#[test]
fn check_refuses_a_broken_example() {
    // The check above means something: a misspelt key in a shipped example
    // fails it, naming the line.
    let text = read(&examples_dir().join("quickstart.yaml"));
    assert!(text.contains("connect_timeout:"));
    let broken = text.replace("connect_timeout:", "conect_timeout:");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("kaname.yaml");
    std::fs::write(&path, broken).expect("write");
    let out = run_check(&path, dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("conect_timeout"), "stderr: {stderr}");
}

// === Kubernetes: the manifests agree with the config they ship ===

fn duration_secs(s: &str) -> u64 {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().unwrap_or_else(|_| panic!("duration {s:?}"));
    match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => panic!("duration {s:?}: unit"),
    }
}

fn port_of(listen: &str) -> u64 {
    listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {listen:?}"))
}

fn seq(node: Option<&Yaml>) -> Vec<Yaml> {
    node.and_then(|n| n.as_sequence())
        .cloned()
        .unwrap_or_default()
}

fn int(node: &Yaml, path: &[&str]) -> Option<u64> {
    get(node, path)?.as_integer().map(|i| i as u64)
}

#[test]
fn kubernetes_manifests_agree_with_the_sidecar_config() {
    let k8s = examples_dir().join("kubernetes");
    let cm = &load_yaml("configmap.yaml", &read(&k8s.join("configmap.yaml")))[0];
    let config_text = get_str(cm, &["data", "kaname.yaml"]).expect("data.kaname.yaml");
    let config = &load_yaml("kaname.yaml", config_text)[0];
    let admin_port = port_of(get_str(config, &["admin", "listen"]).expect("admin.listen"));
    let inbound_port =
        port_of(get_str(config, &["listeners", "inbound", "listen"]).expect("inbound listener"));
    let grace = duration_secs(get_str(config, &["shutdown_grace"]).unwrap_or("30s"));
    assert!(
        get_str(config, &["admin", "listen"]).is_some_and(|a| a.starts_with("0.0.0.0")),
        "probes reach the admin port on the pod IP: it must not listen on loopback only"
    );

    let deploy = &load_yaml("deployment.yaml", &read(&k8s.join("deployment.yaml")))[0];
    let pod = get(deploy, &["spec", "template", "spec"]).expect("pod spec");
    let tgp = int(pod, &["terminationGracePeriodSeconds"]).expect("terminationGracePeriodSeconds");
    assert!(
        tgp > grace,
        "terminationGracePeriodSeconds {tgp} <= shutdown_grace {grace}s"
    );

    // The sidecar: a native sidecar init container, probed on the admin port.
    let inits = seq(pod.as_mapping_get("initContainers"));
    let sidecar = inits
        .iter()
        .find(|c| get_str(c, &["name"]) == Some("kaname"))
        .expect("kaname init container");
    assert_eq!(get_str(sidecar, &["restartPolicy"]), Some("Always"));
    let ports: BTreeMap<String, u64> = seq(sidecar.as_mapping_get("ports"))
        .iter()
        .map(|p| {
            (
                get_str(p, &["name"]).expect("port name").to_string(),
                int(p, &["containerPort"]).expect("containerPort"),
            )
        })
        .collect();
    assert_eq!(ports.get("admin"), Some(&admin_port));
    assert_eq!(ports.get("http"), Some(&inbound_port));
    for (probe, path) in [
        ("startupProbe", "/ready"),
        ("readinessProbe", "/ready"),
        ("livenessProbe", "/live"),
    ] {
        let p = get(sidecar, &[probe, "httpGet"]).unwrap_or_else(|| panic!("{probe}"));
        assert_eq!(get_str(p, &["path"]), Some(path), "{probe}");
        assert_eq!(get_str(p, &["port"]), Some("admin"), "{probe}");
    }
    let mem_request = get_str(sidecar, &["resources", "requests", "memory"]).expect("request");
    let mem_limit = get_str(sidecar, &["resources", "limits", "memory"]).expect("limit");
    assert!(mem_request.ends_with("Mi") && mem_limit.ends_with("Mi"));
    let mount = seq(sidecar.as_mapping_get("volumeMounts"));
    assert_eq!(get_str(&mount[0], &["mountPath"]), Some("/etc/kaname"));

    let annotations =
        get(deploy, &["spec", "template", "metadata", "annotations"]).expect("annotations");
    assert_eq!(
        get_str(annotations, &["prometheus.io/scrape"]),
        Some("true")
    );
    assert_eq!(
        get_str(annotations, &["prometheus.io/port"]),
        Some(admin_port.to_string().as_str())
    );

    // The Service reaches the sidecar's inbound port, never the app's.
    let services = load_yaml("service.yaml", &read(&k8s.join("service.yaml")));
    let main = services
        .iter()
        .find(|s| get_str(s, &["metadata", "name"]) == Some("orders"))
        .expect("Service orders");
    let target = int(&seq(get(main, &["spec", "ports"]))[0], &["targetPort"]).expect("targetPort");
    assert_eq!(target, inbound_port);

    // The ServiceMonitor selects the admin Service and scrapes its admin port.
    let admin_svc = services
        .iter()
        .find(|s| get_str(s, &["metadata", "name"]) == Some("orders-kaname-admin"))
        .expect("Service orders-kaname-admin");
    let sm = &load_yaml(
        "servicemonitor.yaml",
        &read(&k8s.join("servicemonitor.yaml")),
    )[0];
    let component = get_str(
        sm,
        &[
            "spec",
            "selector",
            "matchLabels",
            "app.kubernetes.io/component",
        ],
    );
    assert_eq!(
        component,
        get_str(
            admin_svc,
            &["metadata", "labels", "app.kubernetes.io/component"]
        )
    );
    let endpoint = &seq(get(sm, &["spec", "endpoints"]))[0];
    assert_eq!(get_str(endpoint, &["port"]), Some("admin"));
    assert_eq!(get_str(endpoint, &["path"]), Some("/metrics"));
}

#[test]
fn compose_mounts_existing_files() {
    let compose_dir = examples_dir().join("compose");
    let compose = &load_yaml("compose.yaml", &read(&compose_dir.join("compose.yaml")))[0];
    let services = get(compose, &["services"])
        .and_then(|s| s.as_mapping())
        .expect("services");
    let mut sidecars = 0;
    for (name, svc) in services {
        for volume in seq(svc.as_mapping_get("volumes")) {
            let spec = volume.as_str().expect("short volume syntax");
            let host = spec.split(':').next().expect("host path");
            let path = compose_dir.join(host);
            assert!(
                path.exists(),
                "{name:?} mounts {host}, which does not exist"
            );
            if spec.contains(":/etc/kaname/kaname.yaml") {
                sidecars += 1;
            }
        }
    }
    assert_eq!(sidecars, 2, "two services, each behind a kaname sidecar");
}

// === The Dockerfile builds what CI tests ===

#[test]
fn dockerfile_builds_what_ci_tests() {
    let dockerfile = read(&repo().join("Dockerfile"));
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert!(
        instructions
            .iter()
            .any(|l| l.trim_end_matches('\\').trim()
                == "cargo build --profile dist --locked -p kaname"),
        "the build step must be exactly `cargo build --profile dist --locked -p kaname`"
    );
    assert!(
        instructions.contains(&"COPY --from=build /src/target/dist/kaname /usr/local/bin/kaname"),
        "the image ships the dist build (release without debug info)"
    );
    let manifest = read(&repo().join("Cargo.toml"));
    assert!(
        manifest.contains("[profile.dist]\ninherits = \"release\"\nstrip = \"debuginfo\""),
        "Cargo.toml's dist profile is the release build stripped of debug info"
    );
    let from: Vec<&&str> = instructions
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(
        from.last().is_some_and(|l| l.contains("distroless")),
        "{from:?}"
    );
    assert!(instructions.contains(&"USER 65532:65532"));
    assert!(instructions.contains(&"EXPOSE 9901"));
    assert!(instructions.contains(
        &r#"ENTRYPOINT ["/usr/local/bin/kaname", "run", "-c", "/etc/kaname/kaname.yaml"]"#
    ));
    let ci = read(&repo().join(".ci/run"));
    assert!(
        ci.lines().any(|l| l.starts_with("cargo clippy --locked")),
        "CI checks the Cargo.lock the image builds with (--locked)"
    );
    let ignore = read(&repo().join(".dockerignore"));
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
    assert!(
        !ignore
            .lines()
            .any(|l| ["examples/", "tests/", "Cargo.lock"].contains(&l.trim())),
        "the build needs Cargo.lock, examples/demo.yaml and the [[test]] paths"
    );
}

// === Rules and dashboard name only families kaname exports ===

/// Family names registered in filters/src/metrics.rs and
/// proxy/src/metrics.rs (one registry), plus process_*.
fn registered_families() -> BTreeSet<String> {
    let src =
        read(&repo().join("filters/src/metrics.rs")) + &read(&repo().join("proxy/src/metrics.rs"));
    let re = regex::Regex::new(r#""(kaname_[a-z_]+)""#).expect("regex");
    re.captures_iter(&src).map(|c| c[1].to_string()).collect()
}

fn referenced_families(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"\b(kaname_[a-z_]+|process_[a-z_]+)").expect("regex");
    re.captures_iter(text).map(|c| c[1].to_string()).collect()
}

#[test]
fn rules_and_dashboard_use_only_exported_metric_names() {
    let families = registered_families();
    assert!(families.len() >= 25, "{families:?}");
    // What prometheus' process collector exports.
    let process = [
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_virtual_memory_bytes",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_threads",
    ];
    let mut files = vec![
        examples_dir().join("prometheus/kaname-rules.yml"),
        examples_dir().join("prometheus/kaname-rules.test.yml"),
        examples_dir().join("grafana/kaname-dashboard.json"),
    ];
    files.extend(
        walk(&repo().join("docs"))
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n == "observability.md")),
    );
    for file in files {
        for name in referenced_families(&read(&file)) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| families.contains(*b))
                .unwrap_or(&name);
            assert!(
                families.contains(base) || process.contains(&base),
                "{} names {name}, which kaname does not export",
                rel(&file)
            );
        }
    }
}

// === The admin token: set where the sidecars run, sent where they are scraped ===

#[test]
fn scrapers_send_the_admin_token_the_sidecars_expect() {
    // Compose: both sidecars get ADMIN_TOKEN from compose.yaml, Prometheus
    // sends the same value, and each sidecar allows the name it is scraped by.
    let compose_dir = examples_dir().join("compose");
    let compose = &load_yaml("compose.yaml", &read(&compose_dir.join("compose.yaml")))[0];
    let prometheus = &load_yaml("prometheus.yml", &read(&compose_dir.join("prometheus.yml")))[0];
    let job = &seq(get(prometheus, &["scrape_configs"]))[0];
    let sent = get_str(job, &["authorization", "credentials"]).expect("authorization.credentials");
    let targets: Vec<String> = seq(job.as_mapping_get("static_configs"))
        .iter()
        .flat_map(|c| seq(c.as_mapping_get("targets")))
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    for (service, config) in [
        ("orders", "kaname-orders.yaml"),
        ("payments", "kaname-payments.yaml"),
    ] {
        let sidecar = get(compose, &["services", &format!("{service}-kaname")]).expect("sidecar");
        assert_eq!(
            get_str(sidecar, &["environment", "ADMIN_TOKEN"]),
            Some(sent),
            "{service}-kaname's ADMIN_TOKEN is not what prometheus.yml sends"
        );
        let cfg = &load_yaml(config, &read(&compose_dir.join(config)))[0];
        assert_eq!(
            get_str(cfg, &["admin", "token"]),
            Some("${ADMIN_TOKEN}"),
            "{config}"
        );
        let allowed: Vec<String> = seq(get(cfg, &["admin", "allowed_hosts"]))
            .iter()
            .filter_map(|h| h.as_str().map(str::to_string))
            .collect();
        let port = port_of(get_str(cfg, &["admin", "listen"]).expect("admin.listen"));
        assert!(
            targets.contains(&format!("{service}:{port}")),
            "prometheus.yml does not scrape {service}:{port}: {targets:?}"
        );
        assert!(
            allowed.iter().any(|h| h == service),
            "{config}: Prometheus scrapes it as {service}:{port}, not in admin.allowed_hosts {allowed:?}"
        );
    }

    // Kubernetes: the Secret the Deployment reads ADMIN_TOKEN from is the
    // one the ServiceMonitor sends.
    let k8s = examples_dir().join("kubernetes");
    let cm = &load_yaml("configmap.yaml", &read(&k8s.join("configmap.yaml")))[0];
    let config_text = get_str(cm, &["data", "kaname.yaml"]).expect("data.kaname.yaml");
    let config = &load_yaml("kaname.yaml", config_text)[0];
    assert_eq!(get_str(config, &["admin", "token"]), Some("${ADMIN_TOKEN}"));
    let secret = &load_yaml("secret.yaml", &read(&k8s.join("secret.yaml")))[0];
    assert_eq!(get_str(secret, &["kind"]), Some("Secret"));
    let secret_name = get_str(secret, &["metadata", "name"]).expect("Secret name");
    assert!(
        get_str(secret, &["stringData", "token"]).is_some(),
        "secret.yaml: no token"
    );
    let deploy = &load_yaml("deployment.yaml", &read(&k8s.join("deployment.yaml")))[0];
    let pod = get(deploy, &["spec", "template", "spec"]).expect("pod spec");
    let inits = seq(pod.as_mapping_get("initContainers"));
    let sidecar = inits
        .iter()
        .find(|c| get_str(c, &["name"]) == Some("kaname"))
        .expect("kaname init container");
    let env = seq(sidecar.as_mapping_get("env"));
    let token = env
        .iter()
        .find(|e| get_str(e, &["name"]) == Some("ADMIN_TOKEN"))
        .expect("ADMIN_TOKEN in the sidecar's env");
    let from = get(token, &["valueFrom", "secretKeyRef"]).expect("ADMIN_TOKEN from a Secret");
    assert_eq!(get_str(from, &["name"]), Some(secret_name));
    assert_eq!(get_str(from, &["key"]), Some("token"));
    let sm = &load_yaml(
        "servicemonitor.yaml",
        &read(&k8s.join("servicemonitor.yaml")),
    )[0];
    let endpoint = &seq(get(sm, &["spec", "endpoints"]))[0];
    let credentials = get(endpoint, &["authorization", "credentials"]).expect("authorization");
    assert_eq!(get_str(credentials, &["name"]), Some(secret_name));
    assert_eq!(get_str(credentials, &["key"]), Some("token"));
    let kustomization = &load_yaml("kustomization.yaml", &read(&k8s.join("kustomization.yaml")))[0];
    assert!(
        seq(kustomization.as_mapping_get("resources"))
            .iter()
            .any(|r| r.as_str() == Some("secret.yaml")),
        "kustomization.yaml does not apply secret.yaml"
    );
    let scrape = &load_yaml(
        "kubernetes-scrape.yaml",
        &read(&examples_dir().join("prometheus/kubernetes-scrape.yaml")),
    )[0];
    let job = &seq(get(scrape, &["scrape_configs"]))[0];
    assert!(
        get_str(job, &["authorization", "credentials_file"]).is_some(),
        "kubernetes-scrape.yaml sends no admin token"
    );
}
