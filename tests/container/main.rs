//! The container image, built from the repository's Dockerfile with podman
//! and run as a user runs it: a named volume on /data, the documented
//! environment, both ports published (to loopback), a signed deploy, the
//! series, the HEALTHCHECK, a restart, `hookgauge send` inside the container,
//! the refusal to listen on 0.0.0.0 without a secret, and the compose file's
//! hookgauge service with its shipped settings.
//!
//! A test binary of its own, apart from `tests/it`: the image's release build
//! keeps both cores of a CI machine busy for minutes, and the integration
//! tests are timing-sensitive. Cargo runs test binaries one after another, so
//! this one never overlaps them.
//!
//! No container registry is needed. `bases.sh` makes the images the
//! Dockerfile starts FROM (Debian from Debian's archive, the Rust toolchain
//! of this machine) and keeps them in podman's storage between runs; the
//! crates come from `cargo vendor`, mounted into the build with a Cargo source
//! replacement. Neither is in the Dockerfile or its build context, which
//! users build unchanged with network access.
//!
//! The tests are skipped (with the reason printed) only when the kernel
//! refuses the namespaces containers need; a missing podman fails them.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_norway::Value;
use sha2::Sha256;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Overwritten by each run, never removed: it keeps the build's cached
/// layers (the dependencies) alive for the next run.
const IMAGE: &str = "localhost/hookgauge-test:latest";
/// The image's build stage (`--target builder`), kept as the cache of the next run.
const BUILDER: &str = "localhost/hookgauge-test-builder:latest";
const DOCKERFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile");
const SECRET: &str = "container-test-secret";
/// The image's size limit: Debian slim, the CA bundle and the binary.
const IMAGE_SIZE_LIMIT: u64 = 100_000_000;
/// A full release build on two cores takes about ten minutes.
const BUILD_LIMIT: Duration = Duration::from_secs(40 * 60);
const BASES_LIMIT: Duration = Duration::from_secs(15 * 60);
const START_LIMIT: Duration = Duration::from_secs(60);
const COMMAND_LIMIT: Duration = Duration::from_secs(120);
/// `podman restart` waits for the graceful shutdown (up to 30 s).
const RESTART_LIMIT: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------
// Commands with a bound

/// A finished command's exit code and output.
struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            tail(&self.stdout, 150),
            tail(&self.stderr, 150)
        )
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `command` to its end, killing it after `limit`.
fn run_bounded(command: &mut Command, limit: Duration) -> Result<Output, String> {
    let described = format!("{command:?}");
    let mut stdout = tempfile::tempfile().unwrap();
    let mut stderr = tempfile::tempfile().unwrap();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().unwrap())
        .stderr(stderr.try_clone().unwrap())
        .spawn()
        .map_err(|e| format!("{described}: {e}"))?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let read = |file: &mut std::fs::File| {
        let mut text = String::new();
        file.rewind().unwrap();
        file.read_to_string(&mut text).unwrap();
        text
    };
    let output = Output {
        code: status.and_then(|s| s.code()),
        stdout: read(&mut stdout),
        stderr: read(&mut stderr),
    };
    match status {
        Some(_) => Ok(output),
        None => Err(format!(
            "{described} did not finish within {limit:?}\n{output}"
        )),
    }
}

/// Writes past the test harness' output capture, so that figures and skips
/// show in a passing run.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "container tests: {line}");
}

// ---------------------------------------------------------------------------
// podman and the image

/// podman with the runc runtime and a configuration without default ulimits
/// (raising limits is refused in CI's containers) on cgroupfs.
struct Engine {
    dir: tempfile::TempDir,
}

enum Unavailable {
    Skip(String),
    Fail(String),
}

static ENGINE: LazyLock<Result<Engine, Unavailable>> = LazyLock::new(prepare);

/// The engine with the image built, or `None` (reason printed) when the
/// kernel refuses containers.
fn engine() -> Option<&'static Engine> {
    match &*ENGINE {
        Ok(engine) => Some(engine),
        Err(Unavailable::Skip(reason)) => {
            report(&format!("SKIPPED: {reason}"));
            None
        }
        Err(Unavailable::Fail(message)) => panic!("{message}"),
    }
}

impl Engine {
    fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .args(["--runtime", "runc"]);
        command
    }

    /// The id of the image `name`, if there is one.
    fn image_id(&self, name: &str) -> Option<String> {
        let output = self
            .try_podman(
                &["image", "inspect", "--format", "{{.Id}}", name],
                COMMAND_LIMIT,
            )
            .ok()?;
        output.success().then(|| output.stdout.trim().to_owned())
    }

    fn try_podman(&self, args: &[&str], limit: Duration) -> Result<Output, String> {
        run_bounded(self.command().args(args), limit)
    }

    /// `podman args…`, which must succeed within [`COMMAND_LIMIT`].
    fn podman(&self, args: &[&str]) -> Output {
        let output = self
            .try_podman(args, COMMAND_LIMIT)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(output.success(), "podman {args:?}: {output}");
        output
    }
}

fn prepare() -> Result<Engine, Unavailable> {
    let fail = Unavailable::Fail;
    match run_bounded(Command::new("podman").arg("--version"), COMMAND_LIMIT) {
        Ok(output) if output.success() => {}
        other => {
            return Err(fail(format!(
                "podman does not run ({}): install podman and runc (scripts/test installs them)",
                match other {
                    Ok(output) => output.to_string(),
                    Err(e) => e,
                }
            )))
        }
    }
    kernel_allows_containers().map_err(Unavailable::Skip)?;

    let engine = Engine {
        dir: tempfile::tempdir().unwrap(),
    };
    std::fs::write(
        engine.dir.path().join("containers.conf"),
        "[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = \"cgroupfs\"\n",
    )
    .unwrap();

    let mut bases = Command::new(Path::new(ROOT).join("tests/container/bases.sh"));
    bases
        .args(["podman", "--runtime", "runc"])
        .env("CONTAINERS_CONF", engine.dir.path().join("containers.conf"));
    let started = Instant::now();
    let output = run_bounded(&mut bases, BASES_LIMIT).map_err(fail)?;
    if !output.success() {
        return Err(fail(format!("tests/container/bases.sh: {output}")));
    }
    report(&format!(
        "base images ready in {:.0?}{}",
        started.elapsed(),
        if output.stdout.is_empty() {
            " (cached)"
        } else {
            ""
        }
    ));

    // The crates, for a build without network: vendored, and a Cargo
    // configuration replacing crates.io with them, both mounted into the
    // build's RUN steps (the official image's CARGO_HOME is /usr/local/cargo).
    let vendor = engine.dir.path().join("vendor");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = run_bounded(
        Command::new(cargo)
            .current_dir(ROOT)
            .args(["vendor", "--locked", "--versioned-dirs"])
            .arg(&vendor),
        BASES_LIMIT,
    )
    .map_err(fail)?;
    if !output.success() {
        return Err(fail(format!("cargo vendor: {output}")));
    }
    let cargo_config = engine.dir.path().join("cargo-config.toml");
    std::fs::write(
        &cargo_config,
        "[source.crates-io]\nreplace-with = \"vendored-sources\"\n\n\
         [source.vendored-sources]\ndirectory = \"/vendor\"\n",
    )
    .unwrap();

    let started = Instant::now();
    let vendor_mount = format!("{}:/vendor:ro", vendor.display());
    let config_mount = format!("{}:/usr/local/cargo/config.toml:ro", cargo_config.display());
    // The build stage is tagged too, so that the one a previous run left
    // (its target directory is over a gigabyte) can be removed once it has
    // been replaced; the dependency layer both share stays in the cache.
    let previous = [BUILDER, IMAGE].map(|name| engine.image_id(name));
    for (target, tag) in [(Some("builder"), BUILDER), (None, IMAGE)] {
        let mut args = vec![
            "build",
            // Docker's image format, as `docker build` makes: the OCI format
            // has no HEALTHCHECK, and podman would drop it.
            "--format=docker",
            "--pull=never",
            "--layers",
            "--volume",
            &vendor_mount,
            "--volume",
            &config_mount,
            "--file",
            DOCKERFILE,
            "--tag",
            tag,
        ];
        if let Some(target) = target {
            args.extend(["--target", target]);
        }
        args.push(ROOT);
        let output = engine.try_podman(&args, BUILD_LIMIT).map_err(fail)?;
        if !output.success() {
            return Err(fail(format!("podman build: {output}")));
        }
    }
    for (name, old) in [BUILDER, IMAGE].iter().zip(previous) {
        if let Some(old) = old.filter(|old| engine.image_id(name).as_ref() != Some(old)) {
            // Fails harmlessly while another run's container uses it.
            let _ = engine.try_podman(&["rmi", &old], COMMAND_LIMIT);
        }
    }
    report(&format!("image built in {:.0?}", started.elapsed()));
    Ok(engine)
}

/// Whether this kernel gives root the namespaces a container needs: the
/// one reason to skip.
fn kernel_allows_containers() -> Result<(), String> {
    let mut unshare = Command::new("unshare");
    // SAFETY: getuid(2) has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        unshare.args(["--user", "--map-root-user"]);
    }
    unshare.args([
        "--mount", "--uts", "--ipc", "--net", "--pid", "--fork", "true",
    ]);
    match run_bounded(&mut unshare, COMMAND_LIMIT) {
        Ok(output) if output.success() => Ok(()),
        Ok(output) => Err(format!(
            "the kernel refuses the namespaces containers need: {}",
            output.stderr.trim()
        )),
        Err(e) => Err(format!("unshare does not run: {e}")),
    }
}

/// A name no other run uses.
fn unique(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("hookgauge-test-{}-{nanos}-{what}", std::process::id())
}

/// A named volume, removed when dropped.
struct Volume<'a> {
    engine: &'a Engine,
    name: String,
}

impl<'a> Volume<'a> {
    fn create(engine: &'a Engine, what: &str) -> Volume<'a> {
        let name = unique(what);
        engine.podman(&["volume", "create", &name]);
        Volume { engine, name }
    }

    /// Where podman keeps the volume's files on this machine.
    fn mountpoint(&self) -> PathBuf {
        let output = self.engine.podman(&[
            "volume",
            "inspect",
            "--format",
            "{{.Mountpoint}}",
            &self.name,
        ]);
        PathBuf::from(output.stdout.trim())
    }
}

impl Drop for Volume<'_> {
    fn drop(&mut self) {
        let _ = self
            .engine
            .try_podman(&["volume", "rm", "--force", &self.name], COMMAND_LIMIT);
    }
}

/// A container (removed when dropped) with its published ports.
struct Container<'a> {
    engine: &'a Engine,
    name: String,
}

impl<'a> Container<'a> {
    /// `podman run --detach` with `options` and the test image.
    fn start(engine: &'a Engine, what: &str, options: &[String]) -> Container<'a> {
        Container::start_with_command(engine, what, options, &[])
    }

    /// As [`Container::start`], running `command` instead of the image's `CMD`.
    fn start_with_command(
        engine: &'a Engine,
        what: &str,
        options: &[String],
        command: &[&str],
    ) -> Container<'a> {
        let container = Container {
            engine,
            name: unique(what),
        };
        let mut args = vec!["run", "--detach", "--name", &container.name];
        args.extend(options.iter().map(String::as_str));
        args.push(IMAGE);
        args.extend(command);
        engine.podman(&args);
        container
    }

    /// `http://host:port` of the container's `port`, published to loopback.
    fn url(&self, port: u16) -> String {
        let output = self
            .engine
            .podman(&["port", &self.name, &format!("{port}/tcp")]);
        let address = output.stdout.lines().next().unwrap_or("").trim();
        assert!(
            address.starts_with("127.0.0.1:"),
            "port {port} is published on {address:?}, not on loopback"
        );
        format!("http://{address}")
    }

    fn logs(&self) -> String {
        match self.engine.try_podman(&["logs", &self.name], COMMAND_LIMIT) {
            Ok(output) => format!("{}{}", output.stdout, output.stderr),
            Err(e) => e,
        }
    }

    /// `podman exec` in the running container, with its output.
    fn exec(&self, args: &[&str]) -> Output {
        let mut all = vec!["exec", &self.name];
        all.extend(args);
        self.engine
            .try_podman(&all, COMMAND_LIMIT)
            .unwrap_or_else(|e| panic!("{e}\nlogs:\n{}", self.logs()))
    }

    /// Polls `/readyz` on the ingest port until it answers 200.
    fn wait_ready(&self) -> String {
        self.wait_ready_on(8080)
    }

    /// Polls `/readyz` on the container's `port` until it answers 200.
    fn wait_ready_on(&self, port: u16) -> String {
        let ingest = self.url(port);
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if get(&format!("{ingest}/readyz")).is_ok_and(|(status, _)| status == 200) {
                return ingest;
            }
            assert!(
                Instant::now() < deadline,
                "{} was not ready within {START_LIMIT:?}; logs:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `podman healthcheck run` (the image's HEALTHCHECK, run now): whether
    /// it passed, and the health status podman then reports.
    fn health(&self) -> (bool, String) {
        let run = self
            .engine
            .try_podman(&["healthcheck", "run", &self.name], COMMAND_LIMIT)
            .unwrap_or_else(|e| panic!("{e}"));
        let status = self.engine.podman(&[
            "inspect",
            "--format",
            "{{.State.Health.Status}}",
            &self.name,
        ]);
        (run.success(), status.stdout.trim().to_owned())
    }

    fn assert_healthy(&self) {
        let (passed, status) = self.health();
        assert!(
            passed && status == "healthy",
            "healthcheck passed: {passed}, status {status:?}; logs:\n{}",
            self.logs()
        );
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .engine
            .try_podman(&["rm", "--force", "--time", "0", &self.name], COMMAND_LIMIT);
    }
}

// ---------------------------------------------------------------------------
// HTTP

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn get(url: &str) -> Result<(u16, String), reqwest::Error> {
    runtime().block_on(async {
        let response = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.text().await?))
    })
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn image_sha(n: u64) -> String {
    format!("sha256:{n:064x}")
}

/// Posts a Pelorus `deploytime`, signed as the README's quickstart signs it.
fn post_deploy(
    ingest: &str,
    app: &str,
    namespace: &str,
    image: &str,
    timestamp: i64,
) -> (u16, String) {
    let body = serde_json::to_vec(&serde_json::json!({
        "app": app, "image_sha": image, "namespace": namespace, "timestamp": timestamp,
    }))
    .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(&body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    runtime().block_on(async {
        let response = reqwest::Client::new()
            .post(format!("{ingest}/pelorus/webhook"))
            .timeout(Duration::from_secs(10))
            .header("User-Agent", "Pelorus-Webhook/container-test")
            .header("X-Pelorus-Event", "deploytime")
            .header("Content-Type", "application/json")
            .header("X-Hub-Signature-256", signature)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    })
}

/// The value of the one sample of `name` with exactly `labels` in a scrape
/// of the metrics port at `metrics`.
fn sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    let (status, text) = get(&format!("{metrics}/metrics")).unwrap();
    assert_eq!(status, 200, "{metrics}/metrics: {text}");
    let prefix = format!("{name}{{{labels}}} ");
    let values: Vec<f64> = text
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|rest| rest.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert!(values.len() <= 1, "{prefix}: {values:?}");
    values.first().copied()
}

// ---------------------------------------------------------------------------
// The tests

#[test]
fn image_is_small_and_runs_as_a_user_runs_it() {
    let Some(engine) = engine() else { return };
    let size: u64 = engine
        .podman(&["image", "inspect", "--format", "{{.Size}}", IMAGE])
        .stdout
        .trim()
        .parse()
        .unwrap();
    report(&format!("image size {:.1} MB", size as f64 / 1e6));
    assert!(
        size <= IMAGE_SIZE_LIMIT,
        "the image is {size} bytes, more than {IMAGE_SIZE_LIMIT}"
    );

    let volume = Volume::create(engine, "data");
    let container = Container::start(
        engine,
        "serve",
        &[
            format!("--volume={}:/data", volume.name),
            format!("--env=HOOKGAUGE__SOURCES__PELORUS__SECRETS={SECRET}"),
            "--publish=127.0.0.1::8080".into(),
            "--publish=127.0.0.1::9464".into(),
        ],
    );
    let ingest = container.wait_ready();
    let metrics = container.url(9464);

    // A signed deploy through the ingest port, counted on the metrics port.
    let image = image_sha(1);
    let deployed = now() - 60;
    let (status, text) = post_deploy(&ingest, "shop", "shop-prod", &image, deployed);
    assert_eq!(status, 202, "{text}");
    let deploy_labels = format!(r#"app="shop",image_sha="{image}",namespace="shop-prod""#);
    assert_eq!(
        sample(&metrics, "deploy_timestamp", &deploy_labels),
        Some(deployed as f64)
    );
    let counted = r#"app="shop",namespace="shop-prod""#;
    assert_eq!(
        sample(&metrics, "hookgauge_deployments_total", counted),
        Some(1.0)
    );
    container.assert_healthy();

    // hookgauge itself is PID 1, as the fixed non-root user.
    let status = container.exec(&["cat", "/proc/1/status", "/proc/1/cmdline"]);
    assert!(status.success(), "{status}");
    let uids = status
        .stdout
        .lines()
        .find(|line| line.starts_with("Uid:"))
        .unwrap_or_default();
    assert_eq!(
        uids.split_whitespace().collect::<Vec<_>>(),
        ["Uid:", "65532", "65532", "65532", "65532"],
        "{status}"
    );
    assert!(status.stdout.contains("hookgauge\0serve\0"), "{status}");

    // The store is on the volume, owned by that user.
    let database = volume.mountpoint().join("hookgauge.db");
    let metadata =
        std::fs::metadata(&database).unwrap_or_else(|e| panic!("{}: {e}", database.display()));
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&metadata), 65532);

    // `hookgauge send` inside the container; the CA bundle at its usual path.
    let send = container.exec(&[
        "env",
        &format!("HOOKGAUGE_SECRET={SECRET}"),
        "hookgauge",
        "send",
        "deploytime",
        "--app",
        "shop",
        "--namespace",
        "shop-prod",
        "--image-sha",
        &image_sha(2),
    ]);
    assert!(send.success(), "hookgauge send: {send}");
    assert_eq!(
        sample(&metrics, "hookgauge_deployments_total", counted),
        Some(2.0)
    );
    let bundle = container.exec(&[
        "grep",
        "-c",
        "BEGIN CERTIFICATE",
        "/etc/ssl/certs/ca-certificates.crt",
    ]);
    assert!(bundle.success(), "CA bundle: {bundle}");
    let certificates: u32 = bundle.stdout.trim().parse().unwrap();
    assert!(
        certificates > 50,
        "{certificates} certificates in the CA bundle"
    );

    // A restart (graceful stop, same volume) keeps the store.
    let restart = engine
        .try_podman(&["restart", "--time", "40", &container.name], RESTART_LIMIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(restart.success(), "podman restart: {restart}");
    let ingest = container.wait_ready();
    let metrics = container.url(9464);
    assert_eq!(
        sample(&metrics, "hookgauge_deployments_total", counted),
        Some(2.0),
        "after the restart"
    );
    let (status, text) = post_deploy(&ingest, "shop", "shop-prod", &image, deployed);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains(r#""outcome":"duplicate""#), "{text}");
    let logs = container.logs();
    assert!(
        logs.contains("hookgauge listening"),
        "no start-up line in the logs:\n{logs}"
    );
}

#[test]
fn image_refuses_to_listen_on_all_interfaces_without_a_secret() {
    let Some(engine) = engine() else { return };
    let name = unique("no-secret");
    let container = Container {
        engine,
        name: name.clone(),
    };
    let run = engine
        .try_podman(&["run", "--name", &name, IMAGE], START_LIMIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!run.success() && run.code.is_some(), "{run}");
    let logs = container.logs();
    assert!(
        logs.contains("sources.pelorus.secrets")
            && logs.contains("is enabled without a secret while server.ingest_addr (0.0.0.0:8080)"),
        "podman logs:\n{logs}"
    );
}

#[test]
fn healthcheck_follows_the_ingest_port_of_the_environment() {
    let Some(engine) = engine() else { return };
    let container = Container::start(
        engine,
        "moved",
        &[
            format!("--env=HOOKGAUGE__SOURCES__PELORUS__SECRETS={SECRET}"),
            "--env=HOOKGAUGE__SERVER__INGEST_ADDR=0.0.0.0:8081".into(),
            "--publish=127.0.0.1::8081".into(),
        ],
    );
    container.wait_ready_on(8081);
    container.assert_healthy();
}

#[test]
fn healthcheck_fails_when_nothing_answers_on_the_ingest_port_it_probes() {
    let Some(engine) = engine() else { return };
    // Moved by a flag, which the HEALTHCHECK does not see: it probes 8080,
    // the port of HOOKGAUGE__SERVER__INGEST_ADDR, where nothing listens.
    let container = Container::start_with_command(
        engine,
        "flagged",
        &[
            format!("--env=HOOKGAUGE__SOURCES__PELORUS__SECRETS={SECRET}"),
            "--publish=127.0.0.1::8081".into(),
        ],
        &["serve", "--ingest-addr", "0.0.0.0:8081"],
    );
    container.wait_ready_on(8081);
    let (passed, status) = container.health();
    assert!(!passed, "the healthcheck passed with nothing on 8080");
    assert_ne!(status, "healthy");
}

// ---------------------------------------------------------------------------
// The compose file's hookgauge service

/// `${NAME:-default}` with NAME unset: the default. Other forms fail.
fn compose_default(value: &str) -> String {
    match value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
        Some(expression) => {
            let (_, default) = expression
                .split_once(":-")
                .unwrap_or_else(|| panic!("{value}: only ${{NAME:-default}} is understood"));
            default.to_owned()
        }
        None => {
            assert!(
                !value.contains('$'),
                "{value}: interpolation not understood"
            );
            value.to_owned()
        }
    }
}

fn strings(value: &Value, key: &str) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("{key}: expected a list"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("{key}: {v:?}"))
                .to_owned()
        })
        .collect()
}

/// The `podman run` options for the compose service `service`, key by key,
/// with each named volume replaced by a fresh one and each published port
/// by a free loopback port. A key not listed here fails the test rather
/// than being left out.
fn compose_run_options(service: &Value, volumes: &mut Vec<String>) -> Vec<String> {
    let mut options = Vec::new();
    for (key, value) in service.as_mapping().unwrap() {
        let key = key.as_str().unwrap();
        match key {
            // Built above from the same Dockerfile and context.
            "build" => {
                assert_eq!(value["context"].as_str(), Some("../.."), "build.context");
                assert_eq!(
                    value["dockerfile"].as_str(),
                    Some("Dockerfile"),
                    "build.dockerfile"
                );
            }
            "image" => {}
            "restart" => options.push(format!("--restart={}", value.as_str().unwrap())),
            "environment" => {
                for (name, value) in value.as_mapping().unwrap() {
                    let value = compose_default(value.as_str().unwrap());
                    options.push(format!("--env={}={value}", name.as_str().unwrap()));
                }
            }
            "ports" => {
                for port in strings(value, key) {
                    let container_port = port.rsplit(':').next().unwrap();
                    options.push(format!("--publish=127.0.0.1::{container_port}"));
                }
            }
            "volumes" => {
                for volume in strings(value, key) {
                    let (source, target) = volume.split_once(':').unwrap();
                    assert!(!source.contains('/'), "{volume}: a named volume");
                    volumes.push(source.to_owned());
                    options.push(format!("--volume={{{source}}}:{target}"));
                }
            }
            "read_only" => {
                if value.as_bool() == Some(true) {
                    options.push("--read-only".into());
                }
            }
            "tmpfs" => options.extend(strings(value, key).iter().map(|t| format!("--tmpfs={t}"))),
            "cap_drop" => options.extend(
                strings(value, key)
                    .iter()
                    .map(|c| format!("--cap-drop={c}")),
            ),
            "security_opt" => options.extend(
                strings(value, key)
                    .iter()
                    .map(|s| format!("--security-opt={}", s.replace(":true", ""))),
            ),
            "stop_grace_period" => {
                let seconds = humantime::parse_duration(value.as_str().unwrap())
                    .unwrap()
                    .as_secs();
                options.push(format!("--stop-timeout={seconds}"));
            }
            other => panic!("compose key {other} is not run by this test"),
        }
    }
    options
}

/// The command deploy/compose/README.md has users run in the container
/// (`docker compose exec hookgauge sh -c '…'`): the text between the quotes.
fn compose_readme_send_command() -> String {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("deploy/compose/README.md")).unwrap();
    let start = readme
        .find("docker compose exec hookgauge sh -c")
        .expect("the README's `docker compose exec hookgauge` command");
    let rest = &readme[start..];
    let open = rest.find('\'').unwrap() + 1;
    let close = open + rest[open..].find("'\n").unwrap();
    rest[open..close].to_owned()
}

#[test]
fn compose_hookgauge_service_runs_with_its_shipped_settings() {
    let Some(engine) = engine() else { return };
    let compose: Value = serde_norway::from_str(
        &std::fs::read_to_string(Path::new(ROOT).join("deploy/compose/compose.yaml")).unwrap(),
    )
    .unwrap();
    let mut named = Vec::new();
    let mut options = compose_run_options(&compose["services"]["hookgauge"], &mut named);
    let volumes: Vec<Volume> = named
        .iter()
        .map(|name| {
            assert!(
                compose["volumes"].get(name.as_str()).is_some(),
                "volume {name} is not declared"
            );
            let volume = Volume::create(engine, name);
            for option in &mut options {
                *option = option.replace(&format!("{{{name}}}"), &volume.name);
            }
            volume
        })
        .collect();
    assert_eq!(volumes.len(), 1, "one named volume: {named:?}");
    let container = Container::start(engine, "compose", &options);
    container.wait_ready();
    let metrics = container.url(9464);
    container.assert_healthy();

    // The README's first event, signed inside the container with the
    // service's own secret, on a read-only root filesystem.
    let send = container.exec(&["sh", "-c", &compose_readme_send_command()]);
    assert!(send.success(), "{send}\nlogs:\n{}", container.logs());
    assert_eq!(
        sample(
            &metrics,
            "hookgauge_deployments_total",
            r#"app="demo",namespace="demo-prod""#
        ),
        Some(1.0)
    );
    let files = std::fs::read_dir(volumes[0].mountpoint())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect::<Vec<_>>();
    assert!(files.contains(&"hookgauge.db".to_owned()), "{files:?}");
}
