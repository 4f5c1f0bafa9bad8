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

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before
            .rsplit('\n')
            .next()
            .map_or(0, |tail| tail.chars().count())
            + 1;
        (line, column)
    }
}

/// What kind of problem, which is also its diagnostic code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProblemKind {
    /// The file could not be read.
    Io,
    /// Not valid YAML.
    Syntax,
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
            ProblemKind::Syntax => "fleet::spec::yaml_syntax",
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
    /// A problem at one span.
    pub fn new(
        kind: ProblemKind,
        source: &SourceFile,
        span: SourceSpan,
        message: impl Into<String>,
        label: impl Into<String>,
    ) -> Problem {
        Problem {
            kind,
            message: message.into(),
            span,
            label: label.into(),
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
        self.secondary.push((span, label.into()));
        self
    }

    /// `file:line:column` of the problem.
    pub fn location(&self) -> String {
        let (line, column) = self.source.line_col(self.span.offset());
        format!("{}:{line}:{column}", self.source.name)
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
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
        Some(self)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
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
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.source.name.clone(),
            contents.data(),
            *contents.span(),
            contents.line(),
            contents.column(),
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
            count => format!("{files}: {count} problems in the fleet file"),
        };
        Invalid { summary, problems }
    }
}

/// Suggests the closest of `candidates` to a misspelt `word`, if one is close enough.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(word, candidate), candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}
