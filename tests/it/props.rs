//! Property tests: every parser meets arbitrary input without panicking,
//! and holds a property of its own on it — each built-in plugin's mapping
//! (arbitrary JSON under each event header) depends on the JSON value only
//! and never fails without naming a field; timestamps round-trip and stay in
//! range; signature headers round-trip; declarative plugin files fail with
//! the file and a line; Pelorus bodies round-trip their fields.

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use hookgauge::events::{Event, MAX_EVENT_TIME, MIN_EVENT_TIME};
use hookgauge::ledger::DeliveryId;
use hookgauge::plugins::{self, PayloadError, SourceOptions};
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

    /// A mapping depends on the JSON value only (the same value parsed again
    /// from its bytes maps the same), an invalid payload names at least one
    /// field, and a delivery id is bounded and printable.
    #[test]
    fn plugins_map_arbitrary_payloads_by_their_value_alone(payload in json(), header in 0usize..64, value in 0usize..64) {
        let mut options = SourceOptions {
            environments: vec!["production".into()],
            incident_labels: vec!["incident".into()],
            issue_types: vec!["Bug".into()],
            deploy_workflows: vec!["deploy".into()],
            ..SourceOptions::default()
        };
        options.branches = vec!["main".into()];
        let reparsed: Value = serde_json::from_slice(&serde_json::to_vec(&payload).unwrap()).unwrap();
        let check_id = |id: Option<DeliveryId>| {
            if let Some(id) = id {
                prop_assert!(!id.as_str().is_empty() && id.as_str().len() <= DeliveryId::MAX_LEN, "{id}");
                prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_graphic()), "{id}");
            }
            Ok(())
        };
        let check_mapping = |result: &Result<plugins::Mapping, PayloadError>| {
            if let Err(PayloadError::Invalid(problems)) = result {
                prop_assert!(!problems.is_empty(), "an invalid payload names its fields");
            }
            if let Ok(plugins::Mapping::Events(events)) = result {
                for event in events {
                    let t = event.time().seconds();
                    prop_assert!((MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&t), "{event:?}");
                }
            }
            Ok(())
        };
        for plugin in plugins::SOURCES {
            let (name, values) = crate::fuzz::targets::EVENT_HEADERS[header % crate::fuzz::targets::EVENT_HEADERS.len()];
            let mut headers = HeaderMap::new();
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(values[value % values.len()]),
            );
            prop_assert_eq!(plugin.event(&headers, Some(&payload)), plugin.event(&headers, Some(&reparsed)));
            let id = plugin.delivery_id(&headers, &payload);
            prop_assert_eq!(&id, &plugin.delivery_id(&headers, &reparsed));
            check_id(id)?;
            let classified = plugin.classify(&headers, &payload, &options);
            prop_assert_eq!(&classified, &plugin.classify(&headers, &reparsed, &options), "{}", plugin.source());
            check_mapping(&classified.1)?;
        }
        for plugin in plugins::declarative::load(None).unwrap() {
            let headers = HeaderMap::new();
            let classified = plugin.classify(&headers, &payload, &options);
            prop_assert_eq!(&classified, &plugin.classify(&headers, &reparsed, &options), "{}", plugin.source());
            check_mapping(&classified.1)?;
        }
    }

    /// Any text either fails or is a time in the accepted range; a time in
    /// the range round-trips through RFC 3339, epoch seconds, epoch
    /// milliseconds and epoch nanoseconds.
    #[test]
    fn timestamps_parse_arbitrary_text_and_round_trip(text in "\\PC{0,40}", n in any::<i64>(), t in MIN_EVENT_TIME..=MAX_EVENT_TIME) {
        let in_range = |r: Result<hookgauge::events::EventTime, _>| {
            r.map_or(true, |time| (MIN_EVENT_TIME..=MAX_EVENT_TIME).contains(&time.seconds()))
        };
        prop_assert!(in_range(plugins::timestamp::parse_text(&text)));
        prop_assert!(in_range(plugins::timestamp::parse_value(&Value::Number(n.into()))));
        prop_assert!(in_range(plugins::timestamp::from_epoch_nanos(&Value::Number(n.into()))));
        let rfc3339 = chrono::DateTime::from_timestamp(t, 0).unwrap().to_rfc3339();
        prop_assert_eq!(plugins::timestamp::parse_text(&rfc3339).map(|e| e.seconds()), Ok(t));
        prop_assert_eq!(plugins::timestamp::parse_value(&Value::from(t)).map(|e| e.seconds()), Ok(t));
        prop_assert_eq!(plugins::timestamp::parse_value(&Value::from(t * 1000 + 999)).map(|e| e.seconds()), Ok(t));
        prop_assert_eq!(plugins::timestamp::from_epoch_nanos(&Value::from(t * 1_000_000_000 + 1)).map(|e| e.seconds()), Ok(t));
    }

    /// Only `sha256=` and 64 lowercase hex digits parse, to those 32 bytes.
    #[test]
    fn signature_headers_parse_arbitrary_bytes_and_round_trip(value in prop::collection::vec(any::<u8>(), 0..600), mac in any::<[u8; 32]>()) {
        if let Ok(parsed) = hookgauge::signature::parse_sha256_header(&value) {
            prop_assert_eq!(value, format!("sha256={}", hex::encode(parsed)).into_bytes());
        }
        let header = format!("sha256={}", hex::encode(mac));
        prop_assert_eq!(hookgauge::signature::parse_sha256_header(header.as_bytes()).ok(), Some(mac));
    }

    /// A plugin file that does not load says so with its file name and a
    /// line within the text.
    #[test]
    fn plugin_files_load_or_fail_naming_the_line(text in "(source|auth|scheme|rule|name|when|emit|fields|[\\[\\]=\"'@$.a-z \\n]){0,200}") {
        if let Err(error) = plugins::declarative::parse("p.toml", &text) {
            prop_assert_eq!(error.file.as_str(), "p.toml");
            prop_assert!(error.line >= 1 && error.line <= text.lines().count().max(1), "{error}");
            prop_assert!(!error.reason.is_empty());
        }
    }

    /// Arbitrary bodies parse or fail cleanly; a deploy built from valid
    /// fields parses back to exactly those fields.
    #[test]
    fn pelorus_bodies_parse_or_fail_and_round_trip(
        payload in json(),
        app in "[a-z][a-z0-9-]{0,30}",
        namespace in "[a-z]([a-z0-9-]{0,29}[a-z0-9])?",
        digest in any::<[u8; 32]>(),
        t in MIN_EVENT_TIME..=MAX_EVENT_TIME,
    ) {
        let body = serde_json::to_vec(&payload).unwrap();
        for event in [
            plugins::pelorus::PelorusEvent::CommitTime,
            plugins::pelorus::PelorusEvent::DeployTime,
            plugins::pelorus::PelorusEvent::Failure,
        ] {
            if let Err(PayloadError::Invalid(problems)) = plugins::pelorus::parse_event(event, &body) {
                prop_assert!(!problems.is_empty());
            }
        }
        let image_sha = format!("sha256:{}", hex::encode(digest));
        let body = serde_json::json!({"app": app, "namespace": namespace, "image_sha": image_sha, "timestamp": t});
        let parsed = plugins::pelorus::parse_event(
            plugins::pelorus::PelorusEvent::DeployTime,
            &serde_json::to_vec(&body).unwrap(),
        );
        let Ok(Event::Deploy(deploy)) = parsed else {
            return Err(TestCaseError::fail(format!("{body} parsed as {parsed:?}")));
        };
        prop_assert_eq!(deploy.app.as_str(), app.as_str());
        prop_assert_eq!(deploy.namespace.as_str(), namespace.as_str());
        prop_assert_eq!(deploy.image_sha.map(|i| i.to_string()), Some(image_sha));
        prop_assert_eq!(deploy.time.seconds(), t);
    }
}
