//! Membership: the node's place in the cluster. It runs ractor_cluster's
//! NodeServer (cookie-authenticated, transitive, so the nodes form a full
//! mesh) behind the guard on the cluster port ([`crate::cluster::guard`]),
//! and the node's Peer actor, both as linked children; it dials the
//! seeds and the addresses of the discovery name (re-resolved at each round,
//! with a backoff per address), sends a heartbeat to every peer at each tick,
//! and keeps the [`MemberView`]. Each change is published on the
//! [`Cluster`] handle, which wakes the Orchestrator and the Replicator.
//!
//! ractor_cluster's own pings never declare a frozen peer dead, so a peer is
//! judged by our heartbeats alone (suspect, then down after the timeout), or
//! at once when its session closes.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::node::{NodeConnectionMode, NodeServerSessionInformation};
use ractor_cluster::{NodeEventSubscription, NodeServer, NodeServerMessage, RactorMessage};
use serde::Serialize;

use super::peer::{Peer, PeerArgs, PeerMsg};
use crate::cluster::groups;
use crate::cluster::guard::{Guard, Limits};
use crate::cluster::handle::{status, MemberStatus, PeerHandle, Published};
use crate::cluster::view::{Heard, MemberState, MemberView, NodeInfo};
use crate::cluster::{wire, Cluster};
use crate::settings::ClusterSettings;
use crate::supervision::ask;

pub struct Membership;

pub struct MembershipArgs {
    pub settings: ClusterSettings,
    /// The public cluster port, bound (see [`crate::cluster::guard::bind`]);
    /// its port is the one advertised to peers.
    pub listener: tokio::net::TcpListener,
    pub cluster: Cluster,
    /// Where peers' requests and notices go (the Peer hands them on).
    pub inbound: std::sync::Arc<dyn super::peer::Inbound>,
}

#[derive(RactorMessage)]
pub enum MembershipMsg {
    /// Heartbeat out, judge silence, dial if due.
    Tick,
    /// A peer's heartbeat.
    Heard(NodeInfo),
    /// A dial round ended; these targets failed.
    Dialed(Vec<String>),
    Stats(RpcReplyPort<MembershipStats>),
}

#[derive(Debug, Clone, Serialize)]
pub struct MembershipStats {
    pub settled: bool,
    pub members: Vec<MemberStatus>,
    /// Cluster sessions open (authenticated or not).
    pub sessions: usize,
}

/// Largest cluster frame accepted: one item batch is at most one page's
/// items, and a page is capped at 10 MiB by default; pulls and snapshots are
/// cut well below this.
const MAX_FRAME_BYTES: u64 = 64 * 1024 * 1024;

/// Longest wait between attempts to dial an address that keeps failing.
const MAX_DIAL_BACKOFF: Duration = Duration::from_secs(10);
/// First wait after a failed dial.
const DIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Least time between two dial rounds.
const DIAL_EVERY: Duration = Duration::from_millis(500);
/// How long one dial (DNS and TCP connect) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

pub struct MembershipState {
    settings: ClusterSettings,
    cluster: Cluster,
    view: MemberView,
    server: ActorRef<NodeServerMessage>,
    /// The guard's accept loop; its connections end with it.
    guard: tokio::task::JoinHandle<()>,
    /// The guard's port: the one peers are told to dial.
    public_port: u16,
    started: Instant,
    /// When the last tick ran, to notice that this process itself was frozen.
    last_tick: Instant,
    /// A dial round is in progress.
    dialing: bool,
    last_dial: Instant,
    dialed_once: bool,
    settled: bool,
    /// Per target: when to try next, and the current backoff.
    backoff: BTreeMap<String, (Instant, Duration)>,
    /// Peers (by boot id) whose Peer actor has been seen in the process group,
    /// so its absence later means the session closed.
    seen: HashSet<String>,
    /// Names already warned about, so a duplicate is logged once.
    warned: HashSet<String>,
}

/// Forwards the NodeServer's session events to the Membership actor.
struct SessionEvents(ActorRef<MembershipMsg>);

impl NodeEventSubscription for SessionEvents {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}
    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        tracing::info!(peer = %ses.peer_addr, "cluster session closed");
        let _ = self.0.cast(MembershipMsg::Tick);
    }
    fn node_session_authenticated(&self, _ses: NodeServerSessionInformation) {}
    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        tracing::info!(peer = %ses.peer_addr, "cluster session ready");
        let _ = self.0.cast(MembershipMsg::Tick);
    }
}

/// Remote Peer actors in the process group, by registered name.
fn remote_peers() -> BTreeMap<String, ActorRef<PeerMsg>> {
    ractor::pg::get_members(&groups::PEERS.to_owned())
        .into_iter()
        .filter(|cell| !cell.get_id().is_local())
        .filter_map(|cell| Some((cell.get_name()?, ActorRef::from(cell))))
        .collect()
}

/// One round of dialling: the seeds and the discovery name's addresses,
/// except this node and the targets still backing off.
struct DialRound {
    seeds: Vec<String>,
    discovery: Option<(String, u16)>,
    me: String,
    resting: HashSet<String>,
}

impl DialRound {
    async fn run(self, server: ActorRef<NodeServerMessage>) -> Vec<String> {
        let mut targets = self.seeds;
        if let Some((name, port)) = &self.discovery {
            // Every address of the name is a peer on the cluster port.
            match tokio::time::timeout(
                DIAL_TIMEOUT,
                tokio::net::lookup_host((name.as_str(), *port)),
            )
            .await
            {
                Ok(Ok(addrs)) => targets.extend(addrs.map(|a| a.to_string())),
                _ => tracing::debug!(%name, "discovery name does not resolve"),
            }
        }
        targets.retain(|t| *t != self.me && !self.resting.contains(t));
        targets.sort();
        targets.dedup();
        // Discovery names list this node too, by address: leave those out.
        let own: HashSet<std::net::SocketAddr> = match tokio::time::timeout(
            DIAL_TIMEOUT,
            tokio::net::lookup_host(self.me.clone()),
        )
        .await
        {
            Ok(Ok(addrs)) => addrs.collect(),
            _ => HashSet::new(),
        };
        targets.retain(|t| {
            t.parse::<std::net::SocketAddr>()
                .map_or(true, |a| !own.contains(&a))
        });
        dial(server, targets).await
    }
}

/// Tries every target once; returns those that could not be reached.
async fn dial(server: ActorRef<NodeServerMessage>, targets: Vec<String>) -> Vec<String> {
    let connected: HashSet<std::net::SocketAddr> =
        match ask(&server, NodeServerMessage::GetSessions, DIAL_TIMEOUT).await {
            Ok(sessions) => {
                let mut addrs = HashSet::new();
                for ses in sessions.values() {
                    if let Some(name) = &ses.peer_name {
                        if let Ok(Ok(found)) = tokio::time::timeout(
                            DIAL_TIMEOUT,
                            tokio::net::lookup_host(name.connection_string.clone()),
                        )
                        .await
                        {
                            addrs.extend(found);
                        }
                    }
                }
                addrs
            }
            _ => HashSet::new(),
        };
    let mut failed = Vec::new();
    for target in targets {
        let resolved =
            tokio::time::timeout(DIAL_TIMEOUT, tokio::net::lookup_host(target.clone())).await;
        let addrs: Vec<_> = match resolved {
            Ok(Ok(a)) => a.collect(),
            _ => {
                tracing::debug!(%target, "peer address does not resolve");
                failed.push(target);
                continue;
            }
        };
        for addr in addrs {
            if connected.contains(&addr) {
                continue;
            }
            match tokio::time::timeout(DIAL_TIMEOUT, ractor_cluster::client_connect(&server, addr))
                .await
            {
                Ok(Ok(())) => tracing::info!(%target, %addr, "dialled peer"),
                Ok(Err(e)) => {
                    tracing::debug!(%target, %addr, error = %e, "peer not reachable");
                    failed.push(target.clone());
                }
                Err(_) => failed.push(target.clone()),
            }
        }
    }
    failed
}

impl MembershipState {
    /// Publishes the view; `peers_by_name` is the process group as the
    /// caller just read it.
    fn publish(&self, peers_by_name: &BTreeMap<String, ActorRef<PeerMsg>>) {
        let mut members = vec![status(self.view.me(), MemberState::Up)];
        let mut peers = Vec::new();
        for m in self.view.members() {
            members.push(status(&m.info, m.state));
            if m.state == MemberState::Down {
                continue;
            }
            if let Some(actor) = peers_by_name.get(&groups::peer(&m.info.boot)) {
                peers.push(PeerHandle {
                    info: m.info.clone(),
                    actor: actor.clone(),
                });
            }
        }
        self.cluster.publish(Published {
            settled: self.settled,
            members,
            owners: self.view.owners(),
            peers,
        });
    }

    fn settle_if_ready(&mut self, peers_by_name: &BTreeMap<String, ActorRef<PeerMsg>>) {
        if self.settled {
            return;
        }
        let s = &self.settings;
        let elapsed = self.started.elapsed();
        let no_peers_configured = s.seeds.is_empty() && s.discovery_dns.is_none();
        let everyone_heard = self.dialed_once
            && elapsed >= s.heartbeat * 2
            && peers_by_name.keys().all(|name| {
                self.view
                    .members()
                    .any(|m| groups::peer(&m.info.boot) == *name)
            });
        if no_peers_configured || everyone_heard || elapsed >= s.peer_timeout {
            self.settled = true;
            tracing::info!(
                members = self.view.members().count() + 1,
                waited_ms = elapsed.as_millis() as u64,
                "membership settled"
            );
        }
    }
}

impl Actor for Membership {
    type Msg = MembershipMsg;
    type State = MembershipState;
    type Arguments = MembershipArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: MembershipArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let MembershipArgs {
            settings,
            listener,
            cluster,
            inbound,
        } = args;
        let me = cluster.me().clone();
        let public_port = listener.local_addr()?.port();
        let s = &settings;
        // The cluster-level name carries the boot id: a restarted node must not
        // be taken for its own stale session. Duplicate display names are
        // caught by our heartbeats instead (see MemberView::heard).
        let cluster_name = format!("{}-{}", me.name.replace(['@', ':'], "_"), &me.boot[..8]);
        // The NodeServer's own listener takes no peer: it is bound to an
        // ephemeral loopback port, and peers reach the NodeServer through the
        // guard on the public port.
        let server = NodeServer::new(
            0,
            s.cookie.clone(),
            cluster_name,
            s.advertise.clone(),
            None,
            Some(NodeConnectionMode::Transitive),
        )
        .with_listen_addr(std::net::Ipv4Addr::LOCALHOST.into())
        .with_max_inbound_frame_size(MAX_FRAME_BYTES);
        let (server, _) = Actor::spawn_linked(None, server, (), myself.get_cell()).await?;
        // What peers are told to dial (transitive mode): the guard's port. The
        // listener's own PortChanged (its ephemeral port) is already queued
        // ahead of this one, so this one wins.
        server.cast(NodeServerMessage::PortChanged { port: public_port })?;
        let guard = Guard::new(listener, Limits::new(s.handshake_timeout));
        server.cast(NodeServerMessage::SubscribeToEvents {
            id: "gleaner.guard".into(),
            subscription: Box::new(guard.events()),
        })?;
        server.cast(NodeServerMessage::SubscribeToEvents {
            id: "gleaner.membership".into(),
            subscription: Box::new(SessionEvents(myself.clone())),
        })?;
        let guard = tokio::spawn(guard.run(server.clone()));
        Actor::spawn_linked(
            Some(groups::peer(&me.boot)),
            Peer,
            PeerArgs {
                membership: myself.clone(),
                inbound,
            },
            myself.get_cell(),
        )
        .await?;
        let s = &settings;
        tracing::info!(
            addr = %me.cluster,
            port = public_port,
            handshake_timeout_ms = s.handshake_timeout.as_millis() as u64,
            seeds = ?s.seeds,
            discovery = ?s.discovery_dns,
            "cluster listening"
        );
        myself.send_interval(s.heartbeat, || MembershipMsg::Tick);
        let _ = myself.cast(MembershipMsg::Tick);
        Ok(MembershipState {
            view: MemberView::new(me, s.peer_timeout),
            server,
            guard,
            public_port,
            started: Instant::now(),
            last_tick: Instant::now(),
            dialing: false,
            last_dial: Instant::now() - DIAL_EVERY,
            dialed_once: false,
            settled: false,
            backoff: BTreeMap::new(),
            seen: HashSet::new(),
            warned: HashSet::new(),
            settings,
            cluster,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.guard.abort();
        myself
            .stop_children_and_wait(None, Some(Duration::from_secs(2)))
            .await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MembershipMsg::Tick => {
                // A respawned NodeServer listener announces its own new
                // ephemeral port; peers must keep being told the guard's.
                let _ = state.server.cast(NodeServerMessage::PortChanged {
                    port: state.public_port,
                });
                let now = Instant::now();
                let gap = now.saturating_duration_since(state.last_tick);
                state.last_tick = now;
                if gap > state.settings.peer_timeout / 2 {
                    // We were not running: peers' heartbeats may be queued
                    // behind this tick. Judge them from now on.
                    tracing::warn!(
                        paused_ms = gap.as_millis() as u64,
                        "this node was not running; peers get a fresh timeout"
                    );
                    state.view.forgive(now);
                }
                let peers = remote_peers();
                let beat = wire::encode(&wire::Notice::Heartbeat(state.view.me().clone()));
                for peer in peers.values() {
                    let _ = peer.cast(PeerMsg::Cast(beat.clone()));
                }
                let boots: Vec<String> =
                    state.view.members().map(|m| m.info.boot.clone()).collect();
                for boot in boots {
                    if peers.contains_key(&groups::peer(&boot)) {
                        state.seen.insert(boot);
                    } else if state.seen.remove(&boot) {
                        state.view.disconnected(&boot);
                    }
                }
                state.view.tick(now);
                state.settle_if_ready(&peers);
                // Published at every tick: peers' actor references can change
                // without a state change (a restart within the timeout).
                state.publish(&peers);
                // Dialling (DNS included) runs off this mailbox, so a slow
                // resolver never delays a heartbeat.
                if !state.dialing && state.last_dial.elapsed() >= DIAL_EVERY {
                    state.dialing = true;
                    state.last_dial = now;
                    let s = &state.settings;
                    let round = DialRound {
                        seeds: s.seeds.clone(),
                        discovery: s.discovery_dns.clone().map(|d| (d, s.port)),
                        me: state.view.me().cluster.clone(),
                        resting: state
                            .backoff
                            .iter()
                            .filter(|(_, (next, _))| *next > now)
                            .map(|(t, _)| t.clone())
                            .collect(),
                    };
                    let server = state.server.clone();
                    let me = myself.clone();
                    tokio::spawn(async move {
                        let failed = round.run(server).await;
                        let _ = me.cast(MembershipMsg::Dialed(failed));
                    });
                }
            }
            MembershipMsg::Dialed(failed) => {
                state.dialing = false;
                state.dialed_once = true;
                let now = Instant::now();
                let failed: HashSet<String> = failed.into_iter().collect();
                for target in &failed {
                    let delay = state
                        .backoff
                        .get(target)
                        .map_or(DIAL_BACKOFF, |(_, d)| (*d * 2).min(MAX_DIAL_BACKOFF));
                    state.backoff.insert(target.clone(), (now + delay, delay));
                }
                // Reached targets are checked again a little later (a session can drop).
                let reached: Vec<String> = state
                    .backoff
                    .keys()
                    .filter(|t| !failed.contains(*t))
                    .cloned()
                    .collect();
                for t in reached {
                    state.backoff.insert(t, (now + DIAL_BACKOFF, DIAL_BACKOFF));
                }
            }
            MembershipMsg::Heard(info) => {
                let name = info.name.clone();
                let known = state
                    .view
                    .get(&info.node_id)
                    .map(|m| (m.state, m.info.boot.clone()));
                match state.view.heard(info.clone(), Instant::now()) {
                    Heard::Member => {
                        let fresh = known
                            .as_ref()
                            .is_none_or(|(st, boot)| *st != MemberState::Up || *boot != info.boot);
                        if fresh {
                            tracing::info!(peer = %name, node_id = %info.node_id, addr = %info.cluster, "member up");
                            state.publish(&remote_peers());
                        }
                    }
                    Heard::DuplicateOfUs => {
                        if state.warned.insert(info.boot.clone()) {
                            tracing::warn!(peer_addr = %info.cluster, %name, "a younger node claims this node's name; it is not admitted");
                        }
                    }
                    Heard::WeAreTheDuplicate => {
                        let reason = format!(
                            "another node named '{name}' (at {}) is already a member of the cluster: \
                             give this node a unique GLEANER_NODE_NAME",
                            info.cluster
                        );
                        tracing::error!(%name, peer_addr = %info.cluster, "node name already taken");
                        state.cluster.fatal(reason);
                    }
                    Heard::DuplicateOfMember(holder) => {
                        if state.warned.insert(info.boot.clone()) {
                            tracing::warn!(%name, holder = %holder, peer_addr = %info.cluster, "a node claims a member's name; it is not admitted");
                        }
                    }
                }
            }
            MembershipMsg::Stats(reply) => {
                let sessions = ask(
                    &state.server,
                    NodeServerMessage::GetSessions,
                    Duration::from_secs(1),
                )
                .await
                .map_or(0, |s| s.len());
                let _ = reply.send(MembershipStats {
                    settled: state.settled,
                    members: state.cluster.members(),
                    sessions,
                });
            }
        }
        Ok(())
    }
}
