//! `${VAR}` and `${VAR:-default}` in string scalars.
//!
//! `$${` writes a literal `${`. A default applies when the variable is unset
//! or empty, as in the shell.

use crate::error::Errors;
use crate::node::{Node, Value};

/// Substitutes in every value scalar of the tree (not in keys), marking the
/// scalars it changed. Unset variables without a default are reported.
pub fn substitute(node: &mut Node, env: &dyn Fn(&str) -> Option<String>, errs: &mut Errors) {
    match &mut node.value {
        Value::Scalar(s) => {
            if !s.text.contains('$') {
                return;
            }
            match expand(&s.text, env) {
                Ok(Some(text)) => {
                    s.text = text;
                    s.substituted = true;
                }
                Ok(None) => {}
                Err(message) => errs.poison(node.mark, message),
            }
        }
        Value::Seq(items) => items.iter_mut().for_each(|n| substitute(n, env, errs)),
        Value::Map(entries) => entries
            .iter_mut()
            .for_each(|(_, v)| substitute(v, env, errs)),
    }
}

/// The expanded text, or None when the text has nothing to substitute.
fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            changed = true;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unterminated ${{ in {text:?}"))?;
            let inner = &tail[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !valid_name(name) {
                return Err(format!("invalid variable name {name:?} in ${{...}}"));
            }
            let value = match (env(name), default) {
                (Some(v), Some(d)) if v.is_empty() => d.to_string(),
                (Some(v), _) => v,
                (None, Some(d)) => d.to_string(),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name:?} is not set and has no default"
                    ))
                }
            };
            out.push_str(&value);
            rest = &tail[end + 1..];
            changed = true;
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(changed.then_some(out))
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3cr3t".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands() {
        assert_eq!(
            expand("${SECRET}", &env).unwrap().as_deref(),
            Some("s3cr3t")
        );
        assert_eq!(
            expand("a-${SECRET}-b", &env).unwrap().as_deref(),
            Some("a-s3cr3t-b")
        );
        assert_eq!(
            expand("${NOPE:-x:y}", &env).unwrap().as_deref(),
            Some("x:y")
        );
        assert_eq!(expand("${EMPTY:-d}", &env).unwrap().as_deref(), Some("d"));
        assert_eq!(expand("${EMPTY}", &env).unwrap().as_deref(), Some(""));
        assert_eq!(
            expand("$${SECRET}", &env).unwrap().as_deref(),
            Some("${SECRET}")
        );
        assert_eq!(expand("cost $5", &env).unwrap(), None);
        assert_eq!(expand("plain", &env).unwrap(), None);
    }

    #[test]
    fn errors() {
        assert_eq!(
            expand("${NOPE}", &env).unwrap_err(),
            "environment variable \"NOPE\" is not set and has no default"
        );
        assert!(expand("${SECRET", &env).is_err());
        assert!(expand("${1X}", &env).is_err());
        assert!(expand("${}", &env).is_err());
    }
}
