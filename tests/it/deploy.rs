//! The deployment files, checked without a cluster or a container engine:
//! every manifest under deploy/kubernetes (the base, the SQLite variant
//! applying it, the PostgreSQL overlay) and deploy/compose parses, the
//! Kubernetes objects, the Dockerfile, the compose services and the
//! Prometheus configurations agree on ports, paths and names,
//! the shipped configuration passes the real binary's `check-config`, and
//! `promtool check config` accepts every Prometheus configuration. The
//! PostgreSQL overlay is checked on the objects it produces, built here from
//! its patches (CI has no kustomize). `tests/container` builds the image
//! and runs it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_norway::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// `kubectl apply -k deploy/kubernetes`: the SQLite variant, the base as it is.
const KUBERNETES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");
/// The manifests both variants are made of.
const KUBERNETES_BASE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes/base");
const COMPOSE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/compose");
const COMPOSE_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/compose/compose.yaml");
const PROMETHEUS_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/prometheus.yml"
);
/// The kustomize overlay running several replicas on PostgreSQL.
const KUBERNETES_POSTGRES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/kubernetes/overlays/postgres"
);
/// How the overlay names its base.
const POSTGRES_OVERLAY_BASE: &str = "../../base";
const COMPOSE_POSTGRES_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/compose/compose.postgres.yaml"
);
const PROMETHEUS_POSTGRES_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/prometheus.postgres.yml"
);
const DOCKERFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile");

/// Manifests that are kept beside the others but are not applied with them
/// (in the base and in the PostgreSQL overlay).
const NOT_IN_KUSTOMIZATION: &[&str] = &["secret.example.yaml", "prometheus-scrape-config.yaml"];

/// The variable naming the file that holds the whole store URL.
const STORE_URL_FILE_ENV: &str = "HOOKGAUGE__STORE__URL_FILE";

const INGEST_PORT: u64 = 8080;
const METRICS_PORT: u64 = 9464;
const NAME_LABEL: &str = "app.kubernetes.io/name";

// ---------------------------------------------------------------------------
// Reading files

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `.yaml` and `.yml` files directly in `dir`, sorted.
fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {dir}");
    files
}

/// Every non-empty document of a (possibly multi-document) YAML file.
fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .enumerate()
        .map(|(i, document)| {
            Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{} document {}: {e}", path.display(), i + 1))
        })
        .filter(|value| !value.is_null())
        .collect()
}

fn single_document(path: &Path) -> Value {
    let mut docs = documents(path);
    assert_eq!(docs.len(), 1, "{}: expected one document", path.display());
    docs.remove(0)
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {value:?}"))
}

fn number(value: &Value, what: &str) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{what}: expected a number, got {value:?}"))
}

fn list<'a>(value: &'a Value, what: &str) -> &'a [Value] {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{what}: expected a list, got {value:?}"))
}

/// A mapping of strings (labels, selectors) as a sorted map.
fn string_map(value: &Value, what: &str) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .unwrap_or_else(|| panic!("{what}: expected a mapping, got {value:?}"))
        .iter()
        .map(|(k, v)| {
            (
                text(k, what).to_owned(),
                text(v, &format!("{what}.{k:?}")).to_owned(),
            )
        })
        .collect()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

// ---------------------------------------------------------------------------
// Kubernetes objects

/// Every Kubernetes object under deploy/kubernetes/base, with the file it is
/// in (kustomization.yaml excluded).
fn manifests() -> Vec<(String, Value)> {
    yaml_files(KUBERNETES_BASE)
        .iter()
        .filter(|p| file_name(p) != "kustomization.yaml")
        .flat_map(|p| documents(p).into_iter().map(move |d| (file_name(p), d)))
        .collect()
}

fn object(kind: &str, name: &str) -> Value {
    let docs: Vec<Value> = manifests().into_iter().map(|(_, doc)| doc).collect();
    object_in(&docs, kind, name)
}

/// The one object of that kind and name among `objects`.
fn object_in(objects: &[Value], kind: &str, name: &str) -> Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|doc| {
            doc["kind"].as_str() == Some(kind) && doc["metadata"]["name"].as_str() == Some(name)
        })
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one {kind} {name}");
    found[0].clone()
}

fn deployment() -> Value {
    object("Deployment", "hookgauge")
}

fn container(deployment: &Value) -> &Value {
    let containers = list(
        &deployment["spec"]["template"]["spec"]["containers"],
        "containers",
    );
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// The container's ports by name.
fn container_ports(deployment: &Value) -> BTreeMap<String, u64> {
    list(&container(deployment)["ports"], "container ports")
        .iter()
        .map(|p| {
            (
                text(&p["name"], "port name").to_owned(),
                number(&p["containerPort"], "containerPort"),
            )
        })
        .collect()
}

/// The embedded `hookgauge.toml` of the ConfigMap.
fn configmap_toml() -> String {
    text(
        &object("ConfigMap", "hookgauge-config")["data"]["hookgauge.toml"],
        "hookgauge-config data.hookgauge.toml",
    )
    .to_owned()
}

/// The value of `key = "..."` in the embedded TOML (string keys only).
fn toml_string(toml: &str, key: &str) -> String {
    let values: Vec<&str> = toml
        .lines()
        .filter_map(|line| {
            let (k, v) = line.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"'))
        })
        .collect();
    assert_eq!(values.len(), 1, "{key} once in hookgauge.toml");
    values[0].to_owned()
}

fn volume_mount<'a>(container: &'a Value, volume: &str) -> &'a Value {
    list(&container["volumeMounts"], "volumeMounts")
        .iter()
        .find(|m| m["name"].as_str() == Some(volume))
        .unwrap_or_else(|| panic!("no volumeMount of volume {volume}"))
}

fn volume<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    list(
        &deployment["spec"]["template"]["spec"]["volumes"],
        "volumes",
    )
    .iter()
    .find(|v| v["name"].as_str() == Some(name))
    .unwrap_or_else(|| panic!("no volume {name}"))
}

// ---------------------------------------------------------------------------
// Kustomize, as far as the overlay uses it

/// The objects `kubectl apply -k dir` would apply, for kustomizations written
/// as these are: `resources` (files, or directories with a kustomization.yaml
/// of their own) and `patches` by `path` (strategic merge patches, or
/// `$patch: delete` of a whole object). Anything else fails the test instead
/// of being ignored.
fn kustomize(dir: &Path) -> Vec<Value> {
    let kustomization = kustomization(dir);
    let mut objects = Vec::new();
    for resource in kustomization_entries(&kustomization, "resources") {
        let path = dir.join(&resource);
        if path.is_dir() {
            objects.extend(kustomize(&path));
        } else {
            objects.extend(documents(&path));
        }
    }
    for path in kustomization_entries(&kustomization, "patches") {
        let patch = single_document(&dir.join(&path));
        let position = objects
            .iter()
            .position(|object| same_object(object, &patch))
            .unwrap_or_else(|| panic!("{path} patches no object of {}", dir.display()));
        if patch["$patch"].as_str() == Some("delete") {
            objects.remove(position);
        } else {
            strategic_merge(&mut objects[position], &patch);
        }
    }
    objects
}

fn kustomization(dir: &Path) -> Value {
    let kustomization = single_document(&dir.join("kustomization.yaml"));
    assert_eq!(
        kustomization["kind"].as_str(),
        Some("Kustomization"),
        "{}: kind",
        dir.display()
    );
    for key in kustomization.as_mapping().unwrap().keys() {
        let key = text(key, "kustomization key");
        assert!(
            [
                "apiVersion",
                "kind",
                "metadata",
                "resources",
                "patches",
                "images"
            ]
            .contains(&key),
            "{}: `{key}` is not understood by these tests' kustomize",
            dir.display()
        );
    }
    kustomization
}

/// The paths a kustomization lists under `resources` or `patches`.
fn kustomization_entries(kustomization: &Value, key: &str) -> Vec<String> {
    if kustomization[key].is_null() {
        return Vec::new();
    }
    list(&kustomization[key], key)
        .iter()
        .map(|entry| match entry.as_str() {
            Some(path) => path.to_owned(),
            None => {
                let keys: Vec<&Value> = entry.as_mapping().unwrap().keys().collect();
                assert_eq!(keys, ["path"], "{key}: only `path` entries are understood");
                text(&entry["path"], "patch path").to_owned()
            }
        })
        .collect()
}

fn same_object(a: &Value, b: &Value) -> bool {
    a["kind"] == b["kind"]
        && a["metadata"]["name"] == b["metadata"]["name"]
        && a["metadata"]["namespace"] == b["metadata"]["namespace"]
}

/// The merge key (Kubernetes' `patchMergeKey`) of the lists the patches here
/// touch: a patch item merges into the item with the same key. Lists without
/// one are replaced, as strategic merge does.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers" | "initContainers" | "volumes" | "env" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "ports" => Some("containerPort"),
        "topologySpreadConstraints" => Some("topologyKey"),
        _ => None,
    }
}

/// A strategic merge patch: mappings merge key by key, `null` deletes a key,
/// lists with a merge key merge item by item (`$patch: delete` removes one),
/// everything else is replaced.
fn strategic_merge(target: &mut Value, patch: &Value) {
    let (Some(target), Some(patch)) = (target.as_mapping_mut(), patch.as_mapping()) else {
        *target = patch.clone();
        return;
    };
    for (key, value) in patch {
        let field = text(key, "patch key");
        assert!(
            !field.starts_with('$'),
            "patch directive {field} is not understood here"
        );
        if value.is_null() {
            target.remove(key);
            continue;
        }
        let existing = target.get(key);
        let merge_list = merge_key(field).filter(|_| existing.is_some_and(Value::is_sequence));
        let merge_map = value.is_mapping() && existing.is_some_and(Value::is_mapping);
        if let Some(merge_key) = merge_list {
            let items = target.get_mut(key).unwrap().as_sequence_mut().unwrap();
            for item in list(value, field) {
                let id = &item[merge_key];
                assert!(!id.is_null(), "{field}: an item without {merge_key}");
                let position = items.iter().position(|i| &i[merge_key] == id);
                match (item["$patch"].as_str(), position) {
                    (Some("delete"), Some(position)) => {
                        items.remove(position);
                    }
                    (Some(directive), _) => panic!("{field}: $patch: {directive} of {id:?}"),
                    (None, Some(position)) => strategic_merge(&mut items[position], item),
                    (None, None) => items.push(item.clone()),
                }
            }
        } else if merge_map {
            strategic_merge(target.get_mut(key).unwrap(), value);
        } else {
            target.insert(key.clone(), value.clone());
        }
    }
}

/// What `kubectl apply -k deploy/kubernetes/overlays/postgres` applies.
fn postgres_objects() -> Vec<Value> {
    kustomize(Path::new(KUBERNETES_POSTGRES))
}

fn kind_count(objects: &[Value], kind: &str) -> usize {
    objects
        .iter()
        .filter(|o| o["kind"].as_str() == Some(kind))
        .count()
}

/// An `int` or a percentage of a Deployment or PodDisruptionBudget field, as
/// a number of pods out of `replicas` (rounded down, as maxUnavailable is).
fn pods(value: &Value, replicas: u64, what: &str) -> u64 {
    match value.as_str() {
        Some(percent) => {
            let percent: u64 = percent
                .strip_suffix('%')
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("{what}: {percent}"));
            replicas * percent / 100
        }
        None => number(value, what),
    }
}

// ---------------------------------------------------------------------------
// The Dockerfile

/// The Dockerfile's instructions as (KEYWORD, arguments), continuation lines
/// joined and comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read(Path::new(DOCKERFILE)).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(body) = line.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (keyword, rest) = current
            .split_once(char::is_whitespace)
            .unwrap_or((current.as_str(), ""));
        instructions.push((keyword.to_ascii_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    assert!(current.is_empty(), "Dockerfile ends inside a continuation");
    instructions
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn dockerfile_args(keyword: &str) -> Vec<String> {
    dockerfile()
        .into_iter()
        .filter(|(k, _)| k == keyword)
        .map(|(_, rest)| rest)
        .collect()
}

/// The `ENV` defaults of the image (`KEY=VALUE` form, values without spaces).
fn dockerfile_env() -> Vec<(String, String)> {
    dockerfile_args("ENV")
        .iter()
        .flat_map(|rest| {
            rest.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .unwrap_or_else(|| panic!("ENV {pair}: use KEY=VALUE"));
            (k.to_owned(), v.trim_matches('"').to_owned())
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Docker Compose

fn compose() -> Value {
    compose_file(Path::new(COMPOSE_FILE))
}

/// A compose file with its `<<: *anchor` merge keys applied, as compose reads it.
fn compose_file(path: &Path) -> Value {
    let mut compose = single_document(path);
    compose
        .apply_merge()
        .unwrap_or_else(|e| panic!("{}: merge keys: {e}", path.display()));
    compose
}

fn compose_service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let service = &compose["services"][name];
    assert!(
        service.is_mapping(),
        "the compose file has no service {name}"
    );
    service
}

/// Bind mounts of a compose service in short syntax, as (host path resolved
/// against deploy/compose, container path).
fn bind_mounts(service: &Value) -> Vec<(PathBuf, String)> {
    list(&service["volumes"], "volumes")
        .iter()
        .filter_map(|v| {
            let spec = text(v, "volume");
            let mut parts = spec.split(':');
            let source = parts.next().unwrap();
            let target = parts.next().unwrap_or_else(|| panic!("volume {spec}"));
            (source.starts_with('.') || source.starts_with('/'))
                .then(|| (Path::new(COMPOSE).join(source), target.to_owned()))
        })
        .collect()
}

/// The host path mounted at `target` in a compose service.
fn mounted_at(service: &Value, target: &str) -> PathBuf {
    bind_mounts(service)
        .into_iter()
        .find(|(_, t)| t == target)
        .unwrap_or_else(|| panic!("nothing is mounted at {target}"))
        .0
}

/// A compose `environment:` value with `${VAR:-default}` replaced by its default.
fn compose_default(value: &str) -> String {
    match value
        .strip_prefix("${")
        .and_then(|v| v.strip_suffix('}'))
        .and_then(|v| v.split_once(":-"))
    {
        Some((_, default)) => default.to_owned(),
        None => {
            assert!(!value.contains('$'), "unexpected interpolation in {value}");
            value.to_owned()
        }
    }
}

/// Published ports of a compose service as (host address, container port).
fn published_ports(service: &Value) -> Vec<(Option<String>, u64)> {
    port_bindings(service)
        .into_iter()
        .map(|(host_ip, _, container)| (host_ip, container))
        .collect()
}

/// Published ports of a compose service as (host address, host port, container
/// port); no host port when compose picks one.
fn port_bindings(service: &Value) -> Vec<(Option<String>, Option<u64>, u64)> {
    list(&service["ports"], "ports")
        .iter()
        .map(|p| {
            let spec = text(p, "port");
            let parts: Vec<&str> = spec.split(':').collect();
            let container: u64 = parts.last().unwrap().parse().unwrap();
            let host_ip = (parts.len() == 3).then(|| parts[0].to_owned());
            let host_port = (parts.len() >= 2).then(|| {
                parts[parts.len() - 2]
                    .parse()
                    .unwrap_or_else(|e| panic!("port {spec}: {e}"))
            });
            (host_ip, host_port, container)
        })
        .collect()
}

/// The compose secrets a service mounts, as (secret name, path in the container).
fn secret_mounts(service: &Value) -> Vec<(String, String)> {
    if service["secrets"].is_null() {
        return Vec::new();
    }
    list(&service["secrets"], "secrets")
        .iter()
        .map(|secret| {
            let (source, target) = match secret.as_str() {
                Some(name) => (name, name),
                None => {
                    let source = text(&secret["source"], "secret source");
                    (source, secret["target"].as_str().unwrap_or(source))
                }
            };
            let target = if target.starts_with('/') {
                target.to_owned()
            } else {
                format!("/run/secrets/{target}")
            };
            (source.to_owned(), target)
        })
        .collect()
}

fn compose_postgres() -> Value {
    compose_file(Path::new(COMPOSE_POSTGRES_FILE))
}

/// The hookgauge services of a compose file (those built from the repository).
fn hookgauge_services(compose: &Value) -> Vec<(String, &Value)> {
    compose["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .filter(|(_, service)| !service["build"].is_null())
        .map(|(name, service)| (text(name, "service name").to_owned(), service))
        .collect()
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    string_map(&service["environment"], "environment")
}

/// The host file of a top-level compose secret, `${VAR:-default}` resolved to
/// its default.
fn compose_secret_file(compose: &Value, secret: &str) -> PathBuf {
    let file = text(
        &compose["secrets"][secret]["file"],
        &format!("secrets.{secret}.file"),
    );
    Path::new(COMPOSE).join(compose_default(file))
}

// ---------------------------------------------------------------------------
// PostgreSQL store URLs

/// The parts of a PostgreSQL URL the deployment files agree on.
#[derive(Debug)]
struct StoreUrl {
    user: String,
    password: Option<String>,
    host: String,
    port: Option<u64>,
    database: String,
    /// The `sslmode` query parameter.
    sslmode: Option<String>,
}

impl StoreUrl {
    fn parse(url: &str) -> StoreUrl {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .unwrap_or_else(|| panic!("{url}: not a postgres:// URL"));
        let (authority, path) = rest
            .split_once('/')
            .unwrap_or_else(|| panic!("{url}: no database"));
        let (user_info, host_port) = authority
            .rsplit_once('@')
            .unwrap_or_else(|| panic!("{url}: no user"));
        let (user, password) = match user_info.split_once(':') {
            Some((user, password)) => (user, Some(password.to_owned())),
            None => (user_info, None),
        };
        let (host, port) = match host_port.split_once(':') {
            Some((host, port)) => (
                host,
                Some(port.parse().unwrap_or_else(|e| panic!("{url}: port: {e}"))),
            ),
            None => (host_port, None),
        };
        let (database, query) = path.split_once('?').unwrap_or((path, ""));
        let sslmode = query
            .split('&')
            .find_map(|parameter| parameter.strip_prefix("sslmode="))
            .map(str::to_owned);
        assert!(
            !user.is_empty() && !host.is_empty() && !database.is_empty(),
            "{url}"
        );
        StoreUrl {
            user: user.to_owned(),
            password,
            host: host.to_owned(),
            port,
            database: database.to_owned(),
            sslmode,
        }
    }
}

// ---------------------------------------------------------------------------
// Tools

/// Runs the built binary with only the given `HOOKGAUGE*` variables.
fn run_hookgauge(args: &[&str], env: &[(String, String)]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hookgauge"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HOOKGAUGE") {
            command.env_remove(key);
        }
    }
    let output = command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("the hookgauge binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn promtool_check_config(config: &Path) {
    let output = Command::new("promtool")
        .args(["check", "config"])
        .arg(config)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "promtool could not be run ({e}); it is needed to check {}: install it \
                 (Debian package `prometheus`; scripts/test does)",
                config.display()
            )
        });
    assert!(
        output.status.success(),
        "promtool check config {} failed:\n{}{}",
        config.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The effective configuration `check-config` prints must listen as a container does.
fn assert_container_listeners(stdout: &str) {
    for line in [
        format!("ingest_addr = \"0.0.0.0:{INGEST_PORT}\""),
        format!("metrics_addr = \"0.0.0.0:{METRICS_PORT}\""),
        "data_dir = \"/data\"".to_owned(),
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no `{line}` in:\n{stdout}"
        );
    }
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn every_deployment_yaml_file_parses() {
    let mut files: Vec<PathBuf> = walk(Path::new(KUBERNETES))
        .into_iter()
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    for dir in [KUBERNETES, KUBERNETES_BASE, KUBERNETES_POSTGRES] {
        assert!(
            files.contains(&Path::new(dir).join("kustomization.yaml")),
            "{dir}: no kustomization.yaml"
        );
    }
    files.extend(yaml_files(COMPOSE));
    files.push(PathBuf::from(PROMETHEUS_CONFIG));
    files.push(PathBuf::from(PROMETHEUS_POSTGRES_CONFIG));
    for file in files {
        assert!(
            !documents(&file).is_empty(),
            "{}: no YAML document",
            file.display()
        );
    }
}

#[test]
fn kubernetes_manifests_are_named_labelled_objects_of_the_expected_kinds() {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for (file, doc) in manifests() {
        for key in ["apiVersion", "kind"] {
            assert!(
                !text(&doc[key], &format!("{file}: {key}")).is_empty(),
                "{file}: empty {key}"
            );
        }
        let name = text(&doc["metadata"]["name"], &format!("{file}: metadata.name"));
        assert!(!name.is_empty(), "{file}: empty metadata.name");
        let labels = string_map(&doc["metadata"]["labels"], &format!("{file}: labels"));
        assert_eq!(
            labels.get(NAME_LABEL).map(String::as_str),
            Some("hookgauge"),
            "{file}: label {NAME_LABEL}"
        );
        let kind = text(&doc["kind"], "kind");
        let namespaced = !matches!(kind, "Namespace");
        if namespaced && file != "prometheus-scrape-config.yaml" {
            assert_eq!(
                doc["metadata"]["namespace"].as_str(),
                Some("hookgauge"),
                "{file}: metadata.namespace"
            );
        }
        *kinds.entry(kind.to_owned()).or_default() += 1;
    }
    for (kind, at_least) in [
        ("Namespace", 1),
        ("Deployment", 1),
        ("Service", 2),
        ("PersistentVolumeClaim", 1),
        ("ConfigMap", 1),
        ("Secret", 1),
        ("ServiceMonitor", 1),
        ("NetworkPolicy", 1),
    ] {
        assert!(
            kinds.get(kind).copied().unwrap_or(0) >= at_least,
            "expected at least {at_least} {kind}; kinds found: {kinds:?}"
        );
    }
    assert_eq!(kinds.get("Deployment"), Some(&1), "one Deployment");
}

#[test]
fn kustomization_lists_every_manifest_that_exists_except_the_examples() {
    let kustomization = single_document(&Path::new(KUBERNETES_BASE).join("kustomization.yaml"));
    assert_eq!(
        kustomization["kind"].as_str(),
        Some("Kustomization"),
        "kind"
    );
    let resources: Vec<&str> = list(&kustomization["resources"], "resources")
        .iter()
        .map(|r| text(r, "resource"))
        .collect();
    let unique: BTreeSet<&str> = resources.iter().copied().collect();
    assert_eq!(unique.len(), resources.len(), "duplicate resources");
    assert_lists_the_manifests(KUBERNETES_BASE, "base/kustomization.yaml", &unique);
}

/// The kustomization of `dir` (named `kustomization` in messages) lists
/// exactly the YAML files of `dir` applied with the rest: each entry is
/// there (a file, or a folder with a kustomization of its own) and none is
/// one of [`NOT_IN_KUSTOMIZATION`].
fn assert_lists_the_manifests(dir: &str, kustomization: &str, listed: &BTreeSet<&str>) {
    for entry in listed {
        let path = Path::new(dir).join(entry);
        assert!(
            path.is_file() || path.join("kustomization.yaml").is_file(),
            "{kustomization} lists {entry}, which does not exist"
        );
        assert!(
            !NOT_IN_KUSTOMIZATION.contains(entry),
            "{entry} must not be applied with the rest"
        );
    }
    for file in yaml_files(dir) {
        let name = file_name(&file);
        if name == "kustomization.yaml" || NOT_IN_KUSTOMIZATION.contains(&name.as_str()) {
            continue;
        }
        assert!(
            listed.contains(name.as_str()),
            "{name} is not listed in {kustomization}"
        );
    }
}

#[test]
fn kubernetes_directory_applies_the_base_as_it_is() {
    // `kubectl apply -k deploy/kubernetes` is the SQLite variant: the base,
    // unpatched, and no manifest of its own beside the kustomization.
    let top = Path::new(KUBERNETES);
    let files: Vec<String> = yaml_files(KUBERNETES)
        .iter()
        .map(|p| file_name(p))
        .collect();
    assert_eq!(
        files,
        ["kustomization.yaml"],
        "the manifests belong in base/ (or an overlay), not beside deploy/kubernetes/kustomization.yaml"
    );
    let kustomization = kustomization(top);
    assert_eq!(
        kustomization_entries(&kustomization, "resources"),
        ["base"],
        "deploy/kubernetes/kustomization.yaml applies the base"
    );
    assert_eq!(
        kustomization_entries(&kustomization, "patches"),
        Vec::<String>::new(),
        "the SQLite variant is the base as it is"
    );
    assert_eq!(
        Path::new(KUBERNETES_BASE).canonicalize().unwrap(),
        top.join("base").canonicalize().unwrap()
    );
    assert_eq!(kustomize(top), kustomize(Path::new(KUBERNETES_BASE)));
}

#[test]
fn deployment_runs_one_replica_with_probes_on_the_ingest_port() {
    let deployment = deployment();
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"].as_u64(), Some(1), "replicas");
    assert_eq!(
        spec["strategy"]["type"].as_str(),
        Some("Recreate"),
        "strategy: the store's volume is ReadWriteOnce"
    );
    let selector = string_map(&spec["selector"]["matchLabels"], "selector");
    let pod_labels = string_map(&spec["template"]["metadata"]["labels"], "pod labels");
    assert!(selects(&selector, &pod_labels), "selector matches the pod");
    assert_runs_hookgauge_with_probes_on_the_ingest_port(&deployment);
}

/// The container, its ports, probes, arguments, grace period and resources.
fn assert_runs_hookgauge_with_probes_on_the_ingest_port(deployment: &Value) {
    let spec = &deployment["spec"];
    let container = container(deployment);
    let ports = container_ports(deployment);
    assert_eq!(
        ports,
        BTreeMap::from([
            ("ingest".to_owned(), INGEST_PORT),
            ("metrics".to_owned(), METRICS_PORT)
        ]),
        "container ports"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
        assert_eq!(get["port"].as_str(), Some("ingest"), "{probe} port");
    }
    if !container["startupProbe"].is_null() {
        assert_eq!(
            container["startupProbe"]["httpGet"]["path"].as_str(),
            Some("/healthz"),
            "startupProbe path"
        );
    }
    let args: Vec<&str> = list(&container["args"], "args")
        .iter()
        .map(|a| text(a, "arg"))
        .collect();
    assert_eq!(
        args,
        ["serve", "--config", "/etc/hookgauge/hookgauge.toml"],
        "args"
    );
    let grace = number(
        &spec["template"]["spec"]["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    );
    assert!(
        grace >= 35,
        "terminationGracePeriodSeconds {grace}: more than the 30s shutdown_timeout"
    );
    let resources = &container["resources"];
    for (kind, resource) in [
        ("requests", "cpu"),
        ("requests", "memory"),
        ("limits", "memory"),
    ] {
        assert!(
            !resources[kind][resource].is_null(),
            "resources.{kind}.{resource}"
        );
    }
}

#[test]
fn deployment_runs_as_non_root_on_a_read_only_root_filesystem() {
    assert_non_root_on_a_read_only_root_filesystem(&deployment());
}

fn assert_non_root_on_a_read_only_root_filesystem(deployment: &Value) {
    let pod = &deployment["spec"]["template"]["spec"]["securityContext"];
    let security = &container(deployment)["securityContext"];
    assert_eq!(
        security["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "readOnlyRootFilesystem"
    );
    assert_eq!(
        security["runAsNonRoot"].as_bool(),
        Some(true),
        "runAsNonRoot"
    );
    assert_eq!(
        pod["runAsNonRoot"].as_bool(),
        Some(true),
        "pod runAsNonRoot"
    );
    assert_eq!(
        security["allowPrivilegeEscalation"].as_bool(),
        Some(false),
        "allowPrivilegeEscalation"
    );
    let dropped: Vec<&str> = list(&security["capabilities"]["drop"], "capabilities.drop")
        .iter()
        .map(|c| text(c, "capability"))
        .collect();
    assert_eq!(dropped, ["ALL"], "capabilities.drop");
    let seccomp = security["seccompProfile"]["type"]
        .as_str()
        .or(pod["seccompProfile"]["type"].as_str());
    assert_eq!(seccomp, Some("RuntimeDefault"), "seccompProfile");
    for key in ["runAsUser", "runAsGroup", "fsGroup"] {
        let id = number(&pod[key], key);
        assert_ne!(id, 0, "pod {key} must not be root");
    }
}

#[test]
fn deployment_mounts_the_config_the_secret_and_the_store_where_the_config_expects_them() {
    let deployment = deployment();
    let container = container(&deployment);
    let toml = configmap_toml();

    // The ConfigMap at /etc/hookgauge, as --config names it.
    let config = volume(&deployment, "config");
    assert_eq!(
        config["configMap"]["name"].as_str(),
        Some("hookgauge-config")
    );
    assert_eq!(
        volume_mount(container, "config")["mountPath"].as_str(),
        Some("/etc/hookgauge")
    );

    // The Secret's key as the file sources.pelorus.secrets_file names.
    let secret_volume = &volume(&deployment, "pelorus-secret")["secret"];
    let secret_name = text(&secret_volume["secretName"], "secretName");
    let items = list(&secret_volume["items"], "secret items");
    assert_eq!(items.len(), 1, "one secret item");
    let key = text(&items[0]["key"], "secret item key");
    let file = text(&items[0]["path"], "secret item path");
    let mount = text(
        &volume_mount(container, "pelorus-secret")["mountPath"],
        "secret mountPath",
    );
    assert_eq!(
        toml_string(&toml, "secrets_file"),
        format!("{mount}/{file}"),
        "secrets_file is the mounted Secret"
    );
    assert_eq!(
        secret_name, "hookgauge-pelorus",
        "the Secret secret.example.yaml describes"
    );
    let example = object("Secret", secret_name);
    assert!(
        example["stringData"][key].is_string(),
        "secret.example.yaml has key {key}"
    );

    // The store on the PVC at data_dir.
    let claim = text(
        &volume(&deployment, "data")["persistentVolumeClaim"]["claimName"],
        "claimName",
    );
    let pvc = object("PersistentVolumeClaim", claim);
    let modes: Vec<&str> = list(&pvc["spec"]["accessModes"], "accessModes")
        .iter()
        .map(|m| text(m, "access mode"))
        .collect();
    assert_eq!(modes, ["ReadWriteOnce"], "accessModes");
    assert_eq!(
        volume_mount(container, "data")["mountPath"].as_str(),
        Some(toml_string(&toml, "data_dir").as_str()),
        "the PVC is mounted at data_dir"
    );
    assert!(
        volume_mount(container, "data")["readOnly"].as_bool() != Some(true),
        "data is writable"
    );
}

#[test]
fn configmap_configuration_passes_check_config_with_container_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("pelorus");
    std::fs::write(&secret, "dummy-secret-for-the-test\n").unwrap();
    let quoted_secret = serde_json::to_string(&secret).unwrap();
    let toml: String = configmap_toml()
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("secrets_file") {
                format!("secrets_file = {quoted_secret}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert!(toml.contains(&quoted_secret), "secrets_file was replaced");
    let config = dir.path().join("hookgauge.toml");
    std::fs::write(&config, &toml).unwrap();
    let config = config.to_str().unwrap();

    // The file alone, and the file under the image's environment, as in the pod.
    for env in [Vec::new(), dockerfile_env()] {
        let (code, stdout, stderr) = run_hookgauge(&["check-config", "--config", config], &env);
        assert_eq!(code, 0, "check-config failed:\n{stderr}");
        assert_container_listeners(&stdout);
        assert!(
            !stderr.contains("warning"),
            "unsigned source warning:\n{stderr}"
        );
        assert!(
            !stdout.contains("dummy-secret-for-the-test"),
            "secret printed"
        );
    }
}

#[test]
fn dockerfile_builds_locked_and_runs_as_non_root_with_container_defaults() {
    let from = dockerfile_args("FROM");
    assert!(
        from.first()
            .is_some_and(|f| f.starts_with("rust:") && f.contains("-bookworm")),
        "builder stage: {from:?}"
    );
    assert_eq!(
        from.last().map(String::as_str),
        Some("debian:bookworm-slim"),
        "runtime stage"
    );
    let builds: Vec<String> = dockerfile_args("RUN")
        .into_iter()
        .filter(|r| r.contains("cargo build"))
        .collect();
    assert!(!builds.is_empty(), "no cargo build");
    for build in &builds {
        assert!(
            build.contains("--locked") && build.contains("--release"),
            "{build}"
        );
    }
    let user = dockerfile_args("USER");
    let user = user.last().expect("a USER instruction");
    assert!(
        !["root", "0"].contains(&user.split(':').next().unwrap()),
        "USER {user}"
    );
    // Everything the crate compiles in is in the build context: `src/` and
    // the files `include_str!` names outside it (the shipped plugins).
    let copied: Vec<String> = dockerfile_args("COPY")
        .iter()
        .filter(|c| !c.starts_with("--from"))
        .filter_map(|c| c.split_whitespace().next().map(str::to_owned))
        .collect();
    let mut needed = vec!["src".to_owned()];
    for entry in walk(&Path::new(ROOT).join("src")) {
        let code = std::fs::read_to_string(&entry).unwrap_or_default();
        for included in code.split("include_str!(\"").skip(1) {
            let relative = included.split('"').next().unwrap();
            let file = entry
                .parent()
                .unwrap()
                .join(relative)
                .canonicalize()
                .unwrap();
            let top = file
                .strip_prefix(Path::new(ROOT).canonicalize().unwrap())
                .unwrap();
            needed.push(
                top.components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    for dir in needed {
        assert!(
            copied.contains(&dir),
            "the Dockerfile does not COPY {dir}: {copied:?}"
        );
    }
    assert_eq!(dockerfile_args("VOLUME"), ["/data"], "VOLUME");
    assert_eq!(dockerfile_args("ENTRYPOINT"), ["[\"hookgauge\"]"]);
    assert_eq!(dockerfile_args("CMD"), ["[\"serve\"]"]);

    // The image's environment alone (plus a secret) gives container listeners.
    let mut env = dockerfile_env();
    env.push((
        "HOOKGAUGE__SOURCES__PELORUS__SECRETS".into(),
        "dummy-secret".into(),
    ));
    let (code, stdout, stderr) = run_hookgauge(&["check-config"], &env);
    assert_eq!(code, 0, "check-config failed:\n{stderr}");
    assert_container_listeners(&stdout);
}

#[test]
fn dockerfile_healthcheck_probes_healthz_on_the_ingest_port() {
    let checks = dockerfile_args("HEALTHCHECK");
    assert_eq!(checks.len(), 1, "one HEALTHCHECK");
    assert!(checks[0].contains("/healthz"), "{}", checks[0]);
    assert!(
        checks[0].contains(&INGEST_PORT.to_string()),
        "{}",
        checks[0]
    );
}

#[test]
fn ports_agree_across_dockerfile_services_deployment_and_network_policy() {
    let deployment = deployment();
    let ports = container_ports(&deployment);
    let pod_labels = string_map(
        &deployment["spec"]["template"]["metadata"]["labels"],
        "pod labels",
    );

    let exposed: BTreeSet<u64> = dockerfile_args("EXPOSE")
        .iter()
        .flat_map(|e| {
            e.split_whitespace()
                .map(|p| p.trim_end_matches("/tcp").parse::<u64>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        exposed,
        ports.values().copied().collect(),
        "Dockerfile EXPOSE vs container ports"
    );

    for (service, port_name) in [
        ("hookgauge-ingest", "ingest"),
        ("hookgauge-metrics", "metrics"),
    ] {
        let service = object("Service", service);
        let selector = string_map(&service["spec"]["selector"], "Service selector");
        assert!(selects(&selector, &pod_labels), "Service selects the pod");
        let service_ports = list(&service["spec"]["ports"], "Service ports");
        assert_eq!(service_ports.len(), 1, "one port per Service");
        let port = &service_ports[0];
        assert_eq!(port["name"].as_str(), Some(port_name), "Service port name");
        assert_eq!(
            port["port"].as_u64(),
            Some(ports[port_name]),
            "Service port number"
        );
        assert_eq!(
            port["targetPort"].as_str(),
            Some(port_name),
            "targetPort names the container port"
        );
    }

    // NetworkPolicy: ingest open to all, metrics only from selected peers.
    let policy = object("NetworkPolicy", "hookgauge");
    let selector = string_map(&policy["spec"]["podSelector"]["matchLabels"], "podSelector");
    assert!(selects(&selector, &pod_labels), "policy selects the pod");
    let mut open = BTreeSet::new();
    let mut restricted = BTreeSet::new();
    for rule in list(&policy["spec"]["ingress"], "ingress rules") {
        let rule_ports: Vec<u64> = list(&rule["ports"], "rule ports")
            .iter()
            .map(|p| number(&p["port"], "rule port"))
            .collect();
        if rule["from"].is_null() {
            open.extend(rule_ports);
        } else {
            assert!(!list(&rule["from"], "from").is_empty(), "empty from");
            restricted.extend(rule_ports);
        }
    }
    assert_eq!(
        open,
        BTreeSet::from([INGEST_PORT]),
        "only ingest is open to all"
    );
    assert_eq!(
        restricted,
        BTreeSet::from([METRICS_PORT]),
        "metrics from selected peers"
    );

    // Compose: ingest published, metrics at most on loopback.
    let compose = compose();
    let published = published_ports(compose_service(&compose, "hookgauge"));
    assert!(
        published.iter().any(|(_, port)| *port == INGEST_PORT),
        "ingest published: {published:?}"
    );
    for (host, port) in &published {
        if *port == METRICS_PORT {
            assert_eq!(
                host.as_deref(),
                Some("127.0.0.1"),
                "metrics published on loopback only"
            );
        }
    }
}

#[test]
fn servicemonitor_scrapes_the_metrics_service_as_job_hookgauge() {
    let monitor = object("ServiceMonitor", "hookgauge");
    let spec = &monitor["spec"];
    let metrics = object("Service", "hookgauge-metrics");
    let ingest = object("Service", "hookgauge-ingest");
    let selector = string_map(&spec["selector"]["matchLabels"], "ServiceMonitor selector");
    let metrics_labels = string_map(&metrics["metadata"]["labels"], "metrics labels");
    assert!(
        selects(&selector, &metrics_labels),
        "selects hookgauge-metrics"
    );
    assert!(
        !selects(
            &selector,
            &string_map(&ingest["metadata"]["labels"], "ingest labels")
        ),
        "must not select hookgauge-ingest"
    );
    let job_label = text(&spec["jobLabel"], "jobLabel");
    assert_eq!(
        metrics_labels.get(job_label).map(String::as_str),
        Some("hookgauge"),
        "job label value"
    );
    let endpoints = list(&spec["endpoints"], "endpoints");
    assert_eq!(endpoints.len(), 1, "one endpoint");
    let endpoint = &endpoints[0];
    assert_eq!(endpoint["port"].as_str(), Some("metrics"), "endpoint port");
    assert_eq!(endpoint["path"].as_str(), Some("/metrics"), "endpoint path");
    assert_eq!(endpoint["honorTimestamps"].as_bool(), Some(true));
    assert_eq!(
        endpoint["honorLabels"].as_bool(),
        Some(true),
        "hookgauge's own namespace label must win"
    );
}

#[test]
fn prometheus_config_passes_promtool_and_scrapes_job_hookgauge() {
    promtool_check_config(Path::new(PROMETHEUS_CONFIG));
    let config = single_document(Path::new(PROMETHEUS_CONFIG));
    let job = hookgauge_job(&config);
    assert_eq!(job["honor_timestamps"].as_bool(), Some(true));
    let targets = list(&job["static_configs"][0]["targets"], "targets");
    assert_eq!(
        targets[0].as_str(),
        Some(format!("hookgauge:{METRICS_PORT}").as_str())
    );
    let rule_files: Vec<&str> = list(&config["rule_files"], "rule_files")
        .iter()
        .map(|r| text(r, "rule file"))
        .collect();
    assert_eq!(rule_files, ["rules/*.yml"], "rule_files");
}

#[test]
fn compose_prometheus_config_passes_promtool_with_the_rules_where_it_looks_for_them() {
    let compose = compose();
    let config = compose_prometheus_config(&compose);

    // The scrape target is the compose service.
    let job = hookgauge_job(&config);
    let target = text(&job["static_configs"][0]["targets"][0], "target");
    let (host, port) = target.split_once(':').unwrap();
    compose_service(&compose, host);
    assert_eq!(port, METRICS_PORT.to_string());
}

/// The scrape job `hookgauge` of a Prometheus configuration.
fn hookgauge_job(config: &Value) -> &Value {
    list(&config["scrape_configs"], "scrape_configs")
        .iter()
        .find(|j| j["job_name"].as_str() == Some("hookgauge"))
        .expect("a scrape job named hookgauge")
}

/// The configuration the compose service `prometheus` is started with, after
/// checking it with promtool and that its rule files are mounted where it
/// looks for them.
fn compose_prometheus_config(compose: &Value) -> Value {
    let prometheus = compose_service(compose, "prometheus");
    let container_config = "/etc/prometheus/prometheus.yml";
    let host_config = mounted_at(prometheus, container_config);
    promtool_check_config(&host_config);

    // Inside the container the rule files resolve against the config's
    // directory: each must be mounted there from the directory beside the
    // host file.
    let config = single_document(&host_config);
    let host_dir = host_config.parent().unwrap();
    let container_dir = Path::new(container_config).parent().unwrap();
    for pattern in list(&config["rule_files"], "rule_files") {
        let dir = Path::new(text(pattern, "rule file")).parent().unwrap();
        let target = container_dir.join(dir);
        let source = mounted_at(prometheus, target.to_str().unwrap());
        assert_eq!(
            source.canonicalize().unwrap(),
            host_dir.join(dir).canonicalize().unwrap(),
            "{} is mounted from the rules beside the config",
            target.display()
        );
    }
    config
}

#[test]
fn kubernetes_scrape_config_passes_promtool_and_targets_the_metrics_service() {
    let snippet = object("ConfigMap", "hookgauge-prometheus-scrape");
    let text_config = text(&snippet["data"]["hookgauge.yml"], "data.hookgauge.yml");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookgauge.yml");
    std::fs::write(&path, text_config).unwrap();
    promtool_check_config(&path);

    let config = single_document(&path);
    let jobs = list(&config["scrape_configs"], "scrape_configs");
    assert_eq!(jobs.len(), 1, "one job");
    assert_eq!(jobs[0]["job_name"].as_str(), Some("hookgauge"));
    assert_eq!(jobs[0]["honor_timestamps"].as_bool(), Some(true));
    let target = text(&jobs[0]["static_configs"][0]["targets"][0], "target");
    assert_eq!(
        target,
        format!("hookgauge-metrics.hookgauge.svc:{METRICS_PORT}")
    );
}

#[test]
fn compose_mounts_exist_and_match_the_grafana_provisioning() {
    let compose = compose();
    assert_bind_mounts_exist_and_named_volumes_are_declared(&compose);

    // hookgauge: built from the repository, store on a named volume, a secret set.
    let hookgauge = compose_service(&compose, "hookgauge");
    let context = Path::new(COMPOSE).join(text(&hookgauge["build"]["context"], "build context"));
    assert_eq!(
        context.canonicalize().unwrap(),
        Path::new(ROOT).canonicalize().unwrap(),
        "build context is the repository"
    );
    assert!(context.join("Dockerfile").is_file());
    assert!(
        list(&hookgauge["volumes"], "volumes")
            .iter()
            .any(|v| v.as_str().is_some_and(|v| v.ends_with(":/data"))),
        "a volume at /data"
    );

    // The environment compose gives hookgauge, over the image's, passes check-config.
    let mut env = dockerfile_env();
    for (key, value) in string_map(&hookgauge["environment"], "environment") {
        env.push((key, compose_default(&value)));
    }
    assert!(
        env.iter()
            .any(|(k, _)| k.starts_with("HOOKGAUGE__SOURCES__PELORUS__SECRETS")),
        "compose must give hookgauge a secret"
    );
    let (code, stdout, stderr) = run_hookgauge(&["check-config"], &env);
    assert_eq!(code, 0, "check-config failed:\n{stderr}");
    assert_container_listeners(&stdout);

    // Prometheus: the datasource URL names it.
    let prometheus = compose_service(&compose, "prometheus");
    assert!(
        published_ports(prometheus).iter().any(|(_, p)| *p == 9090),
        "Prometheus on 9090"
    );
    let datasources = Path::new(ROOT).join("grafana/provisioning/datasources");
    let grafana = compose_service(&compose, "grafana");
    assert_eq!(
        mounted_at(grafana, "/etc/grafana/provisioning/datasources")
            .canonicalize()
            .unwrap(),
        datasources.canonicalize().unwrap()
    );
    for file in yaml_files(datasources.to_str().unwrap()) {
        for source in list(&single_document(&file)["datasources"], "datasources") {
            if source["type"].as_str() == Some("prometheus") {
                assert_eq!(
                    source["url"].as_str(),
                    Some("http://prometheus:9090"),
                    "{}",
                    file.display()
                );
            }
        }
    }

    // Grafana: dashboards mounted where the provider looks for them.
    let providers = Path::new(ROOT).join("grafana/provisioning/dashboards");
    assert_eq!(
        mounted_at(grafana, "/etc/grafana/provisioning/dashboards")
            .canonicalize()
            .unwrap(),
        providers.canonicalize().unwrap()
    );
    let dashboards_target = "/var/lib/grafana/dashboards/hookgauge";
    assert_eq!(
        mounted_at(grafana, dashboards_target)
            .canonicalize()
            .unwrap(),
        Path::new(ROOT)
            .join("grafana/dashboards")
            .canonicalize()
            .unwrap()
    );
    for file in yaml_files(providers.to_str().unwrap()) {
        for provider in list(&single_document(&file)["providers"], "providers") {
            assert_eq!(
                provider["options"]["path"].as_str(),
                Some(dashboards_target),
                "{}",
                file.display()
            );
        }
    }
}

/// Every bind-mounted host path exists and every named volume is declared.
fn assert_bind_mounts_exist_and_named_volumes_are_declared(compose: &Value) {
    let services = compose["services"].as_mapping().expect("services");
    let volumes = compose["volumes"].as_mapping().expect("named volumes");
    for (name, service) in services {
        let name = text(name, "service name");
        if service["volumes"].is_null() {
            continue;
        }
        for (source, _) in bind_mounts(service) {
            assert!(
                source.exists(),
                "{name}: {} does not exist",
                source.display()
            );
        }
        for v in list(&service["volumes"], "volumes") {
            let source = text(v, "volume").split(':').next().unwrap();
            if !(source.starts_with('.') || source.starts_with('/')) {
                assert!(
                    volumes.contains_key(source),
                    "{name}: named volume {source} is not declared"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Several replicas on PostgreSQL: the Kubernetes overlay

#[test]
fn postgres_overlay_builds_on_the_base_from_files_that_exist() {
    let overlay = Path::new(KUBERNETES_POSTGRES);
    let base = Path::new(KUBERNETES_BASE).canonicalize().unwrap();
    let kustomization = kustomization(overlay);
    let resources = kustomization_entries(&kustomization, "resources");
    let patches = kustomization_entries(&kustomization, "patches");
    // deploy/kubernetes/overlays/postgres names deploy/kubernetes/base.
    assert!(
        resources.iter().any(|r| r == POSTGRES_OVERLAY_BASE),
        "the overlay's resources include {POSTGRES_OVERLAY_BASE}: {resources:?}"
    );
    assert_eq!(
        overlay.join(POSTGRES_OVERLAY_BASE).canonicalize().unwrap(),
        base,
        "{POSTGRES_OVERLAY_BASE} from the overlay is deploy/kubernetes/base"
    );
    // kustomize refuses a base directory that contains the overlay ("cycle
    // detected"): base/ holds no kustomization but its own.
    assert!(
        !overlay.canonicalize().unwrap().starts_with(&base),
        "the overlay must not be inside the base's directory"
    );
    let nested: Vec<PathBuf> = walk(&base)
        .into_iter()
        .filter(|p| file_name(p) == "kustomization.yaml" && p.parent() != Some(base.as_path()))
        .collect();
    assert!(
        nested.is_empty(),
        "kustomizations inside the base's directory: {nested:?}"
    );
    let listed: BTreeSet<&str> = resources
        .iter()
        .chain(&patches)
        .map(String::as_str)
        .collect();
    assert_eq!(
        listed.len(),
        resources.len() + patches.len(),
        "listed twice"
    );
    assert_lists_the_manifests(
        KUBERNETES_POSTGRES,
        "the overlay's kustomization.yaml",
        &listed,
    );

    // Each patch names one object of the base, and the overlay's own objects
    // are named, labelled and namespaced like the base's.
    let base_objects = kustomize(&base);
    for patch in &patches {
        let patch = single_document(&overlay.join(patch));
        let targets = base_objects
            .iter()
            .filter(|o| same_object(o, &patch))
            .count();
        assert_eq!(targets, 1, "{patch:?} patches one object of the base");
    }
    for file in yaml_files(KUBERNETES_POSTGRES) {
        let name = file_name(&file);
        if name == "kustomization.yaml" || patches.contains(&name) {
            continue;
        }
        for doc in documents(&file) {
            let labels = string_map(&doc["metadata"]["labels"], &format!("{name}: labels"));
            assert_eq!(
                labels.get(NAME_LABEL).map(String::as_str),
                Some("hookgauge"),
                "{name}: label {NAME_LABEL}"
            );
            if name != "prometheus-scrape-config.yaml" {
                assert_eq!(
                    doc["metadata"]["namespace"].as_str(),
                    Some("hookgauge"),
                    "{name}: metadata.namespace"
                );
            }
        }
    }
}

#[test]
fn postgres_overlay_rolls_several_replicas_without_losing_one_and_spreads_them() {
    let objects = postgres_objects();
    assert_eq!(kind_count(&objects, "Deployment"), 1, "one Deployment");
    let deployment = object_in(&objects, "Deployment", "hookgauge");
    let spec = &deployment["spec"];
    let replicas = number(&spec["replicas"], "replicas");
    assert!(replicas >= 2, "replicas {replicas}: several");

    let strategy = &spec["strategy"];
    assert_eq!(strategy["type"].as_str(), Some("RollingUpdate"), "strategy");
    let rolling = &strategy["rollingUpdate"];
    assert_eq!(
        pods(&rolling["maxUnavailable"], replicas, "maxUnavailable"),
        0,
        "maxUnavailable: a new pod is ready before an old one stops"
    );
    assert!(
        !matches!(rolling["maxSurge"].as_u64(), Some(0))
            && rolling["maxSurge"].as_str() != Some("0%"),
        "maxSurge must allow a new pod: {:?}",
        rolling["maxSurge"]
    );

    let selector = string_map(&spec["selector"]["matchLabels"], "selector");
    let pod_labels = string_map(&spec["template"]["metadata"]["labels"], "pod labels");
    assert!(selects(&selector, &pod_labels), "selector matches the pod");

    // The disruption budget covers these pods and lets one be evicted.
    assert_eq!(
        kind_count(&objects, "PodDisruptionBudget"),
        1,
        "one PodDisruptionBudget"
    );
    let budget = &objects
        .iter()
        .find(|o| o["kind"].as_str() == Some("PodDisruptionBudget"))
        .unwrap()["spec"];
    assert_eq!(
        string_map(&budget["selector"]["matchLabels"], "PDB selector"),
        selector,
        "the PDB has the Deployment's selector"
    );
    let min_available = number(&budget["minAvailable"], "minAvailable");
    assert!(
        (1..replicas).contains(&min_available),
        "minAvailable {min_available}: at least one, fewer than the {replicas} replicas"
    );

    // Replicas spread over nodes: a topology spread constraint or a preferred
    // anti-affinity on the hostname, selecting these pods.
    let pod = &spec["template"]["spec"];
    let mut terms: Vec<&Value> = Vec::new();
    if !pod["topologySpreadConstraints"].is_null() {
        terms.extend(list(
            &pod["topologySpreadConstraints"],
            "topologySpreadConstraints",
        ));
    }
    let preferred =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
    if !preferred.is_null() {
        terms.extend(
            list(preferred, "preferred podAntiAffinity")
                .iter()
                .map(|t| &t["podAffinityTerm"]),
        );
    }
    assert!(
        terms.iter().any(|term| {
            term["topologyKey"].as_str() == Some("kubernetes.io/hostname")
                && selects(
                    &string_map(&term["labelSelector"]["matchLabels"], "labelSelector"),
                    &pod_labels,
                )
        }),
        "no spreading of these pods over kubernetes.io/hostname: {terms:?}"
    );
}

#[test]
fn postgres_overlay_claims_no_volume_and_keeps_the_data_dir_writable() {
    let objects = postgres_objects();
    assert_eq!(
        kind_count(&objects, "PersistentVolumeClaim"),
        0,
        "no PersistentVolumeClaim"
    );
    let deployment = object_in(&objects, "Deployment", "hookgauge");
    let volumes = list(
        &deployment["spec"]["template"]["spec"]["volumes"],
        "volumes",
    );
    for volume in volumes {
        assert!(
            volume["persistentVolumeClaim"].is_null(),
            "a volume still names a claim: {volume:?}"
        );
    }

    let container = container(&deployment);
    let toml = text(
        &object_in(&objects, "ConfigMap", "hookgauge-config")["data"]["hookgauge.toml"],
        "hookgauge.toml",
    )
    .to_owned();
    let data = volume_mount(container, "data");
    assert_eq!(
        data["mountPath"].as_str(),
        Some(toml_string(&toml, "data_dir").as_str()),
        "a volume at data_dir"
    );
    assert!(data["readOnly"].as_bool() != Some(true), "data is writable");
    assert!(
        volume(&deployment, "data")["emptyDir"].is_mapping(),
        "data is an emptyDir"
    );

    // Every volume is mounted and every mount has its volume.
    let names: BTreeSet<&str> = volumes
        .iter()
        .map(|v| text(&v["name"], "volume name"))
        .collect();
    let mounted: BTreeSet<&str> = list(&container["volumeMounts"], "volumeMounts")
        .iter()
        .map(|m| text(&m["name"], "volumeMount name"))
        .collect();
    assert_eq!(names, mounted, "volumes vs volumeMounts");
}

#[test]
fn postgres_overlay_mounts_the_store_url_secret_where_url_file_points() {
    let objects = postgres_objects();
    let deployment = object_in(&objects, "Deployment", "hookgauge");
    let container = container(&deployment);

    // The file the configuration names: the variable, or store.url_file in
    // the ConfigMap (the variable wins where both are set).
    let toml = text(
        &object_in(&objects, "ConfigMap", "hookgauge-config")["data"]["hookgauge.toml"],
        "hookgauge.toml",
    )
    .to_owned();
    let from_env = if container["env"].is_null() {
        None
    } else {
        list(&container["env"], "env")
            .iter()
            .find(|e| e["name"].as_str() == Some(STORE_URL_FILE_ENV))
            .map(|e| text(&e["value"], STORE_URL_FILE_ENV).to_owned())
    };
    let from_toml = toml
        .lines()
        .any(|l| l.split('=').next().unwrap().trim() == "url_file")
        .then(|| toml_string(&toml, "url_file"));
    let url_file = from_env
        .or(from_toml)
        .unwrap_or_else(|| panic!("neither {STORE_URL_FILE_ENV} nor store.url_file is set"));
    assert!(
        !toml.contains("postgres://") && !toml.contains("postgresql://"),
        "no store URL (and password) in the ConfigMap"
    );

    // A Secret volume mounted on the file's directory, with the file as an item.
    let url_file = Path::new(&url_file);
    let directory = url_file.parent().unwrap().to_str().unwrap();
    let file = file_name(url_file);
    let mount = list(&container["volumeMounts"], "volumeMounts")
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(directory))
        .unwrap_or_else(|| panic!("nothing is mounted at {directory}"));
    assert!(
        mount["subPath"].is_null(),
        "a subPath mount is never updated"
    );
    let secret = &volume(&deployment, text(&mount["name"], "mount name"))["secret"];
    assert_eq!(
        secret["secretName"].as_str(),
        Some("hookgauge-postgres"),
        "the URL comes from the Secret hookgauge-postgres"
    );
    let items = list(&secret["items"], "secret items");
    let item = items
        .iter()
        .find(|i| i["path"].as_str() == Some(file.as_str()))
        .unwrap_or_else(|| panic!("no secret item at {file}: {items:?}"));
    let key = text(&item["key"], "secret item key");
    assert_eq!(key, "url", "the Secret's key");

    // The Secret is created by hand (secret.example.yaml), never applied.
    assert_eq!(kind_count(&objects, "Secret"), 0, "no Secret is applied");
    let example = object_in(
        &documents(&Path::new(KUBERNETES_POSTGRES).join("secret.example.yaml")),
        "Secret",
        "hookgauge-postgres",
    );
    assert_eq!(example["metadata"]["namespace"].as_str(), Some("hookgauge"));
    let url = text(&example["stringData"][key], "secret.example.yaml url");
    let store = StoreUrl::parse(url);
    assert!(
        store
            .password
            .as_deref()
            .is_some_and(|p| p.contains("REPLACE")),
        "the example's password is a placeholder: {url}"
    );
    assert_eq!(
        store.sslmode.as_deref(),
        Some("require"),
        "the example encrypts the connection to PostgreSQL: {url}"
    );

    // The commands in the example and the README create that Secret's key.
    for file in [
        Path::new(KUBERNETES_POSTGRES).join("secret.example.yaml"),
        Path::new(KUBERNETES).join("README.md"),
    ] {
        let doc = read(&file);
        let command = doc
            .split("create secret generic hookgauge-postgres")
            .nth(1)
            .unwrap_or_else(|| panic!("{}: no command creating the Secret", file.display()));
        let literal = format!("--from-literal={key}='");
        let documented = command
            .split(literal.as_str())
            .nth(1)
            .and_then(|rest| rest.split('\'').next())
            .unwrap_or_else(|| panic!("{}: no {literal}...'", file.display()));
        let documented = StoreUrl::parse(documented);
        assert_eq!(
            (
                &documented.user,
                &documented.host,
                documented.port,
                &documented.database,
                &documented.sslmode
            ),
            (
                &store.user,
                &store.host,
                store.port,
                &store.database,
                &store.sslmode
            ),
            "{}: the same store as secret.example.yaml",
            file.display()
        );
        assert!(
            documented.password.is_some(),
            "{}: a password",
            file.display()
        );
    }
}

#[test]
fn postgres_overlay_keeps_the_base_security_context_probes_and_mounts() {
    let objects = postgres_objects();
    let deployment = object_in(&objects, "Deployment", "hookgauge");
    assert_runs_hookgauge_with_probes_on_the_ingest_port(&deployment);
    assert_non_root_on_a_read_only_root_filesystem(&deployment);

    // The configuration, the Pelorus secret and /tmp as in the base.
    let base = self::deployment();
    for name in ["config", "pelorus-secret", "tmp"] {
        assert_eq!(
            volume(&deployment, name),
            volume(&base, name),
            "volume {name}"
        );
        assert_eq!(
            volume_mount(container(&deployment), name),
            volume_mount(container(&base), name),
            "volumeMount {name}"
        );
    }
    assert_eq!(
        object_in(&objects, "ConfigMap", "hookgauge-config"),
        object("ConfigMap", "hookgauge-config"),
        "the base's configuration (the store URL comes from the environment)"
    );
    for (kind, name) in [
        ("Service", "hookgauge-ingest"),
        ("Service", "hookgauge-metrics"),
        ("NetworkPolicy", "hookgauge"),
        ("ServiceMonitor", "hookgauge"),
    ] {
        assert_eq!(
            object_in(&objects, kind, name),
            object(kind, name),
            "{kind} {name}"
        );
    }
}

#[test]
fn postgres_overlay_scrape_config_passes_promtool_and_finds_every_replica() {
    let snippet = object_in(
        &documents(&Path::new(KUBERNETES_POSTGRES).join("prometheus-scrape-config.yaml")),
        "ConfigMap",
        "hookgauge-prometheus-scrape",
    );
    let text_config = text(&snippet["data"]["hookgauge.yml"], "data.hookgauge.yml");
    let config: Value = serde_norway::from_str(text_config).expect("data.hookgauge.yml");
    let jobs = list(&config["scrape_configs"], "scrape_configs");
    assert_eq!(jobs.len(), 1, "one job");
    let job = &jobs[0];

    // Debian's promtool is built without Kubernetes service discovery: it
    // checks the rest of the job (relabelling included) with a static target
    // in place of the discovery.
    let mut checkable = config.clone();
    let checkable_job = &mut checkable["scrape_configs"][0];
    let discovery = checkable_job
        .as_mapping_mut()
        .unwrap()
        .remove("kubernetes_sd_configs")
        .expect("kubernetes_sd_configs");
    assert!(discovery.is_sequence(), "kubernetes_sd_configs: a list");
    checkable_job["static_configs"] =
        serde_norway::from_str(&format!("[{{targets: ['hookgauge:{METRICS_PORT}']}}]")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hookgauge.yml");
    std::fs::write(&path, serde_norway::to_string(&checkable).unwrap()).unwrap();
    promtool_check_config(&path);

    assert_eq!(job["job_name"].as_str(), Some("hookgauge"));
    assert_eq!(job["honor_timestamps"].as_bool(), Some(true));
    assert!(
        job["static_configs"].is_null(),
        "a static target would reach one replica per scrape"
    );
    let discovery = list(&job["kubernetes_sd_configs"], "kubernetes_sd_configs");
    assert_eq!(discovery.len(), 1);
    assert!(
        matches!(
            discovery[0]["role"].as_str(),
            Some("endpoints" | "endpointslice")
        ),
        "one target per pod behind the Service: {:?}",
        discovery[0]["role"]
    );
    let namespaces: Vec<&str> = list(&discovery[0]["namespaces"]["names"], "namespaces")
        .iter()
        .map(|n| text(n, "namespace"))
        .collect();
    assert_eq!(namespaces, ["hookgauge"]);

    // Kept: the metrics port of the metrics Service; labelled: the pod; never
    // a `namespace` target label over hookgauge's own.
    let service = object("Service", "hookgauge-metrics");
    let port = text(
        &list(&service["spec"]["ports"], "ports")[0]["name"],
        "port name",
    );
    let relabels = list(&job["relabel_configs"], "relabel_configs");
    let sources = |r: &Value| -> Vec<String> {
        list(&r["source_labels"], "source_labels")
            .iter()
            .map(|l| text(l, "source label").to_owned())
            .collect()
    };
    assert!(
        relabels.iter().any(|r| {
            r["action"].as_str() == Some("keep")
                && sources(r).join(";")
                    == "__meta_kubernetes_service_name;__meta_kubernetes_endpoint_port_name"
                && r["regex"].as_str() == Some(format!("hookgauge-metrics;{port}").as_str())
        }),
        "no keep of hookgauge-metrics;{port}: {relabels:?}"
    );
    assert!(
        relabels
            .iter()
            .any(|r| r["target_label"].as_str() == Some("pod")
                && sources(r) == ["__meta_kubernetes_pod_name"]),
        "no pod label"
    );
    assert!(
        relabels
            .iter()
            .all(|r| r["target_label"].as_str() != Some("namespace")),
        "hookgauge's series carry their own namespace label"
    );
}

// ---------------------------------------------------------------------------
// Several replicas on PostgreSQL: Docker Compose

#[test]
fn compose_postgres_runs_two_replicas_on_the_postgres_service() {
    let compose = compose_postgres();
    assert_bind_mounts_exist_and_named_volumes_are_declared(&compose);

    // PostgreSQL: the official image, a healthcheck, its data on a named volume.
    let postgres = compose_service(&compose, "postgres");
    let image = text(&postgres["image"], "postgres image");
    assert!(image.starts_with("postgres:16"), "image {image}");
    let check: Vec<&str> = list(&postgres["healthcheck"]["test"], "healthcheck.test")
        .iter()
        .map(|t| text(t, "healthcheck"))
        .collect();
    assert!(check.contains(&"pg_isready"), "healthcheck {check:?}");
    assert!(
        list(&postgres["volumes"], "volumes")
            .iter()
            .any(|v| v.as_str().is_some_and(|v| {
                let (source, target) = v.split_once(':').unwrap();
                !source.starts_with('.') && target == "/var/lib/postgresql/data"
            })),
        "PostgreSQL's data on a named volume"
    );
    let postgres_env = environment(postgres);
    assert!(
        !postgres_env.contains_key("POSTGRES_PASSWORD"),
        "the password comes from the secret file"
    );
    let postgres_secrets: BTreeMap<String, String> = secret_mounts(postgres)
        .into_iter()
        .map(|(source, target)| (target, source))
        .collect();
    let postgres_password = postgres_secrets
        .get(&postgres_env["POSTGRES_PASSWORD_FILE"])
        .unwrap_or_else(|| panic!("POSTGRES_PASSWORD_FILE is not a mounted secret"));

    // Two or more hookgauge replicas on that one store.
    let replicas = hookgauge_services(&compose);
    assert!(
        replicas.len() >= 2,
        "replicas: {:?}",
        replicas.iter().map(|r| &r.0).collect::<Vec<_>>()
    );
    let base = self::compose();
    let base_hookgauge = compose_service(&base, "hookgauge");
    let mut urls = BTreeSet::new();
    let mut host_ports = BTreeSet::new();
    let mut bindings = 0;
    for (name, service) in &replicas {
        let env = environment(service);
        let url = env
            .get("HOOKGAUGE__STORE__URL")
            .unwrap_or_else(|| panic!("{name}: no HOOKGAUGE__STORE__URL"));
        let store = StoreUrl::parse(url);
        assert_eq!(
            store.host, "postgres",
            "{name}: the store is the postgres service"
        );
        assert!(matches!(store.port, None | Some(5432)), "{name}: port");
        assert_eq!(store.password, None, "{name}: no password in the URL");
        assert_eq!(store.user, postgres_env["POSTGRES_USER"], "{name}: user");
        assert_eq!(
            store.database, postgres_env["POSTGRES_DB"],
            "{name}: database"
        );
        urls.insert(url.clone());

        assert_eq!(
            service["depends_on"]["postgres"]["condition"].as_str(),
            Some("service_healthy"),
            "{name}: starts once PostgreSQL is healthy"
        );

        // The password file is the mounted secret PostgreSQL reads too.
        let password_file = env
            .get("HOOKGAUGE__STORE__PASSWORD_FILE")
            .unwrap_or_else(|| panic!("{name}: no HOOKGAUGE__STORE__PASSWORD_FILE"));
        let secrets = secret_mounts(service);
        let (secret, _) = secrets
            .iter()
            .find(|(_, target)| target == password_file)
            .unwrap_or_else(|| panic!("{name}: no secret mounted at {password_file}: {secrets:?}"));
        assert_eq!(secret, postgres_password, "{name}: PostgreSQL's password");

        // The same signing secret as the base, and its hardening.
        assert_eq!(
            env.get("HOOKGAUGE__SOURCES__PELORUS__SECRETS"),
            environment(base_hookgauge).get("HOOKGAUGE__SOURCES__PELORUS__SECRETS"),
            "{name}: the Pelorus secret"
        );
        for key in [
            "build",
            "image",
            "read_only",
            "cap_drop",
            "security_opt",
            "stop_grace_period",
        ] {
            assert_eq!(
                service[key], base_hookgauge[key],
                "{name}: {key} as in compose.yaml"
            );
        }
        let data_on_tmpfs = !service["tmpfs"].is_null()
            && list(&service["tmpfs"], "tmpfs")
                .iter()
                .any(|t| text(t, "tmpfs").split(':').next() == Some("/data"));
        let data_on_volume = !service["volumes"].is_null()
            && list(&service["volumes"], "volumes").iter().any(|v| {
                v.as_str()
                    .is_some_and(|v| v.split(':').nth(1) == Some("/data"))
            });
        assert!(data_on_tmpfs || data_on_volume, "{name}: /data is writable");

        // Ingest published, metrics on loopback only, no host port shared.
        let ports = port_bindings(service);
        assert!(
            ports.iter().any(|(_, _, port)| *port == INGEST_PORT),
            "{name}: ingest published: {ports:?}"
        );
        for (host_ip, host_port, port) in ports {
            let host_port = host_port.unwrap_or_else(|| panic!("{name}: {port} on a random port"));
            if port == METRICS_PORT {
                assert_eq!(
                    host_ip.as_deref(),
                    Some("127.0.0.1"),
                    "{name}: metrics on loopback"
                );
            }
            host_ports.insert(host_port);
            bindings += 1;
        }
    }
    assert_eq!(urls.len(), 1, "one store for all replicas: {urls:?}");
    assert_eq!(host_ports.len(), bindings, "a host port published twice");

    // The secret file exists; the example is a placeholder of one line.
    let file = compose_secret_file(&compose, postgres_password);
    let password = read(&file);
    assert_eq!(password.lines().count(), 1, "{}: one line", file.display());
    assert!(
        password.contains("example") && password.contains("change-me"),
        "{}: an example value",
        file.display()
    );
}

#[test]
fn compose_postgres_prometheus_scrapes_every_replica_with_the_rules() {
    let compose = compose_postgres();
    let config = compose_prometheus_config(&compose);
    let job = hookgauge_job(&config);
    assert_eq!(job["honor_timestamps"].as_bool(), Some(true));
    let targets: BTreeSet<&str> = list(&job["static_configs"], "static_configs")
        .iter()
        .flat_map(|c| list(&c["targets"], "targets"))
        .map(|t| text(t, "target"))
        .collect();
    let replicas: BTreeSet<String> = hookgauge_services(&compose)
        .into_iter()
        .map(|(name, _)| format!("{name}:{METRICS_PORT}"))
        .collect();
    assert_eq!(
        targets,
        replicas.iter().map(String::as_str).collect(),
        "every replica's metrics port, nothing else"
    );

    // Grafana as in compose.yaml, reading this Prometheus.
    let base = self::compose();
    assert_eq!(
        compose_service(&compose, "grafana"),
        compose_service(&base, "grafana"),
        "grafana as in compose.yaml"
    );
    assert!(
        published_ports(compose_service(&compose, "prometheus"))
            .iter()
            .any(|(_, p)| *p == 9090),
        "Prometheus on 9090"
    );
}
