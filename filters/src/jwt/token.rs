//! Where the token is: a header with a prefix, a query parameter or a
//! cookie; and how to strip it before the upstream (`forward_token: false`).

use http::header::{HeaderValue, COOKIE};
use http::{Request, Uri};
use kaname_config::types::TokenSource;

/// The token the request carries, or None when it carries none (no header,
/// another scheme such as `Basic`, no such parameter or cookie, or empty).
pub fn extract<B>(source: &TokenSource, req: &Request<B>) -> Option<String> {
    let token = match source {
        TokenSource::Header { name, prefix } => {
            // Only the first value counts: a second Authorization header
            // cannot smuggle another token past the check.
            let value = req.headers().get(name.as_str())?.to_str().ok()?;
            strip_prefix_ignore_case(value, prefix)?.trim()
        }
        TokenSource::Query(param) => query_value(req.uri(), param)?,
        TokenSource::Cookie(name) => cookie_value(req, name)?,
    };
    (!token.is_empty()).then(|| token.to_string())
}

/// Removes the token from the request: the whole header, the query
/// parameter, or the cookie (other cookies and parameters stay).
pub fn strip<B>(source: &TokenSource, req: &mut Request<B>) {
    match source {
        TokenSource::Header { name, .. } => {
            req.headers_mut().remove(name.as_str());
        }
        TokenSource::Query(param) => {
            if let Some(uri) = without_query_param(req.uri(), param) {
                *req.uri_mut() = uri;
            }
        }
        TokenSource::Cookie(name) => strip_cookie(req, name),
    }
}

/// Auth schemes are case-insensitive (RFC 9110 §11.1): `bearer x` counts.
fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

fn query_value<'a>(uri: &'a Uri, param: &str) -> Option<&'a str> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == param).then_some(v)
    })
}

fn without_query_param(uri: &Uri, param: &str) -> Option<Uri> {
    let query = uri.query()?;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != param)
        .collect();
    let path_and_query = if kept.is_empty() {
        uri.path().to_string()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// Cookie pairs of every `Cookie` header (HTTP/2 may split them).
fn cookie_pairs<B>(req: &Request<B>) -> impl Iterator<Item = (&str, &str)> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            Some((k.trim(), v.trim()))
        })
}

fn cookie_value<'a, B>(req: &'a Request<B>, name: &str) -> Option<&'a str> {
    cookie_pairs(req)
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

fn strip_cookie<B>(req: &mut Request<B>, name: &str) {
    if cookie_value(req, name).is_none() {
        return;
    }
    let kept: Vec<String> = cookie_pairs(req)
        .filter(|(k, _)| *k != name)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let headers = req.headers_mut();
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

    fn header_source() -> TokenSource {
        TokenSource::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        }
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn header_with_prefix() {
        let s = header_source();
        let r = req("/", &[("authorization", "Bearer abc.def.ghi")]);
        assert_eq!(extract(&s, &r).as_deref(), Some("abc.def.ghi"));
        let r = req("/", &[("authorization", "bearer abc")]);
        assert_eq!(extract(&s, &r).as_deref(), Some("abc"));
        // Another scheme, an empty token, no header: all "missing".
        assert_eq!(
            extract(&s, &req("/", &[("authorization", "Basic eDp5")])),
            None
        );
        assert_eq!(
            extract(&s, &req("/", &[("authorization", "Bearer ")])),
            None
        );
        assert_eq!(extract(&s, &req("/", &[])), None);
        let mut r = req("/", &[("authorization", "Bearer abc"), ("x-other", "1")]);
        strip(&s, &mut r);
        assert!(r.headers().get("authorization").is_none());
        assert!(r.headers().get("x-other").is_some());
    }

    #[test]
    fn query_parameter() {
        let s = TokenSource::Query("access_token".into());
        let mut r = req("/p?a=1&access_token=t.o.k&b=2", &[]);
        assert_eq!(extract(&s, &r).as_deref(), Some("t.o.k"));
        strip(&s, &mut r);
        assert_eq!(r.uri().to_string(), "/p?a=1&b=2");
        let mut r = req("/p?access_token=t", &[]);
        strip(&s, &mut r);
        assert_eq!(r.uri().to_string(), "/p");
        assert_eq!(extract(&s, &req("/p?access_tokenx=t", &[])), None);
    }

    #[test]
    fn cookie() {
        let s = TokenSource::Cookie("session".into());
        let mut r = req("/", &[("cookie", "a=1; session=t.o.k; b=2")]);
        assert_eq!(extract(&s, &r).as_deref(), Some("t.o.k"));
        strip(&s, &mut r);
        assert_eq!(r.headers()["cookie"], "a=1; b=2");
        let mut r = req("/", &[("cookie", "session=x")]);
        strip(&s, &mut r);
        assert!(r.headers().get("cookie").is_none());
        assert_eq!(extract(&s, &req("/", &[("cookie", "sessionx=1")])), None);
    }
}
