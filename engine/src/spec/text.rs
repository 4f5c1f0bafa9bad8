//! A fleet file's bytes, checked as text before anything parses them.
//!
//! In: a file's bytes (or text) and the [`Limits`]. Out: its text, or located problems: a file
//! over the size limit, bytes that are not UTF-8, NUL bytes, and byte-order marks anywhere
//! but the very start. None of these may reach the YAML parser, which reads a NUL as the end
//! of the input and would silently drop the rest of the file. A byte-order mark at the start
//! is accepted: editors on Windows write one, it carries no meaning in UTF-8, and
//! `spec::yaml` skips it while counting offsets from the file's first byte.

use miette::SourceSpan;

use super::diagnostic::{Problem, ProblemKind, SourceFile, BYTE_ORDER_MARK};
use super::limits::Limits;

/// Problems of one kind reported per file; a binary file would otherwise give thousands.
const MAX_REPORTED: usize = 10;

/// The file too large to read, as a problem without a snippet (its text is not kept).
pub(crate) fn too_large(name: &str, size: Option<usize>, limits: &Limits) -> Problem {
    let source = SourceFile::new(name, "");
    let size = match size {
        Some(size) => format!("{size} bytes, more"),
        None => "larger".to_string(),
    };
    Problem::new(
        ProblemKind::Limit,
        &source,
        SourceSpan::from((0, 0)),
        format!(
            "Fleet file {name} is {size} than the limit of {} bytes",
            limits.file_bytes
        ),
        "",
    )
    .with_help(format!(
        "split the fleet, or allow a larger file with `--max-file-size BYTES` (default {})",
        Limits::DEFAULT_FILE_BYTES
    ))
}

/// Decodes a file's bytes. Each sequence that is not UTF-8 becomes U+FFFD in the text the
/// problems point into, so they can still be shown in place, and is reported at its byte.
///
/// # Errors
/// The size problem, or one problem per invalid sequence (at most [`MAX_REPORTED`]).
pub(crate) fn decode(name: &str, bytes: &[u8], limits: &Limits) -> Result<String, Vec<Problem>> {
    if bytes.len() > limits.file_bytes {
        return Err(vec![too_large(name, Some(bytes.len()), limits)]);
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Ok(text.to_string());
    }
    let mut text = String::with_capacity(bytes.len());
    let mut invalid = Vec::new();
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            invalid.push((text.len(), chunk.invalid().to_vec()));
            text.push(char::REPLACEMENT_CHARACTER);
        }
    }
    let source = SourceFile::new(name, text);
    let total = invalid.len();
    let problems = invalid
        .into_iter()
        .take(MAX_REPORTED)
        .map(|(offset, bytes)| {
            let shown: Vec<String> = bytes.iter().map(|b| format!("0x{b:02X}")).collect();
            let problem = Problem::new(
                ProblemKind::Encoding,
                &source,
                SourceSpan::from((offset, char::REPLACEMENT_CHARACTER.len_utf8())),
                "Not UTF-8",
                format!("byte {} is not UTF-8 text", shown.join(" ")),
            );
            with_more(problem, total, "save the fleet file as UTF-8")
        })
        .collect();
    Err(problems)
}

/// Checks text for what the parser must never see.
pub(crate) fn check(source: &SourceFile, limits: &Limits) -> Vec<Problem> {
    let text = &source.text;
    if text.len() > limits.file_bytes {
        return vec![too_large(&source.name, Some(text.len()), limits)];
    }
    let mut problems = Vec::new();
    let nuls: Vec<usize> = text.match_indices('\0').map(|(at, _)| at).collect();
    for &at in nuls.iter().take(MAX_REPORTED) {
        let problem = Problem::new(
            ProblemKind::Encoding,
            source,
            SourceSpan::from((at, 1)),
            "A NUL byte in the fleet file",
            "NUL byte here",
        );
        problems.push(with_more(
            problem,
            nuls.len(),
            "remove it; a NUL byte is never part of a fleet file, and YAML parsers stop reading at one",
        ));
    }
    let marks: Vec<usize> = text
        .match_indices(BYTE_ORDER_MARK)
        .map(|(at, _)| at)
        .filter(|&at| at > 0)
        .collect();
    for &at in marks.iter().take(MAX_REPORTED) {
        let problem = Problem::new(
            ProblemKind::Encoding,
            source,
            SourceSpan::from((at, BYTE_ORDER_MARK.len_utf8())),
            "A byte-order mark inside the fleet file",
            "invisible U+FEFF here",
        );
        problems.push(with_more(
            problem,
            marks.len(),
            "remove it; only the very start of a file may carry a byte-order mark",
        ));
    }
    problems
}

fn with_more(problem: Problem, total: usize, help: &str) -> Problem {
    if total > MAX_REPORTED {
        problem.with_help(format!(
            "{help} ({total} in the file; the first {MAX_REPORTED} are shown)"
        ))
    } else {
        problem.with_help(help)
    }
}
