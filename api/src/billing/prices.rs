//! Price ids → (platform, tier), from a reflector cache of the Platforms.

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use stackplane_crds::Platform;
use tokio::sync::watch;

/// Resolves prices and tiers against the Platforms.
pub trait PriceIndex: Send + Sync {
    /// The (platform, tier) that sells `price_id`.
    fn resolve_price(&self, price_id: &str) -> Option<(String, String)>;
    /// Whether `platform` exists and has `tier`.
    fn has_tier(&self, platform: &str, tier: &str) -> bool;
}

/// The Platforms as a watch keeps them.
#[derive(Clone)]
pub struct PlatformCache {
    store: Store<Platform>,
    /// Bumped whenever a Platform is added, changed or removed.
    changes: watch::Receiver<u64>,
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

    /// A receiver that changes whenever a Platform does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }
}

impl PriceIndex for PlatformCache {
    fn resolve_price(&self, price_id: &str) -> Option<(String, String)> {
        let platforms = self.store.state();
        stackplane_core::billing::prices::resolve(platforms.iter().map(|p| p.as_ref()), price_id)
    }

    fn has_tier(&self, platform: &str, tier: &str) -> bool {
        self.store.state().iter().any(|p| {
            kube::ResourceExt::name_any(p.as_ref()) == platform && p.spec.tier(tier).is_some()
        })
    }
}
