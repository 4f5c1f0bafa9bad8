//! How Compute Engine failures become fleet errors.
//!
//! In: a `google_cloud_gax` error from one API call (its HTTP status and the structured
//! reason of GCE's error body: `error.errors[].reason`, or `ErrorInfo.reason` in
//! `error.details`), or the `error` of a finished operation (`errors[].code`). Out: a
//! [`GceError`]: the [`GceReason`] as an enum, where it came from ([`Origin`]) and the
//! [`ProviderError`] the engine sees. A reason is mapped to an [`ErrorKind`] in one place,
//! [`GceReason::kind`]; the provider decides on reasons, never on message text. Also the
//! diagnostic for a run that finds no credentials.

use fleet_engine::provider::{ErrorKind, ProviderError};
use google_cloud_compute_v1::model::Operation;
use google_cloud_gax::error::rpc::StatusDetails;

/// Why Compute Engine refused or failed a call, as it says in its error bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GceReason {
    /// Over the API rate: `rateLimitExceeded`, `userRateLimitExceeded`,
    /// `RATE_LIMIT_EXCEEDED`, or HTTP 429.
    RateLimitExceeded,
    /// Over a resource quota (CPUs, addresses, …): `quotaExceeded`, `QUOTA_EXCEEDED`. A person
    /// has to raise the quota or free resources; retrying does not help.
    QuotaExceeded,
    /// The name is taken: `alreadyExists`, `RESOURCE_ALREADY_EXISTS`, HTTP 409.
    AlreadyExists,
    /// The object does not exist: `notFound`, `RESOURCE_NOT_FOUND`, HTTP 404.
    NotFound,
    /// The object is busy with another operation: `resourceNotReady`, `RESOURCE_NOT_READY`.
    /// It passes.
    ResourceNotReady,
    /// The zone has no capacity for the machine type now (a stockout):
    /// `ZONE_RESOURCE_POOL_EXHAUSTED`, `ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS`. The
    /// operation made nothing; fleet reports it rather than hammer a zone that is out.
    ZoneResourcePoolExhausted,
    /// A fingerprint is stale: `conditionNotMet`, HTTP 412.
    ConditionNotMet,
    /// The request is wrong: `invalid`, `badRequest`, `required`, other HTTP 400s.
    Invalid,
    /// HTTP 401: the credentials were rejected.
    Unauthorized,
    /// HTTP 403 for any reason but the rate or a quota: no permission.
    Forbidden,
    /// GCE failed: `backendError`, `internalError`, HTTP 5xx.
    Backend,
    /// HTTP 408, or no answer within the attempt's time.
    Timeout,
    /// The request did not get through (connection refused, reset, TLS).
    Connection,
    /// The client could not obtain credentials.
    Authentication,
    /// Any other reason, as GCE gave it.
    Other(String),
}

impl GceReason {
    /// The reason a GCE error body or operation error names, if fleet knows it.
    pub(crate) fn from_reason(reason: &str) -> Option<GceReason> {
        Some(match reason {
            "rateLimitExceeded" | "userRateLimitExceeded" | "RATE_LIMIT_EXCEEDED" => {
                GceReason::RateLimitExceeded
            }
            "quotaExceeded" | "QUOTA_EXCEEDED" => GceReason::QuotaExceeded,
            "alreadyExists" | "RESOURCE_ALREADY_EXISTS" => GceReason::AlreadyExists,
            "notFound" | "RESOURCE_NOT_FOUND" => GceReason::NotFound,
            "resourceNotReady" | "RESOURCE_NOT_READY" => GceReason::ResourceNotReady,
            "ZONE_RESOURCE_POOL_EXHAUSTED" | "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS" => {
                GceReason::ZoneResourcePoolExhausted
            }
            "conditionNotMet" | "CONDITION_NOT_MET" => GceReason::ConditionNotMet,
            "invalid" | "badRequest" | "required" | "invalidParameter" => GceReason::Invalid,
            "forbidden" => GceReason::Forbidden,
            "backendError" | "internalError" => GceReason::Backend,
            _ => return None,
        })
    }

    /// The reason an HTTP status stands for when the body names none fleet knows.
    fn from_http(status: u16) -> GceReason {
        match status {
            429 => GceReason::RateLimitExceeded,
            401 => GceReason::Unauthorized,
            403 => GceReason::Forbidden,
            404 => GceReason::NotFound,
            408 => GceReason::Timeout,
            409 => GceReason::AlreadyExists,
            412 => GceReason::ConditionNotMet,
            500..=599 => GceReason::Backend,
            _ => GceReason::Invalid,
        }
    }

    /// Whether the executor may retry, and how: the one place a reason becomes a kind.
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            GceReason::RateLimitExceeded => ErrorKind::Throttled,
            GceReason::ResourceNotReady
            | GceReason::Backend
            | GceReason::Timeout
            | GceReason::Connection => ErrorKind::Transient,
            GceReason::NotFound => ErrorKind::NotFound,
            GceReason::Unauthorized | GceReason::Forbidden | GceReason::Authentication => {
                ErrorKind::Credentials
            }
            GceReason::QuotaExceeded
            | GceReason::AlreadyExists
            | GceReason::ZoneResourcePoolExhausted
            | GceReason::ConditionNotMet
            | GceReason::Invalid
            | GceReason::Other(_) => ErrorKind::Fatal,
        }
    }

    /// GCE's own name of the reason, for the error's `code` when GCE gave none.
    fn name(&self) -> &str {
        match self {
            GceReason::RateLimitExceeded => "rateLimitExceeded",
            GceReason::QuotaExceeded => "quotaExceeded",
            GceReason::AlreadyExists => "alreadyExists",
            GceReason::NotFound => "notFound",
            GceReason::ResourceNotReady => "resourceNotReady",
            GceReason::ZoneResourcePoolExhausted => "ZONE_RESOURCE_POOL_EXHAUSTED",
            GceReason::ConditionNotMet => "conditionNotMet",
            GceReason::Invalid => "invalid",
            GceReason::Unauthorized => "unauthorized",
            GceReason::Forbidden => "forbidden",
            GceReason::Backend => "backendError",
            GceReason::Timeout => "timeout",
            GceReason::Connection => "connection",
            GceReason::Authentication => "authentication",
            GceReason::Other(reason) => reason,
        }
    }
}

/// Where a failure was reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The API call itself was refused or got no answer.
    Call,
    /// The call was accepted and its operation finished with an error: it made nothing, and
    /// GCE answers its `requestId` with the same failed operation from now on.
    Operation,
    /// Polling an operation that is under way failed; the operation may still finish.
    Poll,
}

/// A Compute Engine failure: its reason, where it came from, and what the engine is told.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GceError {
    pub(crate) reason: GceReason,
    pub(crate) origin: Origin,
    pub(crate) error: ProviderError,
}

impl GceError {
    /// A failure of `operation` for `reason`; `code` is GCE's own word for it when it gave
    /// one (kept as it is, e.g. `ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS`).
    pub(crate) fn new(
        reason: GceReason,
        origin: Origin,
        operation: &str,
        code: Option<&str>,
        message: String,
    ) -> GceError {
        let code = code.unwrap_or(reason.name()).to_string();
        GceError {
            error: ProviderError::new(reason.kind(), operation, code, message),
            reason,
            origin,
        }
    }
}

impl From<GceError> for ProviderError {
    fn from(error: GceError) -> ProviderError {
        error.error
    }
}

/// The reason named in a failed call's structured details, if any.
fn detail_reason(error: &google_cloud_gax::error::Error) -> Option<String> {
    error.status().and_then(|status| {
        status.details.iter().find_map(|detail| match detail {
            StatusDetails::ErrorInfo(info) if !info.reason.is_empty() => Some(info.reason.clone()),
            _ => None,
        })
    })
}

/// Classifies one failed API call. `operation` is fleet's name of the call
/// (`compute.instances.insert`), `resource` what it was about (`zones/Z/instances/N`).
pub(crate) fn from_gax(
    operation: &str,
    resource: &str,
    error: &google_cloud_gax::error::Error,
) -> GceError {
    let about = |message: &str| {
        if resource.is_empty() {
            message.to_string()
        } else {
            format!("{resource}: {message}")
        }
    };
    let call = |reason: GceReason, code: Option<&str>, message: String| {
        GceError::new(reason, Origin::Call, operation, code, message)
    };
    if error.is_timeout() {
        return call(
            GceReason::Timeout,
            None,
            about(&format!("no answer in time: {error}")),
        );
    }
    if error.is_authentication() {
        return call(
            GceReason::Authentication,
            None,
            about(&format!("could not obtain credentials: {error}")),
        );
    }
    let detail = detail_reason(error);
    let message = error
        .status()
        .map(|status| status.message.clone())
        .filter(|message| !message.is_empty())
        .unwrap_or_else(|| error.to_string());
    let Some(http) = error.http_status_code() else {
        if error.is_io() || error.is_connect() || error.is_transport() {
            return call(
                GceReason::Connection,
                None,
                about(&format!("the request did not get through: {error}")),
            );
        }
        let reason = detail
            .as_deref()
            .and_then(GceReason::from_reason)
            .unwrap_or_else(|| GceReason::Other(detail.clone().unwrap_or("clientError".into())));
        return call(reason, detail.as_deref(), about(&message));
    };
    // The body's reason decides where it is one fleet knows; a 403 is throttling or a quota
    // only when the body says so, and a reason fleet does not know keeps its HTTP meaning.
    let reason = detail
        .as_deref()
        .and_then(GceReason::from_reason)
        .unwrap_or_else(|| GceReason::from_http(http));
    let reason = match reason {
        // A reason that contradicts the status (e.g. `notFound` on a 400) follows the status.
        GceReason::NotFound if http != 404 => GceReason::from_http(http),
        reason => reason,
    };
    call(
        reason,
        detail.as_deref(),
        about(&format!("HTTP {http}: {message}")),
    )
}

/// The error of a finished operation, if it failed. A rate-limited operation is
/// [`ErrorKind::Throttled`]; the others as their reason says (a stockout or a quota is
/// final). Either way it made nothing, and its `requestId` is spent ([`Origin::Operation`]).
pub(crate) fn from_operation(
    operation: &str,
    resource: &str,
    done: &Operation,
) -> Option<GceError> {
    let error = done.error.as_ref().filter(|error| !error.errors.is_empty());
    let Some(error) = error else {
        // A failed operation without details still says so through its HTTP fields.
        return done
            .http_error_status_code
            .filter(|code| *code >= 400)
            .map(|code| {
                let reason = GceReason::from_http(u16::try_from(code).unwrap_or_default());
                GceError::new(
                    reason,
                    Origin::Operation,
                    operation,
                    Some(&format!("http{code}")),
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
    let reason = GceReason::from_reason(&code).unwrap_or_else(|| GceReason::Other(code.clone()));
    Some(GceError::new(
        reason,
        Origin::Operation,
        operation,
        Some(&code),
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

#[cfg(test)]
mod tests {
    use super::*;

    use google_cloud_compute_v1::model::operation;
    use google_cloud_gax::error::rpc::Status;

    /// The error the client makes of an HTTP error answer, the way the client library does.
    fn answered(status: u16, body: &str) -> google_cloud_gax::error::Error {
        let body = bytes::Bytes::from(body.to_owned());
        let parsed = Status::try_from(&body).expect("a GCE error body parses");
        google_cloud_gax::error::Error::service_with_http_metadata(parsed, Some(status), None)
    }

    /// GCE's classic error body: `errors[]` with `reason` and `domain`.
    fn classic(status: u16, reason: &str, domain: &str, message: &str) -> GceError {
        let body = serde_json::json!({
            "error": {
                "code": status,
                "message": message,
                "errors": [{ "message": message, "domain": domain, "reason": reason }],
            }
        });
        from_gax(
            "compute.instances.insert",
            "zones/us-east1-c/instances/runner-1",
            &answered(status, &body.to_string()),
        )
    }

    fn failed_operation(code: &str, message: &str) -> GceError {
        let mut detail = operation::error::Errors::default();
        detail.code = Some(code.to_string());
        detail.message = Some(message.to_string());
        let mut failure = operation::Error::default();
        failure.errors = vec![detail];
        let mut done = Operation::default();
        done.name = Some("operation-1".into());
        done.status = Some(operation::Status::Done);
        done.error = Some(failure);
        from_operation(
            "compute.instances.insert",
            "zones/us-east1-c/instances/runner-1",
            &done,
        )
        .expect("the operation failed")
    }

    #[track_caller]
    fn assert_is(error: &GceError, reason: GceReason, kind: ErrorKind, code: &str) {
        assert_eq!(error.reason, reason, "{error:?}");
        assert_eq!(error.error.kind, kind, "{error:?}");
        assert_eq!(error.error.code, code, "{error:?}");
    }

    #[test]
    fn rate_limits_are_throttling_in_every_shape_gce_sends() {
        let classic_rate = classic(
            403,
            "rateLimitExceeded",
            "usageLimits",
            "Rate Limit Exceeded",
        );
        assert_is(
            &classic_rate,
            GceReason::RateLimitExceeded,
            ErrorKind::Throttled,
            "rateLimitExceeded",
        );
        assert_eq!(classic_rate.origin, Origin::Call);
        let user = classic(
            403,
            "userRateLimitExceeded",
            "usageLimits",
            "User Rate Limit Exceeded",
        );
        assert_is(
            &user,
            GceReason::RateLimitExceeded,
            ErrorKind::Throttled,
            "userRateLimitExceeded",
        );
        // The newer shape: `status` and an ErrorInfo in `details` (which wins over `errors`).
        let body = r#"{"error":{"code":403,"message":"Quota exceeded for quota metric 'Queries' and limit 'Queries per minute' of service 'compute.googleapis.com'","errors":[{"message":"Quota exceeded","domain":"usageLimits","reason":"rateLimitExceeded"}],"status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"RATE_LIMIT_EXCEEDED","domain":"googleapis.com","metadata":{"service":"compute.googleapis.com","quota_metric":"compute.googleapis.com/default"}}]}}"#;
        let info = from_gax("compute.instances.aggregatedList", "", &answered(403, body));
        assert_is(
            &info,
            GceReason::RateLimitExceeded,
            ErrorKind::Throttled,
            "RATE_LIMIT_EXCEEDED",
        );
        let too_many = from_gax(
            "compute.instances.insert",
            "",
            &answered(
                429,
                r#"{"error":{"code":429,"message":"Too Many Requests"}}"#,
            ),
        );
        assert_is(
            &too_many,
            GceReason::RateLimitExceeded,
            ErrorKind::Throttled,
            "rateLimitExceeded",
        );
    }

    #[test]
    fn each_mapped_reason_of_a_refused_call() {
        let quota = classic(
            403,
            "quotaExceeded",
            "usageLimits",
            "Quota 'CPUS' exceeded.  Limit: 24.0 in region us-east1.",
        );
        // A 403, and yet not a matter of credentials: a quota a person has to raise.
        assert_is(
            &quota,
            GceReason::QuotaExceeded,
            ErrorKind::Fatal,
            "quotaExceeded",
        );
        let exists = classic(
            409,
            "alreadyExists",
            "global",
            "The resource 'projects/p/zones/us-east1-c/instances/runner-1' already exists",
        );
        assert_is(
            &exists,
            GceReason::AlreadyExists,
            ErrorKind::Fatal,
            "alreadyExists",
        );
        let missing = classic(
            404,
            "notFound",
            "global",
            "The resource 'projects/p/zones/us-east1-c/instances/runner-1' was not found",
        );
        assert_is(
            &missing,
            GceReason::NotFound,
            ErrorKind::NotFound,
            "notFound",
        );
        let busy = classic(
            400,
            "resourceNotReady",
            "global",
            "The resource 'projects/p/zones/us-east1-c/instances/runner-1' is not ready",
        );
        assert_is(
            &busy,
            GceReason::ResourceNotReady,
            ErrorKind::Transient,
            "resourceNotReady",
        );
        let stale = classic(
            412,
            "conditionNotMet",
            "global",
            "Labels fingerprint either invalid or resource labels have changed",
        );
        assert_is(
            &stale,
            GceReason::ConditionNotMet,
            ErrorKind::Fatal,
            "conditionNotMet",
        );
        let denied = classic(
            403,
            "forbidden",
            "global",
            "Required 'compute.instances.create' permission for 'projects/p'",
        );
        assert_is(
            &denied,
            GceReason::Forbidden,
            ErrorKind::Credentials,
            "forbidden",
        );
        let invalid = classic(
            400,
            "invalid",
            "global",
            "Invalid value for field 'resource.name': 'Runner_1'.",
        );
        assert_is(&invalid, GceReason::Invalid, ErrorKind::Fatal, "invalid");
        let backend = classic(503, "backendError", "global", "Backend Error");
        assert_is(
            &backend,
            GceReason::Backend,
            ErrorKind::Transient,
            "backendError",
        );
    }

    #[test]
    fn the_reason_decides_and_the_message_does_not() {
        // A 409 whose message happens to speak of rate limits is still a name that is taken.
        let exists = classic(
            409,
            "alreadyExists",
            "global",
            "rate limit exceeded? no: the name is taken",
        );
        assert_eq!(exists.reason, GceReason::AlreadyExists);
        // A 403 with no reason at all is a matter of permissions, whatever its message.
        let bare = from_gax(
            "compute.instances.insert",
            "",
            &answered(
                403,
                r#"{"error":{"code":403,"message":"Rate Limit Exceeded"}}"#,
            ),
        );
        assert_is(
            &bare,
            GceReason::Forbidden,
            ErrorKind::Credentials,
            "forbidden",
        );
        // An unknown reason keeps its name and its HTTP meaning.
        let unknown = classic(400, "somethingNew", "global", "new");
        assert_is(
            &unknown,
            GceReason::Invalid,
            ErrorKind::Fatal,
            "somethingNew",
        );
    }

    #[test]
    fn each_mapped_reason_of_a_failed_operation() {
        let stockout = failed_operation(
            "ZONE_RESOURCE_POOL_EXHAUSTED",
            "The zone 'projects/p/zones/us-east1-c' does not have enough resources available to fulfill the request.",
        );
        assert_is(
            &stockout,
            GceReason::ZoneResourcePoolExhausted,
            ErrorKind::Fatal,
            "ZONE_RESOURCE_POOL_EXHAUSTED",
        );
        assert_eq!(stockout.origin, Origin::Operation);
        assert!(stockout
            .error
            .message
            .contains("operation operation-1 failed"));
        let detailed = failed_operation("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "stockout");
        assert_eq!(detailed.reason, GceReason::ZoneResourcePoolExhausted);
        let quota = failed_operation(
            "QUOTA_EXCEEDED",
            "Quota 'CPUS' exceeded.  Limit: 24.0 in region us-east1.",
        );
        assert_is(
            &quota,
            GceReason::QuotaExceeded,
            ErrorKind::Fatal,
            "QUOTA_EXCEEDED",
        );
        let busy = failed_operation("RESOURCE_NOT_READY", "The resource is not ready");
        assert_is(
            &busy,
            GceReason::ResourceNotReady,
            ErrorKind::Transient,
            "RESOURCE_NOT_READY",
        );
        let rate = failed_operation(
            "RATE_LIMIT_EXCEEDED",
            "Rate limit exceeded for the zone's instance creations",
        );
        assert_is(
            &rate,
            GceReason::RateLimitExceeded,
            ErrorKind::Throttled,
            "RATE_LIMIT_EXCEEDED",
        );
        let gone = failed_operation("RESOURCE_NOT_FOUND", "The resource was not found");
        assert_is(
            &gone,
            GceReason::NotFound,
            ErrorKind::NotFound,
            "RESOURCE_NOT_FOUND",
        );
        let exists = failed_operation("RESOURCE_ALREADY_EXISTS", "exists");
        assert_is(
            &exists,
            GceReason::AlreadyExists,
            ErrorKind::Fatal,
            "RESOURCE_ALREADY_EXISTS",
        );
    }
}
