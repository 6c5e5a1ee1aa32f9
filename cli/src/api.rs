//! The commands that go through the stackplane api (admin token): replays of Stripe events,
//! operator holds.

use std::time::Duration;

use serde_json::Value;

use crate::error::{CliError, Result};

/// Every call to the api gives up after this long.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Where the api is and the token to call it with.
#[derive(Debug, Clone)]
pub struct ApiTarget {
    pub url: Option<String>,
    pub token: Option<String>,
}

impl ApiTarget {
    /// The base URL, the token, and a client whose every call times out.
    fn parts(&self) -> Result<(&str, &str, reqwest::Client)> {
        let url = self.url.as_deref().ok_or(CliError::ApiUrlMissing)?;
        let token = self.token.as_deref().ok_or(CliError::ApiTokenMissing)?;
        let client = reqwest::Client::builder().timeout(TIMEOUT).build()?;
        Ok((url.trim_end_matches('/'), token, client))
    }
}

/// `GET /api/v1/billing/events?state=failed`: the stored Stripe events that failed, newest first.
pub async fn failed_events(target: &ApiTarget, limit: u32) -> Result<Value> {
    let (url, token, client) = target.parts()?;
    let response = client
        .get(format!("{url}/api/v1/billing/events"))
        .query(&[("state", "failed".to_owned()), ("limit", limit.to_string())])
        .bearer_auth(token)
        .send()
        .await?;
    answer(response).await
}

/// The JSON of a 2xx answer (`null` for an empty one, e.g. 204); any other answer as an
/// error with its body.
async fn answer(response: reqwest::Response) -> Result<Value> {
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        return Err(CliError::Api {
            status: status.as_u16(),
            body,
        });
    }
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&body).map_err(|e| CliError::Api {
        status: status.as_u16(),
        body: format!("not JSON ({e}): {body}"),
    })
}

/// `POST /api/v1/billing/events/{id}/replay`: queues a stored Stripe event to be applied again.
pub async fn replay(target: &ApiTarget, event: &str) -> Result<Value> {
    let (url, token, client) = target.parts()?;
    if event.is_empty() || !event.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(CliError::BadArgument(format!(
            "{event:?} is not a Stripe event id (evt_…)"
        )));
    }
    let id = event;
    let response = client
        .post(format!("{url}/api/v1/billing/events/{id}/replay"))
        .bearer_auth(token)
        .send()
        .await?;
    answer(response).await
}

/// A tenant name as the api accepts it, checked before any call so a typo never reaches it.
fn tenant_path(tenant: &str) -> Result<&str> {
    if stackplane_crds::naming::is_dns_label(tenant) {
        Ok(tenant)
    } else {
        Err(CliError::BadArgument(format!(
            "{tenant:?} is not a tenant name"
        )))
    }
}

/// `PUT /api/v1/tenants/{name}/hold`: holds the tenant (workloads scaled to zero, dedicated
/// instance stopped) until released. The api checks the reason and note and audit-logs the call.
pub async fn hold(
    target: &ApiTarget,
    tenant: &str,
    reason: &str,
    note: Option<&str>,
) -> Result<Value> {
    let tenant = tenant_path(tenant)?;
    if reason.trim().is_empty() {
        return Err(CliError::BadArgument(
            "--reason is required, e.g. --reason abuse".into(),
        ));
    }
    let (url, token, client) = target.parts()?;
    let response = client
        .put(format!("{url}/api/v1/tenants/{tenant}/hold"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "reason": reason, "note": note }))
        .send()
        .await?;
    answer(response).await
}

/// `DELETE /api/v1/tenants/{name}/hold`: releases the tenant's hold, whoever set it.
pub async fn release(target: &ApiTarget, tenant: &str) -> Result<Value> {
    let tenant = tenant_path(tenant)?;
    let (url, token, client) = target.parts()?;
    let response = client
        .delete(format!("{url}/api/v1/tenants/{tenant}/hold"))
        .bearer_auth(token)
        .send()
        .await?;
    answer(response).await
}
