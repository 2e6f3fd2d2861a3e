//! `kaname schema`: the JSON Schema (draft 2020-12) of the config file, for
//! editors (yaml-language-server) and CI linters.
//!
//! The parser (`parse/`) reads a tree of its own, not serde types, so the
//! schema is derived from types that mirror the file as written: one struct
//! per section, its fields the section's keys, its doc comments the
//! descriptions. They are never built; they exist for their schema only.
//! The tests hold every object's keys to the parser's key list for that
//! section, so a key the parser takes and the schema lacks fails them.
//!
//! The schema accepts what the parser accepts where it can say so (types,
//! units, words, required keys, one-of choices) and leaves the rest to
//! `kaname check` (cross-references, regexes, address syntax).
#![allow(dead_code)]

mod authorize;
mod document;
mod filters;
mod listener;
mod queue;
mod store;
mod upstream;
mod values;

use schemars::generate::SchemaSettings;
use serde_json::Value;

/// The schema, pretty JSON ending with a newline.
pub fn schema_json() -> String {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator
        .into_root_schema_for::<document::Document>()
        .to_value();
    tidy(&mut schema);
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes");
    text.push('\n');
    text
}

/// Optional keys are `Option` fields, which schemars lets be `null`; a key
/// with no value is an error for the parser, so `null` is taken out again.
/// Descriptions get their doc comment's lines joined (paragraphs kept), as
/// editors show them as they are.
fn tidy(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(text)) = map.get_mut("description") {
                *text = unwrap_lines(text);
            }
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(any)) = map.get_mut("anyOf") {
                any.retain(|s| s.get("type").and_then(Value::as_str) != Some("null"));
                if any.len() == 1 {
                    let Some(Value::Object(only)) = any.pop() else {
                        unreachable!("a schema is an object")
                    };
                    map.remove("anyOf");
                    for (k, v) in only {
                        map.entry(k).or_insert(v);
                    }
                }
            }
            map.values_mut().for_each(tidy);
        }
        Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

fn unwrap_lines(text: &str) -> String {
    let paragraphs: Vec<String> = text
        .split("\n\n")
        .map(|p| p.lines().map(str::trim).collect::<Vec<_>>().join(" "))
        .collect();
    paragraphs.join("\n\n")
}

#[cfg(test)]
mod tests;
