//! The query parsers: the metrics window, quantities, the query strings of the tenant list and
//! of the metrics endpoint, and `X-Forwarded-For`. Any text, never a panic.
#![no_main]

use axum::extract::Query;
use axum::http::Uri;
use libfuzzer_sys::fuzz_target;
use stackplane_api::tenants::metrics::{parse_window, quantity_bytes, MetricsQuery};
use stackplane_api::tenants::status::ListQuery;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_window(text);
    let _ = quantity_bytes(text);
    if let Ok(uri) = format!("/q?{text}").parse::<Uri>() {
        let _ = Query::<ListQuery>::try_from_uri(&uri);
        if let Ok(Query(q)) = Query::<MetricsQuery>::try_from_uri(&uri) {
            if let Some(window) = q.window {
                let _ = parse_window(&window);
            }
        }
    }
    let trusted = ["10.0.0.0/8".parse().expect("cidr")];
    let _ = stackplane_api::hardening::client_ip([10, 0, 0, 1].into(), [text], &trusted);
});
