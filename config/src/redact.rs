//! The config as YAML for the admin `/config` endpoint, secrets hidden.
//!
//! Shown as `<redacted>`: the value of any `secret` key, of `key` inside a
//! `tls` section, and every scalar that had a `${VAR}` substituted in.
//! Aliases appear expanded; plain scalars stay plain where that is safe,
//! everything else is written double-quoted (JSON escapes are valid YAML).

use std::fmt::Write;

use crate::node::{Node, Value};

const REDACTED: &str = "\"<redacted>\"";

pub fn redacted_yaml(root: &Node) -> String {
    let mut out = String::new();
    match &root.value {
        Value::Map(entries) if !entries.is_empty() => map(entries, 0, false, &mut out),
        _ => value(root, 0, false, &mut out),
    }
    out
}

fn map(entries: &[(Node, Node)], indent: usize, in_tls: bool, out: &mut String) {
    for (k, v) in entries {
        let key = k.scalar().map(|s| s.text.as_str()).unwrap_or("");
        out.push_str(&" ".repeat(indent));
        out.push_str(&scalar_text(key, true));
        out.push(':');
        if key == "secret" || (in_tls && key == "key") {
            out.push(' ');
            out.push_str(REDACTED);
            out.push('\n');
        } else {
            value(v, indent + 2, key == "tls", out);
        }
    }
}

/// A value after `key:` or `-`.
fn value(node: &Node, indent: usize, in_tls: bool, out: &mut String) {
    match &node.value {
        Value::Scalar(s) => {
            out.push(' ');
            if s.substituted {
                out.push_str(REDACTED);
            } else if node.is_null() {
                out.push_str("null");
            } else {
                out.push_str(&scalar_text(&s.text, s.plain));
            }
            out.push('\n');
        }
        Value::Map(entries) if entries.is_empty() => out.push_str(" {}\n"),
        Value::Seq(items) if items.is_empty() => out.push_str(" []\n"),
        Value::Map(entries) => {
            out.push('\n');
            map(entries, indent, in_tls, out);
        }
        Value::Seq(items) => {
            out.push('\n');
            for item in items {
                out.push_str(&" ".repeat(indent));
                out.push('-');
                value(item, indent + 2, false, out);
            }
        }
    }
}

/// As is when it was plain and reads back the same; else double-quoted.
fn scalar_text(text: &str, plain: bool) -> String {
    let safe_start = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '/' || c == '_' || c == '.');
    let safe = safe_start
        && !text.ends_with(':')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:@+-".contains(c));
    if plain && safe {
        return text.to_string();
    }
    let mut q = String::with_capacity(text.len() + 2);
    q.push('"');
    for c in text.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\t' => q.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(q, "\\u{:04x}", u32::from(c));
            }
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Errors;
    use crate::node::load;

    fn strip_marks(node: &mut Node) {
        node.mark = Default::default();
        match &mut node.value {
            Value::Scalar(s) => s.substituted = false,
            Value::Seq(items) => items.iter_mut().for_each(strip_marks),
            Value::Map(entries) => entries.iter_mut().for_each(|(k, v)| {
                strip_marks(k);
                strip_marks(v);
            }),
        }
    }

    #[test]
    fn round_trips() {
        let text = "a: &x {b: [1, \"2\", null, true], c: \"he said \\\"hi\\\"\\n\"}\nd: *x\ne: []\nf: {}\ng:\n  - [x, y]\n  - {h: 'Bearer '}\nk: \"-x\"\n";
        let mut node = load(text).unwrap();
        let yaml = redacted_yaml(&node);
        let mut back = load(&yaml).unwrap_or_else(|e| panic!("{e:?}\n{yaml}"));
        strip_marks(&mut node);
        strip_marks(&mut back);
        assert_eq!(node, back, "{yaml}");
    }

    #[test]
    fn redacts() {
        let text = "jwt:\n  secret: abc\ntls:\n  key: /k.pem\n  cert: /c.pem\nother:\n  key: visible\nenv: ${X}\n";
        let mut node = load(text).unwrap();
        let mut errs = Errors::new("f");
        crate::env::substitute(&mut node, &|_| Some("hidden".into()), &mut errs);
        let yaml = redacted_yaml(&node);
        assert_eq!(
            yaml,
            "jwt:\n  secret: \"<redacted>\"\ntls:\n  key: \"<redacted>\"\n  cert: /c.pem\nother:\n  key: visible\nenv: \"<redacted>\"\n"
        );
        assert!(!yaml.contains("hidden") && !yaml.contains("abc"));
    }
}
