//! Node events: what the actors report as it happens (a source written, a run
//! started or finished, a scraper backing off or given up on, a collection
//! updated). They go out on a broadcast channel; `/debug/events` streams them
//! to dashboards, which refresh their view of `/debug/state` on each one. A
//! slow subscriber misses events (and is told how many) rather than slowing
//! any actor down.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

/// Events buffered per subscriber before the oldest are dropped.
const BUFFER: usize = 1024;

/// Something that happened on a node.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A source was created, replaced or deleted (`change`).
    SourceChanged {
        source: String,
        change: &'static str,
    },
    RunStarted {
        source: String,
    },
    RunFinished {
        source: String,
        pages: u32,
        items: u64,
        duration_ms: u64,
        error: Option<String>,
    },
    /// A scraper failed and is restarting after `delay_ms`.
    BackingOff {
        source: String,
        delay_ms: u64,
        error: String,
    },
    /// A source failed too often and was given up on; it tries a run again
    /// after `retry_in_ms`.
    SourceFailed {
        source: String,
        error: String,
        retry_in_ms: u64,
    },
    CollectionUpdated {
        collection: String,
        items: u64,
    },
}

/// An event with where and when it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Stamped {
    pub at: DateTime<Utc>,
    pub node: String,
    #[serde(flatten)]
    pub event: Event,
}

/// The node's event channel; cheap to clone into every actor.
#[derive(Clone)]
pub struct Events {
    node: String,
    tx: broadcast::Sender<Stamped>,
}

impl Events {
    pub fn new(node: &str) -> Events {
        let (tx, _) = broadcast::channel(BUFFER);
        Events {
            node: node.to_owned(),
            tx,
        }
    }

    /// Publishes an event; with nobody listening it is simply dropped.
    pub fn publish(&self, event: Event) {
        // Stamped only for a listener: with none (most of the time) an event
        // costs no clock read and no copy of the node's name.
        if self.tx.receiver_count() == 0 {
            return;
        }
        let _ = self.tx.send(Stamped {
            at: Utc::now(),
            node: self.node.clone(),
            event,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Stamped> {
        self.tx.subscribe()
    }
}
