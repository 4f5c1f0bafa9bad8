//! The shapes of a machine's cloud identity in a fleet file.
//!
//! In: one `instance_profile`, `service_account` or `scopes` value as written (after
//! interpolation). Out: the value fleet sends (a scope's short name becomes its URL), or a
//! [`Refusal`] saying what is wrong and how to write it. Pure functions; `spec::expand`
//! turns a refusal into a located problem.

use super::diagnostic::quoted;

/// The scope a service account gets when the fleet file names none: access is then decided
/// by the account's IAM roles alone, as Google recommends.
pub const DEFAULT_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Where Google's OAuth scope names live.
const SCOPE_PREFIX: &str = "https://www.googleapis.com/auth/";

/// Why a value is refused: the summary, the label under the value and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The summary line.
    pub message: String,
    /// What the label under the value says.
    pub label: String,
    /// How to write it instead.
    pub help: String,
}

fn refuse(message: String, label: &str, help: &str) -> Refusal {
    Refusal {
        message,
        label: label.to_string(),
        help: help.to_string(),
    }
}

/// IAM's character set for names and path parts: letters, digits and `+=,.@_-`.
fn iam_name(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
}

/// An EC2 instance profile: a name (128 characters at most) or an ARN
/// `arn:PARTITION:iam::ACCOUNT:instance-profile/PATH/NAME` with a 12-digit account.
///
/// # Errors
/// A [`Refusal`] naming the part that is wrong.
pub fn instance_profile(value: &str) -> Result<String, Refusal> {
    let help = "use the instance profile's name, e.g. `ci-runner`, or its ARN, e.g. \
                `arn:aws:iam::123456789012:instance-profile/ci/ci-runner` \
                (`aws iam list-instance-profiles`)";
    let Some(rest) = value.strip_prefix("arn:") else {
        if iam_name(value) && value.chars().count() <= 128 {
            return Ok(value.to_string());
        }
        return Err(refuse(
            format!("`{}` is not an instance profile name", quoted(value)),
            "a name is up to 128 letters, digits and `+=,.@_-`",
            help,
        ));
    };
    let parts: Vec<&str> = rest.splitn(5, ':').collect();
    let shape_ok = match parts.as_slice() {
        [partition, "iam", "", account, resource] => {
            matches!(*partition, "aws" | "aws-cn" | "aws-us-gov")
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && resource
                    .strip_prefix("instance-profile/")
                    .is_some_and(|path| {
                        path.split('/').all(iam_name)
                            && path.rsplit('/').next().is_some_and(|n| n.len() <= 128)
                    })
        }
        _ => false,
    };
    if shape_ok {
        Ok(value.to_string())
    } else {
        Err(refuse(
            format!("`{}` is not an instance profile ARN", quoted(value)),
            "expected `arn:aws:iam::<12-digit account>:instance-profile/<path/name>`",
            help,
        ))
    }
}

/// A GCE service account: `default` (the project's Compute Engine default account) or
/// `NAME@PROJECT.iam.gserviceaccount.com`, both parts 6 to 30 lowercase letters, digits and
/// hyphens, starting with a letter and not ending with a hyphen.
///
/// # Errors
/// A [`Refusal`] naming the part that is wrong.
pub fn service_account(value: &str) -> Result<String, Refusal> {
    if value == "default" {
        return Ok(value.to_string());
    }
    let help = "use the account's email, e.g. `ci-runner@my-project.iam.gserviceaccount.com` \
                (`gcloud iam service-accounts list`), or `default` for the project's \
                Compute Engine default account";
    if value.ends_with("-compute@developer.gserviceaccount.com") {
        return Err(refuse(
            format!("`{}` is the Compute Engine default account", quoted(value)),
            "its email depends on the project number",
            "write `default` for it, so the fleet file does not carry the project number",
        ));
    }
    let Some((name, domain)) = value.split_once('@') else {
        return Err(refuse(
            format!("`{}` is not a service account email", quoted(value)),
            "expected `NAME@PROJECT.iam.gserviceaccount.com` or `default`",
            help,
        ));
    };
    let Some(project) = domain.strip_suffix(".iam.gserviceaccount.com") else {
        return Err(refuse(
            format!("`{}` is not a service account email", quoted(value)),
            "a service account's email ends in `.iam.gserviceaccount.com`",
            help,
        ));
    };
    for (part, what) in [(name, "account name"), (project, "project id")] {
        if !gcp_id(part) {
            return Err(refuse(
                format!("`{}` is not a service account email", quoted(value)),
                &format!(
                    "the {what} `{part}` is not 6 to 30 lowercase letters, digits and hyphens \
                     starting with a letter"
                ),
                help,
            ));
        }
    }
    Ok(value.to_string())
}

/// A service account name or project id: 6–30 of `[a-z0-9-]`, a letter first, no hyphen last.
fn gcp_id(text: &str) -> bool {
    (6..=30).contains(&text.len())
        && text.starts_with(|c: char| c.is_ascii_lowercase())
        && !text.ends_with('-')
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A GCE OAuth scope: its URL, or its short name (`cloud-platform`,
/// `devstorage.read_only`), which becomes the URL.
///
/// # Errors
/// A [`Refusal`] when it is neither.
pub fn scope(value: &str) -> Result<String, Refusal> {
    let name = value.strip_prefix(SCOPE_PREFIX).unwrap_or(value);
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if valid {
        Ok(format!("{SCOPE_PREFIX}{name}"))
    } else {
        Err(refuse(
            format!("`{}` is not an OAuth scope", quoted(value)),
            "expected a scope's short name or its `https://www.googleapis.com/auth/…` URL",
            "e.g. `cloud-platform` (the default: access decided by the account's roles), \
             `logging.write`, `devstorage.read_only`",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_profiles_are_names_or_arns() {
        assert!(instance_profile("ci-runner").is_ok());
        assert!(
            instance_profile("arn:aws:iam::123456789012:instance-profile/ci/ci-runner").is_ok()
        );
        assert!(instance_profile("arn:aws:iam::123456789012:instance-profile/ci-runner").is_ok());
        assert!(instance_profile("ci runner").is_err());
        assert!(instance_profile("arn:aws:iam::12345:instance-profile/ci-runner").is_err());
        assert!(instance_profile("arn:aws:iam::123456789012:role/ci-runner").is_err());
        assert!(instance_profile("arn:aws:iam::123456789012:instance-profile/").is_err());
        assert!(instance_profile(&"a".repeat(129)).is_err());
    }

    #[test]
    fn service_accounts_are_emails_or_default() {
        assert!(service_account("default").is_ok());
        assert!(service_account("ci-runner@my-project.iam.gserviceaccount.com").is_ok());
        assert!(service_account("ci@my-project.iam.gserviceaccount.com").is_err());
        assert!(service_account("ci-runner@my-project.example.com").is_err());
        assert!(service_account("ci-runner").is_err());
        assert!(service_account("Ci-runner@my-project.iam.gserviceaccount.com").is_err());
        let refused = service_account("123-compute@developer.gserviceaccount.com").unwrap_err();
        assert!(refused.help.contains("`default`"));
    }

    #[test]
    fn scopes_short_names_become_urls() {
        assert_eq!(scope("cloud-platform").unwrap(), DEFAULT_SCOPE);
        assert_eq!(scope(DEFAULT_SCOPE).unwrap(), DEFAULT_SCOPE);
        assert!(scope("https://example.com/x").is_err());
        assert!(scope("").is_err());
    }
}
