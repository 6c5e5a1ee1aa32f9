//! The plugin's Kubernetes client: kube's stack, from a kubeconfig or the in-cluster account,
//! with a time limit (`--timeout`) on every request, counted to the response's headers, as the
//! controller's client has on each of its requests that is not a watch. The plugin never
//! watches, so every request is bounded: a hung API server fails the command instead of
//! holding it forever.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use kube::client::ClientBuilder;
use kube::Client;

use crate::error::{CliError, Result};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client of `kubeconfig` (else `KUBECONFIG`, `~/.kube/config` or the in-cluster account),
/// each request limited to `timeout`.
pub async fn connect(kubeconfig: Option<&Path>, timeout: Duration) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let unreadable = |e: &dyn std::fmt::Display| {
                CliError::NoKubeconfig(format!("{}: {e}", path.display()))
            };
            let kubeconfig =
                kube::config::Kubeconfig::read_from(path).map_err(|e| unreadable(&e))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| unreadable(&e))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| CliError::NoKubeconfig(e.to_string()))?,
    };
    Ok(build(config, timeout)?)
}

/// The client of `config`, each request limited to `timeout`.
pub fn build(config: kube::Config, timeout: Duration) -> Result<Client, kube::Error> {
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&TimeoutLayer { timeout })
        .build())
}

/// Bounds the time to a response's headers of every request.
#[derive(Debug, Clone, Copy)]
struct TimeoutLayer {
    timeout: Duration,
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
struct RequestTimeout<S> {
    inner: S,
    timeout: Duration,
}

/// A request that got no answer in time.
#[derive(Debug, thiserror::Error)]
#[error("no answer from the Kubernetes API server within {}s ({method} {path})", .timeout.as_secs())]
struct Elapsed {
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
        let method = req.method().to_string();
        let path = req.uri().path().to_owned();
        let timeout = self.timeout;
        let response = self.inner.call(req);
        Box::pin(async move {
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

    #[tokio::test]
    async fn a_hung_request_fails_after_the_timeout() {
        let hung = tower::service_fn(|_req: http::Request<()>| {
            std::future::pending::<Result<http::Response<()>, std::convert::Infallible>>()
        });
        let mut svc = tower::Layer::layer(
            &TimeoutLayer {
                timeout: Duration::from_millis(50),
            },
            hung,
        );
        let req = http::Request::get("/apis/stackplane.io/v1alpha1/tenants/acme")
            .body(())
            .expect("req");
        let err = tower::Service::call(&mut svc, req)
            .await
            .expect_err("times out");
        assert!(err.to_string().contains("no answer"), "{err}");
        assert!(err.to_string().contains("GET /apis/"), "{err}");
    }

    #[tokio::test]
    async fn an_answer_in_time_goes_through() {
        let quick = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        });
        let mut svc = tower::Layer::layer(
            &TimeoutLayer {
                timeout: Duration::from_secs(5),
            },
            quick,
        );
        let req = http::Request::get("/api/v1/namespaces")
            .body(())
            .expect("req");
        tower::Service::call(&mut svc, req).await.expect("answered");
    }
}
