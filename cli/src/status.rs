//! `status <tenant>`: one screen of what a tenant is — phase and conditions, billing, its objects
//! with their health, cloud instance and record, last backups and Events.

use k8s_openapi::api::core::v1::Event;
use kube::api::ListParams;
use kube::core::DynamicObject;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;
use serde_json::Value;
use stackplane_core::children::ChildKind;
use stackplane_core::contract::labels::tenant_selector;
use stackplane_crds::{Tenant, TenantBackup};

use crate::error::{not_found, CliError, Result};
use crate::output::Paint;

/// How many backups and Events the screen shows (newest first).
const LAST: usize = 5;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub tenant: String,
    pub platform: String,
    pub tier: String,
    pub phase: Option<String>,
    pub revision: Option<String>,
    pub namespace: Option<String>,
    pub endpoint: Option<String>,
    pub conditions: Vec<ConditionLine>,
    pub billing: Billing,
    pub objects: Vec<ObjectLine>,
    pub instance: Option<String>,
    pub dns_record: Option<String>,
    pub retained_volumes: Vec<String>,
    pub backups: Vec<BackupLine>,
    pub events: Vec<EventLine>,
}

#[derive(Debug, Serialize)]
pub struct ConditionLine {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Billing {
    pub customer: Option<String>,
    pub subscription: Option<String>,
    pub subscription_status: Option<String>,
    pub suspended: bool,
    pub cancelled_at: Option<String>,
    /// `PaymentOverdue` is True.
    pub overdue: bool,
}

/// Health of one object: `ok`, `progressing` or `failed`.
#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Ok,
    Progressing,
    Failed,
}

#[derive(Debug, Serialize)]
pub struct ObjectLine {
    pub kind: String,
    pub name: String,
    pub health: Health,
    pub detail: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupLine {
    pub name: String,
    pub reason: String,
    pub restore_of: Option<String>,
    pub phase: String,
    pub created: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventLine {
    pub time: Option<String>,
    #[serde(rename = "type")]
    pub type_: String,
    pub reason: String,
    pub message: String,
}

/// Reads the tenant and everything the screen shows.
pub async fn gather(client: &Client, name: &str) -> Result<Report> {
    let tenant = get_tenant(client, name).await?;
    let status = tenant.status.clone().unwrap_or_default();
    let mut objects = Vec::new();
    if let Some(ns) = &status.namespace {
        let by_tenant = ListParams::default().labels(&tenant_selector(name));
        // Every kind of the registry, in its (apply) order, read generically.
        for kind in ChildKind::ALL {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), ns, &kind.api_resource());
            for object in api.list(&by_tenant).await?.items {
                objects.push(object_line(kind.kind(), &serde_json::to_value(object)?));
            }
        }
    }
    let mut backups: Vec<TenantBackup> = Api::<TenantBackup>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|b| b.spec.tenant == name)
        .collect();
    backups.sort_by_key(|b| std::cmp::Reverse(b.creation_timestamp()));
    let events = tenant_events(client, name).await?;
    let conditions = status
        .conditions
        .iter()
        .map(|c| ConditionLine {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
        .collect::<Vec<_>>();
    let overdue = conditions
        .iter()
        .any(|c| c.type_ == "PaymentOverdue" && c.status == "True");
    let spec = &tenant.spec;
    Ok(Report {
        tenant: name.to_owned(),
        platform: spec.platform.clone(),
        tier: spec.tier.clone(),
        phase: status.phase.map(|p| p.as_str().to_owned()),
        revision: status.platform_revision.clone(),
        namespace: status.namespace.clone(),
        endpoint: status.endpoint.clone(),
        conditions,
        billing: Billing {
            customer: spec.customer.stripe_customer_id.clone(),
            subscription: spec.subscription.as_ref().map(|s| s.id.clone()),
            subscription_status: spec.subscription.as_ref().map(|s| enum_text(&s.status)),
            suspended: spec.suspended,
            cancelled_at: spec.cancelled_at.as_ref().map(|t| t.0.to_string()),
            overdue,
        },
        objects,
        instance: status
            .instance
            .as_ref()
            .map(|i| format!("{} {} {}", i.id, i.instance_type, i.state)),
        dns_record: status.dns_record.clone(),
        retained_volumes: status.retained_volumes.clone(),
        backups: backups
            .iter()
            .take(LAST)
            .map(|b| BackupLine {
                name: b.name_any(),
                reason: enum_text(&b.spec.reason),
                restore_of: b.spec.restore.clone(),
                phase: b
                    .status
                    .as_ref()
                    .and_then(|s| s.phase)
                    .map_or_else(|| "Pending".to_owned(), |p| enum_text(&p)),
                created: b.creation_timestamp().map(|t| t.0.to_string()),
            })
            .collect(),
        events: events.into_iter().take(LAST).collect(),
    })
}

/// The tenant, or an error that says why there is none.
pub async fn get_tenant(client: &Client, name: &str) -> Result<Tenant> {
    Api::<Tenant>::all(client.clone())
        .get(name)
        .await
        .map_err(|e| not_found(e, name, || CliError::TenantNotFound(name.to_owned())))
}

/// The Events about the tenant, newest first.
pub async fn tenant_events(client: &Client, name: &str) -> Result<Vec<EventLine>> {
    let params = ListParams::default().fields(&format!(
        "involvedObject.kind=Tenant,involvedObject.name={name}"
    ));
    let events = Api::<Event>::all(client.clone()).list(&params).await?.items;
    Ok(newest_first(events))
}

/// Events as lines, newest first.
pub fn newest_first(events: Vec<Event>) -> Vec<EventLine> {
    let mut lines: Vec<EventLine> = events.iter().map(event_line).collect();
    lines.sort_by(|a, b| b.time.cmp(&a.time));
    lines
}

fn event_time(e: &Event) -> Option<String> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .or_else(|| e.event_time.as_ref().map(|t| t.0.to_string()))
        .or_else(|| e.creation_timestamp().map(|t| t.0.to_string()))
}

fn event_line(e: &Event) -> EventLine {
    EventLine {
        time: event_time(e),
        type_: e.type_.clone().unwrap_or_default(),
        reason: e.reason.clone().unwrap_or_default(),
        message: e.message.clone().unwrap_or_default(),
    }
}

/// A serde enum as the API spells it (`past_due`, `pre-delete`).
fn enum_text<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        other => format!("{other:?}"),
    }
}

/// The health of one listed object, from what its kind reports.
pub fn object_line(kind: &str, object: &Value) -> ObjectLine {
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (health, detail) = match kind {
        "Deployment" => {
            let want = object["spec"]["replicas"].as_i64().unwrap_or(1);
            let available = object["status"]["availableReplicas"].as_i64().unwrap_or(0);
            let updated = object["status"]["updatedReplicas"].as_i64().unwrap_or(0);
            let failed = object["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded");
            let health = if failed {
                Health::Failed
            } else if available >= want && updated >= want {
                Health::Ok
            } else {
                Health::Progressing
            };
            (health, format!("{available}/{want} available"))
        }
        "PersistentVolumeClaim" => {
            let phase = object["status"]["phase"].as_str().unwrap_or("Pending");
            let retained = object["metadata"]["labels"]
                [stackplane_core::contract::labels::RETAINED]
                .as_str()
                .is_some_and(|v| v == "true");
            let health = match phase {
                "Bound" => Health::Ok,
                "Lost" => Health::Failed,
                _ => Health::Progressing,
            };
            let detail = if retained {
                format!("{phase}, retained")
            } else {
                phase.to_owned()
            };
            (health, detail)
        }
        _ => (Health::Ok, String::new()),
    };
    ObjectLine {
        kind: kind.to_owned(),
        name,
        health,
        detail,
    }
}

/// The screen, as text; `paint` colours it when the output is a terminal.
pub fn render(r: &Report, paint: Paint) -> String {
    let mut out = String::new();
    let phase = r.phase.as_deref().unwrap_or("Unknown");
    let phase_colour = match phase {
        "Ready" => paint.green(phase),
        "Failed" | "Degraded" => paint.red(phase),
        _ => paint.yellow(phase),
    };
    out.push_str(&format!(
        "{}  {}  platform {} tier {}  revision {}\n",
        paint.bold(&format!("Tenant {}", r.tenant)),
        phase_colour,
        r.platform,
        r.tier,
        r.revision.as_deref().unwrap_or("-")
    ));
    out.push_str(&format!(
        "Namespace {}  Endpoint {}\n",
        r.namespace.as_deref().unwrap_or("-"),
        r.endpoint.as_deref().unwrap_or("-")
    ));
    out.push_str("\nConditions\n");
    for c in &r.conditions {
        let status = match c.status.as_str() {
            "True" if c.type_ == "PaymentOverdue" || c.type_ == "Paused" => paint.yellow("True"),
            "True" => paint.green("True"),
            "False" if c.type_ == "PaymentOverdue" || c.type_ == "Paused" => paint.green("False"),
            "False" => paint.red("False"),
            other => paint.yellow(other),
        };
        out.push_str(&format!(
            "  {:<16} {:<6} {:<24} {}\n",
            c.type_, status, c.reason, c.message
        ));
    }
    let b = &r.billing;
    out.push_str("\nBilling\n");
    out.push_str(&format!(
        "  customer {}  subscription {} ({})\n",
        b.customer.as_deref().unwrap_or("-"),
        b.subscription.as_deref().unwrap_or("-"),
        b.subscription_status.as_deref().unwrap_or("-")
    ));
    out.push_str(&format!(
        "  suspended {}  overdue {}  cancelled {}\n",
        b.suspended,
        if b.overdue {
            paint.red("true")
        } else {
            "false".to_owned()
        },
        b.cancelled_at.as_deref().unwrap_or("-")
    ));
    out.push_str(&format!(
        "\nObjects\n  Namespace/{}\n",
        r.namespace.as_deref().unwrap_or("-")
    ));
    let n = r.objects.len();
    for (i, o) in r.objects.iter().enumerate() {
        let branch = if i + 1 == n { "└─" } else { "├─" };
        let health = match o.health {
            Health::Ok => paint.green("ok"),
            Health::Progressing => paint.yellow("progressing"),
            Health::Failed => paint.red("failed"),
        };
        out.push_str(&format!(
            "  {branch} {}/{}  {health}{}\n",
            o.kind,
            o.name,
            if o.detail.is_empty() {
                String::new()
            } else {
                format!("  {}", o.detail)
            }
        ));
    }
    if !r.retained_volumes.is_empty() {
        out.push_str(&format!(
            "  retained volumes: {}\n",
            r.retained_volumes.join(", ")
        ));
    }
    out.push_str(&format!(
        "\nCloud\n  instance {}  record {}\n",
        r.instance.as_deref().unwrap_or("-"),
        r.dns_record.as_deref().unwrap_or("-")
    ));
    out.push_str("\nBackups (newest first)\n");
    if r.backups.is_empty() {
        out.push_str("  none\n");
    }
    for bk in &r.backups {
        let what = match &bk.restore_of {
            Some(from) => format!("restore from {from}"),
            None => bk.reason.clone(),
        };
        out.push_str(&format!(
            "  {:<40} {:<20} {:<16} {}\n",
            bk.name,
            what,
            bk.phase,
            bk.created.as_deref().unwrap_or("-")
        ));
    }
    out.push_str("\nEvents (newest first)\n");
    if r.events.is_empty() {
        out.push_str("  none\n");
    }
    for e in &r.events {
        let kind = if e.type_ == "Warning" {
            paint.red(&e.type_)
        } else {
            e.type_.clone()
        };
        out.push_str(&format!(
            "  {} {:<8} {:<20} {}\n",
            e.time.as_deref().unwrap_or("-"),
            kind,
            e.reason,
            e.message
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_deployment_short_of_replicas_is_progressing_and_a_stuck_one_failed() {
        let d = json!({"metadata": {"name": "api"}, "spec": {"replicas": 2},
            "status": {"availableReplicas": 1, "updatedReplicas": 2}});
        let line = object_line("Deployment", &d);
        assert_eq!(line.health, Health::Progressing);
        assert_eq!(line.detail, "1/2 available");
        let stuck = json!({"metadata": {"name": "api"}, "spec": {"replicas": 1},
            "status": {"conditions": [{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]}});
        assert_eq!(object_line("Deployment", &stuck).health, Health::Failed);
        let ok = json!({"metadata": {"name": "api"}, "spec": {"replicas": 1},
            "status": {"availableReplicas": 1, "updatedReplicas": 1}});
        assert_eq!(object_line("Deployment", &ok).health, Health::Ok);
    }

    #[test]
    fn a_retained_claim_says_so() {
        let c = json!({"metadata": {"name": "data", "labels": {"stackplane.io/retained": "true"}},
            "status": {"phase": "Bound"}});
        let line = object_line("PersistentVolumeClaim", &c);
        assert_eq!(
            (line.health, line.detail.as_str()),
            (Health::Ok, "Bound, retained")
        );
    }
}
