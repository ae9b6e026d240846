//! The node image in a real Docker engine: the image built by
//! `scripts/image.sh`, a Swarm stack from `swarm/`, and container faults
//! (kill, pause, network partition, rolling restart) on a three-node cluster.
//!
//! Every test makes its own user-defined network, containers, and (for Swarm)
//! stack, secrets and volumes, all named with a per-test prefix, and removes
//! them when it ends, also when it fails. The test reaches the nodes only on
//! their published ports on 127.0.0.1. The fixture web site is `busybox httpd`
//! in a container from the image's own base, on the test's network; its
//! verbose log (`docker logs -t`) is the request log: when, from which
//! container address, which page.
//!
//! These tests need a Docker engine: without one they fail, saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::harness::cluster::{
    agreed_owners, wait_down, wait_for_items, wait_for_members, wait_for_up,
};
use crate::harness::docker::{
    docker, docker_try, docker_with, exclusive, image, inspect, prefix, repo_root, Cleanup, Hit,
    Network, NodeBox, NodeRun, Site,
};
use crate::harness::fixture::{page_path, page_spec};
use crate::harness::wait_until;

const FORM: Duration = Duration::from_secs(90);
const SETTLE: Duration = Duration::from_secs(60);
/// Sources in the fault tests: one catalogue page (20 items) each, every second.
const SOURCES: u32 = 6;
const ITEMS: usize = SOURCES as usize * 20;

/// The node a fault strikes (the first source's owner), and the others.
struct Target {
    source: String,
    owner: String,
    node: usize,
    /// The source's catalogue page.
    page: u32,
    rest: Vec<usize>,
    /// The others' addresses on the test network.
    rest_ips: Vec<String>,
}

/// Three node containers and the fixture, on one network of the test's own.
struct Cluster {
    nodes: Vec<NodeBox>,
    network: Network,
    web: Site,
}

impl Cluster {
    async fn start(made: &mut Cleanup, prefix: &str) -> Cluster {
        image();
        let network = Network::create(made, &format!("{prefix}net"));
        let web = Site::start(made, &format!("{prefix}web"), &network, SOURCES);
        let names: Vec<String> = (0..3).map(|i| format!("{prefix}n{i}")).collect();
        let mut nodes = Vec::new();
        for (i, container) in names.iter().enumerate() {
            let seeds = names
                .iter()
                .filter(|n| *n != container)
                .map(|n| format!("{n}:4697"))
                .collect::<Vec<_>>()
                .join(",");
            let started = Instant::now();
            let node = NodeRun {
                container,
                name: &format!("n{i}"),
                network: &network,
                seeds: &seeds,
                options: &["-e".into(), "GLEANER_RESTART_BACKOFF_MS=200".into()],
            }
            .start(made, SETTLE)
            .await;
            node.wait_ready(SETTLE).await;
            eprintln!(
                "container {container}: docker run to /readyz in {} ms",
                started.elapsed().as_millis()
            );
            nodes.push(node);
        }
        let cluster = Cluster {
            nodes,
            network,
            web,
        };
        cluster.wait_members(&[0, 1, 2], &[0, 1, 2]).await;
        cluster
    }

    /// The nodes `on`.
    fn pick(&self, on: &[usize]) -> Vec<&NodeBox> {
        on.iter().map(|&i| &self.nodes[i]).collect()
    }

    /// The names of the nodes `on`.
    fn names(&self, on: &[usize]) -> Vec<String> {
        on.iter().map(|&i| self.nodes[i].name.clone()).collect()
    }

    /// The container's address on the test network.
    fn ip(&self, i: usize) -> String {
        self.network.ip(&self.nodes[i].container)
    }

    fn name_of(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap()
    }

    /// Waits until each of `on` sees exactly the nodes `want` up.
    async fn wait_members(&self, on: &[usize], want: &[usize]) {
        wait_for_up(&self.pick(on), &self.names(want), FORM).await;
    }

    /// Waits until node `on` sees node `who` down.
    async fn wait_down(&self, on: usize, who: usize) {
        wait_down(&self.nodes[on], &self.nodes[who].name, SETTLE).await;
    }

    /// Waits until the nodes `on` agree on every source's owner, each among
    /// `allowed`; returns the owners.
    async fn agreed_owners(&self, on: &[usize], allowed: &[usize]) -> BTreeMap<String, String> {
        agreed_owners(
            &self.pick(on),
            SOURCES as usize,
            &self.names(allowed),
            SETTLE,
        )
        .await
    }

    /// Waits until every node of `on` serves exactly ITEMS items, none twice.
    async fn wait_items(&self, on: &[usize]) {
        for &i in on {
            let keys = wait_for_items(&[&self.nodes[i]], "books", ITEMS, SETTLE).await;
            let unique: BTreeSet<&String> = keys.iter().collect();
            assert_eq!(
                unique.len(),
                ITEMS,
                "an item twice on {}",
                self.nodes[i].name
            );
        }
    }

    /// The node a fault test strikes: the first source's owner.
    fn target(&self, owners: &BTreeMap<String, String>) -> Target {
        let (source, owner) = owners.iter().next().unwrap();
        let node = self.name_of(owner);
        let rest: Vec<usize> = (0..3).filter(|&i| i != node).collect();
        Target {
            source: source.clone(),
            owner: owner.clone(),
            node,
            page: source[1..].parse().unwrap(),
            rest_ips: rest.iter().map(|&i| self.ip(i)).collect(),
            rest,
        }
    }

    /// Waits until the rest see the target down and agree on the owners among
    /// themselves; returns the owners.
    async fn rest_agree(&self, t: &Target) -> BTreeMap<String, String> {
        for &i in &t.rest {
            self.wait_down(i, t.node).await;
        }
        self.agreed_owners(&t.rest, &t.rest).await
    }

    async fn create_sources(&self) {
        for page in 1..=SOURCES {
            let spec = page_spec(&format!("s{page}"), &self.web.url(page), 1);
            let (status, _) = self.nodes[0].post("/api/v1/sources", &spec).await;
            assert_eq!(status, 201, "creating s{page}");
        }
    }

    /// Waits until every source's page was requested from the addresses
    /// `from` after log position `since`, `times` times.
    async fn wait_scraped(&self, since: usize, from: &[String], times: usize, what: &str) {
        wait_until(what, SETTLE, || async {
            let hits = self.web.hits();
            let fresh = hits.get(since..).unwrap_or_default();
            (1..=SOURCES)
                .all(|p| {
                    fresh
                        .iter()
                        .filter(|h| h.path == page_path(p) && from.contains(&h.ip))
                        .count()
                        >= times
                })
                .then_some(())
        })
        .await;
    }

    /// Once the struck node is back: every member up, placement back where it
    /// was (`owners`), one scraper per source, and every item on every node.
    async fn assert_healed(&self, owners: &BTreeMap<String, String>) {
        self.wait_members(&[0, 1, 2], &[0, 1, 2]).await;
        let back = self.agreed_owners(&[0, 1, 2], &[0, 1, 2]).await;
        assert_eq!(back, *owners, "placement returns to where it was");
        self.assert_one_scraper_each(&back).await;
        self.wait_items(&[0, 1, 2]).await;
    }

    /// Once placement is stable, each page is fetched from its owner's
    /// address only: one scraper per source, as the fixture sees it.
    async fn assert_one_scraper_each(&self, owners: &BTreeMap<String, String>) {
        let ips: BTreeMap<String, String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), self.ip(i)))
            .collect();
        let all: Vec<String> = ips.values().cloned().collect();
        // Let a run that was under way at the change finish, then watch a window.
        let mark = self.web.hits().len();
        self.wait_scraped(mark, &all, 2, "two more runs of every source")
            .await;
        let window = self.web.hits().len();
        self.wait_scraped(window, &all, 2, "a window of runs of every source")
            .await;
        let hits = self.web.hits();
        for (id, owner) in owners {
            let page: u32 = id[1..].parse().unwrap();
            let from: BTreeSet<&String> = hits[window..]
                .iter()
                .filter(|h| h.path == page_path(page))
                .map(|h| &h.ip)
                .collect();
            assert_eq!(
                from,
                BTreeSet::from([&ips[owner]]),
                "source {id} (owner {owner}) fetched from {from:?}; addresses {ips:?}"
            );
        }
    }
}

/// A cluster with the sources placed and every item collected everywhere.
async fn scraping_cluster(made: &mut Cleanup, prefix: &str) -> (Cluster, BTreeMap<String, String>) {
    let c = Cluster::start(made, prefix).await;
    c.create_sources().await;
    c.wait_items(&[0, 1, 2]).await;
    let owners = c.agreed_owners(&[0, 1, 2], &[0, 1, 2]).await;
    (c, owners)
}

fn ms_since(t: DateTime<Utc>, hit: &Hit) -> i64 {
    (hit.at - t).num_milliseconds()
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_container_s_sources_move_and_nothing_is_lost() {
    let _one = exclusive().await;
    let mut made = Cleanup::default();
    let (c, owners) = scraping_cluster(&mut made, &prefix("kill")).await;
    let t = c.target(&owners);
    let (page, survivor_ips) = (t.page, &t.rest_ips);

    let killed_at = Utc::now();
    docker(&["kill", &c.nodes[t.node].container]);
    let mark = c.web.hits().len();

    // The fixture sees the page fetched again, from a survivor's address.
    let refetch = wait_until(
        "a survivor to fetch the killed owner's page",
        SETTLE,
        || async {
            c.web.hits().into_iter().find(|h| {
                h.path == page_path(page) && survivor_ips.contains(&h.ip) && h.at > killed_at
            })
        },
    )
    .await;
    eprintln!(
        "failover after docker kill: page {page} fetched by a survivor {} ms after the kill",
        ms_since(killed_at, &refetch)
    );
    let moved = c.rest_agree(&t).await;
    assert_ne!(moved[&t.source], t.owner);
    for (id, o) in &owners {
        if *o != t.owner {
            assert_eq!(moved[id], *o, "{id} moved though its owner lived");
        }
    }
    // Every source is scraped by the survivors, and nothing collected is lost.
    c.wait_scraped(
        mark,
        survivor_ips,
        1,
        "every source scraped by the survivors",
    )
    .await;
    c.wait_items(&t.rest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_container_loses_its_sources_and_gets_them_back_once() {
    let _one = exclusive().await;
    let mut made = Cleanup::default();
    let (c, owners) = scraping_cluster(&mut made, &prefix("pause")).await;
    let t = c.target(&owners);
    let (page, other_ips) = (t.page, &t.rest_ips);

    let paused_at = Utc::now();
    docker(&["pause", &c.nodes[t.node].container]);
    let mark = c.web.hits().len();
    let moved = c.rest_agree(&t).await;
    assert_ne!(moved[&t.source], t.owner);
    let refetch = wait_until(
        "another node to fetch the paused owner's page",
        SETTLE,
        || async {
            c.web
                .hits()
                .into_iter()
                .skip(mark)
                .find(|h| h.path == page_path(page) && other_ips.contains(&h.ip))
        },
    )
    .await;
    eprintln!(
        "failover after docker pause: page {page} fetched by another node {} ms after the pause",
        ms_since(paused_at, &refetch)
    );

    docker(&["unpause", &c.nodes[t.node].container]);
    c.assert_healed(&owners).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_container_the_majority_keeps_scraping_and_it_heals_to_one_owner() {
    let _one = exclusive().await;
    let mut made = Cleanup::default();
    let (c, owners) = scraping_cluster(&mut made, &prefix("part")).await;
    let t = c.target(&owners);
    let (cut, majority_ips) = (t.node, &t.rest_ips);

    // A 1|2 partition: the owner leaves the network (and with it the fixture).
    let cut_at = Instant::now();
    docker(&[
        "network",
        "disconnect",
        &c.network.name,
        &c.nodes[cut].container,
    ]);
    let mark = c.web.hits().len();
    c.rest_agree(&t).await;
    // The majority scrapes every source, the cut node's included.
    c.wait_scraped(mark, majority_ips, 2, "the majority to scrape every source")
        .await;
    eprintln!(
        "partition: the majority scraped every source twice within {} ms of the cut",
        cut_at.elapsed().as_millis()
    );
    c.wait_items(&t.rest).await;

    docker(&[
        "network",
        "connect",
        &c.network.name,
        &c.nodes[cut].container,
    ]);
    c.nodes[cut].refresh(SETTLE).await;
    c.assert_healed(&owners).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_keeps_the_query_api_answering_and_loses_nothing() {
    let _one = exclusive().await;
    let mut made = Cleanup::default();
    let (c, _) = scraping_cluster(&mut made, &prefix("roll")).await;
    let c = std::sync::Arc::new(c);
    for i in 0..3 {
        // While node i restarts, some other node answers every query.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probe = {
            let (c, stop) = (c.clone(), stop.clone());
            tokio::spawn(async move {
                let others: Vec<usize> = (0..3).filter(|&j| j != i).collect();
                let (mut rounds, mut unanswered) = (0u32, Vec::new());
                // Bounded: at most 5 minutes of 100 ms rounds.
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && rounds < 3000 {
                    rounds += 1;
                    let mut answered = false;
                    for &j in &others {
                        if let Some((200, body)) = c.nodes[j]
                            .try_get("/api/v1/collections/books/items?limit=5")
                            .await
                        {
                            answered = body["items"].as_array().is_some_and(|a| a.len() == 5);
                            if answered {
                                break;
                            }
                        }
                    }
                    if !answered {
                        unanswered.push(rounds);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (rounds, unanswered)
            })
        };
        let started = Instant::now();
        docker(&["restart", &c.nodes[i].container]);
        c.nodes[i].refresh(SETTLE).await;
        c.nodes[i].wait_ready(SETTLE).await;
        c.wait_members(&[0, 1, 2], &[0, 1, 2]).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (rounds, unanswered) = probe.await.unwrap();
        eprintln!(
            "rolling restart: {} back and every member up in {} ms; {rounds} query rounds",
            c.nodes[i].name,
            started.elapsed().as_millis()
        );
        assert!(
            unanswered.is_empty(),
            "no other node answered in rounds {unanswered:?} of {rounds} while {} restarted",
            c.nodes[i].name
        );
    }
    let owners = c.agreed_owners(&[0, 1, 2], &[0, 1, 2]).await;
    let all_ips: Vec<String> = (0..3).map(|i| c.ip(i)).collect();
    let mark = c.web.hits().len();
    c.wait_scraped(mark, &all_ips, 1, "every source scraped after the restarts")
        .await;
    assert_eq!(owners.len(), SOURCES as usize);
    c.wait_items(&[0, 1, 2]).await;
}

/// A worker container of the Swarm test's cluster, as `docker inspect` shows it.
#[derive(Debug, Clone)]
struct SwarmWorker {
    id: String,
    source: String,
    /// The node id of the node that started it.
    owner: String,
    /// `running`, `exited`, ...
    state: String,
    /// `starting`, `healthy`, `unhealthy`, or empty without a healthcheck.
    health: String,
    /// Its address on the stack's network.
    ip: String,
    /// Its anonymous volumes (the image's /data).
    volumes: Vec<String>,
}

/// Every worker container labelled with the cluster `filter`
/// (`label=org.gleaner.cluster=…`), running or not.
fn swarm_workers(filter: &str, network: &str) -> Vec<SwarmWorker> {
    let ids = docker_try(&["ps", "-aq", "--no-trunc", "--filter", filter]).unwrap_or_default();
    ids.split_whitespace()
        .filter_map(|id| inspect(id).ok())
        .map(|c| {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
            SwarmWorker {
                id: text(&c["Id"]),
                source: text(&c["Config"]["Labels"]["org.gleaner.source"]),
                owner: text(&c["Config"]["Labels"]["org.gleaner.owner"]),
                state: text(&c["State"]["Status"]),
                health: text(&c["State"]["Health"]["Status"]),
                ip: text(&c["NetworkSettings"]["Networks"][network]["IPAddress"]),
                volumes: c["Mounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|m| m["Type"] == "volume")
                    .filter_map(|m| m["Name"].as_str().map(str::to_owned))
                    .collect(),
            }
        })
        .collect()
}

/// The nodes (not the workers) `task` lists up: (name, node id), sorted.
async fn nodes_up(task: &NodeBox) -> Option<Vec<(String, String)>> {
    let (200, body) = task.try_get("/api/v1/cluster").await? else {
        return None;
    };
    let mut up: Vec<(String, String)> = body["members"]
        .as_array()?
        .iter()
        .filter(|m| m["role"] != "worker" && m["state"] == "up")
        .filter_map(|m| {
            Some((
                m["name"].as_str()?.to_owned(),
                m["node_id"].as_str()?.to_owned(),
            ))
        })
        .collect();
    up.sort();
    Some(up)
}

/// The Swarm stack (swarm/stack.yml with swarm/stack.test.yml) on this one
/// Swarm node, through an operator's whole cycle:
///
/// 1. three replicas find each other through `tasks.gleaner` and form one
///    cluster, reading the cookie and the tokens from Swarm secrets;
/// 2. an isolated source runs in a worker container on the stack's
///    (attachable) overlay, which turns healthy and scrapes a site there;
/// 3. the owner's task is killed: a survivor runs the source in a worker of
///    its own, the old worker is removed with its volume, and once the task
///    is back and membership stable one healthy worker makes every fetch;
/// 4. `docker stack rm` leaves no task, worker, worker volume or network, and
///    the secrets and data volumes (kept by Swarm on purpose) can be removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_swarm_stack_forms_one_cluster_fails_over_and_leaves_nothing_when_removed() {
    let _one = exclusive().await;
    let image = image();
    let p = prefix("sw");
    let mut made = Cleanup::default();

    let state = docker(&[
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
    ]);
    match state.as_str() {
        "active true" => eprintln!("this engine is a Swarm manager already: reused"),
        s if s.starts_with("inactive") => {
            match docker_try(&["swarm", "init", "--advertise-addr", "127.0.0.1"]) {
                Ok(_) => made.left_swarm = true,
                Err(e) => panic!("Swarm mode cannot start on this engine: {e}"),
            }
        }
        other => {
            panic!("this engine's Swarm state is '{other}': the test needs a manager or no Swarm")
        }
    }

    // The secrets the stack reads through GLEANER_*_FILE. The cookie is this
    // test's own, so the cluster label of its workers is too.
    let admin = format!("{p}-admin-token-0123456789abcdef");
    let cookie = format!("{p}-cluster-cookie-0123456789abcdef");
    // The collection routes take the read token, not the admin one.
    let read = format!("{p}-read-token-0123456789abcdef");
    for (name, value) in [
        ("cookie", cookie.clone()),
        ("admin_token", admin.clone()),
        ("read_token", read.clone()),
    ] {
        let secret = format!("{p}_{name}");
        docker_with(&["secret", "create", &secret, "-"], Some(&value), &[])
            .unwrap_or_else(|e| panic!("{e}"));
        made.secrets.push(secret);
    }
    let workers_of = format!(
        "label=org.gleaner.cluster={}",
        gleaner::isolation::cluster_label(&cookie)
    );
    made.sweep.push(workers_of.clone());
    // The Swarm agent tries to pull a task's image before it uses the local
    // one: a reference on 127.0.0.1, port 1 (nothing listens there), keeps that
    // attempt on loopback, where it is refused at once.
    let local_ref = format!("127.0.0.1:1/gleaner:{p}");
    docker(&["tag", image, &local_ref]);
    made.tags.push(local_ref.clone());
    made.volumes = (1..=3).map(|s| format!("{p}-data-{s}")).collect();
    made.stack = Some(p.clone());
    let port = crate::harness::node::free_port().to_string();
    // The nodes may use the engine's socket (isolated sources), and scrape
    // the addresses of Swarm's overlay networks, where the fixture runs.
    let gid = std::fs::metadata("/var/run/docker.sock")
        .map(|m| std::os::unix::fs::MetadataExt::gid(&m).to_string())
        .expect("the engine's socket is /var/run/docker.sock");
    // Swarm's address pools (10.0.0.0/8 unless `swarm init` was told others).
    let pools: Option<Vec<String>> = serde_json::from_str(&docker(&[
        "info",
        "--format",
        "{{json .Swarm.Cluster.DefaultAddrPool}}",
    ]))
    .unwrap_or(None);
    let pools = pools.map_or_else(|| "10.0.0.0/8".to_owned(), |p| p.join(","));
    let env = [
        ("GLEANER_IMAGE", local_ref.as_str()),
        ("GLEANER_HTTP_PORT", port.as_str()),
        ("GLEANER_TEST_PREFIX", p.as_str()),
        ("GLEANER_STACK", p.as_str()),
        ("GLEANER_DOCKER_GID", gid.as_str()),
        ("GLEANER_ALLOW_PRIVATE_TARGETS", pools.as_str()),
    ];
    let swarm = repo_root().join("swarm");
    let (stack, test) = (swarm.join("stack.yml"), swarm.join("stack.test.yml"));
    let out = docker_with(
        &[
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-c",
            stack.to_str().unwrap(),
            "-c",
            test.to_str().unwrap(),
            &p,
        ],
        None,
        &env,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("docker stack deploy:\n{out}");

    let label = format!("label=com.docker.stack.namespace={p}");
    let running_tasks = || async {
        let ids = docker_try(&["ps", "-q", "--filter", &label]).ok()?;
        let ids: Vec<String> = ids.lines().map(str::to_owned).collect();
        (ids.len() == 3).then_some(ids)
    };
    let deployed = Instant::now();
    let containers: Vec<String> = wait_until("three running tasks", FORM, running_tasks).await;
    made.watched = containers.clone();
    let mut tasks = Vec::new();
    for id in &containers {
        tasks.push(NodeBox::attach(id, id, &admin, SETTLE).await);
    }
    // Every replica lists three members up, named by their task slots.
    wait_for_members(&tasks.iter().collect::<Vec<_>>(), &["n1", "n2", "n3"], FORM).await;
    eprintln!(
        "swarm: three tasks formed one cluster {} ms after the deploy",
        deployed.elapsed().as_millis()
    );
    // The admin token is the secret's: a request without it is refused.
    let r = tasks[0]
        .anonymous(reqwest::Method::GET, "/api/v1/cluster")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // The image's HEALTHCHECK reports each task healthy.
    for id in &containers {
        wait_until(&format!("task {id} healthy"), FORM, || async {
            let state = inspect(id).ok()?;
            (state["State"]["Health"]["Status"] == "healthy").then_some(())
        })
        .await;
    }

    // An isolated source: its worker joins the stack's overlay and scrapes a
    // site there, and turns healthy.
    let overlay = format!("{p}_cluster");
    let subnet = docker(&[
        "network",
        "inspect",
        &overlay,
        "-f",
        "{{(index .IPAM.Config 0).Subnet}}",
    ]);
    let net = Network {
        name: overlay.clone(),
        subnet,
    };
    let site = Site::start(&made, &format!("{p}site"), &net, 1);
    let mut spec = page_spec("iso", &site.url(1), 1);
    spec["isolated"] = true.into();
    let (status, body) = tasks[0].post("/api/v1/sources", &spec).await;
    assert_eq!(status, 201, "{body}");
    let posted = Instant::now();
    let first = wait_until("the worker's first request at the site", FORM, || async {
        let w = swarm_workers(&workers_of, &overlay)
            .into_iter()
            .find(|w| w.state == "running" && !w.ip.is_empty())?;
        site.hits()
            .iter()
            .any(|h| h.ip == w.ip && h.path == page_path(1))
            .then_some(w)
    })
    .await;
    eprintln!(
        "swarm: the isolated source's worker fetched the site {} ms after the source was created",
        posted.elapsed().as_millis()
    );
    // The owner's items reach every task (read with the read token: with
    // one set, the admin token opens no collection route).
    let mut readers = Vec::new();
    for id in &containers {
        readers.push(NodeBox::attach(id, id, &read, SETTLE).await);
    }
    wait_for_items(&readers.iter().collect::<Vec<_>>(), "books", 20, FORM).await;
    wait_until("the worker healthy", FORM, || async {
        let w = swarm_workers(&workers_of, &overlay)
            .into_iter()
            .find(|w| w.id == first.id)?;
        (w.health == "healthy").then_some(())
    })
    .await;

    // Failover: the task that owns the source (the worker's owner) is killed.
    // Swarm replaces it after stack.test.yml's restart delay, in the same
    // slot (same name, same volume, so the same node id): meanwhile the
    // source moves to a survivor, which runs it in a worker of its own, and
    // the old worker, ownerless, stops and is removed with its volume.
    let mut owner_task = None;
    for t in &tasks {
        let Some((200, c)) = t.try_get("/api/v1/cluster").await else {
            continue;
        };
        let me = c["members"].as_array().and_then(|m| m.first()).cloned();
        if me.is_some_and(|m| m["node_id"] == first.owner.as_str()) {
            owner_task = Some(t.container.clone());
        }
    }
    let owner_task = owner_task.expect("the worker's owner is one of the tasks");
    assert!(
        !first.volumes.is_empty(),
        "the worker has the image's /data volume"
    );
    // Every worker volume seen, to be gone at the end.
    let worker_volumes =
        std::sync::Mutex::new(first.volumes.iter().cloned().collect::<BTreeSet<_>>());
    // The source's workers now, their volumes remembered.
    let iso_workers = || {
        let ws: Vec<SwarmWorker> = swarm_workers(&workers_of, &overlay)
            .into_iter()
            .filter(|w| w.source == "iso")
            .collect();
        worker_volumes
            .lock()
            .unwrap()
            .extend(ws.iter().flat_map(|w| w.volumes.iter().cloned()));
        ws
    };
    // The members before the kill, with their node ids.
    let members = nodes_up(&tasks[0]).await.expect("the first task answers");
    let killed_at = Utc::now();
    docker(&["kill", &owner_task]);
    let moved = wait_until(
        "a survivor's worker, healthy and scraping; the old one removed",
        FORM,
        || async {
            let ws = iso_workers();
            if ws.iter().any(|w| w.id == first.id) {
                return None;
            }
            let w = ws.into_iter().find(|w| {
                w.owner != first.owner && w.state == "running" && w.health == "healthy"
            })?;
            let hit = site
                .hits()
                .into_iter()
                .find(|h| h.ip == w.ip && h.path == page_path(1) && h.at > killed_at)?;
            Some((w, hit))
        },
    )
    .await;
    eprintln!(
        "swarm: the owner's task killed; a survivor's worker fetched the page {} ms after the kill",
        ms_since(killed_at, &moved.1)
    );
    for v in &first.volumes {
        assert!(
            docker_try(&["volume", "inspect", v]).is_err(),
            "the old worker's volume {v} is left"
        );
    }

    // The slot's new task returns as the same member, and takes its source
    // back: once membership is stable, one worker runs it, healthy.
    let containers: Vec<String> = wait_until("three running tasks again", FORM, || async {
        running_tasks()
            .await
            .filter(|ids| !ids.iter().any(|id| owner_task.starts_with(id.as_str())))
    })
    .await;
    made.watched.extend(containers.iter().cloned());
    let mut tasks = Vec::new();
    for id in &containers {
        tasks.push(NodeBox::attach(id, id, &admin, SETTLE).await);
    }
    // The same three members, with the same node ids: the slot's volume
    // brought the killed node's id and store back.
    for t in &tasks {
        wait_until(
            "the same three nodes up after the failover",
            FORM,
            || async { (nodes_up(t).await? == members).then_some(()) },
        )
        .await;
    }
    let mut readers = Vec::new();
    for id in &containers {
        readers.push(NodeBox::attach(id, id, &read, SETTLE).await);
    }
    wait_for_items(&readers.iter().collect::<Vec<_>>(), "books", 20, FORM).await;
    let all = ["n1", "n2", "n3"].map(str::to_owned).to_vec();
    let owners = agreed_owners(&tasks.iter().collect::<Vec<_>>(), 1, &all, FORM).await;
    let second = wait_until(
        "one worker for the source once membership is stable, healthy",
        FORM,
        || async {
            let ws = iso_workers();
            let [w] = ws.as_slice() else { return None };
            (w.state == "running" && w.health == "healthy").then(|| w.clone())
        },
    )
    .await;
    eprintln!(
        "swarm: one healthy worker for the source ({owners:?}) {} ms after the kill",
        (Utc::now() - killed_at).num_milliseconds()
    );
    // A window of runs: every fetch from the one worker, and still one worker.
    let mark = site.hits().len();
    wait_until("two more fetches of the source", FORM, || async {
        (site.hits()[mark..]
            .iter()
            .filter(|h| h.path == page_path(1))
            .count()
            >= 2)
            .then_some(())
    })
    .await;
    let from: BTreeSet<String> = site.hits()[mark..]
        .iter()
        .filter(|h| h.path == page_path(1))
        .map(|h| h.ip.clone())
        .collect();
    assert_eq!(
        from,
        BTreeSet::from([second.ip.clone()]),
        "fetched by one worker"
    );
    let ws = swarm_workers(&workers_of, &overlay);
    assert_eq!(
        ws.iter().map(|w| &w.id).collect::<Vec<_>>(),
        vec![&second.id],
        "one worker container: {ws:?}"
    );
    let worker_volumes = worker_volumes.into_inner().unwrap();

    // `docker stack rm`: the site is the test's own container on the stack's
    // network, so it goes first, as an operator's would.
    docker(&["rm", "-f", "-v", &site.container]);
    let removed = Instant::now();
    // It fails to remove the network while workers are attached ("in use
    // by task"); the nodes remove it once their workers are gone.
    match docker_try(&["stack", "rm", &p]) {
        Ok(out) => eprintln!("docker stack rm:\n{out}"),
        Err(e) => eprintln!("docker stack rm: {e}"),
    }
    wait_until("no task and no worker left", FORM, || async {
        let tasks_left = docker_try(&["ps", "-aq", "--filter", &label]).ok()?;
        let workers_left = docker_try(&["ps", "-aq", "--filter", &workers_of]).ok()?;
        (tasks_left.is_empty() && workers_left.is_empty()).then_some(())
    })
    .await;
    let gone = wait_until("the stack's network removed", FORM, || async {
        docker_try(&["network", "inspect", &overlay])
            .is_err()
            .then(|| removed.elapsed())
    })
    .await;
    eprintln!(
        "swarm: docker stack rm to no task, worker or network left in {} ms",
        gone.as_millis()
    );
    for v in &worker_volumes {
        assert!(
            docker_try(&["volume", "inspect", v]).is_err(),
            "worker volume {v} left"
        );
    }
    // What Swarm keeps on purpose (external secrets, named volumes) is in
    // use by nothing: the operator removes it at once.
    for s in &made.secrets {
        docker(&["secret", "rm", s]);
    }
    for v in &made.volumes {
        docker(&["volume", "rm", v]);
    }
    let name = format!("name={p}");
    let name = name.as_str();
    for (what, args) in [
        ("container", ["container", "ls", "-aq", "--filter", name]),
        ("volume", ["volume", "ls", "-q", "--filter", name]),
        ("network", ["network", "ls", "-q", "--filter", name]),
        ("secret", ["secret", "ls", "-q", "--filter", name]),
    ] {
        assert_eq!(docker(&args), "", "a {what} named {p}… is left");
    }
    assert_eq!(docker(&["ps", "-aq", "--filter", &workers_of]), "");
}
