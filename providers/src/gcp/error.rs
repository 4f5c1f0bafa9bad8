//! How Compute Engine failures become fleet errors.
//!
//! In: a `google_cloud_gax` error from one API call, or the `error` of a finished operation.
//! Out: a [`ProviderError`] whose kind tells the executor whether to retry: 403
//! `rateLimitExceeded`/`userRateLimitExceeded` and 429 are [`ErrorKind::Throttled`], 5xx,
//! timeouts and connection failures [`ErrorKind::Transient`], 404 [`ErrorKind::NotFound`],
//! 401 and other 403s [`ErrorKind::Credentials`], everything else (`alreadyExists`,
//! `invalid`, `conditionNotMet`, …) [`ErrorKind::Fatal`]. Also the diagnostic for a run that
//! finds no credentials.

use fleet_engine::provider::{ErrorKind, ProviderError};
use google_cloud_compute_v1::model::Operation;
use google_cloud_gax::error::rpc::StatusDetails;

/// The reasons GCE gives when a caller is over its API rate.
const RATE_REASONS: [&str; 3] = [
    "rateLimitExceeded",
    "userRateLimitExceeded",
    "RATE_LIMIT_EXCEEDED",
];

/// Classifies one failed API call. `operation` is fleet's name of the call
/// (`compute.instances.insert`), `resource` what it was about (`zones/Z/instances/N`).
pub(crate) fn from_gax(
    operation: &str,
    resource: &str,
    error: &google_cloud_gax::error::Error,
) -> ProviderError {
    let about = |message: &str| {
        if resource.is_empty() {
            message.to_string()
        } else {
            format!("{resource}: {message}")
        }
    };
    if error.is_timeout() {
        return ProviderError::new(
            ErrorKind::Transient,
            operation,
            "timeout",
            about(&format!("no answer in time: {error}")),
        );
    }
    if error.is_authentication() {
        return ProviderError::new(
            ErrorKind::Credentials,
            operation,
            "authentication",
            about(&format!("could not obtain credentials: {error}")),
        );
    }
    let status = error.status();
    let reason = status.and_then(|status| {
        status.details.iter().find_map(|detail| match detail {
            StatusDetails::ErrorInfo(info) if !info.reason.is_empty() => Some(info.reason.clone()),
            _ => None,
        })
    });
    let message = status
        .map(|status| status.message.clone())
        .filter(|message| !message.is_empty())
        .unwrap_or_else(|| error.to_string());
    let Some(http) = error.http_status_code() else {
        if error.is_io() || error.is_connect() || error.is_transport() {
            return ProviderError::new(
                ErrorKind::Transient,
                operation,
                "connection",
                about(&format!("the request did not get through: {error}")),
            );
        }
        let code = reason.unwrap_or_else(|| "clientError".to_string());
        return ProviderError::new(ErrorKind::Fatal, operation, code, about(&message));
    };
    let rate_limited = reason
        .as_deref()
        .is_some_and(|reason| RATE_REASONS.contains(&reason));
    let (kind, default_code) = match http {
        429 => (ErrorKind::Throttled, "rateLimitExceeded"),
        403 if rate_limited => (ErrorKind::Throttled, "rateLimitExceeded"),
        401 => (ErrorKind::Credentials, "unauthorized"),
        403 => (ErrorKind::Credentials, "forbidden"),
        404 => (ErrorKind::NotFound, "notFound"),
        408 => (ErrorKind::Transient, "requestTimeout"),
        409 => (ErrorKind::Fatal, "alreadyExists"),
        412 => (ErrorKind::Fatal, "conditionNotMet"),
        500..=599 => (ErrorKind::Transient, "backendError"),
        _ => (ErrorKind::Fatal, "invalid"),
    };
    let code = reason.unwrap_or_else(|| default_code.to_string());
    ProviderError::new(
        kind,
        operation,
        code,
        about(&format!("HTTP {http}: {message}")),
    )
}

/// The error of a finished operation, if it failed. Operation errors are final: a retry
/// with the same `requestId` would only return the same failed operation.
pub(crate) fn from_operation(
    operation: &str,
    resource: &str,
    done: &Operation,
) -> Option<ProviderError> {
    let error = done.error.as_ref().filter(|error| !error.errors.is_empty());
    let Some(error) = error else {
        // A failed operation without details still says so through its HTTP fields.
        return done
            .http_error_status_code
            .filter(|code| *code >= 400)
            .map(|code| {
                ProviderError::new(
                    ErrorKind::Fatal,
                    operation,
                    format!("http{code}"),
                    format!(
                        "{resource}: operation {} failed: {}",
                        done.name.as_deref().unwrap_or("?"),
                        done.http_error_message.as_deref().unwrap_or("no message")
                    ),
                )
            });
    };
    let first = &error.errors[0];
    let code = first
        .code
        .clone()
        .unwrap_or_else(|| "operationError".into());
    let messages: Vec<String> = error
        .errors
        .iter()
        .map(|error| {
            format!(
                "{}: {}",
                error.code.as_deref().unwrap_or("error"),
                error.message.as_deref().unwrap_or("no message")
            )
        })
        .collect();
    let kind = if RATE_REASONS.contains(&code.as_str()) {
        ErrorKind::Throttled
    } else {
        ErrorKind::Fatal
    };
    Some(ProviderError::new(
        kind,
        operation,
        code,
        format!(
            "{resource}: operation {} failed: {}",
            done.name.as_deref().unwrap_or("?"),
            messages.join("; ")
        ),
    ))
}

/// Why the GCP provider could not be set up.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ConnectError {
    /// Application Default Credentials were not found or gave no token.
    #[error("No Google Cloud credentials for project {project}")]
    #[diagnostic(
        code(fleet::gcp::credentials),
        help(
            "fleet looked for Application Default Credentials in: the file named by \
             GOOGLE_APPLICATION_CREDENTIALS, gcloud's application_default_credentials.json \
             (~/.config/gcloud/, written by `gcloud auth application-default login`), and the \
             GCE metadata server (on a Google Cloud VM). Provide one of those, or use \
             `--cloud sim` to plan and apply against the embedded simulated cloud \
             (FLEET_GCP_ANONYMOUS=1 skips authentication for a local test server).\n\
             Detail: {detail}"
        )
    )]
    NoCredentials {
        /// The project the run wanted.
        project: String,
        /// What the credentials library said.
        detail: String,
    },
    /// A Compute Engine client could not be built.
    #[error("Could not set up the Compute Engine client ({endpoint})")]
    #[diagnostic(
        code(fleet::gcp::client),
        help("check `clouds.gcp.endpoint` / FLEET_GCP_ENDPOINT: {detail}")
    )]
    Client {
        /// The endpoint in use.
        endpoint: String,
        /// What the client library said.
        detail: String,
    },
}
