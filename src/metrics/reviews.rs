//! Pull requests waiting for review, as the pollers last saw them:
//! `hookgauge_pull_request_review_wait_seconds{repo,number}` (one series
//! per waiting pull request, gone once it is reviewed, merged, closed or
//! turned draft) and `hookgauge_pull_requests_awaiting_review{repo}`.
//!
//! A wait is a duration that grows between polls, so the pollers store
//! when each wait began and the value is taken at scrape time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntGaugeVec, Opts};

/// Waits by repository: pull request number → when its wait began (epoch
/// seconds, local clock).
type Waits = BTreeMap<String, BTreeMap<u64, i64>>;

#[derive(Clone)]
pub struct ReviewWaits {
    wait: GaugeVec,
    awaiting: IntGaugeVec,
    waits: Arc<Mutex<Waits>>,
}

impl ReviewWaits {
    pub fn new() -> ReviewWaits {
        ReviewWaits {
            wait: GaugeVec::new(
                Opts::new(
                    "hookgauge_pull_request_review_wait_seconds",
                    "How long an open, ready pull request has waited for a first review by someone \
                     other than its author, by repository and number; only waiting pull requests \
                     have a series.",
                ),
                &["repo", "number"],
            )
            .expect("valid metric definition"),
            awaiting: IntGaugeVec::new(
                Opts::new(
                    "hookgauge_pull_requests_awaiting_review",
                    "Open, ready pull requests without a review, by repository.",
                ),
                &["repo"],
            )
            .expect("valid metric definition"),
            waits: Arc::default(),
        }
    }

    /// Replaces what is known of `repo`: the pull requests waiting now, each
    /// with the start of its wait (epoch seconds, local clock).
    pub fn set(&self, repo: &str, waiting: BTreeMap<u64, i64>) {
        let mut waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
        let previous = waits.insert(repo.to_owned(), waiting);
        let current = &waits[repo];
        for number in previous.iter().flat_map(|p| p.keys()) {
            if !current.contains_key(number) {
                let _ = self
                    .wait
                    .remove_label_values(&[repo, number.to_string().as_str()]);
            }
        }
        self.awaiting
            .with_label_values(&[repo])
            .set(current.len() as i64);
    }
}

impl Default for ReviewWaits {
    fn default() -> Self {
        ReviewWaits::new()
    }
}

impl Collector for ReviewWaits {
    fn desc(&self) -> Vec<&Desc> {
        self.wait
            .desc()
            .into_iter()
            .chain(self.awaiting.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = crate::clock::now_seconds();
        let waits = self.waits.lock().unwrap_or_else(|e| e.into_inner());
        for (repo, numbers) in waits.iter() {
            for (number, since) in numbers {
                self.wait
                    .with_label_values(&[repo, number.to_string().as_str()])
                    .set((now - since).max(0) as f64);
            }
        }
        let mut families = self.wait.collect();
        families.extend(self.awaiting.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exposition text of `waits`, one sample a line.
    fn series(waits: &ReviewWaits) -> Vec<String> {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&waits.collect())
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn waits_are_taken_at_scrape_time_and_leave_with_their_pull_request() {
        let waits = ReviewWaits::new();
        let now = crate::clock::now_seconds();
        waits.set("acme/shop", BTreeMap::from([(7, now - 600), (8, now - 60)]));
        let seen = series(&waits);
        let seven = seen
            .iter()
            .find(|l| l.contains("number=\"7\""))
            .expect("PR 7 waits");
        let value: f64 = seven.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((600.0..610.0).contains(&value), "{seen:?}");
        assert!(
            seen.contains(&"hookgauge_pull_requests_awaiting_review{repo=\"acme/shop\"} 2".into())
        );

        waits.set("acme/shop", BTreeMap::from([(8, now - 60)]));
        let seen = series(&waits);
        assert!(!seen.iter().any(|l| l.contains("number=\"7\"")), "{seen:?}");
        assert!(
            seen.contains(&"hookgauge_pull_requests_awaiting_review{repo=\"acme/shop\"} 1".into())
        );
    }
}
