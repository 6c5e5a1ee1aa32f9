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
//! (`super::look_again`). And a tenant that had a pass for another reason (its spec changed, a
//! Deployment reported) less than half a period before its turn is skipped for that round
//! ([`RecentPasses`]): that pass did what the resync would do, so each tenant gets a pass at
//! least every one and a half periods, and a busy tenant no more passes than before. A tenant
//! in the error policy's backoff ([`Failures`]) is skipped until a pass succeeds: a resync
//! every period would undo that backoff (tenants stuck on a hung cloud call would then take the
//! reconcile slots from every other tenant).

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::ResourceExt;
use tokio::time::Instant;

use crate::backoff::Failures;
use stackplane_core::cache::CachedTenant;

/// The tenants to reconcile, one at a time, each once per `period`; the first round starts one
/// period from now (the watch's initial list has just reconciled every tenant). Never ends.
pub fn sweep(
    tenants: Store<CachedTenant>,
    passes: Arc<RecentPasses>,
    failures: Arc<Failures>,
    period: Duration,
) -> impl Stream<Item = ObjectRef<CachedTenant>> + Send + 'static {
    let first = Round {
        names: Vec::new(),
        start: Instant::now(),
        next: 0,
    };
    futures::stream::unfold(first, move |mut round| {
        let tenants = tenants.clone();
        let passes = passes.clone();
        let failures = failures.clone();
        async move {
            loop {
                if let Some(name) = round.names.get_mut(round.next) {
                    let name = std::mem::take(name);
                    let at = slot(round.start, period, round.next, round.names.len());
                    round.next += 1;
                    tokio::time::sleep_until(at).await;
                    let tenant = ObjectRef::new(&name);
                    // Deleted since the round began: its deletion was its last reconcile.
                    // Passed recently: that pass was this round's. Failing: its retry is set.
                    if tenants.get(&tenant).is_some()
                        && !passes.within(&name, period / 2)
                        && !failures.failing(&name)
                    {
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
                passes.keep_only(&names);
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

/// When each tenant's last successful pass finished, by a hash of its name: about 20 bytes a
/// tenant (two collide once in 10^11 at 10,000 tenants, and then one of them waits for the
/// next round).
#[derive(Debug)]
pub struct RecentPasses {
    /// What the times count from.
    epoch: Instant,
    /// Milliseconds since `epoch`, by [`key`].
    finished: Mutex<HashMap<u64, u64>>,
}

impl Default for RecentPasses {
    fn default() -> Self {
        RecentPasses {
            epoch: Instant::now(),
            finished: Mutex::default(),
        }
    }
}

impl RecentPasses {
    /// A pass of `tenant` finished now.
    pub fn passed(&self, tenant: &str) {
        let now = self.millis(Instant::now());
        if let Ok(mut finished) = self.finished.lock() {
            finished.insert(key(tenant), now);
        }
    }

    /// Whether a pass of `tenant` finished less than `window` ago.
    fn within(&self, tenant: &str, window: Duration) -> bool {
        let now = self.millis(Instant::now());
        let window = millis(window);
        self.finished
            .lock()
            .map(|f| {
                f.get(&key(tenant))
                    .is_some_and(|at| now.saturating_sub(*at) < window)
            })
            .unwrap_or(false)
    }

    /// Forgets every tenant not among `names` (deleted ones).
    fn keep_only(&self, names: &[String]) {
        let live: HashSet<u64> = names.iter().map(|n| key(n)).collect();
        if let Ok(mut finished) = self.finished.lock() {
            finished.retain(|k, _| live.contains(k));
            finished.shrink_to_fit();
        }
    }

    fn millis(&self, at: Instant) -> u64 {
        millis(at.saturating_duration_since(self.epoch))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn key(tenant: &str) -> u64 {
    let mut h = DefaultHasher::new();
    tenant.hash(&mut h);
    h.finish()
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
    fn a_pass_is_recent_within_its_window_and_deleted_tenants_are_forgotten() {
        let passes = RecentPasses::default();
        assert!(!passes.within("a", Duration::from_secs(60)), "never passed");
        passes.passed("a");
        passes.passed("b");
        assert!(passes.within("a", Duration::from_secs(60)));
        assert!(
            !passes.within("a", Duration::ZERO),
            "a zero window holds nothing"
        );
        passes.keep_only(&["b".to_owned()]);
        assert!(
            !passes.within("a", Duration::from_secs(60)),
            "a was deleted"
        );
        assert!(passes.within("b", Duration::from_secs(60)));
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
    async fn each_tenant_once_per_period_in_name_order_deleted_passed_and_failing_ones_skipped() {
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
        // Margins (a timer waking late) of at least 500 ms wherever a late wake could change
        // what is seen.
        let period = Duration::from_millis(2000);
        let begun = Instant::now();
        let passes = Arc::new(RecentPasses::default());
        let failures = Arc::new(Failures::default());
        let sweep = sweep(store, passes.clone(), failures.clone(), period);
        futures::pin_mut!(sweep);
        let mut next = async || {
            let t = sweep.next().await.expect("the sweep never ends");
            (t.name, Instant::now() - begun)
        };
        let ms = Duration::from_millis;

        // The first round starts one period in: a, b, c at 2000, 2666, 3333 ms, by name.
        for (name, not_before) in [("a", 2000), ("b", 2666), ("c", 3333)] {
            let (seen, at) = next().await;
            assert_eq!(seen, name, "name order");
            assert!(at >= ms(not_before), "{name} at {at:?}");
        }

        // "d" is new: the next round (from 4000 ms) holds a, b, c, d at 500 ms gaps. Once it
        // has begun, "b" has a pass of its own (its turn at 4500 ms falls within half a period
        // of it) and "c" is deleted: both turns pass without a reconcile.
        writer.apply_watcher_event(&Event::Apply(tenant("d")));
        let (seen, at) = next().await;
        assert_eq!(seen, "a");
        assert!(at >= ms(4000), "a at {at:?}");
        passes.passed("b");
        writer.apply_watcher_event(&Event::Delete(tenant("c")));
        let (seen, at) = next().await;
        assert_eq!(seen, "d", "b (passed) and c (deleted) skipped");
        assert!(at >= ms(5500), "d at {at:?}");

        // The round after (from 6000 ms: a, b, d): b's pass is long enough ago.
        for (name, not_before) in [("a", 6000), ("b", 6666), ("d", 7333)] {
            let (seen, at) = next().await;
            assert_eq!(seen, name);
            assert!(at >= ms(not_before), "{name} at {at:?}");
        }

        // "a" fails (its error policy's backoff is running): the round from 8000 ms skips it
        // until a pass of it succeeds, in the round from 10000 ms.
        failures.failed("a");
        let (seen, at) = next().await;
        assert_eq!(seen, "b", "a failing tenant is left to its backoff");
        assert!(at >= ms(8666), "b at {at:?}");
        let (seen, _) = next().await;
        assert_eq!(seen, "d");
        failures.succeeded("a");
        let (seen, at) = next().await;
        assert_eq!(seen, "a", "back in the sweep once a pass succeeded");
        assert!(at >= ms(10000), "a at {at:?}");
    }
}
