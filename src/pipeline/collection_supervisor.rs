//! CollectionSupervisor: owns one Aggregator and one Endpoint per collection,
//! spawned on first use (a scraper asking for its collection's aggregator) or
//! at start for every collection already on disk. If either actor of a pair
//! fails, both are restarted with backoff; too many failures and the
//! collection is reported failed.

use std::collections::BTreeMap;
use std::time::Instant;

use futures_util::future::join_all;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use serde::Serialize;

use super::aggregator::{Aggregator, AggregatorArgs, AggregatorMsg, AggregatorStats};
use super::endpoint::{CollectionSummary, Endpoint, EndpointMsg};
use crate::cluster::handle::Answer;
use crate::cluster::wire::Response;
use crate::cluster::Cluster;
use crate::domain::{CollectionTombstone, ReplicatedBatch, StoredItem};
use crate::events::Events;
use crate::settings::RestartPolicy;
use crate::store::{Flusher, Store};
use crate::supervision::{ask, child_down, AfterFailure, ChildDown, FailureWindow, ASK_TIMEOUT};

pub struct CollectionSupervisor;

pub struct CollectionSupervisorArgs {
    pub store: Store,
    pub flusher: Flusher,
    pub cluster: Cluster,
    pub restart: RestartPolicy,
    pub events: Events,
}

#[derive(RactorMessage)]
pub enum CollectionSupervisorMsg {
    /// The collection's aggregator, spawned if needed.
    Aggregator(
        String,
        RpcReplyPort<Result<ActorRef<AggregatorMsg>, String>>,
    ),
    /// Every collection's summary, by name.
    Summaries(RpcReplyPort<Vec<CollectionSummary>>),
    /// One collection's summary, if the collection exists.
    Summary(String, RpcReplyPort<Option<CollectionSummary>>),
    /// Delete the collection here: stop its actors, delete what is stored
    /// for it and flush; the reply says whether anything was deleted (false
    /// when an equal or later deletion was already recorded).
    Drop(CollectionTombstone, RpcReplyPort<Result<bool, String>>),
    /// Internal: restart a pair after its backoff.
    Restart(String),
    Stats(RpcReplyPort<Vec<AggregatorStats>>),
    /// A batch from a peer, for the collection's aggregator.
    Replica(ReplicatedBatch, Answer),
    /// Snapshot items from a peer, for the collection's aggregator; the reply
    /// says how many were new.
    Restore {
        collection: String,
        items: Vec<StoredItem>,
        heads: Option<BTreeMap<String, u64>>,
        reply: RpcReplyPort<Result<u64, String>>,
    },
}

#[derive(Default)]
struct Pair {
    aggregator: Option<ActorRef<AggregatorMsg>>,
    endpoint: Option<ActorRef<EndpointMsg>>,
    failures: FailureWindow,
    /// Set when restarting has been given up, or while backing off.
    down: Option<String>,
}

pub struct CollectionSupervisorState {
    args: CollectionSupervisorArgs,
    pairs: BTreeMap<String, Pair>,
}

/// Stats snapshot of the supervisor itself.
#[derive(Debug, Clone, Serialize)]
pub struct CollectionsStats {
    pub collections: Vec<AggregatorStats>,
}

impl CollectionSupervisor {
    async fn start_pair(
        myself: &ActorRef<CollectionSupervisorMsg>,
        state: &mut CollectionSupervisorState,
        name: &str,
    ) -> Result<ActorRef<AggregatorMsg>, String> {
        let initial = CollectionSummary {
            name: name.to_owned(),
            items: 0,
            last_update: None,
            by_source: BTreeMap::new(),
        };
        let cell: ActorCell = myself.get_cell();
        let (endpoint, _) = Actor::spawn_linked(None, Endpoint, initial, cell.clone())
            .await
            .map_err(|e| format!("endpoint of collection {name} did not start: {e}"))?;
        let args = AggregatorArgs {
            collection: name.to_owned(),
            store: state.args.store.clone(),
            endpoint: endpoint.clone(),
            events: state.args.events.clone(),
            cluster: state.args.cluster.clone(),
            flusher: state.args.flusher.clone(),
        };
        let aggregator = match Actor::spawn_linked(None, Aggregator, args, cell).await {
            Ok((a, _)) => a,
            Err(e) => {
                endpoint.stop(None);
                return Err(format!(
                    "aggregator of collection {name} did not start: {e}"
                ));
            }
        };
        let pair = state.pairs.entry(name.to_owned()).or_default();
        pair.aggregator = Some(aggregator.clone());
        pair.endpoint = Some(endpoint);
        pair.down = None;
        tracing::debug!(collection = name, "collection actors started");
        Ok(aggregator)
    }
}

impl CollectionSupervisor {
    /// The collection's aggregator, started if needed.
    async fn aggregator(
        myself: &ActorRef<CollectionSupervisorMsg>,
        state: &mut CollectionSupervisorState,
        name: &str,
    ) -> Result<ActorRef<AggregatorMsg>, String> {
        match state.pairs.get(name) {
            Some(Pair {
                aggregator: Some(a),
                ..
            }) => Ok(a.clone()),
            Some(Pair {
                down: Some(why), ..
            }) => Err(why.clone()),
            _ => Self::start_pair(myself, state, name).await,
        }
    }
}

impl CollectionSupervisor {
    /// Stops the collection's actors (forgotten first, so their stop is no
    /// failure to restart from), then deletes its data and flushes.
    async fn drop_collection(
        state: &mut CollectionSupervisorState,
        tombstone: CollectionTombstone,
    ) -> Result<bool, String> {
        let name = tombstone.name.clone();
        if let Some(pair) = state.pairs.remove(&name) {
            if let Some(a) = pair.aggregator {
                a.stop_and_wait(Some("collection deleted".into()), Some(ASK_TIMEOUT))
                    .await
                    .ok();
            }
            if let Some(e) = pair.endpoint {
                e.stop_and_wait(Some("collection deleted".into()), Some(ASK_TIMEOUT))
                    .await
                    .ok();
            }
        }
        let store = state.args.store.clone();
        let dropped = tokio::task::spawn_blocking(move || {
            let dropped = store.drop_collection(&tombstone)?;
            store.flush()?;
            Ok::<_, crate::store::StoreError>(dropped)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        if dropped {
            tracing::info!(collection = %name, "collection deleted");
        }
        Ok(dropped)
    }
}

impl Actor for CollectionSupervisor {
    type Msg = CollectionSupervisorMsg;
    type State = CollectionSupervisorState;
    type Arguments = CollectionSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: CollectionSupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let store = args.store.clone();
        let names = tokio::task::spawn_blocking(move || store.collections()).await??;
        let mut state = CollectionSupervisorState {
            args,
            pairs: BTreeMap::new(),
        };
        for (name, _) in names {
            Self::start_pair(&myself, &mut state, &name).await?;
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        myself.stop_children_and_wait(None, Some(ASK_TIMEOUT)).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CollectionSupervisorMsg::Aggregator(name, reply) => {
                let _ = reply.send(Self::aggregator(&myself, state, &name).await);
            }
            CollectionSupervisorMsg::Replica(batch, answer) => {
                if !crate::domain::spec::is_slug(&batch.batch.collection) {
                    answer.send(Response::Error("not a collection name".into()));
                    return Ok(());
                }
                let name = &batch.batch.collection;
                if !state.pairs.contains_key(name)
                    && state.args.store.deleted_since(name, batch.batch.fetched_at)
                {
                    // A stale batch of a deleted collection: its number
                    // counts, its items stay deleted, no actors start for it.
                    let store = state.args.store.clone();
                    tokio::spawn(async move {
                        let seq = batch.seq;
                        let done = tokio::task::spawn_blocking(move || {
                            store.apply_replicated(&batch)?;
                            store.flush()
                        })
                        .await;
                        answer.send(match done {
                            Ok(Ok(())) => Response::Applied { seq },
                            Ok(Err(e)) => Response::Error(e.to_string()),
                            Err(e) => Response::Error(e.to_string()),
                        });
                    });
                    return Ok(());
                }
                match Self::aggregator(&myself, state, &batch.batch.collection).await {
                    Ok(a) => {
                        let _ = a.cast(AggregatorMsg::Replica(batch, answer));
                    }
                    Err(e) => answer.send(Response::Error(e)),
                }
            }
            CollectionSupervisorMsg::Restore {
                collection,
                items,
                heads,
                reply,
            } => match Self::aggregator(&myself, state, &collection).await {
                Ok(a) => {
                    let _ = a.cast(AggregatorMsg::Restore(items, heads, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            CollectionSupervisorMsg::Summaries(reply) => {
                let endpoints: Vec<_> = state
                    .pairs
                    .values()
                    .filter_map(|p| p.endpoint.clone())
                    .collect();
                let asks = endpoints
                    .iter()
                    .map(|e| ask(e, EndpointMsg::Summary, ASK_TIMEOUT));
                let summaries = join_all(asks).await.into_iter().flatten().collect();
                let _ = reply.send(summaries);
            }
            CollectionSupervisorMsg::Summary(name, reply) => {
                let summary = match state.pairs.get(&name).and_then(|p| p.endpoint.clone()) {
                    Some(e) => ask(&e, EndpointMsg::Summary, ASK_TIMEOUT).await.ok(),
                    None => None,
                };
                let _ = reply.send(summary);
            }
            CollectionSupervisorMsg::Drop(tombstone, reply) => {
                let _ = reply.send(Self::drop_collection(state, tombstone).await);
            }
            CollectionSupervisorMsg::Restart(name) => {
                if state
                    .pairs
                    .get(&name)
                    .is_some_and(|p| p.aggregator.is_none())
                {
                    if let Err(e) = Self::start_pair(&myself, state, &name).await {
                        tracing::error!(collection = %name, error = %e, "collection restart failed");
                    }
                }
            }
            CollectionSupervisorMsg::Stats(reply) => {
                let aggregators: Vec<_> = state
                    .pairs
                    .values()
                    .filter_map(|p| p.aggregator.clone())
                    .collect();
                let asks = aggregators
                    .iter()
                    .map(|a| ask(a, AggregatorMsg::Stats, ASK_TIMEOUT));
                let stats = join_all(asks).await.into_iter().flatten().collect();
                let _ = reply.send(stats);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some(ChildDown { who, why, .. }) = child_down(event) else {
            return Ok(());
        };
        let id = who.get_id();
        let Some((name, pair)) = state.pairs.iter_mut().find(|(_, p)| {
            p.aggregator.as_ref().is_some_and(|a| a.get_id() == id)
                || p.endpoint.as_ref().is_some_and(|e| e.get_id() == id)
        }) else {
            return Ok(());
        };
        // One of the pair died: stop the other, then restart both.
        for other in [
            pair.aggregator.take().map(|a| a.get_cell()),
            pair.endpoint.take().map(|e| e.get_cell()),
        ]
        .into_iter()
        .flatten()
        {
            if other.get_id() != id {
                other.stop(Some("its partner failed".into()));
            }
        }
        tracing::warn!(collection = %name, reason = %why, "collection actor stopped");
        match pair.failures.record(Instant::now(), &state.args.restart) {
            AfterFailure::RestartIn(delay) => {
                pair.down = Some(format!("collection {name} is restarting after: {why}"));
                let name = name.clone();
                myself.send_after(delay, move || CollectionSupervisorMsg::Restart(name));
            }
            AfterFailure::GiveUp => {
                tracing::error!(collection = %name, reason = %why, "collection failed too often, giving up");
                pair.down = Some(format!("collection {name} failed: {why}"));
            }
        }
        Ok(())
    }
}
