//! The member view: who is in the cluster and whether they answer. Plain
//! logic, driven by the Membership actor: it reports heartbeats and lost
//! sessions and asks for the view at each tick.
//!
//! A peer is `up` while its heartbeats arrive, `suspect` after a third of the
//! timeout without one, and `down` after the whole timeout or as soon as its
//! session closes. Down members stay listed (so the API shows them) until
//! they return. Placement counts `up` and `suspect` members of role `node`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What a node says about itself in every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The stable id placement hashes on (survives restarts).
    pub node_id: String,
    /// The display name (unique in the cluster).
    pub name: String,
    /// Differs for every start of the process.
    pub boot: String,
    /// When this process started, in Unix milliseconds (the older of two
    /// nodes that claim one name keeps it).
    pub started_at: i64,
    pub role: Role,
    /// The HTTP address as peers should use it.
    pub http: String,
    /// The cluster address peers dial (`host:port`).
    pub cluster: String,
    /// The software version.
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A full node: may own sources, stores every collection.
    Node,
    /// A worker process for one isolated source: never owns anything.
    Worker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Up,
    Suspect,
    Down,
}

/// One member as the view holds it.
#[derive(Debug, Clone)]
pub struct Member {
    pub info: NodeInfo,
    pub state: MemberState,
    pub last_heard: Instant,
    /// Set when the member's session closed; cleared by its next heartbeat.
    pub disconnected: bool,
}

/// What a heartbeat from a peer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A member (new, returning or known).
    Member,
    /// The peer claims our own name (or id) and is younger: it is not admitted.
    DuplicateOfUs,
    /// The peer claims our name (or id) and is older: we must leave.
    WeAreTheDuplicate,
    /// The peer claims the name of another member that is older: not admitted.
    DuplicateOfMember(String),
}

/// The members this node knows, itself excluded.
#[derive(Debug)]
pub struct MemberView {
    me: NodeInfo,
    members: BTreeMap<String, Member>,
    timeout: Duration,
}

/// Does `a` have the better claim to a name than `b` (older wins; node id breaks ties)?
fn older(a: &NodeInfo, b: &NodeInfo) -> bool {
    (a.started_at, &a.node_id, &a.boot) < (b.started_at, &b.node_id, &b.boot)
}

impl MemberView {
    pub fn new(me: NodeInfo, timeout: Duration) -> Self {
        MemberView {
            me,
            members: BTreeMap::new(),
            timeout,
        }
    }

    pub fn me(&self) -> &NodeInfo {
        &self.me
    }

    /// A heartbeat from `info` arrived at `now`.
    pub fn heard(&mut self, info: NodeInfo, now: Instant) -> Heard {
        if info.boot == self.me.boot {
            return Heard::DuplicateOfUs;
        }
        if info.name == self.me.name || info.node_id == self.me.node_id {
            return if older(&info, &self.me) {
                Heard::WeAreTheDuplicate
            } else {
                Heard::DuplicateOfUs
            };
        }
        if let Some(other) = self.members.values().find(|m| {
            m.info.name == info.name
                && m.info.node_id != info.node_id
                && m.state != MemberState::Down
        }) {
            if older(&other.info, &info) {
                return Heard::DuplicateOfMember(other.info.node_id.clone());
            }
            let displaced = other.info.node_id.clone();
            self.members.remove(&displaced);
        }
        self.members.insert(
            info.node_id.clone(),
            Member {
                info,
                state: MemberState::Up,
                last_heard: now,
                disconnected: false,
            },
        );
        Heard::Member
    }

    /// This node itself was not running for a while (a frozen process, a
    /// suspended VM): the silence it measured is its own, so every member
    /// that is not known down is given a fresh timeout instead of being
    /// declared down by a clock that did not see it.
    pub fn forgive(&mut self, now: Instant) {
        for m in self.members.values_mut() {
            if !m.disconnected {
                m.last_heard = m.last_heard.max(now);
            }
        }
    }

    /// The session to the peer with this boot id closed: it is down at once.
    pub fn disconnected(&mut self, boot: &str) {
        if let Some(m) = self.members.values_mut().find(|m| m.info.boot == boot) {
            m.disconnected = true;
            m.state = MemberState::Down;
        }
    }

    /// Moves members along up -> suspect -> down by silence; says whether any state changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for m in self.members.values_mut() {
            let silent = now.saturating_duration_since(m.last_heard);
            let state = if m.disconnected || silent >= self.timeout {
                MemberState::Down
            } else if silent >= self.timeout / 3 {
                MemberState::Suspect
            } else {
                MemberState::Up
            };
            if state != m.state {
                tracing::info!(peer = %m.info.name, node_id = %m.info.node_id, from = ?m.state, to = ?state, "member state changed");
                m.state = state;
                changed = true;
            }
        }
        changed
    }

    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }

    pub fn get(&self, node_id: &str) -> Option<&Member> {
        self.members.get(node_id)
    }

    /// Node ids that may own sources: this node and every node not down.
    pub fn owners(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .members
            .values()
            .filter(|m| m.info.role == Role::Node && m.state != MemberState::Down)
            .map(|m| m.info.node_id.clone())
            .collect();
        if self.me.role == Role::Node {
            ids.push(self.me.node_id.clone());
        }
        ids.sort();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, id: &str, started: i64) -> NodeInfo {
        NodeInfo {
            node_id: id.into(),
            name: name.into(),
            boot: format!("{id}-{started}"),
            started_at: started,
            role: Role::Node,
            http: String::new(),
            cluster: String::new(),
            version: String::new(),
        }
    }

    #[test]
    fn silence_makes_suspect_then_down_and_a_heartbeat_revives() {
        let t0 = Instant::now();
        let mut v = MemberView::new(info("a", "A", 1), Duration::from_secs(3));
        assert_eq!(v.heard(info("b", "B", 1), t0), Heard::Member);
        assert_eq!(v.owners(), ["A", "B"]);
        assert!(!v.tick(t0 + Duration::from_millis(500)));
        assert!(v.tick(t0 + Duration::from_millis(1100)));
        assert_eq!(v.get("B").unwrap().state, MemberState::Suspect);
        assert_eq!(v.owners(), ["A", "B"]);
        assert!(v.tick(t0 + Duration::from_secs(3)));
        assert_eq!(v.owners(), ["A"]);
        v.heard(info("b", "B", 1), t0 + Duration::from_secs(4));
        assert!(
            !v.tick(t0 + Duration::from_secs(4)),
            "a heartbeat revives at once"
        );
        assert_eq!(v.owners(), ["A", "B"]);
        v.disconnected("B-1");
        assert_eq!(v.owners(), ["A"]);
    }

    #[test]
    fn a_node_that_was_frozen_itself_does_not_condemn_its_peers() {
        let t0 = Instant::now();
        let mut v = MemberView::new(info("a", "A", 1), Duration::from_secs(3));
        v.heard(info("b", "B", 1), t0);
        let woke = t0 + Duration::from_secs(60);
        v.forgive(woke);
        assert!(!v.tick(woke));
        assert_eq!(v.owners(), ["A", "B"]);
        assert!(v.tick(woke + Duration::from_secs(3)));
        assert_eq!(v.owners(), ["A"]);
    }

    #[test]
    fn the_older_claim_to_a_name_wins() {
        let t0 = Instant::now();
        let mut v = MemberView::new(info("a", "A", 10), Duration::from_secs(3));
        assert_eq!(v.heard(info("a", "X", 20), t0), Heard::DuplicateOfUs);
        assert_eq!(v.heard(info("a", "X", 5), t0), Heard::WeAreTheDuplicate);
        assert_eq!(v.heard(info("b", "B", 1), t0), Heard::Member);
        assert_eq!(
            v.heard(info("b", "Y", 2), t0),
            Heard::DuplicateOfMember("B".into())
        );
        assert_eq!(v.owners(), ["A", "B"]);
        // A restarted node keeps its id and takes its entry back.
        let mut again = info("b", "B", 30);
        again.boot = "B-30".into();
        assert_eq!(v.heard(again, t0), Heard::Member);
        assert_eq!(v.get("B").unwrap().info.boot, "B-30");
    }
}
