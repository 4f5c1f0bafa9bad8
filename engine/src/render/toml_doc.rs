//! Lays a config tree out as config.toml blocks, remembering where each key came from.
//!
//! In: tables of [`Value`]s with the fleet-file span of each key. Out: a [`Doc`] — blocks with
//! a header (`[[runners]]`, `[runners.docker]`) and formatted `key = value` entries, in
//! gitlab-runner's own indentation — plus the origin of every key, for diagnostics.

use miette::SourceSpan;
use serde::Serialize;

/// A config value after interpolation.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    Str(String),
    /// A whole number.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A list.
    Array(Vec<Value>),
    /// A table: key, where it was written, value.
    Table(Table),
}

/// A table: keys in order, each with the span it came from (`None`: made by fleet).
pub type Table = Vec<(String, Option<SourceSpan>, Value)>;

/// One `key = value` line.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) value: String,
}

/// A header and its entries.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Block {
    pub(crate) header: String,
    pub(crate) header_indent: String,
    pub(crate) indent: String,
    pub(crate) entries: Vec<Entry>,
}

/// Where one key came from. `path` names the exact table, with the index of each item of an
/// array of tables (`runners[1].docker`), so the second runner's key points at its own line.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub(crate) path: String,
    pub(crate) key: String,
    pub(crate) span: Option<SourceSpan>,
}

/// A laid-out document.
#[derive(Debug, Clone, Default)]
pub(crate) struct Doc {
    pub(crate) blocks: Vec<Block>,
    pub(crate) origins: Vec<Origin>,
}

impl Doc {
    /// Lays out `table` at section `path` (`""` for the root; `runners.docker`), whose exact
    /// place is `at` (`runners[1].docker`).
    pub(crate) fn add_table(
        &mut self,
        path: &str,
        at: &str,
        header: Option<String>,
        depth: usize,
        table: &Table,
    ) {
        let mut block = Block {
            header: header.unwrap_or_default(),
            header_indent: "  ".repeat(depth.saturating_sub(1)),
            indent: "  ".repeat(depth),
            entries: Vec::new(),
        };
        let mut tables: Vec<(&String, &Table)> = Vec::new();
        let mut arrays: Vec<(&String, Vec<&Table>)> = Vec::new();
        for (key, span, value) in table {
            self.origins.push(Origin {
                path: at.to_string(),
                key: key.clone(),
                span: *span,
            });
            match value {
                Value::Table(inner) => tables.push((key, inner)),
                Value::Array(items)
                    if !items.is_empty() && items.iter().all(|i| matches!(i, Value::Table(_))) =>
                {
                    let inner = items
                        .iter()
                        .filter_map(|item| match item {
                            Value::Table(t) => Some(t),
                            _ => None,
                        })
                        .collect();
                    arrays.push((key, inner));
                }
                other => block.entries.push(Entry {
                    key: format_key(key),
                    value: format_value(other),
                }),
            }
        }
        self.blocks.push(block);
        for (key, inner) in tables {
            // Quoted where it is not a bare key, so a key cannot close its header and start
            // lines of its own.
            let child = join(path, &format_key(key));
            let child_at = join(at, key);
            self.add_table(
                &child,
                &child_at,
                Some(format!("[{child}]")),
                depth + 1,
                inner,
            );
        }
        for (key, items) in arrays {
            // Quoted where it is not a bare key, so a key cannot close its header and start
            // lines of its own.
            let child = join(path, &format_key(key));
            let child_at = join(at, key);
            for (index, inner) in items.into_iter().enumerate() {
                self.add_table(
                    &child,
                    &format!("{child_at}[{index}]"),
                    Some(format!("[[{child}]]")),
                    depth + 1,
                    inner,
                );
            }
        }
    }

    /// The span of `key` in the table at `at` (`runners[1].docker`), if the fleet file wrote
    /// it.
    pub(crate) fn origin(&self, at: &str, key: &str) -> Option<SourceSpan> {
        self.origins
            .iter()
            .find(|origin| origin.path == at && origin.key == key)
            .and_then(|origin| origin.span)
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn format_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_string()
    } else {
        quote(key)
    }
}

fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A value as TOML.
pub(crate) fn format_value(value: &Value) -> String {
    match value {
        Value::Str(text) => quote(text),
        Value::Int(number) => number.to_string(),
        Value::Float(number) => {
            let text = number.to_string();
            if text.contains('.')
                || text.contains('e')
                || text.contains("inf")
                || text.contains("NaN")
            {
                text
            } else {
                format!("{text}.0")
            }
        }
        Value::Bool(flag) => flag.to_string(),
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(format_value).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Table(table) => {
            let inner: Vec<String> = table
                .iter()
                .map(|(key, _, value)| format!("{} = {}", format_key(key), format_value(value)))
                .collect();
            format!("{{ {} }}", inner.join(", "))
        }
    }
}
