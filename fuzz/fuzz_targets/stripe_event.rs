//! The Stripe event parser the worker and the webhook use: any JSON, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = stackplane_core::billing::parse::parse_event(&value);
    }
});
