//! The AWS SDK configuration shared by every AWS client of the controller (EC2, Route53).
//!
//! Region, endpoint and credentials come from the SDK's standard chain (`AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, profiles, IRSA), so tests point
//! it at moto with `AWS_ENDPOINT_URL`. The HTTPS client is built with rustls on ring: the SDK's
//! default client would bring aws-lc as a second TLS provider into a tree that already uses ring.
//!
//! Every call is bounded: an endpoint that accepts a connection and never answers would
//! otherwise hold a reconcile (and one of the controller's `--concurrency` slots) forever.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;

/// Time limits of every AWS call (`--aws-operation-timeout`, `--aws-attempt-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsTimeouts {
    /// One whole operation, retries included.
    pub operation: Duration,
    /// One attempt (the SDK retries throttling and transient errors within `operation`).
    pub attempt: Duration,
}

impl Default for AwsTimeouts {
    fn default() -> Self {
        AwsTimeouts {
            operation: Duration::from_secs(30),
            attempt: Duration::from_secs(10),
        }
    }
}

impl AwsTimeouts {
    fn config(&self) -> TimeoutConfig {
        TimeoutConfig::builder()
            .operation_timeout(self.operation)
            .operation_attempt_timeout(self.attempt.min(self.operation))
            .connect_timeout(self.attempt.min(self.operation))
            .build()
    }
}

/// Loads the SDK configuration from the environment, with `timeouts` on every call.
pub async fn sdk_config(timeouts: AwsTimeouts) -> aws_config::SdkConfig {
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https)
        .timeout_config(timeouts.config())
        .load()
        .await
}
