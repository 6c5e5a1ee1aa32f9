//! stackplane's HTTP API: Stripe webhooks and the billing worker, tenant status, metrics and
//! backups for the customer dashboard and SRE.

use std::net::SocketAddr;

/// mimalloc, not glibc's malloc: a request makes dozens of small allocations (headers,
/// extensions, the router's boxed futures), and under `status_load` glibc's malloc and free were
/// about a tenth of the server's CPU. Set here, in the library, so that every binary serving
/// these routes (the server, its benchmarks and tests) runs with the allocator it ships with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod audit;
pub mod auth;
pub mod billing;
pub mod caller;
pub mod config;
pub mod db;
pub mod extract;
pub mod hardening;
pub mod health;
pub mod history;
pub mod http_error;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod state;
pub mod supervisor;
pub mod telemetry;
pub mod tenants;

/// `stackplane-api` and its subcommands.
#[derive(clap::Parser, Debug)]
#[command(name = "stackplane-api", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "STACKPLANE_LOG_FORMAT", value_enum, default_value_t = telemetry::LogFormat::Text)]
    pub log_format: telemetry::LogFormat,

    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate(DatabaseArgs),
    /// Queue Stripe events again (failed, skipped or pending ones), writing the audit log.
    Replay(ReplayArgs),
}

/// Flags of `stackplane-api replay`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Event ids (`evt_...`).
    #[arg(required = true)]
    pub event_ids: Vec<String>,
}

/// Where the database is.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// Postgres connection URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

/// Flags of `stackplane-api serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address the public HTTP API (and the Stripe webhook) listens on.
    #[arg(long, env = "STACKPLANE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address of the internal listener: `/healthz`, `/readyz`, `/metrics` (probes and
    /// Prometheus only; never exposed by the Ingress).
    #[arg(
        long,
        env = "STACKPLANE_INTERNAL_LISTEN",
        default_value = "0.0.0.0:9091"
    )]
    pub internal_listen: SocketAddr,

    /// Seconds a verified tenant token is believed without asking the database; a revoked
    /// token stops working within this time (0: ask every time).
    #[arg(long, env = "STACKPLANE_TOKEN_CACHE_TTL", default_value_t = 10)]
    pub token_cache_ttl: u64,

    /// Postgres connection URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    #[command(flatten)]
    pub checkout: billing::checkout::CheckoutArgs,

    #[command(flatten)]
    pub stripe_sync: billing::stripe_api::StripeSyncArgs,

    #[command(flatten)]
    pub billing_worker: billing::worker::BillingWorkerArgs,

    #[command(flatten)]
    pub hardening: hardening::HardeningArgs,

    #[command(flatten)]
    pub metrics_source: tenants::MetricsSourceArgs,

    #[command(flatten)]
    pub cost_limits: tenants::quota::CostLimitArgs,
}
