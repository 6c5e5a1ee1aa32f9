//! The names every part of stackplane agrees on, each defined once: condition types and the
//! reasons others read, field managers, finalizers, labels and annotations. The controller, the
//! api and the plugin import them from here; none types them again as a bare string.
//! `docs/architecture.md` says what each means.

pub mod conditions;
pub mod field_managers;
pub mod finalizers;
pub mod labels;
