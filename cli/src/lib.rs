//! `kubectl stackplane`: the day-2 plugin. Reads and writes the same objects the controller and
//! the api use (Tenants, TenantBackups, Platforms, Events), computes a tenant's plan for `diff`
//! with the decisions the controller runs (`stackplane_core`), and calls the api for what lives
//! in Postgres (replays). It links `stackplane-core` and kube's client, never the controller
//! crate (nor, through it, an AWS SDK).

pub mod api;
pub mod client;
pub mod diff;
pub mod dry_run;
pub mod error;
// The controller's mocked API server (`tower-test`), for the dry run's unit tests; the plugin's
// tests use part of it.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../controller/src/mock_api.rs"]
mod mock_api;
pub mod ops;
pub mod output;
pub mod status;
