//! The Helm chart as the tests see it: rendered and linted with real Helm (tests/harness/helm.py
//! on the harness's helm-python-sdk).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{required_env, workspace_root};

pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts/stackplane")
}

pub fn ci_values() -> PathBuf {
    chart_dir().join("ci/test-values.yaml")
}

/// Runs tests/harness/helm.py with the harness's helm-python-sdk; (success, stdout, stderr).
pub fn helm(args: &[&str]) -> (bool, String, String) {
    let python = required_env("STACKPLANE_HELM_PYTHON");
    assert!(
        Path::new(&python).is_file(),
        "STACKPLANE_HELM_PYTHON={python} does not exist: run tests/harness/install.sh (it installs helm-python-sdk)"
    );
    let out = Command::new(&python)
        .arg(workspace_root().join("tests/harness/helm.py"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {python} helm.py: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr)
        .lines()
        // Helm reports every symlinked CRD file at INFO level; that is expected.
        .filter(|l| !l.contains("found symbolic link in path"))
        .collect::<Vec<_>>()
        .join("\n");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

pub fn helm_ok(args: &[&str]) -> String {
    let (ok, out, err) = helm(args);
    assert!(ok, "helm.py {args:?} failed:\n{out}\n{err}");
    out
}

pub fn parse_docs(yaml: &str) -> Vec<serde_json::Value> {
    let docs: Vec<Option<serde_json::Value>> =
        serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("rendered YAML: {e}\n{yaml}"));
    docs.into_iter()
        .flatten()
        .filter(|d| d.is_object())
        .collect()
}
