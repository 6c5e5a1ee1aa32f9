//! `kubectl stackplane`: the day-2 plugin. Reads and writes the same objects the controller and
//! the api use (Tenants, TenantBackups, Platforms, Events), computes a tenant's plan with the
//! controller's own code for `diff`, and calls the api for what lives in Postgres (replays).

pub mod api;
pub mod diff;
pub mod error;
pub mod ops;
pub mod output;
pub mod status;
