//! How gleaner's supervisors treat a failing child, shared by all of them:
//! the restart policy ([`FailureWindow`]: exponential backoff, restart
//! intensity), the healing back-off of a source given up on
//! ([`heal_delay`]), and how one actor asks another ([`ask`], [`ask_named`]:
//! bounded by a timeout, failing with an [`ActorError`], never hanging). Pure
//! logic with its tests; the supervisors in `pipeline`, `control` and
//! `isolation` apply it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ractor::{ActorCell, ActorRef, Message, RpcReplyPort, SupervisionEvent};

use crate::settings::RestartPolicy;

/// Why an actor asked for something gave no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActorError {
    #[error("{0} is not running")]
    NotRunning(String),
    #[error("{0} did not answer in time")]
    Timeout(String),
    /// It answered, with a refusal.
    #[error("{0}")]
    Refused(String),
}

/// A child that failed or stopped, as a supervisor sees it.
pub struct ChildDown {
    pub who: ActorCell,
    /// Its error, or the reason it stopped with ("stopped" when none).
    pub why: String,
    /// It stopped (rather than failed).
    pub stopped: bool,
}

/// The child a supervision event reports down, if it reports one: the one
/// match every supervisor would otherwise repeat.
pub fn child_down(event: SupervisionEvent) -> Option<ChildDown> {
    match event {
        SupervisionEvent::ActorFailed(who, err) => Some(ChildDown {
            who,
            why: err.to_string(),
            stopped: false,
        }),
        SupervisionEvent::ActorTerminated(who, _, reason) => Some(ChildDown {
            who,
            why: reason.unwrap_or_else(|| "stopped".into()),
            stopped: true,
        }),
        _ => None,
    }
}

/// Asks `actor` and waits at most `timeout`; errors name the actor.
pub async fn ask<M: Message, T: Send + 'static>(
    actor: &ActorRef<M>,
    build: impl FnOnce(RpcReplyPort<T>) -> M,
    timeout: Duration,
) -> Result<T, ActorError> {
    ask_later(actor, build, timeout).await
}

/// Sends `actor` a request at once, and returns its answer to come: the
/// future waits at most until `timeout` after the request was sent. Several
/// requests can so be made in order and their answers awaited later.
pub fn ask_later<M: Message, T: Send + 'static>(
    actor: &ActorRef<M>,
    build: impl FnOnce(RpcReplyPort<T>) -> M,
    timeout: Duration,
) -> impl std::future::Future<Output = Result<T, ActorError>> + Send + 'static {
    let what = actor
        .get_name()
        .unwrap_or_else(|| format!("actor {}", actor.get_id()));
    let deadline = tokio::time::Instant::now() + timeout;
    let (tx, rx) = ractor::concurrency::oneshot();
    let sent = actor.cast(build(tx.into())).is_ok();
    async move {
        if !sent {
            return Err(ActorError::NotRunning(what));
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(_)) => Err(ActorError::NotRunning(what)),
            Err(_) => Err(ActorError::Timeout(what)),
        }
    }
}

/// The actor registered as `name` (a `cluster::groups` constant), typed by
/// the messages it takes.
pub fn find<M: Message>(name: &str) -> Option<ActorRef<M>> {
    ractor::registry::where_is(name).map(ActorRef::from)
}

/// Asks the actor registered as `name` (see `cluster::groups`).
pub async fn ask_named<M: Message, T: Send + 'static>(
    name: &str,
    build: impl FnOnce(RpcReplyPort<T>) -> M,
    timeout: Duration,
) -> Result<T, ActorError> {
    let actor: ActorRef<M> = find(name).ok_or_else(|| ActorError::NotRunning(name.to_owned()))?;
    ask(&actor, build, timeout).await
}

/// What a supervisor should do after a child failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Restart after this delay.
    RestartIn(Duration),
    /// Too many failures within the window: stop restarting.
    GiveUp,
}

/// A child's recent failures, judged against a [`RestartPolicy`] (OTP style:
/// more than `intensity` failures within `window` and the child is given up on).
#[derive(Debug, Default, Clone)]
pub struct FailureWindow {
    failures: VecDeque<Instant>,
}

impl FailureWindow {
    /// Records a failure at `now` and says what to do.
    pub fn record(&mut self, now: Instant, policy: &RestartPolicy) -> AfterFailure {
        self.failures.push_back(now);
        while let Some(first) = self.failures.front() {
            if now.duration_since(*first) > policy.window {
                self.failures.pop_front();
            } else {
                break;
            }
        }
        let n = self.failures.len() as u32;
        if n > policy.intensity {
            return AfterFailure::GiveUp;
        }
        let factor = 2u32.saturating_pow(n.saturating_sub(1));
        AfterFailure::RestartIn(
            policy
                .backoff
                .saturating_mul(factor)
                .min(policy.max_backoff),
        )
    }

    /// Forgets past failures (after the child's spec changed or an operator asked).
    pub fn reset(&mut self) {
        self.failures.clear();
    }
}

/// The longest a source given up on waits before it tries again by itself.
pub const HEAL_MAX_DELAY: Duration = Duration::from_secs(3600);

/// How long a source given up on (`failed`) waits before it tries one run
/// again by itself, after its `give_ups`-th give-up since its last success:
/// its schedule period (at least a second) the first time, doubled each
/// further time, at most [`HEAL_MAX_DELAY`]. A short outage of a site then
/// heals within about a period of its end, and a site that stays down costs
/// one request an hour.
pub fn heal_delay(period: Duration, give_ups: u32) -> Duration {
    let factor = 2u32.saturating_pow(give_ups.saturating_sub(1).min(31));
    period
        .max(Duration::from_secs(1))
        .saturating_mul(factor)
        .min(HEAL_MAX_DELAY)
}

/// What a supervisor should do after a source's run failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRunFailure {
    /// Restart after this delay (within the restart intensity).
    RestartIn(Duration),
    /// Given up on: the source is `failed`, and tries one run again after
    /// this delay ([`heal_delay`]).
    RetryIn(Duration),
}

/// A source's failures since its last successful run: restarts with backoff
/// while the [`FailureWindow`] allows, then given up on and retried on the
/// long [`heal_delay`]; a failed retry is given up on again at once, with the
/// delay doubled. A success forgets it all.
#[derive(Debug, Default, Clone)]
pub struct SourceFailures {
    window: FailureWindow,
    give_ups: u32,
}

impl SourceFailures {
    /// Records a failed run at `now` of a source scheduled every `period`.
    pub fn record(
        &mut self,
        now: Instant,
        policy: &RestartPolicy,
        period: Duration,
    ) -> AfterRunFailure {
        match self.window.record(now, policy) {
            AfterFailure::RestartIn(delay) if self.give_ups == 0 => {
                AfterRunFailure::RestartIn(delay)
            }
            _ => {
                self.give_ups = self.give_ups.saturating_add(1);
                AfterRunFailure::RetryIn(heal_delay(period, self.give_ups))
            }
        }
    }

    /// Times the source was given up on since its last success.
    pub fn give_ups(&self) -> u32 {
        self.give_ups
    }

    /// Forgets every failure (after a successful run, a changed spec, or a
    /// run an operator asked for).
    pub fn reset(&mut self) {
        self.window.reset();
        self.give_ups = 0;
    }
}

/// Time allowed for one actor to answer another's request.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_gives_up_within_the_window() {
        let policy = RestartPolicy {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(250),
            intensity: 3,
            window: Duration::from_secs(10),
        };
        let mut w = FailureWindow::default();
        let t = Instant::now();
        assert_eq!(
            w.record(t, &policy),
            AfterFailure::RestartIn(Duration::from_millis(100))
        );
        assert_eq!(
            w.record(t, &policy),
            AfterFailure::RestartIn(Duration::from_millis(200))
        );
        assert_eq!(
            w.record(t, &policy),
            AfterFailure::RestartIn(Duration::from_millis(250))
        );
        assert_eq!(w.record(t, &policy), AfterFailure::GiveUp);
        // Failures older than the window no longer count.
        let later = t + Duration::from_secs(11);
        assert_eq!(
            w.record(later, &policy),
            AfterFailure::RestartIn(Duration::from_millis(100))
        );
    }

    #[test]
    fn heal_delay_is_the_period_doubling_up_to_an_hour() {
        let min = Duration::from_secs(60);
        assert_eq!(heal_delay(min, 1), min);
        assert_eq!(heal_delay(min, 2), 2 * min);
        assert_eq!(heal_delay(min, 3), 4 * min);
        assert_eq!(heal_delay(min, 7), HEAL_MAX_DELAY);
        assert_eq!(heal_delay(min, u32::MAX), HEAL_MAX_DELAY);
        // A daily source is still retried within the hour; a sub-second
        // period counts as a second.
        assert_eq!(heal_delay(Duration::from_secs(86_400), 1), HEAL_MAX_DELAY);
        assert_eq!(heal_delay(Duration::ZERO, 1), Duration::from_secs(1));
        assert_eq!(heal_delay(Duration::ZERO, 0), Duration::from_secs(1));
    }

    #[test]
    fn a_source_restarts_then_retries_on_a_long_backoff_until_a_success() {
        let policy = RestartPolicy {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            intensity: 1,
            window: Duration::from_secs(60),
        };
        let period = Duration::from_secs(10);
        let mut f = SourceFailures::default();
        let t = Instant::now();
        assert_eq!(
            f.record(t, &policy, period),
            AfterRunFailure::RestartIn(Duration::from_millis(100))
        );
        assert_eq!(f.give_ups(), 0);
        // Over the intensity: given up on, retried after a period.
        assert_eq!(
            f.record(t, &policy, period),
            AfterRunFailure::RetryIn(period)
        );
        // A failed retry is given up on at once, even once the window has
        // passed, with the delay doubled.
        let later = t + Duration::from_secs(120);
        assert_eq!(
            f.record(later, &policy, period),
            AfterRunFailure::RetryIn(2 * period)
        );
        assert_eq!(
            f.record(later, &policy, period),
            AfterRunFailure::RetryIn(4 * period)
        );
        assert_eq!(f.give_ups(), 3);
        // A success forgets the window and the give-ups: the next failure
        // restarts quickly again.
        f.reset();
        assert_eq!(f.give_ups(), 0);
        assert_eq!(
            f.record(later, &policy, period),
            AfterRunFailure::RestartIn(Duration::from_millis(100))
        );
    }
}
