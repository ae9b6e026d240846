//! Clusters of nodes, and the steps the cluster tests repeat: form, see who
//! owns which source, kill or cut one node, name the survivors, and wait until
//! they agree. The waits work on any [`Member`]: a `gleaner node` process
//! (which must answer every request) or a node container (which may not, while
//! it restarts or is cut off).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::node::{free_port, wait_until, Node, NodeConfig, COOKIE};

/// Ports, names and data directories for a cluster of test nodes that all
/// know each other as seeds.
pub struct ClusterPlan {
    pub ports: Vec<u16>,
    pub dir: tempfile::TempDir,
}

impl ClusterPlan {
    pub fn new(n: usize) -> ClusterPlan {
        ClusterPlan {
            ports: (0..n).map(|_| free_port()).collect(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn seeds(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{i}"))
    }

    /// Node `i` (0-based) of the plan: named `n{i}`.
    pub fn config(&self, i: usize) -> NodeConfig {
        NodeConfig::new(&self.data_dir(i))
            .env("GLEANER_NODE_NAME", &format!("n{i}"))
            .env("GLEANER_CLUSTER_PORT", &self.ports[i].to_string())
            .env("GLEANER_SEEDS", &self.seeds())
            .env("GLEANER_COOKIE", COOKIE)
    }
}

/// The live nodes of a plan, by index; node `i` is named `n{i}`.
pub struct Cluster {
    pub plan: ClusterPlan,
    pub nodes: BTreeMap<usize, Node>,
}

impl Cluster {
    /// Starts the plan's nodes `order`, in that order.
    pub async fn start(plan: ClusterPlan, order: &[usize]) -> Cluster {
        let mut cluster = Cluster {
            plan,
            nodes: BTreeMap::new(),
        };
        for &i in order {
            cluster.add(i, |c| c).await;
        }
        cluster
    }

    /// Starts node `i` of the plan, its configuration changed by `adjust`.
    pub async fn add(&mut self, i: usize, adjust: impl FnOnce(NodeConfig) -> NodeConfig) {
        let node = adjust(self.plan.config(i)).start().await;
        self.nodes.insert(i, node);
    }

    /// The live nodes, by index.
    pub fn all(&self) -> Vec<&Node> {
        self.nodes.values().collect()
    }

    /// The live nodes' names.
    pub fn names(&self) -> Vec<String> {
        self.nodes.keys().map(|i| format!("n{i}")).collect()
    }

    /// The live nodes but `i`.
    pub fn others(&self, i: usize) -> Vec<&Node> {
        self.nodes
            .iter()
            .filter(|(j, _)| **j != i)
            .map(|(_, n)| n)
            .collect()
    }

    /// The live nodes' names but `i`'s.
    pub fn other_names(&self, i: usize) -> Vec<String> {
        self.nodes
            .keys()
            .filter(|j| **j != i)
            .map(|j| format!("n{j}"))
            .collect()
    }

    /// SIGKILLs node `i` and forgets it: the rest are the survivors.
    pub fn kill9(&mut self, i: usize) {
        let mut node = self.nodes.remove(&i).expect("a live node");
        node.kill9();
    }

    /// SIGTERMs node `i`, forgets it, and returns whether it exited 0.
    pub fn terminate(&mut self, i: usize) -> bool {
        let mut node = self.nodes.remove(&i).expect("a live node");
        node.terminate()
    }

    /// Waits until every live node sees exactly the live nodes, all up.
    pub async fn formed(&self, within: Duration) {
        wait_for_members(&self.all(), &self.names(), within).await;
    }
}

/// The index of the node named `n{i}`.
pub fn index_of(name: &str) -> usize {
    name.strip_prefix('n')
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("not a test node's name: {name}"))
}

/// What a test asks any cluster member, process or container. None: the
/// member did not answer as it should, and the wait goes on (a process node
/// panics instead: it must answer).
pub trait Member {
    /// The member in messages.
    fn label(&self) -> String;
    /// The members it sees, as (name, state) pairs sorted by name.
    async fn seen_members(&self) -> Option<Vec<(String, String)>>;
    /// Each source's owner as it sees it.
    async fn seen_owners(&self) -> Option<BTreeMap<String, Option<String>>>;
    /// The item keys it serves for a collection (empty if there is none).
    async fn served_keys(&self, collection: &str) -> Option<Vec<String>>;
}

impl Member for Node {
    fn label(&self) -> String {
        format!("node {}", self.addr)
    }

    async fn seen_members(&self) -> Option<Vec<(String, String)>> {
        Some(self.members().await)
    }

    async fn seen_owners(&self) -> Option<BTreeMap<String, Option<String>>> {
        let (status, body) = self.get("/api/v1/sources").await;
        assert_eq!(status, 200, "{body}");
        Some(owners_in(&body).unwrap_or_else(|| panic!("sources in {body}")))
    }

    async fn served_keys(&self, collection: &str) -> Option<Vec<String>> {
        Some(self.item_keys(collection).await)
    }
}

/// The members in a `/api/v1/cluster` body, as (name, state) pairs sorted by name.
pub fn members_in(body: &Value) -> Option<Vec<(String, String)>> {
    let mut out = body["members"]
        .as_array()?
        .iter()
        .map(|m| {
            Some((
                m["name"].as_str()?.to_owned(),
                m["state"].as_str()?.to_owned(),
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    out.sort();
    Some(out)
}

/// Each source's owner in a `/api/v1/sources` body.
pub fn owners_in(body: &Value) -> Option<BTreeMap<String, Option<String>>> {
    body["sources"]
        .as_array()?
        .iter()
        .map(|s| {
            Some((
                s["id"].as_str()?.to_owned(),
                s["status"]["owner"].as_str().map(str::to_owned),
            ))
        })
        .collect()
}

fn all_up(names: &[impl AsRef<str>]) -> Vec<(String, String)> {
    let mut want: Vec<(String, String)> = names
        .iter()
        .map(|n| (n.as_ref().to_owned(), "up".to_owned()))
        .collect();
    want.sort();
    want
}

/// Waits until every node sees exactly `names` as members, all up.
pub async fn wait_for_members<M: Member>(
    nodes: &[&M],
    names: &[impl AsRef<str>],
    within: Duration,
) {
    let want = all_up(names);
    for node in nodes {
        wait_until(
            &format!("{} to see members {want:?}", node.label()),
            within,
            || async { (node.seen_members().await? == want).then_some(()) },
        )
        .await;
    }
}

/// Waits until the members every node sees up are exactly `names` (others
/// may be listed down).
pub async fn wait_for_up<M: Member>(nodes: &[&M], names: &[impl AsRef<str>], within: Duration) {
    let want = all_up(names);
    for node in nodes {
        wait_until(
            &format!("{} to see {want:?} up", node.label()),
            within,
            || async {
                let seen = node.seen_members().await?;
                let up: Vec<_> = seen.into_iter().filter(|(_, s)| s == "up").collect();
                (up == want).then_some(())
            },
        )
        .await;
    }
}

/// Waits until `node` sees the member `who` down.
pub async fn wait_down<M: Member>(node: &M, who: &str, within: Duration) {
    wait_until(
        &format!("{} to see {who} down", node.label()),
        within,
        || async {
            node.seen_members()
                .await?
                .iter()
                .any(|(n, s)| n == who && s == "down")
                .then_some(())
        },
    )
    .await;
}

/// Waits until every node agrees on the owners of all `sources` sources, each
/// among `allowed`, and returns the agreed owners.
pub async fn agreed_owners<M: Member>(
    nodes: &[&M],
    sources: usize,
    allowed: &[impl AsRef<str>],
    within: Duration,
) -> BTreeMap<String, String> {
    wait_until("every node to agree on the owners", within, || async {
        let first = nodes[0].seen_owners().await?;
        if first.len() != sources {
            return None;
        }
        for node in &nodes[1..] {
            if node.seen_owners().await? != first {
                return None;
            }
        }
        let agreed: BTreeMap<String, String> = first
            .into_iter()
            .map(|(id, o)| Some((id, o?)))
            .collect::<Option<_>>()?;
        agreed
            .values()
            .all(|o| allowed.iter().any(|a| a.as_ref() == o))
            .then_some(agreed)
    })
    .await
}

/// Waits until every node serves exactly `want` keys for the collection;
/// returns the last node's keys.
pub async fn wait_for_items<M: Member>(
    nodes: &[&M],
    collection: &str,
    want: usize,
    within: Duration,
) -> Vec<String> {
    let mut keys = Vec::new();
    for node in nodes {
        keys = wait_until(
            &format!("{want} items on {}", node.label()),
            within,
            || async {
                let k = node.served_keys(collection).await?;
                (k.len() == want).then_some(k)
            },
        )
        .await;
    }
    keys
}
