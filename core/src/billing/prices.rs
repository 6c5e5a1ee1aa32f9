//! Which (platform, tier) a Stripe price sells, from the Platforms' `spec.tiers[].stripePriceIds`
//! (pure: the api's Platform cache and the controller supply the Platforms).
//!
//! A price belongs to one Platform. When two list it (a copied Platform, a typo), it stays with
//! the one that listed it first, and the other is told (`Valid=False`, reason `PriceConflict`).
//! [`owner`] is that rule, used by both writers:
//! - the api passes, for each Platform, when it first saw that Platform list the price (its
//!   `platform_prices` table) — the only record that tells "listed first" when a price is added
//!   to an older Platform later: the younger keeps its customers;
//! - the controller has no database, so it passes no first-seen times and the rule falls back
//!   to what both can see: creation time, then name.
//!
//! They agree in the normal case — each Platform is created listing its prices, and the api,
//! which watches Platforms, first sees them in creation order (Platforms it sees in one batch,
//! e.g. at its first start, share one first-seen time and fall back to creation time and name
//! too). They can disagree only when a price is added to an already older Platform: the api
//! keeps the customers with the younger Platform (never moving a Tenant), while the controller
//! flags the younger one as the conflicting copy; the conflict is reported either way, and an
//! operator removes the price from one of them.

use stackplane_crds::Platform;

/// One Platform listing a price, as the ownership rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listing<'a> {
    pub platform: &'a str,
    /// `metadata.creationTimestamp`, seconds.
    pub created: Option<i64>,
    /// When the api first saw this Platform list the price (any unit, the same for every
    /// listing; the api uses microseconds); `None` for the controller
    /// (and for a Platform the api has not recorded yet, which then ranks as the newest).
    pub first_seen: Option<i64>,
}

impl Listing<'_> {
    fn key(&self) -> (i64, i64, &str) {
        (
            self.first_seen.unwrap_or(i64::MAX),
            self.created.unwrap_or(i64::MAX),
            self.platform,
        )
    }
}

/// The Platform a price belongs to among those listing it: the first seen listing it, then the
/// oldest, then the first by name (so the answer never depends on the order given).
pub fn owner<'a>(listings: &[Listing<'a>]) -> Option<&'a str> {
    listings
        .iter()
        .min_by(|a, b| a.key().cmp(&b.key()))
        .map(|l| l.platform)
}

/// What a listed price sells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceRef {
    pub platform: String,
    pub tier: String,
    /// Position of the tier in the Platform's `spec.tiers` (later is higher).
    pub tier_rank: u32,
}

/// `metadata.creationTimestamp` of `p`, in seconds.
pub fn created(p: &Platform) -> Option<i64> {
    p.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
}

fn name(p: &Platform) -> &str {
    p.metadata.name.as_deref().unwrap_or_default()
}

fn listings<'a>(
    platforms: &[&'a Platform],
    price_id: &str,
    first_seen: &impl Fn(&str, &str) -> Option<i64>,
) -> Vec<Listing<'a>> {
    platforms
        .iter()
        .filter(|p| p.spec.tier_for_price(price_id).is_some())
        .map(|p| Listing {
            platform: name(p),
            created: created(p),
            first_seen: first_seen(price_id, name(p)),
        })
        .collect()
}

/// The (platform, tier) that sells `price_id` among `platforms`, by [`owner`];
/// `first_seen(price, platform)` is the api's record (the controller passes `|_, _| None`).
pub fn resolve<'a>(
    platforms: impl IntoIterator<Item = &'a Platform>,
    price_id: &str,
    first_seen: impl Fn(&str, &str) -> Option<i64>,
) -> Option<PriceRef> {
    let platforms: Vec<&Platform> = platforms.into_iter().collect();
    let listed = listings(&platforms, price_id, &first_seen);
    let owner = owner(&listed)?;
    let platform = platforms.iter().find(|p| name(p) == owner)?;
    let (rank, tier) = platform
        .spec
        .tiers
        .iter()
        .enumerate()
        .find(|(_, t)| t.stripe_price_ids.iter().any(|p| p == price_id))?;
    Some(PriceRef {
        platform: owner.to_owned(),
        tier: tier.name.clone(),
        tier_rank: u32::try_from(rank).unwrap_or(u32::MAX),
    })
}

/// A price `platform` lists that another Platform owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceConflict {
    pub price: String,
    pub owner: String,
}

/// The prices `platform` lists that belong to another of `all` (by [`owner`]).
pub fn conflicts(
    platform: &Platform,
    all: &[&Platform],
    first_seen: impl Fn(&str, &str) -> Option<i64>,
) -> Vec<PriceConflict> {
    let me = name(platform);
    let mut prices: Vec<&String> = platform
        .spec
        .tiers
        .iter()
        .flat_map(|t| &t.stripe_price_ids)
        .collect();
    prices.sort();
    prices.dedup();
    let mut with_me: Vec<&Platform> = all.iter().copied().filter(|p| name(p) != me).collect();
    with_me.push(platform);
    prices
        .into_iter()
        .filter_map(|price| {
            let owner = owner(&listings(&with_me, price, &first_seen))?;
            (owner != me).then(|| PriceConflict {
                price: price.clone(),
                owner: owner.to_owned(),
            })
        })
        .collect()
}

pub use crate::contract::conditions::REASON_PRICE_CONFLICT;

/// The message of `Valid=False, PriceConflict`: which prices, and who owns them.
pub fn conflict_message(conflicts: &[PriceConflict]) -> String {
    let named: Vec<String> = conflicts
        .iter()
        .map(|c| format!("{} (owned by Platform {})", c.price, c.owner))
        .collect();
    format!(
        "prices listed first by another Platform: {}; subscriptions on them stay with their owner \
         and never provision a tenant of this Platform",
        named.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use stackplane_crds::{PlatformSpec, Tier};

    fn platform(name: &str, created: i64, tiers: &[(&str, &[&str])]) -> Platform {
        let mut spec: PlatformSpec =
            serde_json::from_value(serde_json::json!({"displayName": name, "domain": "example.com", "components": [], "tiers": []}))
                .expect("spec");
        spec.tiers = tiers
            .iter()
            .map(|(tier, prices)| {
                let mut t: Tier = serde_json::from_value(serde_json::json!({
                    "name": tier,
                    "quota": {"cpu": "1", "memory": "1Gi", "storage": "1Gi", "pods": 10},
                }))
                .expect("tier");
                t.stripe_price_ids = prices.iter().map(|p| (*p).to_owned()).collect();
                t
            })
            .collect();
        let mut p = Platform::new(name, spec);
        p.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created).expect("time"),
        ));
        p
    }

    fn none(_: &str, _: &str) -> Option<i64> {
        None
    }

    #[test]
    fn a_listed_price_names_its_platform_tier_and_rank() {
        let crm = platform(
            "crm",
            100,
            &[("starter", &["price_s"]), ("pro", &["price_p", "price_p2"])],
        );
        let video = platform("video", 100, &[("starter", &["price_v"])]);
        let all = [crm, video];
        assert_eq!(
            resolve(&all, "price_p2", none),
            Some(PriceRef {
                platform: "crm".into(),
                tier: "pro".into(),
                tier_rank: 1
            })
        );
        assert_eq!(resolve(&all, "price_v", none).unwrap().tier_rank, 0);
        assert_eq!(resolve(&all, "price_unknown", none), None);
        assert_eq!(resolve(&[], "price_s", none), None);
    }

    #[test]
    fn without_first_seen_times_the_oldest_then_the_first_name_owns() {
        // `zeta` is older than `alpha`: age wins over the name, in any order given.
        let zeta = platform("zeta", 100, &[("starter", &["price_x"])]);
        let alpha = platform("alpha", 200, &[("pro", &["price_x"])]);
        for all in [[&zeta, &alpha], [&alpha, &zeta]] {
            assert_eq!(resolve(all, "price_x", none).unwrap().platform, "zeta");
        }
        // Same creation second: the name decides.
        let beta = platform("beta", 100, &[("pro", &["price_x"])]);
        assert_eq!(
            resolve([&zeta, &beta], "price_x", none).unwrap().platform,
            "beta"
        );
        assert_eq!(
            conflicts(&zeta, &[&zeta, &beta], none),
            [PriceConflict {
                price: "price_x".into(),
                owner: "beta".into()
            }]
        );
        assert!(conflicts(&beta, &[&zeta, &beta], none).is_empty());
    }

    #[test]
    fn first_seen_wins_over_creation_time_so_an_older_platform_takes_nobody() {
        // `old` (created first) got price_x added after `young` had listed it.
        let old = platform("old", 100, &[("starter", &["price_x"])]);
        let young = platform("young", 200, &[("starter", &["price_x"])]);
        let seen = |price: &str, p: &str| match (price, p) {
            ("price_x", "young") => Some(250),
            ("price_x", "old") => Some(900),
            _ => None,
        };
        assert_eq!(
            resolve([&old, &young], "price_x", seen).unwrap().platform,
            "young"
        );
        assert_eq!(conflicts(&old, &[&old, &young], seen).len(), 1);
        // A Platform the api has not recorded yet ranks as the newest.
        let unseen = |price: &str, p: &str| (price == "price_x" && p == "young").then_some(250);
        assert_eq!(
            resolve([&old, &young], "price_x", unseen).unwrap().platform,
            "young"
        );
        // Seen together (one batch, one time): creation time, then name — what the controller,
        // which has no first-seen record, decides too.
        let together = |_: &str, _: &str| Some(500);
        assert_eq!(
            resolve([&old, &young], "price_x", together),
            resolve([&old, &young], "price_x", none)
        );
    }

    #[test]
    fn the_conflict_message_names_the_owner() {
        let m = conflict_message(&[PriceConflict {
            price: "price_x".into(),
            owner: "leadsite-io".into(),
        }]);
        assert!(m.contains("price_x") && m.contains("leadsite-io"), "{m}");
    }
}
