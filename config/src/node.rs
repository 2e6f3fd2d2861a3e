//! A YAML tree where every node knows its line and column.
//!
//! Built from `saphyr-parser` events rather than a serde model so that every
//! key keeps its position, scalars keep their style (a quoted `"2"` stays a
//! string), aliases are expanded (with a budget against alias bombs) and
//! merge keys (`<<: *base`) are applied.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Mark {
    pub line: usize,
    pub column: usize,
}

impl Mark {
    pub fn new(line: usize, column: usize) -> Self {
        Mark { line, column }
    }
    fn of(span: &Span) -> Self {
        Mark::new(span.start.line(), span.start.col() + 1)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub text: String,
    /// Written without quotes (so `true`, `12` and `~` have their YAML meaning).
    pub plain: bool,
    /// Some `${VAR}` was substituted into it: shown redacted.
    pub substituted: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    Seq(Vec<Node>),
    /// Entries in file order; keys may repeat here (reported when read).
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub mark: Mark,
    pub value: Value,
}

impl Node {
    pub fn scalar(&self) -> Option<&Scalar> {
        match &self.value {
            Value::Scalar(s) => Some(s),
            _ => None,
        }
    }

    /// The value of `key` when this is a mapping (the first, if repeated).
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.scalar().is_some_and(|s| s.text == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// A plain empty, `~` or `null` scalar.
    pub fn is_null(&self) -> bool {
        matches!(self.scalar(), Some(s) if s.plain && matches!(s.text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// How the node reads in an error message: `"text"`, `a list`, ...
    pub fn describe(&self) -> String {
        match &self.value {
            _ if self.is_null() => "nothing".to_string(),
            Value::Scalar(s) => format!("{:?}", s.text),
            Value::Seq(_) => "a list".to_string(),
            Value::Map(_) => "a mapping".to_string(),
        }
    }

    fn count(&self) -> usize {
        match &self.value {
            Value::Scalar(_) => 1,
            Value::Seq(items) => 1 + items.iter().map(Node::count).sum::<usize>(),
            Value::Map(entries) => {
                1 + entries
                    .iter()
                    .map(|(k, v)| k.count() + v.count())
                    .sum::<usize>()
            }
        }
    }
}

/// Nodes that aliases may add in all, against "billion laughs" documents.
const ALIAS_BUDGET: usize = 100_000;

/// A syntax error: where and what.
pub type SyntaxError = (Mark, String);

enum Frame {
    Seq(Mark, usize, Vec<Node>),
    Map(Mark, usize, Vec<(Node, Node)>, Option<Node>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    budget_used: usize,
    root: Option<Node>,
}

impl Builder {
    /// Places a finished node in its parent (or as the document).
    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            Some(Frame::Seq(_, _, items)) => items.push(node),
            Some(Frame::Map(_, _, entries, pending)) => match pending.take() {
                Some(key) => entries.push((key, node)),
                None => *pending = Some(node),
            },
            None => self.root = Some(node),
        }
    }

    fn alias(&mut self, id: usize, mark: Mark) -> Result<Node, SyntaxError> {
        let Some(node) = self.anchors.get(&id) else {
            return Err((mark, "alias to an anchor that is not complete here".into()));
        };
        self.budget_used += node.count();
        if self.budget_used > ALIAS_BUDGET {
            return Err((mark, "aliases expand to too many nodes".into()));
        }
        let mut node = node.clone();
        node.mark = mark;
        Ok(node)
    }
}

/// Parses one YAML document. An empty file gives a null scalar.
pub fn load(text: &str) -> Result<Node, SyntaxError> {
    let mut b = Builder::default();
    let mut documents = 0;
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| {
            let m = e.marker();
            (
                Mark::new(m.line().max(1), m.col() + 1),
                format!("invalid YAML: {}", e.info()),
            )
        })?;
        let mark = Mark::of(&span);
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err((
                        mark,
                        "expected one YAML document, found a second one".into(),
                    ));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let str_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let plain = style == ScalarStyle::Plain && !str_tag;
                let value = Value::Scalar(Scalar {
                    text: text.into_owned(),
                    plain,
                    substituted: false,
                });
                b.finish(Node { mark, value }, anchor);
            }
            Event::Alias(id) => {
                let node = b.alias(id, mark)?;
                b.finish(node, 0);
            }
            Event::SequenceStart(anchor, _) => b.stack.push(Frame::Seq(mark, anchor, Vec::new())),
            Event::MappingStart(anchor, _) => {
                b.stack.push(Frame::Map(mark, anchor, Vec::new(), None))
            }
            Event::SequenceEnd | Event::MappingEnd => match b.stack.pop() {
                Some(Frame::Seq(m, anchor, items)) => b.finish(Node::new_seq(m, items), anchor),
                Some(Frame::Map(m, anchor, entries, _)) => {
                    let entries = merge(entries)?;
                    b.finish(
                        Node {
                            mark: m,
                            value: Value::Map(entries),
                        },
                        anchor,
                    )
                }
                None => return Err((mark, "invalid YAML: unbalanced collection".into())),
            },
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    Ok(b.root.unwrap_or(Node {
        mark: Mark::new(1, 1),
        value: Value::Scalar(Scalar {
            text: String::new(),
            plain: true,
            substituted: false,
        }),
    }))
}

impl Node {
    fn new_seq(mark: Mark, items: Vec<Node>) -> Node {
        Node {
            mark,
            value: Value::Seq(items),
        }
    }
}

fn is_merge_key(key: &Node) -> bool {
    matches!(key.scalar(), Some(s) if s.plain && s.text == "<<")
}

fn key_text(key: &Node) -> Option<&str> {
    key.scalar().map(|s| s.text.as_str())
}

/// Applies `<<` merge keys: keys of the merged mappings that the mapping
/// does not set itself are added after its own, first merged mapping first.
fn merge(entries: Vec<(Node, Node)>) -> Result<Vec<(Node, Node)>, SyntaxError> {
    if !entries.iter().any(|(k, _)| is_merge_key(k)) {
        return Ok(entries);
    }
    let (merges, mut own): (Vec<_>, Vec<_>) =
        entries.into_iter().partition(|(k, _)| is_merge_key(k));
    for (key, value) in merges {
        let sources = match value.value {
            Value::Map(_) => vec![value],
            Value::Seq(items) => items,
            Value::Scalar(_) => {
                return Err((
                    key.mark,
                    "<< expects a mapping or a list of mappings".into(),
                ))
            }
        };
        for source in sources {
            let Value::Map(more) = source.value else {
                return Err((
                    source.mark,
                    "<< expects a mapping or a list of mappings".into(),
                ));
            };
            for (k, v) in more {
                let present = own
                    .iter()
                    .any(|(o, _)| key_text(o) == key_text(&k) && key_text(&k).is_some());
                if !present {
                    own.push((k, v));
                }
            }
        }
    }
    Ok(own)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(node: &Node) -> &[(Node, Node)] {
        match &node.value {
            Value::Map(e) => e,
            _ => panic!("not a map: {node:?}"),
        }
    }

    #[test]
    fn marks_are_one_based() {
        let n = load("a:\n  bb: 1\n").unwrap();
        let outer = map(&n);
        assert_eq!(outer[0].0.mark, Mark::new(1, 1));
        let inner = map(&outer[0].1);
        assert_eq!(inner[0].0.mark, Mark::new(2, 3));
        assert_eq!(inner[0].1.mark, Mark::new(2, 7));
    }

    #[test]
    fn quoted_scalars_are_not_plain() {
        let n = load("a: \"2\"\nb: 2\nc: !!str 3\n").unwrap();
        let e = map(&n);
        assert!(!e[0].1.scalar().unwrap().plain);
        assert!(e[1].1.scalar().unwrap().plain);
        assert!(!e[2].1.scalar().unwrap().plain);
    }

    #[test]
    fn aliases_expand_and_point_at_the_use() {
        let n = load("a: &x [1, 2]\nb: *x\n").unwrap();
        let e = map(&n);
        assert_eq!(e[1].1.mark, Mark::new(2, 4));
        assert!(matches!(&e[1].1.value, Value::Seq(items) if items.len() == 2));
    }

    #[test]
    fn merge_keys_fill_missing_keys_only() {
        let n = load("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  y: 3\n").unwrap();
        let m = map(&map(&n)[1].1);
        let pairs: Vec<_> = m
            .iter()
            .map(|(k, v)| (key_text(k).unwrap(), v.scalar().unwrap().text.as_str()))
            .collect();
        assert_eq!(pairs, vec![("y", "3"), ("x", "1")]);
    }

    #[test]
    fn alias_bombs_stop() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = load(&text).unwrap_err();
        assert!(err.1.contains("too many"), "{err:?}");
    }

    #[test]
    fn syntax_errors_and_odd_documents() {
        assert!(load("a: [1, 2").is_err());
        assert!(load("a: 1\n---\nb: 2\n").is_err());
        assert!(load("a: &x [*x]\n").is_err());
        assert!(load("<<: 3\n").is_err());
        assert!(load("").unwrap().is_null());
    }
}
