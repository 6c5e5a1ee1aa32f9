//! The built `stackplane-api` binary refuses to start, naming the variable, when a required
//! secret is missing, empty or a placeholder, and checks that before it touches the database.

use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_stackplane-api");
const SECRETS: [&str; 3] = [
    "STRIPE_WEBHOOK_SECRETS",
    "STRIPE_SECRET_KEY",
    "STACKPLANE_ADMIN_TOKEN",
];
/// Nothing listens on port 1: connecting would fail (after sqlx's retries), never succeed.
const UNREACHABLE_DB: &str = "postgres://postgres@127.0.0.1:1/stackplane";

fn good(var: &str) -> &'static str {
    match var {
        "STRIPE_WEBHOOK_SECRETS" => "whsec_startup_a,whsec_startup_b",
        "STRIPE_SECRET_KEY" => "sk_test_51StartupKey",
        _ => "startup-admin-token",
    }
}

/// Runs the binary with the three secrets (one of them replaced by `broken`) and returns its
/// exit status and stderr.
fn run(broken: Option<(&str, Option<&str>)>) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("DATABASE_URL", UNREACHABLE_DB)
        .env("STACKPLANE_LISTEN", "127.0.0.1:0")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for var in SECRETS {
        match broken {
            Some((b, None)) if b == var => {}
            Some((b, Some(value))) if b == var => {
                cmd.env(var, value);
            }
            _ => {
                cmd.env(var, good(var));
            }
        }
    }
    let out = cmd.output().expect("run stackplane-api");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_missing_empty_or_placeholder_secret_stops_the_binary_before_the_database() {
    for var in SECRETS {
        for (what, value) in [
            ("missing", None),
            ("empty", Some("")),
            ("blank", Some("   ")),
            ("placeholder", Some("PLACEHOLDER_SET_ME")),
            ("changeme", Some("changeme")),
            ("template", Some("your-secret-here")),
        ] {
            let (code, stderr) = run(Some((var, value)));
            assert!(
                code.is_some_and(|c| c != 0),
                "{var} {what}: exit {code:?}, stderr: {stderr}"
            );
            assert!(
                stderr.contains(var),
                "{var} {what}: stderr names it: {stderr}"
            );
            assert!(
                !stderr.contains("DATABASE_URL"),
                "{var} {what}: refused before any database connection: {stderr}"
            );
        }
    }
}

#[test]
fn with_every_secret_set_the_binary_gets_as_far_as_the_database() {
    // The control for the test above: the same run with good secrets fails later, at the
    // database, so the secrets check is what stopped those runs.
    let (code, stderr) = run(None);
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {stderr}");
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
    for var in SECRETS {
        assert!(!stderr.contains(var), "{var} was accepted: {stderr}");
    }
}
