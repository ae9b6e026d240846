//! Cluster figures, from real release-built `gleaner node` processes on
//! loopback and the tests' fixture site (whose request log says when a page
//! was fetched, whoever fetched it):
//!
//! - failover after `kill -9` and after `SIGSTOP` of a source's owner: the
//!   time from the fault to the first fetch of that source by a survivor
//!   (sources run every second, so up to a second of it is the schedule);
//! - a new source added on a node that does not own it: POST to first fetch;
//! - replication lag: a batch visible on its owner to visible on every node;
//! - RSS of each of three nodes holding 1,000 sources between them.
//!
//! `cargo bench --bench cluster` (GLEANER_BENCH_RUNS sets the runs per
//! figure, default 10). It prints a table; docs/cluster.md records one run.

// The integration tests' harnesses (tests/it/harness/); the bench uses a few.
#[path = "../tests/it/harness/mod.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use harness::cluster::{wait_for_members, ClusterPlan};
use harness::fixture::FixtureSite;
use harness::{wait_until, Node, NodeConfig};
use serde_json::Value;

const WITHIN: Duration = Duration::from_secs(60);
/// A fetch this soon after the fault may have left the faulty node before it.
const IN_FLIGHT: Duration = Duration::from_millis(20);

fn quiet(config: NodeConfig) -> NodeConfig {
    config.env("GLEANER_LOG", "warn,gleaner::app=info")
}

fn spec(site: &FixtureSite, id: &str, collection: &str, page: u32, every_secs: u64) -> Value {
    let mut spec = harness::catalogue_spec(id, &site.url(&format!("/single/page-{page}.html")));
    spec["collection"] = collection.into();
    spec["schedule"]["every_secs"] = every_secs.into();
    spec["extract"]["next_page"]["max_pages"] = 1.into();
    spec
}

async fn cluster(n: usize) -> (ClusterPlan, BTreeMap<usize, Node>) {
    let plan = ClusterPlan::new(n);
    let mut nodes = BTreeMap::new();
    for i in 0..n {
        nodes.insert(i, quiet(plan.config(i)).start().await);
    }
    let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let all: Vec<&Node> = nodes.values().collect();
    wait_for_members(&all, &names, WITHIN).await;
    (plan, nodes)
}

async fn collection_items(node: &Node, name: &str) -> u64 {
    let (_, body) = node.get("/api/v1/collections").await;
    body["collections"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .and_then(|c| c["items"].as_u64())
        .unwrap_or(0)
}

async fn wait_items(nodes: &[&Node], name: &str, want: u64) {
    for node in nodes {
        wait_until("items everywhere", WITHIN * 5, || async {
            (collection_items(node, name).await >= want).then_some(())
        })
        .await;
    }
}

async fn owner(node: &Node, id: &str) -> Option<String> {
    node.source(id).await["status"]["owner"]
        .as_str()
        .map(str::to_owned)
}

#[derive(Clone, Copy)]
enum Fault {
    Kill,
    Stop,
}

/// Fault-to-survivor-fetch times.
async fn failover(site: &FixtureSite, runs: u32, fault: Fault, base: u32) -> Vec<Duration> {
    let mut times = Vec::new();
    for run in 0..runs {
        let (_plan, mut nodes) = cluster(3).await;
        let collection = format!("failover-{base}-{run}");
        let first = base + run * 10;
        for k in 0..6 {
            let id = format!("f{k}");
            nodes[&0]
                .create_source(&spec(site, &id, &collection, first + k, 1))
                .await;
        }
        let all: Vec<&Node> = nodes.values().collect();
        wait_items(&all, &collection, 120).await;
        let victim_name = owner(&nodes[&0], "f0").await.expect("an owner");
        let victim: usize = victim_name[1..].parse().unwrap();
        let path = format!("/single/page-{first}.html");
        let t0 = Instant::now();
        match fault {
            Fault::Kill => nodes.get_mut(&victim).unwrap().kill9(),
            Fault::Stop => nodes[&victim].signal("STOP"),
        }
        let hit = wait_until("a survivor's fetch", WITHIN, || async {
            site.first_hit_after(&path, t0 + IN_FLIGHT)
        })
        .await;
        times.push(hit - t0);
        if let Fault::Stop = fault {
            nodes[&victim].signal("CONT");
        }
    }
    times
}

/// POST on a non-owner to the owner's first fetch.
async fn new_source_latency(site: &FixtureSite, runs: u32) -> Vec<Duration> {
    let (_plan, nodes) = cluster(3).await;
    let mut times = Vec::new();
    for k in 0..(runs * 6) {
        if times.len() == runs as usize {
            break;
        }
        let page = 20_000 + k;
        let id = format!("new{k}");
        let t0 = Instant::now();
        let created = nodes[&0]
            .create_source(&spec(site, &id, "new", page, 3600))
            .await;
        if created["status"]["owner"] == "n0" {
            continue;
        }
        let path = format!("/single/page-{page}.html");
        let hit = wait_until("the owner's fetch", WITHIN, || async {
            site.first_hit_after(&path, t0)
        })
        .await;
        times.push(hit - t0);
    }
    times
}

/// A batch visible on its owner, to visible on all three nodes.
async fn replication_lag(site: &FixtureSite, runs: u32) -> Vec<Duration> {
    let (_plan, nodes) = cluster(3).await;
    let all: Vec<&Node> = nodes.values().collect();
    let mut lags = Vec::new();
    for k in 0..runs {
        let collection = format!("lag{k}");
        nodes[&0]
            .create_source(&spec(
                site,
                &format!("lag{k}"),
                &collection,
                30_000 + k,
                3600,
            ))
            .await;
        let mut seen: Vec<Option<Instant>> = vec![None; all.len()];
        let deadline = Instant::now() + WITHIN;
        while seen.iter().any(Option::is_none) && Instant::now() < deadline {
            for (i, node) in all.iter().enumerate() {
                if seen[i].is_none() && collection_items(node, &collection).await >= 20 {
                    seen[i] = Some(Instant::now());
                }
            }
        }
        let seen: Vec<Instant> = seen
            .into_iter()
            .map(|s| s.expect("visible everywhere"))
            .collect();
        lags.push(*seen.iter().max().unwrap() - *seen.iter().min().unwrap());
    }
    lags
}

/// RSS (KiB) of each node, idle and with 1,000 sources between them.
async fn rss_with_sources(site: &FixtureSite, sources: u32) -> Vec<(String, u64, u64, usize)> {
    let (_plan, nodes) = cluster(3).await;
    let idle: Vec<u64> = nodes.values().map(Node::rss_kib).collect();
    for k in 0..sources {
        nodes[&(k as usize % 3)]
            .create_source(&spec(site, &format!("m{k}"), "mass", 40_000 + k, 3600))
            .await;
    }
    let all: Vec<&Node> = nodes.values().collect();
    wait_items(&all, "mass", u64::from(sources) * 20).await;
    let mut owned: BTreeMap<String, usize> = BTreeMap::new();
    let (_, body) = nodes[&0].get("/api/v1/sources").await;
    for s in body["sources"].as_array().unwrap() {
        *owned
            .entry(s["status"]["owner"].as_str().unwrap_or("-").to_owned())
            .or_default() += 1;
    }
    nodes
        .iter()
        .zip(idle)
        .map(|((i, node), idle)| {
            let name = format!("n{i}");
            let n = owned.get(&name).copied().unwrap_or(0);
            (name, idle, node.rss_kib(), n)
        })
        .collect()
}

fn summary(label: &str, times: &[Duration]) {
    let mut ms: Vec<f64> = times.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let median = if ms.is_empty() {
        f64::NAN
    } else {
        ms[ms.len() / 2]
    };
    let max = ms.last().copied().unwrap_or(f64::NAN);
    let min = ms.first().copied().unwrap_or(f64::NAN);
    println!(
        "| {label} | {} | {median:.0} ms | {max:.0} ms | {min:.0} ms |",
        ms.len()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let runs: u32 = std::env::var("GLEANER_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let site = FixtureSite::start().await;
    let kill = failover(&site, runs, Fault::Kill, 1_000).await;
    let stop = failover(&site, runs, Fault::Stop, 5_000).await;
    let new = new_source_latency(&site, runs).await;
    let lag = replication_lag(&site, runs).await;
    let rss = rss_with_sources(&site, 1_000).await;

    println!("\n| figure | runs | median | max | min |\n|---|---|---|---|---|");
    summary(
        "failover after kill -9 (fault to a survivor's fetch)",
        &kill,
    );
    summary(
        "failover after SIGSTOP (fault to a survivor's fetch)",
        &stop,
    );
    summary(
        "new source on a non-owner (POST to the owner's fetch)",
        &new,
    );
    summary(
        "replication lag (visible on the owner to visible on all 3)",
        &lag,
    );
    println!("\n| node | RSS idle | RSS with 1,000 sources in the cluster | sources owned |\n|---|---|---|---|");
    for (name, idle, loaded, owned) in rss {
        println!(
            "| {name} | {:.1} MiB | {:.1} MiB | {owned} |",
            idle as f64 / 1024.0,
            loaded as f64 / 1024.0
        );
    }
}
