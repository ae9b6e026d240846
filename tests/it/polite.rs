//! Politeness on one node: request options as the site sees them, secrets
//! masked in shared views, cron schedules, robots.txt (allow, disallow,
//! Crawl-delay, 404, 500), back-off after a 429 with `Retry-After`, and
//! conditional requests (304: items not re-parsed, their `last_seen` moved).
//! Each robots.txt case has a fixture site of its own (its own host).

use std::time::{Duration, Instant};

use crate::harness::fixture::{page_path, FixtureSite};
use crate::harness::{catalogue_spec, wait_until, Node, NodeConfig};
use serde_json::{json, Value};

const WITHIN: Duration = Duration::from_secs(30);

/// A source of `pages` catalogue pages from page 1 of `site`.
fn pages_spec(id: &str, site: &FixtureSite, pages: u32) -> Value {
    let mut spec = catalogue_spec(id, &site.url(&page_path(1)));
    spec["extract"]["next_page"]["max_pages"] = pages.into();
    spec
}

#[tokio::test]
async fn request_options_reach_the_site_and_secrets_stay_masked() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path())
        .env("GLEANER_CONTACT_URL", "https://example.org/crawler")
        .start()
        .await;
    let mut spec = pages_spec("posted", &site, 1);
    spec["request"] = json!({
        "method": "POST",
        "headers": { "Authorization": "Bearer s3cret-value", "X-Api-Key": "k3y-value", "X-Trace": "visible" },
        "body": "{\"q\":\"books\"}",
        "user_agent": "polite-test/1.0"
    });
    let created = node.create_source(&spec).await;
    // The admin's own create answers with the spec as stored.
    assert_eq!(
        created["request"]["headers"]["Authorization"],
        "Bearer s3cret-value"
    );
    node.wait_for_run("posted", WITHIN, |r| r["pages"] == 1)
        .await;
    let seen = site.requests(&page_path(1));
    let first = &seen[0];
    assert_eq!(first.method, "POST");
    assert_eq!(&first.body[..], b"{\"q\":\"books\"}");
    assert_eq!(first.headers["authorization"], "Bearer s3cret-value");
    assert_eq!(first.headers["x-api-key"], "k3y-value");
    assert_eq!(first.headers["x-trace"], "visible");
    assert_eq!(first.headers["user-agent"], "polite-test/1.0");

    // The default user agent carries the contact URL.
    let mut plain = catalogue_spec("plain", &site.url(&page_path(2)));
    plain["extract"]["next_page"]["max_pages"] = 1.into();
    node.create_source(&plain).await;
    node.wait_for_run("plain", WITHIN, |r| r["pages"] == 1)
        .await;
    let ua = site.requests(&page_path(2))[0].headers["user-agent"].clone();
    assert_eq!(
        ua.to_str().unwrap(),
        format!(
            "gleaner/{} (+https://example.org/crawler)",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(site.requests(&page_path(2))[0].method, "GET");

    // Masked in the list, the status view of every source and /debug/state.
    let (status, list) = node.get("/api/v1/sources").await;
    assert_eq!(status, 200);
    let listed = list["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "posted")
        .unwrap();
    assert_eq!(listed["request"]["headers"]["Authorization"], "***");
    assert_eq!(listed["request"]["headers"]["X-Api-Key"], "***");
    assert_eq!(listed["request"]["headers"]["X-Trace"], "visible");
    let (status, state) = node.get("/debug/state").await;
    assert_eq!(status, 200);
    for (what, text) in [
        ("the list", list.to_string()),
        ("/debug/state", state.to_string()),
    ] {
        assert!(!text.contains("s3cret-value"), "{what}: {text}");
        assert!(!text.contains("k3y-value"), "{what}: {text}");
    }
    assert!(
        state.to_string().contains("\"Authorization\":\"***\""),
        "{state}"
    );
    // The admin's get of the one source shows it as stored.
    let one = node.source("posted").await;
    assert_eq!(one["request"]["headers"]["X-Api-Key"], "k3y-value");
    // And the secrets are never logged.
    let logs = node.logs().join("\n");
    assert!(!logs.contains("s3cret-value") && !logs.contains("k3y-value"));
}

#[tokio::test]
async fn bad_request_options_and_schedules_are_400s_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let base = catalogue_spec("bad", "http://127.0.0.2:1/catalogue/page-1.html");
    let cases: Vec<(&str, Value)> = vec![
        (
            "request.headers.x y",
            json!({ "request": { "headers": { "x y": "1" } } }),
        ),
        (
            "request.headers.X-A",
            json!({ "request": { "headers": { "X-A": "a\r\nX-Injected: 1" } } }),
        ),
        (
            "request.headers.Host",
            json!({ "request": { "headers": { "Host": "elsewhere" } } }),
        ),
        (
            "request.body",
            json!({ "request": { "body": "only with POST" } }),
        ),
        ("request.method", json!({ "request": { "method": "PUT" } })),
        (
            "request.user_agent",
            json!({ "request": { "user_agent": "two\nlines" } }),
        ),
        (
            "schedule.cron",
            json!({ "schedule": { "cron": "61 * * * *" } }),
        ),
        ("schedule.cron", json!({ "schedule": { "cron": "* * *" } })),
        (
            "schedule",
            json!({ "schedule": { "cron": "* * * * *", "every_secs": 60 } }),
        ),
    ];
    for (field, patch) in cases {
        let mut spec = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            spec[k] = v.clone();
        }
        let (status, body) = node.post("/api/v1/sources", &spec).await;
        assert_eq!(status, 400, "{patch}: {body}");
        assert_eq!(body["error"]["field"], field, "{patch}: {body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{patch}: {body}");
    }
}

#[tokio::test]
async fn a_cron_source_shows_its_next_cron_time() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let mut spec = pages_spec("yearly", &site, 1);
    spec["schedule"] = json!({ "cron": "0 0 1 1 *" });
    let created = node.create_source(&spec).await;
    assert_eq!(created["schedule"]["cron"], "0 0 1 1 *");
    // A new source runs at once, then at the cron times (UTC).
    node.wait_for_run("yearly", WITHIN, |r| r["pages"] == 1)
        .await;
    let year = chrono::Datelike::year(&chrono::Utc::now()) + 1;
    let want = format!("{year}-01-01T00:00:00");
    let source = wait_until("next_run at the cron time", WITHIN, || async {
        let s = node.source("yearly").await;
        s["status"]["next_run"]
            .as_str()
            .is_some_and(|n| n.starts_with(&want))
            .then_some(s)
    })
    .await;
    assert_eq!(source["status"]["state"], "scheduled", "{source}");
}

/// Waits for the source's last run to carry `code`, and returns it.
async fn wait_for_code(node: &Node, id: &str, code: &str) -> Value {
    node.wait_for_run(id, WITHIN, |r| r["code"] == code).await["status"]["last_run"].clone()
}

#[tokio::test]
async fn robots_txt_allows_disallows_and_spaces_requests() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;

    // Disallowed start URL: never requested, the run fails robots_disallowed.
    let closed = FixtureSite::start().await;
    closed.set_robots(200, "User-agent: *\nDisallow: /\n");
    node.create_source(&pages_spec("closed", &closed, 3)).await;
    let run = wait_for_code(&node, "closed", "robots_disallowed").await;
    assert!(
        run["error"].as_str().unwrap().contains("robots.txt"),
        "{run}"
    );
    assert_eq!(run["pages"], 0, "{run}");

    // 500: disallow all until the next try.
    let broken = FixtureSite::start().await;
    broken.set_robots(500, "oops");
    node.create_source(&pages_spec("broken", &broken, 3)).await;
    wait_for_code(&node, "broken", "robots_disallowed").await;

    // A next page disallowed for gleaner ends pagination; the run says so.
    let partial = FixtureSite::start().await;
    partial.set_robots(
        200,
        "User-agent: *\nDisallow: /\n\nUser-agent: gleaner\nDisallow: /catalogue/page-3.html\n",
    );
    node.create_source(&pages_spec("partial", &partial, 5))
        .await;
    let run = node
        .wait_for_run("partial", WITHIN, |r| r["stopped"] == "robots_disallowed")
        .await["status"]["last_run"]
        .clone();
    assert_eq!(run["pages"], 2, "{run}");
    assert!(run["error"].is_null(), "{run}");

    // 404: everything allowed.
    let open = FixtureSite::start().await;
    node.create_source(&pages_spec("open", &open, 3)).await;
    node.wait_for_run("open", WITHIN, |r| r["pages"] == 3).await;

    // Crawl-delay: this node's requests to the host at least that far apart.
    let slow = FixtureSite::start().await;
    slow.set_robots(200, "User-agent: gleaner\nCrawl-delay: 1\n");
    node.create_source(&pages_spec("slow", &slow, 3)).await;
    node.wait_for_run("slow", WITHIN, |r| r["pages"] == 3).await;
    let times: Vec<Instant> = slow.requests("/catalogue/").iter().map(|r| r.at).collect();
    assert_eq!(times.len(), 3);
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("crawl-delay 1 s: gaps between requests {gaps:?}");
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(950)),
        "{gaps:?}"
    );

    // robots.txt fetched once per host, and nothing disallowed was requested.
    for site in [&closed, &partial, &open, &slow] {
        assert_eq!(site.hits("/robots.txt"), 1);
    }
    assert_eq!(closed.hits("/catalogue/"), 0);
    assert_eq!(broken.hits("/catalogue/"), 0);
    assert_eq!(partial.hits("/catalogue/page-3.html"), 0);
}

#[tokio::test]
async fn a_429_pauses_the_host_until_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    for (id, least) in [
        ("in-seconds", Duration::from_millis(2950)),
        // An HTTP date has whole seconds: the pause is 4 to 5 s from now.
        ("as-a-date", Duration::from_millis(3500)),
    ] {
        let retry_after = if id == "in-seconds" {
            "3".to_owned()
        } else {
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(5))
        };
        let site = FixtureSite::start().await;
        site.throttle(429, &retry_after, 1);
        node.create_source(&pages_spec(id, &site, 1)).await;
        wait_for_code(&node, id, "host_backoff").await;
        // The scraper is restarted and tries again: it waits for the pause.
        node.wait_for_run(id, WITHIN, |r| r["pages"] == 1 && r["error"].is_null())
            .await;
        let seen = site.requests("/catalogue/");
        assert_eq!(seen[0].throttled, Some(429));
        let gap = seen[1].at - seen[0].at;
        eprintln!("Retry-After {retry_after}: next request after {gap:?}");
        assert!(gap >= least, "{id}: the next request came after {gap:?}");
    }
}

#[tokio::test]
async fn a_long_pause_fails_runs_on_the_host_without_a_request() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    // 120 s is past the 30 s a run waits: runs fail at once, host_backoff.
    site.throttle(503, "120", 1);
    node.create_source(&pages_spec("first", &site, 1)).await;
    let run = wait_for_code(&node, "first", "host_backoff").await;
    assert!(run["error"].as_str().unwrap().contains("503"), "{run}");
    // The restarted scraper and another source on the host are refused
    // without a request.
    let mut other = catalogue_spec("other", &site.url(&page_path(2)));
    other["extract"]["next_page"]["max_pages"] = 1.into();
    node.create_source(&other).await;
    let run = wait_for_code(&node, "other", "host_backoff").await;
    assert!(run["error"].as_str().unwrap().contains("paused"), "{run}");
    assert_eq!(run["pages"], 0, "{run}");
    wait_until("the first source's restarted run", WITHIN, || async {
        let (_, runs) = node.get("/api/v1/sources/first/runs").await;
        (runs["runs"].as_array().unwrap().len() >= 2).then_some(())
    })
    .await;
    let (_, runs) = node.get("/api/v1/sources/first/runs").await;
    let latest = &runs["runs"][0];
    assert_eq!(latest["code"], "host_backoff", "{runs}");
    assert!(
        latest["error"].as_str().unwrap().contains("paused"),
        "{runs}"
    );
    assert_eq!(
        site.hits("/catalogue/"),
        1,
        "only the throttled request reached the site"
    );
}

/// Each item's `last_seen`, by key.
async fn last_seen(node: &Node, collection: &str) -> std::collections::BTreeMap<String, String> {
    node.all_items(collection)
        .await
        .iter()
        .map(|i| {
            (
                i["key"].as_str().unwrap().to_owned(),
                i["last_seen"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_304_reuses_the_remembered_items_and_moves_last_seen() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    for (id, prefix, header) in [
        ("etag", "/etag/", "if-none-match"),
        ("lastmod", "/lastmod/", "if-modified-since"),
    ] {
        let mut spec = catalogue_spec(id, &site.url(&format!("{prefix}page-1.html")));
        spec["collection"] = id.into();
        spec["extract"]["next_page"]["max_pages"] = 2.into();
        node.create_source(&spec).await;
        let first = node.wait_for_run(id, WITHIN, |r| r["pages"] == 2).await;
        assert_eq!(first["status"]["last_run"]["not_modified"], 0, "{first}");
        assert_eq!(first["status"]["last_run"]["inserted"], 40, "{first}");
        let before = last_seen(&node, id).await;
        assert_eq!(before.len(), 40);

        let (status, body) = node
            .post(&format!("/api/v1/sources/{id}/run"), &json!({}))
            .await;
        assert_eq!(status, 202, "{body}");
        let second = node
            .wait_for_run(id, WITHIN, |r| r["not_modified"] == 2)
            .await["status"]["last_run"]
            .clone();
        assert_eq!(second["pages"], 2, "{second}");
        assert_eq!(second["items"], 40, "{second}");
        assert_eq!(
            (&second["inserted"], &second["changed"]),
            (&json!(0), &json!(0)),
            "{second}"
        );
        assert!(second["error"].is_null(), "{second}");
        // The second run asked conditionally for both pages.
        let asked = site.requests(prefix);
        assert_eq!(asked.len(), 4);
        assert!(
            asked[2..].iter().all(|r| r.headers.contains_key(header)),
            "{id}"
        );
        let after = last_seen(&node, id).await;
        assert_eq!(after.len(), 40);
        for (key, seen) in &before {
            assert!(
                after[key] > *seen,
                "{id}: {key} last_seen {seen} -> {}",
                after[key]
            );
        }
    }
}

#[tokio::test]
async fn a_304_whose_items_another_source_changed_since_is_asked_for_in_full() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let url = site.url("/etag/page-1.html");
    let mut spec = catalogue_spec("etag", &url);
    spec["collection"] = "shared".into();
    spec["extract"]["next_page"]["max_pages"] = 2.into();
    node.create_source(&spec).await;
    let first = node.wait_for_run("etag", WITHIN, |r| r["pages"] == 2).await;
    assert_eq!(first["status"]["last_run"]["inserted"], 40, "{first}");

    // Another source writes the first page's items (same keys) without
    // their tags.
    let mut other = spec.clone();
    other["id"] = "untagged".into();
    other["extract"]["next_page"]["max_pages"] = 1.into();
    other["extract"]["fields"]
        .as_object_mut()
        .unwrap()
        .remove("tags");
    node.create_source(&other).await;
    let taken = node
        .wait_for_run("untagged", WITHIN, |r| r["pages"] == 1)
        .await;
    assert_eq!(taken["status"]["last_run"]["changed"], 20, "{taken}");

    // The site answers the first source 304 for both pages, but the
    // collection no longer holds the first page's items as they were: that
    // page is asked for again, in full, and the second counts as a 304.
    let asked_before = site.requests("/etag/").len();
    let (status, body) = node.post("/api/v1/sources/etag/run", &json!({})).await;
    assert_eq!(status, 202, "{body}");
    let again = node
        .wait_for_run("etag", WITHIN, |r| r["changed"] == 20)
        .await["status"]["last_run"]
        .clone();
    assert_eq!(
        (&again["not_modified"], &again["pages"], &again["items"]),
        (&json!(1), &json!(2), &json!(40)),
        "{again}"
    );
    assert!(again["error"].is_null(), "{again}");
    let asked: Vec<(String, bool)> = site.requests("/etag/")[asked_before..]
        .iter()
        .map(|r| (r.path.clone(), r.headers.contains_key("if-none-match")))
        .collect();
    assert_eq!(
        asked,
        [
            ("/etag/page-1.html".to_string(), true),
            ("/etag/page-2.html".to_string(), true),
            ("/etag/page-1.html".to_string(), false),
        ],
        "304s, then the first page again in full"
    );
    let items = node.all_items("shared").await;
    assert_eq!(items.len(), 40);
    assert!(
        items
            .iter()
            .all(|i| i["source"] == "etag" && i["data"]["tags"].is_array()),
        "the first source's items again: {items:?}"
    );

    // Its next run is answered 304 and applied by name.
    let (status, body) = node.post("/api/v1/sources/etag/run", &json!({})).await;
    assert_eq!(status, 202, "{body}");
    let third = node
        .wait_for_run("etag", WITHIN, |r| r["not_modified"] == 2)
        .await["status"]["last_run"]
        .clone();
    assert_eq!(
        (&third["items"], &third["changed"]),
        (&json!(40), &json!(0)),
        "{third}"
    );
}
