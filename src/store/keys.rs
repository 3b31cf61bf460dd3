//! The five keys computed from the stored facts (docs/five-keys.md), for the
//! keys page and `GET /api/v1/keys`: read-only queries that fetch the last
//! [`HORIZON_DAYS`] days of deploys (counted per day, with the store's
//! rework and failed decisions) and the lead-time and recovery spans
//! observed in them, then the keys of any window or week from those.
//!
//! Medians are exact medians of the stored spans; the Prometheus rules
//! estimate theirs from histogram buckets, so the two may differ slightly.
//! Tiers use the same limits as the rules' `hookgauge:tier_threshold:*`
//! constants ([`Key::limits`], checked against the rules file by a test).

use std::collections::BTreeMap;

use serde::Serialize;

use super::deliveries::Ledger;
use super::sql::Sql;
use super::StoreError;

/// The windows the keys are shown over, in days.
pub const WINDOWS: [u32; 3] = [7, 30, 90];
/// Weekly trend points, newest ending now: 13 weeks cover the 90 days.
pub const TREND_WEEKS: u32 = 13;
/// How far back the facts are read: the trend's 13 weeks.
pub const HORIZON_DAYS: u32 = TREND_WEEKS * 7;
const DAY: i64 = 86_400;

/// DORA's tiers, as `hookgauge:tier` numbers them (4 elite … 1 low).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Low = 1,
    Medium = 2,
    High = 3,
    Elite = 4,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Low => "low",
            Tier::Medium => "medium",
            Tier::High => "high",
            Tier::Elite => "elite",
        }
    }
}

/// One of the five keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    DeploymentFrequency,
    LeadTime,
    ChangeFailureRate,
    FailedDeploymentRecoveryTime,
    ReworkRate,
}

impl Key {
    pub const ALL: [Key; 5] = [
        Key::DeploymentFrequency,
        Key::LeadTime,
        Key::ChangeFailureRate,
        Key::FailedDeploymentRecoveryTime,
        Key::ReworkRate,
    ];

    /// The name of the key in the JSON and in `hookgauge:tier{key}`.
    pub fn name(self) -> &'static str {
        match self {
            Key::DeploymentFrequency => "deployment_frequency",
            Key::LeadTime => "lead_time",
            Key::ChangeFailureRate => "change_failure_rate",
            Key::FailedDeploymentRecoveryTime => "failed_deployment_recovery_time",
            Key::ReworkRate => "rework_rate",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Key::DeploymentFrequency => "Deployment frequency",
            Key::LeadTime => "Change lead time",
            Key::ChangeFailureRate => "Change failure rate",
            Key::FailedDeploymentRecoveryTime => "Failed deployment recovery time",
            Key::ReworkRate => "Deployment rework rate",
        }
    }

    /// The middle of the key's `hookgauge:tier_threshold:<name>_<tier>` rules.
    pub fn threshold_name(self) -> &'static str {
        match self {
            Key::DeploymentFrequency => "deployments_per_day",
            Key::LeadTime => "lead_time_seconds",
            Key::ChangeFailureRate => "change_failure_rate",
            Key::FailedDeploymentRecoveryTime => "recovery_seconds",
            Key::ReworkRate => "rework_rate",
        }
    }

    /// The limits of elite, high and medium: the values of the rules'
    /// `hookgauge:tier_threshold:*` constants (docs/five-keys.md).
    pub fn limits(self) -> [f64; 3] {
        match self {
            Key::DeploymentFrequency => [1.0, 1.0 / 7.0, 1.0 / 30.0],
            Key::LeadTime => [86_400.0, 7.0 * 86_400.0, 30.0 * 86_400.0],
            Key::ChangeFailureRate | Key::ReworkRate => [0.05, 0.10, 0.15],
            Key::FailedDeploymentRecoveryTime => [3_600.0, 86_400.0, 7.0 * 86_400.0],
        }
    }

    /// The tier of `value`, compared with the limits as the rules do:
    /// at least (frequency), below (times), at most (rates).
    pub fn tier(self, value: f64) -> Tier {
        let passes = |limit: f64| match self {
            Key::DeploymentFrequency => value >= limit,
            Key::LeadTime | Key::FailedDeploymentRecoveryTime => value < limit,
            Key::ChangeFailureRate | Key::ReworkRate => value <= limit,
        };
        let [elite, high, medium] = self.limits();
        if passes(elite) {
            Tier::Elite
        } else if passes(high) {
            Tier::High
        } else if passes(medium) {
            Tier::Medium
        } else {
            Tier::Low
        }
    }

    fn figure(self, value: Option<f64>) -> Figure {
        Figure {
            value,
            tier: value.map(|v| self.tier(v)),
        }
    }
}

/// A key's value in a window and its tier; both absent without data.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Figure {
    pub value: Option<f64>,
    pub tier: Option<Tier>,
}

/// The five keys over one window, with the counts they come from.
/// Units: deployments per day, seconds, and shares (0 to 1).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Keys {
    pub deployments: i64,
    pub failed_deployments: i64,
    pub rework_deployments: i64,
    /// Lead times observed in the window (commits first deployed in it).
    pub lead_times: usize,
    /// Recovery times observed in the window (tied failures resolved in it).
    pub recoveries: usize,
    pub deployment_frequency: Figure,
    pub lead_time: Figure,
    pub change_failure_rate: Figure,
    pub failed_deployment_recovery_time: Figure,
    pub rework_rate: Figure,
}

impl Keys {
    pub fn figure(&self, key: Key) -> &Figure {
        match key {
            Key::DeploymentFrequency => &self.deployment_frequency,
            Key::LeadTime => &self.lead_time,
            Key::ChangeFailureRate => &self.change_failure_rate,
            Key::FailedDeploymentRecoveryTime => &self.failed_deployment_recovery_time,
            Key::ReworkRate => &self.rework_rate,
        }
    }
}

/// The keys over the 7 days ending at `end` (epoch seconds).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrendPoint {
    pub end: i64,
    #[serde(flatten)]
    pub keys: Keys,
}

/// Deploys of one application on one day.
#[derive(Debug, Clone, Copy, Default)]
struct DayCount {
    deploys: i64,
    failed: i64,
    rework: i64,
}

/// What the store holds of one application over the horizon; days are
/// counted back from `now` (day 0: the last 24 hours).
#[derive(Debug, Clone, Default)]
struct AppFacts {
    days: BTreeMap<u32, DayCount>,
    /// (day observed, seconds)
    lead_times: Vec<(u32, i64)>,
    recoveries: Vec<(u32, i64)>,
}

/// The facts the keys of every window are computed from.
#[derive(Debug, Clone, Default)]
pub struct KeyFacts {
    pub now: i64,
    apps: BTreeMap<String, AppFacts>,
}

/// The exact median: the middle span, or the mean of the two middle ones.
pub fn median(spans: &mut [i64]) -> Option<f64> {
    if spans.is_empty() {
        return None;
    }
    spans.sort_unstable();
    let mid = spans.len() / 2;
    Some(if spans.len() % 2 == 1 {
        spans[mid] as f64
    } else {
        (spans[mid - 1] as f64 + spans[mid] as f64) / 2.0
    })
}

impl KeyFacts {
    /// The applications with a deploy or an observation in the horizon.
    pub fn apps(&self) -> impl Iterator<Item = &str> {
        self.apps.keys().map(String::as_str)
    }

    /// The keys of `app` (all applications together when `None`) over the
    /// days `from_day..to_day` back from now.
    fn span(&self, app: Option<&str>, from_day: u32, to_day: u32) -> Keys {
        let selected: Vec<&AppFacts> = match app {
            Some(app) => self.apps.get(app).into_iter().collect(),
            None => self.apps.values().collect(),
        };
        let (mut deployments, mut failed, mut rework) = (0, 0, 0);
        let (mut lead, mut recovery) = (Vec::new(), Vec::new());
        let within = |day: &u32| (from_day..to_day).contains(day);
        for facts in selected {
            for (_, c) in facts.days.range(from_day..to_day) {
                deployments += c.deploys;
                failed += c.failed;
                rework += c.rework;
            }
            lead.extend(
                facts
                    .lead_times
                    .iter()
                    .filter(|(d, _)| within(d))
                    .map(|(_, s)| *s),
            );
            recovery.extend(
                facts
                    .recoveries
                    .iter()
                    .filter(|(d, _)| within(d))
                    .map(|(_, s)| *s),
            );
        }
        let days = f64::from(to_day - from_day);
        let share = |n: i64| (deployments > 0).then(|| n as f64 / deployments as f64);
        Keys {
            deployments,
            failed_deployments: failed,
            rework_deployments: rework,
            lead_times: lead.len(),
            recoveries: recovery.len(),
            deployment_frequency: Key::DeploymentFrequency.figure(Some(deployments as f64 / days)),
            lead_time: Key::LeadTime.figure(median(&mut lead)),
            change_failure_rate: Key::ChangeFailureRate.figure(share(failed)),
            failed_deployment_recovery_time: Key::FailedDeploymentRecoveryTime
                .figure(median(&mut recovery)),
            rework_rate: Key::ReworkRate.figure(share(rework)),
        }
    }

    /// The keys over the last `days` days (at most [`HORIZON_DAYS`]).
    pub fn window(&self, app: Option<&str>, days: u32) -> Keys {
        self.span(app, 0, days.min(HORIZON_DAYS))
    }

    /// [`TREND_WEEKS`] weekly points, oldest first, the last ending now.
    pub fn trend(&self, app: Option<&str>) -> Vec<TrendPoint> {
        (0..TREND_WEEKS)
            .rev()
            .map(|week| TrendPoint {
                end: self.now - i64::from(week) * 7 * DAY,
                keys: self.span(app, week * 7, week * 7 + 7),
            })
            .collect()
    }
}

impl Ledger {
    /// The facts of the last [`HORIZON_DAYS`] days up to `now`, of `app` or
    /// of every application.
    pub async fn key_facts(&self, app: Option<String>, now: i64) -> Result<KeyFacts, StoreError> {
        self.read(move |conn| read_facts(conn, app.as_deref(), now))
            .await
    }
}

fn read_facts(
    conn: &mut dyn Sql,
    app: Option<&str>,
    now: i64,
) -> Result<KeyFacts, super::sql::DbError> {
    let from = now - i64::from(HORIZON_DAYS) * DAY;
    let params: [&dyn super::sql::Param; 3] = [&from, &now, &app];
    let mut facts = KeyFacts {
        now,
        apps: BTreeMap::new(),
    };
    let day_of = |time: i64| ((now - time) / DAY) as u32;
    let days = conn.rows(
        "SELECT app, CAST((?2 - time) / 86400 AS BIGINT), COUNT(*), \
         CAST(SUM(CASE WHEN failed <> 0 THEN 1 ELSE 0 END) AS BIGINT), \
         CAST(SUM(CASE WHEN rework <> 0 THEN 1 ELSE 0 END) AS BIGINT) \
         FROM deploys WHERE time > ?1 AND time <= ?2 AND (CAST(?3 AS TEXT) IS NULL OR app = ?3) \
         GROUP BY app, CAST((?2 - time) / 86400 AS BIGINT)",
        &params,
        |r| {
            Ok((
                r.get::<String>(0)?,
                r.get::<i64>(1)?,
                DayCount {
                    deploys: r.get(2)?,
                    failed: r.get(3)?,
                    rework: r.get(4)?,
                },
            ))
        },
    )?;
    for (app, day, count) in days {
        let entry = facts.apps.entry(app).or_default();
        *entry.days.entry(day as u32).or_default() = count;
    }
    // A lead time is observed at the commit's first deployment: its
    // earliest stored time plus the span.
    let lead_times = conn.rows(
        "SELECT app, at, seconds FROM (\
           SELECT o.app AS app, o.seconds AS seconds, \
             (SELECT MIN(c.time) FROM commits AS c WHERE c.app = o.app AND c.commit_sha = o.subject) \
               + o.seconds AS at \
           FROM observations AS o WHERE o.kind = 'lead_time' \
           AND (CAST(?3 AS TEXT) IS NULL OR o.app = ?3)) AS made \
         WHERE at > ?1 AND at <= ?2",
        &params,
        |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?, r.get::<i64>(2)?)),
    )?;
    for (app, at, seconds) in lead_times {
        let entry = facts.apps.entry(app).or_default();
        entry.lead_times.push((day_of(at), seconds));
    }
    // A recovery time is observed when its failure is resolved.
    let recoveries = conn.rows(
        "SELECT o.app, f.resolved, o.seconds FROM observations AS o \
         JOIN failures AS f ON f.app = o.app AND f.issue_number = o.subject \
         WHERE o.kind = 'failed_deployment_recovery' AND f.resolved > ?1 AND f.resolved <= ?2 \
         AND (CAST(?3 AS TEXT) IS NULL OR o.app = ?3)",
        &params,
        |r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?, r.get::<i64>(2)?)),
    )?;
    for (app, at, seconds) in recoveries {
        let entry = facts.apps.entry(app).or_default();
        entry.recoveries.push((day_of(at), seconds));
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Evaluates a threshold rule's `vector(<a> [* or / <b>])`.
    fn constant(expr: &str) -> f64 {
        let inner = expr
            .trim()
            .strip_prefix("vector(")
            .and_then(|e| e.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not a vector constant: {expr}"));
        let number = |s: &str| -> f64 { s.trim().parse().unwrap_or_else(|_| panic!("{expr}")) };
        if let Some((a, b)) = inner.split_once('*') {
            number(a) * number(b)
        } else if let Some((a, b)) = inner.split_once('/') {
            number(a) / number(b)
        } else {
            number(inner)
        }
    }

    #[test]
    fn the_limits_are_those_of_the_rules_file() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/prometheus/rules/hookgauge.rules.yml"
        );
        let rules = std::fs::read_to_string(path).unwrap();
        let mut found = BTreeMap::new();
        let mut lines = rules.lines();
        while let Some(line) = lines.next() {
            let Some(name) = line
                .trim()
                .strip_prefix("- record: hookgauge:tier_threshold:")
            else {
                continue;
            };
            let expr = lines.next().unwrap().trim();
            let expr = expr.strip_prefix("expr:").unwrap();
            found.insert(name.trim().to_owned(), constant(expr));
        }
        let mut expected = BTreeMap::new();
        for key in Key::ALL {
            for (tier, limit) in ["elite", "high", "medium"].iter().zip(key.limits()) {
                expected.insert(format!("{}_{tier}", key.threshold_name()), limit);
            }
        }
        assert_eq!(found, expected);
    }

    #[test]
    fn tiers_compare_as_the_rules_do() {
        let df = Key::DeploymentFrequency;
        assert_eq!(df.tier(1.0), Tier::Elite);
        assert_eq!(df.tier(1.0 / 7.0), Tier::High);
        assert_eq!(df.tier(1.0 / 30.0), Tier::Medium);
        assert_eq!(df.tier(0.0), Tier::Low);
        assert_eq!(
            Key::LeadTime.tier(86_400.0),
            Tier::High,
            "below a day is elite"
        );
        assert_eq!(Key::LeadTime.tier(86_399.0), Tier::Elite);
        assert_eq!(Key::ChangeFailureRate.tier(0.05), Tier::Elite, "at most");
        assert_eq!(Key::ReworkRate.tier(0.15), Tier::Medium);
        assert_eq!(Key::ReworkRate.tier(0.2), Tier::Low);
        assert_eq!(Key::FailedDeploymentRecoveryTime.tier(3_600.0), Tier::High);
    }

    #[test]
    fn medians_are_exact() {
        assert_eq!(median(&mut []), None);
        assert_eq!(median(&mut [30, 10, 20]), Some(20.0));
        assert_eq!(median(&mut [7_200, 82_800]), Some(45_000.0));
    }

    #[test]
    fn without_deploys_rates_have_no_value_and_frequency_is_low() {
        let facts = KeyFacts::default();
        let keys = facts.window(Some("none"), 7);
        assert_eq!(keys.deployment_frequency.value, Some(0.0));
        assert_eq!(keys.deployment_frequency.tier, Some(Tier::Low));
        for key in [Key::LeadTime, Key::ChangeFailureRate, Key::ReworkRate] {
            assert_eq!(keys.figure(key).value, None);
            assert_eq!(keys.figure(key).tier, None);
        }
        assert_eq!(facts.trend(None).len(), TREND_WEEKS as usize);
    }
}
