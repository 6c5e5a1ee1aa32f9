//! Which subscription a Tenant follows (pure). A Tenant is (platform, Stripe customer); the
//! customer may hold several subscriptions over time (cancel and subscribe again, two at once, a
//! price moved to another platform). The Tenant of (platform, customer) follows one of them, the
//! governing subscription: the newest of the customer's subscriptions on that platform that has
//! not ended, else the one that ended last. Events of any other subscription never move it.
//!
//! A subscription is "on" every platform one of its items buys (a bundle is on several): each
//! platform's Tenant sees the subscription through [`Snapshot::per_platform`], with that
//! platform's items and the highest of their tiers. Removing an item takes the subscription off
//! that platform only; a Tenant no subscription is on any more is cancelled.

use std::collections::BTreeMap;

use stackplane_crds::SubscriptionStatus;

use super::mapping::Snapshot;

/// What the Tenant of one (platform, customer) follows.
#[derive(Debug, Clone, PartialEq)]
pub struct Governing {
    pub platform: String,
    /// The state the Tenant is applied from (`spec.subscription.id` names its subscription).
    pub snapshot: Snapshot,
    /// Ids of the live subscriptions on the platform, newest first: more than one is a conflict.
    pub live: Vec<String>,
    /// No subscription of the customer is on this platform any more (its item was removed, or
    /// its price moved to another platform): the Tenant is cancelled as a deletion would cancel
    /// it, and deleted after the retention period.
    pub moved_away: bool,
}

impl Governing {
    /// Whether the customer pays twice on this platform.
    pub fn conflict(&self) -> bool {
        self.live.len() > 1
    }

    /// The Tenant's name.
    pub fn tenant(&self) -> String {
        stackplane_crds::naming::tenant_name(&self.platform, &self.snapshot.customer_id)
    }
}

/// Newest first: `created`, then the id, so equal creation times still give one answer.
fn newest_first(a: &&Snapshot, b: &&Snapshot) -> std::cmp::Ordering {
    (b.created, &b.subscription_id).cmp(&(a.created, &a.subscription_id))
}

/// The governing subscription among `subscriptions` (all on one platform).
pub fn choose<'a>(subscriptions: &[&'a Snapshot]) -> Option<&'a Snapshot> {
    let mut live: Vec<&Snapshot> = subscriptions
        .iter()
        .copied()
        .filter(|s| !s.ended())
        .collect();
    live.sort_by(newest_first);
    if let Some(first) = live.first() {
        return Some(first);
    }
    subscriptions.iter().copied().max_by(|a, b| {
        (a.cancelled_at, a.created, &a.subscription_id).cmp(&(
            b.cancelled_at,
            b.created,
            &b.subscription_id,
        ))
    })
}

/// For every platform the customer has (or had, per `applied`: the governing snapshots last
/// applied to the customer's Tenants) a subscription on, what its Tenant follows. `now` is when
/// a Tenant whose platform no subscription is on any more is cancelled.
pub fn govern(subscriptions: &[Snapshot], applied: &[Snapshot], now: i64) -> Vec<Governing> {
    let views: Vec<Snapshot> = subscriptions
        .iter()
        .flat_map(Snapshot::per_platform)
        .collect();
    let mut by_platform: BTreeMap<&str, Vec<&Snapshot>> = BTreeMap::new();
    for s in &views {
        by_platform.entry(&s.platform).or_default().push(s);
    }
    let mut out = Vec::new();
    for (platform, subs) in &by_platform {
        let Some(chosen) = choose(subs) else { continue };
        let mut live: Vec<&Snapshot> = subs.iter().copied().filter(|s| !s.ended()).collect();
        live.sort_by(newest_first);
        out.push(Governing {
            platform: (*platform).to_owned(),
            snapshot: chosen.clone(),
            live: live.iter().map(|s| s.subscription_id.clone()).collect(),
            moved_away: false,
        });
    }
    for previous in applied {
        if by_platform.contains_key(previous.platform.as_str()) {
            continue;
        }
        let mut snapshot = previous.clone();
        if !snapshot.ended() {
            snapshot.status = SubscriptionStatus::Canceled;
            snapshot.cancelled_at = Some(now);
        }
        out.push(Governing {
            platform: previous.platform.clone(),
            snapshot,
            live: Vec::new(),
            moved_away: true,
        });
    }
    out.sort_by(|a, b| a.platform.cmp(&b.platform));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use SubscriptionStatus as S;

    fn sub(id: &str, platform: &str, status: S, created: i64, ended: Option<i64>) -> Snapshot {
        Snapshot {
            subscription_id: id.into(),
            customer_id: "cus_A".into(),
            platform: platform.into(),
            tier: "starter".into(),
            status,
            email: None,
            name: None,
            client_reference_id: None,
            current_period_end: None,
            cancelled_at: ended,
            created: Some(created),
            trial_end_notice: None,
            payment_action_required: None,
            items: Vec::new(),
            trial_end: None,
            cancel_at: None,
            collection_paused: None,
        }
    }

    #[test]
    fn a_new_subscription_governs_over_the_cancelled_one_whatever_arrives_last() {
        let old = sub("sub_old", "crm", S::Canceled, 100, Some(200));
        let new = sub("sub_new", "crm", S::Active, 300, None);
        for subs in [
            vec![old.clone(), new.clone()],
            vec![new.clone(), old.clone()],
        ] {
            let g = govern(&subs, &[], 1000);
            assert_eq!(g.len(), 1);
            assert_eq!(g[0].snapshot.subscription_id, "sub_new");
            assert!(!g[0].conflict() && !g[0].moved_away);
        }
    }

    #[test]
    fn all_ended_follows_the_one_that_ended_last() {
        let a = sub("sub_a", "crm", S::Canceled, 300, Some(400));
        let b = sub("sub_b", "crm", S::Canceled, 100, Some(500));
        let g = govern(&[a, b], &[], 1000);
        assert_eq!(g[0].snapshot.subscription_id, "sub_b");
        assert!(g[0].live.is_empty());
    }

    #[test]
    fn two_live_subscriptions_follow_the_newest_and_conflict() {
        let a = sub("sub_a", "crm", S::Active, 100, None);
        let b = sub("sub_b", "crm", S::PastDue, 200, None);
        let g = govern(&[a, b], &[], 1000);
        assert_eq!(g[0].snapshot.subscription_id, "sub_b");
        assert!(g[0].conflict());
        assert_eq!(g[0].live, ["sub_b", "sub_a"]);
    }

    #[test]
    fn platforms_are_governed_separately() {
        let a = sub("sub_a", "crm", S::Active, 100, None);
        let b = sub("sub_b", "video", S::Active, 200, None);
        let g = govern(&[a, b], &[], 1000);
        assert_eq!(g.len(), 2);
        assert!(g.iter().all(|g| !g.conflict()));
    }

    #[test]
    fn a_price_moved_to_another_platform_cancels_the_old_platforms_tenant() {
        let before = sub("sub_a", "crm", S::Active, 100, None);
        let after = sub("sub_a", "video", S::Active, 100, None);
        let g = govern(
            std::slice::from_ref(&after),
            std::slice::from_ref(&before),
            1000,
        );
        assert_eq!(g.len(), 2);
        let crm = g.iter().find(|g| g.platform == "crm").unwrap();
        assert!(crm.moved_away);
        assert_eq!(crm.snapshot.status, S::Canceled);
        assert_eq!(crm.snapshot.cancelled_at, Some(1000));
        let video = g.iter().find(|g| g.platform == "video").unwrap();
        assert_eq!(video.snapshot.status, S::Active);
        // Another live subscription on the old platform keeps governing it.
        let other = sub("sub_b", "crm", S::Active, 50, None);
        let g = govern(&[after, other], &[before], 1000);
        let crm = g.iter().find(|g| g.platform == "crm").unwrap();
        assert!(!crm.moved_away);
        assert_eq!(crm.snapshot.subscription_id, "sub_b");
    }

    #[test]
    fn a_moved_away_tenant_already_cancelled_stays_as_it_was() {
        let gone = sub("sub_a", "crm", S::Canceled, 100, Some(500));
        let g = govern(&[], std::slice::from_ref(&gone), 1000);
        assert_eq!(g[0].snapshot, gone);
    }

    const ALL: [S; 8] = [
        S::Incomplete,
        S::IncompleteExpired,
        S::Trialing,
        S::Active,
        S::PastDue,
        S::Canceled,
        S::Unpaid,
        S::Paused,
    ];

    fn ended_at(status: S, at: i64) -> Option<i64> {
        crate::billing::mapping::is_ended(status).then_some(at)
    }

    /// One subscription, in every status: it governs, alone, and is live unless it ended.
    #[test]
    fn a_lone_subscription_governs_in_every_status() {
        for status in ALL {
            let only = sub("sub_1", "crm", status, 100, ended_at(status, 150));
            let g = govern(&[only], &[], 999);
            assert_eq!(g.len(), 1, "{status:?}");
            assert_eq!(g[0].snapshot.subscription_id, "sub_1", "{status:?}");
            assert_eq!(g[0].snapshot.status, status, "{status:?}");
            let live = !matches!(status, S::Canceled | S::IncompleteExpired);
            assert_eq!(g[0].live.len(), usize::from(live), "{status:?}");
            assert!(!g[0].conflict() && !g[0].moved_away, "{status:?}");
        }
    }

    /// An older and a newer subscription on one platform, in every pair of statuses, in both
    /// orders of arrival: the newer governs while it is live; else the older while it is live;
    /// else the one that ended last. Two live ones are a conflict.
    #[test]
    fn every_pair_of_statuses() {
        for old_status in ALL {
            for new_status in ALL {
                // The older one ended later than the newer one, where both ended: "the one that
                // ended last" is then the older, which tells that rule apart from "newest".
                let old = sub("sub_old", "crm", old_status, 100, ended_at(old_status, 400));
                let new = sub("sub_new", "crm", new_status, 300, ended_at(new_status, 350));
                let old_live = !old.ended();
                let new_live = !new.ended();
                // The newer if live; else the older, live or (having ended later) last to end.
                let expected = if new_live { "sub_new" } else { "sub_old" };
                let live: Vec<&str> = [(new_live, "sub_new"), (old_live, "sub_old")]
                    .into_iter()
                    .filter_map(|(l, id)| l.then_some(id))
                    .collect();
                for subs in [[old.clone(), new.clone()], [new.clone(), old.clone()]] {
                    let g = govern(&subs, &[], 999);
                    let case = format!("old {old_status:?}, new {new_status:?}");
                    assert_eq!(g.len(), 1, "{case}");
                    assert_eq!(g[0].snapshot.subscription_id, expected, "{case}");
                    assert_eq!(g[0].live, live, "{case}");
                    assert_eq!(g[0].conflict(), old_live && new_live, "{case}");
                }
            }
        }
    }
}
