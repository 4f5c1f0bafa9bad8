//! A YAML tree that keeps the byte span of every node, so diagnostics can point at the exact
//! key or value a problem comes from.
//!
//! In: the text of a fleet file. Out: a [`Node`] tree, or a syntax problem with its position.
//! Built on `yaml-rust2`'s event parser (a maintained YAML 1.2 parser that reports byte
//! offsets); the typed reading lives in `spec::load`.

use miette::SourceSpan;
use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::diagnostic::{ProblemKind, BYTE_ORDER_MARK};
use super::limits::{Limits, MAX_DEPTH};

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

/// Why the text could not be read as a tree, at a byte offset.
#[derive(Debug)]
pub(crate) struct SyntaxError {
    /// `Syntax` for YAML the parser refuses, `Limit` for nesting or aliases beyond the limits.
    pub(crate) kind: ProblemKind,
    /// The short summary.
    pub(crate) message: String,
    /// What to say at the offset.
    pub(crate) label: String,
    /// How to fix it.
    pub(crate) help: String,
    /// Byte offset in the whole text.
    pub(crate) offset: usize,
}

impl SyntaxError {
    fn yaml(label: impl Into<String>, offset: usize) -> SyntaxError {
        SyntaxError {
            kind: ProblemKind::Syntax,
            message: "Invalid YAML".to_string(),
            label: label.into(),
            help: "fix the YAML syntax here; the rest of the file is checked once it parses"
                .to_string(),
            offset,
        }
    }
}

/// Parses one YAML document, which must be the only one. An empty file gives an empty mapping.
/// A leading byte-order mark is skipped; offsets still count from the file's first byte.
///
/// The parser is driven event by event, not through its recursive loader, so that nesting
/// deeper than [`MAX_DEPTH`] or aliases copying more than `limits.alias_nodes` nodes stop it
/// before the tree (or the stack) grows.
pub(crate) fn parse(text: &str, limits: &Limits) -> Result<Node, SyntaxError> {
    let base = if text.starts_with(BYTE_ORDER_MARK) {
        BYTE_ORDER_MARK.len_utf8()
    } else {
        0
    };
    let body = &text[base..];
    let mut builder = Builder {
        text: body,
        positions: Positions::new(body),
        stack: Vec::new(),
        anchors: Vec::new(),
        alias_nodes: 0,
        alias_limit: limits.alias_nodes,
        root: None,
    };
    let mut parser = Parser::new_from_str(body);
    let mut documents = 0;
    loop {
        let (event, mark) = parser.next_token().map_err(|error| {
            SyntaxError::yaml(error.info(), base + builder.positions.byte(error.marker()))
        })?;
        match event {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(SyntaxError {
                        kind: ProblemKind::Syntax,
                        message: "A second YAML document".to_string(),
                        label: "a fleet file holds one document; this starts another".to_string(),
                        help: "remove the `---` line, or move what follows into a fleet file of its own".to_string(),
                        offset: base + builder.positions.byte(&mark),
                    });
                }
            }
            event => builder.on_event(event, &mark).map_err(|mut error| {
                error.offset += base;
                error
            })?,
        }
    }
    let root = builder.root.unwrap_or(Node::Map {
        entries: Vec::new(),
        span: SourceSpan::from((0, 0)),
    });
    Ok(if base == 0 { root } else { root.shifted(base) })
}

impl Node {
    /// The same tree with every span moved `by` bytes.
    fn shifted(self, by: usize) -> Node {
        let shift = |span: SourceSpan| SourceSpan::from((span.offset() + by, span.len()));
        match self {
            Node::Scalar {
                value,
                quoted,
                span,
            } => Node::Scalar {
                value,
                quoted,
                span: shift(span),
            },
            Node::Seq { items, span } => Node::Seq {
                items: items.into_iter().map(|item| item.shifted(by)).collect(),
                span: shift(span),
            },
            Node::Map { entries, span } => Node::Map {
                entries: entries
                    .into_iter()
                    .map(|(key, value)| (key.shifted(by), value.shifted(by)))
                    .collect(),
                span: shift(span),
            },
        }
    }

    /// Nodes in the tree, and its height (a scalar is 1).
    ///
    /// A scalar counts as one node plus one per KiB of its text, so an alias of a long string
    /// costs what copying it costs: a megabyte scalar aliased ten thousand times is refused
    /// like ten million nodes would be.
    fn measure(&self) -> (usize, usize) {
        match self {
            Node::Scalar { value, .. } => (1 + value.len() / 1024, 1),
            Node::Seq { items, .. } => items.iter().fold((1, 1), |(size, height), item| {
                let (s, h) = item.measure();
                (size + s, height.max(h + 1))
            }),
            Node::Map { entries, .. } => {
                entries.iter().fold((1, 1), |(size, height), (key, value)| {
                    let (ks, kh) = key.measure();
                    let (vs, vh) = value.measure();
                    (size + ks + vs, height.max(kh.max(vh) + 1))
                })
            }
        }
    }
}

/// Turns the parser's positions into byte offsets.
///
/// yaml-rust2's `Marker::index` counts characters, except inside block scalars, where it adds
/// the bytes of each line; used as a byte offset it cuts characters in half and drifts with
/// every non-ASCII character before it. Its line (1-based, breaking at `\n`, `\r\n` and `\r`,
/// as here) and column (0-based, in characters, reset at each line) are right wherever an
/// event or error is reported, so offsets are rebuilt from those.
struct Positions<'a> {
    text: &'a str,
    ascii: bool,
    line_starts: Vec<usize>,
    /// The last position found (line, column, byte), from which the next, usually a little
    /// further along the same line, is found without rescanning the line.
    last: std::cell::Cell<(usize, usize, usize)>,
}

impl<'a> Positions<'a> {
    fn new(text: &'a str) -> Positions<'a> {
        let bytes = text.as_bytes();
        let mut line_starts = vec![0];
        let mut at = 0;
        while at < bytes.len() {
            match bytes[at] {
                b'\r' if bytes.get(at + 1) == Some(&b'\n') => {
                    at += 2;
                    line_starts.push(at);
                }
                b'\r' | b'\n' => {
                    at += 1;
                    line_starts.push(at);
                }
                _ => at += 1,
            }
        }
        Positions {
            text,
            ascii: text.is_ascii(),
            line_starts,
            last: std::cell::Cell::new((0, 0, 0)),
        }
    }

    /// The byte offset of a marker, always on a character boundary inside the text.
    fn byte(&self, mark: &Marker) -> usize {
        let line = mark.line().max(1) - 1;
        let Some(&start) = self.line_starts.get(line) else {
            return self.text.len();
        };
        let end = self
            .line_starts
            .get(line + 1)
            .copied()
            .unwrap_or(self.text.len());
        let column = mark.col();
        if self.ascii {
            return (start + column).min(end);
        }
        let (last_line, last_column, last_byte) = self.last.get();
        let (mut chars, mut byte) = if last_line == line && last_column <= column {
            (last_column, last_byte)
        } else {
            (0, start)
        };
        for character in self.text[byte..end].chars() {
            if chars == column {
                break;
            }
            chars += 1;
            byte += character.len_utf8();
        }
        self.last.set((line, chars, byte));
        byte
    }
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

/// An anchored node, with its size and height measured once.
struct Anchor {
    id: usize,
    node: Node,
    size: usize,
    height: usize,
}

struct Builder<'a> {
    text: &'a str,
    positions: Positions<'a>,
    stack: Vec<Frame>,
    anchors: Vec<Anchor>,
    /// Nodes copied by aliases so far.
    alias_nodes: usize,
    alias_limit: usize,
    root: Option<Node>,
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
            let (size, height) = node.measure();
            self.anchors.push(Anchor {
                id: anchor,
                node: node.clone(),
                size,
                height,
            });
        }
    }

    fn too_deep(&self, at: usize) -> SyntaxError {
        SyntaxError {
            kind: ProblemKind::Limit,
            message: format!("YAML nested more than {MAX_DEPTH} levels deep"),
            label: "this is nested too deeply".to_string(),
            help: "fleet files need a handful of levels; flatten this value".to_string(),
            offset: at,
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

    fn on_event(&mut self, event: Event, mark: &Marker) -> Result<(), SyntaxError> {
        let at = self.positions.byte(mark);
        match event {
            Event::Scalar(value, style, anchor, _tag) => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(self.too_deep(at));
                }
                let end = self.scalar_end(at, &value, style);
                let node = Node::Scalar {
                    quoted: style != TScalarStyle::Plain,
                    value,
                    span: SourceSpan::from((at, end.saturating_sub(at))),
                };
                self.remember(anchor, &node);
                self.push_node(node);
            }
            Event::SequenceStart(anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(self.too_deep(at));
                }
                self.stack.push(Frame::Seq {
                    items: Vec::new(),
                    start: at,
                    anchor,
                });
            }
            Event::MappingStart(anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    return Err(self.too_deep(at));
                }
                self.stack.push(Frame::Map {
                    entries: Vec::new(),
                    pending_key: None,
                    start: at,
                    anchor,
                });
            }
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
                    None => return Ok(()),
                };
                self.push_node(node);
            }
            Event::Alias(anchor) => {
                let Some(found) = self.anchors.iter().rev().find(|a| a.id == anchor) else {
                    return Err(SyntaxError::yaml("alias to an unknown anchor", at));
                };
                if self.stack.len() + found.height > MAX_DEPTH {
                    return Err(self.too_deep(at));
                }
                // Counted before the copy is made: a chain of aliases doubles at each link, so
                // the copies are what grows without bound, not the text.
                let total = self.alias_nodes.saturating_add(found.size);
                if total > self.alias_limit {
                    return Err(SyntaxError {
                        kind: ProblemKind::Limit,
                        message: format!(
                            "Aliases copy more than {} YAML nodes",
                            self.alias_limit
                        ),
                        label: format!(
                            "this alias copies {} nodes, {} in all so far",
                            found.size, total
                        ),
                        help: "write the values out, or anchor smaller pieces; a larger expansion is allowed with `--max-alias-nodes N`".to_string(),
                        offset: at,
                    });
                }
                self.alias_nodes = total;
                let node = found.node.clone();
                self.push_node(node);
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
        Ok(())
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
        let Node::Map { entries, .. } = parse(text, &Limits::default()).unwrap() else {
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
        let error = parse("a: [1, 2\nb: c\n", &Limits::default()).unwrap_err();
        assert!(error.offset > 0, "{error:?}");
        assert!(!error.label.is_empty());
    }

    fn refused(text: &str, limits: &Limits) -> SyntaxError {
        parse(text, limits).expect_err("parsed")
    }

    #[test]
    fn spans_are_bytes_after_non_ascii_comments_block_scalars_and_crlf() {
        // Each of these used to shift (or cut into a character) every later span: the parser
        // counts characters, and bytes inside block scalars.
        for text in [
            "# naïve café 🦀\nfleet: distribution\nzone: \"us-east1-c\"\nlist: [a, 'b c']\n",
            "d: |\n  Ünïcödé 東京\n  🦀🦀\nfleet: distribution\nzone: \"us-east1-c\"\nlist: [a, 'b c']\n",
            "fleet: distribution\r\nzone: \"us-east1-c\"\r\nlist: [a, 'b c']\r\n",
            "é: {x: 'é'}\nfleet: distribution\nzone: \"us-east1-c\"\nlist: [a, 'b c']\n",
        ] {
            let Node::Map { entries, .. } = parse(text, &Limits::default()).unwrap() else {
                panic!("not a map")
            };
            let entries = &entries[entries.len() - 3..];
            assert_eq!(slice(text, &entries[0].0), "fleet", "{text:?}");
            assert_eq!(slice(text, &entries[0].1), "distribution", "{text:?}");
            assert_eq!(slice(text, &entries[1].1), "\"us-east1-c\"", "{text:?}");
            let Node::Seq { items, .. } = &entries[2].1 else {
                panic!("not a list")
            };
            assert_eq!(slice(text, &items[1]), "'b c'", "{text:?}");
        }
    }

    #[test]
    fn a_leading_byte_order_mark_is_skipped_and_spans_count_from_the_first_byte() {
        let text = "\u{feff}fleet: f\n";
        let Node::Map { entries, .. } = parse(text, &Limits::default()).unwrap() else {
            panic!("not a map")
        };
        assert_eq!(slice(text, &entries[0].0), "fleet");
        assert_eq!(slice(text, &entries[0].1), "f");
        let error = refused("\u{feff}a: [1\n", &Limits::default());
        assert!(error.offset >= 3 && text.is_char_boundary(error.offset.min(text.len())));
    }

    #[test]
    fn an_alias_chain_stops_at_the_limit_before_it_is_copied() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..12 {
            let previous = format!("*a{}", level - 1);
            text.push_str(&format!(
                "a{level}: &a{level} [{}]\n",
                vec![previous; 10].join(", ")
            ));
        }
        let error = refused(&text, &Limits::default());
        assert_eq!(error.kind, ProblemKind::Limit);
        assert!(error.message.contains("100000"), "{error:?}");
        assert_eq!(&text[error.offset..error.offset + 4], "*a3,", "{error:?}");
        // A small limit stops even a small copy.
        let limits = Limits {
            alias_nodes: 3,
            ..Limits::default()
        };
        let error = refused("a: &a [x, y]\nb: *a\nc: *a\n", &limits);
        assert_eq!(error.kind, ProblemKind::Limit);
        assert_eq!(
            error.offset, 22,
            "the second alias, which copies nodes 4 to 6"
        );
    }

    #[test]
    fn nesting_past_the_depth_limit_is_an_error_at_the_level_too_deep() {
        for text in [
            format!("a: {}x{}\n", "[".repeat(200), "]".repeat(200)),
            (0..100)
                .map(|level| format!("{}k:\n", " ".repeat(level)))
                .collect(),
            // Aliases add depth without adding text.
            (0..100)
                .map(|level| {
                    if level == 0 {
                        "a0: &a0 [x]\n".to_string()
                    } else {
                        format!("a{level}: &a{level} [*a{}]\n", level - 1)
                    }
                })
                .collect(),
        ] {
            let error = refused(&text, &Limits::default());
            assert_eq!(error.kind, ProblemKind::Limit, "{error:?}");
            assert!(error.message.contains("nested"), "{error:?}");
        }
    }

    #[test]
    fn a_second_document_is_an_error_not_ignored() {
        let text = "fleet: a\n---\nfleet: b\n";
        let error = refused(text, &Limits::default());
        assert_eq!(error.message, "A second YAML document");
        assert_eq!(&text[error.offset..error.offset + 3], "---");
    }

    #[test]
    fn aliases_resolve() {
        let text = "base: &d {type: pd-ssd}\nother: *d\n";
        let Node::Map { entries, .. } = parse(text, &Limits::default()).unwrap() else {
            panic!("not a map")
        };
        assert!(matches!(entries[1].1, Node::Map { .. }));
    }
}
