//! The node's recent throughput for the dashboard's charts: pages fetched
//! (each attempt), items applied and errors (runs that failed), counted as the work
//! happens and sampled every [`SAMPLE_EVERY`] into a ring of the last 15
//! minutes. `/debug/state` serves each node's series.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// The sampling interval.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Samples kept: 15 minutes.
pub const SAMPLES_KEPT: usize = 180;

static PAGES: AtomicU64 = AtomicU64::new(0);
static ITEMS: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);
static RING: Mutex<Ring> = Mutex::new(Ring {
    last: [0; 3],
    samples: VecDeque::new(),
});

struct Ring {
    /// The totals at the last sample.
    last: [u64; 3],
    samples: VecDeque<Sample>,
}

/// What happened in one interval, ending at `at` (Unix milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    pub at: i64,
    pub pages: u64,
    pub items: u64,
    pub errors: u64,
}

/// A node's series, oldest sample first.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub interval_secs: u64,
    pub samples: Vec<Sample>,
}

pub(super) fn pages() {
    PAGES.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn errors() {
    ERRORS.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn items(n: u64) {
    ITEMS.fetch_add(n, Ordering::Relaxed);
}

/// Closes the current interval at `at` (Unix milliseconds).
pub fn sample(at: i64) {
    let now = [
        PAGES.load(Ordering::Relaxed),
        ITEMS.load(Ordering::Relaxed),
        ERRORS.load(Ordering::Relaxed),
    ];
    let mut ring = RING.lock().unwrap_or_else(|e| e.into_inner());
    let d = |i: usize| now[i].saturating_sub(ring.last[i]);
    let s = Sample {
        at,
        pages: d(0),
        items: d(1),
        errors: d(2),
    };
    ring.last = now;
    ring.samples.push_back(s);
    while ring.samples.len() > SAMPLES_KEPT {
        ring.samples.pop_front();
    }
}

/// The samples kept.
pub fn series() -> Series {
    let ring = RING.lock().unwrap_or_else(|e| e.into_inner());
    Series {
        interval_secs: SAMPLE_EVERY.as_secs(),
        samples: ring.samples.iter().copied().collect(),
    }
}

/// Samples every [`SAMPLE_EVERY`] until the runtime stops.
pub async fn run_sampler() {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        sample(chrono::Utc::now().timestamp_millis());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_hold_what_happened_in_their_interval_and_are_bounded() {
        sample(0);
        pages();
        pages();
        errors();
        items(5);
        sample(1);
        let last = *series().samples.last().unwrap();
        // Other tests of the process may count too: at least ours.
        assert!(
            last.pages >= 2 && last.errors >= 1 && last.items >= 5,
            "{last:?}"
        );
        for i in 0..SAMPLES_KEPT + 10 {
            sample(i as i64);
        }
        assert_eq!(series().samples.len(), SAMPLES_KEPT);
    }
}
