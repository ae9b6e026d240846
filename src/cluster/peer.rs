//! Peer: the one actor of a node that other nodes reach. It joins the
//! `gleaner.peers` process group, so every node finds every other's; its
//! messages carry [`crate::cluster::wire`] values as JSON. It answers nothing
//! itself: heartbeats go to Membership, and every other notice and request
//! to the node's [`Inbound`] (the control plane's router), so a slow disk
//! never delays a heartbeat and this module knows nothing of the actors
//! above the cluster.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorClusterMessage;

use super::groups;
use super::handle::Answer;
use super::membership::MembershipMsg;
use super::wire::{self, Notice, Request, Response};

pub struct Peer;

/// Where peers' notices (but heartbeats) and requests go. The cluster only
/// carries them; the node's control plane answers them, so the cluster
/// never imports the actors above it.
pub trait Inbound: Send + Sync + 'static {
    fn notice(&self, notice: Notice);
    /// Answers `request` through `answer`, without blocking the caller.
    fn request(&self, request: Request, answer: Answer);
}

pub struct PeerArgs {
    pub membership: ActorRef<MembershipMsg>,
    pub inbound: Arc<dyn Inbound>,
}

/// The two shapes that cross nodes; both carry JSON (see the module doc).
#[derive(RactorClusterMessage)]
pub enum PeerMsg {
    /// A [`Notice`].
    Cast(Vec<u8>),
    /// A [`Request`], answered with a [`Response`].
    #[rpc]
    Call(Vec<u8>, RpcReplyPort<Vec<u8>>),
}

impl Actor for Peer {
    type Msg = PeerMsg;
    type State = PeerArgs;
    type Arguments = PeerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: PeerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        ractor::pg::join(groups::PEERS.to_owned(), vec![myself.get_cell()]);
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PeerMsg::Cast(bytes) => match wire::decode::<Notice>(&bytes) {
                Ok(Notice::Heartbeat(info)) => {
                    let _ = state.membership.cast(MembershipMsg::Heard(info));
                }
                Ok(n) => state.inbound.notice(n),
                Err(e) => tracing::warn!(error = %e, "notice dropped"),
            },
            PeerMsg::Call(bytes, reply) => {
                let answer = Answer::new(reply);
                match wire::decode::<Request>(&bytes) {
                    Ok(r) => state.inbound.request(r, answer),
                    Err(e) => answer.send(Response::Error(e)),
                }
            }
        }
        Ok(())
    }
}
