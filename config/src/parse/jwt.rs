//! The `jwt` filter: issuers, audiences, algorithms and where keys come from.

use std::time::Duration;

use crate::error::Errors;
use crate::node::{Mark, Node};
use crate::read::{self, Map};
use crate::suggest::did_you_mean;
use crate::types::{JwksSource, Jwt, TokenSource};

const KEYS: &[&str] = &[
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
    let algorithms = m.req("algorithms", errs, |n, e| {
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
    let forward_token = m.opt("forward_token", errs, read::boolean).unwrap_or(true);
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

fn jwks(filter: &str, node: &Node, errs: &mut Errors) -> Option<JwksSource> {
    let place = format!("in jwks of jwt filter {filter:?}");
    let m = Map::new(node, &place, &["file", "url", "refresh"], errs)?;
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
    let m = Map::new(node, &place, &["header", "prefix", "query", "cookie"], errs)?;
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

    fn run(yaml: &str) -> (Option<Jwt>, String) {
        let node = load(yaml).unwrap();
        let mut errs = Errors::new("f");
        let out = jwt("auth", Mark::new(1, 1), &node, &mut errs);
        (out, errs.finish().to_string())
    }

    #[test]
    fn defaults() {
        let (j, e) = run("algorithms: [hs256]\nsecret: abc\nissuer: me\n");
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
        assert!(j.forward_token);
        assert!(j.cache);
        assert_eq!(j.leeway, Duration::ZERO);
    }

    #[test]
    fn cache_can_be_turned_off() {
        let (j, e) = run("algorithms: [HS256]\nsecret: abc\ncache: false\n");
        assert_eq!(e, "");
        assert!(!j.unwrap().cache);
        let (_, e) = run("algorithms: [HS256]\nsecret: abc\ncache: maybe\n");
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
}
