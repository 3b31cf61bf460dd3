//! The metric view: an in-memory image of what the store committed, rebuilt
//! from the store at start-up and updated after every commit. It holds the
//! Pelorus gauge series that are young enough to be exposed and keeps the
//! DORA counters and histograms in [`Metrics`].
//!
//! A scrape is rendered from memory, shard by shard, holding one shard's read
//! lock at a time, so it never blocks the store's writer for long and never
//! queries the store. Nothing here writes to the store.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, RandomState};
use std::io::Write;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;

use super::Metrics;
use crate::clock::now_seconds;
use crate::events::{App, ImageSha, Namespace};
use crate::ledger::Effect;
use crate::store::{CommitSink, FaultKind, RestoreWindows, Restored};

const SHARDS: usize = 32;

/// A hash map split into independently locked shards.
struct Sharded<K, V> {
    shards: Box<[RwLock<HashMap<K, V>>]>,
    hasher: RandomState,
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    fn new() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> &RwLock<HashMap<K, V>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    fn update(&self, key: K, f: impl FnOnce(&mut V), default: impl FnOnce() -> V) {
        let mut shard = self.shard(&key).write().unwrap_or_else(|e| e.into_inner());
        f(shard.entry(key).or_insert_with(default));
    }

    fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        for shard in self.shards.iter() {
            shard
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|k, v| keep(k, v));
        }
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[derive(Hash, PartialEq, Eq)]
struct CommitKey {
    app: Arc<str>,
    commit: Box<str>,
    image_sha: Option<ImageSha>,
}

struct CommitEntry {
    namespace: Option<Arc<str>>,
    link: Option<Box<str>>,
    time: i64,
}

#[derive(Hash, PartialEq, Eq)]
struct DeployKey {
    app: Arc<str>,
    namespace: Arc<str>,
    image_sha: ImageSha,
}

#[derive(Hash, PartialEq, Eq)]
struct FailureKey {
    app: Arc<str>,
    issue_number: Box<str>,
}

#[derive(Default)]
struct FailureEntry {
    created: Option<i64>,
    resolved: Option<i64>,
}

/// Creation times of one app's unresolved failures, by failure id.
type OpenFailures = HashMap<Box<str>, i64>;

/// Exposure windows of the Pelorus gauges.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    pub commit: Duration,
    pub exposure: Duration,
}

impl From<Windows> for RestoreWindows {
    fn from(w: Windows) -> Self {
        RestoreWindows {
            commit_window: w.commit,
            exposure_window: w.exposure,
        }
    }
}

pub struct View {
    metrics: Arc<Metrics>,
    windows: Windows,
    commits: Sharded<CommitKey, CommitEntry>,
    deploys: Sharded<DeployKey, i64>,
    failures: Sharded<FailureKey, FailureEntry>,
    names: Mutex<HashSet<Arc<str>>>,
    /// Unresolved failures of each app, with their creation times.
    open_failures: Mutex<HashMap<Arc<str>, OpenFailures>>,
}

impl View {
    pub fn new(metrics: Arc<Metrics>, windows: Windows) -> View {
        View {
            metrics,
            windows,
            commits: Sharded::new(),
            deploys: Sharded::new(),
            failures: Sharded::new(),
            names: Mutex::new(HashSet::new()),
            open_failures: Mutex::new(HashMap::new()),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// One shared allocation per distinct app or namespace name.
    fn intern(&self, name: &str) -> Arc<str> {
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(existing) = names.get(name) {
            return existing.clone();
        }
        let interned: Arc<str> = name.into();
        names.insert(interned.clone());
        interned
    }

    fn exposure_since(&self, now: i64) -> i64 {
        now - self.windows.exposure.as_secs() as i64
    }

    fn commit_since(&self, now: i64) -> i64 {
        now - self.windows.commit.as_secs() as i64
    }

    fn set_commit(
        &self,
        app: &App,
        commit: &str,
        image_sha: Option<ImageSha>,
        namespace: Option<&str>,
        link: Option<&str>,
        time: i64,
    ) {
        if time < self.commit_since(now_seconds()) {
            return;
        }
        let key = CommitKey {
            app: self.intern(app.as_str()),
            commit: commit.into(),
            image_sha,
        };
        let namespace = namespace.map(|n| self.intern(n));
        let link: Option<Box<str>> = link.map(Into::into);
        self.commits.update(
            key,
            |entry| {
                entry.time = time;
            },
            || CommitEntry {
                namespace,
                link,
                time,
            },
        );
    }

    fn set_deploy(&self, app: &App, namespace: &str, image_sha: ImageSha, time: i64) {
        if time < self.exposure_since(now_seconds()) {
            return;
        }
        let key = DeployKey {
            app: self.intern(app.as_str()),
            namespace: self.intern(namespace),
            image_sha,
        };
        self.deploys.update(key, |t| *t = (*t).max(time), || time);
    }

    fn set_failure(&self, app: &App, issue: &str, created: Option<i64>, resolved: Option<i64>) {
        let since = self.exposure_since(now_seconds());
        let created = created.filter(|t| *t >= since);
        let resolved = resolved.filter(|t| *t >= since);
        if created.is_none() && resolved.is_none() {
            return;
        }
        let key = FailureKey {
            app: self.intern(app.as_str()),
            issue_number: issue.into(),
        };
        self.failures.update(
            key,
            |entry| {
                entry.created = entry.created.max(created);
                entry.resolved = entry.resolved.max(resolved);
            },
            FailureEntry::default,
        );
    }

    /// Raises the app's latest-deployment gauge to `time`.
    fn set_last_deploy(&self, app: &App, namespace: &str, time: i64) {
        let gauge = self
            .metrics
            .last_deploy
            .with_label_values(&[app.as_str(), namespace]);
        if (time as f64) > gauge.get() {
            gauge.set(time as f64);
        }
    }

    /// Records whether a failure is open (`Some(created)`) or not, and
    /// refreshes the app's open-failure gauges.
    fn set_open(&self, app: &App, issue: &str, open_since: Option<i64>) {
        let app_name = self.intern(app.as_str());
        let mut open = self.open_failures.lock().unwrap_or_else(|e| e.into_inner());
        let issues = open.entry(app_name).or_default();
        match open_since {
            Some(created) => {
                issues.insert(issue.into(), created);
            }
            None => {
                issues.remove(issue);
            }
        }
        let m = &self.metrics;
        m.open_failures
            .with_label_values(&[app.as_str()])
            .set(issues.len() as i64);
        match issues.values().min() {
            Some(oldest) => m
                .oldest_open_failure
                .with_label_values(&[app.as_str()])
                .set(*oldest as f64),
            None => {
                let _ = m.oldest_open_failure.remove_label_values(&[app.as_str()]);
            }
        }
    }

    /// Drops gauge series that have left their exposure window.
    pub fn evict_expired(&self) {
        let now = now_seconds();
        let commit_since = self.commit_since(now);
        let exposure_since = self.exposure_since(now);
        self.commits.retain(|_, e| e.time >= commit_since);
        self.deploys.retain(|_, t| *t >= exposure_since);
        self.failures.retain(|_, e| {
            e.created.is_some_and(|t| t >= exposure_since)
                || e.resolved.is_some_and(|t| t >= exposure_since)
        });
    }

    /// Number of gauge series held (commits, deploys, failures).
    pub fn series_held(&self) -> (usize, usize, usize) {
        (self.commits.len(), self.deploys.len(), self.failures.len())
    }

    /// Number of parts [`View::render_part`] produces for one scrape.
    pub fn render_parts(&self) -> usize {
        4 * SHARDS + 1
    }

    /// Renders one part of a scrape in the text exposition format: the four
    /// Pelorus families shard by shard, then the registry. `now` is fixed for
    /// the whole scrape so that every part applies the same windows.
    pub fn render_part(&self, part: usize, now: i64) -> Bytes {
        let mut out = Vec::with_capacity(if part < 4 * SHARDS { 16 * 1024 } else { 0 });
        let (family, shard) = (part / SHARDS, part % SHARDS);
        if family < 4 && shard == 0 {
            let (name, help) = PELORUS_FAMILIES[family];
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n");
        }
        let exposure_since = self.exposure_since(now);
        match family {
            0 => {
                let since = self.commit_since(now);
                let commits = self.commits.shards[shard]
                    .read()
                    .unwrap_or_else(|e| e.into_inner());
                for (key, entry) in commits.iter().filter(|(_, e)| e.time >= since) {
                    out.extend_from_slice(b"commit_timestamp{app=\"");
                    escape_label(&mut out, &key.app);
                    out.extend_from_slice(b"\",commit=\"");
                    escape_label(&mut out, &key.commit);
                    out.extend_from_slice(b"\",image_sha=\"");
                    if let Some(image_sha) = &key.image_sha {
                        let _ = write!(out, "{image_sha}");
                    }
                    out.extend_from_slice(b"\",namespace=\"");
                    escape_label(&mut out, entry.namespace.as_deref().unwrap_or(""));
                    out.extend_from_slice(b"\",commit_link=\"");
                    escape_label(&mut out, entry.link.as_deref().unwrap_or(""));
                    let _ = writeln!(out, "\"}} {}", entry.time);
                }
            }
            1 => {
                let deploys = self.deploys.shards[shard]
                    .read()
                    .unwrap_or_else(|e| e.into_inner());
                for (key, &time) in deploys.iter().filter(|(_, t)| **t >= exposure_since) {
                    out.extend_from_slice(b"deploy_timestamp{app=\"");
                    escape_label(&mut out, &key.app);
                    let _ = write!(out, "\",image_sha=\"{}\",namespace=\"", key.image_sha);
                    escape_label(&mut out, &key.namespace);
                    let _ = writeln!(out, "\"}} {time} {}", time * 1000);
                }
            }
            2 | 3 => {
                let name: &[u8] = if family == 2 {
                    b"failure_creation_timestamp{app=\""
                } else {
                    b"failure_resolution_timestamp{app=\""
                };
                let failures = self.failures.shards[shard]
                    .read()
                    .unwrap_or_else(|e| e.into_inner());
                for (key, entry) in failures.iter() {
                    let time = if family == 2 {
                        entry.created
                    } else {
                        entry.resolved
                    };
                    let Some(time) = time.filter(|t| *t >= exposure_since) else {
                        continue;
                    };
                    out.extend_from_slice(name);
                    escape_label(&mut out, &key.app);
                    out.extend_from_slice(b"\",issue_number=\"");
                    escape_label(&mut out, &key.issue_number);
                    let _ = writeln!(out, "\"}} {time} {}", time * 1000);
                }
            }
            _ => out = self.metrics.encode_registry(),
        }
        Bytes::from(out)
    }

    /// A whole scrape in one buffer (tests, `export`).
    pub fn render(&self) -> Vec<u8> {
        let now = now_seconds();
        (0..self.render_parts())
            .flat_map(|part| self.render_part(part, now))
            .collect()
    }
}

const PELORUS_FAMILIES: [(&str, &str); 4] = [
    (
        "commit_timestamp",
        "Commit time of a change, in epoch seconds.",
    ),
    (
        "deploy_timestamp",
        "Time of the latest deployment of an image, in epoch seconds.",
    ),
    (
        "failure_creation_timestamp",
        "Time a production failure was created, in epoch seconds.",
    ),
    (
        "failure_resolution_timestamp",
        "Time a production failure was resolved, in epoch seconds.",
    ),
];

/// Escapes a label value for the text exposition format.
fn escape_label(out: &mut Vec<u8>, value: &str) {
    for &b in value.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => out.push(b),
        }
    }
}

impl CommitSink for View {
    fn restore(&self, items: &mut dyn Iterator<Item = Restored>) {
        let m = &self.metrics;
        for item in items {
            match item {
                Restored::Commit {
                    app,
                    commit,
                    image_sha,
                    namespace,
                    commit_link,
                    time,
                } => self.set_commit(
                    &app,
                    commit.as_str(),
                    image_sha,
                    namespace.as_ref().map(|n| n.as_str()),
                    commit_link.as_ref().map(|l| l.as_str()),
                    time,
                ),
                Restored::Deploy {
                    app,
                    namespace,
                    image_sha,
                    time,
                } => self.set_deploy(&app, namespace.as_str(), image_sha, time),
                Restored::Failure {
                    app,
                    issue_number,
                    created,
                    resolved,
                } => self.set_failure(&app, issue_number.as_str(), created, resolved),
                Restored::DeployCount {
                    app,
                    namespace,
                    count,
                    last,
                    rework,
                    rework_withdrawn,
                    failed,
                    failed_withdrawn,
                } => {
                    raise_to(
                        &m.deployments
                            .with_label_values(&[app.as_str(), namespace.as_str()]),
                        count,
                    );
                    let marks = deploy_marks(m, &app, &namespace);
                    for (counter, target) in
                        marks
                            .iter()
                            .zip([rework, rework_withdrawn, failed, failed_withdrawn])
                    {
                        raise_to(counter, target);
                    }
                    self.set_last_deploy(&app, namespace.as_str(), last);
                }
                Restored::OpenFailure {
                    app,
                    issue_number,
                    created,
                } => self.set_open(&app, issue_number.as_str(), Some(created)),
                Restored::FailureCounts {
                    app,
                    created,
                    resolved,
                } => {
                    let (created_total, resolved_total) = failure_counters(m, &app);
                    raise_to(&created_total, created);
                    raise_to(&resolved_total, resolved);
                    // Exists (at 0 when none is open) for every app with failures.
                    m.open_failures.with_label_values(&[app.as_str()]);
                }
                Restored::LeadTime { app, seconds } => m
                    .lead_time
                    .with_label_values(&[app.as_str()])
                    .observe(seconds),
                Restored::TimeToRestore { app, seconds } => m
                    .time_to_restore
                    .with_label_values(&[app.as_str()])
                    .observe(seconds),
                Restored::FailedDeploymentRecovery { app, seconds } => m
                    .failed_deployment_recovery
                    .with_label_values(&[app.as_str()])
                    .observe(seconds),
            }
        }
    }

    fn apply(&self, effects: &[Effect]) {
        let m = &self.metrics;
        for effect in effects {
            match effect {
                Effect::Commit {
                    app,
                    commit,
                    image_sha,
                    namespace,
                    commit_link,
                    time,
                } => self.set_commit(
                    app,
                    commit.as_str(),
                    *image_sha,
                    namespace.as_ref().map(|n| n.as_str()),
                    commit_link.as_ref().map(|l| l.as_str()),
                    *time,
                ),
                Effect::Deploy {
                    app,
                    namespace,
                    image_sha,
                    time,
                } => {
                    m.deployments
                        .with_label_values(&[app.as_str(), namespace.as_str()])
                        .inc();
                    // Rework and failed counts exist (at 0) beside every deploy count.
                    deploy_marks(m, app, namespace);
                    self.set_last_deploy(app, namespace.as_str(), *time);
                    if let Some(image_sha) = image_sha {
                        self.set_deploy(app, namespace.as_str(), *image_sha, *time);
                    }
                }
                Effect::DeployImage {
                    app,
                    namespace,
                    image_sha,
                    time,
                } => self.set_deploy(app, namespace.as_str(), *image_sha, *time),
                Effect::FailureCreated {
                    app,
                    issue_number,
                    time,
                    first,
                    open_since,
                } => {
                    let (created, _) = failure_counters(m, app);
                    if *first {
                        created.inc();
                    }
                    self.set_failure(app, issue_number.as_str(), Some(*time), None);
                    self.set_open(app, issue_number.as_str(), *open_since);
                }
                Effect::FailureResolved {
                    app,
                    issue_number,
                    time,
                    first,
                    open_since,
                } => {
                    let (_, resolved) = failure_counters(m, app);
                    if *first {
                        resolved.inc();
                    }
                    self.set_failure(app, issue_number.as_str(), None, Some(*time));
                    self.set_open(app, issue_number.as_str(), *open_since);
                }
                Effect::LeadTime { app, seconds } => m
                    .lead_time
                    .with_label_values(&[app.as_str()])
                    .observe(*seconds),
                Effect::TimeToRestore { app, seconds } => m
                    .time_to_restore
                    .with_label_values(&[app.as_str()])
                    .observe(*seconds),
                Effect::FailedDeploymentRecovery { app, seconds } => m
                    .failed_deployment_recovery
                    .with_label_values(&[app.as_str()])
                    .observe(*seconds),
                Effect::Rework {
                    app,
                    namespace,
                    rework,
                } => {
                    let [marked, withdrawn, _, _] = deploy_marks(m, app, namespace);
                    if *rework {
                        marked.inc()
                    } else {
                        withdrawn.inc()
                    }
                }
                Effect::DeployFailed {
                    app,
                    namespace,
                    failed,
                } => {
                    let [_, _, marked, withdrawn] = deploy_marks(m, app, namespace);
                    if *failed {
                        marked.inc()
                    } else {
                        withdrawn.inc()
                    }
                }
            }
        }
    }

    fn followed(&self, lag: Duration) {
        self.metrics.follow_lag.set(lag.as_secs_f64());
    }

    fn commit_finished(&self, duration: Duration, result: Result<(), FaultKind>) {
        self.metrics
            .store_commit_duration
            .observe(duration.as_secs_f64());
        if let Err(kind) = result {
            self.metrics
                .store_errors
                .with_label_values(&[kind.as_str()])
                .inc();
        }
    }
}

/// Both failure counters of an app: they always exist together, so that
/// ratios and restarts see the same series (a resolved count of 0 included).
fn failure_counters(m: &Metrics, app: &App) -> (prometheus::IntCounter, prometheus::IntCounter) {
    (
        m.failures.with_label_values(&[app.as_str()]),
        m.failures_resolved.with_label_values(&[app.as_str()]),
    )
}

/// The rework and failed-deployment counters of an app in a namespace
/// (decided, withdrawn, each), created together so that every ratio has
/// its series.
fn deploy_marks(m: &Metrics, app: &App, namespace: &Namespace) -> [prometheus::IntCounter; 4] {
    let labels = [app.as_str(), namespace.as_str()];
    [
        m.rework_deployments.with_label_values(&labels),
        m.rework_withdrawn.with_label_values(&labels),
        m.failed_deployments.with_label_values(&labels),
        m.failed_withdrawn.with_label_values(&labels),
    ]
}

/// Raises a counter to `target` (never lowers it: a counter that went down
/// would look like a restart to Prometheus).
fn raise_to(counter: &prometheus::IntCounter, target: u64) {
    let current = counter.get();
    if target > current {
        counter.inc_by(target - current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Vec::new();
        escape_label(&mut out, "a\"b\\c\nd");
        assert_eq!(out, b"a\\\"b\\\\c\\nd");
    }
}
