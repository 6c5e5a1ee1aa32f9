//! Brings one customer's Tenants in line with what is known of the customer's subscriptions:
//! merges a Stripe read (the truth) or, when Stripe cannot be read, the event's payload into the
//! per-subscription state, chooses the governing subscription of each platform, and writes each
//! Tenant's spec and billing conditions when they changed. Used after every event, by the
//! re-reads of customers Stripe could not be read for, and by the sweep.
//!
//! Everything for one customer runs in one transaction under a per-customer advisory lock, so
//! events, re-reads and the sweep of the same customer (in any replica) never interleave.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};
use sqlx::{PgConnection, Postgres, Transaction};
use stackplane_crds::Tenant;

use super::error::BillingError;
use super::prices::PriceIndex;
use super::stripe_api::{Read, StripeApiError};
use super::worker::{backoff, Worker, FIELD_MANAGER};
use stackplane_core::billing::conditions::{
    billing_conditions, fingerprint, status_body, SyncState, TRIAL_ENDING,
};
use stackplane_core::billing::governing::{govern, Governing};
use stackplane_core::billing::mapping::{
    self, Applied, ItemSnapshot, Needs, OrderKey, Snapshot, API_READ_RANK,
};
use stackplane_core::billing::parse::{Observation, ParsedEvent};

/// A Tenant whose spec and conditions are unchanged still gets its `BillingSynced` read time
/// rewritten once it is this old, so the condition says when Stripe last confirmed it without
/// a write per Tenant per read.
pub const SYNCED_REFRESH: Duration = Duration::from_secs(15 * 60);

/// What one customer sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Synced {
    /// Subscription states that changed.
    pub subscriptions_changed: u32,
    /// Tenants whose spec or conditions were written.
    pub tenants_written: u32,
    /// Why nothing changed, when nothing did.
    pub skipped: Option<&'static str>,
    /// The event concerns a subscription with no price a Platform lists and no known state:
    /// stored as `ignored` (acknowledged, replayable, never retried in bulk).
    pub ignored: bool,
}

/// Why an event is stored as `ignored`.
pub const NOT_OURS: &str =
    "no price a Platform lists and no known subscription: not a product stackplane sells";

/// What merging an event into its subscription's state did.
enum Merged {
    Changed(Box<Applied>),
    Unchanged(&'static str),
    /// No item buys anything stackplane sells, and the subscription is not known.
    NotOurs,
}

/// A Tenant billing applied before, as `billing_tenants` remembers it.
struct Known {
    snapshot: Snapshot,
    written: Value,
    written_at: Option<DateTime<Utc>>,
}

/// Takes the per-customer lock for the rest of `tx`.
pub async fn lock_customer(
    tx: &mut Transaction<'_, Postgres>,
    customer: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("billing-customer:{customer}"))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

type StateRow = (String, Value, DateTime<Utc>, i32, String);

impl Worker {
    /// Reads `customer`'s subscriptions, when a reader is configured: of the connected
    /// `account` (Connect), or of the platform account when `None`.
    pub async fn read_customer(
        &self,
        customer: &str,
        account: Option<&str>,
    ) -> Option<Result<Read, StripeApiError>> {
        let api = self.stripe.as_ref()?;
        let at_ms = Utc::now().timestamp_millis();
        Some(
            api.customer_subscriptions_on(customer, account)
                .await
                .map(|listing| Read {
                    at_ms,
                    subscriptions: listing.subscriptions,
                    tenants_present: None,
                }),
        )
    }

    /// Applies a re-read of `customer` (`read`, already queued again by the caller when it
    /// failed); a successful one takes the customer off the queue, in `tx` — when `lease` is
    /// given, only if the queue row still carries it (an event whose read failed after this
    /// read started queued the customer again, and that re-read stays due).
    pub(super) async fn resync_in(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        customer: &str,
        read: Option<Result<Read, StripeApiError>>,
        lease: Option<DateTime<Utc>>,
    ) -> Result<(), BillingError> {
        let ok = matches!(read, Some(Ok(_)));
        self.sync_customer(tx, customer, None, read).await?;
        if ok {
            sqlx::query(
                "DELETE FROM billing_resync WHERE customer_id = $1 \
                 AND ($2::timestamptz IS NULL OR due_at = $2)",
            )
            .bind(customer)
            .bind(lease)
            .execute(&mut **tx)
            .await?;
            tracing::info!(customer_id = %customer, "customer read from Stripe again");
        }
        Ok(())
    }

    /// Brings `customer`'s Tenants in line with `read` (None: no reader) and `event` (the
    /// trigger, if any). Takes the customer's lock in `tx`; the caller commits.
    pub async fn sync_customer(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        customer: &str,
        event: Option<&ParsedEvent>,
        read: Option<Result<Read, StripeApiError>>,
    ) -> Result<Synced, BillingError> {
        lock_customer(tx, customer).await?;
        let rows: Vec<StateRow> = sqlx::query_as(
            "SELECT subscription_id, snapshot, event_created, status_rank, event_id \
             FROM subscription_state WHERE customer_id = $1",
        )
        .bind(customer)
        .fetch_all(&mut **tx)
        .await?;
        let mut states: HashMap<String, Applied> = HashMap::new();
        for (id, snapshot, created, rank, event_id) in rows {
            match serde_json::from_value::<Snapshot>(snapshot) {
                Ok(snapshot) => {
                    states.insert(
                        id,
                        Applied {
                            snapshot,
                            key: OrderKey {
                                created: created.timestamp(),
                                rank,
                                event_id,
                            },
                        },
                    );
                }
                Err(error) => {
                    tracing::warn!(subscription_id = %id, %error, "unreadable subscription state; ignored")
                }
            }
        }
        let mut changed: BTreeMap<String, Applied> = BTreeMap::new();
        let mut skipped: Option<&'static str> = None;
        let mut ignored = false;
        let event_sub = event.and_then(|e| e.observation.subscription_id().map(str::to_owned));
        let resolve = |price: &str| self.prices.resolve_price(price);
        let present = match &read {
            Some(Ok(r)) => r.tenants_present.clone(),
            _ => None,
        };

        let sync = match read {
            Some(Ok(read)) => {
                let mut seen_event_sub = false;
                for s in read
                    .subscriptions
                    .iter()
                    .filter(|s| s.customer_id == customer)
                {
                    let is_event_sub = event_sub.as_deref() == Some(s.subscription_id.as_str());
                    seen_event_sub |= is_event_sub;
                    let current = states.get(&s.subscription_id);
                    // A price no Platform lists keeps the item's last known platform and tier
                    // (the subscription's status still reaches its Tenant); a subscription no
                    // item of which buys anything, now or before, is not stackplane's.
                    let Some(items) =
                        mapping::resolve_items(s, current.map(|c| &c.snapshot), resolve)
                    else {
                        ignored |= is_event_sub;
                        continue;
                    };
                    if let Some(next) = mapping::merge_read(current, s, read.at_ms, items) {
                        let differs = current.is_none_or(|c| {
                            c.snapshot != next.snapshot || c.key.rank != API_READ_RANK
                        });
                        if differs {
                            states.insert(s.subscription_id.clone(), next.clone());
                            changed.insert(s.subscription_id.clone(), next);
                        }
                    }
                }
                if let Some(event) = event.filter(|_| !ignored) {
                    // What only the event tells (checkout details, notices), or the whole event
                    // when the read did not show its subscription yet.
                    match self.merge_event(&states, event, !seen_event_sub)? {
                        Merged::Changed(next) => {
                            let next = *next;
                            let id = next.snapshot.subscription_id.clone();
                            states.insert(id.clone(), next.clone());
                            changed.insert(id, next);
                        }
                        Merged::Unchanged(why) => skipped = Some(why),
                        Merged::NotOurs => ignored = true,
                    }
                }
                SyncState::Read { at_ms: read.at_ms }
            }
            failed_or_none => {
                if let Some(event) = event {
                    match self.merge_event(&states, event, true)? {
                        Merged::Changed(next) => {
                            let next = *next;
                            let id = next.snapshot.subscription_id.clone();
                            states.insert(id.clone(), next.clone());
                            changed.insert(id, next);
                        }
                        Merged::Unchanged(why) => skipped = Some(why),
                        Merged::NotOurs => ignored = true,
                    }
                }
                // The caller queued the re-read (`schedule_resync`) before this runs.
                match failed_or_none {
                    Some(Err(error)) => SyncState::Unreachable {
                        error: error.to_string(),
                    },
                    _ => SyncState::NoReader,
                }
            }
        };

        for (id, next) in &changed {
            write_state(tx, id, next, event.map(|e| e.id.as_str())).await?;
        }

        let known = load_known(tx, customer).await?;
        let snapshots: Vec<Snapshot> = states.values().map(|a| a.snapshot.clone()).collect();
        let applied: Vec<Snapshot> = known.values().map(|k| k.snapshot.clone()).collect();
        let now = Utc::now();
        let mut written = 0;
        for g in govern(&snapshots, &applied, now.timestamp()) {
            let missing = present.as_ref().is_some_and(|p| !p.contains(&g.tenant()));
            if self
                .write_tenant(tx, &g, known.get(&g.tenant()), &sync, now, missing)
                .await?
            {
                written += 1;
            }
        }
        let nothing = changed.is_empty() && written == 0;
        Ok(Synced {
            subscriptions_changed: changed.len() as u32,
            tenants_written: written,
            skipped: nothing.then_some(if ignored {
                NOT_OURS
            } else {
                skipped.unwrap_or("nothing changes")
            }),
            ignored: ignored && nothing,
        })
    }

    /// Merges `event` into the state of its subscription; `whole` false merges only what a read
    /// does not tell.
    fn merge_event(
        &self,
        states: &HashMap<String, Applied>,
        event: &ParsedEvent,
        whole: bool,
    ) -> Result<Merged, BillingError> {
        let Some(sub) = event.observation.subscription_id() else {
            return Ok(Merged::Unchanged(match event.observation {
                Observation::Schedule(_) => "subscription schedule without subscription",
                _ => "event type not handled",
            }));
        };
        let current = states.get(sub);
        if !whole && current.is_none() {
            return Ok(Merged::Unchanged("subscription not in Stripe's answer"));
        }
        let resolved = match mapping::needs(current, event) {
            Needs::Nothing(why) => return Ok(Merged::Unchanged(why)),
            Needs::Price(_) => {
                match mapping::resolve_event_items(current, event, |p| self.prices.resolve_price(p))
                {
                    Some(items) => Some(items),
                    // No listed price and no known subscription: not stackplane's product.
                    None => return Ok(Merged::NotOurs),
                }
            }
            Needs::PlatformTier { platform, tier } => {
                if !self.prices.has_tier(&platform, &tier) {
                    return Err(BillingError::UnknownPlatformTier { platform, tier });
                }
                Some(vec![ItemSnapshot::from_checkout(platform, tier)])
            }
            Needs::Merge => None,
        };
        Ok(match mapping::merge(current, event, resolved) {
            Some(next) => Merged::Changed(Box::new(next)),
            None => Merged::Unchanged("nothing changes"),
        })
    }

    /// Marks `customer` to be read again later, with backoff. Callers run it before the sync
    /// that writes Tenants from a failed read, on a connection of its own when the customer is not
    /// queued yet: the re-read is then durable before any Tenant says `StripeUnreachable`, and
    /// survives a sync whose transaction is rolled back after a Tenant was written.
    pub(super) async fn schedule_resync(
        conn: &mut PgConnection,
        customer: &str,
        account: Option<&str>,
        error: &StripeApiError,
    ) -> Result<(), sqlx::Error> {
        let attempts: i32 = sqlx::query_scalar(
            "INSERT INTO billing_resync (customer_id, attempts, last_error, account) VALUES ($1, 1, $2, $3) \
             ON CONFLICT (customer_id) DO UPDATE SET attempts = billing_resync.attempts + 1, last_error = $2, account = $3 \
             RETURNING attempts",
        )
        .bind(customer)
        .bind(error.to_string())
        .bind(account)
        .fetch_one(&mut *conn)
        .await?;
        sqlx::query("UPDATE billing_resync SET due_at = now() + make_interval(secs => $2) WHERE customer_id = $1")
            .bind(customer)
            .bind(backoff(attempts).as_secs_f64())
            .execute(&mut *conn)
            .await?;
        tracing::warn!(customer_id = %customer, error_kind = error.metric_label(), %error, attempts, "Stripe read failed; applying the payload, will read again");
        Ok(())
    }

    /// Writes the Tenant `g` governs when its spec or conditions changed, the read time is due
    /// for a refresh, or the sweep found it `missing`. Returns whether it wrote.
    #[allow(clippy::too_many_arguments)]
    async fn write_tenant(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        g: &Governing,
        known: Option<&Known>,
        sync: &SyncState,
        now: DateTime<Utc>,
        missing: bool,
    ) -> Result<bool, BillingError> {
        let name = g.tenant();
        let (_, spec_body) = mapping::tenant_apply_body(&g.snapshot);
        let conditions = billing_conditions(g, sync);
        let print = json!({ "spec": spec_body, "conditions": fingerprint(&conditions) });
        let ended = g.snapshot.ended();
        if let Some(k) = known {
            let same = k.written.get("fingerprint") == Some(&print);
            let fresh = k
                .written_at
                .is_some_and(|at| (now - at).to_std().unwrap_or_default() < SYNCED_REFRESH);
            let refresh_due = matches!(sync, SyncState::Read { .. }) && !fresh && !ended;
            if same && !refresh_due && !missing {
                return Ok(false);
            }
        }
        let tenants: Api<Tenant> = Api::all(self.kube.clone());
        let previous_conditions = known
            .and_then(|k| k.written.get("conditions").cloned())
            .unwrap_or(Value::Null);
        // An ended subscription creates a (cancelled) Tenant only while its retention period
        // runs and billing never applied one: a Tenant deleted after its retention period (or by
        // hand) stays deleted, however often the sweep sees the old subscription, and a sweep
        // does not provision long-gone customers.
        let exists = if ended {
            let within_retention = g.snapshot.cancelled_at.is_some_and(|at| {
                let days = self.prices.retention_days(&g.platform).unwrap_or(0);
                at + i64::from(days) * 86_400 > now.timestamp()
            });
            tenants.get_opt(&name).await?.is_some() || (known.is_none() && within_retention)
        } else {
            true
        };
        let mut written_conditions = previous_conditions.clone();
        if exists {
            let tenant = tenants
                .patch(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&spec_body),
                )
                .await?;
            let tenant = remove_lingering(&tenants, tenant, &spec_body).await?;
            let now_text = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let status = status_body(&name, &conditions, &previous_conditions, &now_text);
            // Not forced: billing owns only its own condition types.
            tenants
                .patch_status(
                    &name,
                    &PatchParams::apply(FIELD_MANAGER),
                    &Patch::Apply(&status),
                )
                .await?;
            written_conditions = status["status"]["conditions"].clone();
            let trial_announced = conditions
                .iter()
                .any(|c| c.type_ == TRIAL_ENDING && c.status)
                && !previous_conditions.as_array().is_some_and(|l| {
                    l.iter()
                        .any(|c| c["type"] == TRIAL_ENDING && c["status"] == "True")
                });
            if trial_announced {
                let message = conditions
                    .iter()
                    .find(|c| c.type_ == TRIAL_ENDING && c.status)
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                if let Err(error) =
                    publish_event(&self.kube, &tenant, "TrialWillEnd", &message, now).await
                {
                    // The condition carries the same news; an Event that cannot be stored is not
                    // worth failing the sync for.
                    tracing::warn!(tenant = %name, %error, "recording the TrialWillEnd event");
                }
            }
            tracing::info!(tenant = %name, subscription_id = %g.snapshot.subscription_id, status = ?g.snapshot.status, conflict = g.conflict(), moved_away = g.moved_away, "tenant applied");
        } else {
            tracing::info!(tenant = %name, subscription_id = %g.snapshot.subscription_id, "subscription ended and its Tenant is gone; not recreated");
        }
        let synced_at = match sync {
            SyncState::Read { at_ms } => DateTime::from_timestamp_millis(*at_ms),
            _ => None,
        };
        sqlx::query(
            "INSERT INTO billing_tenants (tenant, platform, customer_id, subscription_id, snapshot, written, written_at, synced_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now()) \
             ON CONFLICT (tenant) DO UPDATE SET platform = $2, customer_id = $3, subscription_id = $4, snapshot = $5, \
             written = $6, written_at = $7, synced_at = coalesce($8, billing_tenants.synced_at), updated_at = now()",
        )
        .bind(&name)
        .bind(&g.platform)
        .bind(&g.snapshot.customer_id)
        .bind(&g.snapshot.subscription_id)
        .bind(serde_json::to_value(&g.snapshot)?)
        .bind(json!({ "fingerprint": print, "conditions": written_conditions }))
        .bind(now)
        .bind(synced_at)
        .execute(&mut **tx)
        .await?;
        Ok(exists)
    }
}

/// Namespace of Events about Tenants (cluster-scoped). A core/v1 Event without `eventTime`
/// about an object without a namespace must be in `default` (Kubernetes' legacy event
/// validation; `events.k8s.io` Events, which carry `eventTime`, go to `kube-system` instead).
pub const EVENT_NAMESPACE: &str = "default";

/// Records a `Normal` Event about `tenant` (core/v1, which every supported version serves).
async fn publish_event(
    client: &kube::Client,
    tenant: &Tenant,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) -> kube::Result<()> {
    use k8s_openapi::api::core::v1::{Event, EventSource};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use kube::api::PostParams;
    use kube::Resource;
    let name = kube::ResourceExt::name_any(tenant);
    let at = k8s_openapi::jiff::Timestamp::from_millisecond(now.timestamp_millis())
        .ok()
        .map(Time);
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{name}.{:x}",
                now.timestamp_nanos_opt().unwrap_or_default()
            )),
            namespace: Some(EVENT_NAMESPACE.to_owned()),
            ..Default::default()
        },
        involved_object: tenant.object_ref(&()),
        reason: Some(reason.to_owned()),
        message: Some(message.to_owned()),
        type_: Some("Normal".to_owned()),
        source: Some(EventSource {
            component: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        }),
        first_timestamp: at.clone(),
        last_timestamp: at,
        count: Some(1),
        reporting_component: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    Api::<Event>::namespaced(client.clone(), EVENT_NAMESPACE)
        .create(&PostParams::default(), &event)
        .await?;
    Ok(())
}

/// Removes what billing stopped asking for but the apply left in place: `spec.cancelledAt` after
/// a re-subscription, billing's annotations once what they say is over (payment overdue,
/// scheduled cancellation, paused collection), `spec.subscription.items`/`quantity` when none
/// are sent. Server-side apply should drop
/// a field its manager no longer sends; the Kubernetes 1.20 API server the tests run against
/// keeps it (observed with `cancelledAt`), so billing removes it itself with a merge patch, and
/// only when it is there.
async fn remove_lingering(
    tenants: &Api<Tenant>,
    tenant: Tenant,
    body: &Value,
) -> Result<Tenant, kube::Error> {
    let mut patch = json!({});
    if tenant.spec.cancelled_at.is_some() && body["spec"].get("cancelledAt").is_none() {
        patch["spec"] = json!({ "cancelledAt": null });
    }
    let sent = &body["spec"]["subscription"];
    if let Some(had) = &tenant.spec.subscription {
        if !had.items.is_empty() && sent.get("items").is_none() {
            patch["spec"]["subscription"]["items"] = Value::Null;
        }
        if had.quantity.is_some() && sent.get("quantity").is_none() {
            patch["spec"]["subscription"]["quantity"] = Value::Null;
        }
    }
    let wanted = &body["metadata"]["annotations"];
    for key in mapping::BILLING_ANNOTATIONS {
        let present = tenant
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(key));
        if present && wanted.get(key).is_none() {
            patch["metadata"]["annotations"][key] = Value::Null;
        }
    }
    if patch.as_object().is_some_and(|o| o.is_empty()) {
        return Ok(tenant);
    }
    let name = kube::ResourceExt::name_any(&tenant);
    tenants
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(&patch),
        )
        .await
}

async fn load_known(
    tx: &mut Transaction<'_, Postgres>,
    customer: &str,
) -> Result<HashMap<String, Known>, sqlx::Error> {
    let rows: Vec<(String, Value, Value, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT tenant, snapshot, written, written_at FROM billing_tenants WHERE customer_id = $1",
    )
    .bind(customer)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(tenant, snapshot, written, written_at)| {
            let snapshot = serde_json::from_value(snapshot).ok()?;
            Some((
                tenant,
                Known {
                    snapshot,
                    written,
                    written_at,
                },
            ))
        })
        .collect())
}

async fn write_state(
    tx: &mut Transaction<'_, Postgres>,
    subscription_id: &str,
    next: &Applied,
    event_id: Option<&str>,
) -> Result<(), BillingError> {
    let name = mapping::desired_tenant(&next.snapshot).name;
    let status = serde_json::to_value(next.snapshot.status)?;
    sqlx::query(
        "INSERT INTO subscription_state (subscription_id, tenant, customer_id, status, event_id, event_created, status_rank, snapshot, platform, updated_at) \
         VALUES ($1, $2, $3, $4, $5, to_timestamp($6), $7, $8, $9, now()) \
         ON CONFLICT (subscription_id) DO UPDATE SET tenant = $2, customer_id = $3, status = $4, event_id = $5, \
         event_created = to_timestamp($6), status_rank = $7, snapshot = $8, platform = $9, updated_at = now()",
    )
    .bind(subscription_id)
    .bind(&name)
    .bind(&next.snapshot.customer_id)
    .bind(status.as_str().unwrap_or_default())
    .bind(if next.key.event_id.is_empty() {
        event_id.unwrap_or_default()
    } else {
        &next.key.event_id
    })
    .bind(next.key.created as f64)
    .bind(next.key.rank)
    .bind(serde_json::to_value(&next.snapshot)?)
    .bind(&next.snapshot.platform)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
