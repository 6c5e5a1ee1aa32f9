//! Tenant status, answered from the reflector cache: one tenant, the list (filters,
//! pagination), and per-platform counts.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::extract::Path;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use serde::{Deserialize, Serialize};
use stackplane_crds::{Platform, Tenant, TenantPhase};
use utoipa::{IntoParams, ToSchema};

use super::TenantApi;
use crate::caller::{not_found_tenant, Caller};
use crate::extract::{tenant_name, QueryParams};
use crate::http_error::ApiError;

/// A status condition (`Ready`, `Synced`, `CloudReady`, `Paused`, `PaymentOverdue`).
#[derive(Serialize, Debug, Clone, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: DateTime<Utc>,
    pub observed_generation: Option<i64>,
}

/// Readiness of one component.
#[derive(Serialize, Debug, Clone, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentView {
    pub name: String,
    pub ready_replicas: i32,
    pub replicas: i32,
}

/// The dedicated EC2 instance of a tenant.
#[derive(Serialize, Debug, Clone, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    pub id: String,
    #[serde(rename = "type")]
    pub instance_type: String,
    pub state: String,
    pub public_ip: Option<String>,
}

/// Status of one tenant.
#[derive(Serialize, Debug, Clone, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantView {
    pub name: String,
    pub platform: String,
    pub tier: String,
    /// `Pending`, `Provisioning`, `Ready`, `Degraded`, `Suspended`, `Cancelled`, `Deleting`,
    /// `Failed`; absent until the controller first wrote a status.
    pub phase: Option<String>,
    pub conditions: Vec<ConditionView>,
    pub namespace: Option<String>,
    /// URL the stack is served at.
    pub endpoint: Option<String>,
    /// Host label under the platform's domain.
    pub subdomain: String,
    pub components: Vec<ComponentView>,
    pub instance: Option<InstanceView>,
    /// Fully qualified name of the tenant's DNS record.
    pub dns_record: Option<String>,
    pub ready_since: Option<DateTime<Utc>>,
    pub suspended: bool,
    pub paused: bool,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub created_at: Option<DateTime<Utc>>,
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
}

/// A Kubernetes time as a chrono time (the API's JSON and Postgres speak chrono).
pub fn time(t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

impl TenantView {
    pub fn of(tenant: &Tenant) -> Self {
        let status = tenant.status.clone().unwrap_or_default();
        TenantView {
            name: tenant.name_any(),
            platform: tenant.spec.platform.clone(),
            tier: tenant.spec.tier.clone(),
            phase: status.phase.map(|p| p.as_str().to_owned()),
            conditions: status
                .conditions
                .into_iter()
                .map(|c| ConditionView {
                    type_: c.type_,
                    status: c.status,
                    reason: c.reason,
                    message: c.message,
                    last_transition_time: time(&c.last_transition_time),
                    observed_generation: c.observed_generation,
                })
                .collect(),
            namespace: status.namespace,
            endpoint: status.endpoint,
            subdomain: tenant.subdomain().to_owned(),
            components: status
                .components
                .into_iter()
                .map(|c| ComponentView {
                    name: c.name,
                    ready_replicas: c.ready_replicas,
                    replicas: c.replicas,
                })
                .collect(),
            instance: status.instance.map(|i| InstanceView {
                id: i.id,
                instance_type: i.instance_type,
                state: i.state,
                public_ip: i.public_ip,
            }),
            dns_record: status.dns_record,
            ready_since: status.ready_since.as_ref().map(time),
            suspended: tenant.spec.suspended,
            paused: tenant.spec.paused,
            cancelled_at: tenant.spec.cancelled_at.as_ref().map(time),
            created_at: tenant.metadata.creation_timestamp.as_ref().map(time),
            generation: tenant.metadata.generation,
            observed_generation: status.observed_generation,
        }
    }
}

impl TenantApi {
    /// The cached Tenant `name`, if the caller may see it; otherwise the same 404 as for a
    /// tenant that does not exist.
    pub fn visible_tenant(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<std::sync::Arc<Tenant>, ApiError> {
        let name = tenant_name(name)?;
        caller.may_read(name)?;
        self.tenants
            .get(&ObjectRef::new(name))
            .ok_or_else(|| not_found_tenant(name))
    }

    /// The cached Tenant `name`, if the caller may read its status: as
    /// [`TenantApi::visible_tenant`], and for a dashboard token the tenants of the customers it
    /// checked out. Any other answers the same 404 as a tenant that does not exist.
    pub async fn status_visible_tenant(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<std::sync::Arc<Tenant>, ApiError> {
        if !matches!(caller, Caller::Dashboard { .. }) {
            return self.visible_tenant(caller, name);
        }
        let name = tenant_name(name)?;
        let tenant = self
            .tenants
            .get(&ObjectRef::new(name))
            .ok_or_else(|| not_found_tenant(name))?;
        let customer = tenant.spec.customer.stripe_customer_id.as_deref();
        caller
            .may_read_customer_tenant(&self.db, name, customer)
            .await?;
        Ok(tenant)
    }
}

/// Status of one tenant (admin; its tenant token; a dashboard token for the tenants of the
/// customers it checked out).
#[utoipa::path(get, path = "/api/v1/tenants/{name}", tag = "tenants",
    params(("name" = String, Path, description = "Tenant name")),
    security(("bearer" = [])),
    responses((status = 200, body = TenantView), (status = 400, body = crate::http_error::ErrorBody),
        (status = 401, body = crate::http_error::ErrorBody), (status = 404, body = crate::http_error::ErrorBody)))]
pub async fn get_tenant(
    State(api): State<Arc<TenantApi>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = api.status_visible_tenant(&caller, &name).await?;
    let body = api
        .rendered
        .body(&tenant, || api.tenants.len())
        .map_err(|error| {
            tracing::error!(tenant = %name, %error, "rendering a tenant's status");
            ApiError::internal("cannot render the tenant's status")
        })?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// Filters and page of `GET /api/v1/tenants`.
#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only tenants of this platform.
    pub platform: Option<String>,
    /// Only tenants in this phase.
    pub phase: Option<String>,
    /// Only tenants on this tier.
    pub tier: Option<String>,
    /// Page size (1 to 500, default 100).
    pub limit: Option<usize>,
    /// The `continue` of the previous page.
    #[serde(rename = "continue")]
    #[param(rename = "continue")]
    pub continue_: Option<String>,
}

/// Default and largest page sizes.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 500;

/// One page of tenants, ordered by name.
#[derive(Serialize, Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantList {
    pub items: Vec<TenantView>,
    /// Pass as `continue` to get the next page; absent on the last page. Pages are cut by name,
    /// so tenants created or deleted between pages never shift others out of the listing.
    #[serde(rename = "continue")]
    pub continue_: Option<String>,
    /// How many tenants match the filters, over all pages.
    pub total: usize,
}

fn phase_filter(phase: Option<&str>) -> Result<Option<TenantPhase>, ApiError> {
    phase
        .map(|p| {
            TenantPhase::ALL
                .into_iter()
                .find(|known| known.as_str() == p)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_query",
                        format!("unknown phase {p:?}"),
                    )
                })
        })
        .transpose()
}

/// The page of `tenants` that `query` selects. Pure: sorting, filtering and cutting.
pub fn page(
    mut tenants: Vec<std::sync::Arc<Tenant>>,
    query: &ListQuery,
) -> Result<TenantList, ApiError> {
    let phase = phase_filter(query.phase.as_deref())?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be between 1 and {MAX_LIMIT}"),
        ));
    }
    if let Some(after) = &query.continue_ {
        tenant_name(after).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "invalid continue token",
            )
        })?;
    }
    tenants.retain(|t| {
        query
            .platform
            .as_deref()
            .is_none_or(|p| t.spec.platform == p)
            && query.tier.as_deref().is_none_or(|p| t.spec.tier == p)
            && phase.is_none_or(|p| t.status.as_ref().and_then(|s| s.phase) == Some(p))
    });
    tenants.sort_by_key(|t| t.name_any());
    let total = tenants.len();
    let start = match &query.continue_ {
        Some(after) => tenants.partition_point(|t| t.name_any().as_str() <= after.as_str()),
        None => 0,
    };
    let items: Vec<TenantView> = tenants[start..]
        .iter()
        .take(limit)
        .map(|t| TenantView::of(t))
        .collect();
    let continue_ = (start + items.len() < total)
        .then(|| items.last().map(|t| t.name.clone()))
        .flatten();
    Ok(TenantList {
        items,
        continue_,
        total,
    })
}

/// Every tenant (admin): filter by platform, phase and tier; pages ordered by name.
#[utoipa::path(get, path = "/api/v1/tenants", tag = "tenants", params(ListQuery),
    security(("bearer" = [])),
    responses((status = 200, body = TenantList), (status = 400, body = crate::http_error::ErrorBody),
        (status = 401, body = crate::http_error::ErrorBody), (status = 403, body = crate::http_error::ErrorBody)))]
pub async fn list_tenants(
    State(api): State<Arc<TenantApi>>,
    caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<TenantList>, ApiError> {
    caller.require_admin()?;
    page(api.tenants.state(), &query).map(Json)
}

/// Tenants of one platform by phase and by tier.
#[derive(Serialize, Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformSummary {
    pub platform: String,
    pub total: usize,
    /// Every phase, with 0 for phases no tenant is in; `Unknown` counts tenants without a
    /// status yet.
    pub by_phase: BTreeMap<String, usize>,
    pub by_tier: BTreeMap<String, usize>,
}

/// Counts of the tenants of `platform`. Pure.
pub fn summarize(platform: &str, tenants: &[std::sync::Arc<Tenant>]) -> PlatformSummary {
    let mut by_phase: BTreeMap<String, usize> = TenantPhase::ALL
        .iter()
        .map(|p| (p.as_str().to_owned(), 0))
        .collect();
    let mut by_tier = BTreeMap::new();
    let mut total = 0;
    for t in tenants.iter().filter(|t| t.spec.platform == platform) {
        total += 1;
        let phase = t
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .map_or("Unknown", |p| p.as_str());
        *by_phase.entry(phase.to_owned()).or_default() += 1;
        *by_tier.entry(t.spec.tier.clone()).or_default() += 1;
    }
    PlatformSummary {
        platform: platform.to_owned(),
        total,
        by_phase,
        by_tier,
    }
}

/// Tenants of a platform by phase and by tier (admin).
#[utoipa::path(get, path = "/api/v1/platforms/{name}/summary", tag = "tenants",
    params(("name" = String, Path, description = "Platform name")),
    security(("bearer" = [])),
    responses((status = 200, body = PlatformSummary), (status = 401, body = crate::http_error::ErrorBody),
        (status = 403, body = crate::http_error::ErrorBody), (status = 404, body = crate::http_error::ErrorBody)))]
pub async fn platform_summary(
    State(api): State<Arc<TenantApi>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<PlatformSummary>, ApiError> {
    caller.require_admin()?;
    let name = tenant_name(&name)?;
    let summary = summarize(name, &api.tenants.state());
    if summary.total == 0 {
        // Zero tenants is an answer for a platform that exists, not for a typo.
        read_platform(&api, name).await?;
    }
    Ok(Json(summary))
}

/// The rollout of a Platform's newest revision, as `Platform.status` records it.
#[derive(Serialize, Debug, Clone, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformRollout {
    pub platform: String,
    /// The newest revision whose rollout completed (where new tenants start).
    pub current_revision: Option<String>,
    /// The revision being rolled out.
    pub update_revision: Option<String>,
    /// `Platform.status.rollout`: revision, wave, counts, phase and message.
    #[schema(value_type = Option<Object>)]
    pub rollout: Option<stackplane_crds::RolloutStatus>,
}

/// `GET /api/v1/platforms/{name}/rollout`: where the rollout of the platform's newest revision
/// stands (admin only).
#[utoipa::path(get, path = "/api/v1/platforms/{name}/rollout", tag = "tenants",
    params(("name" = String, Path, description = "Platform name")),
    security(("bearer" = [])),
    responses((status = 200, body = PlatformRollout), (status = 401, body = crate::http_error::ErrorBody),
        (status = 403, body = crate::http_error::ErrorBody), (status = 404, body = crate::http_error::ErrorBody)))]
pub async fn platform_rollout(
    State(api): State<Arc<TenantApi>>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<PlatformRollout>, ApiError> {
    caller.require_admin()?;
    let name = tenant_name(&name)?;
    let platform = read_platform(&api, name).await?;
    let status = platform.status.unwrap_or_default();
    Ok(Json(PlatformRollout {
        platform: name.to_owned(),
        current_revision: status.current_revision,
        update_revision: status.update_revision,
        rollout: status.rollout,
    }))
}

/// The Platform `name` from the API server; 404 when there is none.
async fn read_platform(api: &TenantApi, name: &str) -> Result<Platform, ApiError> {
    Api::<Platform>::all(api.kube.clone())
        .get_opt(name)
        .await
        .map_err(|error| {
            tracing::error!(platform = %name, %error, "reading a Platform");
            ApiError::internal("cannot read the Platform")
        })?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no platform named {name:?}"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stackplane_crds::{TenantSpec, TenantStatus};
    use std::sync::Arc;

    fn tenant(name: &str, platform: &str, tier: &str, phase: Option<TenantPhase>) -> Arc<Tenant> {
        let mut t = Tenant::new(name, TenantSpec::new(platform, tier));
        t.status = phase.map(|p| TenantStatus {
            phase: Some(p),
            ..Default::default()
        });
        Arc::new(t)
    }

    #[test]
    fn pages_are_ordered_by_name_and_continue() {
        let all: Vec<_> = ["d", "a", "c", "b", "e"]
            .iter()
            .map(|n| tenant(n, "p", "s", Some(TenantPhase::Ready)))
            .collect();
        let q = |c: Option<&str>| ListQuery {
            limit: Some(2),
            continue_: c.map(str::to_owned),
            ..Default::default()
        };
        let p1 = page(all.clone(), &q(None)).unwrap();
        assert_eq!(
            p1.items.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(p1.total, 5);
        let p2 = page(all.clone(), &q(p1.continue_.as_deref())).unwrap();
        assert_eq!(
            p2.items.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["c", "d"]
        );
        let p3 = page(all, &q(p2.continue_.as_deref())).unwrap();
        assert_eq!(
            p3.items.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["e"]
        );
        assert_eq!(p3.continue_, None);
    }

    #[test]
    fn filters_and_bad_queries() {
        let all = vec![
            tenant("a", "p", "starter", Some(TenantPhase::Ready)),
            tenant("b", "p", "pro", Some(TenantPhase::Degraded)),
            tenant("c", "q", "starter", Some(TenantPhase::Ready)),
            tenant("d", "p", "starter", None),
        ];
        let q = ListQuery {
            platform: Some("p".into()),
            phase: Some("Ready".into()),
            ..Default::default()
        };
        let names: Vec<_> = page(all.clone(), &q)
            .unwrap()
            .items
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["a"]);
        let q = ListQuery {
            phase: Some("Sleeping".into()),
            ..Default::default()
        };
        assert_eq!(
            page(all.clone(), &q).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let q = ListQuery {
            limit: Some(0),
            ..Default::default()
        };
        assert_eq!(
            page(all.clone(), &q).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        let s = summarize("p", &all);
        assert_eq!(s.total, 3);
        assert_eq!(s.by_phase["Ready"], 1);
        assert_eq!(s.by_phase["Degraded"], 1);
        assert_eq!(s.by_phase["Unknown"], 1);
        assert_eq!(s.by_phase["Failed"], 0);
        assert_eq!(s.by_tier["starter"], 2);
    }
}
