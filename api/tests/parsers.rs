//! Property tests of the parsers that face the internet (the same functions the cargo-fuzz
//! targets in `fuzz/` drive): no input panics them, and what is well formed is accepted.

use std::net::IpAddr;

use axum::extract::Query;
use axum::http::Uri;
use proptest::prelude::*;
use stackplane_api::billing::webhook::{verify, Rejection};
use stackplane_api::hardening::client_ip;
use stackplane_api::tenants::metrics::{parse_window, MetricsQuery};
use stackplane_api::tenants::status::ListQuery;
use stackplane_core::billing::parse::parse_event;

const NOW: i64 = 1_700_000_000;

fn secrets() -> Vec<String> {
    vec!["whsec_prop_a".to_owned(), "whsec_prop_b".to_owned()]
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("id".to_owned()),
                    Just("type".to_owned()),
                    Just("created".to_owned()),
                    Just("data".to_owned()),
                    Just("object".to_owned()),
                    Just("customer".to_owned()),
                    Just("items".to_owned()),
                    Just("metadata".to_owned()),
                    "[a-z_]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any header and payload are judged, never panic.
    #[test]
    fn any_signature_header_is_judged(header in "\\PC{0,80}", payload in "\\PC{0,80}") {
        let _ = verify(&payload, &header, &secrets(), NOW);
    }

    /// Headers built from Stripe's shape with arbitrary parts are refused unless signed.
    #[test]
    fn forged_stripe_shaped_headers_are_refused(t in any::<i64>(), v1 in "[0-9a-f]{0,70}", payload in "\\PC{0,40}") {
        let header = format!("t={t},v1={v1}");
        prop_assert!(verify(&payload, &header, &secrets(), NOW).is_err());
    }

    /// A payload signed with either secret at a time within the tolerance is accepted, with
    /// any extra signatures beside it.
    #[test]
    fn signed_payloads_verify(payload in "\\PC{0,120}", skew in -299i64..=299, other in "[0-9a-f]{64}", second in any::<bool>()) {
        let secret = if second { "whsec_prop_b" } else { "whsec_prop_a" };
        let signed = stackplane_tests::stripe_signature(&payload, secret, NOW + skew);
        let header = format!("{signed},v1={other}");
        prop_assert_eq!(verify(&payload, &header, &secrets(), NOW), Ok(()));
        let stale = stackplane_tests::stripe_signature(&payload, secret, NOW - 301);
        prop_assert_eq!(verify(&payload, &stale, &secrets(), NOW), Err(Rejection::StaleTimestamp));
    }

    /// The event parser takes any JSON without panicking.
    #[test]
    fn any_json_event_is_parsed_or_refused(value in json_value()) {
        let _ = parse_event(&value);
    }

    /// Any query string is parsed or refused, and a parsed window is judged.
    #[test]
    fn any_query_string_is_parsed_or_refused(query in "\\PC{0,60}") {
        if let Ok(uri) = format!("/q?{query}").parse::<Uri>() {
            let _ = Query::<ListQuery>::try_from_uri(&uri);
            if let Ok(Query(q)) = Query::<MetricsQuery>::try_from_uri(&uri) {
                if let Some(window) = q.window {
                    let _ = parse_window(&window);
                }
            }
        }
    }

    /// `X-Forwarded-For` from a trusted proxy: the answer is the peer or one of the entries,
    /// never a panic, whatever the header holds.
    #[test]
    fn any_forwarded_for_yields_a_listed_address(values in prop::collection::vec("\\PC{0,40}", 0..3), peer in any::<[u8; 4]>()) {
        let trusted = ["10.0.0.0/8".parse().expect("cidr"), "127.0.0.0/8".parse().expect("cidr")];
        let peer = IpAddr::from([10, peer[1], peer[2], peer[3]]);
        let got = client_ip(peer, values.iter().map(String::as_str), &trusted);
        let listed = values
            .iter()
            .flat_map(|v| v.split(','))
            .filter_map(|e| e.trim().parse::<IpAddr>().ok())
            .any(|ip| ip == got);
        prop_assert!(got == peer || listed);
    }
}
