//! Stripe billing: the webhook, the worker that turns events into Tenants (reading Stripe, the
//! source of truth, after each), the sweep, and the pure logic between them: parsing, ordering
//! and merging, the governing subscription, conditions.

pub mod checkout;
pub mod conditions;
pub mod error;
pub mod events;
pub mod governing;
pub mod intake;
pub mod mapping;
pub mod parse;
pub mod prices;
pub mod replay;
pub mod stripe_api;
pub mod sweep;
pub mod sync;
pub mod webhook;
pub mod worker;
