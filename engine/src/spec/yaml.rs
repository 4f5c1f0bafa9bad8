//! A YAML tree that keeps the byte span of every node, so diagnostics can point at the exact
//! key or value a problem comes from.
//!
//! In: the text of a fleet file. Out: a [`Node`] tree, or a syntax problem with its position.
//! Built on `yaml-rust2`'s event parser (a maintained YAML 1.2 parser that reports byte
//! offsets); the typed reading lives in `spec::load`.

use miette::SourceSpan;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One node of the tree.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// A scalar; `quoted` is true for quoted or block styles (never a number or bool).
    Scalar {
        value: String,
        quoted: bool,
        span: SourceSpan,
    },
    /// A sequence.
    Seq { items: Vec<Node>, span: SourceSpan },
    /// A mapping, keys in file order; duplicates are reported by the loader.
    Map {
        entries: Vec<(Node, Node)>,
        span: SourceSpan,
    },
}

impl Node {
    pub(crate) fn span(&self) -> SourceSpan {
        match self {
            Node::Scalar { span, .. } | Node::Seq { span, .. } | Node::Map { span, .. } => *span,
        }
    }

    /// A short name of the node's type for messages.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Node::Scalar { value, quoted, .. } => {
                if !quoted && is_null(value) {
                    "nothing (null)"
                } else {
                    "a scalar"
                }
            }
            Node::Seq { .. } => "a list",
            Node::Map { .. } => "a mapping",
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Node::Scalar { value, quoted: false, .. } if is_null(value))
    }
}

fn is_null(value: &str) -> bool {
    matches!(value, "" | "~" | "null" | "Null" | "NULL")
}

/// A YAML syntax error with its byte offset.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    pub(crate) message: String,
    pub(crate) offset: usize,
}

/// Parses one YAML document. An empty file gives an empty mapping.
pub(crate) fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut builder = Builder {
        text,
        stack: Vec::new(),
        anchors: Vec::new(),
        root: None,
        error: None,
    };
    let mut parser = Parser::new_from_str(text);
    parser
        .load(&mut builder, false)
        .map_err(|error| SyntaxError {
            message: error.info().to_string(),
            offset: error.marker().index().min(text.len()),
        })?;
    if let Some(error) = builder.error {
        return Err(error);
    }
    Ok(builder.root.unwrap_or(Node::Map {
        entries: Vec::new(),
        span: SourceSpan::from((0, 0)),
    }))
}

enum Frame {
    Seq {
        items: Vec<Node>,
        start: usize,
        anchor: usize,
    },
    Map {
        entries: Vec<(Node, Node)>,
        pending_key: Option<Node>,
        start: usize,
        anchor: usize,
    },
}

struct Builder<'a> {
    text: &'a str,
    stack: Vec<Frame>,
    anchors: Vec<(usize, Node)>,
    root: Option<Node>,
    error: Option<SyntaxError>,
}

impl Builder<'_> {
    fn push_node(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                ..
            }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => entries.push((key, node)),
            },
        }
    }

    fn remember(&mut self, anchor: usize, node: &Node) {
        if anchor > 0 {
            self.anchors.push((anchor, node.clone()));
        }
    }

    /// The end of a scalar starting at `start`: the closing quote for quoted styles, the
    /// value's own length for plain ones.
    fn scalar_end(&self, start: usize, value: &str, style: TScalarStyle) -> usize {
        let rest = &self.text[start.min(self.text.len())..];
        match style {
            TScalarStyle::DoubleQuoted | TScalarStyle::SingleQuoted => {
                let quote = if style == TScalarStyle::DoubleQuoted {
                    '"'
                } else {
                    '\''
                };
                let mut escaped = false;
                for (index, character) in rest.char_indices().skip(1) {
                    if escaped {
                        escaped = false;
                    } else if character == '\\' && quote == '"' {
                        escaped = true;
                    } else if character == quote {
                        return start + index + 1;
                    } else if character == '\n' {
                        return start + index;
                    }
                }
                start + rest.len()
            }
            TScalarStyle::Plain if rest.starts_with(value) => start + value.len(),
            _ => start + rest.find('\n').unwrap_or(rest.len()),
        }
    }
}

impl MarkedEventReceiver for Builder<'_> {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let at = mark.index().min(self.text.len());
        match event {
            Event::Scalar(value, style, anchor, _tag) => {
                let end = self.scalar_end(at, &value, style);
                let node = Node::Scalar {
                    quoted: style != TScalarStyle::Plain,
                    value,
                    span: SourceSpan::from((at, end.saturating_sub(at))),
                };
                self.remember(anchor, &node);
                self.push_node(node);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq {
                items: Vec::new(),
                start: at,
                anchor,
            }),
            Event::MappingStart(anchor, _) => self.stack.push(Frame::Map {
                entries: Vec::new(),
                pending_key: None,
                start: at,
                anchor,
            }),
            Event::SequenceEnd | Event::MappingEnd => {
                let node = match self.stack.pop() {
                    Some(Frame::Seq {
                        items,
                        start,
                        anchor,
                    }) => {
                        let end = items
                            .last()
                            .map_or(start, |last| last.span().offset() + last.span().len());
                        let node = Node::Seq {
                            items,
                            span: SourceSpan::from((start, end.saturating_sub(start))),
                        };
                        self.remember(anchor, &node);
                        node
                    }
                    Some(Frame::Map {
                        entries,
                        start,
                        anchor,
                        ..
                    }) => {
                        let start = entries
                            .first()
                            .map_or(start, |(key, _)| key.span().offset());
                        let end = entries.last().map_or(start, |(_, value)| {
                            value.span().offset() + value.span().len()
                        });
                        let node = Node::Map {
                            entries,
                            span: SourceSpan::from((start, end.saturating_sub(start))),
                        };
                        self.remember(anchor, &node);
                        node
                    }
                    None => return,
                };
                self.push_node(node);
            }
            Event::Alias(anchor) => match self.anchors.iter().rev().find(|(id, _)| *id == anchor) {
                Some((_, node)) => {
                    let node = node.clone();
                    self.push_node(node);
                }
                None => {
                    self.error = Some(SyntaxError {
                        message: "alias to an unknown anchor".to_string(),
                        offset: at,
                    })
                }
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice<'a>(text: &'a str, node: &Node) -> &'a str {
        let span = node.span();
        &text[span.offset()..span.offset() + span.len()]
    }

    #[test]
    fn spans_cover_plain_and_quoted_scalars() {
        let text = "fleet: distribution\nzone: \"us-east1-c\"\nlist: [a, 'b c']\n";
        let Node::Map { entries, .. } = parse(text).unwrap() else {
            panic!("not a map")
        };
        assert_eq!(slice(text, &entries[0].1), "distribution");
        assert_eq!(slice(text, &entries[1].1), "\"us-east1-c\"");
        let Node::Seq { items, .. } = &entries[2].1 else {
            panic!("not a list")
        };
        assert_eq!(slice(text, &items[1]), "'b c'");
    }

    #[test]
    fn syntax_error_has_position() {
        let error = parse("a: [1, 2\nb: c\n").unwrap_err();
        assert!(error.offset > 0, "{error:?}");
        assert!(!error.message.is_empty());
    }

    #[test]
    fn aliases_resolve() {
        let text = "base: &d {type: pd-ssd}\nother: *d\n";
        let Node::Map { entries, .. } = parse(text).unwrap() else {
            panic!("not a map")
        };
        assert!(matches!(entries[1].1, Node::Map { .. }));
    }
}
