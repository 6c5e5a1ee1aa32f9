//! `stackplane-api`: the HTTP API and billing worker.

use anyhow::Context;
use clap::Parser;
use stackplane_api::supervisor::{supervise, supervise_once, Health};
use stackplane_api::{db, server, telemetry, Cli, Command};

/// How often the billing queue's depth is read for `/metrics`.
const QUEUE_SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match cli.command {
        Some(Command::Migrate(args)) => {
            let pool = db::connect(&args.database_url)
                .await
                .context("connecting to DATABASE_URL")?;
            db::migrate(&pool).await.context("applying migrations")?;
            tracing::info!(
                migrations = db::MIGRATOR.iter().count(),
                "database is up to date"
            );
            Ok(())
        }
        Some(Command::Replay(args)) => {
            let pool = db::connect(&args.database.database_url)
                .await
                .context("connecting to DATABASE_URL")?;
            db::migrate(&pool).await.context("applying migrations")?;
            let mut failed = false;
            for id in &args.event_ids {
                let result =
                    stackplane_api::billing::replay::replay(&pool, id, "admin", "cli").await?;
                tracing::info!(event_id = %id, result = ?result, "replay");
                failed |= !matches!(result, stackplane_api::billing::replay::Replay::Queued(_));
            }
            if failed {
                anyhow::bail!("some events were not queued (see above)");
            }
            Ok(())
        }
        Some(Command::Serve) | None => {
            let args = cli.serve;
            // Secrets first: a misconfigured deployment fails at once, naming the variable,
            // rather than after (or instead of) a database connection attempt.
            let env = |k: &str| std::env::var(k).ok();
            let secrets = stackplane_api::config::Secrets::from_values(
                env("STRIPE_WEBHOOK_SECRETS").as_deref(),
                env("STRIPE_SECRET_KEY").as_deref(),
                env("STACKPLANE_ADMIN_TOKEN").as_deref(),
            )?;
            let url = args
                .database_url
                .filter(|u| !u.trim().is_empty())
                .context("DATABASE_URL is not set: the API needs Postgres")?;
            let pool = db::connect(&url)
                .await
                .context("connecting to DATABASE_URL")?;
            db::migrate(&pool).await.context("applying migrations")?;
            let state = stackplane_api::state::AppState {
                db: pool,
                metrics: stackplane_api::metrics::Metrics::new(),
                billing: std::sync::Arc::new(stackplane_api::state::BillingState {
                    secrets,
                    wake: Default::default(),
                }),
            };
            let kube = kube::Client::try_default()
                .await
                .context("building a Kubernetes client (KUBECONFIG or in-cluster)")?;
            let health = Health::default();
            // The public port is bound before /readyz can answer ok, so a client that waited
            // for readiness is queued by the kernel, never refused, until serving starts below.
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("binding {}", args.listen))?;
            // The internal listener next: probes and scrapes answer while the caches fill.
            let internal = tokio::net::TcpListener::bind(args.internal_listen)
                .await
                .with_context(|| format!("binding {}", args.internal_listen))?;
            let internal_app = stackplane_api::health::router(stackplane_api::health::Internal {
                db: state.db.clone(),
                kube: Some(kube.clone()),
                metrics: state.metrics.clone(),
                health: health.clone(),
            });
            tracing::info!(listen = %args.internal_listen, "serving /healthz, /readyz and /metrics");
            tokio::spawn(async move {
                if let Err(error) = axum::serve(internal, internal_app)
                    .with_graceful_shutdown(telemetry::shutdown_signal())
                    .await
                {
                    tracing::error!(%error, "the internal listener failed");
                }
            });
            let (mut tenant_api, watches) = stackplane_api::tenants::TenantApi::start(
                state.db.clone(),
                kube.clone(),
                args.metrics_source.clone(),
            );
            tenant_api.cost_limits = args.cost_limits.clone();
            let watches = std::sync::Arc::new(watches);
            let w = watches.clone();
            supervise(&health, "tenant-watch", move || w.tenants());
            supervise(&health, "tenant-backup-watch", move || watches.backups());
            // Serve tenant status only from a filled cache: before the first list every tenant
            // would look missing.
            tokio::time::timeout(std::time::Duration::from_secs(120), tenant_api.ready())
                .await
                .context("the Tenant and TenantBackup caches did not fill within 120s")?;
            let (prices, driver) =
                stackplane_api::billing::prices::PlatformCache::start(kube.clone());
            supervise_once(&health, "platform-watch", driver);
            let stripe_api = std::sync::Arc::new(
                stackplane_api::billing::stripe_api::StripeApi::new(
                    args.checkout.stripe_api_base.as_deref(),
                    &state.billing.secrets.stripe_secret_key,
                    args.stripe_sync.stripe_api_rate,
                    Default::default(),
                    state.metrics.clone(),
                )
                .context("building the Stripe API reader")?
                .with_circuit(args.stripe_sync.circuit()),
            );
            let checkout = stackplane_api::billing::checkout::Checkout::new(
                &args.checkout,
                &state.billing.secrets.stripe_secret_key,
                prices.clone(),
                kube.clone(),
            )
            .context("building the Stripe client")?
            .with_stripe_api(stripe_api.clone());
            let livemode = stackplane_api::billing::worker::key_livemode(
                &state.billing.secrets.stripe_secret_key,
            );
            if livemode.is_none() {
                tracing::warn!("STRIPE_SECRET_KEY is neither sk_/rk_live_ nor sk_/rk_test_: event livemode is not checked");
            }
            let worker = stackplane_api::billing::worker::Worker::new(
                state.db.clone(),
                kube,
                prices,
                state.metrics.clone(),
            )
            .with_stripe(stripe_api)
            .with_livemode(livemode)
            .with_connect_accounts(args.billing_worker.stripe_connect_accounts.clone());
            let wake = state.billing.wake.clone();
            let sync_interval = args.stripe_sync.billing_sync_interval;
            if sync_interval > 0 {
                let sweeper = worker.clone();
                supervise(&health, "billing-sweep", move || {
                    sweeper.clone().run_sweeps(
                        std::time::Duration::from_secs(sync_interval),
                        telemetry::shutdown_signal(),
                    )
                });
            }
            let workers = args.billing_worker.billing_workers;
            tracing::info!(workers, "starting the billing workers");
            supervise(&health, "billing-worker", move || {
                worker
                    .clone()
                    .run_workers(workers, wake.clone(), telemetry::shutdown_signal())
            });
            let (metrics, db) = (state.metrics.clone(), state.db.clone());
            supervise(&health, "queue-sampler", move || {
                metrics
                    .clone()
                    .sample_queue(db.clone(), QUEUE_SAMPLE_INTERVAL)
            });
            tracing::info!(listen = %args.listen, "serving stackplane-api");
            let options = server::RouterOptions {
                hardening: args.hardening,
                checkout: Some(std::sync::Arc::new(checkout)),
                tenants: Some(tenant_api),
                token_cache_ttl: std::time::Duration::from_secs(args.token_cache_ttl),
            };
            // Peer addresses feed the per-client rate limits.
            let app = server::router_with(state, options)
                .into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, app)
                .with_graceful_shutdown(telemetry::shutdown_signal())
                .await?;
            tracing::info!("shut down");
            Ok(())
        }
    }
}
