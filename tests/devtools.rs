//! End-to-end tests of `kaname keys` and `kaname token`: keys and tokens
//! made by the real binary, checked by a sidecar (jsonwebtoken verifies
//! there) and by openssl (an independent implementation of every
//! signature and of the public keys), and `kaname demo`'s token line.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::Request;
use serde_json::{json, Value};
use support::{empty, HttpClient, Kaname, TestResponse, TestUpstream, KANAME, READY_DEADLINE};
use tokio::io::{AsyncBufReadExt, BufReader};

const ISSUER: &str = "https://issuer.devtools.test";
/// How long one `kaname keys` / `kaname token` run may take (RSA
/// generation included).
const RUN_DEADLINE: Duration = Duration::from_secs(30);

// === running the commands ===

/// `kaname ARGS…` with `env`; KANAME_CONFIG and RUST_LOG removed first.
async fn kaname(args: &[&str], env: &[(&str, &str)]) -> Output {
    kaname_in(Path::new("."), args, env).await
}

/// `kaname` run in directory `dir`.
async fn kaname_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(KANAME);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("KANAME_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    match tokio::time::timeout(RUN_DEADLINE, cmd.output()).await {
        Ok(out) => out.expect("run kaname"),
        Err(_) => panic!("kaname {args:?} still running after {RUN_DEADLINE:?}"),
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `kaname keys --alg ALG --kid KID --out DIR`, which must succeed.
async fn keys(alg: &str, kid: &str, dir: &Path) -> String {
    let out = kaname(
        &["keys", "--alg", alg, "--kid", kid, "--out", &path(dir)],
        &[],
    )
    .await;
    assert!(
        out.status.success(),
        "kaname keys {alg} {kid}: {:?}\n{}",
        out.status,
        stderr(&out)
    );
    stdout(&out)
}

/// Runs `kaname token ARGS…`, which must succeed; the token it printed.
async fn token(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    let out = kaname(&all, env).await;
    assert!(
        out.status.success(),
        "kaname token {args:?}: {:?}\n{}",
        out.status,
        stderr(&out)
    );
    let text = stdout(&out);
    let token = text.trim_end_matches('\n');
    assert!(
        !token.contains('\n') && token.split('.').count() == 3,
        "not one JWT on stdout: {text:?}"
    );
    token.to_string()
}

/// A failing run: its exit code, and stderr (stdout must be empty).
async fn fails(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = kaname(args, env).await;
    assert!(
        !out.status.success(),
        "kaname {args:?} succeeded: {}",
        stdout(&out)
    );
    assert_eq!(stdout(&out), "", "kaname {args:?} printed on stdout");
    (out.status.code().unwrap_or(-1), stderr(&out))
}

fn path(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}

// === reading tokens and JWKS ===

fn b64(segment: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(segment).expect("base64url")
}

/// Segment `i` of a JWT (0 header, 1 payload) as JSON.
fn segment(token: &str, i: usize) -> Value {
    let seg = token.split('.').nth(i).expect("segment");
    serde_json::from_slice(&b64(seg)).expect("segment JSON")
}

fn jwks_doc(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("jwks.json")).expect("read jwks.json");
    let doc: Value = serde_json::from_str(&text).expect("jwks.json is JSON");
    doc["keys"].as_array().expect("keys array").clone()
}

fn jwk<'a>(keys: &'a [Value], kid: &str) -> &'a Value {
    keys.iter()
        .find(|k| k["kid"] == kid)
        .unwrap_or_else(|| panic!("no kid {kid} in {keys:?}"))
}

/// A JWK with its public key values (`n`, `x`, `y`) replaced by `…`, so
/// the rest compares whole: no private member (`d`, `p`, …) may be there.
fn without_key_material(jwk: &Value) -> Value {
    let mut jwk = jwk.clone();
    for member in ["n", "x", "y"] {
        if let Some(v) = jwk.get_mut(member) {
            assert!(v.as_str().is_some_and(|s| s.len() >= 43), "{member}: {v}");
            *v = json!("…");
        }
    }
    jwk
}

// === openssl: the independent check ===

fn openssl(args: &[&str]) -> std::process::Output {
    std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (apt-get install openssl)")
}

/// The public key of a private key file as SubjectPublicKeyInfo DER, as
/// openssl reads it.
fn openssl_spki(pem: &Path) -> Vec<u8> {
    let out = openssl(&["pkey", "-in", &path(pem), "-pubout", "-outform", "DER"]);
    assert!(out.status.success(), "openssl pkey: {}", stderr(&out));
    out.stdout
}

/// JWS's fixed-size r‖s as the DER ECDSA-Sig-Value openssl reads.
fn ecdsa_der(raw: &[u8]) -> Vec<u8> {
    fn int(b: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = b.iter().copied().skip_while(|&x| x == 0).collect();
        if v.first().is_none_or(|&x| x & 0x80 != 0) {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, u8::try_from(v.len()).expect("short int")];
        out.extend(v);
        out
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30, u8::try_from(body.len()).expect("short seq")];
    out.extend(body);
    out
}

/// Whether openssl verifies `token`'s signature with the public half of
/// the private key file `pem`.
fn openssl_verifies(token: &str, pem: &Path) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let (input, sig) = token.rsplit_once('.').expect("signature");
    let msg = dir.path().join("msg");
    let sig_path = dir.path().join("sig");
    let public = dir.path().join("pub.pem");
    std::fs::write(&msg, input).expect("write msg");
    let out = openssl(&["pkey", "-in", &path(pem), "-pubout", "-out", &path(&public)]);
    assert!(out.status.success(), "openssl pkey: {}", stderr(&out));
    let alg = segment(token, 0)["alg"].as_str().expect("alg").to_string();
    let sig = b64(sig);
    let (msg, sig_file, public) = (path(&msg), path(&sig_path), path(&public));
    let digest = format!("-sha{}", &alg[2..]);
    let out = match alg.as_str() {
        "EdDSA" => {
            std::fs::write(&sig_path, &sig).expect("write sig");
            openssl(&[
                "pkeyutl", "-verify", "-pubin", "-inkey", &public, "-rawin", "-in", &msg,
                "-sigfile", &sig_file,
            ])
        }
        a if a.starts_with("ES") => {
            std::fs::write(&sig_path, ecdsa_der(&sig)).expect("write sig");
            openssl(&[
                "dgst",
                &digest,
                "-verify",
                &public,
                "-signature",
                &sig_file,
                &msg,
            ])
        }
        a if a.starts_with("PS") => {
            std::fs::write(&sig_path, &sig).expect("write sig");
            // RFC 7518 §3.5: the salt is as long as the hash.
            let salt = format!(
                "rsa_pss_saltlen:{}",
                alg[2..].parse::<usize>().expect("bits") / 8
            );
            openssl(&[
                "dgst",
                &digest,
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                &salt,
                "-verify",
                &public,
                "-signature",
                &sig_file,
                &msg,
            ])
        }
        _ => {
            std::fs::write(&sig_path, &sig).expect("write sig");
            openssl(&[
                "dgst",
                &digest,
                "-verify",
                &public,
                "-signature",
                &sig_file,
                &msg,
            ])
        }
    };
    out.status.success()
}

/// The same token with one payload byte changed (and the signature kept).
fn tampered(token: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    let mut claims = segment(token, 1);
    claims["sub"] = json!("mallory");
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    parts.join(".")
}

// === the sidecar ===

/// One listener, a catch-all route through jwt filter `auth` (`jwt` under
/// it) to `up`, and a rate_limit filter `limit` that no route uses.
fn sidecar_config(up: &TestUpstream, jwt: &str) -> String {
    format!(
        "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - match: {{ path_prefix: / }}
        upstream: up
        filters: [auth]
upstreams:
  up:
    endpoints: [{}]
filters:
  limit:
    rate_limit: {{ key: client_ip, rate: 5/s }}
  auth:
    jwt:
{jwt}",
        up.addr
    )
}

async fn send(k: &Kaname, token: &str) -> TestResponse {
    let req = Request::get(k.url("main", "/api/x"))
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .expect("request");
    HttpClient::http1().send(req).await
}

/// The error_description of a refusal with this status and kaname-error.
fn refused(resp: &TestResponse, status: u16, kind: &str) -> String {
    resp.assert_kaname_error(status, kind);
    let challenge = resp.header("www-authenticate").unwrap_or_default();
    challenge
        .split("error_description=\"")
        .nth(1)
        .and_then(|d| d.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no error_description in {challenge:?}"))
        .to_string()
}

// === kaname keys → a JWKS the sidecar trusts ===

#[tokio::test]
async fn keys_runs_build_one_jwks_that_a_sidecar_trusts_and_rotates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys_dir = dir.path().join("keys");
    let out = keys("RS256", "k-rsa", &keys_dir).await;
    assert!(
        out.contains("k-rsa.pem") && out.contains("kids: k-rsa"),
        "{out}"
    );
    let out = keys("ES256", "k-ec", &keys_dir).await;
    assert!(out.contains("kids: k-rsa, k-ec"), "{out}");

    let set = jwks_doc(&keys_dir);
    assert_eq!(set.len(), 2);
    assert_eq!(
        without_key_material(jwk(&set, "k-rsa")),
        json!({"kty": "RSA", "kid": "k-rsa", "alg": "RS256", "use": "sig", "e": "AQAB", "n": "…"})
    );
    assert_eq!(
        without_key_material(jwk(&set, "k-ec")),
        json!({"kty": "EC", "kid": "k-ec", "alg": "ES256", "use": "sig", "crv": "P-256", "x": "…", "y": "…"})
    );
    for kid in ["k-rsa", "k-ec"] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(keys_dir.join(format!("{kid}.pem")))
            .expect("pem")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{kid}.pem mode {mode:o}");
    }

    let up = TestUpstream::start("up").await;
    let jwt = format!(
        "      issuer: {ISSUER}
      audiences: [orders]
      algorithms: [RS256, ES256, EdDSA]
      jwks: {{ file: {} }}
      required_claims: [sub]
      forward_claims: {{ sub: x-user-id, roles: x-roles }}
",
        path(&keys_dir.join("jwks.json"))
    );
    let k = Kaname::start(&sidecar_config(&up, &jwt)).await;
    let sign = |kid: &'static str, pem: PathBuf| {
        let pem = path(&pem);
        async move {
            token(
                &[
                    "--key",
                    &pem,
                    "--kid",
                    kid,
                    "--iss",
                    ISSUER,
                    "--aud",
                    "orders",
                    "--sub",
                    kid,
                    "--claim",
                    r#"roles=["admin","ops"]"#,
                ],
                &[],
            )
            .await
        }
    };
    for kid in ["k-rsa", "k-ec"] {
        let t = sign(kid, keys_dir.join(format!("{kid}.pem"))).await;
        let resp = send(&k, &t).await;
        assert_eq!(resp.status, 200, "{kid}: {}", resp.text());
        let seen = up.last();
        assert_eq!(seen.header("x-user-id"), Some(kid));
        // A JSON array claim reaches the upstream (space-joined, as
        // forward_claims writes lists).
        assert_eq!(seen.header("x-roles"), Some("admin ops"), "{kid}");
    }

    // Rotation while the sidecar runs: a third key in the same file; a
    // token naming the new kid makes the filter read the file again.
    let out = keys("EdDSA", "k-ed", &keys_dir).await;
    assert!(out.contains("kids: k-rsa, k-ec, k-ed"), "{out}");
    assert_eq!(
        without_key_material(jwk(&jwks_doc(&keys_dir), "k-ed")),
        json!({"kty": "OKP", "kid": "k-ed", "alg": "EdDSA", "use": "sig", "crv": "Ed25519", "x": "…"})
    );
    let t = sign("k-ed", keys_dir.join("k-ed.pem")).await;
    assert_eq!(segment(&t, 0)["alg"], "EdDSA");
    let resp = send(&k, &t).await;
    assert_eq!(resp.status, 200, "k-ed after rotation: {}", resp.text());
    assert_eq!(up.last().header("x-user-id"), Some("k-ed"));

    // A key not in the set: made elsewhere, under a kid the set knows.
    let elsewhere = dir.path().join("elsewhere");
    keys("ES256", "k-ec", &elsewhere).await;
    let forged = sign("k-ec", elsewhere.join("k-ec.pem")).await;
    assert_eq!(
        refused(&send(&k, &forged).await, 401, "unauthenticated"),
        "invalid signature"
    );
    // ... and under a kid it does not know.
    keys("ES256", "stray", &elsewhere).await;
    let stray = sign("stray", elsewhere.join("stray.pem")).await;
    assert_eq!(
        refused(&send(&k, &stray).await, 401, "unauthenticated"),
        "no signing key matches the token's kid"
    );
    assert_eq!(
        up.recorded().len(),
        3,
        "only the three good tokens reached the upstream"
    );
}

// === every signature and key, checked by openssl ===

#[tokio::test]
async fn openssl_verifies_every_signature_and_public_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    for (alg, kid) in [
        ("RS256", "rsa"),
        ("ES256", "p256"),
        ("ES384", "p384"),
        ("EdDSA", "ed"),
    ] {
        keys(alg, kid, d).await;
    }
    let set = jwks_doc(d);

    // The JWKs are the public halves of the PEM files, as openssl reads them.
    let modulus = openssl(&[
        "rsa",
        "-in",
        &path(&d.join("rsa.pem")),
        "-noout",
        "-modulus",
    ]);
    let modulus = stdout(&modulus);
    let n_hex: String = b64(jwk(&set, "rsa")["n"].as_str().expect("n"))
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    assert_eq!(modulus.trim(), format!("Modulus={n_hex}"));
    for kid in ["p256", "p384"] {
        let key = jwk(&set, kid);
        let point = [
            vec![4u8],
            b64(key["x"].as_str().expect("x")),
            b64(key["y"].as_str().expect("y")),
        ]
        .concat();
        assert!(
            openssl_spki(&d.join(format!("{kid}.pem"))).ends_with(&point),
            "{kid}: the JWK's point is not the PEM's public key"
        );
    }
    let x = b64(jwk(&set, "ed")["x"].as_str().expect("x"));
    assert_eq!(x.len(), 32);
    assert!(openssl_spki(&d.join("ed.pem")).ends_with(&x));

    // Every algorithm's signature, by openssl; and a changed payload fails
    // the same check (so the check itself can fail).
    let cases = [
        ("rsa", "RS256"),
        ("rsa", "RS512"),
        ("rsa", "PS256"),
        ("rsa", "PS384"),
        ("p256", "ES256"),
        ("p384", "ES384"),
        ("ed", "EdDSA"),
    ];
    for (kid, alg) in cases {
        let pem = d.join(format!("{kid}.pem"));
        let t = token(&["--key", &path(&pem), "--alg", alg, "--sub", "s"], &[]).await;
        assert_eq!(segment(&t, 0), json!({"alg": alg, "typ": "JWT"}));
        assert!(openssl_verifies(&t, &pem), "openssl refuses {alg}: {t}");
        assert!(
            !openssl_verifies(&tampered(&t), &pem),
            "{alg}: tampered passes"
        );
    }

    // Keys openssl made, in its own formats, sign too.
    // PKCS#8 Ed25519, PKCS#1 "RSA PRIVATE KEY", SEC1 "EC PRIVATE KEY"; OUT
    // is the file.
    let made = [
        (
            "ed-openssl.pem",
            vec!["genpkey", "-algorithm", "ed25519", "-out", "OUT"],
            "EdDSA",
        ),
        (
            "rsa-pkcs1.pem",
            vec!["genrsa", "-traditional", "-out", "OUT", "2048"],
            "RS256",
        ),
        (
            "ec-sec1.pem",
            vec![
                "ecparam",
                "-genkey",
                "-noout",
                "-name",
                "prime256v1",
                "-out",
                "OUT",
            ],
            "ES256",
        ),
    ];
    for (file, args, alg) in made {
        let pem = d.join(file);
        let out_path = path(&pem);
        let args: Vec<&str> = args
            .into_iter()
            .map(|a| if a == "OUT" { out_path.as_str() } else { a })
            .collect();
        let out = openssl(&args);
        assert!(out.status.success(), "openssl {args:?}: {}", stderr(&out));
        let t = token(&["--key", &out_path], &[]).await;
        assert_eq!(segment(&t, 0)["alg"], alg, "{file}");
        assert!(openssl_verifies(&t, &pem), "{file}: openssl refuses {t}");
    }

    // HS256: the signature is the HMAC openssl computes with the secret.
    let secret = "an-hs256-secret-for-openssl-0123";
    let t = token(
        &["--secret-env", "DEVTOOLS_SECRET", "--sub", "s"],
        &[("DEVTOOLS_SECRET", secret)],
    )
    .await;
    let (input, sig) = t.rsplit_once('.').expect("sig");
    let msg = d.join("hs-msg");
    std::fs::write(&msg, input).expect("write");
    let mac_key = format!("key:{secret}");
    let out = openssl(&[
        "dgst",
        "-sha256",
        "-mac",
        "HMAC",
        "-macopt",
        &mac_key,
        "-binary",
        &path(&msg),
    ]);
    assert!(out.status.success(), "openssl dgst: {}", stderr(&out));
    assert_eq!(out.stdout, b64(sig), "HS256 signature");
}

// === -c FILE --filter NAME ===

#[tokio::test]
async fn a_token_for_a_config_filter_with_a_secret_from_the_environment() {
    let secret = "devtools-env-secret-of-32-bytes!";
    let env = [("DEVTOOLS_JWT_SECRET", secret)];
    let up = TestUpstream::start("up").await;
    let jwt = format!(
        "      issuer: {ISSUER}
      audiences: [orders, billing]
      algorithms: [HS256]
      secret: ${{DEVTOOLS_JWT_SECRET}}
      required_claims: [sub]
      forward_claims: {{ sub: x-user-id, roles: x-roles }}
"
    );
    let k = Kaname::start_with_env(&sidecar_config(&up, &jwt), &env).await;
    let cfg = path(&k.config_path);

    let t = token(
        &[
            "-c",
            &cfg,
            "--filter",
            "auth",
            "--sub",
            "alice",
            "--claim",
            r#"roles=["admin","ops"]"#,
        ],
        &env,
    )
    .await;
    assert_eq!(segment(&t, 0), json!({"alg": "HS256", "typ": "JWT"}));
    let claims = segment(&t, 1);
    assert_eq!(claims["iss"], ISSUER, "the filter's issuer");
    assert_eq!(claims["aud"], "orders", "the filter's first audience");
    assert_eq!(claims["roles"], json!(["admin", "ops"]));
    let (iat, exp) = (claims["iat"].as_u64(), claims["exp"].as_u64());
    assert_eq!(
        exp.zip(iat).map(|(e, i)| e - i),
        Some(3600),
        "default ttl 1h"
    );
    let resp = send(&k, &t).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = up.last();
    assert_eq!(seen.header("x-user-id"), Some("alice"));
    assert_eq!(seen.header("x-roles"), Some("admin ops"));

    // KANAME_CONFIG names the file when -c is not given; without --sub the
    // filter's required claim is missing: a warning, and the sidecar's 403.
    let out = kaname(
        &["token", "--filter", "auth"],
        &[("DEVTOOLS_JWT_SECRET", secret), ("KANAME_CONFIG", &cfg)],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out)
            .contains("warning: filter \"auth\" requires claim \"sub\", which the token lacks"),
        "{}",
        stderr(&out)
    );
    let no_sub = stdout(&out).trim().to_string();
    assert_eq!(
        refused(&send(&k, &no_sub).await, 403, "forbidden"),
        "token lacks the required claim sub"
    );

    // Another --aud and an expired exp: the sidecar says which is wrong.
    let t = token(
        &[
            "-c", &cfg, "--filter", "auth", "--sub", "a", "--aud", "shipping",
        ],
        &env,
    )
    .await;
    assert_eq!(
        refused(&send(&k, &t).await, 401, "unauthenticated"),
        "wrong audience"
    );
    let t = token(
        &[
            "-c", &cfg, "--filter", "auth", "--sub", "a", "--claim", "exp=1",
        ],
        &env,
    )
    .await;
    assert_eq!(
        refused(&send(&k, &t).await, 401, "unauthenticated"),
        "token expired"
    );
    assert_eq!(up.recorded().len(), 1, "only the good token was forwarded");
}

// === errors: exit code and message ===

/// A failing run: its arguments and environment, the exit code, a part of
/// its stderr.
type Case<'a> = (Vec<&'a str>, &'a [(&'a str, &'a str)], i32, String);

#[tokio::test]
async fn errors_name_the_problem_with_the_contract_exit_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    keys("ES256", "ec", d).await;
    let ec = path(&d.join("ec.pem"));
    let garbage = d.join("garbage.pem");
    std::fs::write(&garbage, "not a key\n").expect("write");
    let garbage = path(&garbage);
    let cfg = d.join("kaname.yaml");
    std::fs::write(
        &cfg,
        "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - match: { path_prefix: / }
        upstream: up
        filters: [auth, other-auth]
upstreams:
  up:
    endpoints: [127.0.0.1:9]
filters:
  limit:
    rate_limit: { key: client_ip, rate: 5/s }
  auth:
    jwt: { algorithms: [HS256], secret: \"${DEVTOOLS_CFG_SECRET}\" }
  other-auth:
    jwt: { algorithms: [HS256], secret: a-secret-of-at-least-32-bytes-here }
",
    )
    .expect("write config");
    let cfg = path(&cfg);
    let bad_cfg = d.join("bad.yaml");
    std::fs::write(&bad_cfg, "listeners:\n  main:\n    listen: nowhere\n").expect("write");
    let bad_cfg = path(&bad_cfg);
    let secret = [("S", "a-secret-of-at-least-32-bytes-here")];
    let cfg_env = [("DEVTOOLS_CFG_SECRET", "a-secret-of-at-least-32-bytes-here")];
    let out_dir = path(d);

    let cases: Vec<Case> = vec![
        (
            vec!["token", "--alg", "HS999", "--secret-env", "S"],
            &secret,
            2,
            "kaname token: unknown algorithm \"HS999\"; one of: HS256, HS384, HS512, RS256".into(),
        ),
        (
            vec!["token", "--alg", "HS256"],
            &[],
            2,
            "kaname token: HS256 signs with a shared secret: give --secret-env VAR".into(),
        ),
        (
            vec!["token", "--alg", "RS256"],
            &[],
            2,
            "kaname token: RS256 signs with a private key: give --key FILE.pem".into(),
        ),
        (
            vec!["token", "--secret-env", "DEVTOOLS_NOT_SET"],
            &[],
            2,
            "--secret-env DEVTOOLS_NOT_SET: the environment variable is not set".into(),
        ),
        (
            vec!["token", "--key", &garbage],
            &[],
            2,
            format!("kaname token: {garbage} holds no unencrypted private key"),
        ),
        (
            vec!["token", "--key", &ec, "--alg", "RS256"],
            &[],
            2,
            format!("kaname token: {ec} holds an EC P-256 key; RS256 needs an RSA key"),
        ),
        (
            vec!["token", "--key", &ec, "--secret-env", "S"],
            &secret,
            2,
            "cannot be used with".into(),
        ),
        (
            vec!["token", "--secret-env", "S", "--claim", "no-value"],
            &secret,
            2,
            "invalid --claim \"no-value\": expected NAME=VALUE".into(),
        ),
        (
            vec!["token", "-c", &cfg, "--filter", "limit"],
            &cfg_env,
            2,
            format!("{cfg}: filter \"limit\" is a rate_limit filter, not jwt; its jwt filters: auth, other-auth"),
        ),
        (
            vec!["token", "-c", &cfg, "--filter", "nope"],
            &cfg_env,
            2,
            "no filter named \"nope\"; its jwt filters: auth, other-auth".into(),
        ),
        (
            // The config does not load: its ${VAR} is not set.
            vec!["token", "-c", &cfg, "--filter", "other-auth"],
            &[],
            1,
            format!("{cfg}:15:41: environment variable \"DEVTOOLS_CFG_SECRET\" is not set"),
        ),
        (
            vec!["token", "-c", &bad_cfg, "--filter", "auth"],
            &[],
            1,
            format!("{bad_cfg}:3:13: "),
        ),
        (
            vec!["keys", "--alg", "HS256", "--kid", "x", "--out", &out_dir],
            &[],
            2,
            "kaname keys: HS256 signs with a shared secret, there is no key pair to make".into(),
        ),
        (
            vec!["keys", "--alg", "ES256", "--kid", "ec", "--out", &out_dir],
            &[],
            2,
            format!("kaname keys: {} already has a key with kid \"ec\"", path(&d.join("jwks.json"))),
        ),
        (
            vec!["keys", "--alg", "ES256", "--kid", "../up", "--out", &out_dir],
            &[],
            2,
            "kaname keys: invalid --kid \"../up\"".into(),
        ),
    ];
    for (args, env, code, message) in cases {
        let (got, err) = fails(&args, env).await;
        assert_eq!(got, code, "exit code of kaname {args:?}; stderr:\n{err}");
        assert!(
            err.contains(&message),
            "kaname {args:?}: stderr\n{err}\nlacks {message:?}"
        );
    }

    // A private key is never overwritten, even one the set does not list.
    std::fs::write(d.join("lone.pem"), "mine").expect("write");
    let (code, err) = fails(
        &["keys", "--alg", "EdDSA", "--kid", "lone", "--out", &out_dir],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("lone.pem exists; kaname keys never overwrites a private key"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("lone.pem")).expect("read"),
        "mine"
    );
    assert_eq!(jwks_doc(d).len(), 1, "jwks.json unchanged");
}

// === the demo's `kaname token` line ===

#[tokio::test]
async fn the_demo_prints_a_kaname_token_line_that_makes_an_accepted_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stderr_file = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr file");
    let mut demo = tokio::process::Command::new(KANAME)
        .arg("demo")
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .env_remove("KANAME_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr_file)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn kaname demo");
    let mut lines = BufReader::new(demo.stdout.take().expect("stdout")).lines();
    // The banner, up to the line with `token --secret-env`.
    let mut banner = Vec::new();
    let read = tokio::time::timeout(READY_DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            let done = line.contains(" token --secret-env ");
            banner.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    let banner_text = banner.join("\n");
    assert_eq!(
        read,
        Ok(true),
        "no kaname token line in the demo's banner:\n{banner_text}"
    );
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let curl = banner
        .iter()
        .find(|l| l.contains("Authorization: Bearer "))
        .expect("curl line with a token");
    let printed = curl
        .split("Authorization: Bearer ")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .expect("token");
    let url = curl
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("url")
        .to_string();

    // `VAR=secret PROGRAM token ARGS…`: the program is how the demo was run.
    let command = banner.last().expect("command line").trim();
    let words: Vec<&str> = command.split_whitespace().collect();
    assert!(
        !command.contains('\''),
        "quoted words; split by hand: {command}"
    );
    let (var, secret) = words[0].split_once('=').expect("VAR=secret first");
    assert_eq!(words[1], KANAME, "{command}");
    assert_eq!(words[2], "token", "{command}");
    let out = kaname(&words[2..], &[(var, secret)]).await;
    assert!(out.status.success(), "{command}: {}", stderr(&out));
    let made = stdout(&out).trim().to_string();

    let client = HttpClient::http1();
    let with = |t: &str| {
        Request::get(&url)
            .header("authorization", format!("Bearer {t}"))
            .body(empty())
            .expect("request")
    };
    let resp = client.send(with(&made)).await;
    assert_eq!(resp.status, 200, "the command's token: {}", resp.text());
    let resp = client.send(with(printed)).await;
    assert_eq!(resp.status, 200, "the printed token: {}", resp.text());
    // The same token but for its times: header, sub and iss alike.
    assert_eq!(segment(&made, 0), segment(printed, 0));
    let (a, b) = (segment(&made, 1), segment(printed, 1));
    assert_eq!((&a["sub"], &a["iss"]), (&b["sub"], &b["iss"]));
    assert_eq!(a["sub"], "demo-user");
    let _ = demo.start_kill();
}

// === docs/configuration.md "First JWT in one minute", as written ===

/// The section's commands this test runs; the docs must show them as is.
const DOC_KEYS: &str = "kaname keys --alg ES256 --kid k1 --out keys";
const DOC_TOKEN: &str = r#"kaname token -c kaname.yaml --filter auth --key keys/k1.pem --kid k1 --sub alice --claim 'roles=["admin","ops"]'"#;
const DOC_ROTATE: &str = "kaname keys --alg ES256 --kid k2 --out keys";

/// Words of a shell line with single quotes at most (the docs' lines).
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                word.get_or_insert_with(String::new);
            }
            ' ' if !quoted => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    assert!(!quoted, "unbalanced quote in {line:?}");
    words.extend(word);
    words
}

/// Runs a `kaname …` line of the docs in `dir`; its stdout.
async fn run_doc_line(dir: &Path, line: &str) -> String {
    let words = shell_words(line);
    assert_eq!(words[0], "kaname", "{line}");
    let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
    let out = kaname_in(dir, &args, &[]).await;
    assert!(out.status.success(), "{line}: {}", stderr(&out));
    stdout(&out)
}

#[tokio::test]
async fn the_docs_first_jwt_section_works_as_written() {
    let docs = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md"),
    )
    .expect("read docs/configuration.md");
    let section = docs
        .split("#### First JWT in one minute")
        .nth(1)
        .and_then(|rest| rest.split("\n### ").next())
        .expect("the First JWT section");
    for line in [DOC_KEYS, DOC_TOKEN, DOC_ROTATE] {
        assert!(section.contains(line), "the docs no longer show {line:?}");
    }
    let yaml = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section's config");

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("kaname.yaml"), yaml).expect("write kaname.yaml");
    run_doc_line(d, DOC_KEYS).await;
    let token = run_doc_line(d, DOC_TOKEN).await.trim().to_string();

    // The same config run by the test: a port the kernel picks, the JWKS
    // by its full path, the service at APP_ADDR.
    let up = TestUpstream::start("app").await;
    let jwks = path(&d.join("keys/jwks.json"));
    let body = yaml
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("keys/jwks.json", &jwks);
    let addr = up.addr.to_string();
    let k = Kaname::start_with_env(&body, &[("APP_ADDR", &addr)]).await;
    let client = HttpClient::http1();
    let url = k.url("inbound", "/api/hello");
    let get = |t: Option<String>| {
        let mut req = Request::get(&url);
        if let Some(t) = t {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        client.send(req.body(empty()).expect("request"))
    };
    let resp = get(Some(token)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = up.last();
    assert_eq!(seen.header("x-user-id"), Some("alice"));
    assert_eq!(seen.header("x-roles"), Some("admin ops"));
    resp_is_401(&get(None).await);

    // Rotation as the docs say: another run, and k2's tokens pass at once.
    run_doc_line(d, DOC_ROTATE).await;
    let k2 = run_doc_line(d, &DOC_TOKEN.replace("k1", "k2")).await;
    let resp = get(Some(k2.trim().to_string())).await;
    assert_eq!(resp.status, 200, "after rotation: {}", resp.text());
}

fn resp_is_401(resp: &TestResponse) {
    resp.assert_kaname_error(401, "unauthenticated");
    assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
}
