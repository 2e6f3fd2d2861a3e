//! Positions of keys, for checks the proxy makes after parsing (TLS files
//! are read there): `locate(text, &["listeners", "in", "tls", "cert"])`.

use crate::node::{self, Value};

/// The 1-based line and column of the key at `path` (mapping keys from the
/// root), or None when the text does not parse or has no such key.
pub fn locate(text: &str, path: &[&str]) -> Option<(usize, usize)> {
    let root = node::load(text).ok()?;
    let mut node = &root;
    let mut mark = root.mark;
    for key in path {
        let Value::Map(entries) = &node.value else {
            return None;
        };
        let (k, v) = entries
            .iter()
            .find(|(k, _)| k.scalar().is_some_and(|s| s.text == *key))?;
        mark = k.mark;
        node = v;
    }
    Some((mark.line, mark.column))
}

#[cfg(test)]
mod tests {
    use super::locate;

    #[test]
    fn finds_nested_keys() {
        let text = "listeners:\n  in:\n    tls:\n      key: k\n      cert: c\n";
        assert_eq!(
            locate(text, &["listeners", "in", "tls", "cert"]),
            Some((5, 7))
        );
        assert_eq!(locate(text, &["listeners", "out"]), None);
    }
}
