//! Where the token is — a header with a prefix, a query parameter or a
//! cookie (the filter's one `from:`) — and how every copy of it is taken
//! out before the upstream (`forward_token: false`, the default).
//!
//! One token per request (RFC 6750 §2: a client uses one method, once):
//! - two values of the configured header carrying its prefix (two
//!   `Authorization: Bearer …`), two values of the parameter, or two cookies
//!   of the name are refused as [`Extracted::Several`] (400
//!   `invalid_request`), never one of them picked;
//! - so is a header token and a query token where the filter reads one of
//!   them: a filter reading a header refuses a request that also has an
//!   `access_token` query parameter, a filter reading a query parameter one
//!   that also has an `Authorization: Bearer …` header (RFC 6750 §2.1 and
//!   §2.3, the names an upstream would read a bearer token from).
//!
//! Query parameter names are compared decoded (`access%5Ftoken` is
//! `access_token`, as the upstream's framework reads it), and the value is
//! decoded likewise.

use http::header::{HeaderName, HeaderValue, AUTHORIZATION, COOKIE};
use http::{HeaderMap, Request, Uri};
use kaname_config::types::TokenSource;

/// RFC 6750 §2.3: the query parameter a bearer token may come in.
const RFC6750_QUERY: &str = "access_token";
/// RFC 6750 §2.1: the header scheme a bearer token may come in.
const RFC6750_PREFIX: &str = "Bearer ";

/// What the request carries where the filter looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extracted {
    /// No token: no header with the prefix (another scheme such as `Basic`
    /// does not count), no such parameter or cookie, or an empty one.
    Missing,
    One(String),
    /// More than one token: refused, described by the text.
    Several(&'static str),
}

/// A filter's `from:`, its header name parsed once, not on every request
/// (twice: to find the token and to strip it).
#[derive(Debug, Clone)]
pub struct TokenPlace {
    source: TokenSource,
    /// The header's name; None for a query or cookie (or a name http will
    /// not take, which no request can carry).
    header: Option<HeaderName>,
}

impl TokenPlace {
    pub fn new(source: TokenSource) -> Self {
        let header = match &source {
            TokenSource::Header { name, .. } => HeaderName::from_bytes(name.as_bytes()).ok(),
            _ => None,
        };
        TokenPlace { source, header }
    }

    /// The values of the token's header (none for a query or cookie).
    fn header_values<'a>(
        &self,
        headers: &'a HeaderMap,
    ) -> impl Iterator<Item = &'a HeaderValue> + use<'a> {
        self.header
            .as_ref()
            .map(|name| headers.get_all(name))
            .into_iter()
            .flatten()
    }
}

/// The request's token for `place`.
pub fn extract<B>(place: &TokenPlace, req: &Request<B>) -> Extracted {
    let (token, other_method) = match &place.source {
        TokenSource::Header { prefix, .. } => {
            let mut values = place
                .header_values(req.headers())
                .filter(|v| carries_prefix(v, prefix));
            let first = values.next();
            if values.next().is_some() {
                return Extracted::Several("more than one token in the request");
            }
            let token = first
                .and_then(|v| v.to_str().ok())
                .map(|v| v[prefix.len()..].trim().to_string());
            (
                token,
                query_values(req.uri(), RFC6750_QUERY).next().is_some(),
            )
        }
        TokenSource::Query(param) => {
            let mut values = query_values(req.uri(), param);
            let first = values.next();
            if values.next().is_some() {
                return Extracted::Several("more than one token in the request");
            }
            let other = req
                .headers()
                .get_all(AUTHORIZATION)
                .iter()
                .any(|v| carries_prefix(v, RFC6750_PREFIX));
            (first, other)
        }
        TokenSource::Cookie(name) => {
            let mut values = cookie_values(req.headers(), name);
            let first = values.next();
            if values.next().is_some() {
                return Extracted::Several("more than one token in the request");
            }
            (first.map(str::to_string), false)
        }
    };
    match token {
        Some(_) if other_method => {
            Extracted::Several("token sent by more than one method (header and query)")
        }
        Some(t) if !t.is_empty() => Extracted::One(t),
        _ => Extracted::Missing,
    }
}

/// Removes every copy of the token from the request: each value of the
/// header carrying the prefix (other values, such as `Basic`, stay), each
/// occurrence of the query parameter by its decoded name (the other
/// parameters kept byte for byte), each cookie of the name (the `Cookie`
/// header rebuilt from the others).
pub fn strip<B>(place: &TokenPlace, req: &mut Request<B>) {
    match &place.source {
        TokenSource::Header { prefix, .. } => {
            let Some(name) = &place.header else {
                return;
            };
            let headers = req.headers_mut();
            let all = headers.get_all(name);
            if !all.iter().any(|v| carries_prefix(v, prefix)) {
                return;
            }
            let kept: Vec<HeaderValue> = all
                .iter()
                .filter(|v| !carries_prefix(v, prefix))
                .cloned()
                .collect();
            headers.remove(name);
            for v in kept {
                headers.append(name.clone(), v);
            }
        }
        TokenSource::Query(param) => {
            if let Some(uri) = without_query_param(req.uri(), param) {
                *req.uri_mut() = uri;
            }
        }
        TokenSource::Cookie(name) => strip_cookie(req.headers_mut(), name),
    }
}

/// Auth schemes are case-insensitive (RFC 9110 §11.1): `bearer x` counts.
/// An empty prefix: every value carries it.
fn carries_prefix(value: &HeaderValue, prefix: &str) -> bool {
    value
        .as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// `a=1&b&c=3` as (raw pair, raw name, raw value); empty pairs skipped.
fn query_pairs(query: &str) -> impl Iterator<Item = (&str, &str, Option<&str>)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => (pair, k, Some(v)),
            None => (pair, pair, None),
        })
}

/// The decoded values of every occurrence of `param` (by decoded name).
fn query_values<'a>(uri: &'a Uri, param: &'a str) -> impl Iterator<Item = String> + 'a {
    query_pairs(uri.query().unwrap_or(""))
        .filter(move |(_, k, _)| decode(k) == param.as_bytes())
        .map(|(_, _, v)| String::from_utf8_lossy(&decode(v.unwrap_or(""))).into_owned())
}

/// The URI without any occurrence of `param`, or None when it has none.
fn without_query_param(uri: &Uri, param: &str) -> Option<Uri> {
    let query = uri.query()?;
    let mut removed = false;
    let kept: Vec<&str> = query_pairs(query)
        .filter_map(|(pair, k, _)| {
            if decode(k) == param.as_bytes() {
                removed = true;
                None
            } else {
                Some(pair)
            }
        })
        .collect();
    if !removed {
        return None;
    }
    let path_and_query = if kept.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// application/x-www-form-urlencoded decoding, as the upstream's framework
/// reads a query: `+` is a space, `%XX` a byte (a stray `%` stays).
fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    out
}

fn hex(c: Option<&u8>) -> Option<u8> {
    (*c? as char).to_digit(16).map(|d| d as u8)
}

/// Cookie pairs of every `Cookie` header (HTTP/2 may split them), trimmed.
fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            Some((k.trim(), v.trim()))
        })
}

fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> {
    cookie_pairs(headers)
        .filter(move |(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// One `Cookie` header of the other cookie-strings, each as it was sent
/// (trimmed), joined by `; ` (RFC 9113 §8.2.3 for split ones); none left,
/// no header.
fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    if cookie_values(headers, name).next().is_none() {
        return;
    }
    let is_token = |segment: &str| {
        segment
            .split_once('=')
            .is_some_and(|(k, _)| k.trim() == name)
    };
    let kept: Vec<String> = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|s| !s.is_empty() && !is_token(s))
        .map(str::to_string)
        .collect();
    headers.remove(COOKIE);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join("; ")) {
            headers.insert(COOKIE, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_source() -> TokenPlace {
        TokenPlace::new(TokenSource::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        })
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn one(t: &str) -> Extracted {
        Extracted::One(t.into())
    }

    const SEVERAL: Extracted = Extracted::Several("more than one token in the request");
    const TWO_METHODS: Extracted =
        Extracted::Several("token sent by more than one method (header and query)");

    #[test]
    fn header_with_prefix() {
        let s = header_source();
        let r = req("/", &[("authorization", "Bearer abc.def.ghi")]);
        assert_eq!(extract(&s, &r), one("abc.def.ghi"));
        let r = req("/", &[("authorization", "bearer abc")]);
        assert_eq!(extract(&s, &r), one("abc"));
        // Another scheme, an empty token, no header: all "missing".
        assert_eq!(
            extract(&s, &req("/", &[("authorization", "Basic eDp5")])),
            Extracted::Missing
        );
        assert_eq!(
            extract(&s, &req("/", &[("authorization", "Bearer ")])),
            Extracted::Missing
        );
        assert_eq!(extract(&s, &req("/", &[])), Extracted::Missing);
        let mut r = req("/", &[("authorization", "Bearer abc"), ("x-other", "1")]);
        strip(&s, &mut r);
        assert!(r.headers().get("authorization").is_none());
        assert!(r.headers().get("x-other").is_some());
    }

    #[test]
    fn two_header_tokens_are_several() {
        let s = header_source();
        for second in ["Bearer other", "bearer abc", "BEARER ", "Bearer abc"] {
            let r = req(
                "/",
                &[("authorization", "Bearer abc"), ("authorization", second)],
            );
            assert_eq!(extract(&s, &r), SEVERAL, "second value {second:?}");
        }
        // Another scheme beside the bearer token is not a second token;
        // stripping takes the bearer value only.
        let mut r = req(
            "/",
            &[
                ("authorization", "Basic eDp5"),
                ("authorization", "Bearer abc"),
            ],
        );
        assert_eq!(extract(&s, &r), one("abc"));
        strip(&s, &mut r);
        let left: Vec<_> = r.headers().get_all("authorization").iter().collect();
        assert_eq!(left, ["Basic eDp5"]);
        // A header without a prefix: any two values are two tokens.
        let custom = TokenPlace::new(TokenSource::Header {
            name: "x-token".into(),
            prefix: String::new(),
        });
        let r = req("/", &[("x-token", "a.b.c"), ("x-token", "")]);
        assert_eq!(extract(&custom, &r), SEVERAL);
        let mut r = req("/", &[("x-token", "a.b.c")]);
        assert_eq!(extract(&custom, &r), one("a.b.c"));
        strip(&custom, &mut r);
        assert!(r.headers().get("x-token").is_none());
    }

    #[test]
    fn header_and_query_tokens_are_two_methods() {
        let s = header_source();
        let r = req(
            "/p?a=1&access_token=x.y.z",
            &[("authorization", "Bearer abc")],
        );
        assert_eq!(extract(&s, &r), TWO_METHODS);
        // Encoded name, no value: still the parameter.
        let r = req("/p?access%5Ftoken", &[("authorization", "Bearer abc")]);
        assert_eq!(extract(&s, &r), TWO_METHODS);
        // Another parameter name is no token; no header token, no refusal.
        let r = req("/p?token=x", &[("authorization", "Bearer abc")]);
        assert_eq!(extract(&s, &r), one("abc"));
        assert_eq!(
            extract(&s, &req("/p?access_token=x", &[])),
            Extracted::Missing
        );
        let q = TokenPlace::new(TokenSource::Query("token".into()));
        let r = req("/p?token=x", &[("authorization", "Bearer abc")]);
        assert_eq!(extract(&q, &r), TWO_METHODS);
        let r = req("/p?token=x", &[("authorization", "Basic eDp5")]);
        assert_eq!(extract(&q, &r), one("x"));
        assert_eq!(
            extract(&q, &req("/p", &[("authorization", "Bearer abc")])),
            Extracted::Missing
        );
    }

    #[test]
    fn query_parameter() {
        let s = TokenPlace::new(TokenSource::Query("access_token".into()));
        let mut r = req("/p?a=1&access_token=t.o.k&b=2", &[]);
        assert_eq!(extract(&s, &r), one("t.o.k"));
        strip(&s, &mut r);
        assert_eq!(r.uri().to_string(), "/p?a=1&b=2");
        let mut r = req("/p?access_token=t", &[]);
        strip(&s, &mut r);
        assert_eq!(r.uri().to_string(), "/p");
        assert_eq!(
            extract(&s, &req("/p?access_tokenx=t", &[])),
            Extracted::Missing
        );
        // Names and values are read decoded.
        let r = req("/p?access%5ftoken=t%2Eo.k", &[]);
        assert_eq!(extract(&s, &r), one("t.o.k"));
    }

    #[test]
    fn query_copies_are_several_and_all_stripped() {
        let s = TokenPlace::new(TokenSource::Query("access_token".into()));
        for q in [
            "access_token=a&access_token=b",
            "access_token=a&access_token=a",
            "access_token=a&access%5Ftoken=b",
            "access_token=a&access_token",
            "access_token=a&access_token=",
        ] {
            let r = req(&format!("/p?{q}"), &[]);
            assert_eq!(extract(&s, &r), SEVERAL, "{q}");
        }
        // Every copy goes, the rest stays byte for byte (encodings, order,
        // empty values, valueless parameters).
        let mut r = req(
            "http://h/p?x=%2F%20&access_token=a&y=&access%5Ftoken=b&z&w=1+2",
            &[],
        );
        strip(&s, &mut r);
        assert_eq!(r.uri().to_string(), "http://h/p?x=%2F%20&y=&z&w=1+2");
        let mut r = req("/p?a=1", &[]);
        strip(&s, &mut r);
        assert_eq!(r.uri().to_string(), "/p?a=1");
    }

    #[test]
    fn cookie() {
        let s = TokenPlace::new(TokenSource::Cookie("session".into()));
        let mut r = req("/", &[("cookie", "a=1; session=t.o.k; b=2")]);
        assert_eq!(extract(&s, &r), one("t.o.k"));
        strip(&s, &mut r);
        assert_eq!(r.headers()["cookie"], "a=1; b=2");
        let mut r = req("/", &[("cookie", "session=x")]);
        strip(&s, &mut r);
        assert!(r.headers().get("cookie").is_none());
        assert_eq!(
            extract(&s, &req("/", &[("cookie", "sessionx=1")])),
            Extracted::Missing
        );
    }

    #[test]
    fn two_cookies_are_several() {
        let s = TokenPlace::new(TokenSource::Cookie("session".into()));
        let r = req("/", &[("cookie", "session=a; x=1; session=b")]);
        assert_eq!(extract(&s, &r), SEVERAL);
        // Split over two Cookie headers (HTTP/2) counts the same.
        let r = req("/", &[("cookie", "session=a"), ("cookie", "session=a")]);
        assert_eq!(extract(&s, &r), SEVERAL);
        // A bearer header is not where a cookie filter looks.
        let r = req(
            "/?access_token=q",
            &[("cookie", "session=a"), ("authorization", "Bearer b")],
        );
        assert_eq!(extract(&s, &r), one("a"));
        // Split headers are joined; other cookies kept as sent.
        let mut r = req(
            "/",
            &[("cookie", "a=1; session=t"), ("cookie", "b=\"q x\"; c")],
        );
        strip(&s, &mut r);
        let left: Vec<_> = r.headers().get_all("cookie").iter().collect();
        assert_eq!(left, ["a=1; b=\"q x\"; c"]);
    }

    #[test]
    fn decoding() {
        assert_eq!(decode("a%5Fb+c"), b"a_b c");
        assert_eq!(decode("%5f"), b"_");
        assert_eq!(decode("100%"), b"100%");
        assert_eq!(decode("%zz%4"), b"%zz%4");
        assert_eq!(decode("%41%"), b"A%");
    }
}
