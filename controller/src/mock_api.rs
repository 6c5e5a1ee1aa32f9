//! A mocked API server for the executors' unit tests (controller-rs's way, with `tower-test`):
//! a real kube `Client` whose requests reach a scripted answerer instead of a cluster, and the
//! list of every request made, to assert the exact calls.

use http::{Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::Value;
use tokio::task::JoinHandle;

/// One request the client made.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub content_type: Option<String>,
    /// The body as JSON (`Null` when empty).
    pub body: Value,
}

impl Call {
    /// Whether the query names `key=value`.
    pub fn has_param(&self, key: &str, value: &str) -> bool {
        self.query
            .split('&')
            .any(|kv| kv == format!("{key}={value}"))
    }
}

/// A client and the server behind it.
pub fn pair() -> (Client, Server) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), Server { handle })
}

pub struct Server {
    handle: tower_test::mock::Handle<Request<Body>, Response<Body>>,
}

impl Server {
    /// Answers every request with `answer` until the client is dropped; the task returns every
    /// call in order.
    pub fn serve(
        mut self,
        answer: impl Fn(&Call) -> (StatusCode, Value) + Send + 'static,
    ) -> JoinHandle<Vec<Call>> {
        tokio::spawn(async move {
            let mut calls = Vec::new();
            while let Some((request, respond)) = self.handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.expect("request body");
                let call = Call {
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_owned(),
                    query: parts.uri.query().unwrap_or_default().to_owned(),
                    content_type: parts
                        .headers
                        .get(http::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                };
                let (status, json) = answer(&call);
                let response = Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Body::from(serde_json::to_vec(&json).expect("json")))
                    .expect("response");
                respond.send_response(response);
                calls.push(call);
            }
            calls
        })
    }
}

/// The API server's answer for an object that does not exist.
pub fn not_found(call: &Call) -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404,
            "message": format!("{} not found", call.path),
        }),
    )
}

/// The API server's answer to a write refused by a precondition (a stale resourceVersion).
pub fn conflict() -> (StatusCode, Value) {
    (
        StatusCode::CONFLICT,
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "Conflict", "code": 409,
            "message": "the object has been modified",
        }),
    )
}
