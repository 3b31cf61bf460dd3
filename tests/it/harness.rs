//! Test harness: starts the real app in-process on `127.0.0.1:0` with a
//! temporary data directory and a real SQLite file, or the real binary as a
//! child process, and talks HTTP to it.
//!
//! With `HOOKGAUGE_TEST_STORE=postgres` the in-process app uses a fresh
//! database of the test PostgreSQL cluster instead of the SQLite file, and
//! [`TestApp::ledger`], [`TestApp::count`], [`TestApp::strings`] and
//! [`TestApp::exec`] read and write that database: the same tests then run
//! against the shared store (`scripts/test` runs the store's tests both ways).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use hookgauge::app::RunningApp;
use hookgauge::config::{RawConfig, Settings};
use sha2::Sha256;

pub const SECRET: &str = "test-secret-for-hookgauge";
pub const USER_AGENT: &str = "Pelorus-Webhook/test";

static TRACING: Once = Once::new();

/// Logs go to the test writer only when `TEST_LOG` is set.
fn init_tracing() {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("info")
                .with_test_writer()
                .try_init();
        }
    });
}

/// `path` relative to the repository root.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A loopback port that was free a moment ago, for a child process that
/// must bind a known port (to be restarted on it, or to be named in
/// another program's configuration).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn fixture(path: &str) -> Vec<u8> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("fixture {}: {e}", full.display()))
}

/// Lowercase hex HMAC-SHA256, computed here independently of hookgauge.
pub fn hmac_hex(secret: &[u8], message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// `sha256=<hex>`, as GitHub and Pelorus send it.
pub fn sign(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hmac_hex(secret.as_bytes(), body))
}

/// The Standard Webhooks specification's example secret.
pub const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// The key bytes of [`WHSEC`].
pub fn whsec_key() -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(WHSEC.trim_start_matches("whsec_"))
        .unwrap()
}

/// A Standard Webhooks `v1,<base64>` signature of `id.timestamp.body`
/// under `key`.
pub fn standard_signature_with(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine as _;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// As [`standard_signature_with`], under the [`WHSEC`] key.
pub fn standard_signature(id: &str, timestamp: i64, body: &[u8]) -> String {
    standard_signature_with(&whsec_key(), id, timestamp, body)
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A distinct valid image digest for each `n`.
pub fn image(n: u64) -> String {
    format!("sha256:{n:064x}")
}

pub fn deploy_body(app: &str, namespace: &str, image_sha: &str, timestamp: i64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "app": app, "image_sha": image_sha, "namespace": namespace, "timestamp": timestamp,
    }))
    .unwrap()
}

/// Configuration for a test app: loopback port 0, data in `data_dir`.
pub fn test_config(data_dir: &Path) -> RawConfig {
    let mut raw = RawConfig::default();
    raw.server.ingest_addr = "127.0.0.1:0".into();
    raw.server.metrics_addr = "127.0.0.1:0".into();
    raw.server.data_dir = data_dir.to_path_buf();
    raw.server.shutdown_timeout = Duration::from_secs(5);
    raw
}

pub struct TestApp {
    pub ingest: String,
    pub metrics: String,
    /// Holds the default data directory for the app's lifetime.
    _data_dir: tempfile::TempDir,
    pub raw: RawConfig,
    app: Option<RunningApp>,
    pub client: reqwest::Client,
}

/// Starts the app with default test configuration and one Pelorus secret.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|raw| raw.sources.pelorus.secrets = vec![SECRET.into()]).await
}

/// Which store the in-process apps of this test run use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// `HOOKGAUGE_TEST_STORE`: `postgres`, or SQLite when unset.
pub fn store_kind() -> StoreKind {
    match std::env::var("HOOKGAUGE_TEST_STORE").as_deref() {
        Ok("postgres") => StoreKind::Postgres,
        Ok("sqlite") | Err(_) => StoreKind::Sqlite,
        Ok(other) => panic!("HOOKGAUGE_TEST_STORE={other}: use sqlite or postgres"),
    }
}

/// A fresh database of the shared test cluster, with its password.
pub fn postgres_database() -> String {
    let cluster = crate::postgres::Cluster::shared();
    cluster.url_with_password(&cluster.database())
}

/// Starts the app after `configure` has adjusted the configuration.
pub async fn spawn_app_with(configure: impl FnOnce(&mut RawConfig)) -> TestApp {
    init_tracing();
    let data_dir = tempfile::tempdir().unwrap();
    let mut raw = test_config(data_dir.path());
    if store_kind() == StoreKind::Postgres {
        raw.store.url = Some(
            tokio::task::spawn_blocking(postgres_database)
                .await
                .unwrap(),
        );
    }
    configure(&mut raw);
    let app = hookgauge::app::start(&Settings::from_raw(raw.clone()).unwrap())
        .await
        .unwrap();
    TestApp {
        ingest: format!("http://{}", app.ingest_addr),
        metrics: format!("http://{}", app.metrics_addr),
        _data_dir: data_dir,
        raw,
        app: Some(app),
        client: reqwest::Client::new(),
    }
}

impl TestApp {
    pub fn database(&self) -> PathBuf {
        self.raw.server.data_dir.join("hookgauge.db")
    }

    /// Stops the app gracefully and starts it again on the same data.
    pub async fn restart(&mut self) {
        self.app.take().unwrap().shutdown().await;
        let app = hookgauge::app::start(&Settings::from_raw(self.raw.clone()).unwrap())
            .await
            .unwrap();
        self.ingest = format!("http://{}", app.ingest_addr);
        self.metrics = format!("http://{}", app.metrics_addr);
        self.app = Some(app);
    }

    pub async fn shutdown(mut self) {
        if let Some(app) = self.app.take() {
            app.shutdown().await;
        }
    }

    /// Posts a Pelorus delivery signed with `secret` (unsigned when `None`).
    pub async fn post_pelorus(&self, event: &str, body: &[u8], secret: Option<&str>) -> Reply {
        post_pelorus_to(&self.client, &self.ingest, event, body, secret).await
    }

    /// Signed Pelorus deploys of `shop` to `prod`, image `n` at `t + n`
    /// for each `n` of `images`, each of them accepted (202).
    pub async fn deploy_images(&self, images: std::ops::Range<u64>, t: i64) {
        for n in images {
            let reply = self.deploy_image(n, t + n as i64).await;
            assert_eq!(reply.status, 202, "image {n}: {}", reply.text);
        }
    }

    /// A signed Pelorus deploy of `shop` to `prod`, image `n` at `time`.
    pub async fn deploy_image(&self, n: u64, time: i64) -> Reply {
        let body = deploy_body("shop", "prod", &image(n), time);
        self.post_signed("deploytime", &body).await
    }

    /// Posts `body` to the Pelorus endpoint with exactly `headers` (a name
    /// given twice is sent twice), for requests `post_pelorus` would not make.
    pub async fn post_pelorus_with_headers(
        &self,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        let mut request = self
            .client
            .post(format!("{}/pelorus/webhook", self.ingest))
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        Reply::from(request.send().await.unwrap()).await
    }

    /// Posts a delivery signed with the test secret.
    pub async fn post_signed(&self, event: &str, body: &[u8]) -> Reply {
        self.post_pelorus(event, body, Some(SECRET)).await
    }

    pub async fn scrape(&self) -> Scrape {
        scrape_from(&self.client, &self.metrics).await
    }

    pub async fn get(&self, url: String) -> Reply {
        Reply::from(self.client.get(url).send().await.unwrap()).await
    }

    /// Ledger rows as (delivery_id, outcome, reason, body kept), oldest first.
    pub fn ledger(&self) -> Vec<LedgerRow> {
        match &self.raw.store.url {
            None => ledger_rows(&self.database()),
            Some(url) => postgres_rows(
                url,
                "SELECT delivery_id, event, outcome, reason, body FROM deliveries ORDER BY seq",
                |r| LedgerRow {
                    delivery_id: r.get(0),
                    event: r.get(1),
                    outcome: r.get(2),
                    reason: r.get(3),
                    body: r.get(4),
                },
            ),
        }
    }

    /// The single integer `sql` answers, from whichever store the app uses.
    pub fn count(&self, sql: &str) -> i64 {
        match &self.raw.store.url {
            None => rusqlite::Connection::open(self.database())
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
            Some(url) => postgres_rows(url, sql, |r| r.get::<_, i64>(0))[0],
        }
    }

    /// The first column of every row `sql` answers, as text.
    pub fn strings(&self, sql: &str) -> Vec<String> {
        match &self.raw.store.url {
            None => {
                let conn = rusqlite::Connection::open(self.database()).unwrap();
                let mut stmt = conn.prepare(sql).unwrap();
                stmt.query_map([], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap()
            }
            Some(url) => postgres_rows(url, sql, |r| r.get(0)),
        }
    }

    /// Runs a statement against the app's store (as a second writer would).
    pub fn exec(&self, sql: &str) {
        match &self.raw.store.url {
            None => {
                rusqlite::Connection::open(self.database())
                    .unwrap()
                    .execute_batch(sql)
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            Some(url) => {
                let (url, sql) = (url.clone(), sql.to_owned());
                std::thread::spawn(move || {
                    let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                    client
                        .batch_execute(&sql)
                        .unwrap_or_else(|e| panic!("{sql}: {e}"));
                })
                .join()
                .unwrap();
            }
        }
    }
}

/// Rows of `sql` on the PostgreSQL database at `url`, read on a thread of
/// their own (the synchronous client cannot run on a runtime's thread).
pub fn postgres_rows<T: Send + 'static>(
    url: &str,
    sql: &str,
    map: impl Fn(&postgres::Row) -> T + Send + 'static,
) -> Vec<T> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    std::thread::spawn(move || {
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        client
            .query(sql.as_str(), &[])
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .iter()
            .map(map)
            .collect()
    })
    .join()
    .unwrap()
}

/// One scrape of `/metrics` on the metrics port at `metrics` (a base URL).
pub async fn scrape_from(client: &reqwest::Client, metrics: &str) -> Scrape {
    let text = client
        .get(format!("{metrics}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    Scrape::parse(&text)
}

/// Posts a Pelorus delivery to the ingest port at `ingest`, signed with
/// `secret` (unsigned when `None`).
pub async fn post_pelorus_to(
    client: &reqwest::Client,
    ingest: &str,
    event: &str,
    body: &[u8],
    secret: Option<&str>,
) -> Reply {
    try_post_pelorus_to(client, ingest, event, body, secret)
        .await
        .unwrap()
}

/// As [`post_pelorus_to`], with transport errors returned (a server that
/// is down or was killed mid-request).
pub async fn try_post_pelorus_to(
    client: &reqwest::Client,
    ingest: &str,
    event: &str,
    body: &[u8],
    secret: Option<&str>,
) -> Result<Reply, reqwest::Error> {
    let mut request = client
        .post(format!("{ingest}/pelorus/webhook"))
        .header("User-Agent", USER_AGENT)
        .header("X-Pelorus-Event", event)
        .header("Content-Type", "application/json")
        .body(body.to_vec());
    if let Some(secret) = secret {
        request = request.header("X-Hub-Signature-256", sign(secret, body));
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await?;
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    Ok(Reply {
        status,
        headers,
        json,
        text,
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerRow {
    pub delivery_id: String,
    pub event: String,
    pub outcome: String,
    pub reason: Option<String>,
    pub body: Option<Vec<u8>>,
}

pub fn ledger_rows(database: &Path) -> Vec<LedgerRow> {
    let conn =
        rusqlite::Connection::open_with_flags(database, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT delivery_id, event, outcome, reason, body FROM deliveries ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| {
        Ok(LedgerRow {
            delivery_id: r.get(0)?,
            event: r.get(1)?,
            outcome: r.get(2)?,
            reason: r.get(3)?,
            body: r.get(4)?,
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// An HTTP answer with its JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub json: serde_json::Value,
    pub text: String,
}

impl Reply {
    pub async fn from(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Reply {
            status,
            headers,
            json,
            text,
        }
    }

    pub fn outcome(&self) -> &str {
        self.json["outcome"].as_str().unwrap_or("")
    }

    /// Asserts a 202 with the outcome `accepted`, showing the body if not.
    #[track_caller]
    pub fn assert_accepted(&self) {
        assert_eq!(
            (self.status, self.outcome()),
            (202, "accepted"),
            "{}",
            self.text
        );
    }
}

/// One sample of a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

/// A parsed scrape in the text exposition format.
#[derive(Debug, Clone)]
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
}

impl Scrape {
    pub fn parse(text: &str) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(parse_sample)
            .collect();
        Scrape {
            text: text.to_owned(),
            samples,
        }
    }

    /// Samples of `name` whose labels include all of `labels`.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The value of the one sample of `name` with `labels`. An absent series
    /// fails the test: a check for 0 must not pass because nothing was
    /// exposed (use [`Scrape::value_or_zero`] where absence means zero).
    /// `hookgauge_deployments_total` of `app` in `namespace`, as `value`.
    pub fn deployments_total(&self, app: &str, namespace: &str) -> f64 {
        self.value(
            "hookgauge_deployments_total",
            &[("app", app), ("namespace", namespace)],
        )
    }

    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.find(name, labels).as_slice() {
            [] => panic!("no sample of {name} {labels:?} in the scrape"),
            [one] => one.value,
            many => panic!("{} samples of {name} {labels:?}", many.len()),
        }
    }

    /// The value of a series that exists only from its first value on (a
    /// labelled counter before its first increment, a repository's gauge
    /// before its first poll): 0 while absent. For waits on a count, where
    /// "not yet" and "none" are the same.
    pub fn value_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.find(name, labels).as_slice() {
            [] => 0.0,
            [one] => one.value,
            many => panic!("{} samples of {name} {labels:?}", many.len()),
        }
    }

    /// Samples of the DORA series (everything except self-metrics).
    pub fn dora_samples(&self) -> Vec<Sample> {
        let mut samples: Vec<Sample> = self
            .samples
            .iter()
            .filter(|s| {
                !s.name.starts_with("hookgauge_deliveries")
                    && !s.name.starts_with("hookgauge_http_")
                    && !s.name.starts_with("hookgauge_store_")
                    // Recomputed each minute; tested on their own (admin).
                    && !s.name.starts_with("hookgauge_event_interval_")
                    && s.name != "hookgauge_build_info"
                    // Which replica runs the background work: one of them.
                    && s.name != "hookgauge_background_active"
            })
            .cloned()
            .collect();
        samples.sort_by(|a, b| (&a.name, &a.labels).cmp(&(&b.name, &b.labels)));
        samples
    }
}

fn parse_sample(line: &str) -> Sample {
    let (name, rest) = match line.find('{') {
        Some(brace) => (&line[..brace], &line[brace..]),
        None => {
            let space = line.find(' ').unwrap();
            (&line[..space], &line[space..])
        }
    };
    let mut labels = BTreeMap::new();
    let mut rest = rest;
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut key = String::new();
        let mut end = 0;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = i + 1;
                    break;
                }
                ',' => {}
                '=' => {
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "bad line {line}");
                    let mut value = String::new();
                    while let Some((_, c)) = chars.next() {
                        match c {
                            '\\' => match chars.next().map(|(_, c)| c) {
                                Some('n') => value.push('\n'),
                                Some(other) => value.push(other),
                                None => {}
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                other => key.push(other),
            }
        }
        rest = &inner[end..];
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().unwrap();
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
    };
    let timestamp_ms = fields.next().map(|t| t.parse().unwrap());
    Sample {
        name: name.to_owned(),
        labels,
        value,
        timestamp_ms,
    }
}

/// Runs `promtool check metrics` on a scrape; returns its combined output.
pub fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (Debian package `prometheus`; scripts/test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let combined = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), combined)
}

/// The real `hookgauge` binary, run as a child process.
pub struct Process {
    pub child: Child,
    pub ingest: String,
    pub metrics: String,
    pub log: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_hookgauge")
}

/// `hookgauge serve` on loopback port 0 for both listeners, storing in
/// `data_dir`, with the harness secret for Pelorus (set the variable again
/// to change it).
pub fn serve_command(data_dir: &Path) -> Command {
    serve_command_on(data_dir, "127.0.0.1:0", "127.0.0.1:0")
}

/// As [`serve_command`], listening on `ingest_addr` and `metrics_addr`.
pub fn serve_command_on(data_dir: &Path, ingest_addr: &str, metrics_addr: &str) -> Command {
    let mut command = Command::new(binary());
    command
        .args([
            "serve",
            "--ingest-addr",
            ingest_addr,
            "--metrics-addr",
            metrics_addr,
            "--data-dir",
        ])
        .arg(data_dir)
        .env("HOOKGAUGE__SOURCES__PELORUS__SECRETS", SECRET);
    command
}

impl Process {
    /// Starts `hookgauge serve` with JSON logs to `log`, and waits (bounded)
    /// for it to log the addresses it bound.
    pub fn start(command: &mut Command, log: &Path) -> Process {
        let log_file = std::fs::File::create(log).unwrap();
        let mut process = Process {
            child: command
                .env("HOOKGAUGE__LOG__FORMAT", "json")
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .expect("the hookgauge binary starts"),
            ingest: String::new(),
            metrics: String::new(),
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            for line in text.lines() {
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if entry["message"] == "hookgauge listening" {
                    process.ingest = format!("http://{}", entry["ingest_addr"].as_str().unwrap());
                    process.metrics = format!("http://{}", entry["metrics_addr"].as_str().unwrap());
                    return process;
                }
            }
            assert!(
                Instant::now() < deadline,
                "hookgauge did not start within 20 s; log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGKILL and reaps the process: a crash, nothing flushed.
    pub fn kill(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit.
    pub fn terminate(mut self) -> String {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "hookgauge exited with {status}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "hookgauge did not stop within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `url` until it answers `status`, for at most `limit`.
pub async fn wait_for_status(
    client: &reqwest::Client,
    url: &str,
    status: u16,
    limit: Duration,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(response) = client.get(url).send().await {
            if response.status().as_u16() == status {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Waits (bounded: 15 s) for `check` to hold.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}
