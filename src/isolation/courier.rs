//! Courier: in a worker process, it stands where a node has its collection's
//! Aggregator. The worker's scraper hands it each batch; it carries the batch
//! to the owner node (`Deliver`), whose Aggregator accepts it as a local
//! scraper's (numbered, logged, replicated), and answers once the owner says
//! it is durable. Batches are never stored in the worker.

use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::cluster::wire::{Request, Response};
use crate::cluster::Cluster;
use crate::pipeline::aggregator::{AggregatorMsg, AggregatorStats};

/// How long a delivery may take (the owner waits up to 2 s for a peer too).
const DELIVER_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Courier;

pub struct CourierArgs {
    pub cluster: Cluster,
    /// The node id of the source's owner.
    pub owner: String,
}

pub struct CourierState {
    args: CourierArgs,
    stats: AggregatorStats,
}

impl CourierState {
    /// Carries `request` to the owner node, and answers `reply` with what
    /// `delivered` finds in the owner's answer.
    fn carry<T: Send + 'static>(
        &mut self,
        request: Request,
        reply: RpcReplyPort<Result<T, String>>,
        delivered: fn(Response) -> Result<T, Response>,
    ) {
        let (cluster, owner) = (self.args.cluster.clone(), self.args.owner.clone());
        self.stats.batches += 1;
        tokio::spawn(async move {
            let answer = cluster.call(&owner, &request, DELIVER_TIMEOUT).await;
            let _ = reply.send(match answer {
                Ok(Response::Error(e)) => Err(format!("the owner refused the batch: {e}")),
                Ok(answer) => delivered(answer)
                    .map_err(|other| format!("unexpected answer from the owner: {other:?}")),
                Err(e) => Err(format!("delivering to the owner: {e}")),
            });
        });
    }
}

impl Actor for Courier {
    type Msg = AggregatorMsg;
    type State = CourierState;
    type Arguments = CourierArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: CourierArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(CourierState {
            stats: AggregatorStats {
                collection: format!("(delivered to {})", args.owner),
                ..AggregatorStats::default()
            },
            args,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AggregatorMsg::Apply(batch, reply) => {
                state.carry(Request::Deliver(batch), reply, |r| match r {
                    Response::Delivered(outcome) => Ok(outcome),
                    other => Err(other),
                });
            }
            AggregatorMsg::Seen(batch, reply) => {
                state.carry(Request::DeliverSeen(batch), reply, |r| match r {
                    Response::DeliveredSeen(outcome) => Ok(outcome),
                    other => Err(other),
                });
            }
            AggregatorMsg::Replica(_, answer) => {
                answer.send(Response::Error("a worker keeps no collections".into()));
            }
            AggregatorMsg::Restore(_, _, reply) => {
                let _ = reply.send(Err("a worker keeps no collections".into()));
            }
            AggregatorMsg::Stats(reply) => {
                let _ = reply.send(state.stats.clone());
            }
        }
        Ok(())
    }
}
