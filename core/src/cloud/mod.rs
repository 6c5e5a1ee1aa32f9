//! The cloud step's decisions: a dedicated tier's instance ([`instance`]) and a tenant's DNS
//! record ([`dns`]), over the values the provider reports ([`model`]) and the tags stackplane
//! puts on what it creates ([`tags`]); what a backup asks of EC2 ([`snapshot`]); and when an
//! instance may be terminated ([`terminate`]: after its `pre-terminate` backup).

pub mod dns;
pub mod instance;
pub mod model;
pub mod snapshot;
pub mod tags;
pub mod terminate;
