//! Errors of the cloud step, classified so a reconcile knows whether retrying can help.

use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

/// Whether retrying a failed AWS call can succeed without a change to the spec or account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Throttling, server errors, timeouts, transient state: back off and try again.
    Retryable,
    /// The request itself is wrong (unknown image, bad parameter, no permission, no zone):
    /// the same request fails the same way until someone changes something.
    Terminal,
}

/// Error codes that mean "try again later", whatever their HTTP status.
const RETRYABLE_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
    "PriorRequestNotComplete",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "RequestTimeoutException",
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    // The instance is between states (e.g. stopping); the next reconcile sees the new state.
    "IncorrectInstanceState",
    "IncorrectState",
    // Route53: another change to the zone is in progress.
    "ConcurrentModification",
];

/// Error codes (or prefixes, ending in `.`) that no retry fixes.
const TERMINAL_CODES: &[&str] = &[
    "InvalidAMIID.",
    "InvalidParameterValue",
    "InvalidParameterCombination",
    "InvalidParameter",
    "MissingParameter",
    "UnauthorizedOperation",
    "AuthFailure",
    "AccessDenied",
    "AccessDeniedException",
    "OptInRequired",
    "Blocked",
    "Unsupported",
    "UnsupportedOperation",
    "InvalidInstanceType",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "InvalidBlockDeviceMapping",
    "NoSuchHostedZone",
    "InvalidChangeBatch",
    "InvalidInput",
    "InvalidDomainName",
];

/// Classifies an AWS error by its code and HTTP status. Unknown codes are retried (with
/// backoff) unless they are client errors named `Invalid…`, which by AWS convention describe a
/// request that cannot succeed as it is.
pub fn classify(code: Option<&str>, http_status: Option<u16>) -> Retry {
    if let Some(code) = code {
        if RETRYABLE_CODES.contains(&code) {
            return Retry::Retryable;
        }
        let terminal = TERMINAL_CODES.iter().any(|t| match t.strip_suffix('.') {
            Some(prefix) => code.starts_with(prefix) && code.len() > prefix.len(),
            None => code == *t,
        });
        if terminal {
            return Retry::Terminal;
        }
    }
    match http_status {
        Some(s) if s >= 500 || s == 429 => Retry::Retryable,
        Some(s) if (400..500).contains(&s) && code.is_some_and(|c| c.starts_with("Invalid")) => {
            Retry::Terminal
        }
        _ => Retry::Retryable,
    }
}

/// Why the cloud step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    /// AWS rejected a request that will fail the same way until the spec or account changes.
    #[error("{operation}: {code}: {message}")]
    Terminal {
        operation: &'static str,
        code: String,
        message: String,
    },
    /// A transient failure (throttling, server error, timeout, network): retried with backoff.
    #[error("{operation}: {code}: {message} (will retry)")]
    Retryable {
        operation: &'static str,
        code: String,
        message: String,
    },
    /// AWS answered without a field the controller needs (e.g. an instance without an id).
    #[error("{operation}: the response has no {what}")]
    Incomplete {
        operation: &'static str,
        what: &'static str,
    },
    /// The platform's configuration cannot be turned into a request (e.g. a record name that
    /// is not a valid DNS name).
    #[error("{0}")]
    Config(String),
    /// Another tenant holds the DNS record of this tenant's subdomain (its ownership record
    /// says so): this tenant makes no DNS change until the name is free or its subdomain changes.
    #[error("{record} is held by {owner}: no DNS change for this tenant (choose another spec.subdomain)")]
    SubdomainTaken { record: String, owner: String },
    /// The API server, asked right before a create, says the tenant (or backup) is gone, is
    /// being deleted, or is another object of the same name: nothing is created for it.
    #[error("not creating {operation}: {why}")]
    OwnerGone {
        operation: &'static str,
        why: String,
    },
    /// Asking the API server failed or timed out.
    #[error("{operation}: {message} (will retry)")]
    Kube {
        operation: &'static str,
        message: String,
    },
}

impl CloudError {
    /// A short, stable category: the metric label and event reason.
    pub fn metric_label(&self) -> &'static str {
        match self {
            CloudError::Terminal { .. } => "aws_terminal",
            CloudError::Retryable { .. } => "aws_retryable",
            CloudError::Incomplete { .. } => "aws_incomplete",
            CloudError::Config(_) => "cloud_config",
            CloudError::SubdomainTaken { .. } => "subdomain_taken",
            CloudError::OwnerGone { .. } => "owner_gone",
            CloudError::Kube { .. } => "cloud_kube",
        }
    }

    /// The reason of the `CloudReady=False` condition and of the Warning Event.
    pub fn reason(&self) -> &'static str {
        match self {
            CloudError::SubdomainTaken { .. } => "SubdomainTaken",
            CloudError::OwnerGone { .. } => "TenantGone",
            _ => match self.retry() {
                Retry::Terminal => "CloudError",
                Retry::Retryable => "CloudRetrying",
            },
        }
    }

    /// The operation that failed, for messages of other modules.
    pub fn operation(&self) -> &'static str {
        match self {
            CloudError::Terminal { operation, .. }
            | CloudError::Retryable { operation, .. }
            | CloudError::Incomplete { operation, .. }
            | CloudError::OwnerGone { operation, .. }
            | CloudError::Kube { operation, .. } => operation,
            CloudError::Config(_) => "config",
            CloudError::SubdomainTaken { .. } => "ChangeResourceRecordSets",
        }
    }

    /// Whether the tenant's spec itself cannot be carried out as it stands (another tenant holds
    /// the subdomain it asks for): the tenant is then not `Synced` either, not only not
    /// `CloudReady`, because nothing the controller retries will make it so.
    pub fn spec_cannot_be_applied(&self) -> bool {
        matches!(self, CloudError::SubdomainTaken { .. })
    }

    /// Whether the same request can succeed later without a change.
    pub fn retry(&self) -> Retry {
        match self {
            CloudError::Terminal { .. }
            | CloudError::Config(_)
            | CloudError::SubdomainTaken { .. } => Retry::Terminal,
            // OwnerGone: the next reconcile sees the deletion (and runs the cleanup) or nothing.
            CloudError::Retryable { .. }
            | CloudError::Incomplete { .. }
            | CloudError::OwnerGone { .. }
            | CloudError::Kube { .. } => Retry::Retryable,
        }
    }

    /// The AWS error code, when AWS gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            CloudError::Terminal { code, .. } | CloudError::Retryable { code, .. } => Some(code),
            _ => None,
        }
    }

    /// A classified error from an SDK call's failure.
    pub fn from_sdk<E>(operation: &'static str, error: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let (code, message, status) = match error {
            SdkError::ServiceError(e) => (
                e.err().code().map(str::to_owned),
                e.err()
                    .message()
                    .map(str::to_owned)
                    .unwrap_or_else(|| e.err().to_string()),
                Some(e.raw().status().as_u16()),
            ),
            SdkError::TimeoutError(_) => (
                Some("Timeout".to_owned()),
                "the request timed out".to_owned(),
                None,
            ),
            SdkError::DispatchFailure(e) => {
                (Some("DispatchFailure".to_owned()), format!("{e:?}"), None)
            }
            SdkError::ResponseError(e) => (
                Some("ResponseError".to_owned()),
                format!("{e:?}"),
                Some(e.raw().status().as_u16()),
            ),
            // A request the SDK could not even build: a bug or bad input, never fixed by retrying.
            SdkError::ConstructionFailure(e) => {
                return CloudError::Terminal {
                    operation,
                    code: "ConstructionFailure".to_owned(),
                    message: format!("{e:?}"),
                }
            }
            other => (Some("Unknown".to_owned()), other.to_string(), None),
        };
        let code = code.unwrap_or_else(|| "Unknown".to_owned());
        match classify(Some(&code), status) {
            Retry::Terminal => CloudError::Terminal {
                operation,
                code,
                message,
            },
            Retry::Retryable => CloudError::Retryable {
                operation,
                code,
                message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_server_errors_are_retryable() {
        assert_eq!(
            classify(Some("RequestLimitExceeded"), Some(503)),
            Retry::Retryable
        );
        assert_eq!(classify(Some("Throttling"), Some(400)), Retry::Retryable);
        assert_eq!(classify(Some("InternalError"), Some(500)), Retry::Retryable);
        assert_eq!(classify(Some("SomethingNew"), Some(502)), Retry::Retryable);
        assert_eq!(classify(Some("Timeout"), None), Retry::Retryable);
        assert_eq!(classify(None, Some(429)), Retry::Retryable);
        assert_eq!(
            classify(Some("IncorrectInstanceState"), Some(400)),
            Retry::Retryable
        );
        assert_eq!(
            classify(Some("PriorRequestNotComplete"), Some(400)),
            Retry::Retryable
        );
    }

    #[test]
    fn bad_requests_are_terminal() {
        for code in [
            "InvalidAMIID.NotFound",
            "InvalidAMIID.Malformed",
            "InvalidParameterValue",
            "UnauthorizedOperation",
            "AuthFailure",
            "NoSuchHostedZone",
            "InvalidChangeBatch",
        ] {
            assert_eq!(classify(Some(code), Some(400)), Retry::Terminal, "{code}");
        }
        // An unknown "Invalid…" client error is terminal, an unknown other one is retried.
        assert_eq!(
            classify(Some("InvalidSomething"), Some(400)),
            Retry::Terminal
        );
        assert_eq!(classify(Some("Odd"), Some(400)), Retry::Retryable);
        // A prefix alone is not a code.
        assert_eq!(classify(Some("InvalidAMIID"), None), Retry::Retryable);
    }

    #[test]
    fn labels_and_codes() {
        let e = CloudError::Terminal {
            operation: "RunInstances",
            code: "InvalidAMIID.NotFound".into(),
            message: "no such image".into(),
        };
        assert_eq!(e.metric_label(), "aws_terminal");
        assert_eq!(e.code(), Some("InvalidAMIID.NotFound"));
        assert_eq!(e.retry(), Retry::Terminal);
        assert_eq!(
            e.to_string(),
            "RunInstances: InvalidAMIID.NotFound: no such image"
        );
        let r = CloudError::Incomplete {
            operation: "RunInstances",
            what: "instance id",
        };
        assert_eq!(r.retry(), Retry::Retryable);
    }
}
