//! The controller's Kubernetes client: kube's default stack (from `KUBECONFIG` or the
//! in-cluster service account) with a time limit on every request that is not a watch, so a
//! hung API server fails a reconcile (which is retried) instead of holding it forever. Watches
//! stay open as long as the API server keeps them (kube's own read timeout covers them).

use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;

use kube::client::ClientBuilder;
use kube::Client;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every request that is not a watch this process sent to the API server (the metric
/// `stackplane_controller_kube_requests_total`): what a steady-state resync costs per tenant
/// is read from it.
pub static REQUESTS: LazyLock<prometheus_client::metrics::counter::Counter> =
    LazyLock::new(Default::default);

/// Builds the client with `timeout` on every non-watch request (`--kube-timeout`).
pub async fn build(timeout: Duration) -> Result<Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    build_from(config, timeout)
}

/// [`build`] from a configuration read elsewhere (a kubeconfig named on a command line).
pub fn build_from(config: kube::Config, timeout: Duration) -> Result<Client, kube::Error> {
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&TimeoutLayer { timeout })
        .build())
}

/// Whether a request is a watch (`?watch=true`, `?watch=1`), which is open-ended by design.
fn is_watch(uri: &http::Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1" | "watch=True"))
    })
}

/// Bounds the time to a response's headers of every non-watch request.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    pub timeout: Duration,
}

impl<S> tower::Layer<S> for TimeoutLayer {
    type Service = RequestTimeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestTimeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service [`TimeoutLayer`] makes.
#[derive(Debug, Clone)]
pub struct RequestTimeout<S> {
    inner: S,
    timeout: Duration,
}

/// A request that got no answer in time.
#[derive(Debug, thiserror::Error)]
#[error("no answer from the Kubernetes API server within {}s ({method} {path})", .timeout.as_secs())]
pub struct Elapsed {
    timeout: Duration,
    method: String,
    path: String,
}

impl<S, B> tower::Service<http::Request<B>> for RequestTimeout<S>
where
    S: tower::Service<http::Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let watch = is_watch(req.uri());
        let method = req.method().to_string();
        let path = req.uri().path().to_owned();
        let timeout = self.timeout;
        if !watch {
            REQUESTS.inc();
        }
        let response = self.inner.call(req);
        Box::pin(async move {
            if watch {
                return response.await.map_err(Into::into);
            }
            match tokio::time::timeout(timeout, response).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(Box::new(Elapsed {
                    timeout,
                    method,
                    path,
                }) as BoxError),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_watches_are_unbounded() {
        let uri = |s: &str| s.parse::<http::Uri>().expect("uri");
        assert!(is_watch(&uri(
            "/apis/stackplane.io/v1alpha1/tenants?watch=true&resourceVersion=1"
        )));
        assert!(is_watch(&uri(
            "/api/v1/namespaces?labelSelector=a%3Db&watch=1"
        )));
        assert!(!is_watch(&uri("/apis/stackplane.io/v1alpha1/tenants/acme")));
        assert!(!is_watch(&uri(
            "/api/v1/namespaces?labelSelector=watch%3Dtrue"
        )));
    }

    #[tokio::test]
    async fn a_hung_request_fails_after_the_timeout() {
        let hung = tower::service_fn(|_req: http::Request<()>| async {
            futures::future::pending::<Result<http::Response<()>, std::convert::Infallible>>().await
        });
        let mut svc = tower::Layer::layer(
            &TimeoutLayer {
                timeout: Duration::from_millis(50),
            },
            hung,
        );
        let req = http::Request::get("/api/v1/namespaces/x")
            .body(())
            .expect("req");
        let err = tower::Service::call(&mut svc, req)
            .await
            .expect_err("times out");
        assert!(err.to_string().contains("no answer"), "{err}");
    }
}
