//! `hookgauge export`: the stored history as OpenMetrics text for
//! `promtool tsdb create-blocks-from openmetrics`, so that history Prometheus
//! never scraped (an outage, a first install, a backfill) can be added to it.
//!
//! The samples are those a scrape would have produced at the time of each
//! event: the Pelorus gauges with the event time as value and timestamp, and
//! the counters and histograms with their running totals. Label values are
//! written exactly as `/metrics` writes them, so exported and scraped samples
//! form the same series.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::UNIX_EPOCH;

use crate::metrics::SPAN_BUCKETS;
use crate::store::history::{History, HistoryFilter, ObservationRow};
use crate::store::StoreError;

/// What an export wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub deploys: usize,
    pub commits: usize,
    pub failure_events: usize,
    pub samples: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write the export: {0}")]
    Write(#[from] io::Error),
}

/// Parses `--from`/`--to`: epoch seconds, an RFC 3339 time, or a duration
/// meaning that long before `now` (`30d`).
pub fn parse_time(value: &str, now: i64) -> Result<i64, String> {
    if let Ok(seconds) = value.parse::<i64>() {
        return Ok(seconds);
    }
    if let Ok(time) = humantime::parse_rfc3339_weak(value) {
        return time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .map_err(|_| format!("`{value}` is before 1970"));
    }
    if let Ok(ago) = humantime::parse_duration(value) {
        return Ok(now - ago.as_secs() as i64);
    }
    Err(format!(
        "`{value}` is neither epoch seconds, an RFC 3339 time (2026-01-31T12:00:00Z) nor a duration ago (30d)"
    ))
}

/// Instance-free base series that the shipped recording rules
/// (deploy/prometheus/rules/hookgauge.rules.yml) compute from the counters.
/// Backfilled too, so that the window rules see one continuous series.
const RECORDED_DEPLOYMENTS: &str = "hookgauge:deployments_total:max";
const RECORDED_FAILURES: &str = "hookgauge:failures_total:max";
const RECORDED_LEAD_TIME_BUCKETS: &str = "hookgauge:lead_time_seconds_bucket:max";
const RECORDED_RESTORE_BUCKETS: &str = "hookgauge:time_to_restore_seconds_bucket:max";
const RECORDED_HELP: &str = "Recorded by hookgauge.rules.yml; backfilled by hookgauge export.";

/// Interval at which running totals are repeated between events, as a scrape
/// would have seen them, so that backfilled counters are continuous series.
pub const RESAMPLE_EVERY: i64 = 3_600;

struct Writer<'a, W: Write> {
    out: &'a mut W,
    samples: usize,
}

impl<W: Write> Writer<'_, W> {
    fn family(&mut self, name: &str, kind: &str, help: &str) -> io::Result<()> {
        writeln!(self.out, "# TYPE {name} {kind}\n# HELP {name} {help}")
    }

    fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: f64,
        time: i64,
    ) -> io::Result<()> {
        write!(self.out, "{name}{{")?;
        for (i, (key, val)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.write_all(b",")?;
            }
            write!(self.out, "{key}=\"")?;
            for c in val.chars() {
                match c {
                    '\\' => self.out.write_all(b"\\\\")?,
                    '"' => self.out.write_all(b"\\\"")?,
                    '\n' => self.out.write_all(b"\\n")?,
                    c => write!(self.out, "{c}")?,
                }
            }
            self.out.write_all(b"\"")?;
        }
        writeln!(self.out, "}} {value} {time}")?;
        self.samples += 1;
        Ok(())
    }
}

/// The times at which a running state is written: each change inside
/// `[from, to]` (the last of several at one time), and every
/// [`RESAMPLE_EVERY`] seconds from the first change (or `from`) up to `to`.
/// `changes` are sorted change times; yields `(time, index of the last change
/// at or before time)`.
fn sample_times(changes: &[i64], from: i64, to: i64) -> Vec<(i64, usize)> {
    let mut times = Vec::new();
    let Some(&first) = changes.first() else {
        return times;
    };
    let mut next_tick = first.max(from);
    let mut index = 0;
    loop {
        let next_change = changes.get(index + 1).copied();
        let at = match next_change {
            Some(change) if change <= next_tick => change,
            _ => next_tick,
        };
        if at > to {
            break;
        }
        while changes.get(index + 1).is_some_and(|&c| c <= at) {
            index += 1;
        }
        if at >= from && times.last().is_none_or(|&(t, _)| t < at) {
            times.push((at, index));
        }
        if at == next_tick {
            next_tick += RESAMPLE_EVERY;
        }
    }
    times
}

/// Running counter totals of one series at the given change times.
fn write_counter<W: Write>(
    w: &mut Writer<'_, W>,
    name: &str,
    labels: &[(&str, &str)],
    changes: &[i64],
    filter: &HistoryFilter,
) -> io::Result<()> {
    for (time, index) in sample_times(changes, filter.from, filter.to) {
        w.sample(name, labels, (index + 1) as f64, time)?;
    }
    Ok(())
}

/// A histogram's running state, per app, at each observation and hourly.
/// With `recorded`, writes only the buckets, under that recorded-rule name.
fn write_histogram<W: Write>(
    w: &mut Writer<'_, W>,
    name: &str,
    recorded: Option<&str>,
    observations: &[ObservationRow],
    filter: &HistoryFilter,
) -> io::Result<()> {
    let mut by_app: BTreeMap<&str, Vec<&ObservationRow>> = BTreeMap::new();
    for o in observations {
        by_app.entry(&o.app).or_default().push(o);
    }
    let bucket_name = recorded.map_or_else(|| format!("{name}_bucket"), str::to_owned);
    let (count_name, sum_name) = (format!("{name}_count"), format!("{name}_sum"));
    for (app, rows) in by_app {
        // The cumulative state after each observation.
        let mut states = Vec::with_capacity(rows.len());
        let mut buckets = vec![0u64; SPAN_BUCKETS.len()];
        let mut sum = 0.0;
        for row in &rows {
            for (bound, n) in SPAN_BUCKETS.iter().zip(buckets.iter_mut()) {
                if row.seconds <= *bound {
                    *n += 1;
                }
            }
            sum += row.seconds;
            states.push((buckets.clone(), sum));
        }
        let times: Vec<i64> = rows.iter().map(|r| r.time).collect();
        for (time, index) in sample_times(&times, filter.from, filter.to) {
            let (buckets, sum) = &states[index];
            let count = (index + 1) as f64;
            for (bound, n) in SPAN_BUCKETS.iter().zip(buckets) {
                w.sample(
                    &bucket_name,
                    &[("app", app), ("le", &bound.to_string())],
                    *n as f64,
                    time,
                )?;
            }
            w.sample(&bucket_name, &[("app", app), ("le", "+Inf")], count, time)?;
            if recorded.is_none() {
                w.sample(&count_name, &[("app", app)], count, time)?;
                w.sample(&sum_name, &[("app", app)], *sum, time)?;
            }
        }
    }
    Ok(())
}

/// Writes the history selected by `filter` to `out` as OpenMetrics.
pub fn export(
    history: &History,
    filter: &HistoryFilter,
    out: &mut impl Write,
) -> Result<ExportSummary, ExportError> {
    let mut w = Writer { out, samples: 0 };
    let mut summary = ExportSummary::default();

    // Counters need every event up to `to`, to carry their totals into the window.
    let everything = HistoryFilter {
        from: i64::MIN,
        ..filter.clone()
    };
    let all_deploys = history.deploys(&everything)?;
    w.family(
        "hookgauge_deployments",
        "counter",
        "Successful deployments recorded, by application and namespace.",
    )?;
    let mut deploy_times: BTreeMap<(&str, &str), Vec<i64>> = BTreeMap::new();
    for d in &all_deploys {
        deploy_times
            .entry((&d.app, &d.namespace))
            .or_default()
            .push(d.time);
    }
    for ((app, namespace), times) in &deploy_times {
        let labels = [("app", *app), ("namespace", *namespace)];
        write_counter(
            &mut w,
            "hookgauge_deployments_total",
            &labels,
            times,
            filter,
        )?;
    }
    w.family(RECORDED_DEPLOYMENTS, "gauge", RECORDED_HELP)?;
    for ((app, namespace), times) in &deploy_times {
        let labels = [("app", *app), ("namespace", *namespace)];
        write_counter(&mut w, RECORDED_DEPLOYMENTS, &labels, times, filter)?;
    }

    let mut deploys: Vec<_> = all_deploys
        .iter()
        .filter(|d| d.time >= filter.from)
        .collect();
    summary.deploys = deploys.len();
    // A deploy whose image is not known yet has no deploy_timestamp series.
    deploys.retain(|d| !d.image_sha.is_empty());
    w.family(
        "deploy_timestamp",
        "gauge",
        "Time of the latest deployment of an image, in epoch seconds.",
    )?;
    deploys.sort_by(|a, b| {
        (&a.app, &a.image_sha, &a.namespace, a.time).cmp(&(
            &b.app,
            &b.image_sha,
            &b.namespace,
            b.time,
        ))
    });
    for d in deploys {
        let labels = [
            ("app", d.app.as_str()),
            ("image_sha", d.image_sha.as_str()),
            ("namespace", d.namespace.as_str()),
        ];
        w.sample("deploy_timestamp", &labels, d.time as f64, d.time)?;
    }

    let commits = history.commits(filter)?;
    summary.commits = commits.len();
    w.family(
        "commit_timestamp",
        "gauge",
        "Commit time of a change, in epoch seconds.",
    )?;
    for c in &commits {
        let labels = [
            ("app", c.app.as_str()),
            ("commit", c.commit.as_str()),
            ("image_sha", c.image_sha.as_str()),
            ("namespace", c.namespace.as_str()),
            ("commit_link", c.commit_link.as_str()),
        ];
        w.sample("commit_timestamp", &labels, c.time as f64, c.time)?;
    }

    for (resolved, counter, counter_help, gauge, gauge_help) in [
        (
            false,
            "hookgauge_failures",
            "Production failures recorded as created, by application.",
            "failure_creation_timestamp",
            "Time a production failure was created, in epoch seconds.",
        ),
        (
            true,
            "hookgauge_failures_resolved",
            "Production failures recorded as resolved, by application.",
            "failure_resolution_timestamp",
            "Time a production failure was resolved, in epoch seconds.",
        ),
    ] {
        let ends = history.failure_ends(filter, resolved)?;
        w.family(counter, "counter", counter_help)?;
        let mut times: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for f in &ends {
            times.entry(&f.app).or_default().push(f.time);
        }
        for (app, times) in &times {
            write_counter(
                &mut w,
                &format!("{counter}_total"),
                &[("app", app)],
                times,
                filter,
            )?;
        }
        if !resolved {
            w.family(RECORDED_FAILURES, "gauge", RECORDED_HELP)?;
            for (app, times) in &times {
                write_counter(&mut w, RECORDED_FAILURES, &[("app", app)], times, filter)?;
            }
        }
        w.family(gauge, "gauge", gauge_help)?;
        let mut in_window: Vec<_> = ends.iter().filter(|f| f.time >= filter.from).collect();
        summary.failure_events += in_window.len();
        in_window.sort_by(|a, b| {
            (&a.app, &a.issue_number, a.time).cmp(&(&b.app, &b.issue_number, b.time))
        });
        for f in in_window {
            let labels = [
                ("app", f.app.as_str()),
                ("issue_number", f.issue_number.as_str()),
            ];
            w.sample(gauge, &labels, f.time as f64, f.time)?;
        }
    }

    w.family(
        "hookgauge_lead_time_seconds",
        "histogram",
        "Time from a commit to its first deployment, observed once per commit.",
    )?;
    let lead_times = history.lead_times(filter)?;
    write_histogram(
        &mut w,
        "hookgauge_lead_time_seconds",
        None,
        &lead_times,
        filter,
    )?;
    w.family(RECORDED_LEAD_TIME_BUCKETS, "gauge", RECORDED_HELP)?;
    let recorded = Some(RECORDED_LEAD_TIME_BUCKETS);
    write_histogram(
        &mut w,
        "hookgauge_lead_time_seconds",
        recorded,
        &lead_times,
        filter,
    )?;
    w.family(
        "hookgauge_time_to_restore_seconds",
        "histogram",
        "Time from a failure's creation to its resolution, observed once per failure.",
    )?;
    let restore_times = history.restore_times(filter)?;
    let name = "hookgauge_time_to_restore_seconds";
    write_histogram(&mut w, name, None, &restore_times, filter)?;
    w.family(RECORDED_RESTORE_BUCKETS, "gauge", RECORDED_HELP)?;
    let recorded = Some(RECORDED_RESTORE_BUCKETS);
    write_histogram(&mut w, name, recorded, &restore_times, filter)?;
    writeln!(w.out, "# EOF")?;
    summary.samples = w.samples;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_totals_are_written_at_changes_and_hourly() {
        let h = RESAMPLE_EVERY;
        // Changes at 0, 10 and 10 (two at once), then nothing until 3h.
        let times = sample_times(&[0, 10, 10], 0, 3 * h);
        assert_eq!(times, vec![(0, 0), (10, 2), (h, 2), (2 * h, 2), (3 * h, 2)]);
        // A window starting later carries the total in from before it.
        let times = sample_times(&[0, 10], h + 5, 2 * h + 5);
        assert_eq!(times, vec![(h + 5, 1), (2 * h + 5, 1)]);
        assert!(sample_times(&[], 0, h).is_empty());
        assert!(sample_times(&[5 * h], 0, h).is_empty());
    }

    #[test]
    fn times_are_epoch_rfc3339_or_durations_ago() {
        let now = 1_800_000_000;
        assert_eq!(parse_time("1700000000", now), Ok(1_700_000_000));
        assert_eq!(parse_time("2023-11-14T22:13:20Z", now), Ok(1_700_000_000));
        assert_eq!(parse_time("30d", now), Ok(now - 30 * 86_400));
        assert!(parse_time("yesterday", now).is_err());
    }
}
