//! The binary's command line: start-up refusals, `check-config`, `send`, and
//! `promtool check metrics` on a real scrape.

use std::process::Command;

use crate::harness::*;

/// The hookgauge binary with `args` and `env`: exit code, stdout, stderr.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let output = Command::new(binary())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("the hookgauge binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn public_bind_without_a_secret_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let (code, _, stderr) = run(
        &[
            "serve",
            "--ingest-addr",
            "0.0.0.0:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--data-dir",
            data_dir,
        ],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("sources.pelorus.secrets"), "{stderr}");
    assert!(!dir.path().join("hookgauge.db").exists(), "nothing started");
}

#[test]
fn check_config_prints_the_effective_configuration_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("pelorus-secret");
    std::fs::write(&secret_file, "file-secret-value\n").unwrap();
    let config = dir.path().join("hookgauge.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\ningest_addr = \"0.0.0.0:8080\"\n\n[sources.pelorus]\nsecrets = [\"inline-secret-value\"]\nsecrets_file = {:?}\n",
            secret_file
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = run(
        &["check-config", "--config", config.to_str().unwrap()],
        &[("HOOKGAUGE__SERVER__METRICS_ADDR", "127.0.0.1:9999")],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("ingest_addr = \"0.0.0.0:8080\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("metrics_addr = \"127.0.0.1:9999\""),
        "environment overrides the file: {stdout}"
    );
    assert!(
        stdout.contains("secrets = [\"[redacted]\", \"[redacted]\"]"),
        "{stdout}"
    );
    assert!(!stdout.contains("secret-value") && !stderr.contains("secret-value"));
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hookgauge.toml");
    std::fs::write(&config, "[metrics]\nexposure_window = \"soon\"\n").unwrap();
    let (code, _, stderr) = run(&["check-config", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("exposure_window"), "{stderr}");

    std::fs::write(&config, "[store]\nsynchronous = \"sometimes\"\n").unwrap();
    let (code, _, stderr) = run(&["check-config", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("synchronous"), "{stderr}");

    let (code, _, stderr) = run(
        &["check-config", "--config", "/nonexistent/hookgauge.toml"],
        &[],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("does not exist"), "{stderr}");
}

/// Every TOML block of README.md and docs/: plugin files (they start with
/// `# plugins/<name>.toml`) load as plugins, and every configuration sample
/// passes `check-config` with those plugins, secret and key files pointing
/// at a real file.
#[test]
fn doc_toml_samples_load() {
    let documents = crate::docs::documents();
    let blocks: Vec<&str> = documents
        .iter()
        .flat_map(|(_, text)| crate::docs::blocks(text, "toml"))
        .collect();
    assert!(blocks.len() > 10, "the TOML samples: {}", blocks.len());
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cr3t\n").unwrap();
    let (files, configs): (Vec<&str>, Vec<&str>) =
        blocks.iter().partition(|b| b.starts_with("# plugins/"));
    for file in files {
        let name = file
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("# plugins/");
        std::fs::write(plugins.join(name), file).unwrap();
    }
    for (i, sample) in configs.iter().enumerate() {
        let sample: String = sample
            .lines()
            .map(|line| match line.split_once("_file = ") {
                Some((key, _)) => format!("{key}_file = {:?}", secret),
                None => line.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let config = dir.path().join(format!("sample-{i}.toml"));
        std::fs::write(&config, &sample).unwrap();
        let (code, _, stderr) = run(
            &["check-config", "--config", config.to_str().unwrap()],
            &[("HOOKGAUGE__SERVER__PLUGINS_DIR", plugins.to_str().unwrap())],
        );
        assert_eq!(code, 0, "documented sample:\n{sample}\n{stderr}");
    }
}

fn send_args<'a>(url: &'a str, image_sha: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["send", "--url", url, "--retries", "1", "--timeout", "5s"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[
        "deploytime",
        "--app",
        "shop",
        "--namespace",
        "prod",
        "--image-sha",
        image_sha,
    ]);
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_signs_posts_and_reports_the_outcome() {
    let app = spawn_app().await;
    let url = app.ingest.clone();
    let image_sha = image(42);
    let secret = [("HOOKGAUGE_SECRET", SECRET)];
    // One time for both sends: a retry repeats the same delivery (without
    // it, each send stamps its own second).
    let at = now().to_string();
    let mut args = send_args(&url, &image_sha, &[]);
    args.extend(["--timestamp", &at]);
    let (code, stdout, stderr) = tokio::task::block_in_place(|| run(&args, &secret));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("\"outcome\":\"accepted\""), "{stdout}");

    // Retried by a CI job: already recorded, still success.
    let (code, stdout, _) = tokio::task::block_in_place(|| run(&args, &secret));
    assert_eq!(code, 0);
    assert!(stdout.contains("\"outcome\":\"duplicate\""), "{stdout}");

    let other = image(43);
    let (code, _, stderr) = tokio::task::block_in_place(|| {
        run(
            &send_args(&url, &other, &[]),
            &[("HOOKGAUGE_SECRET", "wrong-secret")],
        )
    });
    assert_eq!(code, 1, "refused by the server: {stderr}");
    assert!(!stderr.contains("wrong-secret"));

    let scrape = app.scrape().await;
    let deploys = scrape.find(
        "deploy_timestamp",
        &[("app", "shop"), ("image_sha", image_sha.as_str())],
    );
    assert_eq!(deploys.len(), 1);
    assert!(
        (deploys[0].value - now() as f64).abs() < 60.0,
        "timestamp defaults to now"
    );
    assert_eq!(
        scrape.value("hookgauge_deployments_total", &[("app", "shop")]),
        1.0
    );
    app.shutdown().await;
}

#[test]
fn send_validates_before_sending_and_gives_up_on_unreachable_servers() {
    let (code, _, stderr) = run(&send_args("http://127.0.0.1:9", "sha256:nothex", &[]), &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("image_sha"), "{stderr}");

    // Nothing listens on port 9 of loopback: connection refused, retried, then 3.
    let valid = image(1);
    let (code, _, stderr) = run(&send_args("http://127.0.0.1:9", &valid, &[]), &[]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("retrying"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_passes_promtool_check_metrics() {
    let app = spawn_app().await;
    let t = now();
    let commit = serde_json::json!({
        "app": "shop \"quoted\" \\ app", "commit_hash": "abcdef1", "image_sha": image(1),
        "namespace": "prod", "timestamp": t - 100, "commit_link": "https://git.example/shop/commit/abcdef1",
    });
    assert_eq!(
        app.post_signed("committime", &serde_json::to_vec(&commit).unwrap())
            .await
            .status,
        202
    );
    let deploy = deploy_body("shop \"quoted\" \\ app", "prod", &image(1), t);
    assert_eq!(app.post_signed("deploytime", &deploy).await.status, 202);
    for (change, time) in [("created", t - 50), ("resolved", t)] {
        let failure = serde_json::json!({"app": "shop", "failure_id": "INC-9", "failure_event": change, "timestamp": time});
        assert_eq!(
            app.post_signed("failure", &serde_json::to_vec(&failure).unwrap())
                .await
                .status,
            202
        );
    }
    app.post_pelorus("deploytime", &deploy, Some("wrong")).await;
    let scrape = app.scrape().await;
    for family in [
        "commit_timestamp",
        "deploy_timestamp",
        "failure_creation_timestamp",
        "failure_resolution_timestamp",
    ] {
        assert_eq!(
            scrape.find(family, &[]).len(),
            1,
            "{family} in\n{}",
            scrape.text
        );
    }
    assert_eq!(
        scrape.find("commit_timestamp", &[])[0].labels["app"],
        "shop \"quoted\" \\ app"
    );
    let (ok, output) = promtool_check_metrics(&scrape.text);
    assert!(
        ok,
        "promtool check metrics failed:\n{output}\n---\n{}",
        scrape.text
    );
    assert!(!scrape.text.contains(SECRET));
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_standard_webhooks_signs_a_message_the_generic_source_accepts() {
    let app = spawn_app_with(|raw| {
        raw.sources.native.insert(
            "standard-webhooks".into(),
            serde_json::json!({"secrets": [WHSEC]}),
        );
    })
    .await;
    let url = app.ingest.clone();
    let image_sha = image(44);
    // One event time for every send: the message id is derived from the event, so
    // without it two sends in different seconds are two messages, not a replay.
    let at = now().to_string();
    let args = send_args(&url, &image_sha, &[]);
    let mut standard = vec!["send", "--standard-webhooks"];
    standard.extend_from_slice(&args[1..]);
    standard.extend(["--timestamp", &at]);
    let secret = [("HOOKGAUGE_SECRET", WHSEC)];
    let (code, stdout, stderr) = tokio::task::block_in_place(|| run(&standard, &secret));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("\"outcome\":\"accepted\""), "{stdout}");
    // Sent again: the same message id, recognised as a replay.
    let (code, stdout, _) = tokio::task::block_in_place(|| run(&standard, &secret));
    assert_eq!(code, 0);
    assert!(stdout.contains("\"outcome\":\"duplicate\""), "{stdout}");
    // A Pelorus-style secret cannot sign a Standard Webhooks message.
    let (code, _, stderr) =
        tokio::task::block_in_place(|| run(&standard, &[("HOOKGAUGE_SECRET", "plain-secret")]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("whsec_"), "{stderr}");
    assert!(!stderr.contains("plain-secret"), "{stderr}");
    let scrape = app.scrape().await;
    let deploys = scrape.find(
        "deploy_timestamp",
        &[("app", "shop"), ("image_sha", image_sha.as_str())],
    );
    assert_eq!(deploys.len(), 1);
    app.shutdown().await;
}

#[test]
fn check_config_says_what_will_be_polled_and_names_bad_poll_keys() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "ghp_example\n").unwrap();
    let config = dir.path().join("poll.toml");
    std::fs::write(
        &config,
        format!(
            "[[poll.github]]\nrepo = \"acme/shop\"\ntoken_file = {:?}\n",
            token.display().to_string()
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = run(&["check-config", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("# poll github acme/shop at https://api.github.com: deployments"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("ghp_example"),
        "the token is never printed"
    );

    std::fs::write(
        &config,
        "[[poll.github]]\nrepo = \"acme\"\ntoken_env = \"X\"\n",
    )
    .unwrap();
    let (code, _, stderr) = run(&["check-config", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("poll.github[0].repo"), "{stderr}");
    std::fs::write(&config, "[[poll.github]]\nrepo = \"acme/shop\"\n").unwrap();
    let (code, _, stderr) = run(&["check-config", "--config", config.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("poll.github[0].token_file"), "{stderr}");
}
