//! The `jwt` filter: issuers, audiences, algorithms and where keys come from.

use std::time::Duration;

use crate::error::Errors;
use crate::node::{Mark, Node};
use crate::read::{self, Map};
use crate::suggest::did_you_mean;
use crate::types::{JwksSource, Jwt, TokenSource};

pub(crate) const KEYS: &[&str] = &[
    "issuer",
    "audiences",
    "algorithms",
    "jwks",
    "secret",
    "leeway",
    "from",
    "required_claims",
    "forward_claims",
    "forward_token",
    "cache",
];

pub(crate) const JWKS_KEYS: &[&str] = &["file", "url", "refresh"];
pub(crate) const FROM_KEYS: &[&str] = &["header", "prefix", "query", "cookie"];

/// Every algorithm accepted, in its canonical spelling.
pub const ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

pub fn jwt(name: &str, kind_mark: Mark, node: &Node, errs: &mut Errors) -> Option<Jwt> {
    let place = format!("in jwt filter {name:?}");
    let m = Map::new(node, &place, KEYS, errs)?;
    let issuers = m.opt("issuer", errs, read::one_or_more).unwrap_or_default();
    let audiences = m.opt("audiences", errs, read::strings).unwrap_or_default();
    let jwks = m.opt("jwks", errs, |n, e| jwks(name, n, e));
    let secret = m.opt("secret", errs, read::nonempty);
    match (m.key_mark("jwks"), m.key_mark("secret")) {
        (None, None) => errs.at(
            kind_mark,
            format!("jwt filter {name:?} needs jwks or secret"),
        ),
        (Some(_), Some(mark)) => errs.at(
            mark,
            format!("jwt filter {name:?} has both jwks and secret; use one"),
        ),
        _ => {}
    }
    let algorithms: Option<Vec<String>> = m.req("algorithms", errs, |n, e| {
        let items = read::list(n, e)?;
        if items.is_empty() {
            e.at(n.mark, "algorithms is empty; name the algorithms to accept");
        }
        let uses_secret = m.get("secret").is_some();
        let uses_jwks = m.get("jwks").is_some();
        let mut out = Vec::new();
        for item in items {
            let Some(alg) = read::string(item, e) else {
                continue;
            };
            if alg.eq_ignore_ascii_case("none") {
                e.at(item.mark, "algorithm \"none\" is never accepted");
                continue;
            }
            let Some(canonical) = ALGORITHMS.iter().find(|a| a.eq_ignore_ascii_case(&alg)) else {
                let hint = did_you_mean(&alg, ALGORITHMS.iter().copied());
                e.at(item.mark, format!("unknown algorithm {alg:?}{hint}"));
                continue;
            };
            let hmac = canonical.starts_with("HS");
            if hmac && uses_jwks && !uses_secret {
                e.at(
                    item.mark,
                    format!("algorithm {canonical:?} needs secret, not jwks"),
                );
            } else if !hmac && uses_secret && !uses_jwks {
                e.at(
                    item.mark,
                    format!("algorithm {canonical:?} needs jwks, not secret"),
                );
            }
            out.push(canonical.to_string());
        }
        Some(out)
    });
    if let (Some(secret), Some(algorithms), Some(node)) = (&secret, &algorithms, m.get("secret")) {
        check_secret_length(name, secret, algorithms, node.mark, errs);
    }
    let leeway = m
        .opt("leeway", errs, read::duration)
        .unwrap_or(Duration::ZERO);
    let from = m
        .opt("from", errs, |n, e| from(name, n, e))
        .unwrap_or(TokenSource::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        });
    let required_claims = m
        .opt("required_claims", errs, read::strings)
        .unwrap_or_default();
    let mut forward_claims = Vec::new();
    if let Some(n) = m.get("forward_claims") {
        if let Some(map) = Map::any(
            n,
            &format!("in forward_claims of jwt filter {name:?}"),
            errs,
        ) {
            for (claim, _, header) in map.entries() {
                if let Some(h) = read::header_name(header, errs) {
                    forward_claims.push((claim.to_string(), h));
                }
            }
        }
    }
    // Off by default: the upstream gets the caller's identity from
    // `forward_claims`, not a bearer credential it could replay.
    let forward_token = m.opt("forward_token", errs, read::boolean).unwrap_or(false);
    let cache = m.opt("cache", errs, read::boolean).unwrap_or(true);
    Some(Jwt {
        issuers,
        audiences,
        algorithms: algorithms?,
        jwks,
        secret,
        leeway,
        from,
        required_claims,
        forward_claims,
        forward_token,
        cache,
    })
}

/// The shortest HMAC secret RFC 7518 §3.2 allows for `alg`: the size of
/// the hash output (None for other algorithms).
fn min_secret_bytes(alg: &str) -> Option<usize> {
    match alg {
        "HS256" => Some(32),
        "HS384" => Some(48),
        "HS512" => Some(64),
        _ => None,
    }
}

/// A secret shorter than the largest HS* algorithm the filter allows needs
/// (checked on the value after `${VAR}` substitution; the secret itself is
/// never printed, only its length).
fn check_secret_length(
    filter: &str,
    secret: &str,
    algorithms: &[String],
    mark: Mark,
    errs: &mut Errors,
) {
    let Some((alg, need)) = algorithms
        .iter()
        .filter_map(|a| Some((a.as_str(), min_secret_bytes(a)?)))
        .max_by_key(|(_, n)| *n)
    else {
        return;
    };
    let len = secret.len();
    if len < need {
        let unit = if len == 1 { "byte" } else { "bytes" };
        errs.at(
            mark,
            format!(
                "jwt filter {filter:?}: secret is {len} {unit}; {alg} needs at least {need} (RFC 7518 §3.2)"
            ),
        );
    }
}

fn jwks(filter: &str, node: &Node, errs: &mut Errors) -> Option<JwksSource> {
    let place = format!("in jwks of jwt filter {filter:?}");
    let m = Map::new(node, &place, JWKS_KEYS, errs)?;
    let file = m.opt("file", errs, read::nonempty);
    let url = m.opt("url", errs, |n, e| {
        let url = read::nonempty(n, e)?;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            e.at(
                n.mark,
                format!("expected an http:// or https:// URL, found {url:?}"),
            );
            return None;
        }
        Some(url)
    });
    let refresh = m
        .opt("refresh", errs, read::positive_duration)
        .unwrap_or(Duration::from_secs(300));
    match (m.key_mark("file"), m.key_mark("url")) {
        (None, None) => errs.at(m.mark, "jwks needs file or url"),
        (Some(_), Some(mark)) => errs.at(mark, "jwks has both file and url; use one"),
        (Some(_), None) => {
            if let Some(mark) = m.key_mark("refresh") {
                errs.at(mark, "refresh applies to a jwks url only");
            }
        }
        _ => {}
    }
    match (file, url) {
        (Some(f), None) => Some(JwksSource::File(f)),
        (None, Some(url)) => Some(JwksSource::Url { url, refresh }),
        _ => None,
    }
}

fn from(filter: &str, node: &Node, errs: &mut Errors) -> Option<TokenSource> {
    let place = format!("in from of jwt filter {filter:?}");
    let m = Map::new(node, &place, FROM_KEYS, errs)?;
    let given: Vec<&str> = ["header", "query", "cookie"]
        .into_iter()
        .filter(|k| m.get(k).is_some())
        .collect();
    if given.len() != 1 {
        let mark = given.get(1).and_then(|k| m.key_mark(k)).unwrap_or(m.mark);
        errs.at(mark, "from takes one of header, query or cookie");
        return None;
    }
    if given[0] != "header" {
        if let Some(mark) = m.key_mark("prefix") {
            errs.at(mark, "prefix applies to a header only");
        }
    }
    match given[0] {
        "header" => {
            let name = m.req("header", errs, read::header_name)?;
            let default = if name == "authorization" {
                "Bearer "
            } else {
                ""
            };
            let prefix = m
                .opt("prefix", errs, read::string)
                .unwrap_or_else(|| default.to_string());
            Some(TokenSource::Header { name, prefix })
        }
        "query" => m.req("query", errs, read::nonempty).map(TokenSource::Query),
        _ => m
            .req("cookie", errs, read::nonempty)
            .map(TokenSource::Cookie),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::load;

    /// 32 bytes: the shortest secret HS256 takes.
    const S32: &str = "0123456789abcdef0123456789abcdef";

    fn run(yaml: &str) -> (Option<Jwt>, String) {
        let node = load(yaml).unwrap();
        let mut errs = Errors::new("f");
        let out = jwt("auth", Mark::new(1, 1), &node, &mut errs);
        (out, errs.finish().to_string())
    }

    #[test]
    fn defaults() {
        let (j, e) = run(&format!("algorithms: [hs256]\nsecret: {S32}\nissuer: me\n"));
        assert_eq!(e, "");
        let j = j.unwrap();
        assert_eq!(j.algorithms, ["HS256"]);
        assert_eq!(j.issuers, ["me"]);
        assert_eq!(
            j.from,
            TokenSource::Header {
                name: "authorization".into(),
                prefix: "Bearer ".into()
            }
        );
        assert!(!j.forward_token, "the token is not forwarded by default");
        assert!(j.cache);
        assert_eq!(j.leeway, Duration::ZERO);
    }

    #[test]
    fn cache_can_be_turned_off() {
        let (j, e) = run(&format!(
            "algorithms: [HS256]\nsecret: {S32}\ncache: false\n"
        ));
        assert_eq!(e, "");
        assert!(!j.unwrap().cache);
        let (_, e) = run(&format!(
            "algorithms: [HS256]\nsecret: {S32}\ncache: maybe\n"
        ));
        assert!(
            e.contains("f:3:8: expected true or false"),
            "a non-boolean is refused at its position: {e}"
        );
    }

    #[test]
    fn key_sources() {
        let (j, _) =
            run("algorithms: [RS256]\njwks: {url: https://a/jwks}\nfrom: {cookie: session}\n");
        let j = j.unwrap();
        assert_eq!(
            j.jwks,
            Some(JwksSource::Url {
                url: "https://a/jwks".into(),
                refresh: Duration::from_secs(300)
            })
        );
        assert_eq!(j.from, TokenSource::Cookie("session".into()));
        assert_eq!(
            run("algorithms: [RS256]\n").1,
            "f:1:1: jwt filter \"auth\" needs jwks or secret"
        );
        assert_eq!(
            run("algorithms: [RS256]\njwks: {file: a}\nsecret: b\n").1,
            "f:3:1: jwt filter \"auth\" has both jwks and secret; use one"
        );
    }

    #[test]
    fn algorithms() {
        assert_eq!(
            run("algorithms: [none, RS257, HS256, ES256]\njwks: {file: a}\n").1,
            "f:1:14: algorithm \"none\" is never accepted\n\
             f:1:20: unknown algorithm \"RS257\"; did you mean \"RS256\"?\n\
             f:1:27: algorithm \"HS256\" needs secret, not jwks"
        );
        assert_eq!(
            run("algorithms: [RS256]\nsecret: x\n").1,
            "f:1:14: algorithm \"RS256\" needs jwks, not secret"
        );
    }

    #[test]
    fn forward_token_can_be_turned_on() {
        let (j, e) = run(&format!(
            "algorithms: [HS256]\nsecret: {S32}\nforward_token: true\n"
        ));
        assert_eq!(e, "");
        assert!(j.unwrap().forward_token);
    }

    #[test]
    fn short_hmac_secrets_are_refused_at_the_secret() {
        assert_eq!(
            run("algorithms: [HS256]\nsecret: abcde\n").1,
            "f:2:9: jwt filter \"auth\": secret is 5 bytes; HS256 needs at least 32 (RFC 7518 §3.2)"
        );
        assert_eq!(
            run("algorithms: [HS256]\nsecret: a\n").1,
            "f:2:9: jwt filter \"auth\": secret is 1 byte; HS256 needs at least 32 (RFC 7518 §3.2)"
        );
        // 31 bytes is one short; 32 is enough.
        let (_, e) = run(&format!("algorithms: [HS256]\nsecret: {}\n", &S32[..31]));
        assert!(
            e.contains("secret is 31 bytes; HS256 needs at least 32"),
            "{e}"
        );
        assert_eq!(run(&format!("algorithms: [HS256]\nsecret: {S32}\n")).1, "");
        // Several HS algorithms: the largest one sets the bar.
        let s48 = "x".repeat(48);
        assert_eq!(
            run(&format!("algorithms: [HS256, HS512]\nsecret: {s48}\n")).1,
            "f:2:9: jwt filter \"auth\": secret is 48 bytes; HS512 needs at least 64 (RFC 7518 §3.2)"
        );
        assert_eq!(
            run(&format!("algorithms: [HS384, HS256]\nsecret: {s48}\n")).1,
            ""
        );
        assert_eq!(
            run(&format!(
                "algorithms: [HS512]\nsecret: {}\n",
                "x".repeat(64)
            ))
            .1,
            ""
        );
        // Bytes, not characters: 16 two-byte characters are 32 bytes.
        assert_eq!(
            run(&format!(
                "algorithms: [HS256]\nsecret: {}\n",
                "é".repeat(16)
            ))
            .1,
            ""
        );
        assert_eq!(
            run(&format!("algorithms: [HS256]\nsecret: {}\n", "é".repeat(15))).1,
            "f:2:9: jwt filter \"auth\": secret is 30 bytes; HS256 needs at least 32 (RFC 7518 §3.2)"
        );
    }

    #[test]
    fn secret_length_is_checked_after_substitution() {
        let env_run = |yaml: &str, value: &str| {
            let mut node = load(yaml).unwrap();
            let mut errs = Errors::new("f");
            let v = value.to_string();
            crate::env::substitute(&mut node, &|n| (n == "S").then(|| v.clone()), &mut errs);
            let out = jwt("auth", Mark::new(1, 1), &node, &mut errs);
            (out, errs.finish().to_string())
        };
        // `${S}` is 4 bytes as written; what counts is the value.
        let (j, e) = env_run("algorithms: [HS256]\nsecret: ${S}\n", S32);
        assert_eq!(e, "");
        assert_eq!(j.unwrap().secret.as_deref(), Some(S32));
        // 32 bytes as written, 28 once `${S}` is empty.
        let (_, e) = env_run(
            "algorithms: [HS256]\nsecret: ${S}0123456789abcdef0123456789ab\n",
            "",
        );
        assert_eq!(
            e,
            "f:2:9: jwt filter \"auth\": secret is 28 bytes; HS256 needs at least 32 (RFC 7518 §3.2)"
        );
        let (_, e) = env_run("algorithms: [HS256]\nsecret: \"${S}\"\n", "ten-bytes!");
        assert_eq!(
            e,
            "f:2:9: jwt filter \"auth\": secret is 10 bytes; HS256 needs at least 32 (RFC 7518 §3.2)"
        );
    }
}
