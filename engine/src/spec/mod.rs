//! Fleet files: loading, validation and expansion; `compile` runs them and then rendering.
//!
//! In: the text of a fleet file. Out: the [`Desired`](crate::desired::Desired) set, or an
//! [`Invalid`] diagnostic carrying every problem found, each with file, line, column,
//! the offending span and help.

pub mod diagnostic;
pub mod expand;
pub mod identity;
pub mod limits;
pub mod load;
pub mod model;
pub(crate) mod text;
pub(crate) mod yaml;

pub use diagnostic::{Invalid, Problem, ProblemKind, SourceFile};
pub use limits::Limits;

use crate::desired::Desired;

/// Loads, validates and expands a fleet file's text under the default [`Limits`].
///
/// # Errors
/// [`Invalid`] with every problem found.
pub fn compile(name: &str, text: &str) -> Result<Desired, Invalid> {
    compile_with(name, text, &Limits::default())
}

/// Loads, validates and expands a fleet file's bytes: the total entry point. Whatever the
/// bytes, it returns (never panics, never truncates, never allocates without bound), and
/// every problem points inside the file on a character boundary.
///
/// # Errors
/// [`Invalid`] with every problem found.
pub fn compile_bytes(name: &str, bytes: &[u8], limits: &Limits) -> Result<Desired, Invalid> {
    match text::decode(name, bytes, limits) {
        Ok(text) => compile_with(name, &text, limits),
        Err(problems) => Err(Invalid::new(problems)),
    }
}

/// Loads, validates and expands a fleet file's text under `limits`.
///
/// # Errors
/// [`Invalid`] with every problem found.
pub fn compile_with(name: &str, text: &str, limits: &Limits) -> Result<Desired, Invalid> {
    let (file, mut problems) = load::load(name, text, limits);
    let Some(file) = file else {
        return Err(Invalid::new(problems));
    };
    // Rendering runs even when expansion found problems, so that one run reports both.
    let (expanded, more) = expand::expand(&file, limits);
    problems.extend(more);
    match crate::render::fleet(expanded) {
        Ok(desired) if problems.is_empty() => Ok(desired),
        Ok(_) => Err(Invalid::new(problems)),
        Err(more) => {
            problems.extend(more);
            Err(Invalid::new(problems))
        }
    }
}

/// Reads and compiles a fleet file from disk. At most one byte more than the size limit is
/// read, so a huge file is refused without being loaded.
///
/// # Errors
/// [`Invalid`] with the problems, or one [`ProblemKind::Io`] problem if the file cannot be read.
pub fn compile_file(path: &std::path::Path, limits: &Limits) -> Result<Desired, Invalid> {
    use std::io::Read;
    let name = path.display().to_string();
    if let Some(link) = symbolic_link_in(path) {
        // A merge request can make a fleet file a link to a credentials file; its lines
        // would then be quoted in the diagnostics of a pipeline's log.
        let source = SourceFile::new(name.clone(), "");
        let problem = Problem::new(
            ProblemKind::Io,
            &source,
            (0, 0).into(),
            format!(
                "Fleet file {name} is read through a symbolic link ({})",
                link.display()
            ),
            "",
        )
        .with_help("give the file itself: fleet does not follow links to fleet files, so a fleet file cannot stand for another file");
        return Err(Invalid::new(vec![problem]));
    }
    let read = std::fs::File::open(path).and_then(|file| {
        let mut bytes = Vec::new();
        let most = u64::try_from(limits.file_bytes)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        file.take(most).read_to_end(&mut bytes)?;
        Ok(bytes)
    });
    match read {
        Ok(bytes) if bytes.len() > limits.file_bytes => {
            Err(Invalid::new(vec![text::too_large(&name, None, limits)]))
        }
        Ok(bytes) => compile_bytes(&name, &bytes, limits),
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

/// The first symbolic link on `path`: the file itself, or for a relative path any directory
/// on the way to it (where a repository could hold a link).
fn symbolic_link_in(path: &std::path::Path) -> Option<std::path::PathBuf> {
    let is_link = |p: &std::path::Path| {
        std::fs::symlink_metadata(p).is_ok_and(|meta| meta.file_type().is_symlink())
    };
    if is_link(path) {
        return Some(path.to_path_buf());
    }
    if path.is_absolute() {
        return None;
    }
    let mut prefix = std::path::PathBuf::new();
    for component in path.components() {
        prefix.push(component);
        if matches!(component, std::path::Component::Normal(_)) && is_link(&prefix) {
            return Some(prefix);
        }
    }
    None
}

#[cfg(test)]
mod property_tests;
