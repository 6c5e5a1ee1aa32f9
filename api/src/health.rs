//! The internal listener (`--internal-listen`): `/healthz`, `/readyz` and `/metrics`, for the
//! kubelet and Prometheus only — never routed by the public Service or Ingress.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use sqlx::PgPool;

use crate::metrics::Metrics;
use crate::supervisor::Health;

/// How long each readiness check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// What the internal endpoints look at.
#[derive(Clone)]
pub struct Internal {
    pub db: PgPool,
    /// The Kubernetes API server, when the process uses one.
    pub kube: Option<kube::Client>,
    pub metrics: Metrics,
    pub health: Health,
}

/// Answer of `/healthz`.
#[derive(Serialize)]
pub struct Liveness {
    /// `ok`, or `down` when a background task is not running.
    pub status: &'static str,
    /// The background tasks that are not running.
    pub down: Vec<&'static str>,
}

/// Answer of `/readyz`: each check `ok` or `failed` (the reason is in the log, never here).
#[derive(Serialize)]
pub struct Readiness {
    pub database: &'static str,
    pub kubernetes: &'static str,
}

async fn healthz(State(internal): State<Arc<Internal>>) -> Response {
    let down = internal.health.down();
    let status = if down.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Liveness {
        status: if down.is_empty() { "ok" } else { "down" },
        down,
    };
    (status, Json(body)).into_response()
}

async fn readyz(State(internal): State<Arc<Internal>>) -> Response {
    let database =
        match tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&internal.db))
            .await
        {
            Ok(Ok(_)) => "ok",
            Ok(Err(error)) => {
                tracing::warn!(%error, "readiness: the database does not answer");
                "failed"
            }
            Err(_) => {
                tracing::warn!("readiness: the database timed out");
                "failed"
            }
        };
    let kubernetes = match &internal.kube {
        None => "ok",
        Some(kube) => match tokio::time::timeout(CHECK_TIMEOUT, kube.apiserver_version()).await {
            Ok(Ok(_)) => "ok",
            Ok(Err(error)) => {
                tracing::warn!(%error, "readiness: the Kubernetes API server does not answer");
                "failed"
            }
            Err(_) => {
                tracing::warn!("readiness: the Kubernetes API server timed out");
                "failed"
            }
        },
    };
    let status = if database == "ok" && kubernetes == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            database,
            kubernetes,
        }),
    )
        .into_response()
}

/// `/metrics`: what the registry holds; the billing queue is sampled in the background, so a
/// scrape runs no query.
async fn serve_metrics(State(internal): State<Arc<Internal>>) -> Response {
    match internal.metrics.encode() {
        Ok(text) => (
            [(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The router of the internal listener.
pub fn router(internal: Internal) -> Router {
    let metrics = internal.metrics.clone();
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(serve_metrics))
        // One `Arc`: axum clones the state for every request.
        .with_state(Arc::new(internal));
    crate::hardening::catch_panics(router, &metrics)
}
