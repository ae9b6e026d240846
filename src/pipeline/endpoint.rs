//! Endpoint{collection}: keeps the collection's summary (item count, items per
//! source, last update) hot and answers for it. The Aggregator sends it what
//! each applied batch changed (a few counts, not the whole summary: a
//! collection fed by thousands of sources would otherwise copy its per-source
//! map on every page), and the whole summary when it reads it from the store;
//! HTTP and the Orchestrator ask it. Reads of the summary so never queue
//! behind a slow write. Item pages are read from the
//! store directly by HTTP (sled reads are concurrent; a mailbox would serialise them).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use serde::Serialize;

pub struct Endpoint;

/// A collection's summary, as listed by `GET /api/v1/collections`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CollectionSummary {
    pub name: String,
    pub items: u64,
    pub last_update: Option<DateTime<Utc>>,
    /// Items per source that last wrote them.
    pub by_source: BTreeMap<String, u64>,
}

/// What one applied batch changed in a collection's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Counted {
    /// The collection's item count after the batch.
    pub items: u64,
    pub last_update: Option<DateTime<Utc>>,
    /// The source that wrote the batch, and how many items it now holds
    /// that it did not before (new ones, and ones taken from other sources).
    pub source: String,
    pub added: u64,
    /// Items the batch took from other sources, by source.
    pub taken_from: BTreeMap<String, u64>,
}

impl CollectionSummary {
    /// Applies one batch's counts.
    pub fn count(&mut self, c: Counted) {
        self.items = c.items;
        self.last_update = c.last_update;
        for (from, n) in c.taken_from {
            if let Some(held) = self.by_source.get_mut(&from) {
                *held = held.saturating_sub(n);
                if *held == 0 {
                    self.by_source.remove(&from);
                }
            }
        }
        if c.added > 0 {
            *self.by_source.entry(c.source).or_default() += c.added;
        }
    }
}

#[derive(RactorMessage)]
pub enum EndpointMsg {
    /// From the Aggregator, when it has read the counts from the store.
    Updated(CollectionSummary),
    /// From the Aggregator, after each batch.
    Counted(Box<Counted>),
    Summary(RpcReplyPort<CollectionSummary>),
}

impl Actor for Endpoint {
    type Msg = EndpointMsg;
    type State = CollectionSummary;
    type Arguments = CollectionSummary;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        initial: CollectionSummary,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(initial)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            EndpointMsg::Updated(summary) => *state = summary,
            EndpointMsg::Counted(c) => state.count(*c),
            EndpointMsg::Summary(reply) => {
                let _ = reply.send(state.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_counts_moves_items_between_sources_and_drops_emptied_ones() {
        let mut summary = CollectionSummary {
            name: "books".into(),
            items: 3,
            last_update: None,
            by_source: [("a".to_owned(), 2), ("b".to_owned(), 1)].into(),
        };
        let at = Utc::now();
        // Source c inserts one item and takes a's two and b's one.
        summary.count(Counted {
            items: 4,
            last_update: Some(at),
            source: "c".into(),
            added: 4,
            taken_from: [("a".to_owned(), 2), ("b".to_owned(), 1)].into(),
        });
        assert_eq!((summary.items, summary.last_update), (4, Some(at)));
        assert_eq!(summary.by_source, [("c".to_owned(), 4)].into());
        // A batch that adds nothing leaves the counts as they are.
        summary.count(Counted {
            items: 4,
            last_update: Some(at),
            source: "d".into(),
            added: 0,
            taken_from: BTreeMap::new(),
        });
        assert_eq!(summary.by_source, [("c".to_owned(), 4)].into());
    }
}
