//! Problems found in fleet files, as miette diagnostics.
//!
//! In: a kind, a message, spans in one source file. Out: a [`Problem`] that renders with the
//! file name, line and column, the offending text underlined, and help saying how to fix it;
//! and [`Invalid`], which carries every problem of a run at once.

use std::fmt;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, SourceCode, SourceSpan};

/// The text of one fleet file, shared by every diagnostic that points into it.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as the user gave it.
    pub name: String,
    /// The whole text.
    pub text: Arc<str>,
}

impl SourceFile {
    /// Wraps a file's text.
    pub fn new(name: impl Into<String>, text: impl Into<Arc<str>>) -> SourceFile {
        SourceFile {
            name: name.into(),
            text: text.into(),
        }
    }

    /// 1-based line and column (in characters) of a byte offset. An offset inside a character
    /// counts as that character; a leading byte-order mark is invisible in editors, so it takes
    /// no column.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = floor_char_boundary(&self.text, offset);
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let tail = before.rsplit('\n').next().unwrap_or_default();
        let tail = if line == 1 {
            tail.strip_prefix(BYTE_ORDER_MARK).unwrap_or(tail)
        } else {
            tail
        };
        (line, tail.chars().count() + 1)
    }

    /// The span moved inside the text and onto character boundaries, so that whatever a
    /// check computed, slicing the text at it cannot panic.
    pub fn clamp(&self, span: SourceSpan) -> SourceSpan {
        let start = floor_char_boundary(&self.text, span.offset());
        let end = ceil_char_boundary(&self.text, span.offset().saturating_add(span.len()));
        SourceSpan::from((start, end.max(start) - start))
    }

    /// Whether every line the labels touch, and the lines around them that a snippet shows,
    /// is short enough to be drawn. miette's graphical handler pads with `{:width$}`, whose
    /// width must fit in 16 bits, so a label 65,536 columns into a line panics there; far
    /// shorter lines are unreadable anyway.
    fn drawable(&self, spans: &[SourceSpan]) -> bool {
        spans.iter().all(|span| {
            let start = floor_char_boundary(&self.text, span.offset());
            let end = ceil_char_boundary(&self.text, span.offset().saturating_add(span.len()));
            let mut from = self.text[..start].rfind('\n').map_or(0, |at| at + 1);
            for _ in 0..SNIPPET_CONTEXT_LINES {
                from = self.text[..from.saturating_sub(1)]
                    .rfind('\n')
                    .map_or(0, |at| at + 1);
            }
            let mut to = end;
            for _ in 0..=SNIPPET_CONTEXT_LINES {
                to = self.text[to..]
                    .find('\n')
                    .map_or(self.text.len(), |at| to + at + 1);
            }
            self.text[from..to]
                .split('\n')
                .all(|line| line.chars().count() <= MAX_DRAWN_LINE)
        })
    }
}

/// U+FEFF, which some editors put at the start of a UTF-8 file.
pub(crate) const BYTE_ORDER_MARK: char = '\u{feff}';

/// The longest line (in characters) drawn in a snippet; a problem on a longer line is reported
/// with its location in words instead.
const MAX_DRAWN_LINE: usize = 1_000;

/// Lines around a label that a snippet may show (miette's default is one).
const SNIPPET_CONTEXT_LINES: usize = 3;

/// The longest piece of fleet-file text quoted in a message.
const MAX_QUOTED: usize = 60;

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

fn ceil_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset += 1;
    }
    offset
}

/// A message or label cut to a readable length. Messages quote values through [`quoted`];
/// this is the backstop for any that does not.
fn bounded(text: String) -> String {
    const MAX_MESSAGE: usize = 400;
    match text.char_indices().nth(MAX_MESSAGE) {
        None => text,
        Some((cut, _)) => format!("{}…", &text[..cut]),
    }
}

/// Fleet-file text to quote in a message: whole if short, else its start and an ellipsis, so a
/// 70,000-character key does not become a 70,000-character message.
pub fn quoted(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(MAX_QUOTED) {
        None => std::borrow::Cow::Borrowed(text),
        Some((cut, _)) => std::borrow::Cow::Owned(format!(
            "{}… ({} characters)",
            &text[..cut],
            text.chars().count()
        )),
    }
}

/// What kind of problem, which is also its diagnostic code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProblemKind {
    /// The file could not be read.
    Io,
    /// Bytes that are not text: invalid UTF-8, a NUL byte, a byte-order mark past the start.
    Encoding,
    /// Not valid YAML.
    Syntax,
    /// A file, alias expansion, pool, matrix or fleet larger than fleet's limits.
    Limit,
    /// A key fleet does not know in this place.
    UnknownKey,
    /// A key given twice in one mapping.
    DuplicateKey,
    /// A required field is absent.
    MissingField,
    /// A value of the wrong type (a list where a string belongs, …).
    WrongType,
    /// A value outside what the field accepts.
    InvalidValue,
    /// A `{variable}` in a name pattern or value that nothing defines.
    UnknownVariable,
    /// Two resources end up with the same address or cloud name after expansion.
    DuplicateName,
    /// A reference to a resource that does not exist.
    DanglingReference,
    /// Resources that depend on each other in a loop.
    DependencyCycle,
    /// A cloud the file does not configure.
    UnknownCloud,
    /// A zone the catalog does not know, or of another cloud.
    UnknownZone,
    /// A machine type the cloud does not sell.
    UnknownMachineType,
    /// A machine type not offered in that zone's region.
    MachineTypeNotOffered,
    /// A runner that builds for an architecture its machines cannot run.
    ArchitectureMismatch,
}

impl ProblemKind {
    /// The diagnostic code.
    pub fn code(self) -> &'static str {
        match self {
            ProblemKind::Io => "fleet::spec::io",
            ProblemKind::Encoding => "fleet::spec::encoding",
            ProblemKind::Syntax => "fleet::spec::yaml_syntax",
            ProblemKind::Limit => "fleet::spec::limit",
            ProblemKind::UnknownKey => "fleet::spec::unknown_key",
            ProblemKind::DuplicateKey => "fleet::spec::duplicate_key",
            ProblemKind::MissingField => "fleet::spec::missing_field",
            ProblemKind::WrongType => "fleet::spec::wrong_type",
            ProblemKind::InvalidValue => "fleet::spec::invalid_value",
            ProblemKind::UnknownVariable => "fleet::spec::unknown_variable",
            ProblemKind::DuplicateName => "fleet::spec::duplicate_name",
            ProblemKind::DanglingReference => "fleet::spec::dangling_reference",
            ProblemKind::DependencyCycle => "fleet::spec::dependency_cycle",
            ProblemKind::UnknownCloud => "fleet::spec::unknown_cloud",
            ProblemKind::UnknownZone => "fleet::spec::unknown_zone",
            ProblemKind::UnknownMachineType => "fleet::catalog::unknown_machine_type",
            ProblemKind::MachineTypeNotOffered => "fleet::catalog::machine_type_not_offered",
            ProblemKind::ArchitectureMismatch => "fleet::catalog::architecture_mismatch",
        }
    }
}

/// One problem in a fleet file.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Its kind and code.
    pub kind: ProblemKind,
    /// The short summary ("Unknown key `machine_tyep`").
    pub message: String,
    /// Where, and what to say there.
    pub span: SourceSpan,
    /// The text under the span.
    pub label: String,
    /// Further places that matter (the first of two duplicates, …).
    pub secondary: Vec<(SourceSpan, String)>,
    /// How to fix it.
    pub help: Option<String>,
    /// The file it is in.
    pub source: SourceFile,
}

impl Problem {
    /// A problem at one span (moved inside the text if a check computed it past the end).
    pub fn new(
        kind: ProblemKind,
        source: &SourceFile,
        span: SourceSpan,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Problem {
        let label = bounded(label.into());
        Problem {
            kind,
            message: bounded(message.into()),
            span: source.clamp(span),
            label,
            secondary: Vec::new(),
            help: None,
            source: source.clone(),
        }
    }

    /// Adds help text.
    pub fn with_help(mut self, help: impl Into<String>) -> Problem {
        self.help = Some(help.into());
        self
    }

    /// Adds a second labelled place.
    pub fn with_secondary(mut self, span: SourceSpan, label: impl Into<String>) -> Problem {
        let span = self.source.clamp(span);
        self.secondary.push((span, label.into()));
        self
    }

    /// `file:line:column` of the problem.
    pub fn location(&self) -> String {
        let (line, column) = self.source.line_col(self.span.offset());
        format!("{}:{line}:{column}", self.source.name)
    }

    /// Whether a snippet of the file can be drawn under the message; when not, the message
    /// says where and what instead.
    fn has_snippet(&self) -> bool {
        let mut spans = vec![self.span];
        spans.extend(self.secondary.iter().map(|(span, _)| *span));
        self.source.drawable(&spans)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if !self.has_snippet() {
            write!(f, "\n  at {}: {}", self.location(), quoted(&self.label))?;
            for (span, label) in &self.secondary {
                let (line, column) = self.source.line_col(span.offset());
                write!(
                    f,
                    "\n  and {}:{line}:{column}: {}",
                    self.source.name,
                    quoted(label)
                )?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Problem {}

impl Diagnostic for Problem {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.kind.code()))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|help| Box::new(help) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        if self.has_snippet() {
            Some(self)
        } else {
            None
        }
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if !self.has_snippet() {
            return None;
        }
        let primary = LabeledSpan::new_primary_with_span(Some(self.label.clone()), self.span);
        let secondary = self
            .secondary
            .iter()
            .map(|(span, label)| LabeledSpan::new_with_span(Some(label.clone()), *span));
        Some(Box::new(std::iter::once(primary).chain(secondary)))
    }
}

impl SourceCode for Problem {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let contents =
            self.source
                .text
                .read_span(span, context_lines_before, context_lines_after)?;
        // miette counts columns in bytes; fleet counts characters, as editors do.
        let (line, column) = self.source.line_col(contents.span().offset());
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.source.name.clone(),
            contents.data(),
            *contents.span(),
            line - 1,
            column - 1,
            contents.line_count(),
        )))
    }
}

/// Every problem found in one run, reported together.
#[derive(Debug, Clone, thiserror::Error, Diagnostic)]
#[error("{summary}")]
#[diagnostic(
    code(fleet::spec::invalid),
    help("fix each problem below, then run `fleet validate` again")
)]
pub struct Invalid {
    summary: String,
    /// The problems, sorted by file and position.
    #[related]
    pub problems: Vec<Problem>,
}

impl Invalid {
    /// Collects problems; sorts them by file and position and drops exact repeats (a
    /// problem in a matrix entry is found once per expansion).
    pub fn new(mut problems: Vec<Problem>) -> Invalid {
        problems.sort_by(|a, b| {
            (a.source.name.as_str(), a.span.offset(), a.kind, &a.message).cmp(&(
                b.source.name.as_str(),
                b.span.offset(),
                b.kind,
                &b.message,
            ))
        });
        problems.dedup_by(|a, b| {
            a.source.name == b.source.name
                && a.span == b.span
                && a.kind == b.kind
                && a.message == b.message
        });
        let files: std::collections::BTreeSet<&str> =
            problems.iter().map(|p| p.source.name.as_str()).collect();
        let files = files.into_iter().collect::<Vec<_>>().join(", ");
        let summary = match problems.len() {
            1 => format!("{files}: 1 problem in the fleet file"),
            count if count > MAX_SHOWN => {
                format!(
                    "{files}: {count} problems in the fleet file; the first {MAX_SHOWN} are shown"
                )
            }
            count => format!("{files}: {count} problems in the fleet file"),
        };
        // Each shown problem costs a pass over the file to place and draw it: a file of
        // thousands of problems would take hours to report, and nobody reads past the first.
        problems.truncate(MAX_SHOWN);
        Invalid { summary, problems }
    }
}

/// The most problems one report shows, first in the file first.
pub const MAX_SHOWN: usize = 100;

/// Suggests the closest of `candidates` to a misspelt `word`, if one is close enough.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(word, candidate), candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}
