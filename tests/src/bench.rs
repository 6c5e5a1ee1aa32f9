//! What the benchmarks share: the one table each prints (figure, same-run baseline, ratio,
//! target, load average), whether a run is the CI smoke run, and the external HTTP load
//! generator (Debian's `wrk`, `STACKPLANE_WRK` to use another path).
//!
//! Every bench is a `harness = false` binary. `cargo bench` passes `--bench`: a full run at
//! the sizes of its knobs. `cargo test --bench NAME` (what `tests/run.sh` runs under
//! `make test`) passes nothing: a smoke run at a small size on a debug build, which checks that
//! the bench still works and that its figures are sane (nonzero), never how fast anything is.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether this is the smoke run (`cargo test`), not a measurement (`cargo bench`).
pub fn smoke() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// A size knob: `name` from the environment, else `full` (bench) or `small` (smoke).
pub fn knob(name: &str, full: usize, small: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) if smoke() => small,
        Err(_) => full,
    }
}

/// `/proc/loadavg`'s 1, 5 and 15 minute averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// One row: a figure next to the baseline it is compared with, measured in the same run.
#[derive(Debug, Clone)]
pub struct Row {
    pub what: String,
    pub measured: String,
    pub baseline: String,
    /// measured / baseline (for a rate; baseline / measured for a time), when there is one.
    pub ratio: Option<f64>,
    pub target: String,
    /// `/proc/loadavg` when the row was measured.
    pub load: String,
}

impl Row {
    pub fn new(what: impl Into<String>, measured: impl Into<String>) -> Self {
        Row {
            what: what.into(),
            measured: measured.into(),
            baseline: "-".into(),
            ratio: None,
            target: "-".into(),
            load: loadavg(),
        }
    }

    pub fn baseline(mut self, baseline: impl Into<String>, ratio: f64) -> Self {
        self.baseline = baseline.into();
        self.ratio = Some(ratio);
        self
    }

    /// The load average taken when the row's measurement began.
    pub fn load(mut self, load: impl Into<String>) -> Self {
        self.load = load.into();
        self
    }

    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = target.into();
        self
    }
}

/// Prints `rows` as one Markdown table (what docs/performance.md shows).
pub fn print_table(title: &str, rows: &[Row]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "\n{title} ({}; {} cores; load average when each row's measurement began)\n",
        if smoke() {
            "SMOKE run, debug build: figures not comparable"
        } else {
            "bench"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let _ = writeln!(
        out,
        "| what | measured | baseline (same run) | ratio | target | load avg |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for r in rows {
        let ratio = r.ratio.map_or("-".into(), |x| format!("{x:.2}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.what, r.measured, r.baseline, ratio, r.target, r.load
        );
    }
    let _ = out.flush();
}

/// The value at quantile `q` of sorted `values`.
pub fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(i.min(sorted.len() - 1)).copied()
}

/// Times this machine stood still: a thread that sleeps `TICK` at a time records every wake-up
/// later than `STALL` after the last one. Under load on two cores a sleeping thread still wakes
/// within milliseconds, so a gap that long means the whole machine stood still (seen here: a
/// 22 s gap in a 2 s `/proc` sampling loop during a 10,000-tenant run, the API server's and
/// etcd's CPU falling with it), and it lands in whichever phase runs then: the table reports it
/// per phase, so a ratio can be read with it.
pub struct Stalls {
    gaps: Arc<Mutex<Vec<(Instant, Duration)>>>,
}

const TICK: Duration = Duration::from_millis(50);
const STALL: Duration = Duration::from_millis(500);

impl Stalls {
    /// Starts the ticking thread (it runs until the process ends).
    pub fn start() -> Stalls {
        let gaps = Arc::<Mutex<Vec<_>>>::default();
        let record = gaps.clone();
        std::thread::spawn(move || {
            let mut last = Instant::now();
            loop {
                std::thread::sleep(TICK);
                let now = Instant::now();
                let gap = now - last;
                if gap > STALL {
                    if let Ok(mut g) = record.lock() {
                        g.push((now, gap.saturating_sub(TICK)));
                    }
                }
                last = now;
            }
        });
        Stalls { gaps }
    }

    /// The stalled time within `from..to`, and how many stalls it was.
    pub fn within(&self, from: Instant, to: Instant) -> (Duration, usize) {
        let gaps = self.gaps.lock().map(|g| g.clone()).unwrap_or_default();
        stalled_within(&gaps, from, to)
    }
}

/// The part of each gap (ending at its instant, lasting its duration) inside `from..to`.
fn stalled_within(gaps: &[(Instant, Duration)], from: Instant, to: Instant) -> (Duration, usize) {
    let mut total = Duration::ZERO;
    let mut count = 0;
    for &(end, length) in gaps {
        let start = end.checked_sub(length).unwrap_or(end);
        let overlap = end.min(to).saturating_duration_since(start.max(from));
        if !overlap.is_zero() {
            total += overlap;
            count += 1;
        }
    }
    (total, count)
}

/// What one `wrk` run measured.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Wrk {
    pub requests: u64,
    pub duration_us: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Answers that were not 2xx/3xx.
    pub status_errors: u64,
    /// Connect, read, write errors and timeouts.
    pub socket_errors: u64,
}

impl Wrk {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / (self.duration_us.max(1) as f64 / 1e6)
    }

    pub fn p99_ms(&self) -> f64 {
        self.p99_us as f64 / 1e3
    }

    pub fn p50_ms(&self) -> f64 {
        self.p50_us as f64 / 1e3
    }

    /// "N req/s (p50 a ms, p99 b ms)".
    pub fn describe(&self) -> String {
        format!(
            "{:.0} req/s (p50 {:.2} ms, p99 {:.2} ms, {} errors)",
            self.per_second(),
            self.p50_ms(),
            self.p99_ms(),
            self.status_errors + self.socket_errors
        )
    }
}

/// Appended to every script: prints the figures as one JSON line wrk's own report lacks
/// (exact p50/p99 in µs, error counts).
const DONE: &str = r#"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nWRK_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"status_errors":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.status, e.connect + e.read + e.write + e.timeout))
end
"#;

/// Where the wrk binary is.
pub fn wrk_binary() -> PathBuf {
    std::env::var_os("STACKPLANE_WRK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("wrk"))
}

/// Runs `wrk` against `url` with `connections` over 2 threads (the machine's cores) for
/// `seconds`, with `script` (Lua; may be empty) and `args` after `--` for it.
pub fn wrk(url: &str, connections: usize, seconds: u64, script: &str, args: &[&str]) -> Wrk {
    wrk_until(url, connections, seconds, script, args, || false)
}

/// [`wrk`], stopped early (SIGINT: wrk then reports what it measured until then) as soon as
/// `finished` says so; looked at every 10 ms.
pub fn wrk_until(
    url: &str,
    connections: usize,
    seconds: u64,
    script: &str,
    args: &[&str],
    mut finished: impl FnMut() -> bool,
) -> Wrk {
    let path = scratch_file(&format!(
        "{}.lua",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::write(&path, format!("{script}\n{DONE}")).expect("wrk script");
    let threads = connections.clamp(1, 2);
    let mut child = Command::new(wrk_binary())
        .args([
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
            "--timeout",
            "10s",
            "-s",
        ])
        .arg(&path)
        .arg(url)
        .arg("--")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "run {} (apt-get install wrk; tests/harness/install.sh installs it): {e}",
                wrk_binary().display()
            )
        });
    loop {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        if finished() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().expect("wrk output");
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "wrk failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json = stdout
        .lines()
        .find_map(|l| l.strip_prefix("WRK_JSON "))
        .unwrap_or_else(|| panic!("no figures in wrk's output: {stdout}"));
    serde_json::from_str(json).unwrap_or_else(|e| panic!("wrk figures {json}: {e}"))
}

/// A Lua string literal of `s` (what goes into generated wrk scripts).
pub fn lua_string(s: &str) -> String {
    format!("{s:?}")
}

/// A file next to the scripts (data for a script too large to inline).
pub fn scratch_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wrk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

/// Removes the scratch directory of this process.
pub fn clean_scratch() {
    let _ = std::fs::remove_dir_all(Path::new(
        &std::env::temp_dir().join(format!("wrk-{}", std::process::id())),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_part_of_a_stall_inside_the_window_counts() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let gaps = [
            (at(10), Duration::from_secs(4)), // 6..10: inside
            (at(22), Duration::from_secs(4)), // 18..22: 2 s inside 0..20
            (at(30), Duration::from_secs(2)), // 28..30: outside 0..20
        ];
        assert_eq!(
            stalled_within(&gaps, at(0), at(20)),
            (Duration::from_secs(6), 2)
        );
        assert_eq!(
            stalled_within(&gaps, at(20), at(40)),
            (Duration::from_secs(4), 2)
        );
        assert_eq!(stalled_within(&gaps, at(11), at(17)), (Duration::ZERO, 0));
    }
}
