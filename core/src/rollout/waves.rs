//! The pure wave planner: given a Platform's rollout policy, its update revision and what each
//! tenant runs and how healthy it is, which tenants move next and what the rollout's status is.
//! Nothing here touches the network; `super` reads the inputs and carries out the decision.

use std::collections::HashSet;
use std::sync::Arc;

use crate::contract::labels::CANARY;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use stackplane_crds::{RolloutPhase, RolloutPolicy, RolloutStatus, RolloutStrategy, TenantPhase};

use crate::cache::{CachedTenant, Labels};

/// What the planner knows of one tenant of the platform. Name, tier and labels are read from
/// the cached Tenant itself, shared, not copied: a pass looks at every tenant of the platform
/// (10,000 views at once), and copies of their labels were the pass's largest allocation.
#[derive(Debug, Clone)]
pub struct TenantView {
    pub tenant: Arc<CachedTenant>,
    /// Whether rollouts may move it.
    pub part: Part,
    /// The revision it is to run (the rollout's last move, or what it runs, or where a new
    /// tenant starts).
    pub target: Option<String>,
    /// The revision it runs (`status.platformRevision`).
    pub running: Option<String>,
    /// When it was moved to `target`.
    pub moved_at: Option<Timestamp>,
    pub phase: Option<TenantPhase>,
    pub ready_since: Option<Timestamp>,
}

impl TenantView {
    pub fn name(&self) -> &str {
        self.tenant.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn tier(&self) -> &str {
        &self.tenant.spec.tier
    }

    pub fn labels(&self) -> &Labels {
        self.tenant.labels()
    }
}

/// Whether a tenant takes part in rollouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Takes,
    /// `spec.platformRevision` pins it.
    Pinned,
    /// Paused or being deleted: it would not act on a move.
    Skipped,
}

/// A tenant's health with respect to the update revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not moved to the update revision.
    Old,
    /// Moved; not yet healthy and still within the progress deadline.
    Moving,
    /// Runs the update revision and has been Ready for the health gate.
    Healthy,
    /// Moved, and Degraded or Failed, or not healthy within the progress deadline.
    Failed,
}

/// The health of `t` against `update`.
pub fn health(t: &TenantView, update: &str, policy: &RolloutPolicy, now: Timestamp) -> Health {
    if t.target.as_deref() != Some(update) {
        return Health::Old;
    }
    let moved = t.moved_at.unwrap_or(now);
    let late = now.duration_since(moved) > secs(policy.progress_deadline);
    let pending = if late { Health::Failed } else { Health::Moving };
    if t.running.as_deref() != Some(update) {
        return pending;
    }
    match t.phase {
        Some(TenantPhase::Degraded | TenantPhase::Failed) => Health::Failed,
        // Nothing runs to be healthy or not: running the revision is all it can do.
        Some(TenantPhase::Suspended | TenantPhase::Cancelled) => Health::Healthy,
        Some(TenantPhase::Ready) => {
            let since = t.ready_since.map_or(moved, |r| r.max(moved));
            if now.duration_since(since) >= secs(policy.health_gate) {
                Health::Healthy
            } else {
                pending
            }
        }
        _ => pending,
    }
}

fn secs(s: u32) -> SignedDuration {
    SignedDuration::from_secs(i64::from(s))
}

/// One wave and the tenants (indices into the planner's input) it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveMembers {
    pub name: String,
    pub members: Vec<usize>,
}

/// `value` (a count or a percentage, rounded up) of `of`; `default` when unset or malformed.
pub fn scaled(value: Option<&IntOrString>, of: usize, default_percent: u32) -> usize {
    let percent = |p: u32| (of * p as usize).div_ceil(100);
    match value {
        None => percent(default_percent),
        Some(IntOrString::Int(n)) => usize::try_from(*n).unwrap_or(0),
        Some(IntOrString::String(s)) => match s.strip_suffix('%').map(str::parse::<u32>) {
            Some(Ok(p)) => percent(p.min(100)),
            _ => s
                .parse::<usize>()
                .unwrap_or_else(|_| percent(default_percent)),
        },
    }
}

/// The waves of `policy` over the tenants that take part, in order. A tenant belongs to the
/// first wave that selects it and still has room; a wave's size is taken of the tenants it
/// selects that no earlier wave took. Tenants no wave took form a last wave, `rest`.
pub fn waves(policy: &RolloutPolicy, tenants: &[TenantView]) -> Vec<WaveMembers> {
    let mut order: Vec<usize> = (0..tenants.len())
        .filter(|&i| tenants[i].part == Part::Takes)
        .collect();
    order.sort_by(|&a, &b| tenants[a].name().cmp(tenants[b].name()));
    if policy.strategy == RolloutStrategy::Immediate || policy.waves.is_empty() {
        return vec![WaveMembers {
            name: "all".into(),
            members: order,
        }];
    }
    let mut taken = HashSet::new();
    let mut out = Vec::new();
    for (n, wave) in policy.waves.iter().enumerate() {
        let selected: Vec<usize> = order
            .iter()
            .copied()
            .filter(|i| !taken.contains(i) && selects(wave, &tenants[*i]))
            .collect();
        let size = scaled(wave.size.as_ref(), selected.len(), 100).min(selected.len());
        let members: Vec<usize> = selected.into_iter().take(size).collect();
        taken.extend(members.iter().copied());
        out.push(WaveMembers {
            name: wave
                .name
                .clone()
                .unwrap_or_else(|| format!("wave-{}", n + 1)),
            members,
        });
    }
    let rest: Vec<usize> = order.into_iter().filter(|i| !taken.contains(i)).collect();
    if !rest.is_empty() {
        out.push(WaveMembers {
            name: "rest".into(),
            members: rest,
        });
    }
    out
}

fn selects(wave: &stackplane_crds::Wave, t: &TenantView) -> bool {
    let labels = t.labels();
    (!wave.canary || labels.get(CANARY) == Some("true"))
        && (wave.tiers.is_empty() || wave.tiers.iter().any(|tier| tier == t.tier()))
        && wave
            .match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v.as_str()))
}

/// An operator's request, from the Platform's `stackplane.io/rollout` annotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    Rollback,
}

impl Control {
    pub fn parse(value: &str) -> Option<Control> {
        match value.trim() {
            "pause" => Some(Control::Pause),
            "resume" => Some(Control::Resume),
            "rollback" => Some(Control::Rollback),
            _ => None,
        }
    }
}

/// A tenant to move to a revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub tenant: String,
    pub to: String,
}

/// Something worth an Event on the Platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub reason: &'static str,
    pub message: String,
    pub warning: bool,
}

/// What one step of the rollout decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub moves: Vec<Move>,
    pub status: RolloutStatus,
    pub notices: Vec<Notice>,
    /// Health of each input tenant, in input order.
    pub health: Vec<Health>,
}

/// The inputs of one step.
pub struct Inputs<'a> {
    pub policy: &'a RolloutPolicy,
    /// The revision being rolled out.
    pub update: &'a str,
    /// The newest completed revision (where a rollback goes), if any other than `update`.
    pub current: Option<&'a str>,
    pub tenants: &'a [TenantView],
    /// The status the last step wrote.
    pub previous: Option<&'a RolloutStatus>,
    pub control: Option<Control>,
    pub now: Timestamp,
}

/// One step of the rollout.
pub fn step(inputs: &Inputs<'_>) -> Decision {
    let Inputs {
        policy,
        update,
        current,
        tenants,
        previous,
        control,
        now,
    } = *inputs;
    let current = current.filter(|c| *c != update);
    let waves = waves(policy, tenants);
    let health: Vec<Health> = tenants
        .iter()
        .map(|t| health(t, update, policy, now))
        .collect();
    let mut notices = Vec::new();
    let mut st = match previous {
        Some(p) if p.revision == update => p.clone(),
        _ => {
            notices.push(notice(
                "RolloutStarted",
                format!("rolling out {update} in {} wave(s)", waves.len()),
                false,
            ));
            RolloutStatus {
                revision: update.to_owned(),
                wave: 1,
                phase: RolloutPhase::Progressing,
                started_at: Some(Time(now)),
                wave_starts_at: Some(Time(now)),
                ..RolloutStatus::default()
            }
        }
    };
    st.waves = waves.len() as u32;
    let takes: Vec<usize> = (0..tenants.len())
        .filter(|&i| tenants[i].part == Part::Takes)
        .collect();
    st.total = takes.len() as u32;
    st.pinned = tenants.iter().filter(|t| t.part == Part::Pinned).count() as u32;
    let count = |h: &[Health]| {
        h.iter()
            .filter(|x| matches!(x, Health::Moving | Health::Healthy | Health::Failed))
            .count()
    };
    let mut moves = Vec::new();
    let move_to = |i: usize, to: &str| Move {
        tenant: tenants[i].name().to_owned(),
        to: to.to_owned(),
    };

    match control {
        Some(Control::Pause) if st.phase == RolloutPhase::Progressing => {
            st.phase = RolloutPhase::Paused;
            st.message = "paused by the stackplane.io/rollout annotation".into();
            notices.push(notice("RolloutPaused", st.message.clone(), false));
        }
        Some(Control::Resume) if st.phase == RolloutPhase::Paused => {
            st.phase = RolloutPhase::Progressing;
            st.wave_starts_at = Some(Time(now));
            notices.push(notice(
                "RolloutResumed",
                format!("resumed at wave {}", st.wave),
                false,
            ));
        }
        Some(Control::Rollback) => match current {
            Some(to) => {
                for &i in &takes {
                    if health[i] != Health::Old {
                        moves.push(move_to(i, to));
                    }
                }
                st.phase = RolloutPhase::Halted;
                st.message = format!(
                    "rolled back: {} tenant(s) moved back to {to}; change the Platform to roll out again",
                    moves.len()
                );
                notices.push(notice("RolloutRolledBack", st.message.clone(), true));
            }
            None => notices.push(notice(
                "RollbackRefused",
                format!("no completed revision other than {update} to roll back to"),
                true,
            )),
        },
        _ => {}
    }

    if moves.is_empty() && !matches!(st.phase, RolloutPhase::Paused | RolloutPhase::Halted) {
        let unavailable = scaled(policy.max_unavailable.as_ref(), takes.len(), 100).max(1);
        let moving = takes
            .iter()
            .filter(|&&i| health[i] == Health::Moving)
            .count();
        let mut budget = if policy.strategy == RolloutStrategy::Immediate {
            usize::MAX
        } else {
            unavailable.saturating_sub(moving)
        };
        let mut take_old = |members: &[usize], moves: &mut Vec<Move>| {
            for &i in members {
                if budget == 0 {
                    break;
                }
                if health[i] == Health::Old {
                    moves.push(move_to(i, update));
                    budget -= 1;
                }
            }
        };
        loop {
            let index = st.wave.saturating_sub(1) as usize;
            let Some(wave) = waves.get(index) else {
                if st.phase != RolloutPhase::Complete {
                    st.phase = RolloutPhase::Complete;
                    st.completed_at = Some(Time(now));
                    notices.push(notice(
                        "RolloutComplete",
                        format!("every tenant runs {update}"),
                        false,
                    ));
                }
                st.wave = st.waves + 1;
                st.wave_starts_at = None;
                // Tenants that joined (or were unpinned) since: moved without waves.
                take_old(&takes, &mut moves);
                st.message = format!("{update} rolled out");
                break;
            };
            let starts = st.wave_starts_at.as_ref().map_or(now, |t| t.0);
            if now < starts {
                st.message = format!("wave {} ({}) starts at {starts}", st.wave, wave.name);
                break;
            }
            let failed = wave
                .members
                .iter()
                .filter(|&&i| health[i] == Health::Failed)
                .count();
            if let Some(max) = policy.max_failures {
                if failed as u32 > max {
                    st.phase = RolloutPhase::Halted;
                    let names: Vec<&str> = wave
                        .members
                        .iter()
                        .filter(|&&i| health[i] == Health::Failed)
                        .map(|&i| tenants[i].name())
                        .collect();
                    st.message = format!(
                        "halted: wave {} ({}) has {failed} failed tenant(s), more than maxFailures {max}: {}",
                        st.wave,
                        wave.name,
                        names.join(", ")
                    );
                    if policy.auto_rollback {
                        if let Some(to) = current {
                            for &i in &wave.members {
                                if health[i] == Health::Failed {
                                    moves.push(move_to(i, to));
                                }
                            }
                            st.message
                                .push_str(&format!("; moved back to {to} (autoRollback)"));
                        }
                    }
                    notices.push(notice("RolloutHalted", st.message.clone(), true));
                    break;
                }
            }
            let done = wave
                .members
                .iter()
                .all(|&i| matches!(health[i], Health::Healthy | Health::Failed));
            if !done {
                take_old(&wave.members, &mut moves);
                let healthy = wave
                    .members
                    .iter()
                    .filter(|&&i| health[i] == Health::Healthy)
                    .count();
                st.message = format!(
                    "wave {}/{} ({}): {healthy} of {} healthy",
                    st.wave,
                    st.waves,
                    wave.name,
                    wave.members.len()
                );
                break;
            }
            notices.push(notice(
                "WaveComplete",
                format!(
                    "wave {} ({}) complete: {} tenant(s), {failed} failed",
                    st.wave,
                    wave.name,
                    wave.members.len()
                ),
                false,
            ));
            st.wave += 1;
            if st.wave > st.waves {
                continue;
            }
            match policy.pause_between_waves.as_ref() {
                Some(IntOrString::String(s)) if s == "manual" => {
                    st.phase = RolloutPhase::Paused;
                    st.wave_starts_at = None;
                    st.message = format!(
                        "wave {} done; annotate the Platform stackplane.io/rollout=resume to start wave {}",
                        st.wave - 1,
                        st.wave
                    );
                    notices.push(notice("RolloutPaused", st.message.clone(), false));
                    break;
                }
                pause => {
                    let wait = pause_seconds(pause);
                    let starts = now
                        .checked_add(SignedDuration::from_secs(wait))
                        .unwrap_or(now);
                    st.wave_starts_at = Some(Time(starts));
                    notices.push(notice(
                        "WaveStarted",
                        format!(
                            "wave {} ({}) starts{}",
                            st.wave,
                            waves[st.wave as usize - 1].name,
                            if wait > 0 {
                                format!(" in {wait}s")
                            } else {
                                String::new()
                            }
                        ),
                        false,
                    ));
                }
            }
        }
    }
    // Counts after this step's moves.
    let moved: HashSet<&str> = moves
        .iter()
        .filter(|m| m.to == update)
        .map(|m| m.tenant.as_str())
        .collect();
    let back: HashSet<&str> = moves
        .iter()
        .filter(|m| m.to != update)
        .map(|m| m.tenant.as_str())
        .collect();
    let after: Vec<Health> = takes
        .iter()
        .map(|&i| {
            let name = tenants[i].name();
            if moved.contains(name) {
                Health::Moving
            } else if back.contains(name) {
                Health::Old
            } else {
                health[i]
            }
        })
        .collect();
    st.updated = count(&after) as u32;
    st.healthy = after.iter().filter(|h| **h == Health::Healthy).count() as u32;
    st.failed = after.iter().filter(|h| **h == Health::Failed).count() as u32;
    Decision {
        moves,
        status: st,
        notices,
        health,
    }
}

/// Seconds of `pauseBetweenWaves` other than `manual` (a number, or a string of digits).
fn pause_seconds(pause: Option<&IntOrString>) -> i64 {
    match pause {
        Some(IntOrString::Int(n)) => i64::from(*n).max(0),
        Some(IntOrString::String(s)) => s.trim().parse::<i64>().unwrap_or(0).max(0),
        None => 0,
    }
}

fn notice(reason: &'static str, message: String, warning: bool) -> Notice {
    Notice {
        reason,
        message,
        warning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stackplane_crds::Wave;

    const OLD: &str = "p-old";
    const NEW: &str = "p-new";

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("timestamp")
    }

    fn tenant(name: &str, tier: &str, canary: bool) -> TenantView {
        let mut t = stackplane_crds::Tenant::new(name, stackplane_crds::TenantSpec::new("p", tier));
        if canary {
            t.metadata.labels = Some([(CANARY.to_owned(), "true".to_owned())].into());
        }
        TenantView {
            tenant: Arc::new(CachedTenant::from(&t)),
            part: Part::Takes,
            target: Some(OLD.into()),
            running: Some(OLD.into()),
            moved_at: None,
            phase: Some(TenantPhase::Ready),
            ready_since: Some(at(-1000)),
        }
    }

    /// 10 tenants: t00, t01 canaries; t02..t05 on `starter`; the rest on `pro`.
    fn fleet() -> Vec<TenantView> {
        (0..10)
            .map(|i| {
                let tier = if (2..6).contains(&i) {
                    "starter"
                } else {
                    "pro"
                };
                tenant(&format!("t{i:02}"), tier, i < 2)
            })
            .collect()
    }

    fn three_waves() -> RolloutPolicy {
        RolloutPolicy {
            waves: vec![
                Wave {
                    name: Some("canary".into()),
                    canary: true,
                    ..Wave::default()
                },
                Wave {
                    name: Some("starter".into()),
                    tiers: vec!["starter".into()],
                    ..Wave::default()
                },
                Wave {
                    name: Some("everyone".into()),
                    ..Wave::default()
                },
            ],
            max_unavailable: Some(IntOrString::Int(2)),
            max_failures: Some(0),
            health_gate: 10,
            ..RolloutPolicy::default()
        }
    }

    fn run(
        policy: &RolloutPolicy,
        tenants: &[TenantView],
        previous: Option<&RolloutStatus>,
        control: Option<Control>,
        now: Timestamp,
    ) -> Decision {
        step(&Inputs {
            policy,
            update: NEW,
            current: Some(OLD),
            tenants,
            previous,
            control,
            now,
        })
    }

    fn names(d: &Decision) -> Vec<&str> {
        d.moves.iter().map(|m| m.tenant.as_str()).collect()
    }

    /// Applies `d`'s moves and plays every moved tenant Ready on the new revision at `now`.
    fn apply(tenants: &mut [TenantView], d: &Decision, now: Timestamp) {
        for m in &d.moves {
            let t = tenants
                .iter_mut()
                .find(|t| t.name() == m.tenant)
                .expect("moved tenant exists");
            t.target = Some(m.to.clone());
            t.running = Some(m.to.clone());
            t.moved_at = Some(now);
            t.ready_since = Some(now);
        }
    }

    #[test]
    fn percentages_round_up_and_counts_are_counts() {
        let pct = |s: &str| Some(IntOrString::String(s.into()));
        assert_eq!(scaled(pct("10%").as_ref(), 5, 100), 1);
        assert_eq!(scaled(pct("50%").as_ref(), 5, 100), 3);
        assert_eq!(scaled(pct("0%").as_ref(), 5, 100), 0);
        assert_eq!(scaled(pct("250%").as_ref(), 4, 100), 4);
        assert_eq!(scaled(Some(&IntOrString::Int(3)), 100, 100), 3);
        assert_eq!(scaled(None, 7, 100), 7);
        assert_eq!(scaled(pct("nonsense").as_ref(), 7, 100), 7);
    }

    #[test]
    fn waves_take_the_first_matching_wave_and_the_rest_goes_last() {
        let mut policy = three_waves();
        // The starter wave also selects canaries, but they are already taken.
        policy.waves[1].size = Some(IntOrString::String("50%".into()));
        policy.waves.pop();
        let w = waves(&policy, &fleet());
        let members: Vec<Vec<usize>> = w.iter().map(|w| w.members.clone()).collect();
        assert_eq!(
            members,
            vec![vec![0, 1], vec![2, 3], vec![4, 5, 6, 7, 8, 9]]
        );
        assert_eq!(w[2].name, "rest");
    }

    #[test]
    fn an_empty_wave_is_kept_and_passes_at_once() {
        let mut policy = three_waves();
        policy.waves[1].tiers = vec!["enterprise".into()];
        let w = waves(&policy, &fleet());
        assert_eq!(w.len(), 3);
        assert!(w[1].members.is_empty());
        // No policy waves: one wave of everyone; pinned and skipped tenants are in none.
        let mut tenants = fleet();
        tenants[3].part = Part::Pinned;
        tenants[4].part = Part::Skipped;
        let all = waves(&RolloutPolicy::default(), &tenants);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].members.len(), 8);
    }

    #[test]
    fn a_rollout_moves_wave_by_wave_never_more_than_max_unavailable() {
        let policy = three_waves();
        let mut tenants = fleet();
        let mut now = at(0);
        let mut status: Option<RolloutStatus> = None;
        let mut order = Vec::new();
        for _ in 0..200 {
            let d = run(&policy, &tenants, status.as_ref(), None, now);
            let moving = d.health.iter().filter(|h| **h == Health::Moving).count();
            assert!(
                moving + d.moves.len() <= 2,
                "more than maxUnavailable at {now}"
            );
            order.extend(names(&d).into_iter().map(str::to_owned));
            apply(&mut tenants, &d, now);
            status = Some(d.status.clone());
            if d.status.phase == RolloutPhase::Complete {
                break;
            }
            now = now.checked_add(SignedDuration::from_secs(5)).expect("time");
        }
        let st = status.expect("status");
        assert_eq!(st.phase, RolloutPhase::Complete, "{st:?}");
        assert_eq!(
            (st.updated, st.healthy, st.failed, st.total),
            (10, 10, 0, 10)
        );
        let expected: Vec<String> = (0..10).map(|i| format!("t{i:02}")).collect();
        assert_eq!(
            order, expected,
            "canaries, then starter, then the rest, each once"
        );
    }

    #[test]
    fn a_failed_canary_halts_and_auto_rollback_moves_it_back() {
        let mut policy = three_waves();
        policy.auto_rollback = true;
        let mut tenants = fleet();
        let d = run(&policy, &tenants, None, None, at(0));
        assert_eq!(names(&d), vec!["t00", "t01"]);
        apply(&mut tenants, &d, at(0));
        tenants[1].phase = Some(TenantPhase::Degraded);
        let d2 = run(&policy, &tenants, Some(&d.status), None, at(20));
        assert_eq!(d2.status.phase, RolloutPhase::Halted);
        assert!(d2.status.message.contains("t01"), "{}", d2.status.message);
        assert_eq!(
            d2.moves,
            vec![Move {
                tenant: "t01".into(),
                to: OLD.into()
            }]
        );
        // Halted: nothing else moves, however long it waits.
        apply(&mut tenants, &d2, at(20));
        let d3 = run(&policy, &tenants, Some(&d2.status), None, at(5000));
        assert!(d3.moves.is_empty());
        assert_eq!(d3.status.phase, RolloutPhase::Halted);
    }

    #[test]
    fn a_tenant_not_healthy_by_the_deadline_fails_and_failures_within_the_limit_pass() {
        let mut policy = three_waves();
        policy.max_failures = Some(1);
        policy.progress_deadline = 60;
        let mut tenants = fleet();
        let d = run(&policy, &tenants, None, None, at(0));
        apply(&mut tenants, &d, at(0));
        // t01 never reports the new revision.
        tenants[1].running = Some(OLD.into());
        let d2 = run(&policy, &tenants, Some(&d.status), None, at(30));
        assert_eq!(d2.health[1], Health::Moving);
        assert!(
            d2.moves.is_empty(),
            "the canary wave is not done: {:?}",
            d2.moves
        );
        let d3 = run(&policy, &tenants, Some(&d2.status), None, at(61));
        assert_eq!(d3.health[1], Health::Failed);
        assert_eq!(d3.status.phase, RolloutPhase::Progressing);
        assert_eq!(names(&d3), vec!["t02", "t03"], "one failure is tolerated");
    }

    #[test]
    fn rollback_pause_resume_and_manual_pauses() {
        let mut policy = three_waves();
        policy.pause_between_waves = Some(IntOrString::String("manual".into()));
        let mut tenants = fleet();
        let d = run(&policy, &tenants, None, None, at(0));
        apply(&mut tenants, &d, at(0));
        // Canaries healthy after the gate: wave 1 done, the rollout waits for `resume`.
        let d2 = run(&policy, &tenants, Some(&d.status), None, at(10));
        assert_eq!(d2.status.phase, RolloutPhase::Paused);
        assert_eq!(d2.status.wave, 2);
        assert!(d2.moves.is_empty());
        let d3 = run(
            &policy,
            &tenants,
            Some(&d2.status),
            Some(Control::Resume),
            at(11),
        );
        assert_eq!(d3.status.phase, RolloutPhase::Progressing);
        assert_eq!(names(&d3), vec!["t02", "t03"]);
        apply(&mut tenants, &d3, at(11));
        let d4 = run(
            &policy,
            &tenants,
            Some(&d3.status),
            Some(Control::Pause),
            at(12),
        );
        assert_eq!(d4.status.phase, RolloutPhase::Paused);
        assert!(d4.moves.is_empty());
        let d5 = run(
            &policy,
            &tenants,
            Some(&d4.status),
            Some(Control::Rollback),
            at(13),
        );
        let mut back = names(&d5);
        back.sort();
        assert_eq!(back, vec!["t00", "t01", "t02", "t03"]);
        assert!(d5.moves.iter().all(|m| m.to == OLD));
        assert_eq!(d5.status.phase, RolloutPhase::Halted);
        assert_eq!(d5.status.updated, 0);
    }

    #[test]
    fn pinned_tenants_stay_and_a_new_revision_restarts_the_waves() {
        let policy = three_waves();
        let mut tenants = fleet();
        tenants[0].part = Part::Pinned;
        let d = run(&policy, &tenants, None, None, at(0));
        assert_eq!(names(&d), vec!["t01"]);
        assert_eq!(d.status.pinned, 1);
        let mut older = d.status.clone();
        older.revision = "p-older".into();
        older.phase = RolloutPhase::Halted;
        let d2 = run(&policy, &tenants, Some(&older), None, at(1));
        assert_eq!(d2.status.phase, RolloutPhase::Progressing);
        assert_eq!(d2.status.wave, 1);
        assert!(d2.notices.iter().any(|n| n.reason == "RolloutStarted"));
    }

    #[test]
    fn immediate_moves_everyone_at_once() {
        let policy = RolloutPolicy {
            strategy: RolloutStrategy::Immediate,
            max_unavailable: Some(IntOrString::Int(1)),
            ..three_waves()
        };
        let d = run(&policy, &fleet(), None, None, at(0));
        assert_eq!(d.moves.len(), 10);
        assert_eq!(d.status.waves, 1);
    }

    #[test]
    fn health_needs_the_gate_after_the_move_not_before() {
        let policy = three_waves();
        let mut t = tenant("a", "pro", false);
        t.target = Some(NEW.into());
        t.running = Some(NEW.into());
        t.moved_at = Some(at(100));
        // Ready since long before the move: the gate counts from the move.
        assert_eq!(health(&t, NEW, &policy, at(105)), Health::Moving);
        assert_eq!(health(&t, NEW, &policy, at(110)), Health::Healthy);
        t.phase = Some(TenantPhase::Failed);
        assert_eq!(health(&t, NEW, &policy, at(110)), Health::Failed);
        t.target = Some(OLD.into());
        assert_eq!(health(&t, NEW, &policy, at(110)), Health::Old);
    }
}
