//! The request model (request-model.md): where a request enters, its target
//! becomes one normalized path and one authority, and its upgrade is one the
//! listener allows — before routing, so no later layer (route, filter,
//! access log, upstream) can read the same bytes another way.

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Method, Version};
use kaname_config::{EscapedSlashes as ConfigSlashes, Listener};
use kaname_filters::{ErrorKind, ProxyError};

use crate::normalize::{
    normalize_path, request_authority, EscapedSlashes, PathOptions, RequestAuthority,
};

/// A listener's request-model settings, built once per config.
#[derive(Debug, Clone)]
pub struct RequestModel {
    path: PathOptions,
    /// Lower-case `Upgrade` protocol names forwarded (`websocket`).
    upgrades: Vec<String>,
}

/// Why a request is answered by kaname before any route sees it.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// 400 with this message.
    BadRequest(String),
    /// `CONNECT`: 405.
    Connect,
    /// `OPTIONS *`: kaname answers it itself (200).
    OptionsAsterisk,
}

impl Refusal {
    /// kaname's answer: an error for the rescue layer, or the `OPTIONS *`
    /// answer, which is no error.
    pub fn answer(self) -> Result<http::Response<kaname_filters::Body>, ProxyError> {
        let allow = HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS");
        match self {
            Refusal::BadRequest(msg) => Err(ProxyError::new(ErrorKind::BadRequest, msg)),
            Refusal::Connect => Err(ProxyError::new(
                ErrorKind::MethodNotAllowed,
                "CONNECT is not served: kaname is not a forward proxy",
            )
            .with_header(header::ALLOW, allow)),
            Refusal::OptionsAsterisk => {
                let mut res = http::Response::new(kaname_filters::body::empty());
                res.headers_mut().insert(header::ALLOW, allow);
                res.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
                Ok(res)
            }
        }
    }
}

impl RequestModel {
    pub fn of(cfg: &Listener) -> Self {
        RequestModel {
            path: PathOptions {
                merge_slashes: cfg.merge_slashes,
                escaped_slashes: match cfg.escaped_slashes {
                    ConfigSlashes::Reject => EscapedSlashes::Reject,
                    ConfigSlashes::Decode => EscapedSlashes::Decode,
                    ConfigSlashes::Keep => EscapedSlashes::Keep,
                },
            },
            upgrades: cfg.upgrades.clone(),
        }
    }

    /// Puts `parts` in the one form every later step reads: an origin-form
    /// URI with the normalized path, the one authority in `Host`, and only an
    /// allowed `Upgrade`. Returns whether an allowed upgrade is asked for.
    pub fn apply(&self, parts: &mut Parts) -> Result<bool, Refusal> {
        if parts.method == Method::CONNECT {
            return Err(Refusal::Connect);
        }
        // Only a target's authority has to be written into Host; a checked
        // Host is left as it is.
        let authority = match request_authority(parts.version, &parts.uri, &parts.headers) {
            Ok(Some(RequestAuthority::Target(t))) => Some(t.clone()),
            Ok(_) => None,
            Err(e) => return Err(Refusal::BadRequest(e.to_string())),
        };
        if parts.uri.path() == "*" {
            // Asterisk-form is for `OPTIONS *` alone (RFC 9112 §3.2.4).
            return Err(if parts.method == Method::OPTIONS {
                Refusal::OptionsAsterisk
            } else {
                Refusal::BadRequest(format!(
                    "{} * is not a request for a resource",
                    parts.method
                ))
            });
        }
        self.normalize_target(parts)?;
        if let Some(a) = authority {
            set_host(&mut parts.headers, &a);
        }
        Ok(self.filter_upgrade(parts.version, &mut parts.headers))
    }

    fn normalize_target(&self, parts: &mut Parts) -> Result<(), Refusal> {
        let uri = &parts.uri;
        let path = uri.path();
        let normal =
            normalize_path(path, self.path).map_err(|e| Refusal::BadRequest(e.to_string()))?;
        let origin_form = uri.scheme().is_none() && uri.authority().is_none();
        if origin_form && normal == path {
            return Ok(());
        }
        let pq = match uri.query() {
            Some(q) => format!("{normal}?{q}"),
            None => normal.into_owned(),
        };
        let pq = PathAndQuery::try_from(pq)
            .map_err(|e| Refusal::BadRequest(format!("bad request target: {e}")))?;
        parts.uri = Uri::from(pq);
        Ok(())
    }

    /// Keeps only the `Upgrade` protocols the listener allows; with none
    /// left, `Upgrade` and its `Connection` token go and the request is
    /// plain HTTP/1.1 (an `h2c` upgrade never opens a tunnel).
    fn filter_upgrade(&self, version: Version, headers: &mut HeaderMap) -> bool {
        if !headers.contains_key(header::UPGRADE) {
            return false;
        }
        let asked = version == Version::HTTP_11 && crate::headers::wants_upgrade(headers);
        let kept: Vec<&str> = if asked {
            headers
                .get_all(header::UPGRADE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
                .filter(|p| {
                    let name = p.split('/').next().unwrap_or("");
                    self.upgrades.iter().any(|u| u.eq_ignore_ascii_case(name))
                })
                .collect()
        } else {
            Vec::new()
        };
        let value = (!kept.is_empty())
            .then(|| HeaderValue::from_str(&kept.join(", ")).ok())
            .flatten();
        match value {
            Some(v) => {
                headers.insert(header::UPGRADE, v);
                true
            }
            None => {
                headers.remove(header::UPGRADE);
                // `Connection: upgrade` (and HTTP2-Settings, which only h2c
                // uses) go with it; strip_hop_by_hop removes the rest.
                headers.remove("http2-settings");
                remove_connection_token(headers, "upgrade");
                false
            }
        }
    }
}

fn set_host(headers: &mut HeaderMap, a: &Authority) {
    if headers.get(header::HOST).map(HeaderValue::as_bytes) == Some(a.as_str().as_bytes()) {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(a.as_str()) {
        headers.insert(header::HOST, v);
    }
}

/// Removes one token from every `Connection` header (and the header when
/// nothing is left).
fn remove_connection_token(headers: &mut HeaderMap, token: &str) {
    let rest: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case(token))
        .map(str::to_owned)
        .collect();
    headers.remove(header::CONNECTION);
    if rest.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&rest.join(", ")) {
        headers.insert(header::CONNECTION, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn model(upgrades: &[&str]) -> RequestModel {
        RequestModel {
            path: PathOptions::default(),
            upgrades: upgrades.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn absolute_form_authority_wins_over_host() {
        let m = model(&["websocket"]);
        let mut p = parts(
            "GET",
            "http://public.example/%61pi/../x?q=1",
            &[("host", "admin.example")],
        );
        m.apply(&mut p).unwrap();
        assert_eq!(p.uri.to_string(), "/x?q=1");
        assert_eq!(p.headers["host"], "public.example");
    }

    #[test]
    fn connect_and_asterisk() {
        let m = model(&[]);
        let mut p = parts("CONNECT", "example.com:443", &[("host", "example.com:443")]);
        assert!(matches!(m.apply(&mut p), Err(Refusal::Connect)));
        let mut p = parts("OPTIONS", "*", &[("host", "a")]);
        assert!(matches!(m.apply(&mut p), Err(Refusal::OptionsAsterisk)));
        let mut p = parts("GET", "*", &[("host", "a")]);
        assert!(matches!(m.apply(&mut p), Err(Refusal::BadRequest(_))));
    }

    #[test]
    fn h2c_upgrade_is_removed_websocket_kept() {
        let m = model(&["websocket"]);
        let mut p = parts(
            "GET",
            "/",
            &[
                ("host", "a"),
                ("connection", "Upgrade, HTTP2-Settings, x-keep"),
                ("upgrade", "h2c"),
                ("http2-settings", "AAMAAABkAAQAAP__"),
            ],
        );
        assert!(!m.apply(&mut p).unwrap());
        assert!(!p.headers.contains_key("upgrade"));
        assert!(!p.headers.contains_key("http2-settings"));
        assert_eq!(p.headers["connection"], "HTTP2-Settings, x-keep");

        let mut p = parts(
            "GET",
            "/ws",
            &[
                ("host", "a"),
                ("connection", "upgrade"),
                ("upgrade", "h2c, WebSocket"),
            ],
        );
        assert!(m.apply(&mut p).unwrap());
        assert_eq!(p.headers["upgrade"], "WebSocket");
    }

    #[test]
    fn bad_paths_and_hosts_are_refused() {
        let m = model(&[]);
        for (uri, host) in [
            ("/a/../../b", "a"),
            ("/a%2fb", "a"),
            ("/a", "a b"),
            ("/a%00", "a"),
            ("/a", "admin.example."),
            ("/api/..;/admin", "a"),
        ] {
            let mut p = parts("GET", uri, &[("host", host)]);
            assert!(
                matches!(m.apply(&mut p), Err(Refusal::BadRequest(_))),
                "{uri} {host}"
            );
        }
        let mut p = parts("GET", "/", &[("host", "a"), ("host", "b")]);
        assert!(matches!(m.apply(&mut p), Err(Refusal::BadRequest(_))));
        let mut p = parts("GET", "/", &[]);
        assert!(matches!(m.apply(&mut p), Err(Refusal::BadRequest(_))));
    }
}
