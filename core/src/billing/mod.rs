//! Billing's decisions: what a Stripe event says ([`parse`]), how observations of one
//! subscription are ordered and merged into a Tenant's spec ([`mapping`]), which subscription
//! governs a Tenant ([`governing`]), the conditions billing writes ([`conditions`]), when
//! Stripe calls stop being made during an outage ([`circuit`]), and which customer a checkout
//! reuses ([`checkout_customer`]).

pub mod checkout_customer;
pub mod circuit;
pub mod conditions;
pub mod governing;
pub mod mapping;
pub mod parse;
pub mod prices;
