//! Metrics of one tenant: uptime from the status history, storage from the volume claims of
//! its namespace, bandwidth from Prometheus when one is configured (otherwise reported as
//! unavailable, never invented).

use crate::extract::Path;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

use super::TenantApi;
use crate::caller::Caller;
use crate::extract::QueryParams;
use crate::http_error::ApiError;

/// Query of `GET /api/v1/tenants/{name}/metrics`.
#[derive(Deserialize, Debug, Default, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// Length of the window: a number and a unit `s`, `m`, `h` or `d` (e.g. `24h`, `30d`);
    /// default `30d`, at most `400d`.
    pub window: Option<String>,
    /// End of the window (RFC 3339); default now.
    pub end: Option<DateTime<Utc>>,
}

/// The longest window.
pub const MAX_WINDOW_DAYS: i64 = 400;

/// `24h`, `30d`, `90m`, `3600s` as a duration.
pub fn parse_window(text: &str) -> Result<Duration, ApiError> {
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("window {text:?} is not a number followed by s, m, h or d (e.g. 24h), at most {MAX_WINDOW_DAYS}d"),
        )
    };
    // By characters: the unit is the last character, whatever its width (`1é` is refused, not
    // split inside `é`).
    let unit = text.chars().last().ok_or_else(bad)?;
    let n = text.strip_suffix(unit).ok_or_else(bad)?;
    if !n.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let n: i64 = n.parse().map_err(|_| bad())?;
    if n <= 0 {
        return Err(bad());
    }
    let seconds = match unit {
        's' => Some(n),
        'm' => n.checked_mul(60),
        'h' => n.checked_mul(3600),
        'd' => n.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(bad)?;
    if seconds > MAX_WINDOW_DAYS * 86_400 {
        return Err(bad());
    }
    Ok(Duration::seconds(seconds))
}

/// A Kubernetes quantity (`10Gi`, `500M`, `1.5Ti`, `1e9`) in bytes; `None` when it is not one.
pub fn quantity_bytes(q: &str) -> Option<f64> {
    let q = q.trim();
    let suffixes: [(&str, f64); 12] = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("Ei", 1024f64.powi(6)),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (suffix, factor) in suffixes {
        if let Some(n) = q.strip_suffix(suffix) {
            return n
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(|v| v * factor);
        }
    }
    if let Some(n) = q.strip_suffix('m') {
        return n.parse::<f64>().ok().map(|v| v / 1000.0);
    }
    q.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The window the figures cover.
#[derive(Serialize, Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub seconds: i64,
}

/// Uptime over the window.
#[derive(Serialize, Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UptimeView {
    /// Fraction of the observed part of the window spent Ready; `null` when no history covers
    /// the window.
    pub fraction: Option<f64>,
    pub ready_seconds: f64,
    /// Part of the window covered by status history (from the first recorded phase on).
    pub observed_seconds: f64,
    /// How uptime is defined.
    pub definition: &'static str,
}

/// One volume claim.
#[derive(Serialize, Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeView {
    pub name: String,
    /// Requested size in bytes.
    pub requested_bytes: Option<f64>,
    /// Provisioned capacity in bytes, once bound.
    pub capacity_bytes: Option<f64>,
    pub phase: Option<String>,
}

/// Storage of the tenant's namespace.
#[derive(Serialize, Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageView {
    pub available: bool,
    /// Why storage could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub requested_bytes: f64,
    pub capacity_bytes: f64,
    pub volumes: Vec<VolumeView>,
}

/// Bandwidth over the window.
#[derive(Serialize, Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BandwidthView {
    pub available: bool,
    /// Why bandwidth is not available (no metrics source configured, query failed, no data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<f64>,
}

/// The time the tenant's dedicated instance ran over the window (what EC2 bills compute for).
#[derive(Serialize, Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceTimeView {
    /// Seconds of the window the instance was `running`; 0 for a tier without one.
    pub running_seconds: f64,
    /// The same in hours.
    pub hours: f64,
    pub definition: &'static str,
}

const INSTANCE_TIME_DEFINITION: &str = "time of the observed part of the window the dedicated instance was running (a stopped instance, e.g. of a suspended tenant, bills no compute), from the status history";

/// Metrics of one tenant.
#[derive(Serialize, Debug, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantMetrics {
    pub tenant: String,
    pub window: Window,
    pub uptime: UptimeView,
    pub instance: InstanceTimeView,
    pub storage: StorageView,
    pub bandwidth: BandwidthView,
}

const UPTIME_DEFINITION: &str = "fraction of the observed part of the window spent in phase Ready; the window is observed from the tenant's first recorded phase on, time before it counts neither as up nor as down";

/// Metrics of one tenant over a window.
#[utoipa::path(get, path = "/api/v1/tenants/{name}/metrics", tag = "tenants",
    params(("name" = String, Path, description = "Tenant name"), MetricsQuery),
    security(("bearer" = [])),
    responses((status = 200, body = TenantMetrics), (status = 400, body = crate::http_error::ErrorBody),
        (status = 401, body = crate::http_error::ErrorBody), (status = 403, body = crate::http_error::ErrorBody), (status = 404, body = crate::http_error::ErrorBody)))]
pub async fn tenant_metrics(
    State(api): State<Arc<TenantApi>>,
    caller: Caller,
    Path(name): Path<String>,
    QueryParams(query): QueryParams<MetricsQuery>,
) -> Result<Json<TenantMetrics>, ApiError> {
    let tenant = api.visible_tenant(&caller, &name)?;
    let length = parse_window(query.window.as_deref().unwrap_or("30d"))?;
    let end = query.end.unwrap_or_else(Utc::now);
    // Checked: an `end` near the ends of time must be refused, never overflow.
    let start = end.checked_sub_signed(length).ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "end minus window is out of range",
        )
    })?;
    let (uptime, running_seconds) = crate::history::tenant_uptime(&api.db, &name, start, end)
        .await
        .map_err(|error| {
            tracing::error!(tenant = %name, %error, "reading status history");
            ApiError::internal("cannot read the status history")
        })?;
    let namespace = tenant
        .status
        .as_ref()
        .and_then(|s| s.namespace.clone())
        .unwrap_or_else(|| stackplane_crds::naming::namespace_name(&name));
    let storage = storage(&api.kube, &namespace).await;
    let bandwidth = match &api.bandwidth {
        None => BandwidthView {
            available: false,
            reason: Some("no metrics source is configured (STACKPLANE_PROMETHEUS_URL)".to_owned()),
            bytes: None,
        },
        Some(source) => match source.bytes(&name, &namespace, length, end).await {
            Ok(Some(bytes)) => BandwidthView {
                available: true,
                reason: None,
                bytes: Some(bytes),
            },
            Ok(None) => BandwidthView {
                available: false,
                reason: Some("the metrics source has no data for this tenant".to_owned()),
                bytes: None,
            },
            Err(reason) => {
                tracing::warn!(tenant = %name, %reason, "bandwidth query");
                BandwidthView {
                    available: false,
                    reason: Some(reason),
                    bytes: None,
                }
            }
        },
    };
    Ok(Json(TenantMetrics {
        tenant: name,
        window: Window {
            start,
            end,
            seconds: length.num_seconds(),
        },
        uptime: UptimeView {
            fraction: uptime.fraction(),
            ready_seconds: uptime.ready_seconds,
            observed_seconds: uptime.observed_seconds,
            definition: UPTIME_DEFINITION,
        },
        instance: InstanceTimeView {
            running_seconds,
            hours: running_seconds / 3600.0,
            definition: INSTANCE_TIME_DEFINITION,
        },
        storage,
        bandwidth,
    }))
}

async fn storage(kube: &kube::Client, namespace: &str) -> StorageView {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(kube.clone(), namespace);
    match api.list(&ListParams::default()).await {
        Ok(list) => {
            let volumes: Vec<VolumeView> = list
                .items
                .iter()
                .map(|pvc| {
                    let storage_of = |m: Option<
                        &std::collections::BTreeMap<
                            String,
                            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
                        >,
                    >| {
                        m.and_then(|m| m.get("storage"))
                            .and_then(|q| quantity_bytes(&q.0))
                    };
                    VolumeView {
                        name: pvc.name_any(),
                        requested_bytes: storage_of(
                            pvc.spec
                                .as_ref()
                                .and_then(|s| s.resources.as_ref())
                                .and_then(|r| r.requests.as_ref()),
                        ),
                        capacity_bytes: storage_of(
                            pvc.status.as_ref().and_then(|s| s.capacity.as_ref()),
                        ),
                        phase: pvc.status.as_ref().and_then(|s| s.phase.clone()),
                    }
                })
                .collect();
            StorageView {
                available: true,
                reason: None,
                requested_bytes: volumes.iter().filter_map(|v| v.requested_bytes).sum(),
                capacity_bytes: volumes.iter().filter_map(|v| v.capacity_bytes).sum(),
                volumes,
            }
        }
        Err(error) => {
            tracing::warn!(%namespace, %error, "listing volume claims");
            StorageView {
                available: false,
                reason: Some(format!(
                    "cannot list the volume claims of {namespace}: {error}"
                )),
                requested_bytes: 0.0,
                capacity_bytes: 0.0,
                volumes: Vec::new(),
            }
        }
    }
}

/// A Prometheus server and the PromQL template of a tenant's bandwidth.
#[derive(Debug)]
pub struct BandwidthSource {
    base_url: String,
    query_template: String,
    http: reqwest::Client,
}

impl BandwidthSource {
    pub fn new(base_url: String, query_template: String) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            query_template,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    /// The query for one tenant and window.
    pub fn query(&self, tenant: &str, namespace: &str, window: Duration) -> String {
        self.query_template
            .replace("{namespace}", namespace)
            .replace("{tenant}", tenant)
            .replace("{window}", &format!("{}s", window.num_seconds()))
    }

    /// Bytes over the window ending at `end`: `Ok(None)` when Prometheus has no sample.
    pub async fn bytes(
        &self,
        tenant: &str,
        namespace: &str,
        window: Duration,
        end: DateTime<Utc>,
    ) -> Result<Option<f64>, String> {
        let query = self.query(tenant, namespace, window);
        let response = self
            .http
            .get(format!("{}/api/v1/query", self.base_url))
            .query(&[
                ("query", query.as_str()),
                ("time", &end.timestamp().to_string()),
            ])
            .send()
            .await
            .map_err(|e| format!("the metrics source is unreachable: {e}"))?;
        let status = response.status();
        let body: PromResponse = response.json().await.map_err(|e| {
            format!("the metrics source answered {status} with an unreadable body: {e}")
        })?;
        if body.status != "success" {
            return Err(format!(
                "the metrics source refused the query: {}",
                body.error.unwrap_or_default()
            ));
        }
        let Some(data) = body.data else {
            return Ok(None);
        };
        let value = match data.result_type.as_str() {
            "vector" => data
                .result
                .as_array()
                .and_then(|r| r.first())
                .and_then(|s| s.get("value"))
                .cloned(),
            "scalar" => Some(data.result.clone()),
            other => return Err(format!("the bandwidth query gives a {other}, not a number")),
        };
        let Some(value) = value else {
            return Ok(None);
        };
        value
            .get(1)
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite())
            .map(Some)
            .ok_or_else(|| "the metrics source answered a value that is not a number".to_owned())
    }
}

#[derive(Deserialize)]
struct PromResponse {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<PromData>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromData {
    result_type: String,
    result: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        assert_eq!(parse_window("24h").unwrap(), Duration::hours(24));
        assert_eq!(parse_window("30d").unwrap(), Duration::days(30));
        assert_eq!(parse_window("90m").unwrap(), Duration::minutes(90));
        assert_eq!(parse_window("10s").unwrap(), Duration::seconds(10));
        for bad in [
            "",
            "h",
            "0h",
            "-1h",
            "1w",
            "1.5h",
            "401d",
            "99999999999999999d",
            "1é",
            "é",
            "é1d",
            "+1d",
            "1\u{0301}",
        ] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        /// No input panics the window parser; what it accepts is a positive duration within
        /// the limit.
        #[test]
        fn any_window_text_is_parsed_or_refused(text in "\\PC{0,12}") {
            if let Ok(d) = parse_window(&text) {
                proptest::prop_assert!(d > Duration::zero());
                proptest::prop_assert!(d <= Duration::days(MAX_WINDOW_DAYS));
            }
        }

        /// Every well-formed window within the limit is accepted with its length.
        #[test]
        fn well_formed_windows_are_accepted(n in 1i64..=400, unit in proptest::sample::select(vec!['s', 'm', 'h', 'd'])) {
            let secs = match unit { 's' => n, 'm' => n * 60, 'h' => n * 3600, _ => n * 86_400 };
            let parsed = parse_window(&format!("{n}{unit}"));
            proptest::prop_assert_eq!(parsed.ok(), Some(Duration::seconds(secs)));
        }

        /// Quantities from any text never panic.
        #[test]
        fn any_quantity_text_is_parsed_or_refused(text in "\\PC{0,16}") {
            let _ = quantity_bytes(&text);
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("10Gi"), Some(10.0 * 1024f64.powi(3)));
        assert_eq!(quantity_bytes("500M"), Some(5e8));
        assert_eq!(quantity_bytes("1024"), Some(1024.0));
        assert_eq!(quantity_bytes("1.5Ki"), Some(1536.0));
        assert_eq!(quantity_bytes("1e3"), Some(1000.0));
        assert_eq!(quantity_bytes("lots"), None);
    }

    #[test]
    fn query_template_is_filled() {
        let s = BandwidthSource::new(
            "http://p/".into(),
            "x{namespace=\"{namespace}\",t=\"{tenant}\"}[{window}]".into(),
        );
        assert_eq!(
            s.query("a", "tenant-a", Duration::hours(1)),
            "x{namespace=\"tenant-a\",t=\"a\"}[3600s]"
        );
    }
}
