//! Support for the integration tests: connections to the real components that
//! `tests/harness/up.sh` starts (kube-apiserver, Postgres, moto), found through the environment
//! it exports. A test whose component is missing fails and says how to start it; none skips.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use sqlx::postgres::PgPool;

pub mod bench;
pub mod chart;
pub mod hanging;
pub mod localstripe;

const HOW_TO_RUN: &str =
    "run the tests with `make test` (tests/run.sh), which starts the real components and exports their addresses";

/// The value of an environment variable the harness exports, or a panic naming it.
pub fn required_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => panic!("{name} is not set: {HOW_TO_RUN}"),
    }
}

/// The root of the workspace.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A client of the test cluster's kube-apiserver, from `KUBECONFIG`.
pub async fn kube_client() -> Client {
    let path = required_env("KUBECONFIG");
    assert!(
        Path::new(&path).is_file(),
        "KUBECONFIG={path} does not exist: {HOW_TO_RUN}"
    );
    let client = Client::try_default()
        .await
        .unwrap_or_else(|e| panic!("cannot build a client from KUBECONFIG={path}: {e}"));
    if let Err(e) = client.apiserver_version().await {
        panic!("kube-apiserver from KUBECONFIG={path} does not answer: {e}; {HOW_TO_RUN}");
    }
    client
}

/// A client of the harness's node cluster (`STACKPLANE_NODE_KUBECONFIG`): a second API server
/// with one real node (kubelet, containerd, scheduler, the workload controllers), where pods
/// run and probes decide readiness. `make test` starts it (`STACKPLANE_NODE=1`).
pub async fn node_kube_client() -> Client {
    let path = required_env("STACKPLANE_NODE_KUBECONFIG");
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("cannot read STACKPLANE_NODE_KUBECONFIG={path}: {e}"));
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("bad STACKPLANE_NODE_KUBECONFIG={path}: {e}"));
    let client = Client::try_from(config)
        .unwrap_or_else(|e| panic!("cannot build a client from {path}: {e}"));
    if let Err(e) = client.apiserver_version().await {
        panic!("the node cluster's kube-apiserver ({path}) does not answer: {e}; {HOW_TO_RUN}");
    }
    client
}

/// The address pods of the node cluster reach the harness's Postgres at, and its port:
/// `DATABASE_URL` with the node's gateway (`STACKPLANE_NODE_DATABASE_HOST`) as host.
pub fn node_database_url(database: &str) -> String {
    let host = required_env("STACKPLANE_NODE_DATABASE_HOST");
    let url = required_env("DATABASE_URL");
    let port = url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap_or_else(|| panic!("no port in DATABASE_URL={url}"));
    format!("postgres://postgres@{host}:{port}/{database}")
}

/// Installs (server-side apply) every stackplane CRD and waits until each is Established.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("stackplane-tests").force();
    for crd in stackplane_crds::all_crds() {
        let name = crd.name_any();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("apply CRD {name}: {e}"));
    }
    for crd in stackplane_crds::all_crds() {
        let name = crd.name_any();
        let established = kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(30), established)
            .await
            .unwrap_or_else(|_| panic!("CRD {name} not Established within 30s"))
            .unwrap_or_else(|e| panic!("watching CRD {name}: {e}"));
    }
}

/// Polls `f` until it answers `Some`, failing the test after 60 seconds, naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_within(what, 60, f).await
}

/// [`eventually`] with its own deadline in seconds.
pub async fn eventually_within<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A name unique to one test run, so tests sharing a cluster or database never collide.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..10])
}

/// A new, empty database on the harness's Postgres, for one test. Dropped with the cluster.
pub async fn fresh_database() -> (PgPool, String) {
    let url = required_env("DATABASE_URL");
    let admin = PgPool::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to DATABASE_URL ({e}): {HOW_TO_RUN}"));
    let name = unique("test").replace('-', "_");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap_or_else(|e| panic!("create database {name}: {e}"));
    admin.close().await;
    let (base, _) = url.rsplit_once('/').unwrap_or((&url, ""));
    let db_url = format!("{base}/{name}");
    let pool = PgPool::connect(&db_url)
        .await
        .unwrap_or_else(|e| panic!("connect to {db_url}: {e}"));
    (pool, db_url)
}

/// Serves `app` on a free loopback port for as long as the test runs (with the peer address,
/// which the api's rate limits key on); its base URL, `http://127.0.0.1:<port>`.
pub async fn serve_on_free_port(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind a free port: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local address: {e}"));
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    format!("http://{addr}")
}

/// The AWS SDK configuration pointed at moto through `AWS_ENDPOINT_URL`.
pub async fn aws_config() -> aws_config::SdkConfig {
    let endpoint = required_env("AWS_ENDPOINT_URL");
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(https)
        .endpoint_url(endpoint)
        .load()
        .await
}

/// An AMI id moto knows (it ships Amazon's images), for instances the tests run in moto.
pub async fn moto_image(ec2: &aws_sdk_ec2::Client) -> String {
    ec2.describe_images()
        .owners("amazon")
        .send()
        .await
        .unwrap_or_else(|e| panic!("DescribeImages against moto: {e:?}"))
        .images()
        .iter()
        .find_map(|i| i.image_id().map(str::to_owned))
        .unwrap_or_else(|| panic!("moto lists no Amazon AMI"))
}

/// The example `stackpro-business` Platform made fit for the cloud tests: every dedicated tier
/// runs `image` (an AMI moto knows), a tier `shared` without an instance is added (moving a
/// tenant there is how its instance is given up), and no component has a volume (deletion is
/// what those tests check, not storage).
pub fn cloud_test_platform(platform: &mut stackplane_crds::Platform, image: &str) {
    let mut shared = platform.spec.tiers[0].clone();
    shared.name = "shared".into();
    shared.stripe_price_ids.clear();
    shared.dedicated_instance = None;
    for tier in &mut platform.spec.tiers {
        if let Some(d) = tier.dedicated_instance.as_mut() {
            d.image_id = image.to_owned();
        }
    }
    platform.spec.tiers.push(shared);
    for c in &mut platform.spec.components {
        c.storage = None;
    }
}

/// The label the process tests shard their controllers by (`--tenant-selector`), so each test's
/// controller reconciles only that test's tenants.
pub const TEST_SHARD_LABEL: &str = "stackplane.io/test-shard";

/// Creates a `starter` Tenant of `platform` in test shard `shard`; its (unique) name.
pub async fn create_sharded_tenant(client: &Client, platform: &str, shard: &str) -> String {
    use stackplane_crds::{Tenant, TenantSpec};
    let name = unique("tn");
    let mut t = Tenant::new(&name, TenantSpec::new(platform, "starter"));
    t.metadata.labels = Some([(TEST_SHARD_LABEL.to_owned(), shard.to_owned())].into());
    kube::Api::<Tenant>::all(client.clone())
        .create(&kube::api::PostParams::default(), &t)
        .await
        .unwrap_or_else(|e| panic!("create tenant {name}: {e}"));
    name
}

/// The example Platform of `examples/platforms/<file>`, parsed.
pub fn example_platform(file: &str) -> stackplane_crds::Platform {
    let (_, yaml) = example_platform_files()
        .into_iter()
        .find(|(f, _)| f == file)
        .unwrap_or_else(|| panic!("no example platform {file}"));
    serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("parse {file}: {e}"))
}

/// The example Platform of `examples/platforms/<file>` under another `name`, its Stripe prices
/// made this copy's own (the letters and digits of its name appended). A copy that kept the example's prices would
/// list them on a second Platform: billing gives a price to the Platform that listed it first,
/// so a copy left in the shared API server by one test would take the customers of every later
/// billing test (the rule a copied Platform must not break in production is tested on purpose
/// in api/tests/billing_model.rs).
pub fn example_platform_copy(file: &str, name: &str) -> stackplane_crds::Platform {
    let mut platform = example_platform(file);
    platform.metadata.name = Some(name.to_owned());
    // Price ids are `price_` and letters and digits only (the CRD's pattern).
    let own: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
    for tier in &mut platform.spec.tiers {
        for price in &mut tier.stripe_price_ids {
            price.push_str(&own);
        }
    }
    platform
}

/// Applies the example Platform of `examples/platforms/<file>` (server-side, forced, so every
/// test that needs it converges on the same object) and returns it.
pub async fn apply_example_platform(client: &Client, file: &str) -> stackplane_crds::Platform {
    use kube::api::{Patch, PatchParams};
    let platform = example_platform(file);
    let name = platform
        .metadata
        .name
        .clone()
        .unwrap_or_else(|| panic!("{file} names no platform"));
    kube::Api::<stackplane_crds::Platform>::all(client.clone())
        .patch(
            &name,
            &PatchParams::apply("stackplane-tests").force(),
            &Patch::Apply(&platform),
        )
        .await
        .unwrap_or_else(|e| panic!("apply platform {name}: {e}"))
}

/// Every example Platform under `examples/platforms/`, as (file name, YAML).
pub fn example_platform_files() -> Vec<(String, String)> {
    let dir = workspace_root().join("examples/platforms");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
            (
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
                text,
            )
        })
        .collect()
}

/// A `Stripe-Signature` header for `payload`, computed as Stripe computes it: HMAC-SHA256 with
/// the webhook secret over `"<t>.<payload>"`.
pub fn stripe_signature(payload: &str, secret: &str, t: i64) -> String {
    use hmac::{Hmac, Mac};
    // HMAC accepts a key of any length; new_from_slice never fails for it.
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(e) => panic!("HMAC key: {e}"),
    };
    mac.update(format!("{t}.{payload}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The path of a binary of this workspace (`stackplane-controller`, `stackplane-api`), built
/// first with the cargo that builds the tests, so a test never runs a stale binary.
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    let mut cargo = std::process::Command::new(env!("CARGO"));
    // Run as a developer's `cargo build` runs: without the variables cargo sets for this test
    // process (package name, manifest dir, ...), so the build reuses what `make demo` built.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let keep = matches!(key.as_ref(), "CARGO_HOME" | "CARGO_TARGET_DIR");
        if !keep && (key.starts_with("CARGO_") || key == "OUT_DIR") {
            cargo.env_remove(key.as_ref());
        }
    }
    // The whole workspace with its test targets, as `cargo test --workspace` builds it: one
    // feature resolution for every dependency. `-p {package}` alone would resolve features
    // without the dev-dependencies, recompile the dependencies they share (aws-sdk-ec2 among
    // them, minutes of it) and overwrite the binaries the other tests use.
    let status = cargo
        .args([
            "build",
            "--quiet",
            "--locked",
            "--workspace",
            "--bins",
            "--tests",
        ])
        .current_dir(workspace_root())
        .status()
        .unwrap_or_else(|e| panic!("running cargo build for {package}'s {bin}: {e}"));
    assert!(
        status.success(),
        "cargo build --workspace --bins --tests (for {package}'s {bin}) failed"
    );
    // Test executables live in <target>/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("no target directory above {}", exe.display()));
    let path = profile_dir.join(bin);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// A copy of the harness's kubeconfig whose user impersonates the ServiceAccount
/// `namespace/name` (with the groups the API server gives ServiceAccounts), written to `path`.
/// A process using it has exactly the RBAC permissions of that ServiceAccount.
pub fn impersonating_kubeconfig(namespace: &str, name: &str, path: &Path) {
    let source = required_env("KUBECONFIG");
    let text = std::fs::read_to_string(&source).unwrap_or_else(|e| panic!("read {source}: {e}"));
    let mut config: serde_json::Value =
        serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("parse {source}: {e}"));
    let users = config
        .get_mut("users")
        .and_then(serde_json::Value::as_array_mut)
        .unwrap_or_else(|| panic!("{source} has no users"));
    for user in users {
        let Some(u) = user
            .get_mut("user")
            .and_then(serde_json::Value::as_object_mut)
        else {
            continue;
        };
        u.insert(
            "as".into(),
            format!("system:serviceaccount:{namespace}:{name}").into(),
        );
        u.insert(
            "as-groups".into(),
            serde_json::json!([
                "system:serviceaccounts",
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated"
            ]),
        );
    }
    // JSON is YAML: every kubeconfig reader accepts it.
    let body = serde_json::to_string_pretty(&config).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(path, body).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A Postgres cluster of one test's own, on a free port, that the test may stop and start
/// (the harness's shared Postgres must never be stopped: other tests use it). Stopped and
/// removed when dropped.
pub struct PrivatePostgres {
    /// `postgres://postgres@127.0.0.1:<port>/postgres`
    pub url: String,
    dir: PathBuf,
    port: u16,
}

impl PrivatePostgres {
    fn bin(name: &str) -> PathBuf {
        let dir = std::env::var("PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
        let path = Path::new(&dir).join(name);
        assert!(
            path.is_file(),
            "{} is missing: run tests/harness/install.sh (package postgresql-15)",
            path.display()
        );
        path
    }

    /// Postgres refuses to run as root: as root, run its binaries as the `postgres` user.
    fn command(bin: &str) -> std::process::Command {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if root {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(Self::bin(bin));
            c
        } else {
            std::process::Command::new(Self::bin(bin))
        }
    }

    fn run(mut command: std::process::Command, what: &str) {
        let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// initdb and start a new cluster.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("stackplane-pg"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        // The postgres user must own the directory when the binaries run as it.
        let _ = std::process::Command::new("chown")
            .arg("postgres")
            .arg(&dir)
            .status();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("a free port: {e}"));
        let mut initdb = Self::command("initdb");
        initdb.arg("-D").arg(dir.join("data")).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ]);
        Self::run(initdb, "initdb");
        let pg = Self {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            port,
        };
        pg.resume();
        pg
    }

    /// Stops the server (fast shutdown: open connections are cut, as in an outage).
    pub fn stop(&self) {
        let mut stop = Self::command("pg_ctl");
        stop.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "-t", "60", "stop"]);
        Self::run(stop, "pg_ctl stop");
    }

    /// Starts the stopped server again on the same port.
    pub fn resume(&self) {
        let mut start = Self::command("pg_ctl");
        start
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-t", "60", "-o"])
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                self.port,
                self.dir.display()
            ))
            .arg("start");
        Self::run(start, "pg_ctl start");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Self::command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
