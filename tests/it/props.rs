//! Property tests: every parser meets arbitrary input without panicking —
//! each built-in plugin's mapping (arbitrary JSON under each event header),
//! the timestamp formats, signature headers, declarative plugin files and
//! configuration files.

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use hookgauge::plugins::{self, SourceOptions};
use proptest::prelude::*;
use serde_json::Value;

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        "[a-z0-9:./_ -]{0,12}".prop_map(Value::String),
        // Values that look like what plugins look for.
        prop_oneof![
            Just("2026-11-30T10:00:00Z"),
            Just("refs/heads/main"),
            Just("success"),
            Just("0000000000000000000000000000000000000000"),
            Just("c5feabde2d8cd023215af4d2ceeb7a64839fc428"),
            Just("production"),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        let keys = prop_oneof![
            "[a-z_]{1,10}",
            Just("repository".to_owned()),
            Just("commits".to_owned()),
            Just("ref".to_owned()),
            Just("deployment_status".to_owned()),
            Just("object_kind".to_owned()),
            Just("event".to_owned()),
            Just("issue".to_owned()),
            Just("resource".to_owned()),
            Just("changes".to_owned()),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn plugins_map_arbitrary_payloads_without_panicking(payload in json(), header in 0usize..64, value in 0usize..64) {
        let mut options = SourceOptions {
            environments: vec!["production".into()],
            incident_labels: vec!["incident".into()],
            issue_types: vec!["Bug".into()],
            deploy_workflows: vec!["deploy".into()],
            ..SourceOptions::default()
        };
        options.branches = vec!["main".into()];
        for plugin in plugins::SOURCES {
            let (name, values) = crate::fuzz::targets::EVENT_HEADERS[header % crate::fuzz::targets::EVENT_HEADERS.len()];
            let mut headers = HeaderMap::new();
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(values[value % values.len()]),
            );
            let _ = plugin.event(&headers, Some(&payload));
            let _ = plugin.delivery_id(&headers, &payload);
            let _ = plugin.classify(&headers, &payload, &options);
        }
        for plugin in plugins::declarative::load(None).unwrap() {
            let headers = HeaderMap::new();
            let _ = plugin.classify(&headers, &payload, &options);
        }
    }

    #[test]
    fn timestamps_parse_arbitrary_text(text in "\\PC{0,40}", n in any::<i64>()) {
        let _ = plugins::timestamp::parse_text(&text);
        let _ = plugins::timestamp::parse_value(&Value::Number(n.into()));
        let _ = plugins::timestamp::from_epoch_nanos(&Value::Number(n.into()));
    }

    #[test]
    fn signature_headers_parse_arbitrary_bytes(value in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = hookgauge::signature::parse_sha256_header(&value);
    }

    #[test]
    fn plugin_files_load_or_fail_cleanly(text in "(source|auth|scheme|rule|name|when|emit|fields|[\\[\\]=\"'@$.a-z \\n]){0,200}") {
        let _ = plugins::declarative::parse("p.toml", &text);
    }

    #[test]
    fn pelorus_bodies_parse_or_fail_cleanly(payload in json()) {
        let body = serde_json::to_vec(&payload).unwrap();
        for event in [
            plugins::pelorus::PelorusEvent::CommitTime,
            plugins::pelorus::PelorusEvent::DeployTime,
            plugins::pelorus::PelorusEvent::Failure,
        ] {
            let _ = plugins::pelorus::parse_event(event, &body);
        }
    }
}
