//! The pure core of stackplane: every decision the controller, the billing worker and the
//! plugin make, and the names of the contract they share. No kube client, no AWS SDK, no
//! database: each reconciler observes, asks a function here what to do, and executes the
//! answer. `cargo test -p stackplane-core` tests all of it in milliseconds, with nothing
//! started. `docs/architecture.md` is the contract this implements.

pub mod billing;
pub mod cache;
pub mod children;
pub mod cloud;
pub mod contract;
pub mod crd_upgrade;
pub mod rollout;
pub mod tenant;
