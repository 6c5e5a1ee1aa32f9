//! The periodic resync of the Tenants: every tenant in the cache is reconciled once per
//! period, in name order, at evenly spaced times across the period.
//!
//! Why not a requeue after every pass: kube's scheduler keeps each requeued tenant's reference
//! twice (its delay queue and its index), about 680 bytes per tenant for as long as the tenant
//! lives — 6.5 MiB of a 10,000-tenant controller's heap spent on timers that all say "in five
//! minutes". The sweep holds one round's names and, between two reconciles, nothing per
//! tenant. Spread over the period, a resync is also a steady trickle of passes (and of the few
//! requests they make) rather than a burst when the timers of tenants created together expire
//! together.
//!
//! A pass that must look at its tenant sooner than the sweep will (a grace period ending, an
//! instance starting, a final backup running) still returns its own requeue
//! (`super::look_again`).

use std::time::Duration;

use futures::Stream;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;
use tokio::time::Instant;

use crate::cached::CachedTenant;

/// The tenants to reconcile, one at a time, each once per `period`; the first round starts one
/// period from now (the watch's initial list has just reconciled every tenant). Never ends.
pub fn sweep(
    tenants: Store<CachedTenant>,
    period: Duration,
) -> impl Stream<Item = ObjectRef<CachedTenant>> + Send + 'static {
    let first = Round {
        names: Vec::new(),
        start: Instant::now(),
        next: 0,
    };
    futures::stream::unfold(first, move |mut round| {
        let tenants = tenants.clone();
        async move {
            loop {
                if let Some(name) = round.names.get_mut(round.next) {
                    let name = std::mem::take(name);
                    let at = slot(round.start, period, round.next, round.names.len());
                    round.next += 1;
                    tokio::time::sleep_until(at).await;
                    let tenant = ObjectRef::new(&name);
                    // Deleted since the round began: its deletion was its last reconcile.
                    if tenants.get(&tenant).is_some() {
                        return Some((tenant, round));
                    }
                    continue;
                }
                // A fixed schedule: a round that started late does not push the next one back.
                let start = round.start + period;
                tokio::time::sleep_until(start).await;
                let mut names: Vec<String> = tenants.state().iter().map(|t| t.name_any()).collect();
                // Name order keeps each tenant's place (about one period between two resyncs of
                // it) from one round to the next, whatever the cache's own order.
                names.sort_unstable();
                round = Round {
                    names,
                    start,
                    next: 0,
                };
            }
        }
    })
}

/// One pass over the tenants the cache held when it started.
struct Round {
    /// Sorted; each is taken (left empty) when its turn comes.
    names: Vec<String>,
    start: Instant,
    /// The index of the next tenant to reconcile.
    next: usize,
}

/// When the `i`th of `n` tenants of a round that starts at `start` is reconciled: evenly
/// spaced, the first at the start, the last one gap before the next round.
fn slot(start: Instant, period: Duration, i: usize, n: usize) -> Instant {
    let n = n.max(1) as u128;
    let i = (i as u128).min(n - 1);
    start + Duration::from_nanos(u64::try_from(period.as_nanos() * i / n).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_evenly_spaced_within_the_period() {
        let start = Instant::now();
        let period = Duration::from_secs(300);
        let slots: Vec<Duration> = (0..4).map(|i| slot(start, period, i, 4) - start).collect();
        assert_eq!(
            slots,
            [0, 75, 150, 225].map(Duration::from_secs).to_vec(),
            "4 tenants over 300 s"
        );
    }

    #[test]
    fn slots_stay_inside_the_period_for_many_tenants() {
        let start = Instant::now();
        let period = Duration::from_secs(7);
        let n = 10_000;
        let mut last = Duration::ZERO;
        for i in 0..n {
            let at = slot(start, period, i, n) - start;
            assert!(at >= last, "slot {i} goes back: {at:?} after {last:?}");
            assert!(at < period, "slot {i} at {at:?} is past the period");
            last = at;
        }
        // The last one is one gap (0.7 ms) before the next round.
        assert!(period - last <= Duration::from_micros(701), "{last:?}");
    }

    #[test]
    fn an_index_past_the_round_gets_the_last_slot() {
        let start = Instant::now();
        let period = Duration::from_secs(10);
        assert_eq!(slot(start, period, 0, 0), start, "an empty round");
        assert_eq!(slot(start, period, 5, 2), slot(start, period, 1, 2));
    }

    /// Real time (the scheduler's timers): only lower bounds are asserted, which the sweep's
    /// `sleep_until` guarantees whatever the machine's load.
    #[tokio::test]
    async fn each_tenant_once_per_period_in_name_order_and_deleted_ones_skipped() {
        use futures::StreamExt;
        use kube::runtime::watcher::Event;
        use stackplane_crds::{Tenant, TenantSpec};

        let (store, mut writer) = kube::runtime::reflector::store::<CachedTenant>();
        let tenant = |name: &str| {
            let mut t = Tenant::new(name, TenantSpec::new("crm", "starter"));
            t.metadata.uid = Some(format!("uid-{name}"));
            CachedTenant::from(&t)
        };
        for name in ["c", "a", "b"] {
            writer.apply_watcher_event(&Event::Apply(tenant(name)));
        }
        let period = Duration::from_millis(600);
        let begun = Instant::now();
        let sweep = sweep(store, period);
        futures::pin_mut!(sweep);
        let mut next = async || {
            let t = sweep.next().await.expect("the sweep never ends");
            (t.name, Instant::now() - begun)
        };

        // The first round starts one period in: 600, 800, 1000 ms, by name.
        for (name, not_before) in [("a", 600), ("b", 800), ("c", 1000)] {
            let (seen, at) = next().await;
            assert_eq!(seen, name, "name order");
            assert!(at >= Duration::from_millis(not_before), "{name} at {at:?}");
        }

        // "d" is new: the next round (from 1200 ms) holds a, b, c, d at 150 ms gaps. "b" is
        // deleted once the round has begun: its slot (1350 ms) passes without a reconcile.
        writer.apply_watcher_event(&Event::Apply(tenant("d")));
        let (seen, at) = next().await;
        assert_eq!(seen, "a");
        assert!(at >= Duration::from_millis(1200), "a at {at:?}");
        writer.apply_watcher_event(&Event::Delete(tenant("b")));
        for (name, not_before) in [("c", 1500), ("d", 1650)] {
            let (seen, at) = next().await;
            assert_eq!(seen, name, "b skipped, d in the round by name");
            assert!(at >= Duration::from_millis(not_before), "{name} at {at:?}");
        }
    }
}
