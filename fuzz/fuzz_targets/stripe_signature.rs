//! The `Stripe-Signature` header and the payload it signs: any bytes, never a panic. The input
//! is split at the first newline into (header, payload).
#![no_main]

use libfuzzer_sys::fuzz_target;
use stackplane_api::billing::webhook::verify;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (header, payload) = text.split_once('\n').unwrap_or((text, ""));
    let secrets = vec!["whsec_fuzz_a".to_owned(), "whsec_fuzz_b".to_owned()];
    let _ = verify(payload, header, &secrets, 1_700_000_000);
});
