//! Endpoint{collection}: keeps the collection's summary (item count, items per
//! source, last update) hot and answers for it. The Aggregator sends it an
//! update after every applied batch; HTTP and the Orchestrator ask it. Reads of
//! the summary so never queue behind a slow write. Item pages are read from the
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

#[derive(RactorMessage)]
pub enum EndpointMsg {
    /// From the Aggregator, after each batch.
    Updated(CollectionSummary),
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
            EndpointMsg::Summary(reply) => {
                let _ = reply.send(state.clone());
            }
        }
        Ok(())
    }
}
