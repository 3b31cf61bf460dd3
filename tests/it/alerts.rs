//! End to end, from a pull request waiting for review to a Slack message,
//! with every program real except GitHub and Slack: a fake GitHub REST API
//! (wiremock) serves acme/shop with three open pull requests; the real
//! hookgauge binary polls it; a real Prometheus (Debian's `prometheus`)
//! scrapes hookgauge under two instance names, as if two replicas exposed
//! the same series, with the shipped rules and alerts; a real Alertmanager
//! (Debian's `prometheus-alertmanager`) runs the shipped
//! deploy/alertmanager/alertmanager.yml, changed only where a test must
//! (the webhook URL files, shorter group timings); a second wiremock server
//! stands in for Slack's incoming webhooks and records what is posted.
//! The shipped Alertmanager configuration also passes `amtool check-config`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::harness::{free_port, now, repo, serve_command_on, Process};
use crate::monitoring::{Alertmanager, Prometheus, PrometheusSetup, QueryResult};

const TOKEN: &str = "ghp_fake_token_for_the_alert_test";
/// The head of `main`, which does not move during the test.
const HEAD: &str = "5e1ec7ed00000000000000000000000000000001";
const ALERT: &str = "HookgaugePullRequestAwaitingReview";
const DAY: i64 = 86_400;
/// `group_wait` and `group_interval` of every Alertmanager route in the test.
const GROUP_TIMING: &str = "1s";
/// How long Prometheus gets to show a change hookgauge made.
const SHOW: Duration = Duration::from_secs(30);
/// How long a notification may take to reach Slack.
const DELIVER: Duration = Duration::from_secs(60);
/// Several Alertmanager group intervals: time enough for a notification
/// that should not be sent to be sent.
const QUIET: Duration = Duration::from_secs(6);

/// The pull requests of acme/shop and their reviews, changed by the test
/// while hookgauge polls.
struct Pulls {
    list: Vec<Value>,
    reviews: BTreeMap<u64, Vec<Value>>,
}

/// The REST API of acme/shop as hookgauge's poller reads it, behind the
/// token: no deployments, no incident issues, no new commits on `main`
/// (its head answered 304 on `If-None-Match: "<sha>"`), the open pull
/// requests against `main` and their reviews (each list with an ETag of
/// its content, answered 304 when repeated), empty timelines. Anything
/// else is 404.
struct FakeGithub {
    pulls: Arc<Mutex<Pulls>>,
}

impl Respond for FakeGithub {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if header(request, "authorization") != Some(format!("Bearer {TOKEN}")) {
            return ResponseTemplate::new(401).set_body_json(json!({"message": "Bad credentials"}));
        }
        let Some(path) = request.url.path().strip_prefix("/repos/acme/shop/") else {
            return ResponseTemplate::new(404);
        };
        let pulls = self.pulls.lock().unwrap();
        match path.split('/').collect::<Vec<_>>().as_slice() {
            ["deployments"] | ["issues"] | ["commits"] => conditional_json(request, &json!([])),
            ["commits", "main"] => {
                let etag = format!("\"{HEAD}\"");
                if header(request, "if-none-match") == Some(etag.clone()) {
                    return ResponseTemplate::new(304).insert_header("etag", etag.as_str());
                }
                ResponseTemplate::new(200)
                    .insert_header("etag", etag.as_str())
                    .set_body_raw(HEAD, "application/vnd.github.sha")
            }
            ["pulls"] => {
                let query: BTreeMap<_, _> = request.url.query_pairs().collect();
                if query.get("state").map(|s| &**s) != Some("open")
                    || query.get("base").map(|s| &**s) != Some("main")
                {
                    return ResponseTemplate::new(422)
                        .set_body_json(json!({"message": "expected state=open&base=main"}));
                }
                conditional_json(request, &Value::Array(pulls.list.clone()))
            }
            ["pulls", number, "reviews"] => {
                let reviews = number
                    .parse()
                    .ok()
                    .and_then(|n: u64| pulls.reviews.get(&n).cloned())
                    .unwrap_or_default();
                conditional_json(request, &Value::Array(reviews))
            }
            ["issues", _, "timeline"] => conditional_json(request, &json!([])),
            _ => ResponseTemplate::new(404),
        }
    }
}

fn header(request: &Request, name: &str) -> Option<String> {
    request
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `body` with a weak ETag of its content: 304 when `If-None-Match`
/// repeats it.
fn conditional_json(request: &Request, body: &Value) -> ResponseTemplate {
    let bytes = serde_json::to_vec(body).unwrap();
    let etag = format!("W/\"{}\"", &hex::encode(Sha256::digest(&bytes))[..20]);
    if header(request, "if-none-match") == Some(etag.clone()) {
        return ResponseTemplate::new(304).insert_header("etag", etag.as_str());
    }
    ResponseTemplate::new(200)
        .insert_header("etag", etag.as_str())
        .set_body_raw(bytes, "application/json")
}

fn rfc3339(epoch: i64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(epoch as u64)).to_string()
}

/// An open pull request by `ann` against `main`, as GitHub lists it.
fn pull_request(number: u64, draft: bool, created_at: i64, updated_at: i64) -> Value {
    json!({
        "number": number, "state": "open", "draft": draft, "title": format!("Change {number}"),
        "html_url": format!("https://github.com/acme/shop/pull/{number}"),
        "user": {"login": "ann"},
        "created_at": rfc3339(created_at), "updated_at": rfc3339(updated_at),
        "head": {"sha": format!("{number:040x}"), "ref": format!("change-{number}")},
        "base": {"sha": HEAD, "ref": "main"},
        "requested_reviewers": [], "requested_teams": []
    })
}

/// A submitted review, as GitHub lists it.
fn review(id: u64, by: &str, state: &str, submitted_at: i64) -> Value {
    json!({
        "id": id, "user": {"login": by}, "state": state, "body": "Looks fine.",
        "submitted_at": rfc3339(submitted_at), "commit_id": format!("{:040x}", 7)
    })
}

/// hookgauge's configuration file: poll acme/shop on the fake, tracking
/// `main`, with the token in a file beside it.
fn hookgauge_config(dir: &Path, api_url: &str) -> PathBuf {
    let token_file = dir.join("github-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let config = dir.join("hookgauge.toml");
    std::fs::write(
        &config,
        format!(
            "[[poll.github]]\nrepo = \"acme/shop\"\ntoken_file = {:?}\napi_url = {api_url:?}\nbranch = \"main\"\n",
            token_file.display().to_string()
        ),
    )
    .unwrap();
    config
}

/// The shipped deploy/alertmanager/alertmanager.yml with only what a test
/// must change: each `api_url_file` names a file in `dir` holding the URL
/// of the Slack stand-in at `slack`, with the shipped file's name as path
/// (so a message shows which receiver sent it), and every route's
/// `group_wait` and `group_interval` is [`GROUP_TIMING`].
fn alertmanager_config(dir: &Path, slack: &str) -> String {
    let shipped = std::fs::read_to_string(repo("deploy/alertmanager/alertmanager.yml")).unwrap();
    let mut config: serde_norway::Value = serde_norway::from_str(&shipped).unwrap();
    let routes = shorten_group_timings(&mut config["route"]);
    assert!(routes >= 2, "the shipped routes have sub-routes: {shipped}");
    let mut files = 0;
    let receivers = config["receivers"]
        .as_sequence_mut()
        .expect("receivers is a list");
    for receiver in receivers {
        let Some(slack_configs) = receiver
            .get_mut("slack_configs")
            .and_then(serde_norway::Value::as_sequence_mut)
        else {
            continue;
        };
        for slack_config in slack_configs {
            let shipped_file = slack_config["api_url_file"]
                .as_str()
                .expect("every Slack receiver reads its webhook URL from a file")
                .to_owned();
            let name = Path::new(&shipped_file).file_name().unwrap();
            let file = dir.join(name);
            std::fs::write(&file, format!("{slack}/{}\n", name.to_string_lossy())).unwrap();
            slack_config["api_url_file"] = file.display().to_string().into();
            files += 1;
        }
    }
    assert!(files >= 1, "no slack_configs in {shipped}");
    serde_norway::to_string(&config).unwrap()
}

/// Sets [`GROUP_TIMING`] on `route` and every route below it; returns how
/// many routes there are.
fn shorten_group_timings(route: &mut serde_norway::Value) -> usize {
    let route = route.as_mapping_mut().expect("a route is a mapping");
    for key in ["group_wait", "group_interval"] {
        route.insert(key.into(), GROUP_TIMING.into());
    }
    let mut routes = 1;
    if let Some(children) = route
        .get_mut("routes")
        .and_then(serde_norway::Value::as_sequence_mut)
    {
        for child in children {
            routes += shorten_group_timings(child);
        }
    }
    routes
}

/// One message Alertmanager posted to the Slack stand-in.
#[derive(Debug)]
struct SlackMessage {
    /// The webhook file it came through (hence which receiver).
    path: String,
    channel: String,
    title: String,
    text: String,
    /// `danger` when firing, `good` when resolved.
    color: String,
}

impl SlackMessage {
    /// How often the title and the text name pull request `#number`
    /// (`#7`, not `#70`).
    fn mentions(&self, number: u64) -> usize {
        let tag = format!("#{number}");
        [&self.title, &self.text]
            .into_iter()
            .map(|text| {
                text.match_indices(&tag)
                    .filter(|(at, _)| {
                        !text[at + tag.len()..].starts_with(|c: char| c.is_ascii_digit())
                    })
                    .count()
            })
            .sum()
    }
}

/// Every message posted to the Slack stand-in so far, oldest first.
async fn slack_messages(slack: &MockServer) -> Vec<SlackMessage> {
    slack
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.method.as_str() == "POST")
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap_or_default();
            let attachment = &body["attachments"][0];
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            SlackMessage {
                path: r.url.path().to_owned(),
                channel: text(&body["channel"]),
                title: text(&attachment["title"]),
                text: text(&attachment["text"]),
                color: text(&attachment["color"]),
            }
        })
        .collect()
}

/// The numbers of the pull requests in `results`, by `instance`.
fn numbers_by_instance(results: &[QueryResult]) -> BTreeMap<String, BTreeSet<String>> {
    let mut numbers: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (labels, _) in results {
        numbers
            .entry(labels["instance"].clone())
            .or_default()
            .insert(labels["number"].clone());
    }
    numbers
}

/// Both replicas expose exactly `expected` pull request numbers.
fn on_both_replicas(results: &[QueryResult], expected: &[&str]) -> bool {
    let expected: BTreeSet<String> = expected.iter().map(|n| n.to_string()).collect();
    let numbers = numbers_by_instance(results);
    numbers.len() == 2 && numbers.values().all(|n| *n == expected)
}

/// The programs of the test, for failure messages: what each logged and
/// what the fakes received.
struct Chain<'a> {
    dir: &'a Path,
    github: &'a MockServer,
    slack: &'a MockServer,
    prometheus: &'a Prometheus,
    alertmanager: &'a Alertmanager,
}

impl Chain<'_> {
    async fn report(&self) -> String {
        let mut report = String::new();
        for run in 1..=2 {
            let log = self.dir.join(format!("hookgauge-{run}.log"));
            if let Ok(text) = std::fs::read_to_string(&log) {
                report.push_str(&format!("--- hookgauge run {run} log:\n{text}\n"));
            }
        }
        let requests: Vec<String> = self
            .github
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .map(|r| {
                format!(
                    "{} {} (If-None-Match: {})",
                    r.method,
                    r.url,
                    header(r, "if-none-match").unwrap_or_default()
                )
            })
            .collect();
        report.push_str(&format!(
            "--- fake GitHub received:\n{}\n",
            requests.join("\n")
        ));
        report.push_str(&format!(
            "--- Slack received:\n{:#?}\n",
            slack_messages(self.slack).await
        ));
        report.push_str(&format!(
            "--- Alertmanager's active alerts:\n{:#?}\n--- Alertmanager log:\n{}\n",
            self.alertmanager.active_alerts().await,
            self.alertmanager.log()
        ));
        report.push_str(&format!("--- Prometheus log:\n{}", self.prometheus.log()));
        report
    }
}

#[test]
fn shipped_alertmanager_config_passes_amtool_check_config() {
    let output = Command::new("amtool")
        .arg("check-config")
        .arg(repo("deploy/alertmanager/alertmanager.yml"))
        .output()
        .expect("amtool is installed (Debian package `prometheus-alertmanager`; scripts/test installs it)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_request_waiting_over_two_days_is_posted_to_slack_once_until_reviewed() {
    let dir = tempfile::tempdir().unwrap();
    let t = now();
    // #7 has waited 3 days, #8 an hour; #9 is a draft (not waiting at all).
    let pulls = Arc::new(Mutex::new(Pulls {
        list: vec![
            pull_request(8, false, t - 3_600, t - 3_600),
            pull_request(7, false, t - 3 * DAY, t - 2 * DAY),
            pull_request(9, true, t - 5 * DAY, t - 4 * DAY),
        ],
        reviews: BTreeMap::new(),
    }));
    let github = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(FakeGithub {
            pulls: pulls.clone(),
        })
        .mount(&github)
        .await;
    let slack = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&slack)
        .await;

    let config = hookgauge_config(dir.path(), &github.uri());
    let data = dir.path().join("data");
    let ingest = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let start_hookgauge = |run: u32| {
        let mut command = serve_command_on(&data, &ingest, &metrics);
        command.arg("--config").arg(&config);
        Process::start(
            &mut command,
            &dir.path().join(format!("hookgauge-{run}.log")),
        )
    };
    let hookgauge = start_hookgauge(1);
    let alertmanager =
        Alertmanager::start(dir.path(), &alertmanager_config(dir.path(), &slack.uri())).await;
    let setup = PrometheusSetup {
        targets: vec![
            ("replica-a".into(), metrics.clone()),
            ("replica-b".into(), metrics.clone()),
        ],
        alertmanagers: vec![alertmanager.address.clone()],
    };
    let prometheus = Prometheus::start_with(dir.path(), &dir.path().join("tsdb"), &setup).await;
    let chain = Chain {
        dir: dir.path(),
        github: &github,
        slack: &slack,
        prometheus: &prometheus,
        alertmanager: &alertmanager,
    };

    // Prometheus sees the waits of #7 and #8 on both replicas, none of the draft.
    let waits = "hookgauge_pull_request_review_wait_seconds{repo=\"acme/shop\"}";
    let seen = match prometheus
        .wait_until(waits, SHOW, |r| on_both_replicas(r, &["7", "8"]))
        .await
    {
        Ok(seen) => seen,
        Err(last) => panic!(
            "the waits of #7 and #8 (only) on both replicas within {SHOW:?}; last: {last}\n{}",
            chain.report().await
        ),
    };
    let waited = now() - t + 2;
    for (labels, value) in &seen {
        let ready = if labels["number"] == "7" {
            3 * DAY
        } else {
            3_600
        };
        assert!(
            (ready as f64..=(ready + waited) as f64).contains(value),
            "#{} has waited {value} s, expected {ready} s plus at most {waited} s",
            labels["number"]
        );
    }
    let awaiting = "max(hookgauge_pull_requests_awaiting_review{repo=\"acme/shop\"})";
    if let Err(last) = prometheus
        .wait_until(awaiting, SHOW, |r| r.len() == 1 && r[0].1 == 2.0)
        .await
    {
        panic!(
            "2 pull requests awaiting review; last: {last}\n{}",
            chain.report().await
        );
    }

    // Slack gets one message about #7, through the review receiver, none about #8 or #9.
    let deadline = Instant::now() + DELIVER;
    while !slack_messages(&slack)
        .await
        .iter()
        .any(|m| m.mentions(7) > 0)
    {
        assert!(
            Instant::now() < deadline,
            "no Slack message about #7 within {DELIVER:?}\n{}",
            chain.report().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let messages = slack_messages(&slack).await;
    let about_7: Vec<&SlackMessage> = messages.iter().filter(|m| m.mentions(7) > 0).collect();
    assert_eq!(about_7.len(), 1, "one message about #7: {messages:#?}");
    let message = about_7[0];
    assert_eq!(message.path, "/code-review-webhook-url", "{message:#?}");
    assert_eq!(message.channel, "#code-review", "{message:#?}");
    assert_eq!(
        message.title, "acme/shop #7 waits for a review",
        "{message:#?}"
    );
    assert!(
        message.text.starts_with("acme/shop #7 has waited 3d 0h "),
        "the text names the repository, the pull request and the wait: {message:#?}"
    );
    assert_eq!(
        message.mentions(7),
        2,
        "#7 once in the title, once in the text (one alert, not one per replica): {message:#?}"
    );
    assert_eq!(message.color, "danger", "{message:#?}");
    assert!(
        !messages
            .iter()
            .any(|m| m.mentions(8) > 0 || m.mentions(9) > 0),
        "no message about #8 (an hour) or #9 (draft): {messages:#?}"
    );

    // Someone else comments on #7 (which bumps its updated_at, so the
    // list changes); hookgauge restarts on the same ports and polls at once.
    {
        let mut pulls = pulls.lock().unwrap();
        let reviewed_at = now();
        pulls
            .reviews
            .insert(7, vec![review(70, "bob", "COMMENTED", reviewed_at)]);
        let seven = pulls.list.iter_mut().find(|p| p["number"] == 7).unwrap();
        seven["updated_at"] = rfc3339(reviewed_at).into();
        pulls
            .list
            .sort_by_key(|p| std::cmp::Reverse(p["updated_at"].as_str().unwrap().to_owned()));
    }
    hookgauge.terminate();
    let hookgauge = start_hookgauge(2);

    // Only #8 waits now: hookgauge polled again (the #8 series came back).
    if let Err(last) = prometheus
        .wait_until(waits, SHOW, |r| on_both_replicas(r, &["8"]))
        .await
    {
        panic!(
            "only #8 waits after the review of #7; last: {last}\n{}",
            chain.report().await
        );
    }
    if let Err(last) = prometheus
        .wait_until(awaiting, SHOW, |r| r.len() == 1 && r[0].1 == 1.0)
        .await
    {
        panic!(
            "1 pull request awaiting review; last: {last}\n{}",
            chain.report().await
        );
    }
    // The alert is resolved in Prometheus, then in Alertmanager.
    let firing = format!("ALERTS{{alertname=\"{ALERT}\",number=\"7\"}}");
    if let Err(last) = prometheus.wait_until(&firing, SHOW, |r| r.is_empty()).await {
        panic!(
            "the alert for #7 resolved; last: {last}\n{}",
            chain.report().await
        );
    }
    let deadline = Instant::now() + SHOW;
    while alertmanager
        .active_alerts()
        .await
        .iter()
        .any(|a| a["labels"]["number"] == "7")
    {
        assert!(
            Instant::now() < deadline,
            "Alertmanager still holds #7 as active after {SHOW:?}\n{}",
            chain.report().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nothing more about #7 for several group intervals: no resolved
    // message (the receiver does not send them) and no new firing one.
    tokio::time::sleep(QUIET).await;
    let messages = slack_messages(&slack).await;
    let about_7 = messages.iter().filter(|m| m.mentions(7) > 0).count();
    assert_eq!(
        about_7,
        1,
        "still the one message about #7 {QUIET:?} after its review\n{}",
        chain.report().await
    );
    assert!(
        !messages
            .iter()
            .any(|m| m.mentions(8) > 0 || m.mentions(9) > 0),
        "no message about #8 or #9: {messages:#?}"
    );
    hookgauge.terminate();
}
