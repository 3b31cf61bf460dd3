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
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use bytes::Bytes;
use indexmap::IndexMap;

use super::apps::{AppSeries, Mark, Span};
use super::name::Name;
use super::Metrics;
use crate::clock::now_seconds;
use crate::events::{App, ImageSha, Namespace};
use crate::ledger::{Effect, ShownCommit};
use crate::store::{CommitSink, FaultKind, RestoreWindows, Restored};

pub(super) const SHARDS: usize = 32;

/// A hash map split into independently locked shards.
///
/// Each shard is an [`IndexMap`]: a scrape walks its entries in the order
/// they were inserted, which is about the order their shared names were
/// allocated in, so the walk reads memory mostly in sequence. Walking a
/// `HashMap` visits the entries in hash order and takes a cache miss on
/// every label string; at 100 000 applications that was half of a scrape.
pub(super) struct Sharded<K, V> {
    shards: Box<[RwLock<IndexMap<K, V>>]>,
    hasher: RandomState,
}

impl<K: Hash + Eq, V> Sharded<K, V> {
    pub(super) fn new() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| RwLock::new(IndexMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> &RwLock<IndexMap<K, V>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    pub(super) fn update(&self, key: K, f: impl FnOnce(&mut V), default: impl FnOnce() -> V) {
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

    /// One shard's map, read-locked.
    pub(super) fn read_shard(&self, shard: usize) -> RwLockReadGuard<'_, IndexMap<K, V>> {
        self.shards[shard].read().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

#[derive(Hash, PartialEq, Eq)]
struct CommitKey {
    app: Name,
    commit: Box<str>,
    image_sha: Option<ImageSha>,
}

struct CommitEntry {
    namespace: Option<Name>,
    link: Option<Box<str>>,
    time: i64,
}

#[derive(Hash, PartialEq, Eq)]
struct DeployKey {
    app: Name,
    namespace: Name,
    image_sha: ImageSha,
}

#[derive(Hash, PartialEq, Eq)]
struct FailureKey {
    app: Name,
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
    /// The DORA counters, histograms and gauges of each application.
    apps: AppSeries,
    names: Mutex<HashSet<Arc<str>>>,
    /// Unresolved failures of each app, with their creation times.
    open_failures: Mutex<HashMap<Name, OpenFailures>>,
    /// The event intervals as last computed, by application and kind.
    intervals: RwLock<Arc<[Interval]>>,
    scrapes: Arc<tokio::sync::Semaphore>,
}

/// The mean time between an application's events of one kind
/// (`Ledger::event_intervals`), exposed as `hookgauge_event_interval_seconds`
/// (with two events or more) and `hookgauge_event_interval_events`.
pub struct Interval {
    pub repo: Box<str>,
    pub kind: &'static str,
    pub events: u32,
    pub mean_seconds: Option<f64>,
}

impl View {
    pub fn new(metrics: Arc<Metrics>, windows: Windows) -> View {
        View {
            metrics,
            windows,
            commits: Sharded::new(),
            deploys: Sharded::new(),
            failures: Sharded::new(),
            apps: AppSeries::new(),
            names: Mutex::new(HashSet::new()),
            open_failures: Mutex::new(HashMap::new()),
            intervals: RwLock::new(Arc::new([])),
            scrapes: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_SCRAPES)),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// An app or namespace name as the series keep it: inline when short,
    /// else one shared allocation per distinct name.
    fn intern(&self, name: &str) -> Name {
        Name::new(name, |name| {
            let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(existing) = names.get(name) {
                return existing.clone();
            }
            let interned: Arc<str> = name.into();
            names.insert(interned.clone());
            interned
        })
    }

    fn exposure_since(&self, now: i64) -> i64 {
        now - self.windows.exposure.as_secs() as i64
    }

    fn commit_since(&self, now: i64) -> i64 {
        now - self.windows.commit.as_secs() as i64
    }

    fn set_commit(&self, commit: &ShownCommit) {
        let time = commit.time;
        if time < self.commit_since(now_seconds()) {
            return;
        }
        let key = CommitKey {
            app: self.intern(commit.app.as_str()),
            commit: commit.commit.as_str().into(),
            image_sha: commit.image_sha,
        };
        let namespace = commit.namespace.as_ref().map(|n| self.intern(n.as_str()));
        let link: Option<Box<str>> = commit.commit_link.as_ref().map(|l| l.as_str().into());
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

    /// Records whether a failure is open (`Some(created)`) or not, and
    /// refreshes the app's open-failure gauges.
    fn set_open(&self, app: &App, issue: &str, open_since: Option<i64>) {
        let app_name = self.intern(app.as_str());
        let mut open = self.open_failures.lock().unwrap_or_else(|e| e.into_inner());
        let issues = open.entry(app_name.clone()).or_default();
        match open_since {
            Some(created) => {
                issues.insert(issue.into(), created);
            }
            None => {
                issues.remove(issue);
            }
        }
        self.apps
            .set_open(app_name, issues.len(), issues.values().min().copied());
    }

    fn observe(&self, app: &App, span: Span, seconds: f64) {
        self.apps.observe(self.intern(app.as_str()), span, seconds);
    }

    fn mark(&self, app: &App, namespace: &Namespace, mark: Mark) {
        self.apps.mark(
            self.intern(app.as_str()),
            self.intern(namespace.as_str()),
            mark,
        );
    }

    /// Replaces the event intervals (refreshed every minute).
    pub fn set_intervals(&self, intervals: Vec<Interval>) {
        *self.intervals.write().unwrap_or_else(|e| e.into_inner()) = intervals.into();
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

    /// Starts a scrape once fewer than [`CONCURRENT_SCRAPES`] are running
    /// (the others wait here), with its windows taken at `now`.
    pub async fn begin_scrape(&self, now: i64) -> Scrape {
        let permit = Arc::clone(&self.scrapes).acquire_owned().await.ok();
        Scrape {
            now,
            part: 0,
            headed: false,
            _permit: permit,
        }
    }

    /// The next chunk of a scrape in the text exposition format, `None` once
    /// it is complete: the four Pelorus families shard by shard, then each
    /// application family shard by shard, then the registry. A chunk holds
    /// whole parts (one family of one shard, each rendered under that
    /// shard's read lock alone) and stops growing past [`CHUNK_BYTES`].
    pub fn render_next(&self, scrape: &mut Scrape) -> Option<Bytes> {
        if scrape.part >= PARTS {
            return None;
        }
        let mut out = Vec::with_capacity(CHUNK_BYTES + CHUNK_BYTES / 2);
        while scrape.part < PARTS && out.len() < CHUNK_BYTES {
            self.render_part(scrape, &mut out);
            scrape.part += 1;
        }
        Some(Bytes::from(out))
    }

    fn render_part(&self, scrape: &mut Scrape, out: &mut Vec<u8>) {
        let part = scrape.part;
        if part >= PELORUS_PARTS {
            let part = part - PELORUS_PARTS;
            let (family, shard) = (part / SHARDS, part % SHARDS);
            if shard == 0 {
                scrape.headed = false;
            }
            if family < AppSeries::FAMILIES {
                self.apps.render(family, shard, &mut scrape.headed, out);
            } else if family < AppSeries::FAMILIES + 2 {
                let seconds = family == AppSeries::FAMILIES;
                self.render_intervals(seconds, shard, &mut scrape.headed, out);
            } else {
                out.extend_from_slice(&self.metrics.encode_registry());
            }
            return;
        }
        let now = scrape.now;
        let (family, shard) = (part / SHARDS, part % SHARDS);
        if shard == 0 {
            let (name, help) = PELORUS_FAMILIES[family];
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n");
        }
        let exposure_since = self.exposure_since(now);
        match family {
            0 => {
                let since = self.commit_since(now);
                let commits = self.commits.read_shard(shard);
                for (key, entry) in commits.iter().filter(|(_, e)| e.time >= since) {
                    out.extend_from_slice(b"commit_timestamp{app=\"");
                    escape_label(out, key.app.as_bytes());
                    out.extend_from_slice(b"\",commit=\"");
                    escape_label(out, key.commit.as_bytes());
                    out.extend_from_slice(b"\",image_sha=\"");
                    if let Some(image_sha) = &key.image_sha {
                        image_sha.write_to(out);
                    }
                    out.extend_from_slice(b"\",namespace=\"");
                    escape_label(out, entry.namespace.as_ref().map_or(b"", |n| n.as_bytes()));
                    out.extend_from_slice(b"\",commit_link=\"");
                    escape_label(out, entry.link.as_deref().unwrap_or("").as_bytes());
                    out.extend_from_slice(b"\"} ");
                    write_int(out, entry.time);
                    out.push(b'\n');
                }
            }
            1 => {
                let deploys = self.deploys.read_shard(shard);
                for (key, &time) in deploys.iter().filter(|(_, t)| **t >= exposure_since) {
                    out.extend_from_slice(b"deploy_timestamp{app=\"");
                    escape_label(out, key.app.as_bytes());
                    out.extend_from_slice(b"\",image_sha=\"");
                    key.image_sha.write_to(out);
                    out.extend_from_slice(b"\",namespace=\"");
                    escape_label(out, key.namespace.as_bytes());
                    end_timestamp_sample(out, time);
                }
            }
            _ => {
                let name: &[u8] = if family == 2 {
                    b"failure_creation_timestamp{app=\""
                } else {
                    b"failure_resolution_timestamp{app=\""
                };
                let failures = self.failures.read_shard(shard);
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
                    escape_label(out, key.app.as_bytes());
                    out.extend_from_slice(b"\",issue_number=\"");
                    escape_label(out, key.issue_number.as_bytes());
                    end_timestamp_sample(out, time);
                }
            }
        }
    }

    /// One slice in `SHARDS` of the event intervals, as one of their two
    /// families; the read lock is held only to take the list.
    fn render_intervals(&self, seconds: bool, part: usize, headed: &mut bool, out: &mut Vec<u8>) {
        let intervals = Arc::clone(&self.intervals.read().unwrap_or_else(|e| e.into_inner()));
        let (from, to) = (
            intervals.len() * part / SHARDS,
            intervals.len() * (part + 1) / SHARDS,
        );
        let (name, help) = if seconds {
            (
                "hookgauge_event_interval_seconds",
                "Mean time between consecutive events over the last 7 days or the last 500 events, \
                 whichever holds fewer, by application (repo) and event type.",
            )
        } else {
            (
                "hookgauge_event_interval_events",
                "Events the mean interval of hookgauge_event_interval_seconds is taken over.",
            )
        };
        for i in &intervals[from..to] {
            let value = if seconds {
                match i.mean_seconds {
                    Some(mean) => mean,
                    None => continue,
                }
            } else {
                f64::from(i.events)
            };
            if !*headed {
                *headed = true;
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            }
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"{repo=\"");
            escape_label(out, i.repo.as_bytes());
            out.extend_from_slice(b"\",type=\"");
            escape_label(out, i.kind.as_bytes());
            out.extend_from_slice(b"\"} ");
            write_value(out, value);
            out.push(b'\n');
        }
    }

    /// A whole scrape in one buffer (tests, `export`).
    pub fn render(&self) -> Vec<u8> {
        let mut scrape = Scrape {
            now: now_seconds(),
            part: 0,
            headed: false,
            _permit: None,
        };
        let mut out = Vec::new();
        while let Some(chunk) = self.render_next(&mut scrape) {
            out.extend_from_slice(&chunk);
        }
        out
    }
}

/// Scrapes rendered at once; more wait for one of them to finish, so that
/// scrapes never take more than this many cores from ingest.
pub const CONCURRENT_SCRAPES: usize = 2;

/// A chunk of a streamed scrape stops growing past this size.
pub const CHUNK_BYTES: usize = 256 * 1024;

const PELORUS_PARTS: usize = 4 * SHARDS;
const PARTS: usize = PELORUS_PARTS + (AppSeries::FAMILIES + 2) * SHARDS + 1;

/// One scrape in progress ([`View::begin_scrape`]): the time its windows
/// are taken at, the next part, whether the current application family has
/// written its header, and its place among the concurrent scrapes.
pub struct Scrape {
    now: i64,
    part: usize,
    headed: bool,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
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
pub(super) fn escape_label(out: &mut Vec<u8>, value: &[u8]) {
    if !value.iter().any(|b| matches!(b, b'\\' | b'"' | b'\n')) {
        out.extend_from_slice(value);
        return;
    }
    for &b in value {
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
        for item in items {
            match item {
                Restored::Commit(commit) => self.set_commit(&commit),
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
                } => self.apps.restore_deploys(
                    self.intern(app.as_str()),
                    self.intern(namespace.as_str()),
                    count,
                    [rework, rework_withdrawn, failed, failed_withdrawn],
                    last,
                ),
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
                    // The open-failures gauge exists (at 0 when none is open)
                    // for every app with failures.
                    self.apps
                        .restore_failures(self.intern(app.as_str()), created, resolved)
                }
                Restored::LeadTime { app, seconds } => self.observe(&app, Span::LeadTime, seconds),
                Restored::TimeToRestore { app, seconds } => {
                    self.observe(&app, Span::TimeToRestore, seconds)
                }
                Restored::FailedDeploymentRecovery { app, seconds } => {
                    self.observe(&app, Span::Recovery, seconds)
                }
            }
        }
    }

    fn apply(&self, effects: &[Effect]) {
        for effect in effects {
            match effect {
                Effect::Commit(commit) => self.set_commit(commit),
                Effect::Deploy {
                    app,
                    namespace,
                    image_sha,
                    time,
                } => {
                    // Rework and failed counts exist (at 0) beside every deploy count.
                    self.apps.count_deploy(
                        self.intern(app.as_str()),
                        self.intern(namespace.as_str()),
                        *time,
                    );
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
                    self.apps
                        .count_failure(self.intern(app.as_str()), false, *first);
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
                    self.apps
                        .count_failure(self.intern(app.as_str()), true, *first);
                    self.set_failure(app, issue_number.as_str(), None, Some(*time));
                    self.set_open(app, issue_number.as_str(), *open_since);
                }
                Effect::LeadTime { app, seconds } => self.observe(app, Span::LeadTime, *seconds),
                Effect::TimeToRestore { app, seconds } => {
                    self.observe(app, Span::TimeToRestore, *seconds)
                }
                Effect::FailedDeploymentRecovery { app, seconds } => {
                    self.observe(app, Span::Recovery, *seconds)
                }
                Effect::Rework {
                    app,
                    namespace,
                    rework,
                } => self.mark(
                    app,
                    namespace,
                    if *rework {
                        Mark::Rework
                    } else {
                        Mark::ReworkWithdrawn
                    },
                ),
                Effect::DeployFailed {
                    app,
                    namespace,
                    failed,
                } => self.mark(
                    app,
                    namespace,
                    if *failed {
                        Mark::Failed
                    } else {
                        Mark::FailedWithdrawn
                    },
                ),
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

/// Writes a sample value as `f64`'s `Display` does (what the `prometheus`
/// crate writes), whole numbers without going through the formatter.
pub(super) fn write_value(out: &mut Vec<u8>, value: f64) {
    if value.fract() == 0.0 && value.abs() < 1e15 && !(value == 0.0 && value.is_sign_negative()) {
        write_int(out, value as i64);
    } else {
        let _ = write!(out, "{value}");
    }
}

/// Ends a Pelorus timestamp sample whose labels are written: the value
/// `time` (epoch seconds) and the sample's own timestamp (milliseconds).
fn end_timestamp_sample(out: &mut Vec<u8>, time: i64) {
    out.extend_from_slice(b"\"} ");
    write_int(out, time);
    out.push(b' ');
    write_int(out, time * 1000);
    out.push(b'\n');
}

/// Writes an integer in decimal.
pub(super) fn write_int(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Vec::new();
        escape_label(&mut out, b"a\"b\\c\nd");
        assert_eq!(out, b"a\\\"b\\\\c\\nd");
    }

    #[test]
    fn values_are_written_as_f64_displays_them() {
        for v in [
            0.0,
            -0.0,
            1.0,
            -7.0,
            42.5,
            1e-9,
            1_765_000_000.0,
            1e15,
            1e21,
            -3.25e7,
            9.007e15,
            u64::MAX as f64,
            f64::INFINITY,
            f64::NAN,
        ] {
            let mut out = Vec::new();
            write_value(&mut out, v);
            assert_eq!(String::from_utf8(out).unwrap(), v.to_string());
        }
        let mut out = Vec::new();
        write_int(&mut out, i64::MIN);
        assert_eq!(String::from_utf8(out).unwrap(), i64::MIN.to_string());
    }
}
