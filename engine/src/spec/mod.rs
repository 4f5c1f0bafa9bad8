//! Fleet files: loading, validation and expansion.
//!
//! In: the text of a fleet file. Out: the [`Desired`](crate::desired::Desired) set, or an
//! [`Invalid`] diagnostic carrying every problem found, each with file, line, column,
//! the offending span and help.

pub mod diagnostic;
pub mod expand;
pub mod load;
pub mod model;
pub(crate) mod yaml;

pub use diagnostic::{Invalid, Problem, ProblemKind, SourceFile};

use crate::desired::Desired;

/// Loads, validates and expands a fleet file's text.
///
/// # Errors
/// [`Invalid`] with every problem found.
pub fn compile(name: &str, text: &str) -> Result<Desired, Invalid> {
    let (file, mut problems) = load::load(name, text);
    let Some(file) = file else {
        return Err(Invalid::new(problems));
    };
    match expand::expand(&file) {
        Ok(desired) if problems.is_empty() => Ok(desired),
        Ok(_) => Err(Invalid::new(problems)),
        Err(more) => {
            problems.extend(more);
            Err(Invalid::new(problems))
        }
    }
}

/// Reads and compiles a fleet file from disk.
///
/// # Errors
/// [`Invalid`] with the problems, or one [`ProblemKind::Io`] problem if the file cannot be read.
pub fn compile_file(path: &std::path::Path) -> Result<Desired, Invalid> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => compile(&name, &text),
        Err(error) => {
            let source = SourceFile::new(name.clone(), "");
            let problem = Problem::new(
                ProblemKind::Io,
                &source,
                (0, 0).into(),
                format!("Cannot read fleet file {name}: {error}"),
                "",
            )
            .with_help("check the path; fleet files usually live in `fleets/`");
            Err(Invalid::new(vec![problem]))
        }
    }
}
