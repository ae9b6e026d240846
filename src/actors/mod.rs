//! The actors of one node. Each file holds one actor: its messages, arguments,
//! state, stats snapshot and `impl Actor`. Actors only coordinate; the work is
//! done by plain modules (`scrape`, `store`, `cluster::placement`).
//!
//! ```text
//! Membership                           NodeServer, discovery, heartbeats, the member view
//! ├── NodeServer                       ractor_cluster: cookie-authenticated sessions to peers
//! └── Peer                             the one actor peers reach; hands their messages on
//! NodeSupervisor                       restarts its children together
//! ├── CollectionSupervisor             one pair per collection, spawned on first use
//! │   ├── Aggregator{collection}       applies batches (local and peers'), flushed before the ack
//! │   └── Endpoint{collection}         the collection's summary (counts, last update)
//! ├── Orchestrator                     the replicated source registry; reconciles placement
//! │   └── ScraperSupervisor            restarts failed scrapers with backoff and intensity
//! │       └── Scraper{source}          fetch -> extract -> Aggregator, on the source's schedule
//! └── Replicator                       pulls what live replication missed from peers
//! ```
//!
//! Every actor answers a `Stats` request with a serialisable snapshot; the HTTP
//! layer and the tests read those and nothing else of an actor's state.

pub mod aggregator;
pub mod collection_supervisor;
pub mod courier;
pub mod endpoint;
pub mod membership;
pub mod node_supervisor;
pub mod orchestrator;
pub mod peer;
pub mod replicator;
pub mod scraper;
pub mod scraper_supervisor;
pub mod worker_supervisor;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::settings::RestartPolicy;

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
}
