//! The bodies of the fuzz targets, shared by the cargo-fuzz binaries in
//! `fuzz/fuzz_targets/` (coverage-guided, run by hand: see fuzz/README.md)
//! and by the test suite, which runs every target over the provider fixtures
//! and the seeds in `fuzz/seeds/` on stable Rust (`tests/it/fuzz.rs`).
//!
//! A target returns nothing: it fails by panicking, by running out of the
//! fuzzer's memory limit (`-rss_limit_mb`), or by taking longer than its
//! time limit.

use std::sync::OnceLock;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use hookgauge::config::{RawConfig, Settings};
use hookgauge::plugins::{self, pelorus, Plugin, SourceOptions};
use hookgauge::signature::Secret;
use serde::Deserialize;

/// The event headers the plugins dispatch on, with the values they know,
/// and one value none knows (also used by the property tests).
pub const EVENT_HEADERS: &[(&str, &[&str])] = &[
    (
        "x-github-event",
        &[
            "push",
            "deployment",
            "deployment_status",
            "workflow_run",
            "issues",
            "pull_request",
            "release",
            "registry_package",
            "package",
            "ping",
        ],
    ),
    (
        "x-gitlab-event",
        &[
            "Push Hook",
            "Deployment Hook",
            "Issue Hook",
            "Merge Request Hook",
            "Pipeline Hook",
            "Job Hook",
            "Release Hook",
            "System Hook",
        ],
    ),
    (
        "x-gitea-event",
        &["push", "issues", "status", "release", "create"],
    ),
    ("x-forgejo-event", &["push", "issues"]),
    ("x-gogs-event", &["push"]),
    (
        "x-event-key",
        &[
            "repo:push",
            "repo:refs_changed",
            "pr:merged",
            "pullrequest:fulfilled",
            "issue:created",
            "issue:updated",
            "repo:commit_status_updated",
            "repo:commit_status_created",
        ],
    ),
    (
        "ce-type",
        &[
            "dev.tekton.event.pipelinerun.successful.v1",
            "dev.tekton.event.pipelinerun.failed.v1",
            "dev.tekton.event.taskrun.successful.v1",
        ],
    ),
    ("x-unknown-event", &["unknown"]),
];

/// Options that switch on every optional mapping of the built-in plugins.
fn options() -> &'static SourceOptions {
    static OPTIONS: OnceLock<SourceOptions> = OnceLock::new();
    OPTIONS.get_or_init(|| SourceOptions {
        environments: vec!["production".into(), "prod".into()],
        incident_labels: vec!["incident".into(), "bug".into()],
        issue_types: vec!["Bug".into(), "Incident".into()],
        deploy_workflows: vec!["deploy".into(), "Deploy".into()],
        branches: vec!["main".into(), "master".into()],
        ..SourceOptions::default()
    })
}

/// Every plugin the server can serve: the built-ins and the shipped
/// declarative ones.
fn every_plugin() -> &'static [&'static dyn Plugin] {
    static PLUGINS: OnceLock<Vec<&'static dyn Plugin>> = OnceLock::new();
    PLUGINS.get_or_init(|| plugins::all(None).expect("the shipped plugins load"))
}

/// A webhook body as every plugin reads it, under every event header: the
/// same steps as the ingest runner after authentication (parse, classify,
/// delivery id), and the three Pelorus event parsers.
pub fn webhook(data: &[u8]) {
    for event in [
        pelorus::PelorusEvent::CommitTime,
        pelorus::PelorusEvent::DeployTime,
        pelorus::PelorusEvent::Failure,
    ] {
        let _ = pelorus::parse_event(event, data);
    }
    let _ = pelorus::content_delivery_id(data);
    let Ok(value) = plugins::payload::parse_object(data) else {
        return;
    };
    let mut sets = vec![HeaderMap::new()];
    for (name, values) in EVENT_HEADERS {
        for value in *values {
            let mut headers = HeaderMap::new();
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
            sets.push(headers);
        }
    }
    for plugin in every_plugin() {
        for headers in &sets {
            let _ = plugin.event(headers, Some(&value));
            let _ = plugin.delivery_id(headers, &value);
            let _ = plugin.classify(headers, &value, options());
        }
    }
}

/// Arbitrary credential headers against every plugin's verifier. The input
/// is `name: value` lines, an empty line, then the body; the first line may
/// be `?query` (the webhook URL's query string).
pub fn signature(data: &[u8]) {
    let _ = hookgauge::signature::parse_sha256_header(data);
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let mut headers = HeaderMap::new();
    let mut query = "";
    for line in head.split(|b| *b == b'\n') {
        if let Some(q) = line.strip_prefix(b"?") {
            query = std::str::from_utf8(q).unwrap_or("");
            continue;
        }
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    let secrets = || {
        vec![
            Secret::new("fuzz-secret"),
            Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ]
    };
    for plugin in every_plugin() {
        if let Ok(verifier) = plugin.verifier(secrets(), options()) {
            let _ = verifier.verify(&headers, query, body, 1_767_000_000);
        }
    }
}

/// A declarative plugin file.
pub fn plugin_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = plugins::declarative::parse("fuzz.toml", text);
    }
}

/// A configuration file's TOML, deserialised into `RawConfig` and checked
/// by `Settings::from_raw` (the `config` crate's layering of environment
/// and overrides is not fuzzed). Keys that name files to read (`*_file`,
/// `plugins_dir`) are removed after parsing, however they were spelled, so
/// the target reads no files.
pub fn config(data: &[u8]) {
    fn drop_file_keys(value: &mut toml::Value) {
        match value {
            toml::Value::Table(table) => {
                table.retain(|key, _| !key.ends_with("_file") && key != "plugins_dir");
                table.iter_mut().for_each(|(_, v)| drop_file_keys(v));
            }
            toml::Value::Array(items) => items.iter_mut().for_each(drop_file_keys),
            _ => {}
        }
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut value) = toml::from_str::<toml::Value>(text) else {
        return;
    };
    drop_file_keys(&mut value);
    if let Ok(raw) = RawConfig::deserialize(value) {
        let _ = Settings::from_raw(raw);
    }
}

/// Timestamps as text and as JSON values.
pub fn timestamp(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = plugins::timestamp::parse_text(text);
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = plugins::timestamp::parse_value(&value);
        let _ = plugins::timestamp::from_epoch_nanos(&value);
    }
}

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target by name, as `cargo fuzz run <name>` knows it.
pub const TARGETS: &[(&str, Target)] = &[
    ("webhook", webhook),
    ("signature", signature),
    ("plugin_file", plugin_file),
    ("config", config),
    ("timestamp", timestamp),
];
