//! Aggregator{collection}: the only writer of one collection. Scrapers send it
//! item batches and wait for the reply, which comes after the batch is upserted
//! and flushed to disk. After each batch it sends the new summary to its Endpoint.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use serde::Serialize;

use super::endpoint::{CollectionSummary, EndpointMsg};
use crate::domain::ItemBatch;
use crate::events::{Event, Events};
use crate::store::{BatchOutcome, Store};

pub struct Aggregator;

pub struct AggregatorArgs {
    pub collection: String,
    pub store: Store,
    pub endpoint: ActorRef<EndpointMsg>,
    pub events: Events,
}

#[derive(RactorMessage)]
pub enum AggregatorMsg {
    /// Upsert a batch; the reply comes once it is durable.
    Apply(ItemBatch, RpcReplyPort<Result<BatchOutcome, String>>),
    Stats(RpcReplyPort<AggregatorStats>),
}

/// The aggregator's counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AggregatorStats {
    pub collection: String,
    pub items: u64,
    pub batches: u64,
    pub inserted: u64,
    pub changed: u64,
    pub last_update: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

pub struct AggregatorState {
    args: AggregatorArgs,
    stats: AggregatorStats,
    by_source: BTreeMap<String, u64>,
}

impl AggregatorState {
    fn summary(&self) -> CollectionSummary {
        CollectionSummary {
            name: self.stats.collection.clone(),
            items: self.stats.items,
            last_update: self.stats.last_update,
            by_source: self.by_source.clone(),
        }
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
        let (items, by_source, meta) = tokio::task::spawn_blocking(move || {
            let (items, by_source) = store.count_items(&name)?;
            Ok::<_, crate::store::StoreError>((items, by_source, store.collection(&name)?))
        })
        .await??;
        let state = AggregatorState {
            stats: AggregatorStats {
                collection: args.collection.clone(),
                items,
                last_update: meta.map(|m| m.last_update),
                ..AggregatorStats::default()
            },
            by_source,
            args,
        };
        let _ = state
            .args
            .endpoint
            .cast(EndpointMsg::Updated(state.summary()));
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
                let store = state.args.store.clone();
                let source = batch.source.clone();
                let fetched_at = batch.fetched_at;
                let result = tokio::task::spawn_blocking(move || {
                    let outcome = store.apply_batch(&batch)?;
                    store.flush()?;
                    Ok::<_, crate::store::StoreError>(outcome)
                })
                .await;
                let outcome = match result {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(e)) => {
                        tracing::error!(collection = %state.stats.collection, error = %e, "batch not applied");
                        state.stats.last_error = Some(e.to_string());
                        let _ = reply.send(Err(e.to_string()));
                        return Ok(());
                    }
                    Err(join) => {
                        let _ = reply.send(Err("the store write panicked".into()));
                        return Err(join.into());
                    }
                };
                let s = &mut state.stats;
                s.batches += 1;
                s.inserted += outcome.inserted;
                s.changed += outcome.changed;
                s.items += outcome.inserted;
                s.last_update = Some(s.last_update.map_or(fetched_at, |t| t.max(fetched_at)));
                let moved: u64 = outcome.taken_from.values().sum();
                for (from, n) in &outcome.taken_from {
                    if let Some(c) = state.by_source.get_mut(from) {
                        *c = c.saturating_sub(*n);
                    }
                }
                *state.by_source.entry(source).or_default() += outcome.inserted + moved;
                state.by_source.retain(|_, n| *n > 0);
                let _ = state
                    .args
                    .endpoint
                    .cast(EndpointMsg::Updated(state.summary()));
                state.args.events.publish(Event::CollectionUpdated {
                    collection: state.stats.collection.clone(),
                    items: state.stats.items,
                });
                let _ = reply.send(Ok(outcome));
            }
            AggregatorMsg::Stats(reply) => {
                let _ = reply.send(state.stats.clone());
            }
        }
        Ok(())
    }
}
