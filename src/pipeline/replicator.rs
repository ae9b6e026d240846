//! Replicator: brings this node's collections up to date with its peers'.
//! Live batches reach every node as they are made (see the Aggregator); the
//! Replicator covers what live delivery missed: a node that was down or
//! frozen, a new node, a batch refused as ahead of a gap.
//!
//! At each round (every [`ROUND_EVERY`], when membership changes, and when an
//! Aggregator saw a gap) it asks every peer for its heads (the last batch it
//! applied from each origin, per collection). Where a peer is ahead, it pulls
//! the missing batches from the peer's log, in order, and hands them to the
//! local Aggregator. When the peer's log no longer holds them, it copies the
//! collection from the peer page by page (a snapshot), then continues from
//! the peer's heads.
//!
//! Before comparing heads it asks each peer for its collection tombstones
//! and deletes here any collection deleted there later than here: a node
//! that missed a `DELETE /api/v1/collections/{name}` learns it within a
//! round, and the batches it still holds from before the deletion are never
//! applied again anywhere (see `store::dropped`).

use std::collections::BTreeMap;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use serde::Serialize;

use super::collection_supervisor::CollectionSupervisorMsg;
use crate::cluster::handle::{Answer, PeerHandle};
use crate::cluster::wire::{self, Request, Response};
use crate::cluster::{groups, Cluster};
use crate::store::Store;
use crate::supervision::{ask, find};

/// How often a round runs without being asked.
pub const ROUND_EVERY: Duration = Duration::from_secs(2);
/// Batches asked for per pull.
const PULL_BATCHES: usize = 128;
/// Pulls per collection and origin in one round (the next round goes on).
const PULLS_PER_ROUND: usize = 64;
/// Items per snapshot page.
const SNAPSHOT_PAGE: usize = 200;
/// Most pages one snapshot copies (20 million items).
const SNAPSHOT_PAGES: usize = 100_000;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const HEADS_TIMEOUT: Duration = Duration::from_secs(1);
/// Requests for a round this soon after one ended are dropped.
const COALESCE: Duration = Duration::from_millis(100);

pub struct Replicator;

pub struct ReplicatorArgs {
    pub cluster: Cluster,
    pub store: Store,
}

#[derive(RactorMessage)]
pub enum ReplicatorMsg {
    /// Run a round now.
    CatchUp,
    Stats(RpcReplyPort<ReplicatorStats>),
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicatorStats {
    pub rounds: u64,
    pub pulled: u64,
    pub snapshots: u64,
    /// Batches the peers had that this node lacked when the last round
    /// began (per collection and origin, the most any peer was ahead).
    pub behind: u64,
    pub last_error: Option<String>,
}

pub struct ReplicatorState {
    args: ReplicatorArgs,
    stats: ReplicatorStats,
    /// When the last round ended: requests queued during a round are
    /// served by it, so they are dropped rather than run back to back.
    last_round: std::time::Instant,
}

/// Why a round stopped early.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("peer {peer}: {reason}")]
    Peer { peer: String, reason: String },
    #[error("local: {0}")]
    Local(String),
}

fn collections() -> Result<ActorRef<CollectionSupervisorMsg>, RoundError> {
    find(groups::COLLECTIONS)
        .ok_or_else(|| RoundError::Local("the collections are restarting".into()))
}

impl ReplicatorState {
    async fn ask(&self, peer: &PeerHandle, request: &Request) -> Result<Response, RoundError> {
        // A frozen peer must not hold a round for long: heads are small.
        let timeout = match request {
            Request::Heads | Request::Tombstones => HEADS_TIMEOUT,
            _ => CALL_TIMEOUT,
        };
        let fail = |reason: String| RoundError::Peer {
            peer: peer.info.name.clone(),
            reason,
        };
        match self
            .args
            .cluster
            .call(&peer.info.node_id, request, timeout)
            .await
        {
            Ok(Response::Error(e)) => Err(fail(e)),
            Ok(r) => Ok(r),
            Err(e) => Err(fail(e.to_string())),
        }
    }

    /// Hands a pulled batch to the local aggregator and waits until it is durable.
    async fn apply(&self, batch: wire::ReplicatedBatch) -> Result<(), RoundError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        collections()?
            .cast(CollectionSupervisorMsg::Replica(
                batch,
                Answer::new(tx.into()),
            ))
            .map_err(|e| RoundError::Local(e.to_string()))?;
        let bytes = tokio::time::timeout(CALL_TIMEOUT, rx)
            .await
            .map_err(|_| RoundError::Local("the aggregator did not answer".into()))?
            .map_err(|_| RoundError::Local("the aggregator stopped".into()))?;
        match wire::decode::<Response>(&bytes).map_err(RoundError::Local)? {
            Response::Applied { .. } => Ok(()),
            other => Err(RoundError::Local(format!("batch not applied: {other:?}"))),
        }
    }

    async fn restore(
        &self,
        collection: &str,
        items: Vec<crate::domain::StoredItem>,
        heads: Option<BTreeMap<String, u64>>,
    ) -> Result<(), RoundError> {
        let restore = |reply| CollectionSupervisorMsg::Restore {
            collection: collection.to_owned(),
            items,
            heads,
            reply,
        };
        match ask(&collections()?, restore, CALL_TIMEOUT * 6).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(RoundError::Local(e)),
            Err(_) => Err(RoundError::Local("the aggregator did not answer".into())),
        }
    }

    /// Copies a collection from `peer`, then raises our heads to its heads
    /// as they were when the copy began.
    async fn snapshot(&mut self, peer: &PeerHandle, collection: &str) -> Result<(), RoundError> {
        tracing::info!(peer = %peer.info.name, %collection, "copying a collection from a peer");
        let mut after = None;
        let mut first_heads = None;
        for _ in 0..SNAPSHOT_PAGES {
            let request = Request::Snapshot {
                collection: collection.to_owned(),
                after: after.clone(),
                limit: SNAPSHOT_PAGE,
            };
            let Response::Snapshot { items, heads, more } = self.ask(peer, &request).await? else {
                return Err(RoundError::Peer {
                    peer: peer.info.name.clone(),
                    reason: "unexpected answer to a snapshot".into(),
                });
            };
            first_heads.get_or_insert(heads);
            after = items.last().map(|i| i.key.clone());
            let last = !more || after.is_none();
            let raise = if last { first_heads.take() } else { None };
            self.restore(collection, items, raise).await?;
            if last {
                break;
            }
        }
        self.stats.snapshots += 1;
        Ok(())
    }

    async fn round(&mut self) -> Result<(), RoundError> {
        let mut behind: BTreeMap<(String, String), u64> = BTreeMap::new();
        let result = self.round_counting(&mut behind).await;
        self.stats.behind = behind.values().sum();
        result
    }

    /// A round; `behind` gets, per collection and origin, how far the
    /// furthest peer seen was ahead of this node.
    async fn round_counting(
        &mut self,
        behind: &mut BTreeMap<(String, String), u64>,
    ) -> Result<(), RoundError> {
        for peer in self.args.cluster.node_peers() {
            self.follow_deletions(&peer).await?;
            let Response::Heads(theirs) = self.ask(&peer, &Request::Heads).await? else {
                continue;
            };
            let store = self.args.store.clone();
            let ours = tokio::task::spawn_blocking(move || store.heads())
                .await
                .map_err(|e| RoundError::Local(e.to_string()))?
                .map_err(|e| RoundError::Local(e.to_string()))?;
            for (collection, origins) in theirs {
                if !crate::domain::spec::is_slug(&collection) {
                    continue;
                }
                for (origin, their_head) in origins {
                    let mine = ours
                        .get(&collection)
                        .and_then(|h| h.get(&origin))
                        .copied()
                        .unwrap_or(0);
                    if their_head > mine {
                        let gap = behind
                            .entry((collection.clone(), origin.clone()))
                            .or_default();
                        *gap = (*gap).max(their_head - mine);
                        self.pull(&peer, &collection, &origin, mine, their_head)
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes here every collection `peer` deleted later than this node did.
    async fn follow_deletions(&mut self, peer: &PeerHandle) -> Result<(), RoundError> {
        let Response::Tombstones(theirs) = self.ask(peer, &Request::Tombstones).await? else {
            return Ok(());
        };
        for tombstone in theirs {
            if !crate::domain::spec::is_slug(&tombstone.name) {
                continue;
            }
            let store = self.args.store.clone();
            let name = tombstone.name.clone();
            let ours = tokio::task::spawn_blocking(move || store.tombstone(&name))
                .await
                .map_err(|e| RoundError::Local(e.to_string()))?
                .map_err(|e| RoundError::Local(e.to_string()))?;
            if ours.is_some_and(|o| o.version >= tombstone.version) {
                continue;
            }
            tracing::info!(peer = %peer.info.name, collection = %tombstone.name, "deleting a collection a peer deleted");
            let drop = |r| CollectionSupervisorMsg::Drop(tombstone, r);
            match ask(&collections()?, drop, CALL_TIMEOUT * 6).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(RoundError::Local(e)),
                Err(_) => return Err(RoundError::Local("the collections did not answer".into())),
            }
        }
        Ok(())
    }

    async fn pull(
        &mut self,
        peer: &PeerHandle,
        collection: &str,
        origin: &str,
        mut after: u64,
        until: u64,
    ) -> Result<(), RoundError> {
        for _ in 0..PULLS_PER_ROUND {
            if after >= until {
                break;
            }
            let request = Request::Pull {
                collection: collection.to_owned(),
                origin: origin.to_owned(),
                after,
                max: PULL_BATCHES,
            };
            match self.ask(peer, &request).await? {
                Response::Batches(batches) if batches.is_empty() => break,
                Response::Batches(batches) => {
                    for batch in batches {
                        let seq = batch.seq;
                        self.apply(batch).await?;
                        self.stats.pulled += 1;
                        crate::instruments::batches_pulled(1);
                        after = seq;
                    }
                }
                Response::Truncated { .. } => {
                    // Our next batch is gone from the peer's log: copy instead.
                    return self.snapshot(peer, collection).await;
                }
                other => {
                    return Err(RoundError::Peer {
                        peer: peer.info.name.clone(),
                        reason: format!("unexpected answer to a pull: {other:?}"),
                    })
                }
            }
        }
        Ok(())
    }
}

impl Actor for Replicator {
    type Msg = ReplicatorMsg;
    type State = ReplicatorState;
    type Arguments = ReplicatorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ReplicatorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.cluster
            .notify_changes(myself.clone(), || ReplicatorMsg::CatchUp);
        myself.send_interval(ROUND_EVERY, || ReplicatorMsg::CatchUp);
        Ok(ReplicatorState {
            args,
            stats: ReplicatorStats::default(),
            last_round: std::time::Instant::now() - ROUND_EVERY,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ReplicatorMsg::CatchUp => {
                if !state.args.cluster.settled() || state.last_round.elapsed() < COALESCE {
                    return Ok(());
                }
                state.stats.rounds += 1;
                let pulled = state.stats.pulled;
                match state.round().await {
                    Ok(()) => state.stats.last_error = None,
                    Err(e) => {
                        tracing::warn!(error = %e, "catch-up round stopped");
                        state.stats.last_error = Some(e.to_string());
                    }
                }
                state.last_round = std::time::Instant::now();
                if state.stats.pulled > pulled {
                    tracing::info!(
                        batches = state.stats.pulled - pulled,
                        "caught up from peers"
                    );
                }
            }
            ReplicatorMsg::Stats(reply) => {
                let _ = reply.send(state.stats.clone());
            }
        }
        Ok(())
    }
}
