//! The cluster, through real `gleaner node` processes on loopback: each with
//! its own data directory, HTTP port and cluster port, all seeded with each
//! other and sharing a cookie. The fixture site's own request log tells
//! which pages were fetched, whoever fetched them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::harness::cluster::{
    agreed_owners, index_of, wait_down, wait_for_items, wait_for_members, Cluster, ClusterPlan,
    Member,
};
use crate::harness::fixture::{page_path, page_spec, FixtureSite};
use crate::harness::node::Api;
use crate::harness::{wait_until, Node, NodeConfig, COOKIE};
use serde_json::Value;

const FORM: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(30);

/// A source that scrapes one catalogue page (20 items of its own).
fn page_source(site: &FixtureSite, id: &str, page: u32, every_secs: u64) -> Value {
    page_spec(id, &site.url(&page_path(page)), every_secs)
}

/// Sources `s{page}` for the catalogue pages `pages`, on `node`.
async fn add_pages(
    node: &Node,
    site: &FixtureSite,
    pages: std::ops::RangeInclusive<u32>,
    every_secs: u64,
) {
    for page in pages {
        node.create_source(&page_source(site, &format!("s{page}"), page, every_secs))
            .await;
    }
}

/// Which nodes run a scraper for `source` now, by their debug state.
async fn running_on(nodes: &[&Node], source: &str) -> Vec<String> {
    let mut on = Vec::new();
    for node in nodes {
        let (status, body) = node.get("/debug/state").await;
        assert_eq!(status, 200, "{body}");
        let local = &body["nodes"][0];
        let scrapers = &local["tree"]["children"][0]["children"][0]["children"];
        if scrapers
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["id"] == source))
        {
            on.push(local["name"].as_str().unwrap().to_owned());
        }
    }
    on
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_form_one_cluster_in_any_order_and_refuse_strangers() {
    for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
        let c = Cluster::start(ClusterPlan::new(3), &order).await;
        c.formed(FORM).await;
        let all = c.all();
        let (_, body) = all[0].get("/api/v1/cluster").await;
        assert_eq!(body["self"], "n0");
        assert_eq!(body["members"][0]["name"], "n0", "self first: {body}");
        assert!(body["members"].as_array().unwrap().iter().all(
            |m| m["role"] == "node" && m["address"].as_str().unwrap().starts_with("127.0.0.1:")
        ));
    }

    let c = Cluster::start(ClusterPlan::new(3), &[0, 1, 2]).await;
    c.formed(FORM).await;
    let all = c.all();

    // A node with the wrong cookie dials every member and never joins.
    let stranger_dir = tempfile::tempdir().unwrap();
    let stranger = NodeConfig::new(stranger_dir.path())
        .env("GLEANER_NODE_NAME", "stranger")
        .env("GLEANER_CLUSTER_PORT", "0")
        .env("GLEANER_SEEDS", &c.plan.seeds())
        .env("GLEANER_COOKIE", "not-the-cluster-cookie-at-all-000")
        .start()
        .await;
    // Its handshakes fail (the transport logs why), and it sees only itself.
    wait_until("the stranger's handshakes to fail", FORM, || async {
        let refused = stranger
            .logs()
            .iter()
            .chain(all.iter().flat_map(|n| n.logs()).collect::<Vec<_>>().iter())
            .any(|l| l.contains("authentication failure"));
        refused.then_some(())
    })
    .await;
    assert_eq!(stranger.members().await, [("stranger".into(), "up".into())]);
    c.formed(FORM).await;

    // A second node named n1 is refused, says why, and n1 stays the member it was.
    let (_, before) = all[1].get("/api/v1/cluster").await;
    let dup_dir = tempfile::tempdir().unwrap();
    let (ok, out) = NodeConfig::new(dup_dir.path())
        .env("GLEANER_NODE_NAME", "n1")
        .env("GLEANER_CLUSTER_PORT", "0")
        .env("GLEANER_SEEDS", &c.plan.seeds())
        .env("GLEANER_COOKIE", COOKIE)
        .run_to_exit(Duration::from_secs(30));
    assert!(!ok, "a duplicate name must not run:\n{out}");
    assert!(out.contains("already a member"), "{out}");
    assert!(out.contains("GLEANER_NODE_NAME"), "{out}");
    let (_, after) = all[1].get("/api/v1/cluster").await;
    assert_eq!(before["members"][0], after["members"][0]);
    c.formed(FORM).await;

    // Peers without a cookie: refused at start, with the setting to fix.
    let lone_dir = tempfile::tempdir().unwrap();
    let (ok, out) = NodeConfig::new(lone_dir.path())
        .env("GLEANER_SEEDS", &c.plan.seeds())
        .run_to_exit(Duration::from_secs(30));
    assert!(!ok);
    assert!(out.contains("GLEANER_COOKIE"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sources_spread_and_every_node_serves_every_item() {
    let site = FixtureSite::start().await;
    let c = Cluster::start(ClusterPlan::new(3), &[0, 1, 2]).await;
    c.formed(FORM).await;
    let all = c.all();

    add_pages(all[0], &site, 1..=12, 3600).await;
    let owners = agreed_owners(&all, 12, &c.names(), SETTLE).await;
    let spread: BTreeSet<&String> = owners.values().collect();
    assert!(spread.len() >= 2, "12 sources all on one node: {owners:?}");
    // Every node returns the whole collection: 12 pages of 20 items.
    let keys = wait_for_items(&all, "books", 240, SETTLE).await;
    assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), 240);
    // Each page was fetched once in the cluster: one scraper per source.
    for page in 1..=12 {
        assert_eq!(site.hits(&page_path(page)), 1, "page {page}");
    }
    // The same item reads the same on every node.
    let key = &keys[0];
    let mut seen = Vec::new();
    for node in &all {
        let (status, item) = node
            .get(&format!("/api/v1/collections/books/items/{key}"))
            .await;
        assert_eq!(status, 200);
        seen.push((item["data"].clone(), item["version"].clone()));
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");

    // One call on any node gathers every node's actors.
    let (status, state) = all[1].get("/debug/state").await;
    assert_eq!(status, 200);
    let nodes: BTreeSet<&str> = state["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, BTreeSet::from(["n0", "n1", "n2"]), "{state}");
    let listed: usize = state["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["sources"].as_array().unwrap().len())
        .sum();
    assert_eq!(listed, 12, "each source listed once, by its owner");

    // Replace and delete on another node reach every node.
    let mut spec = page_source(&site, "s1", 13, 3600);
    spec["collection"] = "other".into();
    let (status, body) = all[2].put("/api/v1/sources/s1", &spec).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = all[1].delete("/api/v1/sources/s2").await;
    assert_eq!(status, 204);
    for node in &all {
        wait_until("the replace and the delete everywhere", SETTLE, || async {
            let s1 = node.source("s1").await;
            let (gone, _) = node.get("/api/v1/sources/s2").await;
            (s1["collection"] == "other" && gone == 404).then_some(())
        })
        .await;
    }
    wait_for_items(&all, "other", 20, SETTLE).await;
}

/// A cluster of `n` nodes scraping `sources` catalogue pages (one source each,
/// every second), with every item on every node.
async fn scraping(site: &FixtureSite, n: usize, sources: u32) -> Cluster {
    let c = Cluster::start(ClusterPlan::new(n), &(0..n).collect::<Vec<_>>()).await;
    c.formed(FORM).await;
    let all = c.all();
    add_pages(all[0], site, 1..=sources, 1).await;
    wait_for_items(&all, "books", sources as usize * 20, SETTLE).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_owner_s_sources_run_on_a_survivor_and_nothing_is_lost() {
    let site = FixtureSite::start().await;
    let mut c = scraping(&site, 3, 6).await;
    let owners = agreed_owners(&c.all(), 6, &c.names(), SETTLE).await;
    let (victim_source, victim) = owners.iter().next().unwrap();
    let page: u32 = victim_source[1..].parse().unwrap();
    c.kill9(index_of(victim));
    let hits_at_kill = site.hits(&page_path(page));

    let survivors = c.all();
    // The fixture sees the victim's page fetched again: only a survivor can have.
    wait_until(
        "a survivor to scrape the dead node's source",
        SETTLE,
        || async { (site.hits(&page_path(page)) > hits_at_kill).then_some(()) },
    )
    .await;
    let moved = agreed_owners(&survivors, 6, &c.names(), SETTLE).await;
    for (id, owner) in &owners {
        if owner != victim {
            assert_eq!(moved[id], *owner, "{id} moved though its owner lived");
        }
    }
    // Everything collected before the kill is still served, by both survivors.
    wait_for_items(&survivors, "books", 120, SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_owner_loses_its_sources_and_gets_them_back_once() {
    let site = FixtureSite::start().await;
    let c = scraping(&site, 3, 6).await;
    let all = c.all();
    let owners = agreed_owners(&all, 6, &c.names(), SETTLE).await;
    let (source, frozen) = owners.iter().next().unwrap();
    let frozen_idx = index_of(frozen);
    let page: u32 = source[1..].parse().unwrap();

    c.nodes[&frozen_idx].signal("STOP");
    let hits_at_stop = site.hits(&page_path(page));
    let others = c.others(frozen_idx);
    // The others see it down, move its sources, and the page is fetched again.
    for node in &others {
        wait_down(*node, frozen, SETTLE).await;
    }
    agreed_owners(&others, 6, &c.other_names(frozen_idx), SETTLE).await;
    wait_until(
        "a survivor to scrape the frozen node's source",
        SETTLE,
        || async { (site.hits(&page_path(page)) > hits_at_stop).then_some(()) },
    )
    .await;

    c.nodes[&frozen_idx].signal("CONT");
    c.formed(FORM).await;
    let back = agreed_owners(&all, 6, &c.names(), SETTLE).await;
    assert_eq!(back, owners, "placement returns to where it was");
    // One scraper per source in the whole cluster.
    for id in owners.keys() {
        wait_until(&format!("one scraper for {id}"), SETTLE, || async {
            (running_on(&all, id).await.len() == 1).then_some(())
        })
        .await;
    }
    // No item twice, on any node.
    let keys = wait_for_items(&all, "books", 120, SETTLE).await;
    assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restarted_and_new_nodes_catch_up() {
    let site = FixtureSite::start().await;
    let mut c = Cluster::start(ClusterPlan::new(4), &[0, 1, 2]).await;

    {
        c.formed(FORM).await;
        let all = c.all();
        add_pages(all[0], &site, 1..=3, 3600).await;
        wait_for_items(&all, "books", 60, SETTLE).await;
    }
    // n2 goes away; sources and items change while it is gone.
    assert!(c.terminate(2));
    {
        let up = c.all();
        add_pages(up[1], &site, 4..=6, 3600).await;
        let (status, _) = up[0].delete("/api/v1/sources/s1").await;
        assert_eq!(status, 204);
        wait_for_items(&up, "books", 120, SETTLE).await;
    }
    // It returns on its data directory and catches up; a new node does too.
    c.add(2, |n| n).await;
    c.add(3, |n| n).await;
    c.formed(FORM).await;
    let all = c.all();
    for node in [&c.nodes[&2], &c.nodes[&3]] {
        wait_until(
            "the sources to reach a returning or new node",
            SETTLE,
            || async {
                let ids: BTreeSet<String> = node.seen_owners().await?.into_keys().collect();
                let want: BTreeSet<String> = (2..=6).map(|p| format!("s{p}")).collect();
                (ids == want).then_some(())
            },
        )
        .await;
    }
    let keys = wait_for_items(&all, "books", 120, SETTLE).await;
    assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), 120);
    // Both came through the peers' logs.
    for i in [2, 3] {
        let r = replicator(&c.nodes[&i]).await;
        assert!(r["pulled"].as_u64().unwrap() > 0, "n{i}: {r}");
    }
}

/// A node's Replicator stats, from its debug state.
async fn replicator(node: &Node) -> Value {
    let (_, body) = node.get("/debug/state").await;
    body["nodes"][0]["tree"]["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "Replicator")
        .map(|c| c["stats"].clone())
        .expect("a Replicator in the tree")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_behind_the_peers_logs_copies_the_collection() {
    let site = FixtureSite::start().await;
    // Logs keep one batch per origin: a new node cannot pull from the start.
    let short = |n: NodeConfig| n.env("GLEANER_LOG_RETAINED", "1");
    let mut c = Cluster::start(ClusterPlan::new(3), &[]).await;
    c.add(0, short).await;
    c.add(1, short).await;
    {
        c.formed(FORM).await;
        let two = c.all();
        // Three sources on two nodes: one node made at least two batches.
        add_pages(two[0], &site, 1..=3, 3600).await;
        wait_for_items(&two, "books", 60, SETTLE).await;
    }
    c.add(2, short).await;
    c.formed(FORM).await;
    let all = c.all();
    let keys = wait_for_items(&all, "books", 60, SETTLE).await;
    assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), 60);
    let r = replicator(&c.nodes[&2]).await;
    assert!(r["snapshots"].as_u64().unwrap() >= 1, "{r}");
    // The copy carried the heads: later batches arrive live, in order.
    let (status, _) = all[0]
        .post("/api/v1/sources", &page_source(&site, "s4", 4, 3600))
        .await;
    assert_eq!(status, 201);
    wait_for_items(&all, "books", 80, SETTLE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_lose_two_one_after_the_other() {
    let site = FixtureSite::start().await;
    let mut c = scraping(&site, 5, 10).await;
    for victim in [4usize, 1] {
        c.kill9(victim);
        let hits: Vec<usize> = (1..=10).map(|p| site.hits(&page_path(p))).collect();
        let up = c.all();
        agreed_owners(&up, 10, &c.names(), SETTLE).await;
        // Every source is scraped again after the kill: nothing left unscraped.
        wait_until("every source to run again", SETTLE, || async {
            (1..=10)
                .all(|p| site.hits(&page_path(p)) > hits[p as usize - 1])
                .then_some(())
        })
        .await;
        wait_for_items(&up, "books", 200, SETTLE).await;
    }
}

/// A stranger opens 1,000 connections to a node's cluster port (half
/// handshakes, partial length prefixes, frames declared 64 MiB long, random
/// bytes): the node closes each within its handshake deadline, keeps its
/// memory bounded and its HTTP answering, and a node with the cookie joins
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strangers_on_the_cluster_port_are_closed_in_time_and_cost_little() {
    use crate::harness::stranger::{mix, visit, Abuse};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    const HANDSHAKE: Duration = Duration::from_secs(2);
    // Slack for a loaded machine: scheduling, and the stranger's own writes.
    const MARGIN: Duration = Duration::from_secs(3);
    const RSS_BOUND_KIB: u64 = 150 * 1024;
    const CONNECTIONS: usize = 1000;

    let plan = ClusterPlan::new(2);
    let handshake_ms = HANDSHAKE.as_millis().to_string();
    let n0 = plan
        .config(0)
        .env("GLEANER_CLUSTER_HANDSHAKE_TIMEOUT_MS", &handshake_ms)
        .start()
        .await;
    let pid = n0.pid();
    let rss_before = n0.rss_kib();
    let fds_before = crate::harness::node::open_fds(pid);

    // RSS and /healthz, sampled until the attack is over.
    let over = Arc::new(AtomicBool::new(false));
    let watcher = {
        let over = over.clone();
        let api = Api::new(&n0.addr(), None, None);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let (mut peak, mut slowest, mut probes) = (0u64, Duration::ZERO, 0u32);
            while !over.load(Ordering::Acquire) {
                tick.tick().await;
                peak = peak.max(crate::harness::node::rss_kib(pid));
                let asked = std::time::Instant::now();
                let answer = api
                    .anonymous(reqwest::Method::GET, "/healthz")
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                let status = answer.map(|r| r.status().as_u16());
                assert!(
                    matches!(status, Ok(200)),
                    "/healthz during the attack: {status:?}"
                );
                slowest = slowest.max(asked.elapsed());
                probes += 1;
            }
            (peak, slowest, probes)
        })
    };

    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", plan.ports[0]).parse().unwrap();
    let attack_started = std::time::Instant::now();
    let mut attack = tokio::task::JoinSet::new();
    for (i, abuse) in mix(CONNECTIONS).into_iter().enumerate() {
        attack.spawn(visit(addr, abuse, i, HANDSHAKE + MARGIN));
    }
    // A node with the cookie starts while the attack is under way.
    let n1 = plan.config(1).start().await;
    let outcomes = attack.join_all().await;
    let attack_took = attack_started.elapsed();
    let rss_at_end = n0.rss_kib();
    wait_for_members(&[&n0, &n1], &["n0", "n1"], FORM).await;
    over.store(true, Ordering::Release);
    let (peak, slowest, probes) = watcher.await.unwrap();

    // Every connection was closed by the node, within the deadline.
    let still_open = outcomes.iter().filter(|o| !o.closed).count();
    assert_eq!(still_open, 0, "connections the node left open");
    // From the stranger's connect to the node's close, queueing included.
    let longest = outcomes
        .iter()
        .map(|o| o.connect + o.open_for)
        .max()
        .unwrap();
    assert!(longest <= HANDSHAKE + MARGIN, "open for {longest:?}");
    // Some were admitted and cut by the deadline, the rest refused at once.
    let admitted = outcomes
        .iter()
        .filter(|o| o.open_for >= HANDSHAKE - Duration::from_millis(200))
        .count();
    assert!(admitted > 0, "no connection was held until the deadline");
    assert!(
        outcomes
            .iter()
            .any(|o| o.abuse == Abuse::HalfHandshake && o.answered > 0),
        "the guard let no handshake through"
    );
    assert!(
        n0.logs().iter().any(|l| l.contains("refusing more")),
        "the cap on unauthenticated connections never applied"
    );
    assert!(peak < RSS_BOUND_KIB, "peak RSS {peak} KiB");
    assert!(probes > 0);
    // The node lets go of the sockets too.
    wait_until("the node to close the strangers' sockets", FORM, || async {
        (crate::harness::node::open_fds(pid) <= fds_before + 16).then_some(())
    })
    .await;
    let rss_after = n0.rss_kib();
    let refused: Vec<Duration> = outcomes
        .iter()
        .map(|o| o.open_for)
        .filter(|d| *d < HANDSHAKE - Duration::from_millis(200))
        .collect();
    let refused_longest = refused.iter().max().copied().unwrap_or_default();
    let slowest_connect = outcomes.iter().map(|o| o.connect).max().unwrap();
    // Per kind: count, held to the deadline, longest open of those closed before it.
    let mut by_abuse = BTreeMap::new();
    for o in &outcomes {
        let e =
            by_abuse
                .entry(format!("{:?}", o.abuse))
                .or_insert((0usize, 0usize, Duration::ZERO));
        e.0 += 1;
        if o.open_for >= HANDSHAKE - Duration::from_millis(200) {
            e.1 += 1;
        } else {
            e.2 = e.2.max(o.open_for);
        }
    }
    eprintln!(
        "cluster port under {CONNECTIONS} strangers: RSS before {rss_before} KiB, peak during \
         {peak} KiB, at the attack's end {rss_at_end} KiB, after {rss_after} KiB; attack took \
         {attack_took:?}; longest open {longest:?}; held to the deadline {admitted}; closed \
         before it {}, the longest of those open {refused_longest:?}; \
         by kind (count, held to the deadline, longest open of the others) {by_abuse:?}; \
         slowest connect {slowest_connect:?}; slowest /healthz {slowest:?} over {probes} probes",
        refused.len()
    );
}
