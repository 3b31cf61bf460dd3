//! The real monitoring programs as child processes, for the end-to-end
//! tests: Prometheus (Debian's `prometheus`) with the shipped rules, and
//! Alertmanager (Debian's `prometheus-alertmanager`). Each listens on a free
//! loopback port, logs to a file in the test's directory and is killed when
//! dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{free_port, repo, wait_for_status};

/// Spawns `command` with its output going to the file `log`; `installed`
/// is what must hold for it to start.
fn spawn_logged(command: &mut Command, log: &Path, installed: &str) -> Child {
    command
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect(installed)
}

/// Waits (bounded: 30 s) until the program at `url` says it is ready;
/// else fails with what it logged.
async fn wait_ready(client: &reqwest::Client, url: &str, name: &str, log: &Path) {
    let ready = format!("{url}/-/ready");
    assert!(
        wait_for_status(client, &ready, 200, Duration::from_secs(30)).await,
        "{name} did not become ready; log:\n{}",
        read_log(log)
    );
}

/// What a program logged so far.
fn read_log(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

/// One result of an instant query: its labels and value.
pub type QueryResult = (BTreeMap<String, String>, f64);

/// What a test Prometheus scrapes and where it sends its alerts.
pub struct PrometheusSetup {
    /// The targets of job `hookgauge`, as (`instance` label, address). One
    /// address under two names looks like two replicas exposing the same
    /// series.
    pub targets: Vec<(String, String)>,
    /// `host:port` of each Alertmanager the alerts go to.
    pub alertmanagers: Vec<String>,
}

pub struct Prometheus {
    child: Child,
    pub url: String,
    log: PathBuf,
    client: reqwest::Client,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus on `storage` (which may already hold blocks),
    /// scraping `target` every second and evaluating the shipped rules every second.
    pub async fn start(dir: &Path, storage: &Path, target: &str) -> Prometheus {
        let setup = PrometheusSetup {
            targets: vec![(target.to_owned(), target.to_owned())],
            alertmanagers: Vec::new(),
        };
        Prometheus::start_with(dir, storage, &setup).await
    }

    /// As [`Prometheus::start`], scraping and alerting as `setup` says.
    pub async fn start_with(dir: &Path, storage: &Path, setup: &PrometheusSetup) -> Prometheus {
        let rules: Vec<String> = std::fs::read_dir(repo("deploy/prometheus/rules"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yml"))
            .map(|p| format!("  - {}", p.display()))
            .collect();
        let targets: String = setup
            .targets
            .iter()
            .map(|(instance, address)| {
                format!(
                    "      - targets: [\"{address}\"]\n        labels: {{instance: \"{instance}\"}}\n"
                )
            })
            .collect();
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}\n\
             scrape_configs:\n  - job_name: hookgauge\n    honor_timestamps: true\n    static_configs:\n{targets}",
            rules.join("\n")
        );
        if !setup.alertmanagers.is_empty() {
            let targets: Vec<String> = setup
                .alertmanagers
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect();
            config.push_str(&format!(
                "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: [{}]\n",
                targets.join(", ")
            ));
        }
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let child = spawn_logged(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.tsdb.path={}", storage.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--storage.tsdb.retention.time=30d"),
            &log,
            "prometheus is installed (Debian package `prometheus`; scripts/test installs it)",
        );
        let prometheus = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            client: reqwest::Client::new(),
        };
        let log = &prometheus.log;
        wait_ready(&prometheus.client, &prometheus.url, "Prometheus", log).await;
        prometheus
    }

    /// What Prometheus logged so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// Runs an instant query; returns (labels, value) per result.
    pub async fn query(&self, expr: &str) -> Result<Vec<QueryResult>, String> {
        self.query_at(expr, None).await
    }

    /// Runs an instant query evaluated at `time` (epoch seconds; now when
    /// `None`); returns (labels, value) per result.
    pub async fn query_at(
        &self,
        expr: &str,
        time: Option<f64>,
    ) -> Result<Vec<QueryResult>, String> {
        let mut params = vec![("query", expr.to_owned())];
        if let Some(time) = time {
            params.push(("time", format!("{time:.3}")));
        }
        let response: Value = self
            .client
            .get(format!("{}/api/v1/query", self.url))
            .query(&params)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if response["status"] != "success" {
            return Err(format!("{expr}: {response}"));
        }
        let data = &response["data"];
        let results = match data["resultType"].as_str() {
            Some("vector") => data["result"].as_array().cloned().unwrap_or_default(),
            Some("scalar") => vec![serde_json::json!({"metric": {}, "value": data["result"]})],
            other => return Err(format!("{expr}: unexpected result type {other:?}")),
        };
        Ok(results
            .iter()
            .map(|r| {
                let labels = r["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = r["value"][1]
                    .as_str()
                    .unwrap_or("NaN")
                    .parse()
                    .unwrap_or(f64::NAN);
                (labels, value)
            })
            .collect())
    }

    /// The single value of `expr`, waiting (bounded) until it exists.
    pub async fn value(&self, expr: &str) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.query(expr).await {
                Ok(results) if results.len() == 1 => return results[0].1,
                Ok(results) if results.len() > 1 => {
                    panic!("{expr}: {} results: {results:?}", results.len())
                }
                Ok(_) | Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                other => panic!("{expr}: no single value within 60 s: {other:?}"),
            }
        }
    }

    /// Queries `expr` until `done` accepts its results, for at most
    /// `limit`: `Ok` with the accepted results, or `Err` with the last
    /// answer.
    pub async fn wait_until(
        &self,
        expr: &str,
        limit: Duration,
        done: impl Fn(&[QueryResult]) -> bool,
    ) -> Result<Vec<QueryResult>, String> {
        let deadline = Instant::now() + limit;
        loop {
            let answer = self.query(expr).await;
            match answer {
                Ok(results) if done(&results) => return Ok(results),
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                Ok(results) => return Err(format!("{expr}: {results:?}")),
                Err(error) => return Err(error),
            }
        }
    }
}

pub struct Alertmanager {
    child: Child,
    /// `host:port`, for Prometheus' `alerting` configuration.
    pub address: String,
    pub url: String,
    log: PathBuf,
    client: reqwest::Client,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Alertmanager {
    /// Starts Alertmanager with `config` (the YAML text), storing its state
    /// in `dir`, without clustering, and waits (bounded) until it is ready.
    pub async fn start(dir: &Path, config: &str) -> Alertmanager {
        let config_path = dir.join("alertmanager.yml");
        std::fs::write(&config_path, config).unwrap();
        let storage = dir.join("alertmanager-data");
        let port = free_port();
        let log = dir.join("alertmanager.log");
        let child = spawn_logged(
            Command::new("prometheus-alertmanager")
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.path={}", storage.display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                // An empty address disables the gossip cluster.
                .arg("--cluster.listen-address="),
            &log,
            "Alertmanager is installed (Debian package `prometheus-alertmanager`; \
             scripts/test installs it)",
        );
        let alertmanager = Alertmanager {
            child,
            address: format!("127.0.0.1:{port}"),
            url: format!("http://127.0.0.1:{port}"),
            log,
            client: reqwest::Client::new(),
        };
        let log = &alertmanager.log;
        wait_ready(&alertmanager.client, &alertmanager.url, "Alertmanager", log).await;
        alertmanager
    }

    /// What Alertmanager logged so far.
    pub fn log(&self) -> String {
        read_log(&self.log)
    }

    /// The alerts Alertmanager holds that are not resolved
    /// (`GET /api/v2/alerts`), as JSON objects.
    pub async fn active_alerts(&self) -> Vec<Value> {
        let answer: Value = self
            .client
            .get(format!("{}/api/v2/alerts", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer.as_array().cloned().unwrap_or_default()
    }
}
