//! Price ids → (platform, tier), from a reflector cache of the Platforms and the record of when
//! each Platform was first seen listing each price (`platform_prices`): a price two Platforms
//! list stays with the one that listed it first (`stackplane_core::billing::prices::owner`, the
//! rule the controller's `Valid=False, PriceConflict` follows too).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use stackplane_core::billing::prices::PriceRef;
use stackplane_crds::Platform;
use tokio::sync::watch;

/// Resolves prices and tiers against the Platforms.
pub trait PriceIndex: Send + Sync {
    /// The (platform, tier) that sells `price_id`.
    fn resolve_price(&self, price_id: &str) -> Option<PriceRef>;
    /// Whether `platform` exists and has `tier`.
    fn has_tier(&self, platform: &str, tier: &str) -> bool;
}

/// The Platforms as a watch keeps them.
#[derive(Clone)]
pub struct PlatformCache {
    store: Store<Platform>,
    /// Bumped whenever a Platform is added, changed or removed.
    changes: watch::Receiver<u64>,
    /// (price, platform) → when the api first saw the Platform list the price, as
    /// `platform_prices` holds it; loaded by [`PlatformCache::record_listings`]. A listing not
    /// recorded yet ranks as the newest, so a Platform that appeared a moment ago never takes a
    /// price from one recorded before.
    first_seen: Arc<RwLock<HashMap<(String, String), i64>>>,
}

impl PlatformCache {
    /// Starts watching Platforms; the returned future drives the watch and must be spawned.
    pub fn start(
        client: kube::Client,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let api: Api<Platform> = Api::all(client);
        let (reader, writer) = reflector::store();
        let (tx, rx) = watch::channel(0u64);
        let driver = async move {
            let stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .reflect(writer)
                .touched_objects();
            futures::pin_mut!(stream);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(platform) => {
                        tracing::debug!(platform = %kube::ResourceExt::name_any(&platform), "platform changed");
                        tx.send_modify(|n| *n += 1);
                    }
                    Err(error) => tracing::warn!(%error, "watching Platforms"),
                }
            }
        };
        (
            Self {
                store: reader,
                changes: rx,
                first_seen: Arc::default(),
            },
            driver,
        )
    }

    /// Waits until the first list of Platforms is in the cache.
    pub async fn ready(&self) -> bool {
        self.store.wait_until_ready().await.is_ok()
    }

    /// The Stripe prices that buy `tier` of `platform`: `None` when either is unknown.
    pub fn tier_prices(&self, platform: &str, tier: &str) -> Option<Vec<String>> {
        let platform = self
            .store
            .state()
            .into_iter()
            .find(|p| kube::ResourceExt::name_any(p.as_ref()) == platform)?;
        platform.spec.tier(tier).map(|t| t.stripe_price_ids.clone())
    }

    /// How many days a cancelled tenant of `platform` is kept; `None` for an unknown platform.
    pub fn retention_days(&self, platform: &str) -> Option<u32> {
        self.store
            .state()
            .iter()
            .find(|p| kube::ResourceExt::name_any(p.as_ref()) == platform)
            .map(|p| p.spec.cancellation_retention_days)
    }

    /// Whether a Platform named `platform` exists.
    pub fn has_platform(&self, platform: &str) -> bool {
        self.store
            .state()
            .iter()
            .any(|p| kube::ResourceExt::name_any(p.as_ref()) == platform)
    }

    /// Records the (price, platform) listings not seen before in `platform_prices` (one time for
    /// the whole batch: Platforms seen together are ordered by creation time, then name),
    /// forgets those no Platform has any more (a price removed and listed again later counts
    /// from then), and loads the record. Run when the Platforms change, by one writer at a time
    /// (a transaction-scoped advisory lock), so replicas record the same first-seen times.
    pub async fn record_listings(&self, db: &sqlx::PgPool) -> Result<usize, sqlx::Error> {
        let (prices, platforms): (Vec<String>, Vec<String>) = self
            .store
            .state()
            .iter()
            .flat_map(|p| {
                let name = kube::ResourceExt::name_any(p.as_ref());
                p.spec
                    .tiers
                    .iter()
                    .flat_map(|t| t.stripe_price_ids.clone())
                    .map(move |price| (price, name.clone()))
                    .collect::<Vec<_>>()
            })
            .unzip();
        let mut tx = db.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('billing-platform-prices', 0))")
            .execute(&mut *tx)
            .await?;
        let added = sqlx::query(
            "INSERT INTO platform_prices (price_id, platform, first_seen_at) \
             SELECT price, platform, now() FROM unnest($1::text[], $2::text[]) AS l(price, platform) \
             ON CONFLICT (price_id, platform) DO NOTHING",
        )
        .bind(&prices)
        .bind(&platforms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "DELETE FROM platform_prices p WHERE NOT EXISTS \
             (SELECT 1 FROM unnest($1::text[], $2::text[]) AS l(price, platform) \
              WHERE l.price = p.price_id AND l.platform = p.platform)",
        )
        .bind(&prices)
        .bind(&platforms)
        .execute(&mut *tx)
        .await?;
        let rows: Vec<(String, String, DateTime<Utc>)> =
            sqlx::query_as("SELECT price_id, platform, first_seen_at FROM platform_prices")
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let record: HashMap<(String, String), i64> = rows
            .into_iter()
            .map(|(price, platform, at)| ((price, platform), at.timestamp_micros()))
            .collect();
        let count = record.len();
        *self
            .first_seen
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = record;
        if added > 0 {
            tracing::info!(listings = added, "new price listings recorded");
        }
        Ok(count)
    }

    /// A receiver that changes whenever a Platform does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

impl PriceIndex for PlatformCache {
    fn resolve_price(&self, price_id: &str) -> Option<PriceRef> {
        let platforms = self.store.state();
        let seen = self
            .first_seen
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        stackplane_core::billing::prices::resolve(
            platforms.iter().map(|p| p.as_ref()),
            price_id,
            |price, platform| seen.get(&(price.to_owned(), platform.to_owned())).copied(),
        )
    }

    fn has_tier(&self, platform: &str, tier: &str) -> bool {
        self.store.state().iter().any(|p| {
            kube::ResourceExt::name_any(p.as_ref()) == platform && p.spec.tier(tier).is_some()
        })
    }
}
