//! How EC2 failures become [`ProviderError`]s, and why connecting can fail.
//!
//! In: an SDK error and the API call that produced it. Out: a [`ProviderError`] whose kind
//! decides whether a call is retried (throttling and 5xx are; the SDK's own retries are off
//! so the two do not multiply), or a [`ConnectError`] diagnostic. EC2's error code is parsed
//! once, here, into an [`Ec2ErrorCode`]; the rest of the provider matches on that enum and
//! on [`ErrorKind`], never on code or message text.

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use fleet_engine::provider::{ErrorKind, ProviderError};

/// The EC2 error codes fleet acts on; every other code is kept as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ec2ErrorCode {
    /// The account's API rate is exceeded (also `Throttling` and its spellings).
    RequestLimitExceeded,
    /// A passing fault on AWS's side (`InternalError`, `InternalFailure`).
    InternalError,
    /// The service is briefly unavailable (`ServiceUnavailable`, `Unavailable`).
    ServiceUnavailable,
    /// The request took too long on AWS's side.
    RequestTimeout,
    /// No capacity for the instance type in the zone now; it comes back.
    InsufficientInstanceCapacity,
    /// The instance does not exist (`InvalidInstanceID.NotFound`).
    InvalidInstanceIdNotFound,
    /// A launch template or version does not exist (`InvalidLaunchTemplateId.NotFound`,
    /// `InvalidLaunchTemplateName.NotFoundException`, `InvalidLaunchTemplateVersion.NotFound`…).
    LaunchTemplateNotFound,
    /// Any other `*.NotFound` code: the object is gone.
    OtherNotFound(String),
    /// A `ClientToken` used before with different parameters.
    IdempotentParameterMismatch,
    /// The credentials may not make this call.
    UnauthorizedOperation,
    /// Credentials missing, wrong or expired (`AuthFailure`, `InvalidClientTokenId`,
    /// `SignatureDoesNotMatch`, `ExpiredToken`, `RequestExpired`, `OptInRequired`).
    AuthFailure(String),
    /// Anything else, as EC2 spelt it.
    Other(String),
}

impl Ec2ErrorCode {
    /// Parses EC2's `<Code>`.
    pub(crate) fn parse(code: &str) -> Ec2ErrorCode {
        match code {
            "RequestLimitExceeded"
            | "Throttling"
            | "ThrottlingException"
            | "TooManyRequestsException" => Ec2ErrorCode::RequestLimitExceeded,
            "InternalError" | "InternalFailure" => Ec2ErrorCode::InternalError,
            "ServiceUnavailable" | "Unavailable" => Ec2ErrorCode::ServiceUnavailable,
            "RequestTimeout" => Ec2ErrorCode::RequestTimeout,
            "InsufficientInstanceCapacity" => Ec2ErrorCode::InsufficientInstanceCapacity,
            "InvalidInstanceID.NotFound" => Ec2ErrorCode::InvalidInstanceIdNotFound,
            "IdempotentParameterMismatch" => Ec2ErrorCode::IdempotentParameterMismatch,
            "UnauthorizedOperation" => Ec2ErrorCode::UnauthorizedOperation,
            "AuthFailure"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "RequestExpired"
            | "OptInRequired" => Ec2ErrorCode::AuthFailure(code.to_string()),
            _ if code.starts_with("InvalidLaunchTemplate")
                && (code.ends_with(".NotFound") || code.ends_with(".NotFoundException")) =>
            {
                Ec2ErrorCode::LaunchTemplateNotFound
            }
            _ if code.ends_with(".NotFound")
                || code.ends_with(".NotFoundException")
                || code.ends_with("DoesNotExist") =>
            {
                Ec2ErrorCode::OtherNotFound(code.to_string())
            }
            _ => Ec2ErrorCode::Other(code.to_string()),
        }
    }

    /// The retry class of the code; `None` when the code alone does not say (the HTTP status
    /// decides then).
    pub(crate) fn kind(&self) -> Option<ErrorKind> {
        match self {
            Ec2ErrorCode::RequestLimitExceeded => Some(ErrorKind::Throttled),
            Ec2ErrorCode::InternalError
            | Ec2ErrorCode::ServiceUnavailable
            | Ec2ErrorCode::RequestTimeout
            | Ec2ErrorCode::InsufficientInstanceCapacity => Some(ErrorKind::Transient),
            Ec2ErrorCode::InvalidInstanceIdNotFound
            | Ec2ErrorCode::LaunchTemplateNotFound
            | Ec2ErrorCode::OtherNotFound(_) => Some(ErrorKind::NotFound),
            Ec2ErrorCode::UnauthorizedOperation | Ec2ErrorCode::AuthFailure(_) => {
                Some(ErrorKind::Credentials)
            }
            Ec2ErrorCode::IdempotentParameterMismatch => Some(ErrorKind::Fatal),
            Ec2ErrorCode::Other(_) => None,
        }
    }

    /// The retry class, falling back on the HTTP status for codes that do not say.
    pub(crate) fn kind_or_status(&self, status: Option<u16>) -> ErrorKind {
        self.kind().unwrap_or(match status {
            Some(status) if status >= 500 => ErrorKind::Transient,
            Some(429) => ErrorKind::Throttled,
            _ => ErrorKind::Fatal,
        })
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
        (_, Some(code)) => (Ec2ErrorCode::parse(&code).kind_or_status(status), code),
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
        let kind = |code: &str| Ec2ErrorCode::parse(code).kind();
        assert_eq!(kind("RequestLimitExceeded"), Some(ErrorKind::Throttled));
        assert_eq!(kind("Throttling"), Some(ErrorKind::Throttled));
        assert_eq!(kind("InternalError"), Some(ErrorKind::Transient));
        assert_eq!(
            kind("InsufficientInstanceCapacity"),
            Some(ErrorKind::Transient)
        );
        assert_eq!(kind("AuthFailure"), Some(ErrorKind::Credentials));
        assert_eq!(kind("UnauthorizedOperation"), Some(ErrorKind::Credentials));
        assert_eq!(kind("IdempotentParameterMismatch"), Some(ErrorKind::Fatal));
        assert_eq!(
            Ec2ErrorCode::parse("InvalidInstanceID.NotFound"),
            Ec2ErrorCode::InvalidInstanceIdNotFound
        );
        assert_eq!(
            Ec2ErrorCode::parse("InvalidLaunchTemplateVersion.NotFound"),
            Ec2ErrorCode::LaunchTemplateNotFound
        );
        assert_eq!(kind("InvalidVolume.NotFound"), Some(ErrorKind::NotFound));
        assert_eq!(kind("InvalidParameterValue"), None);
        assert_eq!(
            Ec2ErrorCode::parse("InvalidParameterValue").kind_or_status(Some(503)),
            ErrorKind::Transient
        );
    }
}
