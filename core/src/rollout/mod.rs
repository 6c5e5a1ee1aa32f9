//! Fleet rollouts' decisions: which tenants move to a Platform's new revision next.

pub mod waves;
