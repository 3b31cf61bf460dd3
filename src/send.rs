//! `hookgauge send`: builds a Pelorus payload from flags, validates it with the
//! same rules as the server, signs the exact bytes it sends, posts it and
//! retries with jittered exponential backoff on connection errors and 5xx.

use std::time::Duration;

use crate::clock::now_seconds;

use anyhow::{bail, Context};
use backon::{ExponentialBuilder, Retryable};
use serde_json::{json, Value};

use crate::cli::{FailureEventArg, SendArgs, SendEvent};
use crate::plugins::pelorus::{self, PayloadError, PelorusEvent};
use crate::signature::{self, Secret};

/// How `send` ended; `main` turns it into the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendResult {
    /// Accepted, or already recorded (duplicate).
    Delivered,
    /// The server answered, but did not record the event.
    Refused,
    /// No usable answer after every retry.
    Undelivered,
}

enum Attempt {
    Transient(String),
}

/// The event header and JSON payload for the flags given.
pub fn build_payload(event: &SendEvent, now: i64) -> (PelorusEvent, Value) {
    match event {
        SendEvent::Committime {
            app,
            commit,
            image_sha,
            namespace,
            commit_link,
            timestamp,
        } => {
            let mut payload = json!({
                "app": app,
                "commit_hash": commit,
                "image_sha": image_sha,
                "namespace": namespace,
                "timestamp": timestamp.unwrap_or(now),
            });
            if let Some(link) = commit_link {
                payload["commit_link"] = link.clone().into();
            }
            (PelorusEvent::CommitTime, payload)
        }
        SendEvent::Deploytime {
            app,
            image_sha,
            namespace,
            commit,
            timestamp,
        } => {
            let mut payload = json!({
                "app": app,
                "image_sha": image_sha,
                "namespace": namespace,
                "timestamp": timestamp.unwrap_or(now),
            });
            if let Some(commit) = commit {
                payload["commit_hash"] = commit.clone().into();
            }
            (PelorusEvent::DeployTime, payload)
        }
        SendEvent::Failure {
            app,
            failure_id,
            event,
            timestamp,
        } => (
            PelorusEvent::Failure,
            json!({
                "app": app,
                "failure_id": failure_id,
                "failure_event": match event {
                    FailureEventArg::Created => "created",
                    FailureEventArg::Resolved => "resolved",
                },
                "timestamp": timestamp.unwrap_or(now),
            }),
        ),
    }
}

/// The webhook URL: the given URL when it has a path, else `default_path` on it.
pub fn webhook_url(base: &str, default_path: &str) -> anyhow::Result<reqwest::Url> {
    let mut url =
        reqwest::Url::parse(base).with_context(|| format!("--url `{base}` is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("--url `{base}` must be an http:// or https:// URL");
    }
    if url.path() == "/" || url.path().is_empty() {
        url.set_path(default_path);
    }
    Ok(url)
}

fn read_secret(args: &SendArgs) -> anyhow::Result<Option<Secret>> {
    if let Some(path) = &args.secret_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--secret-file: cannot read {}", path.display()))?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .with_context(|| format!("--secret-file: {} holds no secret", path.display()))?;
        return Ok(Some(Secret::new(line)));
    }
    match &args.secret {
        Some(s) if s.trim().is_empty() => bail!("--secret (or HOOKGAUGE_SECRET) is empty"),
        Some(s) => Ok(Some(Secret::new(s.as_bytes()))),
        None => Ok(None),
    }
}

/// The Standard Webhooks `type` of a Pelorus event (SOURCES.md §14).
fn standard_type(event: &SendEvent) -> &'static str {
    match event {
        SendEvent::Committime { .. } => "commit",
        SendEvent::Deploytime { .. } => "deploy",
        SendEvent::Failure {
            event: FailureEventArg::Created,
            ..
        } => "failure.created",
        SendEvent::Failure {
            event: FailureEventArg::Resolved,
            ..
        } => "failure.resolved",
    }
}

/// A Standard Webhooks message around `data`, and its id: derived from the
/// event, so that every retry, and sending the same event again, carries
/// the same id.
pub fn standard_message(kind: &str, data: &Value, now: i64) -> (String, Vec<u8>) {
    use sha2::Digest as _;
    let event = serde_json::to_vec(&json!({"type": kind, "data": data})).unwrap_or_default();
    let id = format!("msg_{}", &hex::encode(sha2::Sha256::digest(&event))[..32]);
    let timestamp = chrono::DateTime::from_timestamp(now, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let body = json!({"type": kind, "timestamp": timestamp, "data": data});
    (id, serde_json::to_vec(&body).unwrap_or_default())
}

/// The CDEvent (spec 0.5) that reports the same as `data`, the Pelorus
/// payload of `event`, and its CloudEvents type. Its id is derived from the
/// event, so that every retry, and sending the same event again, carries
/// the same id.
pub fn cdevent(event: &SendEvent, data: &Value) -> (String, String, Value) {
    use sha2::Digest as _;
    let app = data["app"].as_str().unwrap_or_default();
    let time = data["timestamp"].as_i64().unwrap_or_default();
    let timestamp = chrono::DateTime::from_timestamp(time, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let artifact = |image: &Value| format!("pkg:oci/{app}@{}", image.as_str().unwrap_or_default());
    let (kind, subject) = match event {
        SendEvent::Committime { .. } => (
            "artifact.packaged",
            json!({"id": artifact(&data["image_sha"]), "content": {"change": {"id": data["commit_hash"]}}}),
        ),
        SendEvent::Deploytime { .. } => (
            "service.deployed",
            json!({"id": app, "content": {
                "environment": {"id": data["namespace"]},
                "artifactId": artifact(&data["image_sha"]),
            }}),
        ),
        SendEvent::Failure { event, .. } => (
            match event {
                FailureEventArg::Created => "incident.detected",
                FailureEventArg::Resolved => "incident.resolved",
            },
            json!({"id": data["failure_id"], "content": {
                "environment": {"id": "production"},
                "service": {"id": app},
            }}),
        ),
    };
    let kind = format!("dev.cdevents.{kind}.0.3.0");
    let identity =
        serde_json::to_vec(&json!({"type": kind, "subject": subject, "timestamp": timestamp}))
            .unwrap_or_default();
    let id = hex::encode(&sha2::Sha256::digest(&identity)[..16]);
    let cdevent = json!({
        "context": {
            "specversion": "0.5.0",
            "id": id,
            "source": CDEVENTS_SOURCE,
            "type": kind,
            "timestamp": timestamp,
        },
        "subject": subject,
    });
    (id, kind, cdevent)
}

/// `source` of the CDEvents `hookgauge send` emits.
pub const CDEVENTS_SOURCE: &str = "/hookgauge/send";

/// Runs `hookgauge send`. Prints the server's answer on stdout.
pub async fn run(args: SendArgs) -> anyhow::Result<SendResult> {
    let default_path = if args.standard_webhooks {
        "/hooks/standard-webhooks"
    } else if args.cdevents {
        "/hooks/cdevents"
    } else {
        "/pelorus/webhook"
    };
    let url = webhook_url(&args.url, default_path)?;
    let secret = read_secret(&args)?;
    let standard_key = match (&secret, args.standard_webhooks) {
        (_, false) => None,
        (Some(secret), true) => Some(
            signature::standard_webhooks_key(secret)
                .context("--standard-webhooks needs a whsec_ secret (whsec_ followed by base64)")?,
        ),
        (None, true) => {
            bail!("--standard-webhooks needs a whsec_ secret (--secret, --secret-file or HOOKGAUGE_SECRET)")
        }
    };
    let (event, payload) = build_payload(&args.event, now_seconds());
    let body = serde_json::to_vec(&payload).context("cannot serialise the payload")?;
    if let Err(problem) = pelorus::parse_event(event, &body) {
        match problem {
            PayloadError::Invalid(problems) => {
                let list: Vec<String> = problems
                    .iter()
                    .map(|p| format!("{}: {}", p.field, p.reason.as_str()))
                    .collect();
                bail!(
                    "the event is invalid and was not sent ({})",
                    list.join(", ")
                );
            }
            PayloadError::Malformed { message } => bail!("the event could not be built: {message}"),
        }
    }
    if args.cdevents
        && matches!(
            &args.event,
            SendEvent::Deploytime {
                commit: Some(_),
                ..
            }
        )
    {
        bail!("--commit cannot be carried by a CDEvent service.deployed; report the commit with committime (artifact.packaged) instead");
    }
    let cloudevent = args.cdevents.then(|| cdevent(&args.event, &payload));
    let body = match &cloudevent {
        Some((_, _, cdevent)) => {
            serde_json::to_vec(cdevent).context("cannot serialise the CDEvent")?
        }
        None => body,
    };
    let client = reqwest::Client::builder()
        .timeout(args.timeout)
        .user_agent(format!(
            "{}hookgauge-send-{}",
            pelorus::USER_AGENT_PREFIX,
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .context("cannot build the HTTP client")?;
    let standard = standard_key.as_ref().map(|key| {
        (
            key,
            standard_message(standard_type(&args.event), &payload, now_seconds()),
        )
    });
    // Built for each attempt: a Standard Webhooks signature covers the
    // attempt's own timestamp.
    let build = || {
        let request = client
            .post(url.clone())
            .header("content-type", "application/json");
        let request = match (&standard, &cloudevent, &secret) {
            (Some((key, (id, message))), _, _) => {
                let now = now_seconds();
                request
                    .header("webhook-id", id.as_str())
                    .header("webhook-timestamp", now.to_string())
                    .header(
                        "webhook-signature",
                        signature::standard_webhooks_sign(key, id, now, message),
                    )
                    .body(message.clone())
            }
            (None, Some((id, kind, cdevent)), secret) => {
                let request = request
                    .header("ce-specversion", "1.0")
                    .header("ce-id", id.as_str())
                    .header("ce-source", CDEVENTS_SOURCE)
                    .header("ce-type", kind.as_str())
                    .header(
                        "ce-time",
                        cdevent["context"]["timestamp"].as_str().unwrap_or_default(),
                    );
                let request = match secret {
                    Some(secret) => request.header(
                        "x-hub-signature-256",
                        format!("sha256={}", signature::sign_hex(secret, &body)),
                    ),
                    None => request,
                };
                request.body(body.clone())
            }
            (None, None, Some(secret)) => request
                .header(pelorus::EVENT_HEADER, event.as_str())
                .header(
                    pelorus::SIGNATURE_HEADER,
                    format!("sha256={}", signature::sign_hex(secret, &body)),
                )
                .body(body.clone()),
            (None, None, None) => request
                .header(pelorus::EVENT_HEADER, event.as_str())
                .body(body.clone()),
        };
        request.build()
    };
    build().context("cannot build the request")?;

    let attempt = || async {
        let request = build().map_err(|e| Attempt::Transient(e.to_string()))?;
        let response = client
            .execute(request)
            .await
            .map_err(|e| Attempt::Transient(format!("{url}: {e}")))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(Attempt::Transient(format!("{status}: {text}")));
        }
        Ok((status, text))
    };
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(args.retries)
        .with_jitter();
    let answer = attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .notify(|Attempt::Transient(why), wait| {
            eprintln!("hookgauge send: attempt failed ({why}); retrying in {wait:.1?}");
        })
        .await;
    match answer {
        Ok((status, text)) => {
            println!("{text}");
            let outcome = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("outcome").and_then(Value::as_str).map(str::to_owned));
            match (status.is_success(), outcome.as_deref()) {
                (true, Some("accepted" | "duplicate")) => Ok(SendResult::Delivered),
                _ => {
                    eprintln!(
                        "hookgauge send: the server answered {status} with outcome {}",
                        outcome.as_deref().unwrap_or("(none)")
                    );
                    Ok(SendResult::Refused)
                }
            }
        }
        Err(Attempt::Transient(why)) => {
            eprintln!(
                "hookgauge send: giving up after {} retries: {why}",
                args.retries
            );
            Ok(SendResult::Undelivered)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_get_the_webhook_path() {
        assert_eq!(
            webhook_url("http://127.0.0.1:8080", "/pelorus/webhook")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/pelorus/webhook"
        );
        assert_eq!(
            webhook_url("https://h.example/custom/path", "/pelorus/webhook")
                .unwrap()
                .as_str(),
            "https://h.example/custom/path"
        );
        assert!(webhook_url("ftp://h.example", "/").is_err());
        assert!(webhook_url("not a url", "/").is_err());
    }

    #[test]
    fn timestamps_default_to_now() {
        let event = SendEvent::Failure {
            app: "a".into(),
            failure_id: "1".into(),
            event: FailureEventArg::Resolved,
            timestamp: None,
        };
        let (kind, payload) = build_payload(&event, 1_700_000_000);
        assert_eq!(kind, PelorusEvent::Failure);
        assert_eq!(payload["timestamp"], 1_700_000_000);
        assert_eq!(payload["failure_event"], "resolved");
    }
}
