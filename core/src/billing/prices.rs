//! Which (platform, tier) a Stripe price sells, from the Platforms' `spec.tiers[].stripePriceIds`
//! (pure: the api's Platform cache supplies the Platforms).

use stackplane_crds::Platform;

/// The (platform, tier) that sells `price_id` among `platforms`. When two Platforms (wrongly)
/// list the same price, the answer is still one and always the same: the first by platform
/// name, whatever order the cache holds them in.
pub fn resolve<'a>(
    platforms: impl IntoIterator<Item = &'a Platform>,
    price_id: &str,
) -> Option<(String, String)> {
    platforms
        .into_iter()
        .filter_map(|p| {
            p.spec
                .tier_for_price(price_id)
                .map(|t| (p.metadata.name.clone().unwrap_or_default(), t.name.clone()))
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stackplane_crds::{PlatformSpec, Tier};

    fn platform(name: &str, tiers: &[(&str, &[&str])]) -> Platform {
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
        Platform::new(name, spec)
    }

    #[test]
    fn a_listed_price_names_its_platform_and_tier() {
        let crm = platform(
            "crm",
            &[("starter", &["price_s"]), ("pro", &["price_p", "price_p2"])],
        );
        let video = platform("video", &[("starter", &["price_v"])]);
        let all = [crm, video];
        assert_eq!(
            resolve(&all, "price_p2"),
            Some(("crm".into(), "pro".into()))
        );
        assert_eq!(
            resolve(&all, "price_v"),
            Some(("video".into(), "starter".into()))
        );
        assert_eq!(resolve(&all, "price_unknown"), None);
        assert_eq!(resolve(&[], "price_s"), None);
    }

    #[test]
    fn a_price_on_two_platforms_resolves_the_same_in_any_order() {
        let a = platform("alpha", &[("starter", &["price_x"])]);
        let b = platform("beta", &[("pro", &["price_x"])]);
        let expected = Some(("alpha".to_owned(), "starter".to_owned()));
        assert_eq!(resolve([&a, &b], "price_x"), expected);
        assert_eq!(resolve([&b, &a], "price_x"), expected);
    }
}
