//! The rules names and labels follow.
//!
//! In: a name, host name or label as expanded. Out: whether it is valid by the cloud's rule
//! (GCE's resource names and labels, applied on both clouds so names carry over; RFC 1123
//! host names, never a path), and a located problem for a label value that is not.

use super::Expander;
use crate::spec::diagnostic::{quoted, ProblemKind};
use crate::spec::model::Spanned;

impl Expander<'_> {
    pub(super) fn check_label_value(&mut self, value: &Spanned<String>, what: &str) {
        if !value.value.is_empty() && !valid_label(&value.value, true) {
            let problem = self
                .new_problem(ProblemKind::InvalidValue, value.span, format!("Invalid {what} `{}`", quoted(&value.value)), "fleet puts this in a label on every machine")
                .with_help("use lowercase letters, digits, `-` and `_`, starting with a letter, at most 63 characters");
            self.problem(problem);
        }
    }
}

/// A host name (RFC 1123, lowercase): dot-separated labels of `[a-z0-9-]`, 1 to 63 each, not
/// starting or ending with `-`; never a path.
pub(super) fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// GCE's resource-name rule.
pub(super) fn valid_cloud_name(name: &str, max_len: usize) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max_len
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && !name.ends_with('-')
}

/// GCE's label rule, which EC2 tags accept too: keys `[\p{Ll}\p{Lo}][\p{Ll}\p{Lo}\p{N}_-]{0,62}`,
/// values `[\p{Ll}\p{Lo}\p{N}_-]{0,63}`, counted in characters. International characters
/// are allowed as long as they are lowercase (`café`, `straße`) or of a script without case
/// (`東京`); `Café` is refused, as Google refuses it.
pub(super) fn valid_label(text: &str, is_key: bool) -> bool {
    text.chars().count() <= 63
        && (!is_key || text.chars().next().is_some_and(is_label_letter))
        && text
            .chars()
            .all(|c| is_label_letter(c) || c.is_numeric() || c == '-' || c == '_')
}

/// `\p{Ll}` or `\p{Lo}`: a lowercase letter, or a letter of a script without case (one that
/// has neither an upper nor a lower case form).
fn is_label_letter(c: char) -> bool {
    c.is_lowercase()
        || (c.is_alphabetic()
            && !c.is_uppercase()
            && c.to_uppercase().eq(std::iter::once(c))
            && c.to_lowercase().eq(std::iter::once(c)))
}
