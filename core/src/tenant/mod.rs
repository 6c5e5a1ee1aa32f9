//! A Tenant's decisions: whether its spec can be planned ([`validate`]), the objects its stack
//! consists of ([`plan`]), and its status from what was observed ([`status`]).

pub mod deployment;
pub mod plan;
pub mod status;
pub mod validate;
