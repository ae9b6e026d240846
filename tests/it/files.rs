//! Sources as files: a node applies its sources directory at start and on
//! change, shows those sources `managed_by: file` and refuses to edit them
//! over the API, reports a broken file without changing anything, removes
//! the sources of a removed file, and two nodes holding the same directory
//! apply it once, without churn.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::harness::cluster::{Cluster, ClusterPlan};
use crate::harness::fixture::{page_path, page_spec, FixtureSite};
use crate::harness::{wait_until, Node, NodeConfig};

/// Writes a file whole (a temporary hidden file renamed over it), as
/// editors and config managers do.
fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

async fn source_status(node: &Node, id: &str) -> (u16, Value) {
    node.get(&format!("/api/v1/sources/{id}")).await
}

/// Waits until the source exists with `url`, managed by `file`.
async fn wait_for_source(node: &Node, id: &str, file: &str, url: &str) -> Value {
    wait_until(
        &format!("source {id} from {file} with {url} on {}", node.addr),
        Duration::from_secs(20),
        || async {
            let (status, body) = source_status(node, id).await;
            (status == 200
                && body["managed_by"] == "file"
                && body["file"] == file
                && body["url"] == url)
                .then_some(body)
        },
    )
    .await
}

async fn wait_gone(node: &Node, id: &str) {
    wait_until(
        &format!("source {id} gone on {}", node.addr),
        Duration::from_secs(20),
        || async { (source_status(node, id).await.0 == 404).then_some(()) },
    )
    .await;
}

/// This node's files as `/debug/state` shows them.
async fn source_files(node: &Node) -> Vec<Value> {
    let (status, body) = node.get("/debug/state").await;
    assert_eq!(status, 200, "{body}");
    body["nodes"][0]["source_files"].as_array().unwrap().clone()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn files_added_changed_broken_and_removed_while_the_node_runs() {
    let site = FixtureSite::start().await;
    let data = tempfile::tempdir().unwrap();
    let sources = tempfile::tempdir().unwrap();
    let dir = sources.path();
    // There at start: applied at start.
    let url = |page| site.url(&page_path(page));
    write(
        dir,
        "a.json",
        &page_spec("file-a", &url(1), 3600).to_string(),
    );
    let node = NodeConfig::new(data.path())
        .env("GLEANER_SOURCES_DIR", dir.to_str().unwrap())
        .start()
        .await;
    let a = wait_for_source(&node, "file-a", "a.json", &url(1)).await;
    assert!(a["status"].is_object(), "{a}");
    node.wait_for_run("file-a", Duration::from_secs(20), |r| r["items"] == 20)
        .await;

    // Changed while running: the new spec runs at once. Time from the
    // file's rename to the site seeing the new page asked for.
    let mut latencies = Vec::new();
    for page in 2..=8 {
        let spec = page_spec("file-a", &url(page), 3600);
        let written = Instant::now();
        write(dir, "a.json", &spec.to_string());
        let hit = wait_until(
            &format!("page {page} fetched after its file changed"),
            Duration::from_secs(20),
            || async { site.first_hit_after(&page_path(page), written) },
        )
        .await;
        latencies.push(hit - written);
        wait_for_source(&node, "file-a", "a.json", &url(page)).await;
    }
    let median_latency = median(latencies.clone());
    eprintln!(
        "file change -> source running with it: median {median_latency:?} over {} changes ({latencies:?})",
        latencies.len()
    );

    // The API refuses to edit or delete it; running it now is harmless.
    let current = node.source("file-a").await;
    let (status, body) = node.put("/api/v1/sources/file-a", &current).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("managed_by_file")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a.json"),
        "{body}"
    );
    let (status, body) = node
        .send(
            node.request(Method::PATCH, "/api/v1/sources/file-a")
                .header("content-type", "application/merge-patch+json")
                .body(r#"{"enabled": false}"#),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("managed_by_file")),
        "{body}"
    );
    let (status, body) = node.delete("/api/v1/sources/file-a").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("managed_by_file")),
        "{body}"
    );
    let (status, body) = node.post("/api/v1/sources/file-a/run", &json!({})).await;
    assert_eq!(status, 202, "{body}");
    // Its id is taken for the API too.
    let (status, _) = node
        .post("/api/v1/sources", &page_spec("file-a", &url(1), 3600))
        .await;
    assert_eq!(status, 409);

    // YAML and TOML, one source and a list.
    let yaml = format!(
        "sources:\n  - id: yaml-1\n    url: {}\n    collection: books\n    enabled: false\n    extract:\n      scope: article.product\n      fields: {{title: h3 a}}\n  - id: yaml-2\n    url: {}\n    collection: books\n    enabled: false\n    extract:\n      fields:\n        title: {{css: h3 a, attr: title}}\n",
        url(1),
        url(2)
    );
    write(dir, "b.yaml", &yaml);
    let toml = format!(
        "id = \"toml-1\"\nurl = \"{}\"\ncollection = \"books\"\nenabled = false\nschedule = {{ cron = \"0 3 * * *\" }}\n[extract.fields]\ntitle = \"h3 a\"\n",
        url(3)
    );
    write(dir, "c.toml", &toml);
    wait_for_source(&node, "yaml-1", "b.yaml", &url(1)).await;
    wait_for_source(&node, "yaml-2", "b.yaml", &url(2)).await;
    let t = wait_for_source(&node, "toml-1", "c.toml", &url(3)).await;
    assert_eq!(t["schedule"]["cron"], "0 3 * * *");

    // Broken: reported (log, /debug/state), and nothing changes.
    let before = node.source("file-a").await;
    let mut bad = page_spec("file-a", &url(9), 3600);
    bad["schedule"]["every_secs"] = json!(0);
    write(dir, "a.json", &bad.to_string());
    let broken = wait_until(
        "a.json reported broken",
        Duration::from_secs(20),
        || async {
            source_files(&node)
                .await
                .into_iter()
                .find(|f| f["path"] == "a.json" && !f["error"].is_null())
        },
    )
    .await;
    assert_eq!(broken["field"], "schedule.every_secs", "{broken}");
    wait_until(
        "the broken file logged",
        Duration::from_secs(10),
        || async {
            node.logs()
                .iter()
                .any(|l| {
                    l.contains("source file is broken")
                        && l.contains("a.json")
                        && l.contains("schedule.every_secs")
                })
                .then_some(())
        },
    )
    .await;
    // A file read after the broken one shows the broken one was read too.
    write(dir, "d.json", &json!([]).to_string());
    wait_until("d.json read", Duration::from_secs(20), || async {
        source_files(&node)
            .await
            .iter()
            .any(|f| f["path"] == "d.json")
            .then_some(())
    })
    .await;
    let after = node.source("file-a").await;
    assert_eq!(
        after["url"], before["url"],
        "the previous good version stays"
    );
    assert_eq!(after["version"], before["version"]);
    assert_eq!(site.hits(&page_path(9)), 0);

    // A source removed from a list, then a whole file removed.
    let one = yaml.split("  - id: yaml-2").next().unwrap().to_owned();
    write(dir, "b.yaml", &one);
    wait_gone(&node, "yaml-2").await;
    assert_eq!(source_status(&node, "yaml-1").await.0, 200);
    std::fs::remove_file(dir.join("c.toml")).unwrap();
    wait_gone(&node, "toml-1").await;
    // The broken file removed: its source goes too.
    std::fs::remove_file(dir.join("a.json")).unwrap();
    wait_gone(&node, "file-a").await;
    assert_eq!(source_status(&node, "yaml-1").await.0, 200);
    // Freed, the id can be made over the API.
    let mut spec = page_spec("file-a", &url(1), 3600);
    spec["enabled"] = json!(false);
    let body = node.create_source(&spec).await;
    assert_eq!(body["managed_by"], "api");
}

#[tokio::test]
async fn two_nodes_with_the_same_directory_apply_it_once_without_churn() {
    let site = FixtureSite::start().await;
    let sources = tempfile::tempdir().unwrap();
    let dir = sources.path().to_str().unwrap().to_owned();
    let spec = page_spec("shared", &site.url(&page_path(3)), 3600);
    let mut cluster = Cluster {
        plan: ClusterPlan::new(2),
        nodes: Default::default(),
    };
    for i in [0, 1] {
        cluster.add(i, |c| c.env("GLEANER_SOURCES_DIR", &dir)).await;
    }
    cluster.formed(Duration::from_secs(20)).await;
    let (n0, n1) = (&cluster.nodes[&0], &cluster.nodes[&1]);
    // Written once both watch it: both apply it at about the same time,
    // each writing its own version of the record.
    write(sources.path(), "shared.json", &spec.to_string());
    // The registry settles on one record; one owner runs it, once.
    let settled = wait_until(
        "one record and one run",
        Duration::from_secs(30),
        || async {
            let (sa, a) = source_status(n0, "shared").await;
            let (sb, b) = source_status(n1, "shared").await;
            if (sa, sb) != (200, 200) {
                return None;
            }
            (a["version"] == b["version"]
                && a["managed_by"] == "file"
                && !a["status"]["owner"].is_null()
                && a["status"]["owner"] == b["status"]["owner"]
                && !a["status"]["last_run"].is_null())
            .then_some(a)
        },
    )
    .await;
    assert_eq!(site.hits(&page_path(3)), 1, "one run in the cluster");
    let writers = [n0, n1]
        .iter()
        .filter(|n| {
            n.logs()
                .iter()
                .any(|l| l.contains("source created from its file") && l.contains("shared"))
        })
        .count();
    eprintln!("nodes that wrote the new file's source: {writers} of 2");

    // The same file written again, then a new file: once the new file's
    // source shows on both nodes, both have read the rewrite too.
    write(sources.path(), "shared.json", &spec.to_string());
    let other = page_spec("other", &site.url(&page_path(4)), 3600);
    write(sources.path(), "other.json", &other.to_string());
    for node in [n0, n1] {
        wait_for_source(node, "other", "other.json", &site.url(&page_path(4))).await;
    }
    for node in [n0, n1] {
        let now = node.source("shared").await;
        assert_eq!(now["version"], settled["version"], "no rewrite: {now}");
        assert_eq!(now["status"]["restarts"], 0);
    }
    assert_eq!(site.hits(&page_path(3)), 1, "no restart, no extra run");
}
