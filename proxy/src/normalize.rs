//! Request normalization: one canonical path and one authority per request.
//!
//! Routing, filters and the upstream must all see the same request. If the
//! proxy matched `/public/..%2fapi` as `/public/...` while the upstream
//! resolved it to `/api`, a route (or an auth filter) could be bypassed.
//! So the path is brought to one normal form (or refused with a 400), and
//! the authority is taken from exactly one place (Host or the target).
//!
//! Pure functions: no I/O, no allocation for an already normal path, and no
//! panic for any input (fuzzed by fuzz/fuzz_targets/request_normalize.rs).

use std::borrow::Cow;
use std::net::Ipv6Addr;

use http::uri::Authority;
use http::{header, HeaderMap, HeaderValue, Uri, Version};

/// What to do with `%2F` / `%5C` (an encoded `/` or `\`) in a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// Refuse the request: servers disagree on whether it is a separator.
    #[default]
    Reject,
    /// Decode both to `/`, then normalize (dot segments included).
    Decode,
    /// Pass on as it is (upper-cased), never as a separator.
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathOptions {
    /// Merge repeated slashes (`//a` → `/a`).
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

impl Default for PathOptions {
    fn default() -> Self {
        PathOptions {
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Reject,
        }
    }
}

/// Why a path is refused (the message is the 400 body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path climbs above the root")]
    AboveRoot,
    #[error("path has an encoded slash or backslash (%2F, %5C)")]
    EscapedSlash,
    #[error("path has a backslash")]
    Backslash,
    #[error("path has a NUL or control character")]
    ControlCharacter,
    #[error("path has a malformed percent-escape")]
    BadEscape,
    #[error("path does not start with '/'")]
    NotAbsolute,
    /// `..;x` or `.;x`: servlet containers drop the `;` parameters and then
    /// resolve the dot segment, so it would climb past a prefix route.
    #[error("path has a dot segment with parameters (..;)")]
    DotParameter,
}

/// `.;x` or `..;x`.
fn dot_with_parameters(seg: &[u8]) -> bool {
    match seg.iter().position(|&b| b == b';') {
        Some(i) => matches!(&seg[..i], b"." | b".."),
        None => false,
    }
}

/// Why a request's authority is refused (the message is the 400 body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("request has no Host header")]
    MissingHost,
    #[error("request has more than one Host header")]
    DuplicateHost,
    #[error("request has an invalid host")]
    InvalidHost,
    #[error("Host header differs from :authority")]
    HostMismatch,
}

/// Normalizes the path part of a request target (no query: the caller splits
/// at the first '?'). Returns `Cow::Borrowed` when the input is already normal.
pub fn normalize_path(path: &str, opts: PathOptions) -> Result<Cow<'_, str>, PathError> {
    if is_normal(path.as_bytes(), opts) {
        return Ok(Cow::Borrowed(path));
    }
    let out = normalize_owned(path.as_bytes(), opts)?;
    // is_normal is exact, but an equal result costs nothing to borrow.
    Ok(if out == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(out)
    })
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// NUL, C0 controls and DEL.
fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7F
}

fn hex_value(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// The byte escaped at `b[i..i + 2]` (the two digits after a '%').
fn escaped_byte(b: &[u8], i: usize) -> Option<u8> {
    let hi = hex_value(*b.get(i)?)?;
    let lo = hex_value(*b.get(i + 1)?)?;
    Some(hi << 4 | lo)
}

fn push_escape(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0x0F)]));
}

/// The fast path: true only if `normalize_owned` would return `b` unchanged.
fn is_normal(b: &[u8], opts: PathOptions) -> bool {
    // A segment that normalization would drop or rewrite.
    let segment_ok = |seg: &[u8], last: bool| {
        seg != b"."
            && seg != b".."
            && !dot_with_parameters(seg)
            && (last || !seg.is_empty() || !opts.merge_slashes)
    };
    if b.first() != Some(&b'/') {
        return false;
    }
    let (mut i, mut start) = (1, 1);
    while let Some(&c) = b.get(i) {
        match c {
            b'/' => {
                if !segment_ok(b.get(start..i).unwrap_or_default(), false) {
                    return false;
                }
                start = i + 1;
            }
            b'%' => {
                let upper = |j: usize| matches!(b.get(j), Some(b'0'..=b'9' | b'A'..=b'F'));
                let Some(v) = escaped_byte(b, i + 1).filter(|_| upper(i + 1) && upper(i + 2))
                else {
                    return false;
                };
                let slash = v == b'/' || v == b'\\';
                if is_unreserved(v)
                    || is_control(v)
                    || (slash && opts.escaped_slashes != EscapedSlashes::Keep)
                {
                    return false;
                }
                i += 2;
            }
            // Visible ASCII but the backslash; space, controls and raw
            // non-ASCII are rewritten or refused.
            b'\\' => return false,
            0x21..=0x7E => {}
            _ => return false,
        }
        i += 1;
    }
    segment_ok(b.get(start..).unwrap_or_default(), true)
}

/// The output path as a stack of segments: each is `/` + its text, and
/// `starts` holds where each begins, so `..` is a truncate.
struct Segments {
    buf: String,
    starts: Vec<usize>,
    merge_slashes: bool,
}

impl Segments {
    fn push(&mut self, seg: &str) {
        self.starts.push(self.buf.len());
        self.buf.push('/');
        self.buf.push_str(seg);
    }

    /// RFC 3986 §5.2.4 on one (decoded) segment; `last` is the final one.
    fn add(&mut self, seg: &str, last: bool) -> Result<(), PathError> {
        if dot_with_parameters(seg.as_bytes()) {
            return Err(PathError::DotParameter);
        }
        match seg {
            "." => {}
            ".." => {
                // RFC 3986 would stop at the root; a client that tries to
                // climb above it is probing, so refuse.
                let start = self.starts.pop().ok_or(PathError::AboveRoot)?;
                self.buf.truncate(start);
            }
            "" if self.merge_slashes && !last => {}
            _ => {
                self.push(seg);
                return Ok(());
            }
        }
        // A trailing dot segment keeps the trailing slash (`/a/..` → `/`).
        if last {
            self.push("");
        }
        Ok(())
    }
}

fn normalize_owned(b: &[u8], opts: PathOptions) -> Result<String, PathError> {
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut out = Segments {
        buf: String::with_capacity(b.len() + 8),
        starts: Vec::new(),
        merge_slashes: opts.merge_slashes,
    };
    // The current segment, decoded to its canonical text (so `%2e` is `.`).
    let mut seg = String::new();
    let mut i = 1;
    while let Some(&c) = b.get(i) {
        i += 1;
        match c {
            b'/' => {
                out.add(&seg, false)?;
                seg.clear();
            }
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let v = escaped_byte(b, i).ok_or(PathError::BadEscape)?;
                i += 2;
                match v {
                    _ if is_control(v) => return Err(PathError::ControlCharacter),
                    _ if is_unreserved(v) => seg.push(char::from(v)),
                    b'/' | b'\\' => match opts.escaped_slashes {
                        EscapedSlashes::Reject => return Err(PathError::EscapedSlash),
                        EscapedSlashes::Decode => {
                            out.add(&seg, false)?;
                            seg.clear();
                        }
                        EscapedSlashes::Keep => push_escape(&mut seg, v),
                    },
                    // `%25` stays: decoding it would let `%252e` become `.`
                    // on a second pass (double decoding).
                    _ => push_escape(&mut seg, v),
                }
            }
            _ if is_control(c) || c == b' ' => return Err(PathError::ControlCharacter),
            // Raw UTF-8 bytes: encoded, so `é` and `%C3%A9` are one path.
            0x80.. => push_escape(&mut seg, c),
            _ => seg.push(char::from(c)),
        }
    }
    out.add(&seg, true)?;
    if out.buf.is_empty() {
        out.buf.push('/'); // not reached: the last segment always pushes
    }
    Ok(out.buf)
}

/// Where a request's one authority is, borrowed from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestAuthority<'a> {
    /// The `Host` header, checked: already what an upstream is sent.
    Host(&'a str),
    /// The absolute-form target's or HTTP/2's `:authority`, which `Host`
    /// must be made to say.
    Target(&'a Authority),
}

impl RequestAuthority<'_> {
    // Read by the tests and the fuzz target; the request model needs only
    // the variant.
    #[allow(dead_code)]
    pub fn as_str(&self) -> &str {
        match self {
            RequestAuthority::Host(h) => h,
            RequestAuthority::Target(t) => t.as_str(),
        }
    }
}

/// The one authority of a request: the absolute-form target's or `:authority`
/// if any, else the Host header's; `None` only for an HTTP/1.0 request with
/// neither. The authority is kept as the client sent it (case included).
/// Nothing is parsed into an `Authority` or copied: an origin-form request
/// with a good Host (nearly all) costs a check of its bytes.
pub fn request_authority<'a>(
    version: Version,
    uri: &'a Uri,
    headers: &'a HeaderMap,
) -> Result<Option<RequestAuthority<'a>>, AuthorityError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(AuthorityError::DuplicateHost);
    }
    let host = host.map(checked_host).transpose()?;
    let target = match uri.authority() {
        Some(a) if !valid_authority(a.as_str()) => return Err(AuthorityError::InvalidHost),
        target => target,
    };
    if version == Version::HTTP_2 || version == Version::HTTP_3 {
        return match (target, host) {
            (Some(t), Some(h)) if !t.as_str().eq_ignore_ascii_case(h) => {
                Err(AuthorityError::HostMismatch)
            }
            (Some(t), _) => Ok(Some(RequestAuthority::Target(t))),
            (None, host) => host
                .map(|h| Some(RequestAuthority::Host(h)))
                .ok_or(AuthorityError::MissingHost),
        };
    }
    // HTTP/1.1 requires Host (RFC 9112 §3.2), but a proxy given an
    // absolute-form target must ignore Host for the target's authority
    // (§3.2.2): with one, a missing Host leaves nothing to read two ways.
    // Two Host headers, or a malformed one, are still refused.
    if host.is_none()
        && target.is_none()
        && version != Version::HTTP_10
        && version != Version::HTTP_09
    {
        return Err(AuthorityError::MissingHost);
    }
    Ok(target
        .map(RequestAuthority::Target)
        .or(host.map(RequestAuthority::Host)))
}

/// A Host value that `valid_authority` accepts, which is always one
/// `http`'s `Authority` parses too (the tests check it): later steps that
/// parse it (an HTTP/2 upstream's `:authority`) cannot fail.
fn checked_host(value: &HeaderValue) -> Result<&str, AuthorityError> {
    let s = value.to_str().map_err(|_| AuthorityError::InvalidHost)?;
    if !valid_authority(s) {
        return Err(AuthorityError::InvalidHost);
    }
    Ok(s)
}

/// The bytes of a reg-name (RFC 3986 §3.2.2: unreserved and sub-delims),
/// as a table: one load per byte of every request's Host, where the two
/// tests it replaces cost ~20 instructions a byte.
static REG_NAME: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        b += 1;
    }
    t
};

/// `host[:port]`: a reg-name (which covers dotted IPv4) or `[IPv6]`, and an
/// optional port of 1–5 digits up to 65535. No userinfo, no whitespace.
fn valid_authority(s: &str) -> bool {
    let port = if let Some(rest) = s.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        if ip.parse::<Ipv6Addr>().is_err() {
            return false;
        }
        match after.strip_prefix(':') {
            Some(port) => Some(port),
            None if after.is_empty() => None,
            None => return false,
        }
    } else {
        let (host, port) = match s.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        };
        // A trailing dot (`admin.example.`) is the same DNS name to an
        // upstream but not to a `host:` route: refused, as one name must
        // be read one way.
        if host.is_empty() || host.ends_with('.') || !host.bytes().all(|b| REG_NAME[usize::from(b)])
        {
            return false;
        }
        port
    };
    port.is_none_or(|p| {
        (1..=5).contains(&p.len())
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.bytes().fold(0u32, |n, b| n * 10 + u32::from(b - b'0')) <= 65535
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use EscapedSlashes::{Decode, Keep, Reject};
    use PathError::*;

    const MODES: [EscapedSlashes; 3] = [Reject, Decode, Keep];

    fn opts(merge_slashes: bool, escaped_slashes: EscapedSlashes) -> PathOptions {
        PathOptions {
            merge_slashes,
            escaped_slashes,
        }
    }

    fn norm(path: &str, o: PathOptions) -> Result<String, PathError> {
        normalize_path(path, o).map(Cow::into_owned)
    }

    /// (input, expected with merge on for Reject, Decode, Keep).
    type Case = (
        &'static str,
        Result<&'static str, PathError>,
        Result<&'static str, PathError>,
        Result<&'static str, PathError>,
    );

    /// The same expected result in every escaped-slash mode.
    fn all(input: &'static str, r: Result<&'static str, PathError>) -> Case {
        (input, r.clone(), r.clone(), r)
    }

    fn attacks() -> Vec<Case> {
        vec![
            all("/public/../api/secret", Ok("/api/secret")),
            all("/public/../api/x", Ok("/api/x")),
            all("/%61pi/secret", Ok("/api/secret")),
            all("/%61pi/", Ok("/api/")),
            all("/%41PI", Ok("/API")),
            all("//api/secret", Ok("/api/secret")),
            all("//api//x", Ok("/api/x")),
            all("///api", Ok("/api")),
            all("/api//secret//", Ok("/api/secret/")),
            all("/./api/secret", Ok("/api/secret")),
            all("/api/./secret", Ok("/api/secret")),
            all("/api/./", Ok("/api/")),
            all("/public/%2e%2e/api/secret", Ok("/api/secret")),
            all("/public/%2E%2E/api/secret", Ok("/api/secret")),
            all("/public/.%2e/api/secret", Ok("/api/secret")),
            all("/public/%2e./api/secret", Ok("/api/secret")),
            all("/API/secret", Ok("/API/secret")),
            all("/api/secret/.", Ok("/api/secret/")),
            all("/api/secret/..", Ok("/api/")),
            all("/a/b/..", Ok("/a/")),
            all("/a/.", Ok("/a/")),
            all("/api/%2e", Ok("/api/")),
            all("/api/%2E%2E", Ok("/")),
            all("/public/../../api", Err(AboveRoot)),
            all("/..", Err(AboveRoot)),
            all("/a/../..", Err(AboveRoot)),
            all("/%2e%2e/api", Err(AboveRoot)),
            all("/.%2E/api", Err(AboveRoot)),
            all("/public/..\\api\\secret", Err(Backslash)),
            all("/api\\", Err(Backslash)),
            all("/api/secret%00", Err(ControlCharacter)),
            all("/api/%0d%0a", Err(ControlCharacter)),
            all("/api/%7f", Err(ControlCharacter)),
            all("/api/\u{0}", Err(ControlCharacter)),
            all("/api/\x7f", Err(ControlCharacter)),
            all("/api/\t", Err(ControlCharacter)),
            all("/api/\r\nx", Err(ControlCharacter)),
            all("/api/sec ret", Err(ControlCharacter)),
            all("/api%00.json", Err(ControlCharacter)),
            all("/api/..%00/", Err(ControlCharacter)),
            all("/api/sec%20ret", Ok("/api/sec%20ret")),
            all("/%2561pi", Ok("/%2561pi")),
            all("/%252e%252e/", Ok("/%252e%252e/")),
            all("/api%252fsecret", Ok("/api%252fsecret")),
            all("/api/%", Err(BadEscape)),
            all("/api/%2", Err(BadEscape)),
            all("/api/%zz", Err(BadEscape)),
            all("/api/%%32%65", Err(BadEscape)),
            all("/api/%u002e", Err(BadEscape)),
            all("/api/caf%c3%a9", Ok("/api/caf%C3%A9")),
            all("/api/caf\u{e9}", Ok("/api/caf%C3%A9")),
            all("/api/%c0%ae%c0%ae/secret", Ok("/api/%C0%AE%C0%AE/secret")),
            all("/api/%7esecret", Ok("/api/~secret")),
            all("/api/secret%23x", Ok("/api/secret%23x")),
            // Not dot segments: passed on (the upstream's own business).
            all("/api/..;/secret", Err(DotParameter)),
            all("/api/.;x/secret", Err(DotParameter)),
            all("/api/%2e%2e;/secret", Err(DotParameter)),
            all("/api/...;/secret", Ok("/api/...;/secret")),
            all("/api/.../secret", Ok("/api/.../secret")),
            all("/api;/../secret", Ok("/secret")),
            all("", Err(NotAbsolute)),
            all("*", Err(NotAbsolute)),
            all("api/secret", Err(NotAbsolute)),
            all("%2fapi", Err(NotAbsolute)),
            (
                "/public/..%2fapi%2fsecret",
                Err(EscapedSlash),
                Ok("/api/secret"),
                Ok("/public/..%2Fapi%2Fsecret"),
            ),
            (
                "/api%2fsecret",
                Err(EscapedSlash),
                Ok("/api/secret"),
                Ok("/api%2Fsecret"),
            ),
            (
                "/api%2Fsecret",
                Err(EscapedSlash),
                Ok("/api/secret"),
                Ok("/api%2Fsecret"),
            ),
            (
                "/public/..%5capi",
                Err(EscapedSlash),
                Ok("/api"),
                Ok("/public/..%5Capi"),
            ),
            (
                "/public/%2e%2e%2fapi",
                Err(EscapedSlash),
                Ok("/api"),
                Ok("/public/..%2Fapi"),
            ),
            (
                "/api/secret%5c..%5c..%5cadmin",
                Err(EscapedSlash),
                Ok("/admin"),
                Ok("/api/secret%5C..%5C..%5Cadmin"),
            ),
            (
                "/api/secret%2f..%2f..%2f..%2fetc",
                Err(EscapedSlash),
                Err(AboveRoot),
                Ok("/api/secret%2F..%2F..%2F..%2Fetc"),
            ),
            (
                "/api/%2e%2e%5c%2e%2e%5cwindows",
                Err(EscapedSlash),
                Err(AboveRoot),
                Ok("/api/..%5C..%5Cwindows"),
            ),
            ("/..%2f", Err(EscapedSlash), Err(AboveRoot), Ok("/..%2F")),
            ("/%2fapi", Err(EscapedSlash), Ok("/api"), Ok("/%2Fapi")),
            (
                "/%2F%2Fapi",
                Err(EscapedSlash),
                Ok("/api"),
                Ok("/%2F%2Fapi"),
            ),
        ]
    }

    #[test]
    fn normalize_attack_forms() {
        let cases = attacks();
        assert!(cases.len() >= 40);
        for (input, reject, decode, keep) in cases {
            for (mode, want) in MODES.into_iter().zip([reject, decode, keep]) {
                let got = norm(input, opts(true, mode));
                assert_eq!(got, want.map(str::to_owned), "{input:?} {mode:?}");
            }
        }
    }

    #[test]
    fn normalize_keeps_empty_segments_without_merge() {
        let cases: &[(&str, EscapedSlashes, Result<&str, PathError>)] = &[
            ("//api/secret", Reject, Ok("//api/secret")),
            ("/api//secret", Reject, Ok("/api//secret")),
            ("///", Reject, Ok("///")),
            // Empty segments count as segments for `..` (RFC 3986).
            ("/api//../secret", Reject, Ok("/api/secret")),
            ("/api/x//..", Reject, Ok("/api/x/")),
            ("/a/..//b", Reject, Ok("//b")),
            ("//..", Reject, Ok("/")),
            ("/..//", Reject, Err(AboveRoot)),
            ("/api%2f%2fsecret", Decode, Ok("/api//secret")),
            ("/%2F", Decode, Ok("//")),
            ("/api%2f%2fsecret", Keep, Ok("/api%2F%2Fsecret")),
        ];
        for (input, mode, want) in cases {
            let got = norm(input, opts(false, *mode));
            assert_eq!(got, want.clone().map(str::to_owned), "{input:?} {mode:?}");
        }
    }

    #[test]
    fn normalize_borrows_normal_paths() {
        let borrowed =
            |p: &str, o: PathOptions| matches!(normalize_path(p, o), Ok(Cow::Borrowed(_)));
        let d = PathOptions::default();
        for p in [
            "/",
            "/api/secret",
            "/api/v1/",
            "/caf%C3%A9",
            "/a.b/..c/~x",
            "/%252e",
        ] {
            assert!(borrowed(p, d), "{p}");
        }
        assert!(borrowed("/a%2Fb", opts(true, Keep)));
        assert!(borrowed("//a", opts(false, Reject)));
        for p in ["/a%2fb", "//a", "/a/./b", "/%61", "/caf%c3%a9", "/\u{e9}"] {
            assert!(!borrowed(p, opts(true, Keep)), "{p}");
        }
    }

    #[test]
    fn normalize_default_options() {
        let d = PathOptions::default();
        assert!(d.merge_slashes);
        assert_eq!(d.escaped_slashes, Reject);
        assert_eq!(EscapedSlashes::default(), Reject);
    }

    #[test]
    fn normalize_error_messages() {
        assert_eq!(AboveRoot.to_string(), "path climbs above the root");
        assert_eq!(
            EscapedSlash.to_string(),
            "path has an encoded slash or backslash (%2F, %5C)"
        );
        assert_eq!(Backslash.to_string(), "path has a backslash");
        assert_eq!(
            ControlCharacter.to_string(),
            "path has a NUL or control character"
        );
        assert_eq!(BadEscape.to_string(), "path has a malformed percent-escape");
        assert_eq!(NotAbsolute.to_string(), "path does not start with '/'");
    }

    /// splitmix64: a tiny deterministic PRNG (no new crates).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const PIECES: &[&str] = &[
        "/",
        "/",
        "/",
        "//",
        ".",
        "..",
        "...",
        "a",
        "B",
        "api",
        "~",
        "-",
        "_",
        ";",
        "%2e",
        "%2E",
        "%2f",
        "%2F",
        "%5c",
        "%5C",
        "%61",
        "%41",
        "%7e",
        "%7E",
        "%25",
        "%252e",
        "%c3%a9",
        "%C3",
        "\u{e9}",
        "%20",
        "%3f",
        "%",
        "%0",
        "%zz",
        "%00",
        "%1f",
        "%7f",
        " ",
        "\t",
        "\\",
        "\u{0}",
        "?",
        "#",
        "*",
        ":",
        "@",
        "%u",
        "\u{1F600}",
    ];

    /// The output's escapes: each `%` starts one (the output has no bare `%`).
    fn escapes_ok(out: &str) -> bool {
        let b = out.as_bytes();
        let mut i = 0;
        while let Some(&c) = b.get(i) {
            if c == b'%' {
                let upper = |j: usize| matches!(b.get(j), Some(b'0'..=b'9' | b'A'..=b'F'));
                match escaped_byte(b, i + 1) {
                    Some(v) if upper(i + 1) && upper(i + 2) && !is_unreserved(v) => i += 2,
                    _ => return false,
                }
            }
            i += 1;
        }
        true
    }

    fn check_properties(input: &str, o: PathOptions) {
        let Ok(out) = normalize_path(input, o) else {
            return;
        };
        let ctx = format!("{input:?} {o:?} -> {out:?}");
        assert!(out.starts_with('/'), "{ctx}");
        match normalize_path(&out, o) {
            Ok(Cow::Borrowed(again)) => assert_eq!(again, &*out, "{ctx}"),
            other => panic!("not idempotent: {ctx}: {other:?}"),
        }
        assert!(!out.contains("/./") && !out.contains("/../"), "{ctx}");
        assert!(!out.ends_with("/.") && !out.ends_with("/.."), "{ctx}");
        assert!(!o.merge_slashes || !out.contains("//"), "{ctx}");
        assert!(
            out.bytes()
                .all(|b| (0x21..=0x7E).contains(&b) && b != b'\\'),
            "{ctx}"
        );
        assert!(escapes_ok(&out), "{ctx}");
        if o.escaped_slashes != Keep {
            assert!(!out.contains("%2F") && !out.contains("%5C"), "{ctx}");
        }
    }

    #[test]
    fn normalize_properties_hold_for_generated_paths() {
        let mut rng = Rng(0x6b61_6e61_6d65);
        let mut ok = 0;
        for n in 0..2000 {
            let mut p = String::from(if n % 16 == 0 { "" } else { "/" });
            for _ in 0..rng.below(12) {
                p.push_str(PIECES[rng.below(PIECES.len())]);
            }
            for merge in [true, false] {
                for mode in MODES {
                    check_properties(&p, opts(merge, mode));
                    ok += usize::from(normalize_path(&p, opts(merge, mode)).is_ok());
                }
            }
        }
        // The generator must reach the interesting (accepted) cases too.
        assert!(ok > 2000, "only {ok} accepted");
    }

    #[test]
    fn normalize_never_panics_on_random_bytes() {
        let mut rng = Rng(7);
        for _ in 0..2000 {
            let len = rng.below(24);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if rng.below(2) == 0 {
                bytes.insert(0, b'/');
            }
            let p = String::from_utf8_lossy(&bytes);
            for mode in MODES {
                check_properties(&p, opts(rng.below(2) == 0, mode));
            }
        }
    }

    // --- request_authority ---

    use http::Version as V;
    use AuthorityError::*;

    fn headers(hosts: &[&[u8]]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for &v in hosts {
            h.append(
                header::HOST,
                HeaderValue::from_bytes(v).expect("test header"),
            );
        }
        h
    }

    fn auth(v: Version, target: &str, hosts: &[&[u8]]) -> Result<Option<String>, AuthorityError> {
        let uri: Uri = target.parse().expect("test uri");
        request_authority(v, &uri, &headers(hosts)).map(|a| a.map(|a| a.as_str().to_owned()))
    }

    #[test]
    fn authority_http1_uses_host() {
        let ok = |s: &str| Ok(Some(s.to_owned()));
        assert_eq!(auth(V::HTTP_11, "/x", &[b"example.com"]), ok("example.com"));
        assert_eq!(
            auth(V::HTTP_11, "/x", &[b"EXAMPLE.com:8080"]),
            ok("EXAMPLE.com:8080")
        );
        assert_eq!(auth(V::HTTP_10, "/x", &[b"example.com"]), ok("example.com"));
        assert_eq!(auth(V::HTTP_11, "/x", &[]), Err(MissingHost));
        assert_eq!(auth(V::HTTP_10, "/x", &[]), Ok(None));
        assert_eq!(auth(V::HTTP_11, "/x", &[b"a", b"a"]), Err(DuplicateHost));
        assert_eq!(auth(V::HTTP_10, "/x", &[b"a", b"b"]), Err(DuplicateHost));
    }

    #[test]
    fn authority_http1_absolute_form_replaces_host() {
        let ok = |s: &str| Ok(Some(s.to_owned()));
        let t = "http://Upstream.example:81/x";
        assert_eq!(
            auth(V::HTTP_11, t, &[b"other.example"]),
            ok("Upstream.example:81")
        );
        assert_eq!(auth(V::HTTP_10, t, &[]), ok("Upstream.example:81"));
        // The target's authority stands in for a missing Host (§3.2.2).
        assert_eq!(auth(V::HTTP_11, t, &[]), ok("Upstream.example:81"));
        assert_eq!(auth(V::HTTP_11, t, &[b"a", b"a"]), Err(DuplicateHost));
        assert_eq!(auth(V::HTTP_11, t, &[b"bad host"]), Err(InvalidHost));
        // Userinfo in the target is refused.
        let u = "http://user:pw@example.com/x";
        assert_eq!(auth(V::HTTP_11, u, &[b"example.com"]), Err(InvalidHost));
        assert_eq!(auth(V::HTTP_10, u, &[]), Err(InvalidHost));
    }

    #[test]
    fn authority_host_syntax() {
        let valid: &[&[u8]] = &[
            b"example.com",
            b"localhost:65535",
            b"x:0",
            b"x:00080",
            b"127.0.0.1",
            b"127.0.0.1:80",
            b"[::1]",
            b"[::1]:443",
            b"[2001:db8::ffff:1.2.3.4]",
            b"a-b_c~d.e",
            b"a!$&+,;=b",
            b"a'()*b",
        ];
        for &h in valid {
            let got = auth(V::HTTP_11, "/", &[h]);
            assert_eq!(
                got,
                Ok(Some(String::from_utf8_lossy(h).into_owned())),
                "{h:?}"
            );
        }
        let invalid: &[&[u8]] = &[
            b"",
            b":80",
            b" example.com",
            b"example.com ",
            b"exa mple.com",
            b"exa\tmple.com",
            b"example.com:",
            b"example.com:65536",
            b"example.com:123456",
            b"example.com:-1",
            b"example.com:8a",
            b"example.com:80:80",
            b"user@example.com",
            b"::1",
            b"[::1",
            b"[::1]x",
            b"[::1]:",
            b"[zz]",
            b"[v1.x]",
            b"a/b",
            b"a%20b",
            b"a?b",
            b"a#b",
            b"\xc3\xa9.com",
        ];
        for &h in invalid {
            assert_eq!(auth(V::HTTP_11, "/", &[h]), Err(InvalidHost), "{h:?}");
        }
    }

    #[test]
    fn authority_http2() {
        let ok = |s: &str| Ok(Some(s.to_owned()));
        let t = "https://Example.com/x";
        for v in [V::HTTP_2, V::HTTP_3] {
            assert_eq!(auth(v, t, &[]), ok("Example.com"));
            assert_eq!(auth(v, "/x", &[b"example.com"]), ok("example.com"));
            // Same but for case: :authority as sent.
            assert_eq!(auth(v, t, &[b"EXAMPLE.COM"]), ok("Example.com"));
            assert_eq!(auth(v, t, &[b"other.com"]), Err(HostMismatch));
            assert_eq!(auth(v, t, &[b"example.com:443"]), Err(HostMismatch));
            assert_eq!(auth(v, "/x", &[]), Err(MissingHost));
            assert_eq!(auth(v, t, &[b"a", b"a"]), Err(DuplicateHost));
            assert_eq!(auth(v, "/x", &[b"bad host"]), Err(InvalidHost));
            assert_eq!(auth(v, "https://u@example.com/", &[]), Err(InvalidHost));
        }
    }

    #[test]
    fn authority_error_messages() {
        for e in [MissingHost, DuplicateHost, InvalidHost, HostMismatch] {
            assert!(!e.to_string().is_empty());
        }
        assert_eq!(
            HostMismatch.to_string(),
            "Host header differs from :authority"
        );
    }

    #[test]
    fn authority_never_panics_on_random_hosts() {
        let mut rng = Rng(11);
        let alphabet = b"aZ09-._~!$&'()*+,;=:@[]%/ \t\x80\xff";
        for _ in 0..2000 {
            let len = rng.below(12);
            let host: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let Ok(value) = HeaderValue::from_bytes(&host) else {
                continue;
            };
            let mut h = HeaderMap::new();
            h.insert(header::HOST, value);
            for v in [V::HTTP_09, V::HTTP_10, V::HTTP_11, V::HTTP_2, V::HTTP_3] {
                if let Ok(Some(a)) = request_authority(v, &Uri::default(), &h) {
                    assert!(valid_authority(a.as_str()) && !a.as_str().contains('@'));
                    // What a checked Host says, http's parser takes.
                    assert!(Authority::try_from(a.as_str()).is_ok(), "{:?}", a.as_str());
                }
            }
        }
    }

    #[test]
    fn the_reg_name_table_is_unreserved_and_sub_delims() {
        for b in 0..=255u8 {
            let want = is_unreserved(b) || b"!$&'()*+,;=".contains(&b);
            assert_eq!(REG_NAME[usize::from(b)], want, "byte {b:#04x}");
        }
        for (port, ok) in [
            ("1", true),
            ("65535", true),
            ("65536", false),
            ("99999", false),
        ] {
            assert_eq!(valid_authority(&format!("h:{port}")), ok, "{port}");
        }
        for bad in ["h:", "h:123456", "h:+1", "h:0x1"] {
            assert!(!valid_authority(bad), "{bad}");
        }
    }
}
