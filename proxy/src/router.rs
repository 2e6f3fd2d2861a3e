//! Route matching: compiled once per config, first match wins.
//!
//! A listener's routes are found through a [`RouteIndex`] of their paths,
//! in time that does not grow with the number of routes: exact and prefix
//! paths in a radix tree walked once along the request path (one tree for
//! case-sensitive routes, one of ASCII-lowercased keys for
//! `case_sensitive: false` ones), regex paths in `RegexSet`s of at most
//! [`REGEX_CHUNK`] patterns each, routes without a path condition always
//! candidates. Each kind yields its candidates in config order; the other
//! conditions of a route (methods, headers, host: its [`Matcher`]) are
//! checked on candidates, and the lowest route index whose conditions hold
//! wins — the same route the linear scan in config order would find.

use std::borrow::Cow;

use http::request::Parts;
use http::{header, HeaderName, HeaderValue, Method};
use kaname_config::{PathMatch, RouteMatch};
use regex::{RegexSet, RegexSetBuilder};

/// Patterns per `RegexSet`. Measured with `^/re{i}/[0-9]+$` patterns
/// (release, one thread): one set of 10,000 outgrows the lazy DFA's cache
/// and falls back to the NFA simulation (4.4 ms per hit, 0.56 ms per miss);
/// sets of 1,000 take 4 µs per hit and 0.5 µs per miss at 10,000 patterns,
/// 30–40 µs per hit and 3–13 µs per miss at 100,000 (100 sets), 0.9 KiB
/// per pattern built and up to 1.5 KiB once the caches are warm. Smaller
/// sets cost more per set searched; a set that still exceeds the regex
/// crate's compiled size limit is split in halves.
pub const REGEX_CHUNK: usize = 1000;

/// The conditions of a route's `match:` other than its path (the path is
/// the [`RouteIndex`]'s), compiled for the hot path.
#[derive(Debug)]
pub struct Matcher {
    methods: Option<Vec<Method>>,
    headers: Vec<(HeaderName, HeaderValue)>,
    host: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("route match: {0}")]
pub struct MatcherError(String);

impl Matcher {
    pub fn compile(m: &RouteMatch) -> Result<Self, MatcherError> {
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
            methods,
            headers,
            host: m.host.as_ref().map(|h| h.to_ascii_lowercase()),
        })
    }

    /// No condition besides the path: whenever the path matches, so does
    /// the route (later candidates of the same index entry can never win).
    pub fn is_unconditional(&self) -> bool {
        self.methods.is_none() && self.headers.is_empty() && self.host.is_none()
    }

    /// Methods, headers and host; the path is checked by the index.
    pub fn matches(&self, req: &Parts) -> bool {
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

/// Route indices are `u32` (a config holds far fewer routes); `NONE` is
/// never one.
const NONE: u32 = u32::MAX;

fn index(n: usize) -> u32 {
    u32::try_from(n)
        .ok()
        .filter(|&i| i != NONE)
        .expect("fewer than 2^32 - 1 routes and index entries")
}

/// The paths of one listener's routes, indexed; see the module docs.
#[derive(Debug, Default)]
pub struct RouteIndex {
    /// Routes without a path condition, in config order.
    any: Box<[u32]>,
    /// Case-sensitive exact and prefix paths.
    sensitive: Radix,
    /// `case_sensitive: false` exact and prefix paths, ASCII-lowercased.
    folded: Radix,
    /// Regex paths, case-sensitive sets then case-insensitive ones.
    regex: Box<[RegexChunk]>,
}

#[derive(Debug)]
struct RegexChunk {
    set: RegexSet,
    /// The route of each pattern, ascending.
    routes: Box<[u32]>,
}

impl RouteIndex {
    /// The first route in config order whose path matches `path` and for
    /// which `rest(route)` (its other conditions) holds.
    pub fn first(&self, path: &str, mut rest: impl FnMut(usize) -> bool) -> Option<usize> {
        let mut best = NONE;
        first_in(&self.any, &mut best, &mut rest);
        let bytes = path.as_bytes();
        self.sensitive
            .walk(bytes, false, |list| first_in(list, &mut best, &mut rest));
        self.folded
            .walk(bytes, true, |list| first_in(list, &mut best, &mut rest));
        for chunk in self.regex.iter() {
            // A set whose first route comes after the best so far cannot
            // improve it; `is_match` stops early and allocates nothing.
            if chunk.routes[0] >= best || !chunk.set.is_match(path) {
                continue;
            }
            for i in chunk.set.matches(path).iter() {
                let route = chunk.routes[i];
                if route >= best {
                    break;
                }
                if rest(route as usize) {
                    best = route;
                    break;
                }
            }
        }
        (best != NONE).then_some(best as usize)
    }
}

/// Lowers `best` to the first route of `list` (ascending) below it whose
/// other conditions hold.
fn first_in(list: &[u32], best: &mut u32, rest: &mut impl FnMut(usize) -> bool) {
    for &route in list {
        if route >= *best {
            return;
        }
        if rest(route as usize) {
            *best = route;
            return;
        }
    }
}

/// Collects the routes of a listener in config order, then builds its index.
#[derive(Default)]
pub struct RouteIndexBuilder<'a> {
    routes: usize,
    unconditional: Vec<bool>,
    any: Vec<u32>,
    sensitive: Vec<Key<'a>>,
    folded: Vec<Key<'a>>,
    /// Case-sensitive, case-insensitive.
    regex: [Vec<(&'a str, u32)>; 2],
}

struct Key<'a> {
    bytes: Cow<'a, [u8]>,
    exact: bool,
    route: u32,
}

/// A regex set failed to build: the route of the pattern that fails on
/// its own.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct IndexError {
    pub route: usize,
    pub source: MatcherError,
}

impl<'a> RouteIndexBuilder<'a> {
    /// Adds the next route. `unconditional`: [`Matcher::is_unconditional`].
    pub fn push(&mut self, path: Option<&'a PathMatch>, case_sensitive: bool, unconditional: bool) {
        let route = index(self.routes);
        self.routes += 1;
        self.unconditional.push(unconditional);
        let key = |text: &'a str, exact| Key {
            bytes: if case_sensitive {
                Cow::Borrowed(text.as_bytes())
            } else {
                Cow::Owned(text.as_bytes().to_ascii_lowercase())
            },
            exact,
            route,
        };
        let keys = if case_sensitive {
            &mut self.sensitive
        } else {
            &mut self.folded
        };
        match path {
            None => self.any.push(route),
            Some(PathMatch::Exact(p)) => keys.push(key(p, true)),
            Some(PathMatch::Prefix(p)) => keys.push(key(p, false)),
            Some(PathMatch::Regex(r)) => self.regex[usize::from(!case_sensitive)].push((r, route)),
        }
    }

    pub fn build(self) -> Result<RouteIndex, IndexError> {
        let unconditional = &self.unconditional;
        let mut regex = Vec::new();
        for (i, patterns) in self.regex.iter().enumerate() {
            regex_chunks(patterns, i == 1, &mut regex)?;
        }
        Ok(RouteIndex {
            any: truncate_dominated(self.any, unconditional).into(),
            sensitive: Radix::build(self.sensitive, unconditional),
            folded: Radix::build(self.folded, unconditional),
            regex: regex.into(),
        })
    }
}

/// Drops the routes after the first unconditional one: it always matches
/// when the list is a candidate, so none after it can be first.
fn truncate_dominated(mut list: Vec<u32>, unconditional: &[bool]) -> Vec<u32> {
    if let Some(i) = list.iter().position(|&r| unconditional[r as usize]) {
        list.truncate(i + 1);
    }
    list
}

fn regex_chunks(
    patterns: &[(&str, u32)],
    case_insensitive: bool,
    out: &mut Vec<RegexChunk>,
) -> Result<(), IndexError> {
    // Each pending slice is built as one set, or split in halves when the
    // compiled set is too big; a single pattern that fails is the error.
    let mut pending: Vec<&[(&str, u32)]> = patterns.chunks(REGEX_CHUNK).rev().collect();
    while let Some(chunk) = pending.pop() {
        let built = RegexSetBuilder::new(chunk.iter().map(|(p, _)| p))
            .case_insensitive(case_insensitive)
            .build();
        match built {
            Ok(set) => out.push(RegexChunk {
                set,
                routes: chunk.iter().map(|&(_, r)| r).collect(),
            }),
            Err(regex::Error::CompiledTooBig(_)) if chunk.len() > 1 => {
                let (a, b) = chunk.split_at(chunk.len() / 2);
                pending.push(b);
                pending.push(a);
            }
            Err(e) => {
                // Name the failing pattern's route (the first of a chunk
                // that fails for another reason: each compiled on its own
                // when the config was read).
                return Err(IndexError {
                    route: chunk[0].1 as usize,
                    source: MatcherError(e.to_string()),
                });
            }
        }
    }
    Ok(())
}

/// A radix tree of exact and prefix keys, frozen into flat arrays.
#[derive(Debug, Default)]
struct Radix {
    /// `nodes[0]` is the root; a node's children are contiguous, ordered
    /// by the first byte of their labels (never empty).
    nodes: Vec<Node>,
    /// Every label's bytes.
    labels: Vec<u8>,
    /// Every node's route lists.
    lists: Vec<u32>,
}

/// The key of a node is its ancestors' labels and its own, concatenated.
#[derive(Debug, Clone, Copy, Default)]
struct Node {
    label: u32,
    label_len: u32,
    children: u32,
    child_count: u32,
    /// Routes whose prefix is this node's key (into `lists`).
    prefix: u32,
    prefix_len: u32,
    /// Routes whose exact path is this node's key.
    exact: u32,
    exact_len: u32,
}

impl Radix {
    fn build(mut keys: Vec<Key<'_>>, unconditional: &[bool]) -> Radix {
        let mut radix = Radix::default();
        if keys.is_empty() {
            return radix;
        }
        keys.sort_unstable_by(|a, b| a.bytes.cmp(&b.bytes).then(a.route.cmp(&b.route)));
        // Distinct keys, each with its prefix and exact route lists.
        let mut distinct: Vec<(&[u8], Vec<u32>, Vec<u32>)> = Vec::new();
        for k in &keys {
            if distinct.last().is_none_or(|(b, _, _)| *b != &*k.bytes) {
                distinct.push((&k.bytes, Vec::new(), Vec::new()));
            }
            let (_, prefix, exact) = distinct.last_mut().expect("just pushed");
            (if k.exact { exact } else { prefix }).push(k.route);
        }
        radix.nodes.push(Node::default());
        // (node, keys sharing the node's start, the node's start depth):
        // iterative, so a long key cannot exhaust the stack.
        let mut tasks = vec![(0usize, 0..distinct.len(), 0usize)];
        while let Some((slot, range, depth)) = tasks.pop() {
            let first = distinct[range.start].0;
            let last = distinct[range.end - 1].0;
            let end = depth
                + first[depth..]
                    .iter()
                    .zip(&last[depth..])
                    .take_while(|(a, b)| a == b)
                    .count();
            let mut node = Node {
                label: index(radix.labels.len()),
                label_len: index(end - depth),
                ..Node::default()
            };
            radix.labels.extend_from_slice(&first[depth..end]);
            let mut rest = range.clone();
            if first.len() == end {
                // This node's key is `first`: the only one that ends here.
                let (_, prefix, exact) = &mut distinct[range.start];
                for (list, start, len) in [
                    (prefix, &mut node.prefix, &mut node.prefix_len),
                    (exact, &mut node.exact, &mut node.exact_len),
                ] {
                    let list = truncate_dominated(std::mem::take(list), unconditional);
                    *start = index(radix.lists.len());
                    *len = index(list.len());
                    radix.lists.extend_from_slice(&list);
                }
                rest.start += 1;
            }
            // The other keys, grouped by their byte after this node's key.
            let mut groups = Vec::new();
            let mut i = rest.start;
            while i < rest.end {
                let byte = distinct[i].0[end];
                let mut j = i + 1;
                while j < rest.end && distinct[j].0[end] == byte {
                    j += 1;
                }
                groups.push(i..j);
                i = j;
            }
            node.children = index(radix.nodes.len());
            node.child_count = index(groups.len());
            radix.nodes[slot] = node;
            for (k, group) in groups.into_iter().enumerate() {
                radix.nodes.push(Node::default());
                tasks.push((node.children as usize + k, group, end));
            }
        }
        radix.nodes.shrink_to_fit();
        radix.labels.shrink_to_fit();
        radix.lists.shrink_to_fit();
        radix
    }

    /// Calls `visit` with the route list of every prefix key that is a
    /// prefix of `path` and of the exact key equal to `path`. `fold`: keys
    /// are lowercase, `path` is compared ignoring ASCII case.
    fn walk(&self, path: &[u8], fold: bool, mut visit: impl FnMut(&[u32])) {
        let Some(mut node) = self.nodes.first() else {
            return;
        };
        let byte = |b: u8| if fold { b.to_ascii_lowercase() } else { b };
        let mut pos = 0;
        loop {
            let label = &self.labels[node.label as usize..][..node.label_len as usize];
            let Some(head) = path.get(pos..pos + label.len()) else {
                return;
            };
            if !head.iter().zip(label).all(|(&p, &l)| byte(p) == l) {
                return;
            }
            pos += label.len();
            if node.prefix_len > 0 {
                visit(&self.lists[node.prefix as usize..][..node.prefix_len as usize]);
            }
            let Some(&next) = path.get(pos) else {
                if node.exact_len > 0 {
                    visit(&self.lists[node.exact as usize..][..node.exact_len as usize]);
                }
                return;
            };
            let children = &self.nodes[node.children as usize..][..node.child_count as usize];
            let next = byte(next);
            match children.binary_search_by_key(&next, |c| self.labels[c.label as usize]) {
                Ok(i) => node = &children[i],
                Err(_) => return,
            }
        }
    }
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

    /// A listener's routes: the index and every route's matcher.
    struct Table {
        index: RouteIndex,
        matchers: Vec<Matcher>,
    }

    impl Table {
        fn new(routes: &[(RouteMatch, bool)]) -> Table {
            let matchers: Vec<Matcher> = routes
                .iter()
                .map(|(m, _)| Matcher::compile(m).unwrap())
                .collect();
            let mut b = RouteIndexBuilder::default();
            for ((m, case_sensitive), matcher) in routes.iter().zip(&matchers) {
                b.push(m.path.as_ref(), *case_sensitive, matcher.is_unconditional());
            }
            Table {
                index: b.build().unwrap(),
                matchers,
            }
        }

        fn find(&self, req: &Parts) -> Option<usize> {
            self.index
                .first(req.uri.path(), |i| self.matchers[i].matches(req))
        }

        fn get(&self, uri: &str) -> Option<usize> {
            self.find(&parts("GET", uri, &[]))
        }

        /// The linear scan the index replaces, for comparison.
        fn linear(routes: &[(RouteMatch, bool)], req: &Parts) -> Option<usize> {
            routes.iter().position(|(m, cs)| {
                let path = req.uri.path();
                let ok = match &m.path {
                    None => true,
                    Some(PathMatch::Exact(e)) if !cs => path.eq_ignore_ascii_case(e),
                    Some(PathMatch::Exact(e)) => path == e,
                    Some(PathMatch::Prefix(p)) if !cs => path
                        .as_bytes()
                        .get(..p.len())
                        .is_some_and(|h| h.eq_ignore_ascii_case(p.as_bytes())),
                    Some(PathMatch::Prefix(p)) => path.starts_with(p.as_str()),
                    Some(PathMatch::Regex(r)) => regex::RegexBuilder::new(r)
                        .case_insensitive(!cs)
                        .build()
                        .unwrap()
                        .is_match(path),
                };
                ok && Matcher::compile(m).unwrap().matches(req)
            })
        }
    }

    fn path(p: PathMatch) -> RouteMatch {
        RouteMatch {
            path: Some(p),
            ..Default::default()
        }
    }
    fn exact(p: &str) -> RouteMatch {
        path(PathMatch::Exact(p.into()))
    }
    fn prefix(p: &str) -> RouteMatch {
        path(PathMatch::Prefix(p.into()))
    }
    fn regex(p: &str) -> RouteMatch {
        path(PathMatch::Regex(p.into()))
    }
    fn methods(mut m: RouteMatch, list: &[&str]) -> RouteMatch {
        m.methods = Some(list.iter().map(|s| s.to_string()).collect());
        m
    }

    #[test]
    fn path_kinds() {
        let t = Table::new(&[
            (exact("/a"), true),
            (prefix("/api/"), true),
            (regex("^/v[0-9]+/"), true),
        ]);
        assert_eq!(t.get("/a"), Some(0));
        assert_eq!(t.get("/a/b"), None);
        assert_eq!(t.get("/api/x?q=1"), Some(1));
        assert_eq!(t.get("/api/"), Some(1));
        assert_eq!(t.get("/apix"), None);
        assert_eq!(t.get("/ap"), None);
        assert_eq!(t.get("/v2/x"), Some(2));
        assert_eq!(t.get("/vx/"), None);
        assert_eq!(Table::new(&[]).get("/"), None);
    }

    #[test]
    fn config_order_wins_across_kinds() {
        let routes = [
            (regex("^/shop/(cart|basket)$"), true),
            (prefix("/shop/"), true),
            (exact("/shop/cart"), true),
            (prefix("/"), true),
            (RouteMatch::default(), true),
        ];
        let t = Table::new(&routes);
        assert_eq!(t.get("/shop/cart"), Some(0), "the regex is first");
        assert_eq!(t.get("/shop/other"), Some(1));
        assert_eq!(t.get("/elsewhere"), Some(3));
        assert_eq!(
            t.get("*"),
            Some(4),
            "a route without a path matches any path"
        );
        // The exact route comes after a prefix that covers it: never served.
        let t = Table::new(&[
            (prefix("/a"), true),
            (exact("/a/b"), true),
            (prefix("/a/b"), true),
        ]);
        assert_eq!(t.get("/a/b"), Some(0));
        // Longer prefixes earlier in the file win, shorter ones later too.
        let t = Table::new(&[
            (prefix("/a/b/c"), true),
            (prefix("/a"), true),
            (prefix("/a/b"), true),
        ]);
        assert_eq!(t.get("/a/b/c/d"), Some(0));
        assert_eq!(t.get("/a/b/x"), Some(1));
        // A catch-all first shadows everything.
        let t = Table::new(&[(RouteMatch::default(), true), (exact("/x"), true)]);
        assert_eq!(t.get("/x"), Some(0));
    }

    #[test]
    fn conditions_fall_through_to_the_next_candidate() {
        let routes = [
            (methods(prefix("/api/"), &["POST"]), true),
            (methods(exact("/api/orders"), &["PUT"]), true),
            (methods(regex("^/api/"), &["DELETE"]), true),
            (
                RouteMatch {
                    headers: vec![("x-canary".into(), "1".into())],
                    ..prefix("/api/")
                },
                true,
            ),
            (prefix("/api/"), true),
            (methods(prefix("/api/"), &["GET"]), true),
        ];
        let t = Table::new(&routes);
        let req = |m, h: &[(&str, &str)]| t.find(&parts(m, "/api/orders", h));
        assert_eq!(req("POST", &[]), Some(0));
        assert_eq!(req("PUT", &[]), Some(1));
        assert_eq!(req("DELETE", &[]), Some(2));
        assert_eq!(req("GET", &[("x-canary", "1")]), Some(3));
        assert_eq!(req("GET", &[]), Some(4), "not 5: 4 has no conditions");
        assert_eq!(req("PATCH", &[("x-canary", "2")]), Some(4));
        // A host condition, and nothing after it.
        let t = Table::new(&[(
            RouteMatch {
                host: Some("orders.shop.svc".into()),
                ..exact("/x")
            },
            true,
        )]);
        assert_eq!(
            t.find(&parts("GET", "/x", &[("host", "Orders.shop.svc:80")])),
            Some(0)
        );
        assert_eq!(t.find(&parts("GET", "/x", &[("host", "other")])), None);
    }

    #[test]
    fn case_insensitive_routes() {
        let t = Table::new(&[
            (prefix("/API/"), false),
            (exact("/Exact"), false),
            (regex("^/v[0-9]+/admin"), false),
            (prefix("/Case/"), true),
        ]);
        assert_eq!(t.get("/API/x"), Some(0));
        assert_eq!(t.get("/api/x"), Some(0));
        assert_eq!(t.get("/aPi/"), Some(0));
        assert_eq!(t.get("/ap"), None);
        assert_eq!(t.get("/EXACT"), Some(1));
        assert_eq!(t.get("/exact"), Some(1));
        assert_eq!(t.get("/exact/"), None);
        assert_eq!(t.get("/V2/Admin"), Some(2));
        assert_eq!(t.get("/Case/x"), Some(3));
        assert_eq!(t.get("/case/x"), None, "case-sensitive by default");
        // A case-insensitive route after a sensitive one with the same
        // key keeps its place.
        let t = Table::new(&[
            (methods(prefix("/a/"), &["POST"]), true),
            (prefix("/A/"), false),
            (prefix("/a/"), true),
        ]);
        assert_eq!(t.get("/a/x"), Some(1));
        assert_eq!(t.find(&parts("POST", "/a/x", &[])), Some(0));
    }

    #[test]
    fn regex_sets_span_chunks_in_order() {
        // More patterns than one set holds; several match the same path.
        let mut routes: Vec<(RouteMatch, bool)> = (0..REGEX_CHUNK * 2 + 10)
            .map(|i| (regex(&format!("^/re{i}/[0-9]+$")), true))
            .collect();
        routes.push((regex("^/re[0-9]+/7$"), true));
        routes.push((regex("(?i)^/RE5/"), false));
        let n = routes.len();
        let t = Table::new(&routes);
        assert_eq!(
            t.index.regex.len(),
            4,
            "three sensitive sets, one insensitive"
        );
        assert_eq!(t.get(&format!("/re{}/1", REGEX_CHUNK * 2 + 9)), Some(n - 3));
        assert_eq!(t.get("/re5/1"), Some(5));
        assert_eq!(t.get("/re1500/x"), None);
        assert_eq!(t.get("/re99999/7"), Some(n - 2));
        assert_eq!(t.get("/Re5/x"), Some(n - 1));
        // The first of several matching patterns whose conditions hold.
        let t = Table::new(&[
            (methods(regex("^/x"), &["POST"]), true),
            (regex("^/x/y"), false),
            (regex("y$"), true),
        ]);
        assert_eq!(t.get("/X/Y"), Some(1));
        assert_eq!(t.get("/x/y"), Some(1));
        assert_eq!(t.find(&parts("POST", "/x/y", &[])), Some(0));
        assert_eq!(t.get("/zzy"), Some(2));
    }

    #[test]
    fn oversized_sets_are_split() {
        // Each of these compiles alone; thirty together exceed the regex
        // crate's size limit for one set.
        let routes: Vec<(RouteMatch, bool)> = (0..30)
            .map(|i| (regex(&format!("^/{i}/\\w{{40}}[a-z]{{300}}$")), true))
            .collect();
        let t = Table::new(&routes);
        assert!(t.index.regex.len() > 1, "split: {}", t.index.regex.len());
        let tail = "a".repeat(340);
        assert_eq!(t.get(&format!("/29/{tail}")), Some(29));
        assert_eq!(t.get(&format!("/0/{tail}")), Some(0));
    }

    #[test]
    fn radix_keys_share_and_split() {
        let keys = [
            "/", "/a", "/ab", "/abc", "/abd", "/b/", "/b/c", "/bb", "/api/v1/", "/api/v2/",
            "/api/", "/ap",
        ];
        let routes: Vec<(RouteMatch, bool)> = keys
            .iter()
            .flat_map(|k| [(exact(k), true), (prefix(k), true)])
            .chain(keys.iter().map(|k| (prefix(&k.to_uppercase()), false)))
            .chain([(methods(prefix("/a"), &["POST"]), true)])
            .collect();
        let t = Table::new(&routes);
        let probes = [
            "/",
            "/a",
            "/ab",
            "/abc",
            "/abcd",
            "/abd",
            "/abe",
            "/b",
            "/b/",
            "/b/c",
            "/b/cd",
            "/bb",
            "/bbb",
            "/api",
            "/api/",
            "/api/v1",
            "/api/v1/",
            "/api/v1/x",
            "/api/v3/",
            "/ap",
            "/AP",
            "/API/V2/X",
            "/c",
            "",
            "/A",
            "/AB",
        ];
        for p in probes {
            for method in ["GET", "POST"] {
                let req = parts(method, &format!("http://h{p}"), &[]);
                assert_eq!(t.find(&req), Table::linear(&routes, &req), "{method} {p:?}");
            }
        }
        // Case-insensitive ones only (so the sensitive tree does not answer first).
        let only: Vec<(RouteMatch, bool)> = routes
            .iter()
            .filter(|(_, cs)| !cs)
            .map(|(m, _)| (m.clone(), false))
            .collect();
        let t = Table::new(&only);
        for p in probes {
            let req = parts("GET", &format!("http://h{p}"), &[]);
            assert_eq!(t.find(&req), Table::linear(&only, &req), "{p:?}");
        }
    }

    #[test]
    fn long_and_deep_keys() {
        // A request target is at most 64 KiB; keys of about that size, and
        // keys that branch at every depth of a long common prefix.
        let long = format!("/{}", "x".repeat(60_000));
        let mut routes = vec![(prefix(&long), true), (exact(&long[..30_000]), true)];
        routes.extend((1..400).map(|i| (exact(&format!("{}y", &long[..i * 100])), true)));
        let t = Table::new(&routes);
        assert_eq!(t.get(&format!("{long}/y")), Some(0));
        assert_eq!(t.get(&long[..30_000]), Some(1));
        assert_eq!(t.get(&long[..30_001]), None);
        assert_eq!(t.get(&format!("{}y", &long[..39_900])), Some(400));
        assert_eq!(t.get(&format!("{}y", &long[..39_901])), None);
    }

    #[test]
    fn methods_headers_host() {
        let rm = RouteMatch {
            methods: Some(vec!["POST".into()]),
            headers: vec![("x-api-version".into(), "2".into())],
            host: Some("orders.shop.svc".into()),
            ..Default::default()
        };
        let mm = Matcher::compile(&rm).unwrap();
        assert!(!mm.is_unconditional());
        assert!(Matcher::compile(&prefix("/")).unwrap().is_unconditional());
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
