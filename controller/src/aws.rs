//! The AWS SDK configuration shared by every AWS client of the controller (EC2, Route53).
//!
//! Region, endpoint and credentials come from the SDK's standard chain (`AWS_REGION`,
//! `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, profiles, IRSA), so tests point
//! it at moto with `AWS_ENDPOINT_URL`. The HTTPS client is built with rustls on ring: the SDK's
//! default client would bring aws-lc as a second TLS provider into a tree that already uses ring.

/// Loads the SDK configuration from the environment.
pub async fn sdk_config() -> aws_config::SdkConfig {
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https)
        .load()
        .await
}
