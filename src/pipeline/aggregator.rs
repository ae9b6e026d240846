//! Aggregator{collection}: the only writer of one collection on this node.
//!
//! - Scrapers on this node send it item batches (`Apply`). It numbers each
//!   one in this node's sequence for the collection, upserts it and appends
//!   it to the collection's log, sends it to every peer, and has it flushed
//!   with whatever else is pending (group commit, see `store::Flusher`). The
//!   scraper's answer comes once the batch is durable here and on one peer
//!   (or at once when no peer is up; after [`REPLICA_TIMEOUT`] it comes
//!   anyway, and peers catch up from the log).
//! - Scrapers send pages answered 304 as `Seen`: their items named, not
//!   extracted. Applied, numbered and acknowledged as `Apply` is, provided
//!   the collection still holds every item as named (else the answer is
//!   `None`, nothing is numbered, and the scraper asks for the page in
//!   full); peers get the batch with its items' data, read back here.
//! - Peers' batches arrive as `Replica`: applied in each origin's sequence
//!   order (a batch ahead of that is refused with `Gap`, and the Replicator
//!   pulls what is missing), then acknowledged once a flush covers them.
//! - Snapshot pages from a peer arrive as `Restore` (a node too far behind).
//!
//! After each change it sends the new summary to its Endpoint.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use serde::Serialize;

use super::endpoint::{CollectionSummary, Counted, EndpointMsg};
use super::replicator::ReplicatorMsg;
use crate::cluster::handle::Answer;
use crate::cluster::wire::{Request, Response};
use crate::cluster::Cluster;
use crate::domain::{ItemBatch, ReplicatedBatch, SeenBatch, StoredItem};
use crate::events::{Event, Events};
use crate::store::{BatchOutcome, Flusher, Store, StoreError};
use crate::supervision::find;

/// How long a scraper's batch waits for a peer's acknowledgement.
pub const REPLICA_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Aggregator;

pub struct AggregatorArgs {
    pub collection: String,
    pub store: Store,
    pub endpoint: ActorRef<EndpointMsg>,
    pub events: Events,
    pub cluster: Cluster,
    /// Group commit: batches are acknowledged once a flush covers them.
    pub flusher: Flusher,
}

#[derive(RactorMessage)]
pub enum AggregatorMsg {
    /// Upsert a batch from a local scraper; the reply comes once it is durable.
    Apply(ItemBatch, RpcReplyPort<Result<BatchOutcome, String>>),
    /// Items a local scraper saw again unchanged, by name; the reply (once
    /// durable) is `None` when the collection no longer holds them as named.
    Seen(
        SeenBatch,
        RpcReplyPort<Result<Option<BatchOutcome>, String>>,
    ),
    /// A batch from a peer.
    Replica(ReplicatedBatch, Answer),
    /// Items from a peer's snapshot, and the heads to raise ours to (last page).
    Restore(
        Vec<StoredItem>,
        Option<BTreeMap<String, u64>>,
        RpcReplyPort<Result<u64, String>>,
    ),
    Stats(RpcReplyPort<AggregatorStats>),
}

/// The aggregator's counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AggregatorStats {
    pub collection: String,
    pub items: u64,
    /// Batches from local scrapers.
    pub batches: u64,
    /// Batches from peers.
    pub replicated: u64,
    pub inserted: u64,
    pub changed: u64,
    /// Local batches no peer acknowledged in time.
    pub unacknowledged: u64,
    /// The last batch applied from each origin node.
    pub heads: BTreeMap<String, u64>,
    pub last_update: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

pub struct AggregatorState {
    args: AggregatorArgs,
    stats: AggregatorStats,
}

impl AggregatorState {
    /// The summary, with the items per source read from the store.
    fn summary(&self, by_source: BTreeMap<String, u64>) -> CollectionSummary {
        CollectionSummary {
            name: self.stats.collection.clone(),
            items: self.stats.items,
            last_update: self.stats.last_update,
            by_source,
        }
    }

    /// Applies a numbered batch (not yet flushed: see the Flusher), then
    /// updates counts.
    async fn apply(&mut self, rb: &ReplicatedBatch) -> Result<BatchOutcome, StoreError> {
        // On this task: one batch is a few in-memory sled operations (sled
        // writes out in its own threads, and the Flusher waits for the disk
        // on the blocking pool), cheaper than two thread hops per batch.
        let outcome = self.args.store.apply_replicated(rb)?;
        self.stats.heads.insert(rb.origin.clone(), rb.seq);
        self.count(&outcome, &rb.batch.source, Some(rb.batch.fetched_at));
        Ok(outcome)
    }

    fn count(&mut self, outcome: &BatchOutcome, source: &str, at: Option<DateTime<Utc>>) {
        let s = &mut self.stats;
        crate::instruments::items_applied(
            &s.collection,
            outcome.inserted,
            outcome.changed,
            outcome.unchanged,
        );
        s.inserted += outcome.inserted;
        s.changed += outcome.changed;
        s.items += outcome.inserted;
        if let Some(at) = at {
            s.last_update = Some(s.last_update.map_or(at, |t| t.max(at)));
        }
        let moved: u64 = outcome.taken_from.values().sum();
        let _ = self
            .args
            .endpoint
            .cast(EndpointMsg::Counted(Box::new(Counted {
                items: s.items,
                last_update: s.last_update,
                source: source.to_owned(),
                added: outcome.inserted + moved,
                taken_from: outcome.taken_from.clone(),
            })));
        self.args.events.publish(Event::CollectionUpdated {
            collection: self.stats.collection.clone(),
            items: self.stats.items,
        });
    }

    /// This node's id and the number its next local batch takes.
    fn next_local(&self) -> (String, u64) {
        let me = self.args.cluster.me().node_id.clone();
        let seq = self.stats.heads.get(&me).copied().unwrap_or(0) + 1;
        (me, seq)
    }

    /// Logs and keeps a local batch's failure; returns it for the scraper.
    fn not_applied(&mut self, e: StoreError) -> String {
        tracing::error!(collection = %self.stats.collection, error = %e, "batch not applied");
        self.stats.last_error = Some(e.to_string());
        e.to_string()
    }

    /// Sends a local batch, applied here, to every peer (in sequence order,
    /// from this task) and answers `reply` once it is durable here and on a
    /// peer (see the module's notes). Waited for on a task of its own, so
    /// this mailbox never waits on a peer (whose aggregator may be waiting
    /// on us) nor on the disk (the next batch applies while this one is
    /// flushed, with others, by the Flusher). The batch moves into the
    /// request: it is encoded only when there are peers to send it to.
    fn deliver(
        &mut self,
        rb: ReplicatedBatch,
        reply: impl FnOnce(Result<(), String>) + Send + 'static,
    ) {
        self.stats.batches += 1;
        let seq = rb.seq;
        let pending = self
            .args
            .cluster
            .ask_all(&Request::Batch(rb), REPLICA_TIMEOUT);
        let stored = |r: Result<(), StoreError>| r.map_err(|e| format!("storing the batch: {e}"));
        let asked = pending.asked();
        if asked == 0 {
            // No peer to wait for: the flush answers.
            self.args.flusher.then(move |r| reply(stored(r)));
            return;
        }
        let flusher = self.args.flusher.clone();
        let collection = self.stats.collection.clone();
        tokio::spawn(async move {
            if let Err(e) = stored(flusher.flushed().await) {
                reply(Err(e));
                return;
            }
            let acked = pending
                .first(|r| matches!(r, Response::Applied { .. }))
                .await;
            if acked.is_none() {
                tracing::warn!(%collection, seq, peers = asked, "no peer acknowledged the batch in time; peers will pull it from the log");
            }
            reply(Ok(()));
        });
    }

    /// Re-reads counts from the store (after a snapshot restore).
    async fn recount(&mut self) -> Result<(), StoreError> {
        let store = self.args.store.clone();
        let name = self.stats.collection.clone();
        let (items, by_source) = tokio::task::spawn_blocking(move || store.count_items(&name))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        self.stats.items = items;
        let _ = self
            .args
            .endpoint
            .cast(EndpointMsg::Updated(self.summary(by_source)));
        Ok(())
    }
}

impl Actor for Aggregator {
    type Msg = AggregatorMsg;
    type State = AggregatorState;
    type Arguments = AggregatorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: AggregatorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let store = args.store.clone();
        let name = args.collection.clone();
        let (items, by_source, meta, heads) = tokio::task::spawn_blocking(move || {
            let (items, by_source) = store.count_items(&name)?;
            // Heads include a deleted collection's, so numbering goes on.
            let heads = store.heads_of(&name)?;
            Ok::<_, StoreError>((items, by_source, store.collection(&name)?, heads))
        })
        .await??;
        let state = AggregatorState {
            stats: AggregatorStats {
                collection: args.collection.clone(),
                items,
                last_update: meta.as_ref().map(|m| m.last_update),
                heads,
                ..AggregatorStats::default()
            },
            args,
        };
        let _ = state
            .args
            .endpoint
            .cast(EndpointMsg::Updated(state.summary(by_source)));
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AggregatorMsg::Apply(batch, reply) => {
                let (origin, seq) = state.next_local();
                let rb = ReplicatedBatch { origin, seq, batch };
                let outcome = match state.apply(&rb).await {
                    Ok(o) => o,
                    Err(e) => {
                        let _ = reply.send(Err(state.not_applied(e)));
                        return Ok(());
                    }
                };
                state.deliver(rb, move |r| {
                    let _ = reply.send(r.map(|()| outcome));
                });
            }
            AggregatorMsg::Seen(batch, reply) => {
                let (me, seq) = state.next_local();
                let peers = state.args.cluster.has_node_peers();
                let (outcome, items) = match state.args.store.apply_seen(&me, seq, &batch, peers) {
                    Ok(Some(applied)) => applied,
                    Ok(None) => {
                        let _ = reply.send(Ok(None));
                        return Ok(());
                    }
                    Err(e) => {
                        let _ = reply.send(Err(state.not_applied(e)));
                        return Ok(());
                    }
                };
                state.stats.heads.insert(me.clone(), seq);
                state.count(&outcome, &batch.source, Some(batch.fetched_at));
                let rb = ReplicatedBatch {
                    origin: me,
                    seq,
                    batch: ItemBatch {
                        source: batch.source,
                        collection: batch.collection,
                        fetched_at: batch.fetched_at,
                        items,
                    },
                };
                state.deliver(rb, move |r| {
                    let _ = reply.send(r.map(|()| Some(outcome)));
                });
            }
            AggregatorMsg::Replica(rb, answer) => {
                let have = state.stats.heads.get(&rb.origin).copied().unwrap_or(0);
                if rb.seq <= have {
                    answer.send(Response::Applied { seq: rb.seq });
                } else if rb.seq > have + 1 {
                    answer.send(Response::Gap { have });
                    if let Some(r) = find::<ReplicatorMsg>(crate::cluster::groups::REPLICATOR) {
                        let _ = r.cast(ReplicatorMsg::CatchUp);
                    }
                } else {
                    let seq = rb.seq;
                    match state.apply(&rb).await {
                        Ok(_) => {
                            state.stats.replicated += 1;
                            state.args.flusher.then(move |r| {
                                answer.send(match r {
                                    Ok(()) => Response::Applied { seq },
                                    Err(e) => Response::Error(e.to_string()),
                                });
                            });
                        }
                        Err(e) => {
                            tracing::error!(collection = %state.stats.collection, error = %e, "replicated batch not applied");
                            state.stats.last_error = Some(e.to_string());
                            answer.send(Response::Error(e.to_string()));
                        }
                    }
                }
            }
            AggregatorMsg::Restore(items, heads, reply) => {
                let store = state.args.store.clone();
                let name = state.stats.collection.clone();
                let raise = heads.clone();
                let result = tokio::task::spawn_blocking(move || {
                    let n = store.restore(&name, &items, raise.as_ref())?;
                    store.flush()?;
                    Ok::<_, StoreError>(n)
                })
                .await;
                match result {
                    Ok(Ok(n)) => {
                        // The last page carries the heads: count once, then.
                        if let Some(heads) = heads {
                            for (origin, seq) in heads {
                                let h = state.stats.heads.entry(origin).or_default();
                                *h = (*h).max(seq);
                            }
                            if let Err(e) = state.recount().await {
                                tracing::warn!(error = %e, "recount after restore failed");
                            }
                        }
                        let _ = reply.send(Ok(n));
                    }
                    Ok(Err(e)) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            AggregatorMsg::Stats(reply) => {
                let _ = reply.send(state.stats.clone());
            }
        }
        Ok(())
    }
}
