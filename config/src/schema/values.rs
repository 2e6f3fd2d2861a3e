//! The values of the file as the parser reads them (`read.rs`, `units.rs`),
//! each a schema of its own in `$defs`, described by its doc comment.
//!
//! `${VAR}` is substituted in every value before it is read (`env.rs`), so
//! every value here also takes a string with `${` in it, whatever its type.

use std::marker::PhantomData;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Value};

/// A string with a `${VAR}` reference in it.
pub const ENV: &str = r"\$\{";

/// `pattern`, or a string with `${VAR}` in it.
pub fn or_env(pattern: &str) -> String {
    format!("{pattern}|{ENV}")
}

/// One of fixed words (`read::choice`), or `${VAR}`.
pub fn choice(words: &[&str]) -> Value {
    json!({"type": "string", "anyOf": [{"enum": words}, {"pattern": ENV}]})
}

/// `word` in any case, as a regex: `[hH][sS]256`.
pub fn any_case(word: &str) -> String {
    word.chars()
        .map(|c| match (c.to_ascii_lowercase(), c.to_ascii_uppercase()) {
            (l, u) if l != u => format!("[{l}{u}]"),
            _ => regex::escape(&c.to_string()),
        })
        .collect()
}

/// `schema` with the doc comment's lines as its description (blank lines
/// separate paragraphs, as rustdoc does).
pub fn described(schema: Value, doc: &[&str]) -> Schema {
    let mut text = String::new();
    for line in doc.iter().map(|l| l.trim()) {
        match (line.is_empty(), text.is_empty() || text.ends_with('\n')) {
            (true, _) => text.push_str("\n\n"),
            (false, true) => text.push_str(line),
            (false, false) => {
                text.push(' ');
                text.push_str(line);
            }
        }
    }
    let mut schema = Schema::try_from(schema).expect("a schema is an object");
    schema.insert("description".into(), text.trim().into());
    schema
}

/// A unit type whose schema is the given JSON, described by its doc comment.
macro_rules! scalar {
    ($(#[doc = $doc:literal])+ $name:ident = $schema:expr;) => {
        $(#[doc = $doc])+
        pub struct $name;

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                $crate::schema::values::described($schema, &[$($doc),+])
            }
        }
    };
}
pub(crate) use scalar;

const TCHARS: &str = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$";

scalar! {
    /// Text. A number or `true`/`false` written here is read as its text.
    Text = json!({"type": ["string", "number", "boolean"]});
}

scalar! {
    /// Text that is not empty.
    NonEmpty = json!({"type": ["string", "number", "boolean"], "minLength": 1});
}

scalar! {
    /// `true` or `false`.
    Bool = json!({"type": ["boolean", "string"], "pattern": ENV});
}

scalar! {
    /// A whole number, 0 or more (quoted or not).
    Uint = json!({
        "type": ["integer", "string"],
        "minimum": 0,
        "pattern": or_env(r"^\s*[0-9]+\s*$"),
    });
}

scalar! {
    /// A whole number, 1 or more (quoted or not).
    Count = json!({
        "type": ["integer", "string"],
        "minimum": 1,
        "pattern": or_env(r"^\s*0*[1-9][0-9]*\s*$"),
    });
}

scalar! {
    /// A number, such as `0.5` (quoted or not).
    Number = json!({
        "type": ["number", "string"],
        "pattern": or_env(r"^\s*[-+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"),
    });
}

scalar! {
    /// A duration: a number and a unit, `ms`, `s`, `m` or `h` (`250ms`,
    /// `2s`, `1.5s`, `5m`, `1h`).
    Duration = json!({
        "type": "string",
        "pattern": or_env(r"^\s*[0-9]+(\.[0-9]+)?\s*(ms|s|m|h)\s*$"),
    });
}

scalar! {
    /// A size in bytes: a whole number (`65536`), or one with a unit, `B`,
    /// `KiB`, `MiB`, `GiB`, `KB`, `MB`, `GB` (`64KiB`, `1MiB`).
    Size = json!({
        "type": ["integer", "string"],
        "minimum": 0,
        "pattern": or_env(r"^\s*[0-9]+\s*(B|KiB|MiB|GiB|KB|kB|MB|GB)?\s*$"),
    });
}

scalar! {
    /// A rate: a count per second, minute or hour (`100/s`, `10/m`, `5/h`).
    Rate = json!({
        "type": "string",
        "pattern": or_env(r"^\s*0*[1-9][0-9]*\s*/\s*[smh]\s*$"),
    });
}

scalar! {
    /// A header name (letters, digits and ``!#$%&'*+-.^_`|~``); case does
    /// not matter.
    HeaderName = json!({"type": "string", "pattern": or_env(TCHARS)});
}

scalar! {
    /// An HTTP method (`GET`, `POST`, ...); case does not matter.
    Method = json!({"type": "string", "pattern": or_env(TCHARS)});
}

scalar! {
    /// A path, starting with `/`.
    Path = json!({"type": "string", "pattern": or_env("^/")});
}

scalar! {
    /// An `http://` or `https://` URL.
    Url = json!({"type": "string", "pattern": or_env("^https?://")});
}

scalar! {
    /// An address to listen on, `ip:port`: `0.0.0.0:8443`, `[::1]:80`,
    /// `localhost:8080` (127.0.0.1). Port 0 lets the kernel pick one.
    ListenAddress = json!({"type": "string", "minLength": 1});
}

scalar! {
    /// A failure, as `retry_on` and `failure_on` name it: `connect_failure`,
    /// `reset`, `timeout`, `5xx`, an HTTP status (`503`) or a gRPC status
    /// name in lower case (`unavailable`, `resource_exhausted`, ...).
    Condition = {
        let named: Vec<&str> = crate::parse::condition::NAMED
            .iter()
            .chain(crate::GRPC_CODE_NAMES.iter())
            .copied()
            .collect();
        json!({
            "type": ["string", "integer"],
            "anyOf": [
                {"enum": named},
                {"type": "integer", "minimum": 100, "maximum": 599},
                {"type": "string", "pattern": "^[1-5][0-9][0-9]$"},
                {"type": "string", "pattern": ENV},
            ],
        })
    };
}

/// A list that is not empty.
pub struct List1<T>(PhantomData<T>);

impl<T: JsonSchema> JsonSchema for List1<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("List1_{}", T::schema_name()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let items = generator.subschema_for::<T>();
        json_schema!({"type": "array", "items": items, "minItems": 1})
    }
}

/// One value, or a list of them.
pub struct OneOrMore<T>(PhantomData<T>);

impl<T: JsonSchema> JsonSchema for OneOrMore<T> {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("OneOrMore_{}", T::schema_name()).into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let one = generator.subschema_for::<T>();
        json_schema!({"anyOf": [one, {"type": "array", "items": one}]})
    }
}
