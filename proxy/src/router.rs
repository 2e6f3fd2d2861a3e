//! Route matching: compiled once per config, first match wins.

use http::request::Parts;
use http::{header, HeaderName, HeaderValue, Method};
use kaname_config::{PathMatch, RouteMatch};
use regex::Regex;

/// A route's `match:` compiled for the hot path.
#[derive(Debug)]
pub struct Matcher {
    path: Option<CompiledPath>,
    /// `case_sensitive: false` compares paths ignoring ASCII case.
    ignore_case: bool,
    methods: Option<Vec<Method>>,
    headers: Vec<(HeaderName, HeaderValue)>,
    host: Option<String>,
}

#[derive(Debug)]
enum CompiledPath {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug, thiserror::Error)]
#[error("route match: {0}")]
pub struct MatcherError(String);

impl Matcher {
    pub fn compile(m: &RouteMatch, case_sensitive: bool) -> Result<Self, MatcherError> {
        let path = match &m.path {
            None => None,
            Some(PathMatch::Exact(p)) => Some(CompiledPath::Exact(p.clone())),
            Some(PathMatch::Prefix(p)) => Some(CompiledPath::Prefix(p.clone())),
            Some(PathMatch::Regex(r)) => Some(CompiledPath::Regex(
                regex::RegexBuilder::new(r)
                    .case_insensitive(!case_sensitive)
                    .build()
                    .map_err(|e| MatcherError(e.to_string()))?,
            )),
        };
        let methods = match &m.methods {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|s| {
                        Method::from_bytes(s.as_bytes()).map_err(|e| MatcherError(e.to_string()))
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        let headers = m
            .headers
            .iter()
            .map(|(n, v)| {
                Ok((
                    HeaderName::from_bytes(n.as_bytes())
                        .map_err(|e| MatcherError(e.to_string()))?,
                    HeaderValue::from_str(v).map_err(|e| MatcherError(e.to_string()))?,
                ))
            })
            .collect::<Result<Vec<_>, MatcherError>>()?;
        Ok(Matcher {
            path,
            ignore_case: !case_sensitive,
            methods,
            headers,
            host: m.host.as_ref().map(|h| h.to_ascii_lowercase()),
        })
    }

    pub fn matches(&self, req: &Parts) -> bool {
        if let Some(p) = &self.path {
            let path = req.uri.path();
            let ok = match p {
                CompiledPath::Exact(e) if self.ignore_case => path.eq_ignore_ascii_case(e),
                CompiledPath::Exact(e) => path == e,
                CompiledPath::Prefix(pre) if self.ignore_case => path
                    .as_bytes()
                    .get(..pre.len())
                    .is_some_and(|head| head.eq_ignore_ascii_case(pre.as_bytes())),
                CompiledPath::Prefix(pre) => path.starts_with(pre.as_str()),
                CompiledPath::Regex(r) => r.is_match(path),
            };
            if !ok {
                return false;
            }
        }
        if let Some(methods) = &self.methods {
            if !methods.contains(&req.method) {
                return false;
            }
        }
        for (name, value) in &self.headers {
            if !req.headers.get_all(name).iter().any(|v| v == value) {
                return false;
            }
        }
        if let Some(host) = &self.host {
            match request_host(req) {
                Some(h) if h.eq_ignore_ascii_case(host) => {}
                _ => return false,
            }
        }
        true
    }
}

/// Host / :authority without its port.
fn request_host(req: &Parts) -> Option<&str> {
    let raw = req
        .uri
        .host()
        .or_else(|| req.headers.get(header::HOST).and_then(|h| h.to_str().ok()))?;
    if raw.starts_with('[') {
        // [v6]:port
        return raw.split(']').next().map(|h| h.trim_start_matches('['));
    }
    Some(raw.rsplit_once(':').map(|(h, _)| h).unwrap_or(raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn m(rm: RouteMatch) -> Matcher {
        Matcher::compile(&rm, true).unwrap()
    }

    #[test]
    fn case_insensitive_routes() {
        let rm = RouteMatch {
            path: Some(PathMatch::Prefix("/api/".into())),
            ..Default::default()
        };
        let mm = Matcher::compile(&rm, false).unwrap();
        assert!(mm.matches(&parts("GET", "/API/x", &[])));
        assert!(mm.matches(&parts("GET", "/api/x", &[])));
        assert!(!mm.matches(&parts("GET", "/ap", &[])));
        assert!(!m(rm).matches(&parts("GET", "/API/x", &[])));
        let re = RouteMatch {
            path: Some(PathMatch::Regex("^/v[0-9]+/admin".into())),
            ..Default::default()
        };
        assert!(Matcher::compile(&re, false)
            .unwrap()
            .matches(&parts("GET", "/V2/Admin", &[])));
    }

    #[test]
    fn path_kinds() {
        let exact = m(RouteMatch {
            path: Some(PathMatch::Exact("/a".into())),
            ..Default::default()
        });
        assert!(exact.matches(&parts("GET", "/a", &[])));
        assert!(!exact.matches(&parts("GET", "/a/b", &[])));
        let prefix = m(RouteMatch {
            path: Some(PathMatch::Prefix("/api/".into())),
            ..Default::default()
        });
        assert!(prefix.matches(&parts("GET", "/api/x?q=1", &[])));
        assert!(!prefix.matches(&parts("GET", "/apix", &[])));
        let re = m(RouteMatch {
            path: Some(PathMatch::Regex("^/v[0-9]+/".into())),
            ..Default::default()
        });
        assert!(re.matches(&parts("GET", "/v2/x", &[])));
        assert!(!re.matches(&parts("GET", "/vx/", &[])));
    }

    #[test]
    fn methods_headers_host() {
        let rm = RouteMatch {
            methods: Some(vec!["POST".into()]),
            headers: vec![("x-api-version".into(), "2".into())],
            host: Some("orders.shop.svc".into()),
            ..Default::default()
        };
        let mm = m(rm);
        let ok = [("host", "Orders.shop.svc:8080"), ("x-api-version", "2")];
        assert!(mm.matches(&parts("POST", "/", &ok)));
        assert!(!mm.matches(&parts("GET", "/", &ok)));
        assert!(!mm.matches(&parts("POST", "/", &[("host", "orders.shop.svc")])));
        assert!(mm.matches(&parts(
            "POST",
            "http://orders.shop.svc/x",
            &[("x-api-version", "2")]
        )));
    }
}
