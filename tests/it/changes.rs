//! The change feed, `GET /api/v1/collections/{name}/changes`: a node
//! scrapes `/changing.html` (3 items); its feed shows them inserted, then
//! changed after the site's prices change, and a long-poll wakes as soon as
//! a change is durable (or answers empty after `wait_secs`).

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::harness::fixture::FixtureSite;
use crate::harness::{catalogue_spec, wait_until, NodeConfig};

const RUN: Duration = Duration::from_secs(30);

fn ops(page: &Value) -> Vec<&str> {
    page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["op"].as_str().unwrap())
        .collect()
}

fn seqs(page: &Value) -> Vec<u64> {
    page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_feed_shows_inserts_then_changes_and_long_polls_wake_on_a_change() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The handler logs at debug when a long-poll starts waiting.
    let node = NodeConfig::new(dir.path())
        .env("GLEANER_LOG", "info,gleaner::http::collections=debug")
        .start()
        .await;
    let mut spec = catalogue_spec("changing", &site.url("/changing.html"));
    spec["collection"] = json!("changing");
    node.create_source(&spec).await;
    node.wait_for_run("changing", RUN, |r| r["error"].is_null())
        .await;

    // The first scrape: 3 items inserted, sequences 1..=3.
    let (status, page) = node.get("/api/v1/collections/changing/changes").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ops(&page), ["inserted"; 3], "{page}");
    assert_eq!(seqs(&page), [1, 2, 3]);
    assert_eq!(page["next"], 3);
    let item = &page["changes"][0]["item"];
    assert!(
        item["key"].is_string() && !item["data"]["price"].is_null(),
        "{item}"
    );
    // `limit` pages, `next` continues.
    let (_, first) = node
        .get("/api/v1/collections/changing/changes?limit=2")
        .await;
    assert_eq!((seqs(&first), &first["next"]), (vec![1, 2], &json!(2)));

    // New prices: the feed from the previous `next` shows 3 changes.
    site.set_revision(2);
    let (status, _) = node.post("/api/v1/sources/changing/run", &json!({})).await;
    assert_eq!(status, 202);
    node.wait_for_run("changing", RUN, |r| r["changed"] == 3)
        .await;
    let (_, page) = node
        .get("/api/v1/collections/changing/changes?since=3")
        .await;
    assert_eq!(ops(&page), ["changed"; 3], "{page}");
    assert_eq!(seqs(&page), [4, 5, 6]);
    assert_eq!(page["next"], 6);
    let items = node.all_items("changing").await;
    for change in page["changes"].as_array().unwrap() {
        let now = items
            .iter()
            .find(|i| i["key"] == change["item"]["key"])
            .unwrap();
        assert_eq!(&change["item"], now, "a change shows the item as it is");
        assert_eq!(change["item"]["version"], 2);
    }

    // A long-poll started before a change returns as soon as it lands.
    site.set_revision(3);
    let poll = async {
        let t0 = Instant::now();
        let (status, page) = node
            .get("/api/v1/collections/changing/changes?since=6&wait_secs=10")
            .await;
        (status, page, t0.elapsed(), Utc::now())
    };
    let trigger = async {
        // Only once the poll waits: the change lands after it started.
        wait_until("the long-poll to wait", RUN, || async {
            node.logs()
                .iter()
                .any(|l| l.contains("changes: waiting for a change"))
                .then_some(())
        })
        .await;
        node.post("/api/v1/sources/changing/run", &json!({})).await
    };
    let ((status, page, waited, answered_at), (run_status, _)) = tokio::join!(poll, trigger);
    assert_eq!((status, run_status), (200, 202), "{page}");
    assert!(!page["changes"].as_array().unwrap().is_empty(), "{page}");
    assert!(ops(&page).iter().all(|op| *op == "changed"), "{page}");
    assert!(seqs(&page).iter().all(|s| *s > 6), "{page}");
    assert!(waited < Duration::from_secs(5), "woke after {waited:?}");
    let run = node
        .wait_for_run("changing", RUN, |r| r["changed"] == 3)
        .await;
    let finished: DateTime<Utc> = run["status"]["last_run"]["finished_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    eprintln!(
        "long-poll: answered {} ms after the run finished, {} ms after it was asked",
        (answered_at - finished).num_milliseconds(),
        waited.as_millis()
    );
    let (_, all) = node
        .get("/api/v1/collections/changing/changes?since=6")
        .await;
    assert_eq!(seqs(&all), [7, 8, 9], "{all}");
    let next = all["next"].as_u64().unwrap();

    // With nothing to come, a long-poll answers empty after about wait_secs.
    let t0 = Instant::now();
    let (status, page) = node
        .get(&format!(
            "/api/v1/collections/changing/changes?since={next}&wait_secs=1"
        ))
        .await;
    let waited = t0.elapsed();
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["changes"], json!([]));
    assert_eq!(page["next"], next);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "waited {waited:?}"
    );

    // Bad input names the field; an unknown collection is a 404.
    for (query, field) in [
        ("wait_secs=61", "wait_secs"),
        ("wait_secs=x", "wait_secs"),
        ("since=x", "since"),
        ("limit=x", "limit"),
    ] {
        let (status, body) = node
            .get(&format!("/api/v1/collections/changing/changes?{query}"))
            .await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
    }
    let (status, _) = node.get("/api/v1/collections/nope/changes").await;
    assert_eq!(status, 404);
}
