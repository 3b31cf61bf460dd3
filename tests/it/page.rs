//! The deliveries page in headless Chromium, driven over WebDriver
//! (chromedriver): sign in with an API key, filter by outcome, open a
//! delivery, press Redeliver, and read what a person would see. A screenshot
//! of the final page is saved as a test artefact.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::harness::{eventually, fixture, free_port, now, spawn_app_with, TestApp, SECRET};
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

/// Waits up to 10 s for an element matching `css` to appear.
async fn wait_for(client: &Client, css: &str) -> fantoccini::elements::Element {
    client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap()
}

/// Opens `path` on the metrics port.
async fn open(client: &Client, app: &TestApp, path: &str) {
    client
        .goto(&format!("{}{path}", app.metrics))
        .await
        .unwrap();
}

/// Fills the sign-in form on the current page with the admin key and sends it.
async fn submit_key(client: &Client) {
    let form = client.form(Locator::Css("form")).await.unwrap();
    form.set_by_name("key", KEY).await.unwrap();
    form.submit().await.unwrap();
}

/// Clicks the element matching `css`.
async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Saves a screenshot of the current page as a test artefact.
async fn save_screenshot(client: &Client, file_name: &str) {
    let screenshot = client.screenshot().await.unwrap();
    let artefacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("artefacts");
    std::fs::create_dir_all(&artefacts).unwrap();
    std::fs::write(artefacts.join(file_name), screenshot).unwrap();
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
        open(&client, &app, "/").await;
        let url = client.current_url().await.unwrap();
        assert_eq!(url.path(), "/login", "sent to the sign-in form");
        submit_key(&client).await;
        wait_for(&client, "table").await;
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
        click(&client, "tr.delivery a").await;
        let body = wait_for(&client, "pre#body").await;
        assert!(body
            .text()
            .await
            .unwrap()
            .contains("\"environment\": \"prod\""));
        let page = client.source().await.unwrap();
        assert!(page.contains("[redacted]"));
        assert!(!page.contains(SECRET));

        // Redeliver: a new row, which ends accepted.
        click(&client, "button#redeliver").await;
        eventually("the redelivery's badge to read accepted", || async {
            client.refresh().await.unwrap();
            texts(&client, "h1 .badge").await.join(" ") == "accepted"
        })
        .await;
        assert!(client.source().await.unwrap().contains("Redelivery of"));
        save_screenshot(&client, "deliveries-page.png").await;

        // The sources view: GitHub's last 24 hours by outcome.
        open(&client, &app, "/sources").await;
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

/// The keys page in headless Chromium: reached from the deliveries page's
/// navigation after signing in, it shows the hand-computed keys of
/// `keys::keys_scenario` with their tiers, and a trend chart per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_reads_the_keys_page_in_the_browser() {
    use crate::keys::{keys_expected, keys_scenario, KEY_NAMES};

    let driver = start_driver().await;
    let app = spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.admin.api_keys = vec![KEY.into()];
    })
    .await;
    keys_scenario(&app, now()).await;

    let client = browser(&driver).await;
    let run = async {
        open(&client, &app, "/login").await;
        submit_key(&client).await;
        // Signed in once the navigation shows the keys link. It is followed
        // by its address, not clicked: the page that showed it may still be
        // replaced by the login's redirect, leaving a clicked element stale.
        wait_for(&client, "header a[href='/keys']").await;
        open(&client, &app, "/keys").await;
        wait_for(&client, "section#all").await;
        assert_eq!(client.current_url().await.unwrap().path(), "/keys");
        let sections = texts(&client, "section.app h2").await;
        assert_eq!(sections, ["All applications", "cart", "shop"]);

        for (who, days, expected) in keys_expected() {
            let section = match who {
                "all" => "all".to_owned(),
                app => format!("app-{app}"),
            };
            let column = [7, 30, 90].iter().position(|d| *d == days).unwrap() + 1;
            for (name, (value, tier)) in KEY_NAMES.iter().zip(expected) {
                let css = format!(
                    "section#{section} tr[data-key='{name}'] td.figure:nth-of-type({column})"
                );
                let cell = client.find(Locator::Css(&css)).await.unwrap();
                let what = format!("{who} {days}d {name}");
                match value {
                    Some(v) => {
                        let shown: f64 = cell
                            .attr("data-value")
                            .await
                            .unwrap()
                            .unwrap_or_else(|| panic!("{what}: no value"))
                            .parse()
                            .unwrap();
                        assert!((shown - v).abs() < 1e-9, "{what}: {shown} != {v}");
                        let badge = cell
                            .find(Locator::Css(".badge"))
                            .await
                            .unwrap()
                            .text()
                            .await
                            .unwrap();
                        assert_eq!(Some(badge.as_str()), tier, "{what}");
                    }
                    None => assert_eq!(cell.text().await.unwrap(), "no data", "{what}"),
                }
            }
        }
        // What a person reads: shop's lead time, failure rate and recovery.
        let shop_lead = texts(
            &client,
            "section#app-shop tr[data-key='lead_time'] td.figure",
        )
        .await;
        assert_eq!(shop_lead[0], "4h 0m elite");
        let shop_cfr = texts(
            &client,
            "section#app-shop tr[data-key='change_failure_rate'] td.figure",
        )
        .await;
        assert_eq!(shop_cfr, ["33.3 % low", "40.0 % low", "33.3 % low"]);
        let recovery = texts(
            &client,
            "section#app-shop tr[data-key='failed_deployment_recovery_time'] td.figure",
        )
        .await;
        assert_eq!(recovery, ["2h 0m high", "12h 30m high", "12h 30m high"]);

        // A trend chart per key and section, server-rendered SVG: shop's
        // deployment frequency has a point in each of the 13 weeks.
        assert_eq!(
            client
                .find_all(Locator::Css("svg.trend"))
                .await
                .unwrap()
                .len(),
            15
        );
        let points = client
            .find_all(Locator::Css(
                "section#app-shop tr[data-key='deployment_frequency'] svg.trend circle",
            ))
            .await
            .unwrap();
        assert_eq!(points.len(), 13);
        let source = client.source().await.unwrap();
        assert!(!source.contains("<script"), "no JavaScript");
        // Its description, week by week: D5 six weeks ago, D4 and D4b, D1-D3.
        assert!(
            source.contains(
                "0.00/day, 0.00/day, 0.14/day, 0.00/day, 0.00/day, 0.00/day, 0.29/day, 0.43/day</title>"
            ),
            "the deployment frequency trend's description"
        );

        save_screenshot(&client, "keys-page.png").await;

        // One application on its own.
        open(&client, &app, "/keys?app=cart").await;
        assert_eq!(texts(&client, "section.app h2").await, ["cart"]);
    };
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the browser session finished within 90 s");
    client.close().await.unwrap();
    app.shutdown().await;
}
