//! `GET /metrics` read by a real Prometheus (Debian's package, started by
//! the harness on a free loopback port, scraping every second): the node is
//! up, exports its families, and a counter moves after a run; and the raw
//! text passes `promtool check metrics`. In a cluster: members per state,
//! sources counted once across nodes, replicated items counted on each node.

use std::time::Duration;

use crate::harness::cluster::{Cluster, ClusterPlan};
use crate::harness::fixture::{page_path, page_spec, FixtureSite};
use crate::harness::prometheus::{check_metrics, Prometheus};
use crate::harness::{wait_until, Node, NodeConfig};

const PAGES: &str = "sum(gleaner_pages_fetched_total)";

#[tokio::test]
async fn prometheus_scrapes_a_node_and_sees_its_counters_move() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let prometheus = Prometheus::start(&[node.addr.to_string()]).await;
    let within = Duration::from_secs(30);

    wait_until("up == 1 in Prometheus", within, || async {
        let up = prometheus.value("up{job=\"gleaner\"}").await?;
        (up == 1.0).then_some(())
    })
    .await;
    let families = wait_until("ten gleaner_* families in Prometheus", within, || async {
        let n = prometheus
            .value("count(count by (__name__) ({__name__=~\"gleaner_.+\"}))")
            .await?;
        (n >= 10.0).then_some(n)
    })
    .await;
    eprintln!("{families} gleaner_* families scraped");
    let before = wait_until("the pages counter in Prometheus", within, || async {
        prometheus.value(PAGES).await
    })
    .await;

    node.create_source(&page_spec("one", &site.url(&page_path(1)), 3600))
        .await;
    node.wait_for_run("one", within, |r| r["error"].is_null())
        .await;
    let after = wait_until(
        "the pages counter to grow in Prometheus",
        within,
        || async {
            let now = prometheus.value(PAGES).await?;
            (now > before).then_some(now)
        },
    )
    .await;
    eprintln!("pages fetched: {before} before the run, {after} after");
    let items = wait_until("items in Prometheus", within, || async {
        let n = prometheus
            .value("sum(gleaner_items_total{collection=\"books\",outcome=\"inserted\"})")
            .await?;
        (n >= 20.0).then_some(n)
    })
    .await;
    assert_eq!(items, 20.0);
    let runs = prometheus
        .value("gleaner_run_duration_seconds_count")
        .await
        .unwrap_or(0.0);
    assert!(runs >= 1.0, "a run in the duration histogram: {runs}");
    let scheduled = prometheus
        .value("gleaner_sources{state=\"scheduled\"}")
        .await;
    assert_eq!(scheduled, Some(1.0));

    // Every query of the example dashboard parses and yields data.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/grafana-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            // A rate needs two samples of a series: wait for them.
            let what = format!("panel {} to show data: {expr}", panel["title"]);
            wait_until(&what, within, || async {
                prometheus.query(&expr).await.filter(|r| !r.is_empty())
            })
            .await;
        }
    }
}

#[tokio::test]
async fn the_metrics_text_passes_promtool() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    node.create_source(&page_spec("one", &site.url(&page_path(1)), 3600))
        .await;
    node.wait_for_run("one", Duration::from_secs(30), |r| r["error"].is_null())
        .await;
    // Unauthenticated, like a Prometheus server scrapes it.
    let response = node
        .anonymous(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    for family in [
        "gleaner_pages_fetched_total{class=\"2xx\"}",
        "gleaner_fetched_bytes_total",
        "gleaner_items_total{collection=\"books\",outcome=\"inserted\"} 20",
        "gleaner_run_duration_seconds_bucket",
        "gleaner_sources{state=\"scheduled\"} 1",
        "gleaner_members{state=\"up\"} 1",
        "gleaner_replication_behind_batches 0",
        "gleaner_host_backoffs_total 0",
        "gleaner_http_requests_total{route=\"/api/v1/sources/{id}\",method=\"GET\",status=\"200\"}",
        "gleaner_storage_state{state=\"ok\"} 1",
        "gleaner_storage_free_bytes",
        "gleaner_storage_reserve_bytes",
    ] {
        assert!(text.contains(family), "no `{family}` in:\n{text}");
    }
    // Route patterns, never raw paths.
    assert!(!text.contains("/api/v1/sources/one"), "{text}");
    if let Err(complaints) = check_metrics(&text, dir.path()) {
        panic!("promtool check metrics:\n{complaints}\n--- the text ---\n{text}");
    }
}

/// The value of the sample `series` (a name with its labels, exactly as
/// rendered) in a node's `/metrics`, if it is there.
async fn sample(node: &Node, series: &str) -> Option<f64> {
    let response = node
        .anonymous(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .ok()?;
    let text = response.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn a_cluster_counts_members_sources_once_and_replicated_items_everywhere() {
    let site = FixtureSite::start().await;
    let mut c = Cluster::start(ClusterPlan::new(2), &[0, 1]).await;
    let within = Duration::from_secs(30);
    c.formed(within).await;
    for node in c.all() {
        wait_until("two members up in /metrics", within, || async {
            (sample(node, "gleaner_members{state=\"up\"}").await? == 2.0).then_some(())
        })
        .await;
    }
    c.nodes[&0]
        .create_source(&page_spec("one", &site.url(&page_path(1)), 3600))
        .await;
    for node in c.all() {
        // Each node applies every batch: the items are counted on both.
        wait_until("20 items inserted in /metrics", within, || async {
            let n = sample(
                node,
                "gleaner_items_total{collection=\"books\",outcome=\"inserted\"}",
            )
            .await?;
            (n == 20.0).then_some(())
        })
        .await;
    }
    // The owner alone counts the source.
    wait_until("one scheduled source across the nodes", within, || async {
        let mut total = 0.0;
        for node in c.all() {
            total += sample(node, "gleaner_sources{state=\"scheduled\"}").await?;
        }
        (total == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        sample(&c.nodes[&0], "gleaner_replication_behind_batches").await,
        Some(0.0)
    );

    c.kill9(1);
    wait_until(
        "the killed member no longer up in /metrics",
        within,
        || async {
            let node = &c.nodes[&0];
            let up = sample(node, "gleaner_members{state=\"up\"}").await?;
            let suspect = sample(node, "gleaner_members{state=\"suspect\"}").await?;
            let down = sample(node, "gleaner_members{state=\"down\"}").await?;
            (up == 1.0 && suspect + down == 1.0).then_some(())
        },
    )
    .await;
}
