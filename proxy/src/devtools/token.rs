//! `kaname token`: a signed JWT for development and tests.
//!
//! The claims are `iat` (now), `exp` (now + `--ttl`), then `sub`, `iss` and
//! `aud` when given, then each `--claim NAME=VALUE` (which may replace any
//! of the others, `exp` included: `--claim exp=1` makes an expired token).
//! With `--filter NAME` the algorithm, issuer, audience and HMAC secret
//! default to that jwt filter's, read from the config as `kaname run`
//! reads it (`${VAR}` resolved); flags given on the command line win.

use std::path::PathBuf;
use std::process::ExitCode;

use kaname_config::{ConfigErrors, FilterKind, Jwt};
use serde_json::{Map, Value};

use super::alg::{Alg, KeyKind};
use super::signing::{compact, KeyFileError, PrivateKey, Signer};
use crate::{EXIT_INVALID_CONFIG, EXIT_RUNTIME, EXIT_USAGE};

/// `kaname token [-c FILE --filter NAME] [--secret-env VAR | --key PEM] …`.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct TokenArgs {
    /// The config file of --filter; defaults to $KANAME_CONFIG, else kaname.yaml.
    #[arg(short, long, value_name = "FILE", requires = "filter")]
    pub config: Option<String>,
    /// Make the token for this jwt filter of the config: its algorithm,
    /// issuer, audience and (HS*) secret are the defaults.
    #[arg(long, value_name = "NAME")]
    pub filter: Option<String>,
    /// Sign with HS256/384/512 and the secret this environment variable holds.
    #[arg(long, value_name = "VAR", conflicts_with = "key")]
    pub secret_env: Option<String>,
    /// Sign with this private key: PEM, PKCS#8 (as `kaname keys` writes it),
    /// PKCS#1 or SEC1.
    #[arg(long, value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// HS256/384/512, RS256/384/512, PS256/384/512, ES256, ES384 or EdDSA.
    /// Default: the filter's first one that fits the key, else the key's
    /// own (RSA: RS256, P-256: ES256, P-384: ES384, Ed25519: EdDSA; a secret: HS256).
    #[arg(long, value_name = "ALG")]
    pub alg: Option<String>,
    /// The header's `kid`: which key of the JWKS verifies the token.
    #[arg(long, value_name = "KID")]
    pub kid: Option<String>,
    /// The `sub` claim.
    #[arg(long, value_name = "SUB")]
    pub sub: Option<String>,
    /// The `iss` claim (default: the filter's first issuer).
    #[arg(long, value_name = "ISS")]
    pub iss: Option<String>,
    /// The `aud` claim (default: the filter's first audience); repeated, a list.
    #[arg(long, value_name = "AUD")]
    pub aud: Vec<String>,
    /// How long the token is valid: 90s, 15m, 1h, 7d. [default: 1h]
    #[arg(long, value_name = "TTL")]
    pub ttl: Option<String>,
    /// An extra claim, repeatable; VALUE is read as JSON when it is JSON
    /// (42, true, ["a","b"], {"k":1}, "\"quoted\""), else taken as a string.
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    pub claims: Vec<String>,
}

/// Why no token was made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("unknown algorithm {0:?}; one of: {all}", all = Alg::all_names())]
    UnknownAlg(String),
    #[error("no signing key: give --secret-env VAR (HS256/384/512) or --key FILE.pem (RS*, PS*, ES256, ES384, EdDSA; `kaname keys` makes one)")]
    NoSigningKey,
    #[error("{0} signs with a shared secret: give --secret-env VAR, or -c FILE --filter NAME for a filter with `secret:`")]
    NoSecret(Alg),
    #[error("{0} signs with a private key: give --key FILE.pem (`kaname keys` makes one)")]
    NoKey(Alg),
    #[error(
        "{0} signs with a shared secret, not a key file: give --secret-env VAR instead of --key"
    )]
    KeyForHmac(Alg),
    #[error(
        "{0} signs with a private key, not a secret: give --key FILE.pem instead of --secret-env"
    )]
    SecretForKeyAlg(Alg),
    #[error("--secret-env {0}: the environment variable is not set or empty")]
    SecretEnvUnset(String),
    #[error("the secret is {len} bytes; {alg} needs at least {min} (RFC 7518 §3.2)")]
    ShortSecret { alg: Alg, len: usize, min: usize },
    #[error("cannot read the key file {path}: {}", super::io_reason(.source))]
    KeyRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} {source}")]
    KeyFile { path: PathBuf, source: KeyFileError },
    #[error("{path} holds {found}; {alg} needs {needed}")]
    KeyMismatch {
        path: PathBuf,
        found: KeyKind,
        alg: Alg,
        needed: KeyKind,
    },
    #[error(
        "{path} holds {found}; filter {filter:?} allows {allowed}, none of which signs with it"
    )]
    KeyNotAllowed {
        path: PathBuf,
        found: KeyKind,
        filter: String,
        allowed: String,
    },
    #[error("filter {filter:?} allows {allowed}; --alg {alg} is not one of them")]
    AlgNotAllowed {
        filter: String,
        alg: Alg,
        allowed: String,
    },
    #[error("filter {filter:?} verifies with a JWKS ({allowed}), not a secret: sign with --key FILE.pem")]
    SecretNotAllowed { filter: String, allowed: String },
    #[error("{file}: no filter named {name:?}; its jwt filters: {jwt_filters}")]
    NoSuchFilter {
        file: String,
        name: String,
        jwt_filters: String,
    },
    #[error("{file}: filter {name:?} is a {kind} filter, not jwt; its jwt filters: {jwt_filters}")]
    NotJwt {
        file: String,
        name: String,
        kind: &'static str,
        jwt_filters: String,
    },
    #[error("invalid --claim {0:?}: expected NAME=VALUE")]
    BadClaim(String),
    #[error("--claim {0} is given twice")]
    DuplicateClaim(String),
    #[error("invalid --ttl {0:?}: a whole number and s, m, h or d (90s, 15m, 1h, 7d)")]
    BadTtl(String),
    /// The config of `-c` does not load; each error is file:line:col.
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("signing failed")]
    Sign,
}

impl TokenError {
    /// 1 for an invalid config, 3 for a signing failure, 2 for the rest.
    pub fn exit_code(&self) -> u8 {
        match self {
            TokenError::Config(_) => EXIT_INVALID_CONFIG,
            TokenError::Sign => EXIT_RUNTIME,
            _ => EXIT_USAGE,
        }
    }
}

/// A token, and remarks for stderr (a claim the filter requires is missing).
#[derive(Debug)]
pub struct Minted {
    pub token: String,
    pub alg: Alg,
    pub claims: Map<String, Value>,
    pub warnings: Vec<String>,
}

/// Runs `kaname token`: the token on stdout, remarks and errors on stderr.
pub fn main(args: &TokenArgs) -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    match mint(args, &env, jsonwebtoken::get_current_timestamp()) {
        Ok(minted) => {
            for w in &minted.warnings {
                eprintln!("warning: {w}");
            }
            println!("{}", minted.token);
            ExitCode::SUCCESS
        }
        Err(TokenError::Config(errors)) => {
            for e in &errors.0 {
                eprintln!("{e}");
            }
            ExitCode::from(EXIT_INVALID_CONFIG)
        }
        Err(e) => {
            eprintln!("kaname token: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// What signs the token, before the algorithm is settled.
enum Material {
    Secret(String),
    Key(PrivateKey, PathBuf),
    Nothing,
}

/// Makes the token `args` describe; `env` reads `--secret-env`, `now` is
/// the unix time of `iat`.
pub fn mint(
    args: &TokenArgs,
    env: &dyn Fn(&str) -> Option<String>,
    now: u64,
) -> Result<Minted, TokenError> {
    let filter = match &args.filter {
        Some(name) => {
            let file = match &args.config {
                Some(f) => f.clone(),
                None => env("KANAME_CONFIG").unwrap_or_else(|| "kaname.yaml".into()),
            };
            let cfg = kaname_config::load(&file).map_err(TokenError::Config)?;
            Some((name.clone(), jwt_filter(&cfg, name)?.clone()))
        }
        None => None,
    };
    let filter = filter.as_ref();
    let named = match &args.alg {
        Some(a) => Some(Alg::from_name(a).ok_or_else(|| TokenError::UnknownAlg(a.clone()))?),
        None => None,
    };
    // The filter's algorithms, as its config wrote them (validated there).
    let allowed: Vec<Alg> = filter
        .map(|(_, j)| {
            j.algorithms
                .iter()
                .filter_map(|a| Alg::from_name(a))
                .collect()
        })
        .unwrap_or_default();
    let allowed_text = || {
        let names: Vec<&str> = allowed.iter().map(|a| a.name()).collect();
        format!("[{}]", names.join(", "))
    };
    if let (Some(alg), Some((name, _))) = (named, filter) {
        if !allowed.contains(&alg) {
            return Err(TokenError::AlgNotAllowed {
                filter: name.clone(),
                alg,
                allowed: allowed_text(),
            });
        }
    }

    let material = if let Some(path) = &args.key {
        let pem = std::fs::read(path).map_err(|source| TokenError::KeyRead {
            path: path.clone(),
            source,
        })?;
        let key = PrivateKey::from_pem(&pem).map_err(|source| TokenError::KeyFile {
            path: path.clone(),
            source,
        })?;
        Material::Key(key, path.clone())
    } else if let Some(var) = &args.secret_env {
        match env(var) {
            Some(s) if !s.is_empty() => Material::Secret(s),
            _ => return Err(TokenError::SecretEnvUnset(var.clone())),
        }
    } else if let Some(secret) = filter.and_then(|(_, j)| j.secret.clone()) {
        Material::Secret(secret)
    } else {
        Material::Nothing
    };

    let alg = match (named, &material, filter) {
        (Some(alg), _, _) => alg,
        (None, Material::Key(key, path), Some((name, _))) => allowed
            .iter()
            .copied()
            .find(|a| a.key_kind() == key.kind())
            .ok_or_else(|| TokenError::KeyNotAllowed {
                path: path.clone(),
                found: key.kind(),
                filter: name.clone(),
                allowed: allowed_text(),
            })?,
        (None, Material::Key(key, _), None) => key.kind().default_alg(),
        (None, Material::Secret(_), Some((name, _))) => allowed
            .iter()
            .copied()
            .find(|a| a.is_hmac())
            .ok_or_else(|| TokenError::SecretNotAllowed {
                filter: name.clone(),
                allowed: allowed_text(),
            })?,
        (None, Material::Secret(_), None) => Alg::HS256,
        (None, Material::Nothing, Some(_)) => *allowed.first().ok_or(TokenError::NoSigningKey)?,
        (None, Material::Nothing, None) => return Err(TokenError::NoSigningKey),
    };

    let signer = match (alg.key_kind(), material) {
        (KeyKind::Secret { min_len }, Material::Secret(secret)) => {
            if secret.len() < min_len {
                return Err(TokenError::ShortSecret {
                    alg,
                    len: secret.len(),
                    min: min_len,
                });
            }
            Signer::secret(alg, secret.as_bytes()).ok_or(TokenError::Sign)?
        }
        (KeyKind::Secret { .. }, Material::Key(..)) => return Err(TokenError::KeyForHmac(alg)),
        (KeyKind::Secret { .. }, Material::Nothing) => return Err(TokenError::NoSecret(alg)),
        (_, Material::Secret(_)) => return Err(TokenError::SecretForKeyAlg(alg)),
        (_, Material::Nothing) => return Err(TokenError::NoKey(alg)),
        (needed, Material::Key(key, path)) => {
            if key.kind() != needed {
                return Err(TokenError::KeyMismatch {
                    path,
                    found: key.kind(),
                    alg,
                    needed,
                });
            }
            Signer::Key(key)
        }
    };

    let claims = claims(args, filter.map(|(_, j)| j), now)?;
    let token = compact(alg, args.kid.as_deref(), &claims, &signer).ok_or(TokenError::Sign)?;
    let warnings = match filter {
        Some((name, jwt)) => jwt
            .required_claims
            .iter()
            .filter(|c| !claims.contains_key(c.as_str()))
            .map(|c| {
                format!("filter {name:?} requires claim {c:?}, which the token lacks (add --claim {c}=VALUE)")
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(Minted {
        token,
        alg,
        claims,
        warnings,
    })
}

/// The jwt filter `name` of `cfg`.
fn jwt_filter<'c>(cfg: &'c kaname_config::Config, name: &str) -> Result<&'c Jwt, TokenError> {
    let jwt_filters = || {
        let names: Vec<&str> = cfg
            .filters
            .iter()
            .filter(|f| matches!(f.kind, FilterKind::Jwt(_)))
            .map(|f| f.name.as_str())
            .collect();
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    };
    match cfg.filter(name) {
        Some(f) => match &f.kind {
            FilterKind::Jwt(j) => Ok(j),
            other => Err(TokenError::NotJwt {
                file: cfg.file.clone(),
                name: name.to_string(),
                kind: other.kind_name(),
                jwt_filters: jwt_filters(),
            }),
        },
        None => Err(TokenError::NoSuchFilter {
            file: cfg.file.clone(),
            name: name.to_string(),
            jwt_filters: jwt_filters(),
        }),
    }
}

/// `iat`, `exp`, `sub`, `iss`, `aud`, then the `--claim`s over them.
fn claims(
    args: &TokenArgs,
    filter: Option<&Jwt>,
    now: u64,
) -> Result<Map<String, Value>, TokenError> {
    let ttl_text = args.ttl.as_deref().unwrap_or("1h");
    let ttl = ttl_secs(ttl_text).ok_or_else(|| TokenError::BadTtl(ttl_text.to_string()))?;
    let mut claims = Map::new();
    claims.insert("iat".into(), now.into());
    claims.insert("exp".into(), now.saturating_add(ttl).into());
    if let Some(sub) = &args.sub {
        claims.insert("sub".into(), sub.as_str().into());
    }
    let iss = args
        .iss
        .clone()
        .or_else(|| filter.and_then(|j| j.issuers.first().cloned()));
    if let Some(iss) = iss {
        claims.insert("iss".into(), iss.into());
    }
    let aud = match (
        args.aud.as_slice(),
        filter.and_then(|j| j.audiences.first()),
    ) {
        ([], Some(a)) => Some(Value::from(a.as_str())),
        ([], None) => None,
        ([one], _) => Some(Value::from(one.as_str())),
        (many, _) => Some(Value::from(many.to_vec())),
    };
    if let Some(aud) = aud {
        claims.insert("aud".into(), aud);
    }
    let mut given = Vec::new();
    for c in &args.claims {
        let (name, value) = parse_claim(c)?;
        if given.contains(&name) {
            return Err(TokenError::DuplicateClaim(name));
        }
        given.push(name.clone());
        claims.insert(name, value);
    }
    Ok(claims)
}

/// `NAME=VALUE`: VALUE as JSON when it is JSON, else as a string.
fn parse_claim(text: &str) -> Result<(String, Value), TokenError> {
    let (name, value) = text
        .split_once('=')
        .filter(|(n, _)| !n.is_empty())
        .ok_or_else(|| TokenError::BadClaim(text.to_string()))?;
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::from(value));
    Ok((name.to_string(), value))
}

/// `90s`, `15m`, `1h`, `7d` in seconds.
fn ttl_secs(text: &str) -> Option<u64> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(unit_at);
    let n: u64 = n.parse().ok()?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(unit)
}

impl TokenArgs {
    /// These arguments as a `PROGRAM token …` command line, each value
    /// quoted for a POSIX shell where it needs it.
    pub fn command_line(&self, program: &str) -> String {
        let mut words = vec![shell_quote(program), "token".to_string()];
        let mut push = |flag: &str, value: &str| {
            words.push(flag.to_string());
            words.push(shell_quote(value));
        };
        if let Some(c) = &self.config {
            push("-c", c);
        }
        let opts = [
            ("--filter", &self.filter),
            ("--secret-env", &self.secret_env),
            ("--alg", &self.alg),
            ("--kid", &self.kid),
            ("--sub", &self.sub),
            ("--iss", &self.iss),
        ];
        for (flag, value) in opts {
            if let Some(v) = value {
                push(flag, v);
            }
        }
        if let Some(k) = &self.key {
            push("--key", &k.to_string_lossy());
        }
        for a in &self.aud {
            push("--aud", a);
        }
        if let Some(t) = &self.ttl {
            push("--ttl", t);
        }
        for c in &self.claims {
            push("--claim", c);
        }
        words.join(" ")
    }
}

/// `word` as is when the shell leaves it alone, else in single quotes.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+%".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use serde_json::json;

    const SECRET: &str = "token-unit-test-secret-of-32-by!";
    const NOW: u64 = 1_700_000_000;

    fn env(name: &str) -> Option<String> {
        (name == "SECRET").then(|| SECRET.to_string())
    }

    fn hs(extra: impl FnOnce(&mut TokenArgs)) -> Result<Minted, TokenError> {
        let mut args = TokenArgs {
            secret_env: Some("SECRET".into()),
            ..TokenArgs::default()
        };
        extra(&mut args);
        mint(&args, &env, NOW)
    }

    fn part(token: &str, i: usize) -> Value {
        let seg = token.split('.').nth(i).expect("segment");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(seg).expect("b64")).expect("json")
    }

    #[test]
    fn claims_from_flags_then_claim_values_as_json() {
        let m = hs(|a| {
            a.sub = Some("alice".into());
            a.iss = Some("https://issuer".into());
            a.aud = vec!["orders".into()];
            a.ttl = Some("15m".into());
            a.kid = Some("k1".into());
            a.claims = vec![
                "roles=[\"admin\",\"ops\"]".into(),
                "n=42".into(),
                "ok=true".into(),
                "obj={\"a\":1}".into(),
                "name=plain text".into(),
                "quoted=\"42\"".into(),
                "eq=a=b".into(),
                "empty=".into(),
            ];
        })
        .expect("token");
        assert_eq!(m.alg, Alg::HS256);
        let p = part(&m.token, 1);
        assert_eq!(
            p,
            json!({
                "iat": NOW, "exp": NOW + 900, "sub": "alice", "iss": "https://issuer",
                "aud": "orders", "roles": ["admin", "ops"], "n": 42, "ok": true,
                "obj": {"a": 1}, "name": "plain text", "quoted": "42", "eq": "a=b", "empty": "",
            })
        );
        assert_eq!(
            part(&m.token, 0),
            json!({"alg": "HS256", "typ": "JWT", "kid": "k1"})
        );
        // The signature is HMAC-SHA256 over the first two segments.
        let key = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes());
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_audience(&["orders"]);
        v.validate_exp = false;
        assert!(jsonwebtoken::decode::<Value>(&m.token, &key, &v).is_ok());
    }

    #[test]
    fn claim_overrides_and_lists() {
        let m = hs(|a| {
            a.sub = Some("alice".into());
            a.aud = vec!["a".into(), "b".into()];
            a.claims = vec!["exp=1".into(), "sub=bob".into()];
        })
        .expect("token");
        assert_eq!(m.claims["exp"], 1);
        assert_eq!(m.claims["sub"], "bob");
        assert_eq!(m.claims["aud"], json!(["a", "b"]));
        assert_eq!(m.claims["exp"], part(&m.token, 1)["exp"]);
        let e = hs(|a| a.claims = vec!["x=1".into(), "x=2".into()]).expect_err("dup");
        assert!(
            matches!(e, TokenError::DuplicateClaim(ref n) if n == "x"),
            "{e}"
        );
        for bad in ["noequals", "=value"] {
            let e = hs(|a| a.claims = vec![bad.into()]).expect_err("bad claim");
            assert!(matches!(e, TokenError::BadClaim(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn ttl_units() {
        assert_eq!(ttl_secs("90s"), Some(90));
        assert_eq!(ttl_secs("15m"), Some(900));
        assert_eq!(ttl_secs("1h"), Some(3600));
        assert_eq!(ttl_secs("3650d"), Some(3650 * 86_400));
        for bad in [
            "",
            "1",
            "h",
            "1.5h",
            "-1h",
            "1w",
            "1 h",
            "99999999999999999999d",
        ] {
            assert_eq!(ttl_secs(bad), None, "{bad:?}");
        }
        let e = hs(|a| a.ttl = Some("1w".into())).expect_err("ttl");
        assert!(e.to_string().starts_with("invalid --ttl \"1w\""), "{e}");
    }

    #[test]
    fn algorithm_and_secret_errors() {
        let e = hs(|a| a.alg = Some("HS257".into())).expect_err("unknown");
        assert!(e.to_string().contains("one of: HS256, HS384"), "{e}");
        assert_eq!(e.exit_code(), EXIT_USAGE);
        let e = mint(&TokenArgs::default(), &env, NOW).expect_err("nothing");
        assert!(matches!(e, TokenError::NoSigningKey), "{e}");
        let e = hs(|a| a.alg = Some("RS256".into())).expect_err("secret for RS256");
        assert!(matches!(e, TokenError::SecretForKeyAlg(Alg::RS256)), "{e}");
        let e = hs(|a| a.alg = Some("HS512".into())).expect_err("short");
        assert_eq!(
            e.to_string(),
            "the secret is 32 bytes; HS512 needs at least 64 (RFC 7518 §3.2)"
        );
        let e = hs(|a| a.secret_env = Some("UNSET".into())).expect_err("unset");
        assert_eq!(
            e.to_string(),
            "--secret-env UNSET: the environment variable is not set or empty"
        );
        let no_key = TokenArgs {
            alg: Some("ES256".into()),
            ..TokenArgs::default()
        };
        let e = mint(&no_key, &env, NOW).expect_err("no key");
        assert!(matches!(e, TokenError::NoKey(Alg::ES256)), "{e}");
        let no_secret = TokenArgs {
            alg: Some("hs384".into()),
            ..TokenArgs::default()
        };
        let e = mint(&no_secret, &env, NOW).expect_err("no secret");
        assert!(matches!(e, TokenError::NoSecret(Alg::HS384)), "{e}");
    }

    fn key_file(dir: &std::path::Path, name: &str, kind: KeyKind) -> PathBuf {
        let path = dir.join(name);
        let pem = crate::devtools::keys::generate(kind).expect("key").pem;
        std::fs::write(&path, pem).expect("write key");
        path
    }

    #[test]
    fn key_files_pick_their_algorithm_and_must_fit_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ec = key_file(dir.path(), "ec.pem", KeyKind::EcP256);
        let with_key = |alg: Option<&str>| TokenArgs {
            key: Some(ec.clone()),
            alg: alg.map(String::from),
            ..TokenArgs::default()
        };
        let m = mint(&with_key(None), &env, NOW).expect("ES256 by default");
        assert_eq!(m.alg, Alg::ES256);
        assert_eq!(part(&m.token, 0)["alg"], "ES256");
        let e = mint(&with_key(Some("ES384")), &env, NOW).expect_err("mismatch");
        assert_eq!(
            e.to_string(),
            format!(
                "{} holds an EC P-256 key; ES384 needs an EC P-384 key",
                ec.display()
            )
        );
        let e = mint(&with_key(Some("HS256")), &env, NOW).expect_err("key for HS");
        assert!(matches!(e, TokenError::KeyForHmac(Alg::HS256)), "{e}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello").expect("write");
        let e = mint(
            &TokenArgs {
                key: Some(garbage.clone()),
                ..TokenArgs::default()
            },
            &env,
            NOW,
        )
        .expect_err("garbage");
        assert!(
            e.to_string().starts_with(&format!(
                "{} holds no unencrypted private key",
                garbage.display()
            )),
            "{e}"
        );
        let e = mint(
            &TokenArgs {
                key: Some(dir.path().join("absent.pem")),
                ..TokenArgs::default()
            },
            &env,
            NOW,
        )
        .expect_err("absent");
        assert!(matches!(e, TokenError::KeyRead { .. }), "{e}");
        assert!(
            e.to_string()
                .ends_with("absent.pem: No such file or directory"),
            "{e}"
        );
    }

    const CONFIG: &str = "listeners:
  main:
    listen: 127.0.0.1:0
    routes:
      - match: { path_prefix: / }
        upstream: up
        filters: [auth, keys, limit]
upstreams:
  up:
    endpoints: [127.0.0.1:9]
filters:
  auth:
    jwt:
      issuer: [https://one.example, https://two.example]
      audiences: [orders, billing]
      algorithms: [HS384]
      secret: unit-test-secret-of-forty-eight-bytes-0123456789
      required_claims: [sub, tenant]
  keys:
    jwt:
      algorithms: [ES256, RS256]
      jwks: { file: /nonexistent/jwks.json }
  limit:
    rate_limit: { key: client_ip, rate: 5/s }
";

    fn with_config(text: &str, extra: impl FnOnce(&mut TokenArgs)) -> Result<Minted, TokenError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("kaname.yaml");
        std::fs::write(&file, text).expect("write config");
        let mut args = TokenArgs {
            config: Some(file.to_string_lossy().into_owned()),
            filter: Some("auth".into()),
            ..TokenArgs::default()
        };
        extra(&mut args);
        mint(&args, &env, NOW)
    }

    #[test]
    fn a_filter_gives_algorithm_issuer_audience_and_secret() {
        let m = with_config(CONFIG, |a| a.sub = Some("alice".into())).expect("token");
        assert_eq!(m.alg, Alg::HS384);
        assert_eq!(m.claims["iss"], "https://one.example");
        assert_eq!(m.claims["aud"], "orders");
        assert_eq!(
            m.warnings,
            ["filter \"auth\" requires claim \"tenant\", which the token lacks (add --claim tenant=VALUE)"]
        );
        // Flags win over the filter's values.
        let m = with_config(CONFIG, |a| {
            a.iss = Some("https://two.example".into());
            a.claims = vec!["tenant=t1".into(), "sub=s".into()];
        })
        .expect("token");
        assert_eq!(m.claims["iss"], "https://two.example");
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        let e = with_config(CONFIG, |a| a.alg = Some("HS256".into())).expect_err("alg");
        assert_eq!(
            e.to_string(),
            "filter \"auth\" allows [HS384]; --alg HS256 is not one of them"
        );
    }

    #[test]
    fn a_jwks_filter_needs_a_key_of_its_algorithms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rsa = key_file(dir.path(), "rsa.pem", KeyKind::Rsa);
        let ed = key_file(dir.path(), "ed.pem", KeyKind::Ed25519);
        let m = with_config(CONFIG, |a| {
            a.filter = Some("keys".into());
            a.key = Some(rsa);
        })
        .expect("token");
        assert_eq!(m.alg, Alg::RS256, "the filter's first RSA algorithm");
        assert!(!m.claims.contains_key("iss") && !m.claims.contains_key("aud"));
        let e = with_config(CONFIG, |a| {
            a.filter = Some("keys".into());
            a.key = Some(ed.clone());
        })
        .expect_err("ed25519");
        assert_eq!(
            e.to_string(),
            format!(
                "{} holds an Ed25519 key; filter \"keys\" allows [ES256, RS256], none of which signs with it",
                ed.display()
            )
        );
        let e = with_config(CONFIG, |a| a.filter = Some("keys".into())).expect_err("no key");
        assert!(matches!(e, TokenError::NoKey(Alg::ES256)), "{e}");
        let e = with_config(CONFIG, |a| {
            a.filter = Some("keys".into());
            a.secret_env = Some("SECRET".into());
        })
        .expect_err("secret");
        assert!(matches!(e, TokenError::SecretNotAllowed { .. }), "{e}");
    }

    #[test]
    fn a_filter_that_is_not_jwt_or_absent_lists_the_jwt_filters() {
        let e = with_config(CONFIG, |a| a.filter = Some("limit".into())).expect_err("kind");
        assert!(
            e.to_string().ends_with(
                ": filter \"limit\" is a rate_limit filter, not jwt; its jwt filters: auth, keys"
            ),
            "{e}"
        );
        let e = with_config(CONFIG, |a| a.filter = Some("nope".into())).expect_err("absent");
        assert!(
            e.to_string()
                .ends_with(": no filter named \"nope\"; its jwt filters: auth, keys"),
            "{e}"
        );
        let e = with_config("listeners: 7\n", |_| {}).expect_err("invalid");
        assert_eq!(e.exit_code(), EXIT_INVALID_CONFIG);
        assert!(e.to_string().contains("kaname.yaml:1:"), "{e}");
    }

    #[test]
    fn command_line_quotes_what_the_shell_would_split() {
        let args = TokenArgs {
            secret_env: Some("S".into()),
            iss: Some("kaname-demo".into()),
            sub: Some("demo user".into()),
            ttl: Some("3650d".into()),
            claims: vec!["roles=[\"a\",\"b\"]".into(), "it's=x".into()],
            ..TokenArgs::default()
        };
        assert_eq!(
            args.command_line("kaname"),
            r#"kaname token --secret-env S --sub 'demo user' --iss kaname-demo --ttl 3650d --claim 'roles=["a","b"]' --claim 'it'\''s=x'"#
        );
    }
}
