//! A YAML tree where every node knows its line and column.
//!
//! Built from `saphyr-parser` events rather than a serde model so that every
//! key keeps its position, scalars keep their style (a quoted `"2"` stays a
//! string), aliases are expanded and merge keys (`<<: *base`) are applied.
//!
//! Two limits protect whoever reads a hostile file (`kaname check`, start,
//! reload): nesting deeper than [`MAX_DEPTH`] (`config_depth`) and aliases
//! that expand the document past [`MAX_EXPANSION_FACTOR`]× its size or
//! [`MAX_EXPANDED_BYTES`] (`config_expansion`) are errors at the position of
//! the offending collection or alias. Both are checked event by event, before
//! the node is built: the event parser keeps its own nesting on the heap, so
//! nothing recurses deeper than [`MAX_DEPTH`] and nothing is copied past the
//! budget.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

pub use crate::error::Limit;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
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
}

/// Collections nested deeper than this are refused (`config_depth`). The
/// root collection is level 1; a scalar adds no level. Everything that walks
/// the tree afterwards (substitution, reading, redaction, `Debug`, `Drop`)
/// recurses, so this bound is what keeps them within any thread's stack.
pub const MAX_DEPTH: usize = 64;

/// Aliases may expand a document to this many times its own size in bytes
/// (`config_expansion`) ...
pub const MAX_EXPANSION_FACTOR: usize = 16;

/// ... and never past this many bytes, whatever the size of the file.
pub const MAX_EXPANDED_BYTES: usize = 64 << 20;

/// What one node counts for in the expanded size besides its scalar text:
/// about the key or item marker, indentation and line break it takes when
/// written out. So aliases of many tiny or empty nodes are paid for too.
const NODE_BYTES: usize = 8;

/// A syntax error or a refused document: where, what, and which limit (if
/// any) it hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub mark: Mark,
    pub message: String,
    pub limit: Option<Limit>,
}

impl SyntaxError {
    fn new(mark: Mark, message: impl Into<String>) -> Self {
        SyntaxError {
            mark,
            message: message.into(),
            limit: None,
        }
    }
}

/// The tree while it is built. Anchored nodes are shared (an `Rc`), never
/// copied, until the end: copies are made only for the aliases, and only
/// after their size was counted against the budget.
struct Built {
    mark: Mark,
    value: BuiltValue,
    /// Levels of collections in this node: 0 for a scalar.
    height: usize,
    /// Bytes the node counts for, its aliases expanded.
    weight: usize,
}

#[derive(Clone)]
enum BuiltValue {
    Scalar(Scalar),
    Seq(Vec<Rc<Built>>),
    Map(Vec<(Rc<Built>, Rc<Built>)>),
}

impl Built {
    fn new(mark: Mark, value: BuiltValue) -> Built {
        let (height, weight) = match &value {
            BuiltValue::Scalar(s) => (0, NODE_BYTES.saturating_add(s.text.len())),
            BuiltValue::Seq(items) => items.iter().fold((1, NODE_BYTES), |(h, w), n| {
                (h.max(n.height + 1), w.saturating_add(n.weight))
            }),
            BuiltValue::Map(entries) => entries.iter().fold((1, NODE_BYTES), |(h, w), (k, v)| {
                (
                    h.max(k.height + 1).max(v.height + 1),
                    w.saturating_add(k.weight).saturating_add(v.weight),
                )
            }),
        };
        Built {
            mark,
            value,
            height,
            weight,
        }
    }

    fn scalar(&self) -> Option<&Scalar> {
        match &self.value {
            BuiltValue::Scalar(s) => Some(s),
            _ => None,
        }
    }
}

/// The finished tree: what only this tree holds is moved, what anchors
/// share is copied. Recursion is bounded by [`MAX_DEPTH`].
fn into_node(built: Rc<Built>) -> Node {
    match Rc::try_unwrap(built) {
        Ok(b) => Node {
            mark: b.mark,
            value: match b.value {
                BuiltValue::Scalar(s) => Value::Scalar(s),
                BuiltValue::Seq(items) => Value::Seq(items.into_iter().map(into_node).collect()),
                BuiltValue::Map(entries) => Value::Map(
                    entries
                        .into_iter()
                        .map(|(k, v)| (into_node(k), into_node(v)))
                        .collect(),
                ),
            },
        },
        Err(shared) => copy_node(&shared),
    }
}

fn copy_node(b: &Built) -> Node {
    Node {
        mark: b.mark,
        value: match &b.value {
            BuiltValue::Scalar(s) => Value::Scalar(s.clone()),
            BuiltValue::Seq(items) => Value::Seq(items.iter().map(|n| copy_node(n)).collect()),
            BuiltValue::Map(entries) => Value::Map(
                entries
                    .iter()
                    .map(|(k, v)| (copy_node(k), copy_node(v)))
                    .collect(),
            ),
        },
    }
}

enum Frame {
    Seq(Mark, usize, Vec<Rc<Built>>),
    Map(Mark, usize, Vec<(Rc<Built>, Rc<Built>)>, Option<Rc<Built>>),
}

struct Builder {
    /// Open collections: its length is the current depth.
    stack: Vec<Frame>,
    anchors: HashMap<usize, Rc<Built>>,
    /// The document's size with the aliases so far expanded.
    expanded: usize,
    /// The size in bytes of the text.
    own: usize,
    root: Option<Rc<Built>>,
}

impl Builder {
    fn new(text: &str) -> Self {
        Builder {
            stack: Vec::new(),
            anchors: HashMap::new(),
            expanded: text.len(),
            own: text.len(),
            root: None,
        }
    }

    /// Places a finished node in its parent (or as the document).
    fn finish(&mut self, node: Rc<Built>, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, Rc::clone(&node));
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

    /// A collection starts at `mark`: refused past [`MAX_DEPTH`].
    fn open(&mut self, frame: Frame, mark: Mark) -> Result<(), SyntaxError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(too_deep(mark));
        }
        self.stack.push(frame);
        Ok(())
    }

    /// The node an alias stands for, placed at `mark`, once its depth and
    /// size are known to fit: nothing is copied before that.
    fn alias(&mut self, id: usize, mark: Mark) -> Result<Rc<Built>, SyntaxError> {
        let Some(node) = self.anchors.get(&id) else {
            return Err(SyntaxError::new(
                mark,
                "alias to an anchor that is not complete here",
            ));
        };
        if self.stack.len() + node.height > MAX_DEPTH {
            return Err(too_deep(mark));
        }
        self.expanded = self.expanded.saturating_add(node.weight);
        let allowed = self
            .own
            .saturating_mul(MAX_EXPANSION_FACTOR)
            .min(MAX_EXPANDED_BYTES);
        if self.expanded > allowed {
            let message = if allowed == MAX_EXPANDED_BYTES {
                format!(
                    "aliases expand the document past {} (config_expansion)",
                    human_bytes(MAX_EXPANDED_BYTES)
                )
            } else {
                format!(
                    "aliases expand the document past {MAX_EXPANSION_FACTOR}× its size (config_expansion: {} allowed for {})",
                    human_bytes(allowed),
                    human_bytes(self.own)
                )
            };
            return Err(SyntaxError {
                mark,
                message,
                limit: Some(Limit::ConfigExpansion),
            });
        }
        // Shares the anchor's children: the copies are made at the end.
        Ok(Rc::new(Built {
            mark,
            value: node.value.clone(),
            height: node.height,
            weight: node.weight,
        }))
    }
}

fn too_deep(mark: Mark) -> SyntaxError {
    SyntaxError {
        mark,
        message: format!("YAML nested deeper than {MAX_DEPTH} levels (config_depth)"),
        limit: Some(Limit::ConfigDepth),
    }
}

/// `183 KiB`, `2.9 MiB`, `512 B`.
fn human_bytes(n: usize) -> String {
    const KIB: f64 = 1024.0;
    let f = n as f64;
    if f >= KIB * KIB {
        format!("{:.1} MiB", f / (KIB * KIB))
    } else if f >= KIB {
        format!("{:.0} KiB", f / KIB)
    } else {
        format!("{n} B")
    }
}

/// Parses one YAML document. An empty file gives a null scalar.
///
/// Depth and alias expansion are checked as the events arrive, before
/// anything deep is built or anything big is copied; the event parser
/// itself keeps its nesting on the heap (no recursion).
pub fn load(text: &str) -> Result<Node, SyntaxError> {
    let mut b = Builder::new(text);
    let mut documents = 0;
    for item in Parser::new_from_str(text) {
        let (event, span) = item.map_err(|e| {
            let m = e.marker();
            let mark = Mark::new(m.line().max(1), m.col() + 1);
            // The scanner reads a flow collection ahead to its end and stops
            // at 255 open levels, before the 65th could reach us as an event.
            if e.info() == "recursion limit exceeded" {
                return too_deep(mark);
            }
            SyntaxError::new(mark, format!("invalid YAML: {}", e.info()))
        })?;
        let mark = Mark::of(&span);
        match event {
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError::new(
                        mark,
                        "expected one YAML document, found a second one",
                    ));
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                let str_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let plain = style == ScalarStyle::Plain && !str_tag;
                let value = BuiltValue::Scalar(Scalar {
                    text: text.into_owned(),
                    plain,
                    substituted: false,
                });
                b.finish(Rc::new(Built::new(mark, value)), anchor);
            }
            Event::Alias(id) => {
                let node = b.alias(id, mark)?;
                b.finish(node, 0);
            }
            Event::SequenceStart(anchor, _) => {
                b.open(Frame::Seq(mark, anchor, Vec::new()), mark)?
            }
            Event::MappingStart(anchor, _) => {
                b.open(Frame::Map(mark, anchor, Vec::new(), None), mark)?
            }
            Event::SequenceEnd | Event::MappingEnd => match b.stack.pop() {
                Some(Frame::Seq(m, anchor, items)) => {
                    b.finish(Rc::new(Built::new(m, BuiltValue::Seq(items))), anchor)
                }
                Some(Frame::Map(m, anchor, entries, _)) => {
                    let entries = merge(entries)?;
                    b.finish(Rc::new(Built::new(m, BuiltValue::Map(entries))), anchor)
                }
                None => {
                    return Err(SyntaxError::new(
                        mark,
                        "invalid YAML: unbalanced collection",
                    ))
                }
            },
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
    }
    // The builder's anchors share nodes with the tree: dropped first, so
    // what only the tree holds is moved rather than copied.
    let root = b.root.take();
    drop(b);
    Ok(match root {
        Some(root) => into_node(root),
        None => Node {
            mark: Mark::new(1, 1),
            value: Value::Scalar(Scalar {
                text: String::new(),
                plain: true,
                substituted: false,
            }),
        },
    })
}

fn is_merge_key(key: &Built) -> bool {
    matches!(key.scalar(), Some(s) if s.plain && s.text == "<<")
}

type Entries = Vec<(Rc<Built>, Rc<Built>)>;

/// Applies `<<` merge keys: keys of the merged mappings that the mapping
/// does not set itself are added after its own, first merged mapping first.
fn merge(entries: Entries) -> Result<Entries, SyntaxError> {
    if !entries.iter().any(|(k, _)| is_merge_key(k)) {
        return Ok(entries);
    }
    let (merges, mut own): (Vec<_>, Vec<_>) =
        entries.into_iter().partition(|(k, _)| is_merge_key(k));
    let mut present: HashSet<String> = own
        .iter()
        .filter_map(|(k, _)| k.scalar().map(|s| s.text.clone()))
        .collect();
    for (key, value) in merges {
        let sources = match &value.value {
            BuiltValue::Map(_) => vec![Rc::clone(&value)],
            BuiltValue::Seq(items) => items.clone(),
            BuiltValue::Scalar(_) => {
                return Err(SyntaxError::new(
                    key.mark,
                    "<< expects a mapping or a list of mappings",
                ))
            }
        };
        for source in sources {
            let BuiltValue::Map(more) = &source.value else {
                return Err(SyntaxError::new(
                    source.mark,
                    "<< expects a mapping or a list of mappings",
                ));
            };
            for (k, v) in more {
                let new = match k.scalar() {
                    Some(s) => present.insert(s.text.clone()),
                    None => true,
                };
                if new {
                    own.push((Rc::clone(k), Rc::clone(v)));
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
            .map(|(k, v)| {
                (
                    k.scalar().unwrap().text.as_str(),
                    v.scalar().unwrap().text.as_str(),
                )
            })
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
        assert_eq!(err.limit, Some(Limit::ConfigExpansion), "{err:?}");
        assert!(err.message.contains("past 16× its size"), "{err:?}");
        // Refused in the first lines that expand: `a3` is 1,000 nodes.
        assert!(err.mark.line <= 4, "{err:?}");
    }

    /// `n` collections nested in flow style: `[[[x]]]`.
    fn flow(n: usize) -> String {
        format!("{}x{}", "[".repeat(n), "]".repeat(n))
    }

    /// `n` block sequences nested on one line: `- - - x`.
    fn block(n: usize) -> String {
        format!("{}x\n", "- ".repeat(n))
    }

    /// `n` block mappings nested one per line.
    fn maps(n: usize) -> String {
        (0..n)
            .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
            .collect::<String>()
            + &"  ".repeat(n)
            + "x\n"
    }

    fn height(node: &Node) -> usize {
        match &node.value {
            Value::Scalar(_) => 0,
            Value::Seq(items) => 1 + items.iter().map(height).max().unwrap_or(0),
            Value::Map(e) => 1 + e.iter().map(|(_, v)| height(v)).max().unwrap_or(0),
        }
    }

    #[test]
    fn depth_64_is_fine() {
        for text in [flow(64), block(64), maps(64)] {
            let node = load(&text).unwrap_or_else(|e| panic!("{e:?}"));
            assert_eq!(height(&node), 64);
        }
    }

    #[test]
    fn the_scanners_own_flow_limit_is_a_depth_error_too() {
        let err = load(&flow(300)).unwrap_err();
        assert_eq!(err.limit, Some(Limit::ConfigDepth), "{err:?}");
        assert_eq!(err.mark, Mark::new(1, 256));
    }

    #[test]
    fn depth_65_is_refused_where_it_starts() {
        let cases = [
            (flow(65), Mark::new(1, 65)),
            (block(65), Mark::new(1, 129)),
            // The 65th mapping starts at its first key.
            (maps(65), Mark::new(65, 129)),
        ];
        for (text, mark) in cases {
            let err = load(&text).unwrap_err();
            assert_eq!(
                err,
                SyntaxError {
                    mark,
                    message: "YAML nested deeper than 64 levels (config_depth)".into(),
                    limit: Some(Limit::ConfigDepth),
                },
                "{text}"
            );
        }
    }

    /// Runs `f` on a thread with a 256 KiB stack: an overflow would abort
    /// the test binary, so passing proves nothing recursed on the nesting.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .expect("spawn")
            .join()
            .expect("no panic")
    }

    #[test]
    fn five_thousand_levels_are_refused_without_recursion() {
        let errs = on_small_stack(|| {
            let started = std::time::Instant::now();
            let errs: Vec<_> = [format!("x-deep:\n{}", block(5000)), flow(5000), maps(1000)]
                .iter()
                .map(|t| load(t).unwrap_err())
                .collect();
            // Generous: the refusal comes at level 65, not at the bottom.
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
            errs
        });
        for e in &errs {
            assert_eq!(e.limit, Some(Limit::ConfigDepth), "{e:?}");
        }
        assert_eq!(errs[0].mark, Mark::new(2, 127));
        assert_eq!(errs[2].mark, Mark::new(65, 129));
    }

    #[test]
    fn aliases_count_towards_the_depth() {
        // The anchor is 62 levels high; placed in a list 2 levels down it
        // makes 64, 3 levels down 65.
        let anchor = format!("a: &a {}\n", flow(62));
        let node = load(&format!("{anchor}b: [*a]\n")).unwrap();
        assert_eq!(height(&node), 64);
        let err = load(&format!("{anchor}b: [[*a]]\n")).unwrap_err();
        assert_eq!(err.limit, Some(Limit::ConfigDepth));
        assert_eq!(err.mark, Mark::new(2, 6), "at the alias: {err:?}");
    }

    /// The 183 KiB document of the issue: one 100 KiB string, 20,000 aliases.
    fn string_bomb() -> String {
        let big = "a".repeat(100 * 1024);
        let aliases = vec!["*s"; 20_000].join(", ");
        format!("x-s: &s \"{big}\"\nx-b: [{aliases}]\n")
    }

    #[test]
    fn a_string_aliased_20000_times_is_refused_at_16x() {
        let text = string_bomb();
        let err = on_small_stack(move || load(&text).unwrap_err());
        assert_eq!(err.limit, Some(Limit::ConfigExpansion), "{err:?}");
        assert_eq!(
            err.message,
            "aliases expand the document past 16× its size (config_expansion: 2.8 MiB allowed for 178 KiB)"
        );
        // What was copied before the refusal is bounded by that budget: the
        // alias that crossed 16× is refused, the 27th (15 × 178 KiB / 100 KiB
        // + 1), at column 7 + 4 × 26; the 19,973 others are never looked at.
        let n = 15 * string_bomb().len() / (100 * 1024 + NODE_BYTES) + 1;
        assert_eq!(n, 27);
        assert_eq!(err.mark, Mark::new(2, 7 + 4 * (n - 1)));
    }

    #[test]
    fn expansion_never_passes_64_mib() {
        // 16× of 5 MiB would be 80 MiB: the absolute cap applies first.
        let text = format!(
            "s: &s \"{}\"\nb: [{}]\n",
            "a".repeat(5 << 20),
            vec!["*s"; 13].join(", ")
        );
        let err = load(&text).unwrap_err();
        assert_eq!(err.limit, Some(Limit::ConfigExpansion));
        assert_eq!(
            err.message,
            "aliases expand the document past 64.0 MiB (config_expansion)"
        );
        // 5 MiB + 12 copies is 65 MiB: the 12th alias is refused.
        assert_eq!(err.mark, Mark::new(2, 5 + 4 * 11));
    }

    #[test]
    fn nested_anchors_are_shared_not_copied() {
        // 64 anchors one inside the other around 100 KiB of text, never
        // aliased: nothing is copied, so this is no expansion at all.
        let mut text = String::new();
        for i in 0..63 {
            text.push_str(&format!("&a{i} ["));
        }
        text.push_str(&format!("&s \"{}\"", "a".repeat(100 * 1024)));
        text.push_str(&"]".repeat(63));
        let node = load(&text).unwrap();
        assert_eq!(height(&node), 63);
    }

    #[test]
    fn ordinary_aliases_are_well_within_budget() {
        // Defaults merged into 50 routes: the kind of use anchors are for.
        let mut text =
            String::from("x-defaults: &d {timeout: 2s, retries: 3, upstream: app}\nroutes:\n");
        for i in 0..50 {
            text.push_str(&format!("  - <<: *d\n    name: r{i}\n"));
        }
        let node = load(&text).unwrap();
        let Value::Seq(routes) = &map(&node)[1].1.value else {
            panic!()
        };
        assert_eq!(routes.len(), 50);
        assert_eq!(map(&routes[49]).len(), 4);
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
