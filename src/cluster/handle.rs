//! [`Cluster`]: what the rest of the node knows of the cluster, and how it
//! talks to peers. The Membership actor publishes the member view here; the
//! Orchestrator, Aggregators and Replicator read it (who owns a source, who
//! to send to) and are woken by [`Cluster::changes`] when placement may have
//! changed. A node without a cluster listener holds a cluster of one.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use ractor::{ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::sync::watch;

use super::placement;
use super::view::{MemberState, NodeInfo, Role};
use super::wire::{self, Notice, Request, Response};
use crate::cluster::peer::PeerMsg;

/// A member as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MemberStatus {
    pub name: String,
    pub node_id: String,
    /// The cluster address peers dial.
    pub address: String,
    pub http: String,
    pub role: Role,
    pub state: MemberState,
}

/// A reachable peer: its identity and its PeerHandle actor.
#[derive(Clone)]
pub struct PeerHandle {
    pub info: NodeInfo,
    pub actor: ActorRef<PeerMsg>,
}

/// The published view.
#[derive(Clone, Default)]
pub struct Published {
    /// False until the node has heard from the peers it could reach at start
    /// (or waited a peer timeout): until then it owns nothing.
    pub settled: bool,
    /// Every known member, this node first.
    pub members: Vec<MemberStatus>,
    /// Node ids that may own sources.
    pub owners: Vec<String>,
    /// Peers not down (workers included).
    pub peers: Vec<PeerHandle>,
}

/// Why a question to a peer got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("node {0} is not a reachable member")]
    Unreachable(String),
    #[error("node {0} did not answer in time")]
    Timeout(String),
    #[error("{0}")]
    Decode(String),
}

/// The answer port of a question from a peer, for the local actor that answers it.
pub struct Answer(RpcReplyPort<Vec<u8>>);

impl Answer {
    pub fn new(port: RpcReplyPort<Vec<u8>>) -> Self {
        Answer(port)
    }

    pub fn send(self, response: Response) {
        let _ = self.0.send(wire::encode(&response));
    }
}

struct Inner {
    me: NodeInfo,
    view: RwLock<Published>,
    /// Bumped whenever owners or settledness change.
    changes: watch::Sender<u64>,
    /// Why the node must stop, once something decided it must.
    fatal: watch::Sender<Option<String>>,
    /// The last owner list published, to bump `changes` only on a real change.
    last_owners: Mutex<(bool, Vec<String>)>,
}

/// A cheap, cloneable handle on the cluster.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl Cluster {
    /// A cluster whose view is published later by the Membership actor.
    pub fn new(me: NodeInfo) -> Cluster {
        let published = Published {
            settled: false,
            members: vec![status(&me, MemberState::Up)],
            owners: Vec::new(),
            peers: Vec::new(),
        };
        Cluster {
            inner: Arc::new(Inner {
                me,
                view: RwLock::new(published),
                changes: watch::channel(0).0,
                fatal: watch::channel(None).0,
                last_owners: Mutex::new((false, Vec::new())),
            }),
        }
    }

    /// A cluster of one: settled at once, owning everything.
    pub fn single(me: NodeInfo) -> Cluster {
        let cluster = Cluster::new(me);
        let me = cluster.me().clone();
        cluster.publish(Published {
            settled: true,
            members: vec![status(&me, MemberState::Up)],
            owners: vec![me.node_id.clone()],
            peers: Vec::new(),
        });
        cluster
    }

    pub fn me(&self) -> &NodeInfo {
        &self.inner.me
    }

    /// Replaces the view; wakes subscribers if placement may have changed.
    pub fn publish(&self, view: Published) {
        let key = (view.settled, view.owners.clone());
        *self.inner.view.write().expect("view lock") = view;
        let mut last = self.inner.last_owners.lock().expect("owners lock");
        if *last != key {
            *last = key;
            self.inner.changes.send_modify(|n| *n += 1);
        }
    }

    /// Resolves each time owners or settledness change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Casts `msg()` to `to` at each change (as [`Cluster::changes`]), from
    /// now until `to` stops. The first change is the one after this call:
    /// the caller reconciles once itself.
    pub fn notify_changes<M: ractor::Message>(&self, to: ActorRef<M>, msg: fn() -> M) {
        let mut changes = self.changes();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                if to.cast(msg()).is_err() {
                    break;
                }
            }
        });
    }

    pub fn settled(&self) -> bool {
        self.inner.view.read().expect("view lock").settled
    }

    pub fn members(&self) -> Vec<MemberStatus> {
        self.inner.view.read().expect("view lock").members.clone()
    }

    /// Is the node with this id a member, and not down?
    pub fn is_live(&self, node_id: &str) -> bool {
        self.inner
            .view
            .read()
            .expect("view lock")
            .members
            .iter()
            .any(|m| m.node_id == node_id && m.state != MemberState::Down)
    }

    /// The node id that owns `source` now, if the view is settled.
    pub fn owner_of(&self, source: &str) -> Option<String> {
        let view = self.inner.view.read().expect("view lock");
        if !view.settled {
            return None;
        }
        placement::owner(source, view.owners.iter().map(String::as_str)).map(str::to_owned)
    }

    /// Does this node own `source` now?
    pub fn owns(&self, source: &str) -> bool {
        self.owner_of(source).as_deref() == Some(self.me().node_id.as_str())
    }

    /// The display name of a node id, if it is a known member.
    pub fn name_of(&self, node_id: &str) -> Option<String> {
        let view = self.inner.view.read().expect("view lock");
        view.members
            .iter()
            .find(|m| m.node_id == node_id)
            .map(|m| m.name.clone())
    }

    /// Full nodes that are not down (the ones that store data).
    pub fn node_peers(&self) -> Vec<PeerHandle> {
        let view = self.inner.view.read().expect("view lock");
        view.peers
            .iter()
            .filter(|p| p.info.role == Role::Node)
            .cloned()
            .collect()
    }

    /// Whether any full node is a peer now (see [`Cluster::ask_all`]).
    pub fn has_node_peers(&self) -> bool {
        let view = self.inner.view.read().expect("view lock");
        view.peers.iter().any(|p| p.info.role == Role::Node)
    }

    fn peer(&self, node_id: &str) -> Option<PeerHandle> {
        let view = self.inner.view.read().expect("view lock");
        view.peers
            .iter()
            .find(|p| p.info.node_id == node_id)
            .cloned()
    }

    /// Sends `notice` to every full node that is not down.
    pub fn cast_all(&self, notice: &Notice) {
        let bytes = wire::encode(notice);
        for peer in self.node_peers() {
            if let Err(e) = peer.actor.cast(PeerMsg::Cast(bytes.clone())) {
                tracing::debug!(peer = %peer.info.name, error = %e, "notice not sent");
            }
        }
    }

    /// Sends `notice` to one node.
    pub fn cast_to(&self, node_id: &str, notice: &Notice) {
        if let Some(peer) = self.peer(node_id) {
            let _ = peer.actor.cast(PeerMsg::Cast(wire::encode(notice)));
        }
    }

    /// Asks one node and waits at most `timeout` for its answer.
    pub async fn call(
        &self,
        node_id: &str,
        request: &Request,
        timeout: Duration,
    ) -> Result<Response, CallError> {
        let peer = self
            .peer(node_id)
            .ok_or_else(|| CallError::Unreachable(node_id.to_owned()))?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        peer.actor
            .cast(PeerMsg::Call(wire::encode(request), tx.into()))
            .map_err(|_| CallError::Unreachable(peer.info.name.clone()))?;
        await_answer(peer.info.name, rx, timeout).await
    }

    /// Sends `request` to every full node that is not down, in order (so
    /// that successive requests reach each peer in the order they were
    /// made), and returns a future that waits for the answers.
    pub fn ask_all(&self, request: &Request, timeout: Duration) -> PendingAnswers {
        let peers = self.node_peers();
        let mut waiting = Vec::new();
        if peers.is_empty() {
            // Nothing to encode for nobody (a lone node's every batch).
            return PendingAnswers { waiting, timeout };
        }
        let bytes = wire::encode(request);
        for peer in peers {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if peer
                .actor
                .cast(PeerMsg::Call(bytes.clone(), tx.into()))
                .is_ok()
            {
                waiting.push((peer.info.node_id, rx));
            }
        }
        PendingAnswers { waiting, timeout }
    }

    /// Marks the node as unable to continue (for example: its name is taken).
    pub fn fatal(&self, reason: String) {
        self.inner.fatal.send_replace(Some(reason));
    }

    /// Resolves with the reason once [`Cluster::fatal`] was called.
    pub async fn fatal_reason(&self) -> String {
        let mut rx = self.inner.fatal.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                return "the cluster handle was dropped".into();
            }
        }
    }
}

/// Answers still to come from [`Cluster::ask_all`].
pub struct PendingAnswers {
    waiting: Vec<(String, tokio::sync::oneshot::Receiver<Vec<u8>>)>,
    timeout: Duration,
}

impl PendingAnswers {
    /// How many peers were asked.
    pub fn asked(&self) -> usize {
        self.waiting.len()
    }

    /// Waits until one peer accepts (by `accepted`) or all have answered or the
    /// timeout passes; returns the node id of the first that accepted.
    pub async fn first(self, accepted: impl Fn(&Response) -> bool) -> Option<String> {
        let mut answers: FuturesUnordered<_> = self
            .waiting
            .into_iter()
            .map(|(node, rx)| async move { (node, rx.await) })
            .collect();
        let wait = async {
            while let Some((node, answer)) = answers.next().await {
                let Ok(bytes) = answer else { continue };
                match wire::decode::<Response>(&bytes) {
                    Ok(r) if accepted(&r) => return Some(node),
                    Ok(r) => tracing::debug!(peer = %node, answer = ?r, "peer did not accept"),
                    Err(e) => tracing::warn!(peer = %node, error = %e, "peer answer unreadable"),
                }
            }
            None
        };
        tokio::time::timeout(self.timeout, wait)
            .await
            .ok()
            .flatten()
    }

    /// Waits for every answer (each bounded by the timeout), by node id.
    pub async fn all(self) -> BTreeMap<String, Result<Response, CallError>> {
        let timeout = self.timeout;
        let answers = self.waiting.into_iter().map(|(node, rx)| async move {
            let result = await_answer(node.clone(), rx, timeout).await;
            (node, result)
        });
        futures_util::future::join_all(answers)
            .await
            .into_iter()
            .collect()
    }
}

/// Waits at most `timeout` for a peer's answer and decodes it; `who` names
/// the peer in the error.
async fn await_answer(
    who: String,
    rx: tokio::sync::oneshot::Receiver<Vec<u8>>,
    timeout: Duration,
) -> Result<Response, CallError> {
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(bytes)) => wire::decode(&bytes).map_err(CallError::Decode),
        Ok(Err(_)) => Err(CallError::Unreachable(who)),
        Err(_) => Err(CallError::Timeout(who)),
    }
}

pub fn status(info: &NodeInfo, state: MemberState) -> MemberStatus {
    MemberStatus {
        name: info.name.clone(),
        node_id: info.node_id.clone(),
        address: info.cluster.clone(),
        http: info.http.clone(),
        role: info.role,
        state,
    }
}
