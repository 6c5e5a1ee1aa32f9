//! Stripe billing intake: the webhook, the worker that turns events into Tenants, and the
//! pure mapping between them.

pub mod checkout;
pub mod error;
pub mod mapping;
pub mod prices;
pub mod replay;
pub mod webhook;
pub mod worker;
