//! How EC2 failures become [`ProviderError`]s, and why connecting can fail.
//!
//! In: an SDK error and the API call that produced it. Out: a [`ProviderError`] whose kind
//! decides whether the engine's executor retries (throttling and 5xx are retried there; the
//! SDK's own retries are off so the two do not multiply), or a [`ConnectError`] diagnostic.

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use fleet_engine::provider::{ErrorKind, ProviderError};

/// EC2 error codes that mean "slow down".
const THROTTLING: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
];

/// EC2 error codes that mean a passing fault on AWS's side.
const TRANSIENT: &[&str] = &[
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
];

/// EC2 error codes that mean credentials are missing, wrong or expired.
const CREDENTIALS: &[&str] = &[
    "AuthFailure",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "RequestExpired",
    "OptInRequired",
];

/// The retry class of an EC2 error code (`None` when the code says nothing about it).
pub(crate) fn kind_of_code(code: &str) -> Option<ErrorKind> {
    if THROTTLING.contains(&code) {
        Some(ErrorKind::Throttled)
    } else if TRANSIENT.contains(&code) {
        Some(ErrorKind::Transient)
    } else if CREDENTIALS.contains(&code) {
        Some(ErrorKind::Credentials)
    } else if code.ends_with(".NotFound") || code.ends_with(".NotFoundException") {
        Some(ErrorKind::NotFound)
    } else {
        None
    }
}

/// Turns an SDK error of `operation` (e.g. `ec2:RunInstances`) into a [`ProviderError`].
pub(crate) fn sdk_error<E>(operation: &str, error: SdkError<E, HttpResponse>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = error.raw_response().map(|r| r.status().as_u16());
    let code = error.code().map(str::to_string);
    let message = error
        .message()
        .map(str::to_string)
        .unwrap_or_else(|| DisplayErrorContext(&error).to_string());
    let (kind, code) = match (&error, code) {
        (_, Some(code)) => {
            let kind = kind_of_code(&code).unwrap_or(match status {
                Some(status) if status >= 500 => ErrorKind::Transient,
                Some(429) => ErrorKind::Throttled,
                _ => ErrorKind::Fatal,
            });
            (kind, code)
        }
        (SdkError::TimeoutError(_), None) => (ErrorKind::Transient, "Timeout".to_string()),
        (SdkError::DispatchFailure(failure), None) => {
            if failure.is_user() {
                (ErrorKind::Fatal, "DispatchFailure".to_string())
            } else {
                (ErrorKind::Transient, "DispatchFailure".to_string())
            }
        }
        (SdkError::ConstructionFailure(_), None) => {
            // The SDK could not build the request; with no identity this is the
            // credentials chain coming up empty.
            let kind = if message.contains("credential") || message.contains("identity") {
                ErrorKind::Credentials
            } else {
                ErrorKind::Fatal
            };
            (kind, "ConstructionFailure".to_string())
        }
        (_, None) => match status {
            Some(status) if status >= 500 => (ErrorKind::Transient, format!("HTTP{status}")),
            Some(429) => (ErrorKind::Throttled, "HTTP429".to_string()),
            Some(status) => (ErrorKind::Fatal, format!("HTTP{status}")),
            None => (ErrorKind::Fatal, "Unknown".to_string()),
        },
    };
    ProviderError::new(kind, operation, code, message)
}

/// Adds the resource an error is about to its message, so a failure names what it hit.
pub(crate) fn about(mut error: ProviderError, what: &str) -> ProviderError {
    error.message = format!("{what}: {}", error.message);
    error
}

/// Whether an error is a 5xx without an EC2 error code: what an emulator answers for a call
/// it does not implement (moto: `DeleteLaunchTemplateVersions`).
pub(crate) fn is_unimplemented(error: &ProviderError) -> bool {
    error.kind == ErrorKind::Transient && error.code.starts_with("HTTP5")
}

/// Why the AWS provider could not be set up.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ConnectError {
    /// The standard credential chain found nothing.
    #[error("No AWS credentials found for region {region}")]
    #[diagnostic(
        code(fleet::aws::credentials),
        help(
            "fleet looked, in order, for: the environment variables AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN); the profile named by AWS_PROFILE \
             (or `default`) in ~/.aws/credentials and ~/.aws/config, including SSO and \
             credential_process; web identity (AWS_WEB_IDENTITY_TOKEN_FILE); the ECS container \
             role; and the EC2 instance role. Set one of these, or use `--cloud sim` to plan \
             and apply against the embedded simulated cloud. ({detail})"
        )
    )]
    NoCredentials {
        /// The region the provider was for.
        region: String,
        /// What the chain reported.
        detail: String,
    },
    /// The endpoint override is not a usable URL.
    #[error("Invalid AWS endpoint `{endpoint}`")]
    #[diagnostic(
        code(fleet::aws::endpoint),
        help("an endpoint is a URL such as http://127.0.0.1:5000 (set by clouds.aws.endpoint or AWS_ENDPOINT_URL)")
    )]
    InvalidEndpoint {
        /// The value given.
        endpoint: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec2_codes_map_to_retry_classes() {
        assert_eq!(
            kind_of_code("RequestLimitExceeded"),
            Some(ErrorKind::Throttled)
        );
        assert_eq!(kind_of_code("Throttling"), Some(ErrorKind::Throttled));
        assert_eq!(kind_of_code("InternalError"), Some(ErrorKind::Transient));
        assert_eq!(kind_of_code("AuthFailure"), Some(ErrorKind::Credentials));
        assert_eq!(
            kind_of_code("InvalidInstanceID.NotFound"),
            Some(ErrorKind::NotFound)
        );
        assert_eq!(kind_of_code("InvalidParameterValue"), None);
    }
}
