//! The review-wait scenario, the same on every provider (POLLING.md §5):
//! one table, one stepped poller per provider against its fake. Of four
//! open pull (merge) requests against `main`, #1 waits since its creation
//! three days ago, #2 since it was marked ready half an hour ago, #3 is a
//! draft and #4 was reviewed by someone else; then someone reviews #1 and
//! the next poll clears its wait. What only one provider does (GitHub's
//! 304s and stored waits, Gitea's work-in-progress titles and review
//! requests, GitLab's reviewers) is tested in that provider's file.

use std::future::Future;
use std::pin::Pin;

use hookgauge::poll::{Clock, GiteaPoller, GithubPoller, GitlabPoller, Poller, Provider, Stream};
use serde_json::json;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::now;
use crate::polling::{awaiting_of, requests_to, rfc3339, waits_of, NewPoller, Rig};

const DAY: i64 = 86_400;

/// What the test does to the fake: someone other than its author reviews
/// #1, which bumps its `updated_at`.
type Review = Box<dyn Fn() + Send>;

/// Serves the scenario on a fake at `t` (epoch seconds).
type Mount = for<'a> fn(&'a MockServer, i64) -> Pin<Box<dyn Future<Output = Review> + 'a>>;

/// One provider's row.
struct Case {
    provider: Provider,
    /// The API's path on the fake.
    api_path: &'static str,
    token: &'static str,
    mount: Mount,
    /// The path a pull request's reviews are read at, and its ready time.
    reviews: fn(u64) -> String,
    ready: fn(u64) -> String,
}

const CASES: &[Case] = &[
    Case {
        provider: Provider::Github,
        api_path: "",
        token: crate::poll::TOKEN,
        mount: |server, t| Box::pin(mount_github(server, t)),
        reviews: |n| format!("/pulls/{n}/reviews"),
        ready: |n| format!("/issues/{n}/timeline"),
    },
    Case {
        provider: Provider::Gitea,
        api_path: "/api/v1",
        token: crate::poll_gitea::TOKEN,
        mount: |server, t| Box::pin(mount_gitea(server, t)),
        reviews: |n| format!("/pulls/{n}/reviews"),
        ready: |n| format!("/issues/{n}/timeline"),
    },
    Case {
        provider: Provider::Gitlab,
        api_path: "/api/v4",
        token: crate::poll_gitlab::TOKEN,
        mount: |server, t| Box::pin(mount_gitlab(server, t)),
        reviews: |n| format!("/merge_requests/{n}/approvals"),
        ready: |n| format!("/merge_requests/{n}/notes"),
    },
];

async fn scenario<P: Poller>(case: &Case, new: NewPoller<P>, with_clock: fn(P, Clock) -> P) {
    let name = case.provider.name();
    let server = MockServer::start().await;
    let t = now();
    let review_first = (case.mount)(&server, t).await;
    let rig = Rig::start().await;
    let api_url = format!("{}{}", server.uri(), case.api_path);
    let mut poller = rig.shop_poller(case.provider, &api_url, case.token, new, with_clock);
    let polled = poller.poll(&rig, Stream::PullRequests).await;
    assert!(matches!(polled, Ok(true)), "{name}: {polled:?}");
    let scrape = rig.scrape();
    assert_eq!(awaiting_of(&scrape), 2.0, "{name}");
    let first = waits_of(&scrape);
    let numbers: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(numbers, ["1", "2"], "{name}: {first:?}");
    // Within a few seconds: the rig's clock runs ahead of the fake's
    // `Date` by the pacing it simulates.
    let days = 3.0 * DAY as f64;
    assert!(
        (days - 5.0..days + 60.0).contains(&first[0].1),
        "{name}: #1 waits since its creation: {first:?}"
    );
    assert!(
        (1795.0..1860.0).contains(&first[1].1),
        "{name}: #2 waits since it was last marked ready: {first:?}"
    );
    let count = |suffix: String| {
        let server = &server;
        async move { requests_to(server, &suffix).await.len() }
    };
    // A draft's reviews and ready time are not read; each ready one's once.
    for (n, reads) in [(1, 1), (2, 1), (3, 0), (4, 1)] {
        assert_eq!(count((case.reviews)(n)).await, reads, "{name}: #{n}");
        assert_eq!(count((case.ready)(n)).await, reads, "{name}: #{n}");
    }

    // #1 is reviewed: the next poll clears its wait; only its reviews are
    // read again, its ready time is kept.
    review_first();
    let polled = poller.poll(&rig, Stream::PullRequests).await;
    assert!(polled.is_ok(), "{name}: {polled:?}");
    let scrape = rig.scrape();
    assert_eq!(awaiting_of(&scrape), 1.0, "{name}");
    let second = waits_of(&scrape);
    assert_eq!(second.len(), 1, "{name}: {second:?}");
    assert_eq!(second[0].0, "2", "{name}");
    for (n, reads) in [(1, 2), (2, 1), (3, 0), (4, 1)] {
        assert_eq!(count((case.reviews)(n)).await, reads, "{name}: #{n}");
    }
    assert_eq!(
        count((case.ready)(1)).await,
        1,
        "{name}: its ready time is kept"
    );
    rig.shutdown().await;
}

#[tokio::test]
async fn review_waits_are_gauged_until_someone_reviews_on_every_provider() {
    scenario(&CASES[0], GithubPoller::new, GithubPoller::with_clock).await;
    scenario(&CASES[1], GiteaPoller::new, GiteaPoller::with_clock).await;
    scenario(&CASES[2], GitlabPoller::new, GitlabPoller::with_clock).await;
}

async fn mount_github(server: &MockServer, t: i64) -> Review {
    use crate::poll::{mount_listing, mount_quiet_streams, pull, review, Listing};
    let pulls = Listing::new(json!([
        pull(1, "ann", t - 3 * DAY, t - 3 * DAY, false),
        pull(2, "cat", t - 2 * DAY, t - 3600, false),
        pull(3, "ann", t - 5 * DAY, t - 5 * DAY, true),
        pull(4, "dan", t - 2 * DAY, t - 2 * DAY, false),
    ]));
    mount_listing(server, "/repos/acme/shop/pulls", &pulls).await;
    let reviews_of_1 = Listing::new(json!([]));
    mount_listing(server, "/repos/acme/shop/pulls/1/reviews", &reviews_of_1).await;
    // The author's own comment is no review; nor is one from before #2 was
    // last marked ready.
    let reviews_of_2 = Listing::new(json!([
        review(20, "cat", "COMMENTED", t - 600),
        review(21, "bob", "APPROVED", t - 2 * DAY + 60),
    ]));
    mount_listing(server, "/repos/acme/shop/pulls/2/reviews", &reviews_of_2).await;
    let reviews_of_4 = Listing::new(json!([review(40, "eve", "COMMENTED", t - DAY)]));
    mount_listing(server, "/repos/acme/shop/pulls/4/reviews", &reviews_of_4).await;
    let ready_2 = Listing::new(json!([
        {"event": "convert_to_draft", "created_at": rfc3339(t - 2 * DAY + 120)},
        {"event": "ready_for_review", "created_at": rfc3339(t - 1800)},
    ]));
    mount_listing(server, "/repos/acme/shop/issues/2/timeline", &ready_2).await;
    Mock::given(method("GET"))
        .and(path_regex(r"^/repos/acme/shop/issues/[0-9]+/timeline$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(server)
        .await;
    mount_quiet_streams(server).await;
    Box::new(move || {
        reviews_of_1.set(json!([review(10, "bob", "COMMENTED", now())]));
        pulls.set(json!([
            pull(1, "ann", t - 3 * DAY, now(), false),
            pull(2, "cat", t - 2 * DAY, t - 3600, false),
            pull(3, "ann", t - 5 * DAY, t - 5 * DAY, true),
            pull(4, "dan", t - 2 * DAY, t - 2 * DAY, false),
        ]));
    })
}

async fn mount_gitea(server: &MockServer, t: i64) -> Review {
    use crate::poll_gitea::{pull, review, FakeGitea};
    let fake = FakeGitea::start(server).await;
    fake.with(|repo| {
        let mut draft = pull(3, "new search", "ann", "main", t - 5 * DAY, t - 5 * DAY);
        draft["draft"] = json!(true);
        repo.pulls = vec![
            pull(
                1,
                "faster checkout",
                "ann",
                "main",
                t - 3 * DAY,
                t - 3 * DAY,
            ),
            pull(2, "cart rework", "cat", "main", t - 2 * DAY, t - 3600),
            draft,
            pull(4, "docs", "dan", "main", t - 2 * DAY, t - 2 * DAY),
        ];
        // #2 was opened as work in progress and made ready 30 minutes ago.
        repo.timelines.insert(
            2,
            vec![
                json!({"id": 1, "type": "change_title", "old_title": "WIP: cart rework",
                        "new_title": "cart rework", "created_at": rfc3339(t - 1800),
                        "user": {"login": "cat"}}),
            ],
        );
        repo.reviews.insert(
            2,
            vec![
                review(20, "cat", "COMMENT", t - 600),
                review(21, "bob", "APPROVED", t - 2 * DAY + 60),
            ],
        );
        repo.reviews
            .insert(4, vec![review(40, "eve", "COMMENT", t - DAY)]);
    });
    Box::new(move || {
        fake.with(|repo| {
            repo.reviews
                .insert(1, vec![review(10, "bob", "APPROVED", now())]);
            repo.pulls[0]["updated_at"] = json!(rfc3339(now()));
        })
    })
}

async fn mount_gitlab(server: &MockServer, t: i64) -> Review {
    use crate::poll_gitlab::{
        approvals, gitlab_time, merge_request, mount, mount_quiet_project, List, Object, PROJECT,
    };
    let mrs = List::new(
        server,
        vec![
            merge_request(1, "ann", t - 3 * DAY, t - 3 * DAY, false, &[]),
            merge_request(2, "cat", t - 2 * DAY, t - 1800, false, &[]),
            merge_request(3, "ann", t - 5 * DAY, t - 5 * DAY, true, &[]),
            merge_request(4, "dan", t - 2 * DAY, t - 2 * DAY, false, &[]),
        ],
    );
    mount(server, &format!("{PROJECT}/merge_requests"), mrs.clone()).await;
    let (approvals_1, approvals_of_1) = Object::new(approvals(&[]));
    mount(
        server,
        &format!("{PROJECT}/merge_requests/1/approvals"),
        approvals_1,
    )
    .await;
    // The author's own approval is no review; nor is one from before !2
    // was last marked ready.
    for (iid, by) in [
        (2, vec![("cat", t - 600), ("bob", t - 2 * DAY + 60)]),
        (4, vec![("eve", t - DAY)]),
    ] {
        mount(
            server,
            &format!("{PROJECT}/merge_requests/{iid}/approvals"),
            Object::new(approvals(&by)).0,
        )
        .await;
    }
    let note = |body: &str, at: i64| json!({"id": at, "body": body, "system": true, "created_at": gitlab_time(at), "author": {"username": "cat"}});
    let notes_2 = List::new(
        server,
        vec![
            note("marked this merge request as **ready**", t - 1800),
            note("marked this merge request as **draft**", t - 2 * DAY + 120),
        ],
    );
    mount(
        server,
        &format!("{PROJECT}/merge_requests/2/notes"),
        notes_2,
    )
    .await;
    Mock::given(method("GET"))
        .and(path_regex(
            r"^/api/v4/projects/42/merge_requests/[0-9]+/notes$",
        ))
        .respond_with(List::new(server, Vec::new()))
        .mount(server)
        .await;
    mount_quiet_project(server).await;
    Box::new(move || {
        *approvals_of_1.lock().unwrap() = approvals(&[("bob", now())]);
        let mut items = mrs.items.lock().unwrap().clone();
        items[0]["updated_at"] = json!(gitlab_time(now()));
        mrs.set(items);
    })
}
