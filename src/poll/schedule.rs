//! When each stream of a repository is polled next: the interval after a
//! change or an unchanged poll, the floors (configured, `X-Poll-Interval`,
//! budget), and the backoff after limits, failures and refusals
//! (POLLING.md §6 steps 7 to 9). Decides times only; never polls.

use std::time::Duration;

use super::api::TokenGate;
use super::error::PollError;
use super::settings::{PollTarget, Provider};

/// After a change, the next poll comes after this share of the mean time
/// between the stream's events (POLLING.md §6 step 7: about four polls per
/// expected event).
const ALPHA: f64 = 0.25;
/// The first interval of a stream with fewer than two events to go by.
const QUIET_START: Duration = Duration::from_secs(5 * 60);
/// The longest a review stream waits, whatever `max_interval` says.
const REVIEW_MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// The longest a failing repository waits between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Failures (or refusals) in a row after which a repository is degraded:
/// retried at its longest interval only.
const DEGRADED_AFTER: u32 = 5;

/// One kind of fact a poller reads, scheduled on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stream {
    Deployments,
    Incidents,
    Commits,
    PullRequests,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Deployments => "deployments",
            Stream::Incidents => "incidents",
            Stream::Commits => "commits",
            Stream::PullRequests => "pull_requests",
        }
    }

    /// The event kind whose mean interval schedules the stream.
    pub fn event_kind(self) -> Option<&'static str> {
        match self {
            Stream::Deployments => Some("deploy"),
            Stream::Incidents => Some("failure_created"),
            Stream::Commits => Some("commit"),
            Stream::PullRequests => None,
        }
    }

    /// What the stream reads from `provider`, for `check-config`.
    pub(in crate::poll) fn describe(self, provider: Provider) -> &'static str {
        match (self, provider) {
            (Stream::Deployments, Provider::Gitlab) => "successful deployments",
            (Stream::Deployments, _) => "deployments and their statuses",
            (Stream::Incidents, _) => "incident issues",
            (Stream::Commits, _) => "commits",
            (Stream::PullRequests, Provider::Gitlab) => "open merge requests' reviews",
            (Stream::PullRequests, _) => "open pull requests' reviews",
        }
    }
}

/// One stream's place in its repository's schedule.
#[derive(Debug, Clone)]
struct Slot {
    stream: Stream,
    interval: Duration,
    /// Since the schedule's start.
    due: Duration,
    /// The provider's last `X-Poll-Interval` for it.
    hint: Option<Duration>,
    /// Its last poll was refused.
    refused: bool,
}

/// How a stream's poll went, as the schedule needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Something changed; `mean` is the stream's mean time between events
    /// now, if known.
    Changed {
        mean: Option<Duration>,
    },
    Unchanged,
    /// Nothing may be sent for `wait`.
    RateLimited {
        wait: Duration,
    },
    Transient,
    /// A refusal that needs a person (permissions, a revoked token, a
    /// deleted repository).
    Refused,
}

impl Outcome {
    /// The outcome of a stream's poll at `now` (epoch seconds, the
    /// poller's clock), `mean` its stream's mean time between events after
    /// a change.
    pub fn of(result: &Result<bool, PollError>, mean: Option<Duration>, now: i64) -> Outcome {
        match result {
            Ok(true) => Outcome::Changed { mean },
            Ok(false) => Outcome::Unchanged,
            Err(PollError::RateLimited { until }) => Outcome::RateLimited {
                wait: Duration::from_secs((until - now).max(0) as u64),
            },
            Err(PollError::Transient(_)) => Outcome::Transient,
            Err(PollError::Refused(_) | PollError::Gone { .. }) => Outcome::Refused,
        }
    }
}

/// When each stream of one repository is polled next (POLLING.md §6 steps
/// 7 and 9), on a clock of the caller's (durations since its start): the
/// service runs it on tokio's clock, the benchmark on a simulated one.
///
/// After a change a stream waits `α·g` (`g` its mean time between events;
/// 5 min while fewer than two are known), after an unchanged poll 1.5× its
/// last wait, always within `[floor, max]` with ±10 % jitter; the floor is
/// the configured interval, the provider's `X-Poll-Interval` for the stream
/// and the budget floor. A rate limit holds every stream until it passes
/// (repeats back off); transient failures back off with full jitter; after
/// [`DEGRADED_AFTER`] failures or limits in a row the repository is
/// degraded and polled at its longest interval until a poll succeeds. A
/// refused stream (permissions, a deleted repository) is retried at its
/// longest interval and keeps the repository degraded until it succeeds.
#[derive(Debug, Clone)]
pub struct Schedule {
    slots: Vec<Slot>,
    interval: Duration,
    max_interval: Duration,
    failures: u32,
    limited: u32,
    degraded: bool,
    backoff: Duration,
}

impl Schedule {
    /// Every stream of `target` due at `start`; `mean` gives a stream's
    /// mean time between events, if known.
    pub fn new(
        target: &PollTarget,
        start: Duration,
        mean: impl Fn(Stream) -> Option<Duration>,
    ) -> Schedule {
        let slots = target
            .provider
            .streams()
            .iter()
            .map(|stream| Slot {
                stream: *stream,
                interval: mean(*stream).map_or(QUIET_START, |g| g.mul_f64(ALPHA)),
                due: start,
                hint: None,
                refused: false,
            })
            .collect();
        Schedule {
            slots,
            interval: target.interval,
            max_interval: target.max_interval,
            failures: 0,
            limited: 0,
            degraded: false,
            backoff: Duration::ZERO,
        }
    }

    /// The stream due first, and when.
    pub fn next(&self) -> (Stream, Duration) {
        let slot = self
            .slots
            .iter()
            .min_by_key(|s| s.due)
            .expect("a provider has streams");
        (slot.stream, slot.due)
    }

    /// Whether the repository is degraded: failing or limited again and
    /// again, or a stream refused.
    pub fn degraded(&self) -> bool {
        self.degraded || self.slots.iter().any(|s| s.refused)
    }

    /// The wait the last failure or limit imposed; zero after a success.
    pub fn backoff(&self) -> Duration {
        self.backoff
    }

    /// The longest `stream` may wait.
    fn max(&self, stream: Stream) -> Duration {
        match stream {
            Stream::PullRequests => self.max_interval.max(REVIEW_MAX_INTERVAL),
            _ => self.max_interval,
        }
    }

    /// Records how `stream`'s poll at `now` went and schedules it (or, for
    /// a rate limit, every stream) again. `hint` is the provider's
    /// `X-Poll-Interval`, if the answers carried one; `budget_floor` the
    /// shortest interval the budget allows.
    pub fn record(
        &mut self,
        stream: Stream,
        now: Duration,
        outcome: Outcome,
        hint: Option<Duration>,
        budget_floor: Duration,
    ) {
        let max = self.max(stream);
        let interval = self.interval;
        let Some(slot) = self.slots.iter_mut().find(|s| s.stream == stream) else {
            return;
        };
        if hint.is_some() {
            slot.hint = hint;
        }
        let floor = interval
            .max(slot.hint.unwrap_or_default())
            .max(budget_floor)
            .min(max);
        match outcome {
            Outcome::Changed { .. } | Outcome::Unchanged => {
                self.failures = 0;
                self.limited = 0;
                self.degraded = false;
                self.backoff = Duration::ZERO;
                slot.refused = false;
                slot.interval = match outcome {
                    Outcome::Changed { mean: Some(g) } => g.mul_f64(ALPHA),
                    Outcome::Changed { mean: None } => interval,
                    _ => slot.interval.mul_f64(1.5),
                }
                .clamp(floor, max);
                slot.due = now + jitter(slot.interval, 0.1);
            }
            Outcome::RateLimited { wait } => {
                // Until the reset; an answer that keeps refusing past it
                // backs off.
                self.limited += 1;
                let least = if self.limited > 1 {
                    backoff(self.limited)
                } else {
                    Duration::from_secs(1)
                };
                let mut wait = wait
                    .max(least)
                    .clamp(Duration::from_secs(1), Duration::from_secs(65 * 60));
                if self.limited >= DEGRADED_AFTER {
                    self.degraded = true;
                    wait = wait.max(max);
                }
                self.backoff = wait;
                for slot in &mut self.slots {
                    slot.due = slot.due.max(now + wait);
                }
            }
            Outcome::Transient => {
                self.failures += 1;
                let mut wait = backoff(self.failures).mul_f64(rand_unit());
                if self.failures >= DEGRADED_AFTER {
                    self.degraded = true;
                    wait = wait.max(max);
                }
                self.backoff = wait;
                slot.due = now + wait;
            }
            Outcome::Refused => {
                slot.refused = true;
                slot.due = now + max;
            }
        }
    }
}

/// Where every request is paid, the shortest interval that keeps a
/// repository within its share of the budget: one request per stream per
/// interval (POLLING.md §6 step 8).
pub async fn budget_floor(target: &PollTarget, gate: &TokenGate) -> Duration {
    if target.provider.free_not_modified() {
        return Duration::ZERO;
    }
    let streams = target.provider.streams().len() as f64;
    match gate.allowance(&target.repo).await {
        Some(per_hour) if per_hour > 0.0 => Duration::from_secs_f64(3600.0 * streams / per_hour),
        _ => Duration::ZERO,
    }
}

/// The wait after the `attempt`-th failure in a row (1-based): 2 s
/// doubling, at most [`MAX_BACKOFF`].
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(2)
        .saturating_mul(1 << attempt.clamp(1, 16).saturating_sub(1))
        .min(MAX_BACKOFF)
}

/// `d` scaled by a random factor in `[1 - share, 1 + share]`.
fn jitter(d: Duration, share: f64) -> Duration {
    d.mul_f64(1.0 - share + 2.0 * share * rand_unit())
}

/// A number in `[0, 1)` from the clock's nanoseconds: enough to spread
/// polls and retries, not for anything secret.
fn rand_unit() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mixed = (u64::from(nanos)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    mixed as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::poll::settings::RawTarget;

    fn target() -> PollTarget {
        let raw: RawTarget = toml::from_str(
            "repo = \"acme/shop\"\ntoken_env = \"T\"\ninterval = \"1m\"\nmax_interval = \"30m\"",
        )
        .unwrap();
        PollTarget::from_raw(Provider::Github, &raw, 0, 0.5, &[], &|_| {
            Some("t0ken".into())
        })
        .unwrap()
    }

    fn minutes(m: f64) -> Duration {
        Duration::from_secs_f64(m * 60.0)
    }

    /// The due time of `stream`'s next poll.
    fn due(schedule: &Schedule, stream: Stream) -> Duration {
        schedule
            .slots
            .iter()
            .find(|s| s.stream == stream)
            .unwrap()
            .due
    }

    fn within(d: Duration, center: Duration) -> bool {
        d >= center.mul_f64(0.9) && d <= center.mul_f64(1.1)
    }

    #[test]
    fn a_stream_waits_a_quarter_of_its_mean_after_a_change_and_longer_while_unchanged() {
        let target = target();
        let mut s = Schedule::new(&target, Duration::ZERO, |_| None);
        assert_eq!(s.next().1, Duration::ZERO);
        let d = Stream::Deployments;
        s.record(
            d,
            Duration::ZERO,
            Outcome::Changed {
                mean: Some(minutes(60.0)),
            },
            None,
            Duration::ZERO,
        );
        assert!(within(due(&s, d), minutes(15.0)), "{:?}", due(&s, d));
        // Unchanged: 1.5× each time, to the maximum.
        let mut now = due(&s, d);
        for expected in [22.5, 30.0, 30.0] {
            s.record(d, now, Outcome::Unchanged, None, Duration::ZERO);
            assert!(within(due(&s, d) - now, minutes(expected)), "{expected}");
            now = due(&s, d);
        }
        // A busy stream is not polled more often than the configured interval.
        s.record(
            d,
            now,
            Outcome::Changed {
                mean: Some(minutes(1.0)),
            },
            None,
            Duration::ZERO,
        );
        assert!(within(due(&s, d) - now, minutes(1.0)));
        // The review stream may wait an hour.
        let p = Stream::PullRequests;
        for _ in 0..20 {
            s.record(p, now, Outcome::Unchanged, None, Duration::ZERO);
        }
        assert!(within(due(&s, p) - now, minutes(60.0)));
    }

    #[test]
    fn x_poll_interval_and_the_budget_raise_the_floor() {
        let target = target();
        let mut s = Schedule::new(&target, Duration::ZERO, |_| None);
        let d = Stream::Deployments;
        // A change every two minutes, with the provider's hint (if any) and
        // the budget's floor.
        let changed = |s: &mut Schedule, hint, budget_floor| {
            let mean = Some(minutes(2.0));
            s.record(
                d,
                Duration::ZERO,
                Outcome::Changed { mean },
                hint,
                budget_floor,
            )
        };
        changed(&mut s, Some(minutes(2.0)), Duration::ZERO);
        assert!(due(&s, d) >= minutes(1.8));
        // The hint is kept until the provider sends another.
        changed(&mut s, None, Duration::ZERO);
        assert!(due(&s, d) >= minutes(1.8));
        changed(&mut s, None, minutes(10.0));
        assert!(due(&s, d) >= minutes(9.0));
    }

    #[test]
    fn limits_hold_every_stream_repeats_back_off_and_the_fifth_degrades() {
        let target = target();
        let mut s = Schedule::new(&target, Duration::ZERO, |_| None);
        let now = minutes(10.0);
        let rate_limited = |s: &mut Schedule| {
            let wait = Duration::from_secs(30);
            s.record(
                Stream::Incidents,
                now,
                Outcome::RateLimited { wait },
                None,
                Duration::ZERO,
            )
        };
        rate_limited(&mut s);
        for stream in Provider::Github.streams() {
            assert!(
                due(&s, *stream) >= now + Duration::from_secs(30),
                "{stream:?}"
            );
        }
        assert_eq!(s.backoff(), Duration::from_secs(30));
        let mut waits = vec![s.backoff()];
        for _ in 0..4 {
            rate_limited(&mut s);
            waits.push(s.backoff());
        }
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert!(s.degraded());
        assert!(s.backoff() >= minutes(30.0));
        s.record(
            Stream::Incidents,
            now,
            Outcome::Unchanged,
            None,
            Duration::ZERO,
        );
        assert!(!s.degraded());
        assert_eq!(s.backoff(), Duration::ZERO);
    }

    #[test]
    fn failures_back_off_with_full_jitter_and_refusals_degrade_until_a_success() {
        let target = target();
        let mut s = Schedule::new(&target, Duration::ZERO, |_| None);
        let c = Stream::Commits;
        for failures in 1..=4 {
            s.record(c, Duration::ZERO, Outcome::Transient, None, Duration::ZERO);
            assert!(due(&s, c) <= backoff(failures), "{failures}");
            assert!(!s.degraded());
        }
        s.record(c, Duration::ZERO, Outcome::Transient, None, Duration::ZERO);
        assert!(s.degraded());
        assert!(due(&s, c) >= minutes(30.0));
        s.record(c, Duration::ZERO, Outcome::Unchanged, None, Duration::ZERO);
        assert!(!s.degraded());

        s.record(
            Stream::Incidents,
            Duration::ZERO,
            Outcome::Refused,
            None,
            Duration::ZERO,
        );
        assert!(s.degraded());
        assert_eq!(due(&s, Stream::Incidents), minutes(30.0));
        // Another stream's success does not clear it; its own does.
        s.record(c, Duration::ZERO, Outcome::Unchanged, None, Duration::ZERO);
        assert!(s.degraded());
        s.record(
            Stream::Incidents,
            Duration::ZERO,
            Outcome::Unchanged,
            None,
            Duration::ZERO,
        );
        assert!(!s.degraded());
    }

    #[test]
    fn backoff_doubles_from_two_seconds_to_fifteen_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }
}
