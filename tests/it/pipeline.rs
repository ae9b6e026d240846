//! The whole pipeline on one node, through HTTP: a source is scraped from a
//! real local fixture site, its items land in a collection in sled, and the
//! collection is queried. Also: changes, failures, healing, delete, replace, and a
//! `kill -9` followed by a restart on the same data directory.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::harness::fixture::FixtureSite;
use crate::harness::{catalogue_spec, wait_until, NodeConfig};
use serde_json::{json, Value};

const RUN: Duration = Duration::from_secs(30);

fn ok_run(run: &Value) -> bool {
    run["error"].is_null()
}

#[tokio::test]
async fn a_twenty_page_catalogue_is_collected_exactly_once_and_queried() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let started = std::time::Instant::now();
    node.create_source(&catalogue_spec(
        "books",
        &site.url("/catalogue/page-1.html"),
    ))
    .await;
    let source = node.wait_for_run("books", RUN, ok_run).await;
    let elapsed = started.elapsed();
    eprintln!(
        "20 pages x 20 items collected in {elapsed:?}, node RSS {} KiB",
        node.rss_kib()
    );
    let run = &source["status"]["last_run"];
    assert_eq!(run["pages"], 20, "{source}");
    assert_eq!(run["items"], 400);
    assert_eq!(run["inserted"], 400);
    assert_eq!(source["status"]["items"], 400);
    assert_eq!(source["status"]["state"], "scheduled");
    assert!(source["status"]["next_run"].is_string());
    for n in 1..=20 {
        assert_eq!(
            site.hits(&format!("/catalogue/page-{n}.html")),
            1,
            "page {n}"
        );
    }

    // Every item once, typed as the spec says.
    let items = node.all_items("books").await;
    assert_eq!(items.len(), 400);
    let keys: HashSet<&str> = items.iter().map(|i| i["key"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), 400);
    let urls: HashSet<&str> = items
        .iter()
        .map(|i| i["data"]["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls.len(), 400);
    let item = items
        .iter()
        .find(|i| i["data"]["title"] == "Book 7")
        .expect("book 7 is there");
    assert_eq!(item["data"]["price"], json!(7.99));
    assert_eq!(item["data"]["url"], site.url("/catalogue/item-7.html"));
    assert_eq!(item["data"]["tags"], json!(["t1", "all"]));
    assert_eq!(item["version"], 1);
    assert_eq!(item["source"], "books");
    assert!(item["first_seen"].is_string() && item["last_seen"].is_string());

    // One item by key, with its metadata.
    let key = item["key"].as_str().unwrap();
    let (status, one) = node
        .get(&format!("/api/v1/collections/books/items/{key}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(one["data"], item["data"]);
    assert_eq!(one["collection"], "books");

    // Collections list with counts.
    let (_, cols) = node.get("/api/v1/collections").await;
    assert_eq!(cols["collections"][0]["name"], "books");
    assert_eq!(cols["collections"][0]["items"], 400);
    assert!(cols["collections"][0]["last_update"].is_string());

    // Filters: field equality, list membership, numbers.
    let (_, t1) = node
        .get("/api/v1/collections/books/items?tags=t1&limit=1000")
        .await;
    let expected = (1..=400).filter(|i| i % 3 == 1).count();
    assert_eq!(t1["items"].as_array().unwrap().len(), expected);
    assert!(t1["next"].is_null());
    let (_, priced) = node.get("/api/v1/collections/books/items?price=7.99").await;
    assert_eq!(priced["items"].as_array().unwrap().len(), 1);

    // NDJSON and CSV carry the same items.
    let r = node
        .request(
            reqwest::Method::GET,
            "/api/v1/collections/books/items?format=ndjson&limit=10",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    assert!(r.headers().get("gleaner-next-cursor").is_some());
    let lines: Vec<Value> = r
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    let r = node
        .request(
            reqwest::Method::GET,
            "/api/v1/collections/books/items?format=csv&limit=5",
        )
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = r.text().await.unwrap();
    let mut rows = csv.lines();
    assert_eq!(
        rows.next().unwrap(),
        "key,source,version,first_seen,last_seen,price,tags,title,url"
    );
    assert_eq!(rows.count(), 5);

    // Run history.
    let (_, runs) = node.get("/api/v1/sources/books/runs").await;
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn json_apis_cycles_and_changed_pages() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;

    // A JSON API with pagination by a pointer.
    node.create_source(&json!({
        "id": "api", "url": site.url("/api/items?page=1"), "collection": "api",
        "extract": {
            "format": "json", "scope": "/data/items",
            "fields": {
                "id": "/id", "name": "/name",
                "price": { "path": "/price", "type": "number" },
                "link": { "path": "/link", "type": "url" }
            },
            "next_page": { "path": "/data/next", "max_pages": 10 }
        },
        "key": ["id"]
    }))
    .await;
    let api = node.wait_for_run("api", RUN, ok_run).await;
    assert_eq!(api["status"]["last_run"]["pages"], 3, "{api}");
    let items = node.all_items("api").await;
    assert_eq!(items.len(), 15);
    assert!(items.iter().all(|i| i["data"]["price"].is_number()));
    assert!(items.iter().all(|i| i["data"]["link"]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.2:")));

    // A cycle of pages is walked once.
    let mut cycle = catalogue_spec("cycle", &site.url("/cycle/page-1.html"));
    cycle["collection"] = json!("cycle");
    node.create_source(&cycle).await;
    let c = node.wait_for_run("cycle", RUN, ok_run).await;
    assert_eq!(c["status"]["last_run"]["pages"], 3, "{c}");
    assert_eq!(node.all_items("cycle").await.len(), 6);
    assert_eq!(site.hits("/cycle/page-1.html"), 1);

    // A page that changes between runs updates its items in place.
    let mut changing = catalogue_spec("changing", &site.url("/changing.html"));
    changing["collection"] = json!("changing");
    node.create_source(&changing).await;
    node.wait_for_run("changing", RUN, ok_run).await;
    let before = node.all_items("changing").await;
    assert_eq!(before.len(), 3);
    site.set_revision(2);
    let (status, _) = node.post("/api/v1/sources/changing/run", &json!({})).await;
    assert_eq!(status, 202);
    node.wait_for_run("changing", RUN, |r| r["changed"] == 3)
        .await;
    let after = node.all_items("changing").await;
    assert_eq!(
        after.len(),
        3,
        "changed items are updated in place, never duplicated"
    );
    for item in &after {
        assert_eq!(item["version"], 2, "{item}");
        let old = before.iter().find(|b| b["key"] == item["key"]).unwrap();
        assert_ne!(old["data"]["price"], item["data"]["price"]);
        assert_eq!(old["first_seen"], item["first_seen"]);
    }
    // An unchanged run leaves versions alone.
    node.post("/api/v1/sources/changing/run", &json!({})).await;
    wait_until("a third run", RUN, || async {
        let (_, runs) = node.get("/api/v1/sources/changing/runs").await;
        (runs["runs"].as_array().unwrap().len() == 3).then_some(())
    })
    .await;
    assert!(node
        .all_items("changing")
        .await
        .iter()
        .all(|i| i["version"] == 2));
}

#[tokio::test]
async fn a_failing_source_ends_failed_and_disturbs_no_other() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path())
        .env("GLEANER_FETCH_RETRIES", "1")
        .env("GLEANER_RESTART_INTENSITY", "2")
        .start()
        .await;
    let mut failing = catalogue_spec("failing", &site.url("/fail"));
    failing["collection"] = json!("failing");
    node.create_source(&failing).await;
    let mut healthy = catalogue_spec("healthy", &site.url("/changing.html"));
    healthy["schedule"] = json!({ "every_secs": 1 });
    node.create_source(&healthy).await;

    let failed = wait_until(
        "the failing source to be marked failed",
        Duration::from_secs(60),
        || async {
            let s = node.source("failing").await;
            (s["status"]["state"] == "failed").then_some(s)
        },
    )
    .await;
    let error = failed["status"]["last_error"].as_str().unwrap();
    assert!(error.contains("500"), "{failed}");
    assert!(failed["status"]["last_run"]["error"].is_string());
    // Retried within each run, restarted with backoff, then given up on: 3 runs of 2 attempts.
    assert_eq!(site.hits("/fail"), 6);

    // The healthy one kept running on its schedule throughout.
    let runs_before = site.hits("/changing.html");
    wait_until("the healthy source to keep running", RUN, || async {
        (site.hits("/changing.html") >= runs_before + 2).then_some(())
    })
    .await;
    let h = node.source("healthy").await;
    assert_ne!(h["status"]["state"], "failed", "{h}");
    assert!(h["status"]["last_error"].is_null(), "{h}");

    // An operator's run revives the failed source (it fails again, visibly).
    let (status, _) = node.post("/api/v1/sources/failing/run", &json!({})).await;
    assert_eq!(status, 202);
    wait_until("the revived source to fetch again", RUN, || async {
        (site.hits("/fail") > 6).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_failed_source_heals_by_itself_once_its_site_recovers() {
    const OUTAGE: Duration = Duration::from_secs(10);
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    // One fetch per run, one quick restart, then given up on.
    let node = NodeConfig::new(dir.path())
        .env("GLEANER_FETCH_RETRIES", "0")
        .env("GLEANER_RESTART_INTENSITY", "1")
        .start()
        .await;
    let recovers_at = site.fail_for(OUTAGE);
    let mut spec = catalogue_spec("flaky", &site.url("/flaky.html"));
    spec["collection"] = json!("flaky");
    spec["schedule"] = json!({ "every_secs": 1 });
    spec["extract"].as_object_mut().unwrap().remove("next_page");
    node.create_source(&spec).await;

    let parked = wait_until(
        "the source to be failed with a next_run",
        OUTAGE,
        || async {
            let s = node.source("flaky").await;
            (s["status"]["state"] == "failed" && s["status"]["next_run"].is_string()).then_some(s)
        },
    )
    .await;
    let error = parked["status"]["last_error"].as_str().unwrap();
    assert!(error.contains("500"), "{parked}");
    assert_eq!(parked["status"]["restarts"], 1, "{parked}");

    // While the site is down the source shows `failed` with the time of its
    // next try, tries one run at a time (never the quick restarts again) on
    // a delay that doubles, and shows `failed` again after each.
    let mut retries: Vec<DateTime<Utc>> = Vec::new();
    while Instant::now() < recovers_at {
        let s = node.source("flaky").await;
        let status = &s["status"];
        match status["state"].as_str().unwrap() {
            "failed" => {
                let at: DateTime<Utc> = status["next_run"].as_str().unwrap().parse().unwrap();
                if retries.last() != Some(&at) {
                    retries.push(at);
                }
            }
            // A try in progress.
            "running" | "scheduled" => {}
            other => panic!("a failed source's try went {other}: {s}"),
        }
        assert_eq!(status["restarts"], 1, "{s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(retries.len() >= 3, "tries during the outage: {retries:?}");
    let gaps: Vec<i64> = retries
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds())
        .collect();
    // Delays of 1, 2, 4, 8 s: each gap between tries a delay longer than
    // the one before (give or take the length of a failed try).
    assert!(
        gaps.windows(2).all(|g| g[1] > g[0] + 1000),
        "the delay between tries should double: {retries:?}"
    );
    // The first run, its restart, and one fetch per try.
    let fetched = site.hits("/flaky.html");
    assert!(
        fetched <= 2 + retries.len(),
        "{fetched} fetches for {} tries",
        retries.len()
    );

    // The site is back: the next try succeeds, and the source is scheduled
    // again with its items, without anyone asking.
    let healed = wait_until(
        "the source to be scheduled again after the site recovered",
        Duration::from_secs(40),
        || async {
            let s = node.source("flaky").await;
            let ok = s["status"]["state"] == "scheduled"
                && s["status"]["last_run"]["error"].is_null()
                && s["status"]["last_run"]["items"] == 5;
            ok.then_some(s)
        },
    )
    .await;
    let took = recovers_at.elapsed();
    eprintln!(
        "healed {took:?} after the site recovered ({} tries during the outage)",
        retries.len()
    );
    assert!(healed["status"]["next_run"].is_string(), "{healed}");
    assert_eq!(node.item_keys("flaky").await.len(), 5);
    // At most one delay after the recovery: the last one shown, plus slack.
    let last_delay = gaps.last().copied().unwrap_or(1000) as u64;
    assert!(
        took < Duration::from_millis(2 * last_delay + 5000),
        "{took:?}"
    );

    // The success forgot the failures: a new outage gets the quick restart
    // first again, rather than being given up on at once.
    site.fail_for(Duration::from_secs(3));
    let again = wait_until(
        "a quick restart after a new failure",
        Duration::from_secs(20),
        || async {
            let s = node.source("flaky").await;
            (s["status"]["restarts"] == 2).then_some(s)
        },
    )
    .await;
    assert!(!again["status"]["last_error"].is_null(), "{again}");
}

#[tokio::test]
async fn delete_stops_scraping_and_keeps_items_replace_restarts() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let mut spec = catalogue_spec("often", &site.url("/changing.html"));
    spec["schedule"] = json!({ "every_secs": 1 });
    node.create_source(&spec).await;
    wait_until("two scheduled runs", RUN, || async {
        (site.hits("/changing.html") >= 2).then_some(())
    })
    .await;

    // Replace: the scraper restarts with the new spec (a new URL).
    let mut replaced = spec.clone();
    replaced["url"] = json!(site.url("/catalogue/page-20.html"));
    let (status, body) = node.put("/api/v1/sources/often", &replaced).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["url"], replaced["url"]);
    let count = wait_until("the new URL's items to be stored", RUN, || async {
        let n = node.all_items("books").await.len();
        (n == 23).then_some(n)
    })
    .await;

    let (status, _) = node.delete("/api/v1/sources/often").await;
    assert_eq!(status, 204);
    let after_delete = site.hits("/catalogue/page-20.html");
    let (status, _) = node.get("/api/v1/sources/often").await;
    assert_eq!(status, 404);

    // Use another source's scheduled runs as the clock: three of its runs
    // (at least two seconds) pass without the deleted source fetching again.
    let mut clock = catalogue_spec("clock", &site.url("/cycle/page-1.html"));
    clock["collection"] = json!("clock");
    clock["schedule"] = json!({ "every_secs": 1 });
    clock["extract"]["next_page"]["max_pages"] = json!(1);
    node.create_source(&clock).await;
    wait_until("three runs of the clock source", RUN, || async {
        (site.hits("/cycle/page-1.html") >= 3).then_some(())
    })
    .await;
    assert!(
        site.hits("/catalogue/page-20.html") <= after_delete + 1,
        "the deleted source kept scraping"
    );
    assert_eq!(
        node.all_items("books").await.len(),
        count,
        "items outlive their source"
    );

    // The id can be used again.
    node.create_source(&spec).await;
}

#[tokio::test]
async fn kill_9_and_restart_keep_sources_items_and_schedules() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeConfig::new(dir.path()).start().await;
    let mut spec = catalogue_spec("books", &site.url("/catalogue/page-1.html"));
    spec["schedule"] = json!({ "every_secs": 2 });
    spec["extract"]["next_page"]["max_pages"] = json!(3);
    node.create_source(&spec).await;
    // A source created and acknowledged just before the kill must survive too.
    let mut late = catalogue_spec("late", &site.url("/cycle/page-1.html"));
    late["schedule"] = json!({ "every_secs": 3600 });
    late["enabled"] = json!(false);
    node.create_source(&late).await;
    node.wait_for_run("books", RUN, ok_run).await;
    let items = node.all_items("books").await;
    assert_eq!(items.len(), 60);

    node.kill9();
    let hits_at_kill = site.hits("/catalogue/page-1.html");
    let node = NodeConfig::new(dir.path()).start().await;
    let (_, list) = node.get("/api/v1/sources").await;
    let ids: Vec<&str> = list["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["books", "late"]);
    assert_eq!(node.source("late").await["status"]["state"], "disabled");
    let again = node.all_items("books").await;
    assert_eq!(again.len(), 60);
    // The schedule resumes by itself.
    wait_until("a scheduled run after the restart", RUN, || async {
        (site.hits("/catalogue/page-1.html") > hits_at_kill).then_some(())
    })
    .await;
    node.wait_for_run("books", RUN, ok_run).await;
    assert_eq!(
        node.all_items("books").await.len(),
        60,
        "re-scraping duplicated nothing"
    );
}

/// Items keyed by key, as the items API, the one-item route and the change
/// feed show them.
async fn items_by_key(node: &crate::harness::Node, collection: &str) -> Vec<Value> {
    let mut items = node.all_items(collection).await;
    items.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
    for item in &items {
        let key = item["key"].as_str().unwrap();
        let (status, one) = node
            .get(&format!("/api/v1/collections/{collection}/items/{key}"))
            .await;
        assert_eq!(status, 200, "{one}");
        for field in ["last_seen", "first_seen", "version", "source"] {
            assert_eq!(one[field], item[field], "{field} of {key}: {one} vs {item}");
        }
    }
    items
}

#[tokio::test]
async fn an_unchanged_run_moves_last_seen_only_and_a_restart_keeps_counting_versions() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeConfig::new(dir.path()).start().await;
    let mut spec = catalogue_spec("seen", &site.url("/changing.html"));
    spec["collection"] = json!("seen");
    node.create_source(&spec).await;
    node.wait_for_run("seen", RUN, ok_run).await;
    let first = items_by_key(&node, "seen").await;
    assert_eq!(first.len(), 3);

    // The same page again: nothing changed, so versions stay and only
    // last_seen moves. The site sends no validators, but the body is the
    // very same: the page is not parsed again (counted as not modified).
    node.post("/api/v1/sources/seen/run", &json!({})).await;
    let runs = wait_until("a second run", RUN, || async {
        let (_, runs) = node.get("/api/v1/sources/seen/runs").await;
        (runs["runs"].as_array().unwrap().len() == 2).then_some(runs)
    })
    .await;
    let again = &runs["runs"][0];
    assert_eq!(
        (&again["not_modified"], &again["items"], &again["pages"]),
        (&json!(1), &json!(3), &json!(1)),
        "{again}"
    );
    assert!(
        site.requests("/changing.html")
            .iter()
            .all(|r| !r.headers.contains_key("if-none-match")
                && !r.headers.contains_key("if-modified-since")),
        "no validators to send"
    );
    let second = items_by_key(&node, "seen").await;
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(b["version"], 1, "{b}");
        assert_eq!(a["first_seen"], b["first_seen"]);
        assert_eq!(a["data"], b["data"]);
        let (l1, l2): (DateTime<Utc>, DateTime<Utc>) = (
            serde_json::from_value(a["last_seen"].clone()).unwrap(),
            serde_json::from_value(b["last_seen"].clone()).unwrap(),
        );
        assert!(l2 > l1, "last_seen moves on an unchanged run: {a} then {b}");
    }

    // kill -9: what was acknowledged comes back, last_seen included, and the
    // node knows each item's version again.
    node.kill9();
    let node = NodeConfig::new(dir.path()).start().await;
    let restarted = items_by_key(&node, "seen").await;
    assert_eq!(restarted, second, "the same items after the restart");
    site.set_revision(2);
    node.post("/api/v1/sources/seen/run", &json!({})).await;
    let changed = node.wait_for_run("seen", RUN, |r| r["changed"] == 3).await;
    assert_eq!(
        changed["status"]["last_run"]["not_modified"], 0,
        "{changed}"
    );
    let third = items_by_key(&node, "seen").await;
    for (b, c) in second.iter().zip(&third) {
        assert_eq!(c["version"], 2, "{c}");
        assert_eq!(b["first_seen"], c["first_seen"]);
        assert_ne!(b["data"], c["data"]);
    }
    // The change feed: three inserts, then three changes with the newest bodies.
    let (status, feed) = node.get("/api/v1/collections/seen/changes").await;
    assert_eq!(status, 200, "{feed}");
    let ops: Vec<&str> = feed["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["op"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        ["inserted"; 3]
            .iter()
            .chain(&["changed"; 3])
            .copied()
            .collect::<Vec<_>>()
    );
}
