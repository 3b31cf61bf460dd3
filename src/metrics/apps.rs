//! The DORA counters, histograms and gauges of each application, kept the
//! way the Pelorus gauges are: names kept in the keys (`Name`), sharded maps, written
//! straight into the text exposition format shard by shard.
//!
//! A `prometheus` vector keeps owned label pairs for every series behind one
//! lock per family and builds a `MetricFamily` with owned strings for every
//! series on every scrape; at 100 000 applications that is hundreds of
//! megabytes and a lock held for the whole encoding. Here a series costs a
//! few words beside its names, and a scrape holds one shard's read
//! lock at a time. The text is byte for byte what the `prometheus` crate
//! encodes (a test below compares them).

use std::io::Write;

use super::name::Name;
use super::view::{escape_label, write_value, Sharded};
use super::SPAN_BUCKETS;

const BUCKETS: usize = SPAN_BUCKETS.len();

/// The series of one application in one namespace.
#[derive(Default)]
struct DeployEntry {
    deployments: Option<u64>,
    /// Rework decided, rework withdrawn, failed decided, failed withdrawn.
    marks: Option<[u64; 4]>,
    last_deploy: Option<f64>,
}

/// The series of one application.
#[derive(Default)]
struct AppEntry {
    /// Failures created and resolved.
    failures: Option<[u64; 2]>,
    open_failures: Option<i64>,
    oldest_open_failure: Option<f64>,
    lead_time: Option<Box<Histogram>>,
    time_to_restore: Option<Box<Histogram>>,
    recovery: Option<Box<Histogram>>,
}

/// A histogram over [`SPAN_BUCKETS`], observed as `prometheus::Histogram`
/// observes (a value on a bound falls in that bucket; the sum in the order
/// of the observations).
#[derive(Default)]
struct Histogram {
    buckets: [u64; BUCKETS],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if let Some(i) = SPAN_BUCKETS.iter().position(|b| v <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += v;
    }
}

/// Which of an app's histograms.
#[derive(Clone, Copy)]
pub enum Span {
    LeadTime,
    TimeToRestore,
    Recovery,
}

/// Which of the deploy marks (rework and failed deployments).
#[derive(Clone, Copy)]
pub enum Mark {
    Rework = 0,
    ReworkWithdrawn = 1,
    Failed = 2,
    FailedWithdrawn = 3,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The families, in the order a scrape writes them: name, help, type.
const FAMILIES: [(&str, &str, Kind); 13] = [
    (
        "hookgauge_deployments_total",
        "Successful deployments recorded, by application and namespace.",
        Kind::Counter,
    ),
    (
        "hookgauge_rework_deployments_total",
        "Deployments decided rework (unplanned, made while a failure of the application was \
         open, or reported so by their source), by application and namespace; subtract \
         hookgauge_rework_deployments_withdrawn_total for the rework deployments.",
        Kind::Counter,
    ),
    (
        "hookgauge_rework_deployments_withdrawn_total",
        "Rework decisions withdrawn because a later fact (a resolution arriving late) showed \
         no failure open at the deployment, by application and namespace.",
        Kind::Counter,
    ),
    (
        "hookgauge_failed_deployments_total",
        "Deployments a production failure was tied to (created within the link window after \
         the deployment, no deployment in between), by application and namespace.",
        Kind::Counter,
    ),
    (
        "hookgauge_failed_deployments_withdrawn_total",
        "Ties of a failure to a deployment withdrawn by a later fact (a deployment in between, \
         a newer creation time), by application and namespace.",
        Kind::Counter,
    ),
    (
        "hookgauge_last_deploy_timestamp_seconds",
        "Time of the latest deployment recorded, by application and namespace.",
        Kind::Gauge,
    ),
    (
        "hookgauge_failures_total",
        "Production failures recorded as created, by application.",
        Kind::Counter,
    ),
    (
        "hookgauge_failures_resolved_total",
        "Production failures recorded as resolved, by application.",
        Kind::Counter,
    ),
    (
        "hookgauge_open_failures",
        "Production failures created and not yet resolved, by application.",
        Kind::Gauge,
    ),
    (
        "hookgauge_oldest_open_failure_timestamp_seconds",
        "Creation time of the oldest unresolved production failure, by application.",
        Kind::Gauge,
    ),
    (
        "hookgauge_lead_time_seconds",
        "Time from a commit to its first deployment, observed once per commit.",
        Kind::Histogram,
    ),
    (
        "hookgauge_time_to_restore_seconds",
        "Time from a failure's creation to its resolution, observed once per failure.",
        Kind::Histogram,
    ),
    (
        "hookgauge_failed_deployment_recovery_seconds",
        "Time from the creation to the resolution of a failure tied to a deployment, observed \
         once per failure.",
        Kind::Histogram,
    ),
];

/// Families 0..DEPLOY_FAMILIES are labelled by app and namespace.
const DEPLOY_FAMILIES: usize = 6;

/// The per-application DORA series.
pub struct AppSeries {
    deploys: Sharded<(Name, Name), DeployEntry>,
    apps: Sharded<Name, AppEntry>,
    /// `le` label values, formatted once.
    bounds: Vec<String>,
    /// Each family's text before a series' first label value
    /// (`name{app="`), formatted once.
    prefixes: Vec<String>,
}

impl Default for AppSeries {
    fn default() -> Self {
        AppSeries::new()
    }
}

impl AppSeries {
    pub fn new() -> AppSeries {
        AppSeries {
            deploys: Sharded::new(),
            apps: Sharded::new(),
            bounds: SPAN_BUCKETS.iter().map(|b| b.to_string()).collect(),
            prefixes: FAMILIES
                .iter()
                .map(|(name, _, _)| format!("{name}{{app=\""))
                .collect(),
        }
    }

    fn deploy(&self, app: Name, namespace: Name, f: impl FnOnce(&mut DeployEntry)) {
        self.deploys
            .update((app, namespace), f, DeployEntry::default);
    }

    fn app(&self, app: Name, f: impl FnOnce(&mut AppEntry)) {
        self.apps.update(app, f, AppEntry::default);
    }

    /// Raises the deployment count to at least `count` (creating it at 0).
    pub fn raise_deployments(&self, app: Name, namespace: Name, count: u64) {
        self.deploy(app, namespace, |e| {
            let c = e.deployments.get_or_insert(0);
            *c = (*c).max(count);
        });
    }

    /// One more deployment: its count, the four marks at 0 if they are new,
    /// the last-deploy gauge raised to `time`.
    pub fn count_deploy(&self, app: Name, namespace: Name, time: i64) {
        self.deploy(app, namespace, |e| {
            *e.deployments.get_or_insert(0) += 1;
            e.marks.get_or_insert([0; 4]);
            raise_gauge(&mut e.last_deploy, time as f64);
        });
    }

    /// Restores a deploy count: every counter raised to its stored figure
    /// (never lowered), the last-deploy gauge raised to `last`.
    pub fn restore_deploys(
        &self,
        app: Name,
        namespace: Name,
        count: u64,
        marks: [u64; 4],
        last: i64,
    ) {
        self.deploy(app, namespace, |e| {
            let c = e.deployments.get_or_insert(0);
            *c = (*c).max(count);
            let current = e.marks.get_or_insert([0; 4]);
            for (m, target) in current.iter_mut().zip(marks) {
                *m = (*m).max(target);
            }
            raise_gauge(&mut e.last_deploy, last as f64);
        });
    }

    /// Counts one rework or failed decision (or its withdrawal); the four
    /// marks exist together.
    pub fn mark(&self, app: Name, namespace: Name, mark: Mark) {
        self.deploy(app, namespace, |e| {
            e.marks.get_or_insert([0; 4])[mark as usize] += 1;
        });
    }

    /// Counts a failure created or resolved (when `first`); both counters
    /// exist together.
    pub fn count_failure(&self, app: Name, resolved: bool, first: bool) {
        self.app(app, |e| {
            let counts = e.failures.get_or_insert([0; 2]);
            if first {
                counts[usize::from(resolved)] += 1;
            }
        });
    }

    /// Restores the failure counters (raised, never lowered); the open
    /// failures gauge exists (at 0 when none is open).
    pub fn restore_failures(&self, app: Name, created: u64, resolved: u64) {
        self.app(app, |e| {
            let counts = e.failures.get_or_insert([0; 2]);
            counts[0] = counts[0].max(created);
            counts[1] = counts[1].max(resolved);
            e.open_failures.get_or_insert(0);
        });
    }

    /// Sets the open-failure gauges: how many, and the oldest creation time
    /// (no series when none is open).
    pub fn set_open(&self, app: Name, open: usize, oldest: Option<i64>) {
        self.app(app, |e| {
            e.open_failures = Some(open as i64);
            e.oldest_open_failure = oldest.map(|t| t as f64);
        });
    }

    pub fn observe(&self, app: Name, span: Span, seconds: f64) {
        self.app(app, |e| {
            let h = match span {
                Span::LeadTime => &mut e.lead_time,
                Span::TimeToRestore => &mut e.time_to_restore,
                Span::Recovery => &mut e.recovery,
            };
            h.get_or_insert_with(Default::default).observe(seconds);
        });
    }

    /// Number of families [`AppSeries::render`] writes.
    pub const FAMILIES: usize = FAMILIES.len();

    /// Writes the series of one family held by one shard. The family's
    /// `# HELP` and `# TYPE` lines go before its first series (`*headed`
    /// false until then); a family without series writes nothing, as the
    /// `prometheus` registry does.
    pub fn render(&self, family: usize, shard: usize, headed: &mut bool, out: &mut Vec<u8>) {
        let (name, _, kind) = FAMILIES[family];
        let mut head = |out: &mut Vec<u8>| {
            if !*headed {
                *headed = true;
                write_head(out, family);
            }
        };
        let prefix = &self.prefixes[family];
        if family < DEPLOY_FAMILIES {
            let shard = self.deploys.read_shard(shard);
            for ((app, namespace), e) in shard.iter() {
                let value = match family {
                    0 => e.deployments.map(|c| c as f64),
                    5 => e.last_deploy,
                    mark => e.marks.map(|m| m[mark - 1] as f64),
                };
                let Some(value) = value else { continue };
                head(out);
                write_series(out, prefix, app, Some(namespace), value);
            }
            return;
        }
        let shard = self.apps.read_shard(shard);
        for (app, e) in shard.iter() {
            if kind == Kind::Histogram {
                let h = match family {
                    10 => &e.lead_time,
                    11 => &e.time_to_restore,
                    _ => &e.recovery,
                };
                let Some(h) = h else { continue };
                head(out);
                self.write_histogram(out, name, app.as_bytes(), h);
                continue;
            }
            let value = match family {
                6 => e.failures.map(|c| c[0] as f64),
                7 => e.failures.map(|c| c[1] as f64),
                8 => e.open_failures.map(|c| c as f64),
                _ => e.oldest_open_failure,
            };
            let Some(value) = value else { continue };
            head(out);
            write_series(out, prefix, app, None, value);
        }
    }

    fn write_histogram(&self, out: &mut Vec<u8>, name: &str, app: &[u8], h: &Histogram) {
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(h.buckets) {
            cumulative += count;
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"_bucket");
            labels(out, &[("app", app)], Some(bound));
            out.push(b' ');
            write_value(out, cumulative as f64);
            out.push(b'\n');
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"_bucket");
        labels(out, &[("app", app)], Some("+Inf"));
        out.push(b' ');
        write_value(out, h.count as f64);
        out.push(b'\n');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"_sum");
        labels(out, &[("app", app)], None);
        out.push(b' ');
        write_value(out, h.sum);
        out.push(b'\n');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"_count");
        labels(out, &[("app", app)], None);
        out.push(b' ');
        write_value(out, h.count as f64);
        out.push(b'\n');
    }

    /// Series held: (app and namespace, app).
    pub fn len(&self) -> (usize, usize) {
        (self.deploys.len(), self.apps.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

fn raise_gauge(gauge: &mut Option<f64>, value: f64) {
    let g = gauge.get_or_insert(0.0);
    if value > *g {
        *g = value;
    }
}

/// One sample line: `prefix` is the family's `name{app="`.
fn write_series(out: &mut Vec<u8>, prefix: &str, app: &Name, namespace: Option<&Name>, value: f64) {
    out.extend_from_slice(prefix.as_bytes());
    escape_label(out, app.as_bytes());
    if let Some(namespace) = namespace {
        out.extend_from_slice(b"\",namespace=\"");
        escape_label(out, namespace.as_bytes());
    }
    out.extend_from_slice(b"\"} ");
    write_value(out, value);
    out.push(b'\n');
}

fn write_head(out: &mut Vec<u8>, family: usize) {
    let (name, help, kind) = FAMILIES[family];
    let kind = match kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    };
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn labels(out: &mut Vec<u8>, pairs: &[(&str, &[u8])], le: Option<&str>) {
    let mut separator = b'{';
    for (name, value) in pairs {
        out.push(separator);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_label(out, value);
        out.push(b'"');
        separator = b',';
    }
    if let Some(le) = le {
        out.push(separator);
        out.extend_from_slice(b"le=\"");
        out.extend_from_slice(le.as_bytes());
        out.push(b'"');
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

    /// Renders every family of `series` as one scrape.
    fn render(series: &AppSeries) -> String {
        let mut out = Vec::new();
        for family in 0..AppSeries::FAMILIES {
            let mut headed = false;
            for shard in 0..super::super::view::SHARDS {
                series.render(family, shard, &mut headed, &mut out);
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// Lines grouped by family, each family's series sorted: the
    /// `prometheus` crate sorts series, the shards do not.
    fn canonical(text: &str) -> Vec<Vec<String>> {
        let mut families: Vec<Vec<String>> = Vec::new();
        for line in text.lines() {
            if line.starts_with("# HELP") {
                families.push(Vec::new());
            }
            families.last_mut().unwrap().push(line.to_string());
        }
        for f in &mut families {
            f[2..].sort();
        }
        families.sort();
        families
    }

    #[test]
    fn families_render_as_the_prometheus_crate_encodes_them() {
        let series = AppSeries::new();
        let registry = Registry::new();
        let counter = |i: usize, labels: &[&str]| {
            let (name, help, _) = FAMILIES[i];
            let v = IntCounterVec::new(Opts::new(name, help), labels).unwrap();
            registry.register(Box::new(v.clone())).unwrap();
            v
        };
        let deployments = counter(0, &["app", "namespace"]);
        let rework = counter(1, &["app", "namespace"]);
        let failures = counter(6, &["app"]);
        let resolved = counter(7, &["app"]);
        let (name, help, _) = FAMILIES[10];
        let lead = HistogramVec::new(
            HistogramOpts::new(name, help).buckets(SPAN_BUCKETS.to_vec()),
            &["app"],
        )
        .unwrap();
        registry.register(Box::new(lead.clone())).unwrap();
        let (name, help, _) = FAMILIES[5];
        let last = prometheus::GaugeVec::new(Opts::new(name, help), &["app", "namespace"]).unwrap();
        registry.register(Box::new(last.clone())).unwrap();

        for n in 0..300 {
            // Short names are kept inline, long ones shared: both kinds.
            let app = if n % 3 == 0 {
                format!("an-application-with-a-long-name-\"{n}\"\\\n")
            } else {
                format!("app-\"{n}\"\\\n")
            };
            let app = Name::from(app.as_str());
            let ns = Name::from(format!("ns{}", n % 7).as_str());
            for _ in 0..=(n % 3) {
                series.count_deploy(app.clone(), ns.clone(), 1_700_000_000 + n as i64);
                deployments.with_label_values(&[&app, &ns]).inc();
                rework.with_label_values(&[&app, &ns]);
                last.with_label_values(&[&app, &ns])
                    .set(1_700_000_000.0 + n as f64);
            }
            series.mark(app.clone(), ns.clone(), Mark::Rework);
            rework.with_label_values(&[&app, &ns]).inc();
            if n % 4 == 0 {
                series.count_failure(app.clone(), false, true);
                series.count_failure(app.clone(), true, n % 8 == 0);
                failures.with_label_values(&[&app]).inc();
                let r = resolved.with_label_values(&[&app]);
                if n % 8 == 0 {
                    r.inc();
                }
            }
            if n % 5 == 0 {
                for s in [0.5, 60.0, 61.3, 1e9, 299.99, n as f64 * 1234.567] {
                    series.observe(app.clone(), Span::LeadTime, s);
                    lead.with_label_values(&[&app]).observe(s);
                }
            }
        }
        let mut expected = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut expected,
        )
        .unwrap();
        // The marks other than rework are not in the reference registry.
        let ours: String = render(&series)
            .split_inclusive('\n')
            .filter(|l| {
                let name = l
                    .trim_start_matches("# HELP ")
                    .trim_start_matches("# TYPE ");
                ![
                    "hookgauge_rework_deployments_withdrawn_total",
                    "hookgauge_failed_deployments",
                ]
                .iter()
                .any(|n| name.starts_with(n))
            })
            .collect();
        assert_eq!(
            canonical(&ours),
            canonical(&String::from_utf8(expected).unwrap())
        );
    }

    #[test]
    fn a_family_without_series_writes_nothing() {
        let series = AppSeries::new();
        series.count_deploy("a".into(), "prod".into(), 5);
        let text = render(&series);
        assert!(text.contains("# TYPE hookgauge_deployments_total counter\n"));
        assert!(!text.contains("hookgauge_lead_time_seconds"));
        assert!(!text.contains("hookgauge_failures_total"));
        assert_eq!(text.matches("# TYPE").count(), 6);
    }
}
