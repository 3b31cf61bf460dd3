//! Pull mode (POLLING.md): reads deployments, commits of the tracked
//! branches, incident issues and open pull requests' reviews through the
//! providers' REST APIs, for repositories whose webhooks cannot reach this
//! service, and writes what it finds through the same ledger as webhooks.
//!
//! An API object is mapped by the source plugin's own webhook rules (the
//! objects are the webhooks' objects, or are put in their shape), so a fact
//! seen by both a webhook and a poll is one fact. Every request is
//! conditional on the validators stored for its URL where the provider
//! honours them; validators and watermarks are written in the same
//! transaction as the facts they produced (`Store::record_polled`).
//!
//! Each repository runs its streams on their own schedule ([`run`]): a
//! stream that changed is polled again after a quarter of its mean time
//! between events, one that did not 1.5× later each time, within the
//! configured bounds. Repositories polled with one token share its gate
//! ([`api::TokenGate`]): one request in flight, the provider's quota and
//! this service's share of it.

mod api;
mod clock;
mod error;
mod forge;
mod gitea;
mod github;
mod gitlab;
mod recorder;
mod reviews;
mod schedule;
mod settings;
mod streams;
mod watermark;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use api::{token_gates, TokenGate};
pub use clock::Clock;
pub use error::{Failure, PollError, Refusal};
pub use gitea::GiteaPoller;
pub use github::GithubPoller;
pub use gitlab::GitlabPoller;
pub use recorder::Recorder;
pub use schedule::{budget_floor, Outcome, Schedule, Stream};
pub use settings::{PollTarget, Provider, RawPoll, RawTarget, TokenSource};

/// The [`Poller`] methods that a poller with the fields `target`
/// ([`PollTarget`]), `rec` ([`Recorder`]) and `api` (its `Api`) answers
/// from them, for its `impl Poller`; its streams are polled as
/// `streams::poll_stream` does for every provider, through its `Streams`.
macro_rules! poller_parts {
    () => {
        fn target(&self) -> &$crate::poll::PollTarget {
            &self.target
        }

        fn recorder(&self) -> &$crate::poll::Recorder {
            &self.rec
        }

        fn gate(&self) -> &std::sync::Arc<$crate::poll::TokenGate> {
            self.api.gate()
        }

        fn take_poll_interval_hint(&mut self) -> Option<std::time::Duration> {
            self.api.take_hint()
        }

        async fn poll_stream(
            &mut self,
            stream: $crate::poll::Stream,
        ) -> Result<bool, $crate::poll::PollError> {
            $crate::poll::streams::poll_stream(self, stream).await
        }
    };
}
use poller_parts;

/// `new` and `with_clock` of a provider's poller: its own fields (their
/// values may read `$target` before it moves), then the parts every poller
/// has: the target, its API client and its recorder.
macro_rules! poller_new {
    ($poller:ident, $target:ident, { $($field:ident: $value:expr),* $(,)? }) => {
        impl $poller {
            pub fn new(
                $target: $crate::poll::PollTarget,
                gate: std::sync::Arc<$crate::poll::TokenGate>,
                store: $crate::store::Store,
                ledger: $crate::store::deliveries::Ledger,
                metrics: std::sync::Arc<$crate::metrics::Metrics>,
            ) -> Self {
                let api = $crate::poll::api::Api::new(&$target, gate, std::sync::Arc::clone(&metrics));
                $poller {
                    $($field: $value,)*
                    target: $target,
                    api,
                    rec: $crate::poll::Recorder::new(store, ledger, metrics),
                }
            }

            /// Paces and computes on `clock` rather than the system's (the
            /// benchmark's simulated day).
            pub fn with_clock(mut self, clock: $crate::poll::Clock) -> Self {
                self.api.set_clock(clock);
                self
            }
        }
    };
}
use poller_new;

/// A repository's poller: its streams, each polled on its own.
pub trait Poller: Send {
    fn target(&self) -> &PollTarget;

    fn recorder(&self) -> &Recorder;

    fn gate(&self) -> &Arc<TokenGate>;

    /// Polls one stream and records what it read; `Ok(true)` when something
    /// changed.
    fn poll_stream(
        &mut self,
        stream: Stream,
    ) -> impl Future<Output = Result<bool, PollError>> + Send;

    /// The shortest wait the provider asked for before the next poll of
    /// what the last stream read (`X-Poll-Interval`), taken once.
    fn take_poll_interval_hint(&mut self) -> Option<Duration>;

    /// Every stream once, in order (tests and the benchmark step polls with
    /// it); the first error is returned after the other streams ran.
    fn poll_once(&mut self) -> impl Future<Output = Result<bool, PollError>> + Send
    where
        Self: Sized,
    {
        async move {
            let mut changed = false;
            let mut first_error = None;
            for stream in self.target().provider.streams() {
                match self.poll_stream(*stream).await {
                    Ok(c) => changed |= c,
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            match first_error {
                Some(e) => Err(e),
                None => Ok(changed),
            }
        }
    }
}

/// Polls `poller`'s streams on their [`Schedule`] until the task is
/// aborted, the first after `start` (spreading repositories over one
/// interval, POLLING.md §6 step 1).
pub async fn run<P: Poller>(mut poller: P, start: Duration) {
    let target = poller.target().clone();
    let repo = target.repo.as_str();
    let metrics = Arc::clone(&poller.recorder().metrics);
    let app = target.app();
    let mut means = std::collections::BTreeMap::new();
    for stream in target.provider.streams() {
        if let Some(kind) = stream.event_kind() {
            means.insert(
                *stream,
                poller.recorder().mean_interval(app.clone(), kind).await,
            );
        }
    }
    let mut schedule = Schedule::new(&target, start, |s| means.get(&s).copied().flatten());
    let epoch = tokio::time::Instant::now();
    let degraded = metrics.poll_degraded.with_label_values(&[repo]);
    let backoff_gauge = metrics.poll_backoff.with_label_values(&[repo]);
    loop {
        let (stream, due) = schedule.next();
        tokio::time::sleep_until(epoch + due).await;
        let result = poller.poll_stream(stream).await;
        let mean = match (&result, stream.event_kind()) {
            (Ok(true), Some(kind)) => poller.recorder().mean_interval(app.clone(), kind).await,
            _ => None,
        };
        if let Some(mean) = mean {
            poller.gate().set_weight(repo, mean).await;
        }
        match &result {
            Ok(_) => metrics
                .poll_last_success
                .with_label_values(&[repo])
                .set(crate::clock::now_seconds() as f64),
            Err(PollError::RateLimited { .. }) => {
                tracing::warn!(
                    repo,
                    stream = stream.name(),
                    "Rate limited: waiting for the reset"
                )
            }
            Err(PollError::Transient(error)) => {
                tracing::warn!(
                    repo,
                    stream = stream.name(),
                    error = %error,
                    "Poll failed; backing off"
                )
            }
            Err(error @ (PollError::Refused(_) | PollError::Gone { .. })) => {
                tracing::error!(
                    repo,
                    stream = stream.name(),
                    error = %error,
                    "Poll refused; retrying at the longest interval"
                )
            }
        }
        let hint = poller.take_poll_interval_hint();
        let floor = budget_floor(&target, poller.gate()).await;
        schedule.record(
            stream,
            epoch.elapsed(),
            Outcome::of(&result, mean, crate::clock::now_seconds()),
            hint,
            floor,
        );
        degraded.set(i64::from(schedule.degraded()));
        backoff_gauge.set(schedule.backoff().as_secs_f64());
    }
}
