//! Fleet rollouts against the real kube-apiserver: a Platform change reaches 30 tenants wave
//! by wave, a bad image halts at the canaries and is rolled back. The node is played: a task
//! reports each Deployment rolled out, and available unless its image is tagged `bad`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use stackplane_controller::metrics::Metrics;
use stackplane_controller::rollout::RolloutConfig;
use stackplane_core::contract::labels::{
    CANARY, MANAGED_BY, MANAGED_BY_VALUE, REVISION_MOVED_AT, TARGET_REVISION, TENANT,
};
use stackplane_crds::{
    Platform, PlatformRevision, RolloutPhase, RolloutPolicy, Tenant, TenantPhase, TenantSpec, Wave,
};
use stackplane_tests::{eventually_within, kube_client, unique};

mod common;

const SHARD: &str = "stackplane.io/test-shard";

struct Fleet {
    client: Client,
    shard: String,
    platform: String,
    /// Tenant name → its wave as the policy defines it (1 canary, 2 starter, 3 the rest).
    waves: BTreeMap<String, u32>,
    metrics: Arc<Metrics>,
    controller: Option<common::Controller>,
    player: tokio::task::JoinHandle<()>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Stops the controller.
        drop(self.controller.take());
        self.player.abort();
    }
}

fn policy() -> RolloutPolicy {
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
        max_unavailable: Some(IntOrString::String("20%".into())),
        health_gate: 1,
        progress_deadline: 60,
        max_failures: Some(0),
        ..RolloutPolicy::default()
    }
}

/// Starts a controller for the shard; dropping it stops it.
fn start_controller(client: &Client, shard: &str, metrics: Arc<Metrics>) -> common::Controller {
    common::Controller::start(client, shard, |o| {
        o.concurrency = 8;
        o.rollout = RolloutConfig {
            poll: Duration::from_secs(1),
            ..RolloutConfig::default()
        };
        o.metrics = metrics;
    })
}

/// Plays the node for the shard's tenants: every Deployment is reported rolled out to its
/// generation, with its replicas available unless its first container's image ends in `:bad`.
fn play_node(client: Client, shard: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let all: Api<Deployment> = Api::all(client.clone());
        let tenants: Api<Tenant> = Api::all(client.clone());
        loop {
            let ours: BTreeSet<String> = tenants
                .list(&ListParams::default().labels(&format!("{SHARD}={shard}")))
                .await
                .map(|l| l.items.iter().map(|t| t.name_any()).collect())
                .unwrap_or_default();
            let listed = all
                .list(&ListParams::default().labels(&format!("{MANAGED_BY}={MANAGED_BY_VALUE}")))
                .await;
            for d in listed.map(|l| l.items).unwrap_or_default() {
                if !d.labels().get(TENANT).is_some_and(|t| ours.contains(t)) {
                    continue;
                }
                let spec = d.spec.clone().unwrap_or_default();
                let want = spec.replicas.unwrap_or(1);
                let bad = spec
                    .template
                    .spec
                    .as_ref()
                    .and_then(|p| p.containers.first())
                    .and_then(|c| c.image.as_deref())
                    .is_some_and(|i| i.ends_with(":bad"));
                let available = if bad { 0 } else { want };
                let st = d.status.clone().unwrap_or_default();
                if st.observed_generation == d.metadata.generation
                    && st.available_replicas.unwrap_or(0) == available
                    && st.updated_replicas.unwrap_or(0) == want
                {
                    continue;
                }
                let status = json!({"status": {"observedGeneration": d.metadata.generation,
                    "replicas": want, "updatedReplicas": want,
                    "readyReplicas": available, "availableReplicas": available}});
                let ns = d.namespace().unwrap_or_default();
                let _ = Api::<Deployment>::namespaced(client.clone(), &ns)
                    .patch_status(
                        &d.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&status),
                    )
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// A Platform with the three-wave policy, its controller, the played node and 30 tenants (2
/// canaries on `professional`, 10 on `starter`, 18 more on `professional`), all Ready on the
/// first revision, whose name is returned with the fleet.
async fn fleet() -> (Fleet, String) {
    let (client, shard) = common::cluster(
        "stackplane_controller=info,stackplane_controller::rollout=debug",
        kube_client(),
    )
    .await;
    let mut platform: Platform = stackplane_tests::example_platform("tackle.yaml");
    let pname = unique("plat");
    platform.metadata.name = Some(pname.clone());
    platform.metadata.labels = Some([(SHARD.to_owned(), shard.clone())].into());
    platform.spec.rollout = Some(policy());
    Api::<Platform>::all(client.clone())
        .create(&PostParams::default(), &platform)
        .await
        .expect("create platform");
    let metrics = Arc::new(Metrics::new());
    let controller = start_controller(&client, &shard, metrics.clone());
    // The first revision completes at once (no tenants yet).
    let first = eventually_within("the first revision is current", 60, || async {
        let p = Api::<Platform>::all(client.clone())
            .get(&pname)
            .await
            .ok()?;
        p.status?.current_revision
    })
    .await;
    let player = play_node(client.clone(), shard.clone());
    let mut waves = BTreeMap::new();
    for i in 0..30 {
        let (tier, canary, wave) = match i {
            0..=1 => ("professional", true, 1),
            2..=11 => ("starter", false, 2),
            _ => ("professional", false, 3),
        };
        let name = create_tenant(&client, &shard, &pname, tier, canary, None).await;
        waves.insert(name, wave);
    }
    let fleet = Fleet {
        client,
        shard,
        platform: pname,
        waves,
        metrics,
        controller: Some(controller),
        player,
    };
    let all: Vec<String> = fleet.waves.keys().cloned().collect();
    wait_running(&fleet, &all, &first, 180).await;
    (fleet, first)
}

async fn create_tenant(
    client: &Client,
    shard: &str,
    platform: &str,
    tier: &str,
    canary: bool,
    pin: Option<&str>,
) -> String {
    let name = unique("tn");
    let mut t = Tenant::new(&name, TenantSpec::new(platform, tier));
    let mut labels = BTreeMap::from([(SHARD.to_owned(), shard.to_owned())]);
    if canary {
        labels.insert(CANARY.to_owned(), "true".to_owned());
    }
    t.metadata.labels = Some(labels);
    t.spec.platform_revision = pin.map(str::to_owned);
    Api::<Tenant>::all(client.clone())
        .create(&PostParams::default(), &t)
        .await
        .expect("create tenant");
    name
}

async fn shard_tenants(f: &Fleet) -> Vec<Tenant> {
    Api::<Tenant>::all(f.client.clone())
        .list(&ListParams::default().labels(&format!("{SHARD}={}", f.shard)))
        .await
        .expect("list tenants")
        .items
}

fn running(t: &Tenant) -> Option<&str> {
    t.status.as_ref()?.platform_revision.as_deref()
}

fn target(t: &Tenant) -> Option<&str> {
    t.annotations().get(TARGET_REVISION).map(String::as_str)
}

fn ready(t: &Tenant) -> bool {
    t.status.as_ref().and_then(|s| s.phase) == Some(TenantPhase::Ready)
}

/// Waits until each of `names` runs `revision` and is Ready.
async fn wait_running(f: &Fleet, names: &[String], revision: &str, secs: u64) {
    eventually_within(
        &format!("{} tenants Ready on {revision}", names.len()),
        secs,
        || async {
            let tenants = shard_tenants(f).await;
            let done = names.iter().all(|n| {
                tenants
                    .iter()
                    .any(|t| &t.name_any() == n && running(t) == Some(revision) && ready(t))
            });
            done.then_some(())
        },
    )
    .await;
}

async fn platform(f: &Fleet) -> Platform {
    Api::<Platform>::all(f.client.clone())
        .get(&f.platform)
        .await
        .expect("get platform")
}

async fn set_image(f: &Fleet, image: &str) -> String {
    let mut p = platform(f).await;
    p.spec.components[0].image = image.to_owned();
    let old = p.status.as_ref().and_then(|s| s.update_revision.clone());
    Api::<Platform>::all(f.client.clone())
        .replace(&f.platform, &PostParams::default(), &p)
        .await
        .expect("change the image");
    eventually_within("a new update revision", 60, || async {
        let p = platform(f).await;
        let update = p.status?.update_revision?;
        (Some(&update) != old.as_ref()).then_some(update)
    })
    .await
}

async fn platform_events(f: &Fleet) -> Vec<String> {
    Api::<CoreEvent>::all(f.client.clone())
        .list(&ListParams::default().fields(&format!(
            "involvedObject.kind=Platform,involvedObject.name={}",
            f.platform
        )))
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::test]
async fn a_platform_change_rolls_out_wave_by_wave_past_a_restart_and_a_pin() {
    let (mut f, first) = fleet().await;
    let pinned = create_tenant(
        &f.client,
        &f.shard,
        &f.platform,
        "starter",
        false,
        Some(&first),
    )
    .await;
    wait_running(&f, std::slice::from_ref(&pinned), &first, 60).await;
    let started = Timestamp::now();
    let second = set_image(&f, "ghcr.io/tackle-crm/api:5.0.4").await;
    assert_ne!(first, second);

    // Sample every 200 ms until Complete: moves, health, and how many move at once.
    let mut moved_at: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut healthy_at: HashMap<String, Timestamp> = HashMap::new();
    let mut late: Option<String> = None;
    let mut late_first_target: Option<String> = None;
    let mut restarted = false;
    let mut most_moving = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rollout did not complete in 300s: {:?}",
            platform(&f).await.status
        );
        let tenants = shard_tenants(&f).await;
        let mut moving = 0;
        for t in &tenants {
            let name = t.name_any();
            if target(t) == Some(second.as_str()) {
                if let Some(at) = t.annotations().get(REVISION_MOVED_AT) {
                    moved_at.entry(name.clone()).or_default().insert(at.clone());
                }
                if running(t) == Some(second.as_str()) && ready(t) {
                    healthy_at
                        .entry(name.clone())
                        .or_insert_with(Timestamp::now);
                } else {
                    moving += 1;
                }
            }
            if Some(&name) == late.as_ref() && late_first_target.is_none() {
                late_first_target = target(t).map(str::to_owned);
            }
        }
        most_moving = most_moving.max(moving);
        // maxUnavailable 20% of the tenants taking part: 30, and the one created mid-rollout.
        let taking_part = 30 + usize::from(late.is_some());
        let max_unavailable = (taking_part * 20).div_ceil(100);
        assert!(
            moving <= max_unavailable,
            "{moving} tenants moving at once, more than {max_unavailable}"
        );
        let st = platform(&f).await.status.unwrap_or_default();
        let rollout = st.rollout.clone().unwrap_or_default();
        // Mid-rollout: a new tenant, and a controller restart.
        if rollout.revision == second && rollout.wave >= 2 && late.is_none() {
            let name = create_tenant(
                &f.client,
                &f.shard,
                &f.platform,
                "professional",
                false,
                None,
            )
            .await;
            late = Some(name);
        }
        if rollout.revision == second && rollout.wave >= 3 && !restarted {
            // The old one is stopped before the new one starts.
            drop(f.controller.take());
            f.controller = Some(start_controller(&f.client, &f.shard, f.metrics.clone()));
            restarted = true;
        }
        if rollout.revision == second && rollout.phase == RolloutPhase::Complete {
            assert_eq!(st.current_revision.as_deref(), Some(second.as_str()));
            // This sample listed the tenants before it read the Platform: a tenant of the last
            // wave that became healthy between the two reads (and so let the rollout complete)
            // is seen healthy now.
            for t in shard_tenants(&f).await {
                if target(&t) == Some(second.as_str())
                    && running(&t) == Some(second.as_str())
                    && ready(&t)
                {
                    healthy_at
                        .entry(t.name_any())
                        .or_insert_with(Timestamp::now);
                }
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let total = Timestamp::now().duration_since(started);
    assert!(restarted, "the controller was restarted mid-rollout");
    let late = late.expect("a tenant was created mid-rollout");
    assert_eq!(
        late_first_target.as_deref(),
        Some(first.as_str()),
        "a tenant created mid-rollout starts on the newest completed revision"
    );

    // Every tenant of the 30 and the late one run the new revision; the pinned one the old.
    let mut everyone: Vec<String> = f.waves.keys().cloned().collect();
    everyone.push(late.clone());
    wait_running(&f, &everyone, &second, 60).await;
    let tenants = shard_tenants(&f).await;
    let pin = tenants
        .iter()
        .find(|t| t.name_any() == pinned)
        .expect("pinned tenant");
    assert_eq!(
        running(pin),
        Some(first.as_str()),
        "the pinned tenant stays"
    );
    let pinned_image = Api::<Deployment>::namespaced(f.client.clone(), &format!("tenant-{pinned}"))
        .get("api")
        .await
        .expect("pinned api Deployment")
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.containers.first().and_then(|c| c.image.clone()));
    assert_eq!(
        pinned_image.as_deref(),
        Some("ghcr.io/tackle-crm/api:5.0.3")
    );

    // Each tenant moved once (no second move after the restart), in wave order.
    for (name, times) in &moved_at {
        assert_eq!(
            times.len(),
            1,
            "{name} was moved {} times: {times:?}",
            times.len()
        );
    }
    let at = |n: &str| -> Timestamp {
        moved_at[n]
            .iter()
            .next()
            .and_then(|s| s.parse().ok())
            .expect("moved_at")
    };
    let mut table = Vec::new();
    for wave in 1..=3u32 {
        let members: Vec<&String> = f
            .waves
            .iter()
            .filter(|(_, w)| **w == wave)
            .map(|(n, _)| n)
            .collect();
        let mut took: Vec<f64> = members
            .iter()
            .map(|n| healthy_at[*n].duration_since(at(n)).as_secs_f64())
            .collect();
        took.sort_by(f64::total_cmp);
        table.push((
            wave,
            members.len(),
            percentile(&took, 0.5),
            took.last().copied().unwrap_or(0.0),
        ));
        if wave < 3 {
            let last = members.iter().map(|n| at(n)).max().expect("members");
            let next_first = f
                .waves
                .iter()
                .filter(|(_, w)| **w == wave + 1)
                .map(|(n, _)| at(n))
                .min()
                .expect("next wave");
            assert!(
                last < next_first,
                "wave {wave} moved after wave {} began",
                wave + 1
            );
        }
    }
    println!(
        "rollout of 30 tenants: {:.1}s total, at most {most_moving} moving at once",
        total.as_secs_f64()
    );
    println!("| wave | tenants moved | time to healthy p50 | max | failures |");
    for (wave, n, p50, max) in table {
        println!("| {wave} | {n} | {p50:.1}s | {max:.1}s | 0 |");
    }

    // What operators see.
    let events = platform_events(&f).await;
    for reason in [
        "RevisionCreated",
        "RolloutStarted",
        "WaveComplete",
        "RolloutComplete",
    ] {
        assert!(
            events.iter().any(|e| e == reason),
            "no {reason} Event: {events:?}"
        );
    }
    let out = std::process::Command::new("kubectl")
        .args(["get", "platforms", &f.platform])
        .output()
        .expect("run kubectl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = text.lines().next().unwrap_or_default();
    assert!(
        header.contains("REVISION") && header.contains("ROLLOUT"),
        "{text}"
    );
    assert!(
        text.contains(&second) && text.contains("Complete"),
        "{text}"
    );
    let revisions: Vec<i64> = Api::<PlatformRevision>::all(f.client.clone())
        .list(&ListParams::default())
        .await
        .expect("list revisions")
        .items
        .into_iter()
        .filter(|r| r.spec.platform == f.platform)
        .map(|r| r.spec.revision)
        .collect();
    assert_eq!(revisions.len(), 2, "{revisions:?}");
    let metrics = f.metrics.encode().expect("metrics");
    assert!(
        metrics.contains(&format!(
            "stackplane_controller_rollout_tenants{{platform=\"{}\",revision=\"{second}\",state=\"healthy\"}} 31",
            f.platform
        )),
        "{}",
        metrics.lines().filter(|l| l.contains("rollout_tenants")).collect::<Vec<_>>().join("\n")
    );
}

#[tokio::test]
async fn a_bad_image_halts_at_the_canaries_and_rollback_returns_them() {
    let (f, first) = fleet().await;
    let bad = set_image(&f, "ghcr.io/tackle-crm/api:bad").await;
    let halted = eventually_within("the rollout halts", 120, || async {
        let r = platform(&f).await.status?.rollout?;
        (r.revision == bad && r.phase == RolloutPhase::Halted).then_some(r)
    })
    .await;
    assert!(halted.message.contains("canary"), "{}", halted.message);
    // The first canary to fail halts it (maxFailures 0); the other may fail before the halt.
    assert!((1..=2).contains(&halted.failed), "{halted:?}");
    // Nothing else moves, however long it is left.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let tenants = shard_tenants(&f).await;
    let (moved, stayed): (Vec<&Tenant>, Vec<&Tenant>) = tenants
        .iter()
        .partition(|t| target(t) == Some(bad.as_str()));
    let mut moved_names: Vec<String> = moved.iter().map(|t| t.name_any()).collect();
    moved_names.sort();
    let canaries: Vec<String> = f
        .waves
        .iter()
        .filter(|(_, w)| **w == 1)
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(moved_names, canaries, "only the canaries moved");
    assert_eq!(stayed.len(), 28);
    for t in &stayed {
        assert!(
            ready(t) && running(t) == Some(first.as_str()),
            "{} is not Ready on {first}",
            t.name_any()
        );
    }
    assert!(platform_events(&f)
        .await
        .iter()
        .any(|e| e == "RolloutHalted"));

    // rollback: the canaries return to the first revision and are Ready again.
    let patch = json!({"metadata": {"annotations": {"stackplane.io/rollout": "rollback"}}});
    Api::<Platform>::all(f.client.clone())
        .patch(&f.platform, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate rollback");
    wait_running(&f, &canaries, &first, 60).await;
    let p = platform(&f).await;
    assert!(
        !p.annotations().contains_key("stackplane.io/rollout"),
        "the annotation is removed"
    );

    // A fixed image then reaches all 30.
    let fixed = set_image(&f, "ghcr.io/tackle-crm/api:5.0.5").await;
    let all: Vec<String> = f.waves.keys().cloned().collect();
    wait_running(&f, &all, &fixed, 240).await;
    eventually_within("the fixed rollout completes", 60, || async {
        let r = platform(&f).await.status?.rollout?;
        (r.revision == fixed && r.phase == RolloutPhase::Complete && r.healthy == 30).then_some(())
    })
    .await;
}

/// A copy of a Platform listing the same prices (created later, its name first in the
/// alphabet) is `Valid=False`, reason `PriceConflict`, naming the original, which stays
/// `Valid=True`: the rule the api resolves prices by (`billing::prices::owner`).
#[tokio::test]
async fn a_copied_platform_is_invalid_with_a_price_conflict_naming_the_original() {
    let (client, shard) = common::cluster("stackplane_controller=info", kube_client()).await;
    let id = unique("x").replace('-', "");
    let prices = [format!("price_{id}s"), format!("price_{id}p")];
    let make = |name: &str| {
        let mut p: Platform = stackplane_tests::example_platform("tackle.yaml");
        p.metadata = kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some([(SHARD.to_owned(), shard.clone())].into()),
            ..Default::default()
        };
        p.spec.tiers.truncate(2);
        for (tier, price) in p.spec.tiers.iter_mut().zip(&prices) {
            tier.stripe_price_ids = vec![price.clone()];
        }
        p
    };
    let (original, copy) = (format!("zz-orig-{id}"), format!("aa-copy-{id}"));
    let platforms: Api<Platform> = Api::all(client.clone());
    platforms
        .create(&PostParams::default(), &make(&original))
        .await
        .expect("create original");
    // Created at least a second later: creation times are whole seconds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    platforms
        .create(&PostParams::default(), &make(&copy))
        .await
        .expect("create copy");
    let _controller = start_controller(&client, &shard, Arc::new(Metrics::new()));
    let valid = |name: String| {
        let platforms = platforms.clone();
        async move {
            let p = platforms.get(&name).await.ok()?;
            p.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Valid")
        }
    };
    let c = eventually_within("the copy's Valid condition", 60, || valid(copy.clone())).await;
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "PriceConflict"),
        "{c:?}"
    );
    assert!(c.message.contains(&original), "{}", c.message);
    assert!(
        prices.iter().all(|p| c.message.contains(p)),
        "{}",
        c.message
    );
    let o = eventually_within("the original's Valid condition", 60, || {
        valid(original.clone())
    })
    .await;
    assert_eq!(o.status, "True", "{o:?}");
    // Without the original, the copy owns its prices.
    platforms
        .delete(&original, &Default::default())
        .await
        .expect("delete original");
    eventually_within("the copy valid once alone", 90, || async {
        valid(copy.clone()).await.filter(|c| c.status == "True")
    })
    .await;
    let _ = platforms.delete(&copy, &Default::default()).await;
}
