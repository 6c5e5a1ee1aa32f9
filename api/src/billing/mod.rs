//! Stripe billing: the webhook, the worker that turns events into Tenants (reading Stripe, the
//! source of truth, after each), the sweep, and the pure logic between them: parsing, ordering
//! and merging, the governing subscription, conditions (those pure parts live in
//! `stackplane_core::billing`).

pub mod checkout;
pub mod checkout_customers;
pub mod error;
pub mod events;
pub mod intake;
pub mod prices;
pub mod replay;
pub mod stripe_api;
pub mod sweep;
pub mod sync;
pub mod webhook;
pub mod worker;
