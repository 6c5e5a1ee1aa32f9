//! A Tenant's decisions: which Platform spec it is planned from ([`revision`]), whether its
//! spec can be planned ([`validate`]), the objects its stack consists of ([`plan`]), what its
//! credentials Secret holds ([`credentials`]), what its cleanup does next ([`deletion`]), how a stack left by a deletion of the
//! Tenant CRD is adopted again ([`adoption`]), its
//! network policies ([`network`]), whether it should be serving at all ([`serving`]), and its
//! status from what was observed ([`status`]).

pub mod adoption;
pub mod credentials;
pub mod deletion;
pub mod deployment;
pub mod network;
pub mod plan;
pub mod revision;
pub mod serving;
pub mod status;
pub mod validate;
