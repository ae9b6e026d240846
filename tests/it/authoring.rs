//! Authoring sources, through HTTP against the fixture site: preview
//! (items and next page, 400s naming the field, the SSRF guard, nothing
//! stored, warnings), detail pages (each fetched once a run, a failing or
//! disallowed one leaves its field null and is counted), and drift (a
//! "redesigned" page marks the source degraded until it recovers).

use std::time::Duration;

use crate::harness::fixture::{
    page_path, shop_spec, FixtureSite, SHOP_FAILING_DETAIL, SHOP_PRODUCTS,
};
use crate::harness::{catalogue_spec, wait_until, Node, NodeConfig};
use serde_json::{json, Value};

const WITHIN: Duration = Duration::from_secs(30);

/// A spec body for a preview: no id, no collection.
fn bare(mut spec: Value) -> Value {
    let object = spec.as_object_mut().unwrap();
    object.remove("id");
    object.remove("collection");
    spec
}

async fn preview(node: &Node, query: &str, spec: &Value) -> (u16, Value) {
    node.post(&format!("/api/v1/preview{query}"), spec).await
}

/// Nothing of the node's stored state changed: no source, no collection.
async fn assert_nothing_stored(node: &Node) {
    let (_, sources) = node.get("/api/v1/sources").await;
    assert_eq!(sources["sources"], json!([]), "{sources}");
    let (_, collections) = node.get("/api/v1/collections").await;
    assert_eq!(collections["collections"], json!([]), "{collections}");
}

#[tokio::test]
async fn a_preview_shows_pages_of_items_and_stores_nothing() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let spec = bare(catalogue_spec("x", &site.url(&page_path(1))));

    let (status, body) = preview(&node, "?pages=2", &spec).await;
    assert_eq!(status, 200, "{body}");
    let pages = body["pages"].as_array().unwrap();
    assert_eq!(pages.len(), 2, "{body}");
    assert_eq!(pages[0]["url"], site.url(&page_path(1)));
    assert_eq!(pages[0]["status"], 200);
    assert!(pages[0]["elapsed_ms"].is_u64());
    assert_eq!(pages[0]["next_page"], site.url(&page_path(2)));
    assert_eq!(pages[1]["url"], site.url(&page_path(2)));
    assert_eq!(pages[1]["next_page"], site.url(&page_path(3)));
    let first = &pages[0]["items"][0];
    assert_eq!(first["data"]["title"], "Book 1");
    assert_eq!(first["data"]["price"], 1.99);
    assert_eq!(first["data"]["url"], site.url("/catalogue/item-1.html"));
    assert_eq!(pages[1]["items"].as_array().unwrap().len(), 20);
    assert_eq!(body["warnings"], json!([]), "{body}");
    // The default is one page; only the pages asked for were fetched.
    let (_, one) = preview(&node, "", &spec).await;
    assert_eq!(one["pages"].as_array().unwrap().len(), 1);
    assert_eq!(site.hits(&page_path(3)), 0);
    assert_eq!(site.hits(&page_path(1)), 2);

    assert_nothing_stored(&node).await;

    // A stored, disabled source can be previewed; it still stores nothing.
    let mut disabled = catalogue_spec("off", &site.url(&page_path(1)));
    disabled["enabled"] = json!(false);
    node.create_source(&disabled).await;
    let (status, body) = node
        .post("/api/v1/sources/off/preview?pages=1", &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pages"][0]["items"].as_array().unwrap().len(), 20);
    let source = node.source("off").await;
    assert!(source["status"]["last_run"].is_null(), "{source}");
    let (_, collections) = node.get("/api/v1/collections").await;
    assert_eq!(collections["collections"], json!([]), "{collections}");
    let (status, _) = node.post("/api/v1/sources/nope/preview", &json!({})).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn bad_previews_are_400s_naming_the_field_and_the_guard_holds() {
    let site = FixtureSite::start().await;
    site.set_robots(200, "User-agent: *\nDisallow: /catalogue/page-5.html\n");
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let good = bare(catalogue_spec("x", &site.url(&page_path(1))));
    for query in ["?pages=0", "?pages=4", "?pages=two", "?pages=-1"] {
        let (status, body) = preview(&node, query, &good).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["field"], "pages", "{query}: {body}");
    }
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("url", Box::new(|v| v["url"] = json!("file:///etc/passwd"))),
        (
            "extract.fields.price.css",
            Box::new(|v| v["extract"]["fields"]["price"]["css"] = json!(":::")),
        ),
        (
            "extract.fields.title.follow.fields.upc.follow",
            Box::new(|v| {
                v["extract"]["fields"]["title"]["follow"] = json!({"fields": {
                    "upc": {"css": "a", "attr": "href", "follow": {"fields": {"x": "p"}}}}})
            }),
        ),
        (
            "extract.fields.title.follow.fields.upc.css",
            Box::new(|v| {
                v["extract"]["fields"]["title"]["follow"] =
                    json!({"fields": {"upc": {"css": "[[["}}})
            }),
        ),
        (
            "extract.fields.tags.all",
            Box::new(|v| v["extract"]["fields"]["tags"]["follow"] = json!({"fields": {"u": "p"}})),
        ),
        (
            "extract.max_follows",
            Box::new(|v| v["extract"]["max_follows"] = json!(5000)),
        ),
        (
            "extract.fields.name.follow",
            Box::new(|v| {
                v["extract"] = json!({"format": "json", "scope": "/data/items", "fields": {
                    "name": {"path": "/link", "follow": {"fields": {"x": "/y"}}}}})
            }),
        ),
        (
            "collection",
            Box::new(|v| v["collection"] = json!("../etc")),
        ),
    ];
    for (field, mutate) in cases {
        let mut spec = good.clone();
        mutate(&mut spec);
        let (status, body) = preview(&node, "", &spec).await;
        assert_eq!(status, 400, "{field}: {body}");
        assert_eq!(body["error"]["field"], field, "{body}");
        assert_eq!(body["error"]["code"], "invalid_request", "{body}");
    }
    let (status, body) = preview(&node, "", &json!([1, 2])).await;
    assert_eq!(status, 400, "{body}");

    // The SSRF guard: loopback outside the allowed fixture address, and the
    // metadata address, are refused before any request.
    for url in [
        site.canary_url(&page_path(1)),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let mut spec = good.clone();
        spec["url"] = json!(url);
        let (status, body) = preview(&node, "", &spec).await;
        assert_eq!(status, 400, "{url}: {body}");
        assert_eq!(body["error"]["field"], "url", "{body}");
    }
    // A redirect to loopback is refused on the hop: the page fails, the
    // canary is never reached.
    let mut spec = good.clone();
    spec["url"] = json!(site.url("/hostile/redirect-loopback"));
    let (status, body) = preview(&node, "", &spec).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["pages"][0]["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("refused")),
        "{body}"
    );
    assert_eq!(site.canary_hits(), 0);
    // robots.txt (set before the first request: the node keeps it an hour)
    // applies to a preview as to a run.
    let mut spec = good.clone();
    spec["url"] = json!(site.url(&page_path(5)));
    let (status, body) = preview(&node, "", &spec).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["pages"][0]["error"]["code"], "robots_disallowed",
        "{body}"
    );
    assert_eq!(site.hits(&page_path(5)), 0);
    assert_nothing_stored(&node).await;
}

#[tokio::test]
async fn preview_warnings_name_fields_that_match_nothing_or_only_sometimes() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let mut spec = bare(catalogue_spec("x", &site.url(&page_path(1))));
    spec["extract"]["fields"]["missing"] = json!(".no-such-class");
    spec["extract"]["fields"]["book3"] = json!({"css": "a[title='Book 3']", "attr": "title"});
    spec["extract"]["fields"]["tag_number"] = json!({"css": ".tag", "all": true, "type": "number"});
    let (status, body) = preview(&node, "", &spec).await;
    assert_eq!(status, 200, "{body}");
    let warnings: Vec<(String, String)> = body["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            (
                w["field"].as_str().unwrap().to_owned(),
                w["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let has =
        |field: &str, part: &str| warnings.iter().any(|(f, m)| f == field && m.contains(part));
    assert!(
        has(
            "extract.fields.missing",
            "matched nothing in any of the 20 items"
        ),
        "{warnings:?}"
    );
    assert!(
        has("extract.fields.book3", "matched in 1 of 20 items"),
        "{warnings:?}"
    );
    assert!(
        has(
            "extract.fields.tag_number",
            "20 values found did not parse as a number"
        ),
        "{warnings:?}"
    );
    assert_eq!(warnings.len(), 3, "{warnings:?}");

    // A scope that matches nothing says so.
    spec["extract"]["scope"] = json!("article.gone");
    let (status, body) = preview(&node, "", &spec).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["warnings"],
        json!([{"field": "extract.scope", "message": "matched nothing on 1 page"}])
    );
    assert_eq!(body["pages"][0]["items"], json!([]));
}

fn run_of(source: &Value) -> &Value {
    &source["status"]["last_run"]
}

#[tokio::test]
async fn detail_pages_are_followed_once_a_run_and_failures_leave_the_field_null() {
    let site = FixtureSite::start().await;
    site.set_robots(200, "User-agent: *\nDisallow: /shop/detail-2.html\n");
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path())
        .env("GLEANER_FETCH_RETRIES", "0")
        .start()
        .await;

    // A preview shows the detail objects, and says what failed.
    let spec = shop_spec("shop", &site.url("/shop/list-1.html"));
    let (status, body) = preview(&node, "", &bare(spec.clone())).await;
    assert_eq!(status, 200, "{body}");
    let items = body["pages"][0]["items"].as_array().unwrap();
    assert_eq!(items.len(), SHOP_PRODUCTS as usize);
    assert_eq!(
        items[0]["data"]["detail"],
        json!({"upc": "UPC-0001", "description": "Detail of product 1.", "stock": 1})
    );
    assert!(items[1]["data"]["detail"].is_null(), "robots: {body}");
    assert!(items[2]["data"]["detail"].is_null(), "500: {body}");
    let follow_warning = body["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["field"] == "extract.fields.detail.follow")
        .unwrap_or_else(|| panic!("no follow warning: {body}"));
    assert!(
        follow_warning["message"]
            .as_str()
            .unwrap()
            .starts_with("2 follows left the field null"),
        "{body}"
    );
    // max_follows bounds the detail pages a listing page may cost.
    let mut bounded = bare(spec.clone());
    bounded["extract"]["max_follows"] = json!(1);
    let (_, body) = preview(&node, "", &bounded).await;
    let details: Vec<&Value> = body["pages"][0]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["data"]["detail"])
        .collect();
    assert_eq!(
        details.iter().filter(|d| d.is_object()).count(),
        1,
        "{body}"
    );
    let detail_hits = |k: u32| site.hits(&format!("/shop/detail-{k}.html"));
    let before: Vec<usize> = (1..=SHOP_PRODUCTS).map(detail_hits).collect();

    // A run: two listing pages link to the same four detail pages; each is
    // fetched once, the disallowed one never.
    node.create_source(&spec).await;
    let source = node.wait_for_run("shop", WITHIN, |r| r["pages"] == 2).await;
    let run = run_of(&source);
    assert!(run["error"].is_null(), "{run}");
    for k in 1..=SHOP_PRODUCTS {
        let want = usize::from(k != 2);
        let during_run = detail_hits(k) - before[k as usize - 1];
        assert_eq!(during_run, want, "detail {k}");
    }
    assert_eq!(run["follows"], 3, "{run}");
    // Items of detail 2 (robots) and detail 3 (500), on both pages.
    assert_eq!(run["follow_errors"], 4, "{run}");
    assert!(run["follow_error"].as_str().is_some(), "{run}");
    let items = node.all_items("shop").await;
    assert_eq!(items.len(), 2 * SHOP_PRODUCTS as usize);
    for item in &items {
        let title = item["data"]["title"].as_str().unwrap();
        let k: u32 = title.rsplit('-').next().unwrap().parse().unwrap();
        let detail = &item["data"]["detail"];
        if k == 2 || k == SHOP_FAILING_DETAIL {
            assert!(detail.is_null(), "{item}");
        } else {
            assert_eq!(detail["upc"], format!("UPC-{k:04}"), "{item}");
            assert_eq!(detail["stock"], k, "{item}");
        }
    }
}

#[tokio::test]
async fn a_redesigned_page_degrades_the_source_until_it_recovers() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let mut spec = catalogue_spec("shop", &site.url("/redesign.html"));
    spec["extract"]["next_page"]["max_pages"] = json!(1);
    node.create_source(&spec).await;
    let source = node.wait_for_run("shop", WITHIN, |r| r["items"] == 5).await;
    assert_eq!(source["status"]["health"], "ok", "{source}");
    assert!(source["status"].get("health_reason").is_none());

    // The site changes its item class: runs still succeed, with no items.
    site.set_redesigned(true);
    let last = run_of(&source)["started_at"].clone();
    let (status, _) = node.post("/api/v1/sources/shop/run", &json!({})).await;
    assert_eq!(status, 202);
    let source = node
        .wait_for_run("shop", WITHIN, |r| r["started_at"] != last)
        .await;
    assert_eq!(run_of(&source)["items"], 0, "{source}");
    assert!(run_of(&source)["error"].is_null(), "{source}");
    assert_eq!(source["status"]["health"], "degraded", "{source}");
    let reason = source["status"]["health_reason"].as_str().unwrap();
    assert!(
        reason.contains("no items") && reason.contains('5'),
        "{reason}"
    );
    // On /debug/state and in the metrics too.
    let (_, state) = node.get("/debug/state").await;
    let shown = state["nodes"][0]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "shop")
        .unwrap()["status"]["health"]
        .clone();
    assert_eq!(shown, "degraded");
    let metrics = metrics_text(&node).await;
    assert!(
        metrics.lines().any(|l| l == "gleaner_sources_degraded 1"),
        "{metrics}"
    );

    // The site is back: the next good run is ok again, by itself.
    site.set_redesigned(false);
    let last = run_of(&source)["started_at"].clone();
    node.post("/api/v1/sources/shop/run", &json!({})).await;
    let source = node
        .wait_for_run("shop", WITHIN, |r| r["started_at"] != last)
        .await;
    assert_eq!(run_of(&source)["items"], 5);
    assert_eq!(source["status"]["health"], "ok", "{source}");
    wait_until("the gauge back at 0", WITHIN, || async {
        metrics_text(&node)
            .await
            .lines()
            .any(|l| l == "gleaner_sources_degraded 0")
            .then_some(())
    })
    .await;
}

async fn metrics_text(node: &Node) -> String {
    node.request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
