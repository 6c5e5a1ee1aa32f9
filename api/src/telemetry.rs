//! Logging set-up and the shutdown signal: the set-up both binaries share.

pub use stackplane_telemetry::{init, shutdown_signal, LogFormat};
