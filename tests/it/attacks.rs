//! The signature attack suite: for every source and scheme, forged,
//! truncated, re-cased, downgraded, duplicated, oversized or misplaced
//! credentials are refused with 401, record no event and keep no body.

use base64::Engine as _;
use serde_json::json;

use crate::harness::{
    hmac_hex, spawn_app_with, standard_signature_with, whsec_key, Reply, TestApp, SECRET, WHSEC,
};
use crate::sources::post;

fn sha1_hex(secret: &[u8], body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

async fn spawn() -> TestApp {
    spawn_app_with(|raw| {
        raw.sources.pelorus.secrets = vec![SECRET.into()];
        raw.sources.pelorus.lenient_signatures = false;
        // Every refusal gets its row here (the flood limit is tested apart).
        raw.store.max_unauthenticated_per_second = 10_000;
        let native = &mut raw.sources.native;
        for source in [
            "github",
            "gitea",
            "bitbucket",
            "bitbucket-datacenter",
            "jira",
            "pagerduty",
        ] {
            native.insert(source.into(), json!({"secrets": [SECRET]}));
        }
        for source in [
            "gitlab",
            "azure-devops",
            "opsgenie",
            "argocd",
            "jenkins",
            "tekton",
        ] {
            native.insert(source.into(), json!({"secrets": [SECRET]}));
        }
        native.insert("standard-webhooks".into(), json!({"secrets": [WHSEC]}));
    })
    .await
}

/// A hex-HMAC source: its path, event headers, signature header and prefix.
struct HmacSource {
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    signature: &'static str,
    prefix: &'static str,
}

const HMAC_SOURCES: &[HmacSource] = &[
    HmacSource {
        path: "/pelorus/webhook",
        headers: &[
            ("X-Pelorus-Event", "deploytime"),
            ("User-Agent", "Pelorus-Webhook/test"),
        ],
        signature: "X-Hub-Signature-256",
        prefix: "sha256=",
    },
    HmacSource {
        path: "/hooks/github",
        headers: &[
            ("X-GitHub-Event", "deployment_status"),
            ("X-GitHub-Delivery", "a"),
        ],
        signature: "X-Hub-Signature-256",
        prefix: "sha256=",
    },
    HmacSource {
        path: "/hooks/gitea",
        headers: &[("X-Gitea-Event", "push"), ("X-Gitea-Delivery", "a")],
        signature: "X-Gitea-Signature",
        prefix: "",
    },
    HmacSource {
        path: "/hooks/bitbucket",
        headers: &[("X-Event-Key", "repo:push"), ("X-Request-UUID", "a")],
        signature: "X-Hub-Signature",
        prefix: "sha256=",
    },
    HmacSource {
        path: "/hooks/bitbucket-datacenter",
        headers: &[("X-Event-Key", "repo:refs_changed"), ("X-Request-Id", "a")],
        signature: "X-Hub-Signature",
        prefix: "sha256=",
    },
    HmacSource {
        path: "/hooks/jira",
        headers: &[("X-Atlassian-Webhook-Identifier", "a")],
        signature: "X-Hub-Signature",
        prefix: "sha256=",
    },
    HmacSource {
        path: "/hooks/pagerduty",
        headers: &[("X-Webhook-Id", "a")],
        signature: "X-PagerDuty-Signature",
        prefix: "v1=",
    },
];

/// Headers as sent: name, value.
type Headers = Vec<(String, String)>;

const BODY: &[u8] = br#"{"app":"shop","image_sha":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","namespace":"prod","timestamp":1700000000}"#;

async fn send(app: &TestApp, path: &str, headers: &[(String, String)], body: &[u8]) -> Reply {
    post(app, path, headers, body).await
}

fn with(base: &[(&str, &str)], extra: &[(&str, String)]) -> Vec<(String, String)> {
    base.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(extra.iter().map(|(k, v)| (k.to_string(), v.clone())))
        .collect()
}

#[tokio::test]
async fn every_forged_credential_is_refused_without_a_trace() {
    let app = spawn().await;
    let good = hmac_hex(SECRET.as_bytes(), BODY);
    let mut refused = 0;
    for source in HMAC_SOURCES {
        let h = |value: String| with(source.headers, &[(source.signature, value)]);
        let p = source.prefix;
        let mut trailing = BODY.to_vec();
        trailing.extend_from_slice(b" \n");
        let cases: Vec<(&str, Headers, Vec<u8>)> = vec![
            (
                "wrong secret",
                h(format!("{p}{}", hmac_hex(b"not-the-secret", BODY))),
                BODY.to_vec(),
            ),
            (
                "empty secret",
                h(format!("{p}{}", hmac_hex(b"", BODY))),
                BODY.to_vec(),
            ),
            ("truncated", h(format!("{p}{}", &good[..63])), BODY.to_vec()),
            (
                "upper-case hex",
                h(format!("{p}{}", good.to_uppercase())),
                BODY.to_vec(),
            ),
            (
                "sha1 downgrade",
                h(format!("sha1={}", sha1_hex(SECRET.as_bytes(), BODY))),
                BODY.to_vec(),
            ),
            (
                "other body",
                h(format!("{p}{}", hmac_hex(SECRET.as_bytes(), b"{}"))),
                BODY.to_vec(),
            ),
            ("trailing bytes", h(format!("{p}{good}")), trailing),
            (
                "oversized",
                h(format!("{p}{}", good.repeat(200))),
                BODY.to_vec(),
            ),
            ("missing", with(source.headers, &[]), BODY.to_vec()),
            (
                "valid, then forged in a second header",
                with(
                    source.headers,
                    &[
                        (source.signature, format!("{p}{good}")),
                        (source.signature, format!("{p}{}", "1".repeat(64))),
                    ],
                ),
                BODY.to_vec(),
            ),
            (
                "forged, then valid in a second header",
                with(
                    source.headers,
                    &[
                        (source.signature, format!("{p}{}", "0".repeat(64))),
                        (source.signature, format!("{p}{good}")),
                    ],
                ),
                BODY.to_vec(),
            ),
        ];
        let mut cases = cases;
        if !p.is_empty() {
            cases.push(("prefix missing", h(good.clone()), BODY.to_vec()));
        }
        for (what, headers, body) in cases {
            let reply = send(&app, source.path, &headers, &body).await;
            assert_eq!(reply.status, 401, "{} {what}: {}", source.path, reply.text);
            refused += 1;
        }
    }
    // GitHub's legacy SHA-1 header alone, not enabled here.
    let github = HMAC_SOURCES[1].headers;
    let sha1_only = with(
        github,
        &[(
            "X-Hub-Signature",
            format!("sha1={}", sha1_hex(SECRET.as_bytes(), BODY)),
        )],
    );
    assert_eq!(
        send(&app, "/hooks/github", &sha1_only, BODY).await.status,
        401
    );
    refused += 1;

    // Tokens and passwords: wrong, empty, a prefix of the secret, padded,
    // the wrong scheme, repeated.
    let basic = |user_password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_password)
        )
    };
    let token_cases: Vec<(&str, &str, Headers)> = vec![
        (
            "/hooks/gitlab",
            "wrong",
            with(
                &[("X-Gitlab-Event", "Push Hook")],
                &[("X-Gitlab-Token", "wrong".into())],
            ),
        ),
        (
            "/hooks/gitlab",
            "empty",
            with(
                &[("X-Gitlab-Event", "Push Hook")],
                &[("X-Gitlab-Token", "".into())],
            ),
        ),
        (
            "/hooks/gitlab",
            "prefix",
            with(
                &[("X-Gitlab-Event", "Push Hook")],
                &[("X-Gitlab-Token", SECRET[..10].into())],
            ),
        ),
        (
            "/hooks/gitlab",
            "suffixed",
            with(
                &[("X-Gitlab-Event", "Push Hook")],
                &[("X-Gitlab-Token", format!("{SECRET}x"))],
            ),
        ),
        (
            "/hooks/gitlab",
            "repeated",
            with(
                &[("X-Gitlab-Event", "Push Hook")],
                &[
                    ("X-Gitlab-Token", SECRET.into()),
                    ("X-Gitlab-Token", "x".into()),
                ],
            ),
        ),
        (
            "/hooks/argocd",
            "wrong bearer",
            with(&[], &[("Authorization", "Bearer wrong".into())]),
        ),
        (
            "/hooks/argocd",
            "empty bearer",
            with(&[], &[("Authorization", "Bearer ".into())]),
        ),
        (
            "/hooks/argocd",
            "other scheme",
            with(&[], &[("Authorization", format!("Token {SECRET}"))]),
        ),
        (
            "/hooks/opsgenie",
            "bare secret",
            with(&[], &[("Authorization", SECRET.into())]),
        ),
        (
            "/hooks/azure-devops",
            "wrong password",
            with(&[], &[("Authorization", basic("u:wrong"))]),
        ),
        (
            "/hooks/azure-devops",
            "no colon",
            with(&[], &[("Authorization", basic(SECRET))]),
        ),
        (
            "/hooks/jenkins",
            "password as user",
            with(&[], &[("Authorization", basic(&format!("{SECRET}:")))]),
        ),
        (
            "/hooks/tekton?token=wrong",
            "wrong query token",
            with(&[("Ce-Type", "x")], &[]),
        ),
        (
            "/hooks/tekton",
            "no query token",
            with(&[("Ce-Type", "x")], &[]),
        ),
        (
            "/hooks/tekton?token=",
            "empty query token",
            with(&[("Ce-Type", "x")], &[]),
        ),
    ];
    for (path, what, headers) in token_cases {
        let reply = send(&app, path, &headers, BODY).await;
        assert_eq!(reply.status, 401, "{path} {what}: {}", reply.text);
        refused += 1;
    }

    // Standard Webhooks: well outside the ±300 s window either way (by
    // 100 s, so that a slow run cannot bring a case back inside), a forged or
    // truncated signature, an id with a dot, a missing header.
    let sign =
        |id: &str, ts: i64, body: &[u8], key: &[u8]| standard_signature_with(key, id, ts, body);
    let key = whsec_key();
    let now = crate::harness::now();
    let sw = |id: &str, ts: i64, signature: String| {
        vec![
            ("webhook-id".to_owned(), id.to_owned()),
            ("webhook-timestamp".to_owned(), ts.to_string()),
            ("webhook-signature".to_owned(), signature),
        ]
    };
    let sw_cases = vec![
        (
            "stale",
            sw("m1", now - 400, sign("m1", now - 400, BODY, &key)),
        ),
        (
            "future",
            sw("m2", now + 400, sign("m2", now + 400, BODY, &key)),
        ),
        (
            "wrong key",
            sw("m3", now, sign("m3", now, BODY, b"other key")),
        ),
        (
            "other id signed",
            sw("m4", now, sign("m5", now, BODY, &key)),
        ),
        (
            "truncated",
            sw("m6", now, sign("m6", now, BODY, &key)[..20].to_owned()),
        ),
        ("dotted id", sw("m.7", now, sign("m.7", now, BODY, &key))),
        ("v1a only", sw("m8", now, "v1a,AAAA".into())),
        ("missing", vec![("webhook-id".to_owned(), "m9".to_owned())]),
    ];
    for (what, headers) in sw_cases {
        let reply = send(&app, "/hooks/standard-webhooks", &headers, BODY).await;
        assert_eq!(
            reply.status, 401,
            "standard-webhooks {what}: {}",
            reply.text
        );
        refused += 1;
    }

    // Nothing was recorded but the refusals, and no refused body was kept.
    let rows = app.ledger();
    assert_eq!(rows.len(), refused, "one ledger row per refusal");
    assert!(rows.iter().all(|r| r.outcome == "rejected"), "{rows:?}");
    assert!(
        rows.iter().all(|r| r.body.is_none()),
        "no refused body kept"
    );
    for table in ["commits", "deploys", "failures", "links"] {
        assert_eq!(
            app.count(&format!("SELECT COUNT(*) FROM {table}")),
            0,
            "{table}"
        );
    }
    // And no response or ledger row carries the secret.
    for row in &rows {
        assert!(!format!("{row:?}").contains(SECRET));
    }
    app.shutdown().await;
}
