//! Reading typed values out of the marked tree, reporting what is wrong.
//!
//! Every reader reports its own error and returns None, so the caller can
//! carry on and find the next error.

use std::time::Duration;

use crate::error::Errors;
use crate::node::{Mark, Node, Value};
use crate::suggest::did_you_mean;
use crate::types::Rate;
use crate::units;

/// A mapping's entries by key, checked for unknown and repeated keys.
pub struct Map<'n> {
    pub mark: Mark,
    entries: Vec<(&'n str, Mark, &'n Node)>,
    place: String,
}

impl<'n> Map<'n> {
    /// Reads `node` as a mapping with only `allowed` keys. `place` ends the
    /// messages: `in retry filter "retries"`, `at the top level`.
    pub fn new(node: &'n Node, place: &str, allowed: &[&str], errs: &mut Errors) -> Option<Self> {
        let map = Self::any(node, place, errs)?;
        for (key, mark, _) in &map.entries {
            if !allowed.contains(key) {
                let hint = did_you_mean(key, allowed.iter().copied());
                errs.at(*mark, format!("unknown key {key:?} {place}{hint}"));
            }
        }
        Some(map)
    }

    /// Any keys (a map keyed by name), each once.
    pub fn any(node: &'n Node, place: &str, errs: &mut Errors) -> Option<Self> {
        let Value::Map(pairs) = &node.value else {
            errs.at(
                node.mark,
                format!("expected a mapping {place}, found {}", node.describe()),
            );
            return None;
        };
        let mut entries: Vec<(&str, Mark, &Node)> = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let Some(key) = k.scalar().map(|s| s.text.as_str()) else {
                errs.at(
                    k.mark,
                    format!("expected a string key {place}, found {}", k.describe()),
                );
                continue;
            };
            if entries.iter().any(|(seen, _, _)| *seen == key) {
                errs.at(k.mark, format!("duplicate key {key:?} {place}"));
                continue;
            }
            entries.push((key, k.mark, v));
        }
        Some(Map {
            mark: node.mark,
            entries,
            place: place.to_string(),
        })
    }

    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries.iter().find(|e| e.0 == key).map(|e| e.2)
    }

    pub fn key_mark(&self, key: &str) -> Option<Mark> {
        self.entries.iter().find(|e| e.0 == key).map(|e| e.1)
    }

    /// The value of a key that must be present.
    pub fn required(&self, key: &str, errs: &mut Errors) -> Option<&'n Node> {
        let found = self.get(key);
        if found.is_none() {
            errs.at(self.mark, format!("missing key {key:?} {}", self.place));
        }
        found
    }

    /// Key, key position, value; in file order.
    pub fn entries(&self) -> impl Iterator<Item = (&'n str, Mark, &'n Node)> + '_ {
        self.entries.iter().copied()
    }

    /// Reads an optional key with `read`.
    pub fn opt<T>(
        &self,
        key: &str,
        errs: &mut Errors,
        read: impl FnOnce(&'n Node, &mut Errors) -> Option<T>,
    ) -> Option<T> {
        self.get(key).and_then(|n| read(n, errs))
    }

    /// Reads a required key with `read`.
    pub fn req<T>(
        &self,
        key: &str,
        errs: &mut Errors,
        read: impl FnOnce(&'n Node, &mut Errors) -> Option<T>,
    ) -> Option<T> {
        self.required(key, errs).and_then(|n| read(n, errs))
    }
}

fn wrong(node: &Node, what: &str, errs: &mut Errors) {
    errs.at(
        node.mark,
        format!("expected {what}, found {}", node.describe()),
    );
}

/// Any scalar as text (`2` reads as "2"), but not nothing.
pub fn string(node: &Node, errs: &mut Errors) -> Option<String> {
    match node.scalar() {
        Some(s) if !node.is_null() => Some(s.text.clone()),
        _ => {
            wrong(node, "a string", errs);
            None
        }
    }
}

/// A string that is not empty.
pub fn nonempty(node: &Node, errs: &mut Errors) -> Option<String> {
    let s = string(node, errs)?;
    if s.is_empty() {
        errs.at(node.mark, "expected a non-empty string");
        return None;
    }
    Some(s)
}

pub fn boolean(node: &Node, errs: &mut Errors) -> Option<bool> {
    match node.scalar() {
        Some(s) if s.plain && matches!(s.text.as_str(), "true" | "True" | "TRUE") => Some(true),
        Some(s) if s.plain && matches!(s.text.as_str(), "false" | "False" | "FALSE") => Some(false),
        _ => {
            wrong(node, "true or false", errs);
            None
        }
    }
}

/// A whole number, plain or quoted.
pub fn uint(node: &Node, errs: &mut Errors) -> Option<u64> {
    match node
        .scalar()
        .and_then(|s| s.text.trim().parse::<u64>().ok())
    {
        Some(n) => Some(n),
        None => {
            wrong(node, "a whole number", errs);
            None
        }
    }
}

pub fn u32_(node: &Node, errs: &mut Errors) -> Option<u32> {
    let n = uint(node, errs)?;
    match u32::try_from(n) {
        Ok(n) => Some(n),
        Err(_) => {
            errs.at(node.mark, format!("{n} is too large"));
            None
        }
    }
}

pub fn usize_(node: &Node, errs: &mut Errors) -> Option<usize> {
    let n = uint(node, errs)?;
    usize::try_from(n).ok().or_else(|| {
        errs.at(node.mark, format!("{n} is too large"));
        None
    })
}

/// A whole number at least `min`.
pub fn at_least(min: u64) -> impl Fn(&Node, &mut Errors) -> Option<u64> {
    move |node, errs| {
        let n = uint(node, errs)?;
        if n < min {
            errs.at(node.mark, format!("expected at least {min}, found {n}"));
            return None;
        }
        Some(n)
    }
}

pub fn number(node: &Node, errs: &mut Errors) -> Option<f64> {
    match node
        .scalar()
        .and_then(|s| s.text.trim().parse::<f64>().ok())
        .filter(|f| f.is_finite())
    {
        Some(f) => Some(f),
        None => {
            wrong(node, "a number", errs);
            None
        }
    }
}

/// A duration, zero allowed.
pub fn duration(node: &Node, errs: &mut Errors) -> Option<Duration> {
    match node.scalar().and_then(|s| units::duration(&s.text)) {
        Some(d) => Some(d),
        None => {
            wrong(node, "a duration like \"250ms\" or \"2s\"", errs);
            None
        }
    }
}

/// A duration greater than zero.
pub fn positive_duration(node: &Node, errs: &mut Errors) -> Option<Duration> {
    let d = duration(node, errs)?;
    if d.is_zero() {
        errs.at(node.mark, "expected a duration greater than zero");
        return None;
    }
    Some(d)
}

pub fn size(node: &Node, errs: &mut Errors) -> Option<u64> {
    match node.scalar().and_then(|s| units::size(&s.text)) {
        Some(n) => Some(n),
        None => {
            wrong(node, "a size like 65536 or \"64KiB\"", errs);
            None
        }
    }
}

pub fn rate(node: &Node, errs: &mut Errors) -> Option<Rate> {
    match node.scalar().and_then(|s| units::rate(&s.text)) {
        Some(r) => Some(r),
        None => {
            wrong(node, "a rate like \"100/s\", \"10/m\" or \"5/h\"", errs);
            None
        }
    }
}

/// The items of a list.
pub fn list<'n>(node: &'n Node, errs: &mut Errors) -> Option<&'n [Node]> {
    match &node.value {
        Value::Seq(items) => Some(items),
        _ => {
            wrong(node, "a list", errs);
            None
        }
    }
}

/// A list of strings; bad items are reported and left out.
pub fn strings(node: &Node, errs: &mut Errors) -> Option<Vec<String>> {
    let items = list(node, errs)?;
    Some(items.iter().filter_map(|n| string(n, errs)).collect())
}

/// One string or a list of them.
pub fn one_or_more(node: &Node, errs: &mut Errors) -> Option<Vec<String>> {
    match &node.value {
        Value::Seq(_) => strings(node, errs),
        _ => string(node, errs).map(|s| vec![s]),
    }
}

/// One of fixed words; the index of the word.
pub fn choice(node: &Node, words: &[&str], errs: &mut Errors) -> Option<usize> {
    let text = node
        .scalar()
        .filter(|_| !node.is_null())
        .map(|s| s.text.as_str());
    if let Some(i) = text.and_then(|t| words.iter().position(|w| *w == t)) {
        return Some(i);
    }
    let hint = text
        .map(|t| did_you_mean(t, words.iter().copied()))
        .unwrap_or_default();
    errs.at(
        node.mark,
        format!(
            "expected one of {}, found {}{hint}",
            words.join(", "),
            node.describe()
        ),
    );
    None
}

/// A header name: lower-cased, made of token characters.
pub fn header_name(node: &Node, errs: &mut Errors) -> Option<String> {
    let name = string(node, errs)?.to_ascii_lowercase();
    if name.is_empty() || !name.chars().all(is_tchar) {
        errs.at(node.mark, format!("invalid header name {name:?}"));
        return None;
    }
    Some(name)
}

/// An HTTP method: upper-cased, made of token characters.
pub fn method(node: &Node, errs: &mut Errors) -> Option<String> {
    let m = string(node, errs)?.to_ascii_uppercase();
    if m.is_empty() || !m.chars().all(is_tchar) {
        errs.at(node.mark, format!("invalid method {m:?}"));
        return None;
    }
    Some(m)
}

/// A non-empty list of methods.
pub fn methods(node: &Node, errs: &mut Errors) -> Option<Vec<String>> {
    let items = list(node, errs)?;
    if items.is_empty() {
        errs.at(
            node.mark,
            "methods is empty; leave it out to match any method",
        );
        return None;
    }
    Some(items.iter().filter_map(|n| method(n, errs)).collect())
}

/// RFC 9110 token characters.
pub(crate) fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::load;

    fn run<T>(yaml: &str, f: impl FnOnce(&Node, &mut Errors) -> Option<T>) -> (Option<T>, String) {
        let node = load(yaml).unwrap();
        let mut errs = Errors::new("f");
        let out = f(&node, &mut errs);
        (out, errs.finish().to_string())
    }

    #[test]
    fn unknown_and_duplicate_keys() {
        let (_, e) = run("atempts: 1\nattempts: 2\nattempts: 3\n", |n, errs| {
            Map::new(n, "in retry filter \"r\"", &["attempts", "methods"], errs).map(|_| ())
        });
        assert_eq!(
            e,
            "f:1:1: unknown key \"atempts\" in retry filter \"r\"; did you mean \"attempts\"?\n\
             f:3:1: duplicate key \"attempts\" in retry filter \"r\""
        );
    }

    #[test]
    fn typed_values() {
        assert_eq!(run("true", boolean).0, Some(true));
        assert_eq!(
            run("\"true\"", boolean).1,
            "f:1:1: expected true or false, found \"true\""
        );
        assert_eq!(
            run("fast", duration).1,
            "f:1:1: expected a duration like \"250ms\" or \"2s\", found \"fast\""
        );
        assert_eq!(run("0s", positive_duration).0, None);
        assert_eq!(run("64KiB", size).0, Some(65536));
        assert_eq!(run("[a, 1]", strings).0, Some(vec!["a".into(), "1".into()]));
        assert_eq!(run("X-Api", header_name).0.as_deref(), Some("x-api"));
        assert_eq!(run("\"x y\"", header_name).0, None);
        assert_eq!(run("get", method).0.as_deref(), Some("GET"));
        assert_eq!(
            run("htp1", |n, e| choice(n, &["http1", "http2"], e)).1,
            "f:1:1: expected one of http1, http2, found \"htp1\"; did you mean \"http1\"?"
        );
        assert_eq!(run("", string).1, "f:1:1: expected a string, found nothing");
        assert_eq!(
            run("0", at_least(1)).1,
            "f:1:1: expected at least 1, found 0"
        );
        assert_eq!(run("5000000000", u32_).0, None);
    }
}
