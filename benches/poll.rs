//! The poller over a simulated day (POLLING.md §6, issue figure): `cargo
//! bench --bench poll` polls a fake GitHub (wiremock, on loopback) for 50
//! idle repositories and 5 busy ones, and prints the requests made, the
//! share answered 304, the 429s received and, for the busy repositories,
//! the detection latency from a deployment's success to its being stored.
//!
//! The clock is simulated: each repository's [`Schedule`] (the one the
//! service runs) decides when its streams are polled, on a virtual day; the
//! fake serves the virtual time in `Date` and stamps its objects with it,
//! and each poll is a real `poll_stream` over HTTP into a real SQLite
//! store. Each repository has its own token (a request per token is in
//! flight at once and spaced 100 ms apart in real time, which a single
//! token would turn into a quarter of an hour for this day).
//!
//! Under `cargo test` (no `--bench`), a short smoke run of the same code.
//!
//! Environment: POLL_BENCH_IDLE [50], POLL_BENCH_BUSY [5],
//! POLL_BENCH_HOURS [24], POLL_BENCH_DEPLOY_MINUTES (mean time between a
//! busy repository's deployments) [30].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookgauge::poll::{
    budget_floor, token_gates, Clock, GithubPoller, Outcome, PollTarget, Poller, Provider,
    RawTarget, Schedule,
};
use serde_json::{json, Value};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

#[path = "../tests/it/embedded.rs"]
mod embedded;
use embedded::EmbeddedStore;

/// The fake's state: each repository's deployments and what was asked.
#[derive(Default)]
struct World {
    /// repository → (id, created, success status time)
    deployments: BTreeMap<String, Vec<(i64, i64, i64)>>,
    /// When the fake first served each deployment's success status.
    served: BTreeMap<(String, i64), i64>,
    requests: u64,
    not_modified: u64,
    too_many: u64,
    /// Paid requests per token in the current virtual hour (5,000 each).
    paid: BTreeMap<String, (i64, u64)>,
}

/// The fake GitHub, on the simulated clock it shares with the pollers.
#[derive(Clone)]
struct Fake(Arc<Mutex<World>>, Clock);

fn rfc3339(epoch: i64) -> String {
    chrono::DateTime::from_timestamp(epoch, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

impl Respond for Fake {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut world = self.0.lock().unwrap();
        world.requests += 1;
        let now = self.1.now_seconds();
        let token = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let path = request.url.path().to_owned();
        let parts: Vec<&str> = path.trim_start_matches("/repos/").split('/').collect();
        let repo = format!("{}/{}", parts[0], parts.get(1).unwrap_or(&""));
        let rest = &parts[2.min(parts.len())..];
        let accept_sha = request
            .headers
            .get("accept")
            .is_some_and(|v| v.as_bytes() == b"application/vnd.github.sha");
        let (body, text): (Value, Option<String>) = match rest {
            [] => (json!({"full_name": repo, "default_branch": "main"}), None),
            ["deployments"] => {
                let list: Vec<Value> = world.deployments.get(&repo).into_iter().flatten()
                    .filter(|(_, created, _)| *created <= now)
                    .rev()
                    .map(|(id, created, _)| json!({
                        "id": id, "sha": format!("{id:040x}"), "ref": "main",
                        "environment": "production", "created_at": rfc3339(*created), "payload": {}
                    }))
                    .collect();
                (Value::Array(list), None)
            }
            ["deployments", id, "statuses"] => {
                let id: i64 = id.parse().unwrap_or_default();
                let found = world
                    .deployments
                    .get(&repo)
                    .into_iter()
                    .flatten()
                    .find(|(d, _, _)| *d == id)
                    .copied();
                let mut list = Vec::new();
                if let Some((_, created, success)) = found {
                    list.push(json!({"id": id * 10, "state": "in_progress", "created_at": rfc3339(created)}));
                    if success <= now {
                        list.insert(0, json!({"id": id * 10 + 1, "state": "success", "environment": "production", "created_at": rfc3339(success)}));
                        world.served.entry((repo.clone(), id)).or_insert(now);
                    }
                }
                (Value::Array(list), None)
            }
            ["commits", "main"] if accept_sha => (
                Value::Null,
                Some("c5feabde2d8cd023215af4d2ceeb7a64839fc428".into()),
            ),
            ["issues"] | ["commits"] | ["pulls"] => (json!([]), None),
            _ => return ResponseTemplate::new(404).set_body_json(json!({"message": "Not Found"})),
        };
        // A bare SHA's validator is the SHA itself (POLLING.md §1.4).
        let etag = match &text {
            Some(sha) => format!("\"{sha}\""),
            None => format!("W/\"{:x}\"", content_hash(&body.to_string())),
        };
        let text = text.unwrap_or_else(|| body.to_string());
        let hour = now / 3600;
        let used = world.paid.entry(token).or_insert((hour, 0));
        if used.0 != hour {
            *used = (hour, 0);
        }
        let conditional = request
            .headers
            .get("if-none-match")
            .is_some_and(|v| v.as_bytes() == etag.as_bytes());
        if !conditional {
            used.1 += 1;
        }
        let remaining = 5000u64.saturating_sub(used.1);
        let date = chrono::DateTime::from_timestamp(now, 0)
            .unwrap()
            .to_rfc2822();
        let reset = ((hour + 1) * 3600).to_string();
        let template = |status: u16| {
            ResponseTemplate::new(status)
                .insert_header("date", date.as_str())
                .insert_header("etag", etag.as_str())
                .insert_header("x-ratelimit-limit", "5000")
                .insert_header("x-ratelimit-remaining", remaining.to_string().as_str())
                .insert_header("x-ratelimit-reset", reset.as_str())
        };
        if used.1 > 5000 {
            world.too_many += 1;
            return template(429).set_body_json(json!({"message": "API rate limit exceeded"}));
        }
        if conditional {
            world.not_modified += 1;
            return template(304);
        }
        template(200).set_body_string(text)
    }
}

/// A cheap content hash for ETags.
fn content_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// A deterministic pseudo-random sequence (xorshift).
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An exponential wait with mean `mean` seconds.
    fn exponential(&mut self, mean: f64) -> i64 {
        (-mean * (1.0 - self.unit()).ln()).round() as i64
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (idle, busy, hours) = if bench {
        (
            env("POLL_BENCH_IDLE", 50),
            env("POLL_BENCH_BUSY", 5),
            env("POLL_BENCH_HOURS", 24),
        )
    } else {
        (2, 1, 2)
    };
    let deploy_mean = env("POLL_BENCH_DEPLOY_MINUTES", 30) as f64 * 60.0;
    let started = Instant::now();

    let server = MockServer::start().await;
    let world = Arc::new(Mutex::new(World::default()));
    let clock = Clock::simulated(Clock::default().now_ms());
    let epoch = clock.now_seconds();
    Mock::given(wiremock::matchers::method("GET"))
        .respond_with(Fake(Arc::clone(&world), clock.clone()))
        .mount(&server)
        .await;

    // The busy repositories' deployments over the day: created, then a
    // success status 2 to 10 minutes later.
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let names: Vec<(String, bool)> = (0..idle)
        .map(|i| (format!("acme/idle-{i}"), false))
        .chain((0..busy).map(|i| (format!("acme/busy-{i}"), true)))
        .collect();
    let end = epoch + hours as i64 * 3600;
    for (name, is_busy) in &names {
        let mut list = Vec::new();
        if *is_busy {
            let mut t = epoch + rng.exponential(deploy_mean);
            let mut id = 1;
            while t < end {
                list.push((id, t, t + 120 + (rng.unit() * 480.0) as i64));
                id += 1;
                t += rng.exponential(deploy_mean).max(60);
            }
        }
        world.lock().unwrap().deployments.insert(name.clone(), list);
    }

    // Kept to the end: the view the store reports to, the store's directory.
    let EmbeddedStore {
        metrics,
        store,
        ledger,
        view: _view,
        dir: _dir,
    } = EmbeddedStore::start();

    let targets: Vec<PollTarget> = names
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let raw: RawTarget = toml::from_str(&format!(
                "repo = {name:?}\ntoken_env = \"TOKEN\"\napi_url = {:?}",
                server.uri()
            ))
            .unwrap();
            let token = format!("ghp_bench_{i}");
            PollTarget::from_raw(Provider::Github, &raw, i, 0.5, &[], &|_| {
                Some(token.clone())
            })
            .unwrap()
        })
        .collect();
    let gates = token_gates(&targets);
    let mut repos: Vec<(GithubPoller, Schedule)> = targets
        .iter()
        .zip(gates)
        .enumerate()
        .map(|(i, (target, gate))| {
            let start = target.interval / targets.len() as u32 * i as u32;
            let poller = GithubPoller::new(
                target.clone(),
                gate,
                store.clone(),
                ledger.clone(),
                Arc::clone(&metrics),
            )
            .with_clock(clock.clone());
            (poller, Schedule::new(target, start, |_| None))
        })
        .collect();

    let day = Duration::from_secs(hours * 3600);
    let mut polls = 0u64;
    while let Some((index, (stream, due))) = repos
        .iter()
        .enumerate()
        .map(|(i, (_, s))| (i, s.next()))
        .min_by_key(|(_, (_, due))| *due)
    {
        if due >= day {
            break;
        }
        clock.advance_to((epoch + due.as_secs() as i64) * 1000);
        let (poller, schedule) = &mut repos[index];
        let result = poller.poll_stream(stream).await;
        polls += 1;
        let mean = match (&result, stream.event_kind()) {
            (Ok(true), Some(kind)) => {
                poller
                    .recorder()
                    .mean_interval(poller.target().app(), kind)
                    .await
            }
            _ => None,
        };
        let hint = poller.take_poll_interval_hint();
        let floor = budget_floor(poller.target(), poller.gate()).await;
        let outcome = Outcome::of(&result, mean, clock.now_seconds());
        schedule.record(stream, due, outcome, hint, floor);
    }

    store.shutdown().await;
    let world = world.lock().unwrap();
    let mut latencies: Vec<i64> = Vec::new();
    let mut missed = 0;
    for (name, list) in &world.deployments {
        for (id, _, success) in list {
            if *success >= end {
                continue;
            }
            match world.served.get(&(name.clone(), *id)) {
                Some(at) => latencies.push(at - success),
                None => missed += 1,
            }
        }
    }
    latencies.sort_unstable();
    let share = world.not_modified as f64 / world.requests.max(1) as f64;
    println!("poller, simulated {hours} h: {idle} idle + {busy} busy GitHub repositories, one token each");
    println!("  polls (stream polls)      {polls}");
    println!("  requests                  {}", world.requests);
    println!(
        "  answered 304              {} ({:.1} %, target >= 90 %)",
        world.not_modified,
        share * 100.0
    );
    println!("  429s                      {} (target 0)", world.too_many);
    println!(
        "  deploys detected          {} of {} (busy repositories, mean {:.0} min apart)",
        latencies.len(),
        latencies.len() + missed,
        deploy_mean / 60.0
    );
    if !latencies.is_empty() {
        let mean = latencies.iter().sum::<i64>() as f64 / latencies.len() as f64;
        println!(
            "  detection latency (s)     mean {mean:.0}, p50 {}, p95 {}, max {}",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.95),
            latencies[latencies.len() - 1]
        );
    }
    println!(
        "  wall time                 {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        world.too_many, 0,
        "the fake refused requests over its quota"
    );
    assert!(
        !bench || share >= 0.9 || busy > 0,
        "fewer than 90 % of requests answered 304"
    );
}
