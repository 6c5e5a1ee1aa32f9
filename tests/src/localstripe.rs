//! A localstripe (fake Stripe) instance of one test, and the `stripe` Python SDK driver that
//! plays the customer against it (`tests/harness/stripe_driver.py`). Each instance keeps its
//! store in memory (`tests/harness/localstripe_server.py`), so tests that list every
//! subscription (the sweep) see only their own. The harness exports the virtualenv's python as
//! `STACKPLANE_STRIPE_PYTHON`; without it the test fails and says how to run it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{required_env, workspace_root};

/// A running localstripe, stopped (by its pid) when dropped.
pub struct LocalStripe {
    pub url: String,
    pub port: u16,
    child: Child,
    log: PathBuf,
}

fn harness(file: &str) -> PathBuf {
    workspace_root().join("tests/harness").join(file)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

impl LocalStripe {
    /// Starts an empty instance on a free port and waits until it answers.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts one with extra arguments of `localstripe_server.py` (e.g. `--seed 10000`).
    pub async fn start_with(extra: &[&str]) -> Self {
        let python = required_env("STACKPLANE_STRIPE_PYTHON");
        let port = free_port();
        let log = std::env::temp_dir().join(format!("localstripe-{port}.log"));
        let out =
            std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().unwrap_or_else(|e| panic!("log file: {e}"));
        let child = Command::new(&python)
            .arg(harness("localstripe_server.py"))
            .args(["--port", &port.to_string()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start localstripe with {python}: {e}"));
        let me = Self {
            url: format!("http://127.0.0.1:{port}"),
            port,
            child,
            log,
        };
        let http = reqwest::Client::new();
        let probe = format!("{}/v1/customers?limit=1", me.url);
        crate::eventually_within("localstripe to answer", 120, || {
            let http = http.clone();
            let probe = probe.clone();
            async move {
                let r = http
                    .get(&probe)
                    .bearer_auth("sk_test_probe")
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
        me
    }

    /// Runs one driver command (see `stripe_driver.py`) and returns its JSON answer.
    pub async fn drive(&self, args: &[&str]) -> serde_json::Value {
        let python = required_env("STACKPLANE_STRIPE_PYTHON");
        let mut command = Command::new(python);
        command
            .arg(harness("stripe_driver.py"))
            .args(["--api-base", &self.url])
            .args(args);
        let what = args.join(" ");
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap_or_else(|e| panic!("driver task: {e}"))
            .unwrap_or_else(|e| panic!("run stripe_driver.py {what}: {e}"));
        assert!(
            output.status.success(),
            "stripe_driver.py {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "stripe_driver.py {} printed no JSON ({e}): {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// The requests localstripe logged for `path_prefix` (its access log), e.g. to count calls.
    pub fn requests(&self, path_prefix: &str) -> usize {
        let needle = format!("\"GET {path_prefix}");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }
}

impl Drop for LocalStripe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
