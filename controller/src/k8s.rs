//! What every Kubernetes call of the reconcilers shares: the field manager they apply with and
//! a time limit, so a hung API server connection fails a reconcile instead of holding one of
//! the controller's workers forever.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use kube::core::NamespaceResourceScope;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A namespaced Kubernetes type the controller reads and writes with typed `Api`s.
pub trait Child:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + k8s_openapi::Resource
    + Serialize
    + DeserializeOwned
    + Clone
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Child for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + Serialize
        + DeserializeOwned
        + Clone
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// Field manager of everything the controller writes (objects and status, by server-side
/// apply). Other writers of the same objects use their own (`stackplane-billing`).
pub const FIELD_MANAGER: &str = "stackplane-controller";

/// Longest a single (non-watch) Kubernetes call of a reconcile may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A Kubernetes call that did not answer within [`CALL_TIMEOUT`].
#[derive(Debug, thiserror::Error)]
#[error("no answer from the Kubernetes API within {0:?}")]
pub struct CallTimedOut(pub Duration);

/// `call` limited to [`CALL_TIMEOUT`]; a timeout is a `kube::Error::Service`, so callers keep
/// their error types.
pub async fn timed<T>(call: impl Future<Output = kube::Result<T>>) -> kube::Result<T> {
    timed_within(CALL_TIMEOUT, call).await
}

/// `call` limited to `limit`.
pub async fn timed_within<T>(
    limit: Duration,
    call: impl Future<Output = kube::Result<T>>,
) -> kube::Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(kube::Error::Service(Box::new(CallTimedOut(limit)))),
    }
}

/// Whether `error` is the API server's 404.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.code == 404)
}

/// Whether `error` is the API server's 409 (a conflict: stale resourceVersion, or a name taken).
pub fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_that_never_answers_times_out() {
        let never = std::future::pending::<kube::Result<()>>();
        let err = timed_within(Duration::from_millis(10), never)
            .await
            .expect_err("must time out");
        assert!(err.to_string().contains("no answer"), "{err}");
    }
}
