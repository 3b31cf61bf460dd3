//! The deliveries page in headless Chromium, driven over WebDriver
//! (chromedriver): sign in with an API key, filter by outcome, open a
//! delivery, press Redeliver, and read what a person would see. A screenshot
//! of the final page is saved as a test artefact.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::harness::{fixture, free_port, now, spawn_app_with, SECRET};
use crate::sources::{post, provider_headers};

const KEY: &str = "page-test-admin-key";

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver() -> Driver {
    let binary = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromedriver is installed (scripts/test installs chromium-driver)");
    let port = free_port();
    let driver = Driver {
        child: Command::new(binary)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
        url: format!("http://127.0.0.1:{port}"),
        _profile: tempfile::tempdir().unwrap(),
    };
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client
            .get(format!("{}/status", driver.url))
            .send()
            .await
            .is_ok()
        {
            return driver;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not answer within 10 s");
}

async fn browser(driver: &Driver) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,900",
                format!("--user-data-dir={}", driver._profile.path().display()),
            ]
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&driver.url),
    )
    .await
    .expect("a browser session within 30 s")
    .expect("a browser session")
}

async fn texts(client: &Client, css: &str) -> Vec<String> {
    let mut out = Vec::new();
    for element in client.find_all(Locator::Css(css)).await.unwrap() {
        out.push(element.text().await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_filters_opens_and_redelivers_in_the_browser() {
    let driver = start_driver().await;
    let mut app = spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.sources
            .native
            .insert("github".into(), json!({"secrets": [SECRET]}));
        raw.admin.api_keys = vec![KEY.into()];
    })
    .await;
    let t = now() - 60;
    app.deploy_images(0..2, t).await;
    // A deploy to an environment the configuration does not count yet.
    let mut payload: Value =
        serde_json::from_slice(&fixture("github/deployment_status.success.json")).unwrap();
    payload["deployment"]["environment"] = json!("prod");
    payload["deployment_status"]["environment"] = json!("prod");
    let body = serde_json::to_vec(&payload).unwrap();
    let headers = provider_headers("github", "deployment_status", "gh-page-1", &body, SECRET);
    assert_eq!(
        post(&app, "/hooks/github", &headers, &body).await.outcome(),
        "ignored"
    );
    // The operator fixes the mapping and restarts.
    app.raw.sources.native.insert(
        "github".into(),
        json!({"secrets": [SECRET], "environments": ["prod"]}),
    );
    app.restart().await;

    let client = browser(&driver).await;
    let run = async {
        // Signing in: the page asks for the key once.
        client.goto(&format!("{}/", app.metrics)).await.unwrap();
        let url = client.current_url().await.unwrap();
        assert_eq!(url.path(), "/login", "sent to the sign-in form");
        let form = client.form(Locator::Css("form")).await.unwrap();
        form.set_by_name("key", KEY).await.unwrap();
        form.submit().await.unwrap();
        client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("table"))
            .await
            .unwrap();
        assert_eq!(texts(&client, "tr.delivery").await.len(), 3);

        // Filter by outcome: only the ignored delivery is left.
        let filters = client.form(Locator::Css("form.filters")).await.unwrap();
        client
            .find(Locator::Css("select#outcome"))
            .await
            .unwrap()
            .select_by_value("ignored")
            .await
            .unwrap();
        filters.submit().await.unwrap();
        for _ in 0..50 {
            let url = client.current_url().await.unwrap();
            if url.query().unwrap_or("").contains("outcome=ignored") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let rows = texts(&client, "tr.delivery").await;
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert!(
            rows[0].contains("environment_not_production"),
            "{}",
            rows[0]
        );

        // The detail: reason, redacted signature, pretty-printed body.
        client
            .find(Locator::Css("tr.delivery a"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let body = client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("pre#body"))
            .await
            .unwrap();
        assert!(body
            .text()
            .await
            .unwrap()
            .contains("\"environment\": \"prod\""));
        let page = client.source().await.unwrap();
        assert!(page.contains("[redacted]"));
        assert!(!page.contains(SECRET));

        // Redeliver: a new row, which ends accepted.
        client
            .find(Locator::Css("button#redeliver"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let mut outcome = String::new();
        for _ in 0..150 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.refresh().await.unwrap();
            outcome = texts(&client, "h1 .badge").await.join(" ");
            if outcome == "accepted" {
                break;
            }
        }
        assert_eq!(outcome, "accepted", "the redelivery's badge");
        assert!(client.source().await.unwrap().contains("Redelivery of"));
        let screenshot = client.screenshot().await.unwrap();
        let artefacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artefacts");
        std::fs::create_dir_all(&artefacts).unwrap();
        std::fs::write(artefacts.join("deliveries-page.png"), screenshot).unwrap();

        // The sources view: GitHub's last 24 hours by outcome.
        client
            .goto(&format!("{}/sources", app.metrics))
            .await
            .unwrap();
        let sources = texts(&client, "tr.source").await;
        let github = sources
            .iter()
            .find(|s| s.starts_with("github"))
            .expect("a github row");
        assert!(
            github.contains("accepted 1") && github.contains("ignored 1"),
            "{github}"
        );
    };
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the browser session finished within 90 s");
    client.close().await.unwrap();
    app.shutdown().await;
}
