//! The admin and read API's contract: validation errors name the field, one
//! JSON error shape everywhere, tokens, body limits, unknown routes, and the
//! refusal to serve a non-loopback address without an admin token.

use crate::harness::{catalogue_spec, NodeConfig, ADMIN_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"]["code"], want_code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// A change that makes a valid spec invalid.
type Mutation = Box<dyn Fn(&mut Value)>;

#[tokio::test]
async fn every_invalid_field_is_a_400_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let base = catalogue_spec("books", "http://127.0.0.2:1/catalogue/page-1.html");
    let long = "a".repeat(2000);
    let cases: Vec<(&str, Mutation)> = vec![
        ("id", Box::new(|v| v["id"] = json!("Has Spaces"))),
        ("id", Box::new(|v| v["id"] = json!(""))),
        ("url", Box::new(|v| v["url"] = json!("file:///etc/passwd"))),
        ("url", Box::new(|v| v["url"] = json!("javascript:alert(1)"))),
        ("url", Box::new(|v| v["url"] = json!("http://"))),
        ("url", Box::new(|v| v["url"] = json!("not a url"))),
        (
            "collection",
            Box::new(|v| v["collection"] = json!("../../etc")),
        ),
        (
            "schedule.every_secs",
            Box::new(|v| v["schedule"]["every_secs"] = json!(0)),
        ),
        (
            "schedule.every_secs",
            Box::new(|v| v["schedule"]["every_secs"] = json!(-5)),
        ),
        (
            "schedule.jitter_secs",
            Box::new(|v| v["schedule"] = json!({"every_secs": 10, "jitter_secs": 11})),
        ),
        (
            "extract.scope",
            Box::new(|v| v["extract"]["scope"] = json!("article[[[")),
        ),
        (
            "extract.fields.price.css",
            Box::new(|v| v["extract"]["fields"]["price"]["css"] = json!(":::")),
        ),
        (
            "extract.fields.title.css",
            Box::new(move |v| v["extract"]["fields"]["title"]["css"] = json!(long.clone())),
        ),
        (
            "extract.fields.price.type",
            Box::new(|v| v["extract"]["fields"]["price"]["type"] = json!("money")),
        ),
        (
            "extract.fields.price",
            Box::new(|v| v["extract"]["fields"]["price"]["colour"] = json!("red")),
        ),
        (
            "extract.fields",
            Box::new(|v| v["extract"]["fields"] = json!({})),
        ),
        (
            "extract.next_page.max_pages",
            Box::new(|v| v["extract"]["next_page"]["max_pages"] = json!(0)),
        ),
        (
            "extract.next_page.max_pages",
            Box::new(|v| v["extract"]["next_page"]["max_pages"] = json!(100000)),
        ),
        ("key[0]", Box::new(|v| v["key"] = json!(["isbn"]))),
        ("colour", Box::new(|v| v["colour"] = json!("red"))),
        (
            "extract.scope",
            Box::new(|v| {
                v["extract"] = json!({"format": "json", "scope": "items", "fields": {"a": "/a"}});
            }),
        ),
    ];
    for (field, mutate) in cases {
        let mut spec = base.clone();
        mutate(&mut spec);
        let (status, body) = node.post("/api/v1/sources", &spec).await;
        assert_error(status, &body, 400, "invalid_request");
        let got = body["error"]["field"].as_str().unwrap_or("");
        assert!(
            got == field || got.starts_with(&format!("{field}.")),
            "expected field {field}, got {body}"
        );
    }
    // Nothing invalid was stored.
    let (status, body) = node.get("/api/v1/sources").await;
    assert_eq!(status, 200);
    assert_eq!(body["sources"], json!([]));
}

#[tokio::test]
async fn duplicates_unknowns_bodies_and_routes() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let spec = catalogue_spec("books", "http://127.0.0.2:1/catalogue/page-1.html");
    let created = node.create_source(&spec).await;
    assert_eq!(created["id"], "books");
    assert_eq!(created["status"]["owner"], "test-node");
    let (status, body) = node.post("/api/v1/sources", &spec).await;
    assert_error(status, &body, 409, "conflict");

    for (method, path) in [
        (Method::GET, "/api/v1/sources/nope"),
        (Method::DELETE, "/api/v1/sources/nope"),
        (Method::POST, "/api/v1/sources/nope/run"),
        (Method::GET, "/api/v1/sources/nope/runs"),
        (Method::GET, "/api/v1/collections/nope/items"),
        (Method::GET, "/api/v1/collections/nope/items/abc"),
        (Method::GET, "/no/such/route"),
    ] {
        let (status, body) = node.send(node.request(method.clone(), path)).await;
        assert_error(status, &body, 404, "not_found");
    }
    let (status, body) = node
        .put(
            "/api/v1/sources/nope",
            &catalogue_spec("nope", "http://127.0.0.2:1/"),
        )
        .await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = node
        .send(node.request(Method::PATCH, "/api/v1/sources"))
        .await;
    assert_error(status, &body, 405, "method_not_allowed");
    // A replace whose body names another id.
    let (status, body) = node
        .put(
            "/api/v1/sources/books",
            &catalogue_spec("other", "http://127.0.0.2:1/"),
        )
        .await;
    assert_error(status, &body, 400, "invalid_request");
    assert_eq!(body["error"]["field"], "id");

    let post_raw = |body: Vec<u8>| {
        node.request(Method::POST, "/api/v1/sources")
            .header("content-type", "application/json")
            .body(body)
    };
    let (status, body) = node.send(post_raw(Vec::new())).await;
    assert_error(status, &body, 400, "invalid_request");
    let (status, body) = node.send(post_raw(b"{\"id\": ".to_vec())).await;
    assert_error(status, &body, 400, "invalid_request");
    let (status, body) = node.send(post_raw(b"[1,2,3]".to_vec())).await;
    assert_error(status, &body, 400, "invalid_request");
    let (status, body) = node.send(post_raw(vec![b' '; 300 * 1024])).await;
    assert_error(status, &body, 413, "payload_too_large");
    // Deeply nested JSON is refused, not a crash.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (status, body) = node.send(post_raw(deep.into_bytes())).await;
    assert_error(status, &body, 400, "invalid_request");
    // Still healthy and still holding exactly the one source.
    let (status, _) = node.get("/healthz").await;
    assert_eq!(status, 200);
    let (_, body) = node.get("/api/v1/sources").await;
    assert_eq!(body["sources"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn locator_faults_say_what_is_wrong_and_the_bearer_scheme_has_no_case() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let mut spec = catalogue_spec("books", "http://127.0.0.2:1/catalogue/page-1.html");
    spec["extract"]["fields"]["title"]["css"] = json!("h3:has(");
    let (status, body) = node.post("/api/v1/sources", &spec).await;
    assert_error(status, &body, 400, "invalid_request");
    assert_eq!(body["error"]["field"], "extract.fields.title.css", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("unclosed `:has(`"), "{body}");
    assert!(!message.contains("report"), "{body}");

    let json_spec = json!({
        "id": "api", "url": "http://127.0.0.2:1/api/items?page=1", "collection": "api",
        "extract": { "format": "json", "scope": "/data/items", "fields": { "name": "/~2" } }
    });
    let (status, body) = node.post("/api/v1/sources", &json_spec).await;
    assert_error(status, &body, 400, "invalid_request");
    assert_eq!(body["error"]["field"], "extract.fields.name.path", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("'~'"),
        "{body}"
    );

    // RFC 9110: the scheme's case does not matter.
    for scheme in ["bearer", "BEARER"] {
        let rb = node
            .anonymous(Method::GET, "/api/v1/sources")
            .header("authorization", format!("{scheme} {ADMIN_TOKEN}"));
        let (status, body) = node.send(rb).await;
        assert_eq!(status, 200, "{scheme}: {body}");
        assert_eq!(body["sources"], json!([]), "nothing invalid was stored");
    }
    let rb = node
        .anonymous(Method::GET, "/api/v1/sources")
        .header("authorization", format!("Basic {ADMIN_TOKEN}"));
    let (status, body) = node.send(rb).await;
    assert_error(status, &body, 401, "unauthorized");
}

#[tokio::test]
async fn admin_routes_need_the_token_read_routes_only_when_one_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path())
        .env("GLEANER_READ_TOKEN", "reader-token")
        .start()
        .await;
    for (method, path) in [
        (Method::GET, "/api/v1/sources"),
        (Method::POST, "/api/v1/sources"),
        (Method::GET, "/api/v1/sources/x"),
        (Method::DELETE, "/api/v1/sources/x"),
        (Method::POST, "/api/v1/sources/x/run"),
        (Method::GET, "/api/v1/collections"),
    ] {
        let (status, body) = node.send(node.anonymous(method.clone(), path)).await;
        assert_error(status, &body, 401, "unauthorized");
        let wrong = node
            .anonymous(method.clone(), path)
            .bearer_auth("wrong-token");
        let (status, body) = node.send(wrong).await;
        assert_error(status, &body, 401, "unauthorized");
    }
    // The read token opens read routes only.
    let (status, _) = node
        .send(
            node.anonymous(Method::GET, "/api/v1/collections")
                .bearer_auth("reader-token"),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = node
        .send(
            node.anonymous(Method::GET, "/api/v1/sources")
                .bearer_auth("reader-token"),
        )
        .await;
    assert_eq!(status, 401);
    // The admin token never travels in the URL: a query parameter is ignored.
    let (status, _) = node
        .send(node.anonymous(Method::GET, &format!("/api/v1/sources?token={ADMIN_TOKEN}")))
        .await;
    assert_eq!(status, 401);
    // Health routes are open.
    for path in ["/healthz", "/readyz"] {
        let (status, _) = node.send(node.anonymous(Method::GET, path)).await;
        assert_eq!(status, 200, "{path}");
    }

    // Without a read token, collections are open.
    let dir2 = tempfile::tempdir().unwrap();
    let open = NodeConfig::new(dir2.path()).start().await;
    let (status, _) = open
        .send(open.anonymous(Method::GET, "/api/v1/collections"))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_public_address_without_an_admin_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = NodeConfig::new(dir.path())
        .without_env("GLEANER_ADMIN_TOKEN")
        .env("GLEANER_HTTP_ADDR", "0.0.0.0:0")
        .command()
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("GLEANER_ADMIN_TOKEN"), "{stderr}");

    // A bad setting is named too.
    let output = NodeConfig::new(dir.path())
        .env("GLEANER_ALLOW_PRIVATE_TARGETS", "10.0.0.0/99")
        .command()
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("GLEANER_ALLOW_PRIVATE_TARGETS"), "{stderr}");
}

#[tokio::test]
async fn sigterm_stops_the_node_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeConfig::new(dir.path()).start().await;
    node.create_source(&catalogue_spec(
        "books",
        "http://127.0.0.2:1/catalogue/page-1.html",
    ))
    .await;
    assert!(
        node.terminate(),
        "the node did not exit 0 on SIGTERM: {:?}",
        node.logs()
    );
    assert!(node.logs().iter().any(|l| l.contains("\"stopped\"")));
}

/// `GET /api/v1/openapi.json`, generated from the handlers, names every route
/// the node registers and passes `openapi-spec-validator` (from PyPI; `.ci/run`
/// installs it).
#[tokio::test]
async fn the_openapi_document_covers_every_route_and_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let (status, doc) = node
        .send(node.anonymous(Method::GET, "/api/v1/openapi.json"))
        .await;
    assert_eq!(status, 200, "{doc}");
    let paths: std::collections::BTreeSet<String> =
        doc["paths"].as_object().unwrap().keys().cloned().collect();
    // Every route registered in src/http/mod.rs, read from its source.
    let routes: std::collections::BTreeSet<String> = include_str!("../../src/http/mod.rs")
        .split("web::resource(\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect();
    assert!(routes.len() >= 17, "{routes:?}");
    assert_eq!(
        paths, routes,
        "the document's paths vs the registered routes"
    );

    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg("command -v openapi-spec-validator")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "`openapi-spec-validator` is not installed: pip install openapi-spec-validator \
         (.ci/run installs it)"
    );
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = std::process::Command::new("openapi-spec-validator")
        .arg(&file)
        .output()
        .expect("openapi-spec-validator runs");
    assert!(
        out.status.success(),
        "openapi-spec-validator:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The spec part of a source view: the view without its status and bookkeeping.
fn spec_of(view: &Value) -> Value {
    let mut spec = view.clone();
    for key in [
        "status",
        "version",
        "created_at",
        "updated_at",
        "managed_by",
        "file",
    ] {
        spec.as_object_mut().unwrap().remove(key);
    }
    spec
}

#[tokio::test]
async fn put_takes_back_what_get_gave_and_patch_merges() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let mut spec = catalogue_spec("edit", "http://127.0.0.2:1/catalogue/page-1.html");
    spec["enabled"] = json!(false);
    node.create_source(&spec).await;
    let got = node.source("edit").await;
    assert_eq!(got["managed_by"], "api", "{got}");

    // GET -> PUT round trip: accepted as it is, and the spec is unchanged.
    let (status, body) = node.put("/api/v1/sources/edit", &got).await;
    assert_eq!(status, 200, "{body}");
    let again = node.source("edit").await;
    assert_eq!(spec_of(&again), spec_of(&got));
    // Read-only keys are dropped; unknown ones are still refused, by name.
    let mut unknown = got.clone();
    unknown["colour"] = json!("red");
    let (status, body) = node.put("/api/v1/sources/edit", &unknown).await;
    assert_error(status, &body, 400, "invalid_request");
    assert_eq!(body["error"]["field"], "colour");
    let mut other = got.clone();
    other["id"] = json!("other");
    let (status, body) = node.put("/api/v1/sources/edit", &other).await;
    assert_error(status, &body, 400, "invalid_request");
    assert_eq!(body["error"]["field"], "id");

    let patch = |body: &Value, content_type: &str| {
        node.request(Method::PATCH, "/api/v1/sources/edit")
            .header("content-type", content_type)
            .body(body.to_string())
    };
    // The schedule only: everything else stays.
    let (status, body) = node
        .send(patch(
            &json!({"schedule": {"every_secs": 120}}),
            "application/merge-patch+json",
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["schedule"]["every_secs"], 120);
    let mut want = spec_of(&got);
    want["schedule"]["every_secs"] = json!(120);
    assert_eq!(spec_of(&body), want);
    // null removes a field; nested objects merge.
    let (status, body) = node
        .send(patch(
            &json!({"extract": {"next_page": null}, "key": null,
                    "schedule": {"every_secs": null, "cron": "*/5 * * * *"}}),
            "application/json",
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["extract"].get("next_page").is_none(), "{body}");
    assert_eq!(body["key"], json!([]));
    assert_eq!(
        body["schedule"],
        json!({"cron": "*/5 * * * *", "jitter_secs": 0})
    );
    assert_eq!(body["extract"]["fields"], got["extract"]["fields"]);
    // An invalid result is a 400 naming the field, and changes nothing.
    let (status, body) = node
        .send(patch(
            &json!({"schedule": {"cron": null, "every_secs": 0}}),
            "application/merge-patch+json",
        ))
        .await;
    assert_error(status, &body, 400, "invalid_request");
    assert_eq!(body["error"]["field"], "schedule.every_secs");
    let (status, body) = node
        .send(patch(
            &json!({"extract": {"fields": {"title": {"css": "h3 a", "colour": 1}}}}),
            "application/json",
        ))
        .await;
    assert_error(status, &body, 400, "invalid_request");
    assert_eq!(body["error"]["field"], "extract.fields.title.colour");
    let (status, body) = node
        .send(patch(&json!({"id": "other"}), "application/json"))
        .await;
    assert_error(status, &body, 400, "invalid_request");
    assert_eq!(body["error"]["field"], "id");
    assert_eq!(node.source("edit").await["schedule"]["cron"], "*/5 * * * *");
    // Other media types, non-object patches, unknown sources.
    let (status, body) = node
        .send(patch(&json!({"enabled": true}), "text/plain"))
        .await;
    assert_error(status, &body, 415, "unsupported_media_type");
    let (status, body) = node.send(patch(&json!([1]), "application/json")).await;
    assert_error(status, &body, 400, "invalid_request");
    let (status, body) = node
        .send(
            node.request(Method::PATCH, "/api/v1/sources/nope")
                .header("content-type", "application/merge-patch+json")
                .body("{}"),
        )
        .await;
    assert_error(status, &body, 404, "not_found");
}

#[tokio::test]
async fn deleting_a_collection_deletes_it_on_every_node_once_nothing_feeds_it() {
    use crate::harness::cluster::{wait_for_items, Cluster, ClusterPlan};
    use crate::harness::fixture::{page_path, page_spec, FixtureSite};
    use crate::harness::wait_until;
    use std::time::Duration;

    let site = FixtureSite::start().await;
    let cluster = Cluster::start(ClusterPlan::new(2), &[0, 1]).await;
    cluster.formed(Duration::from_secs(20)).await;
    let (a, b) = (&cluster.nodes[&0], &cluster.nodes[&1]);
    a.create_source(&page_spec("feed", &site.url(&page_path(1)), 3600))
        .await;
    wait_for_items(&cluster.all(), "books", 20, Duration::from_secs(30)).await;

    let (status, body) = a.delete("/api/v1/collections/books").await;
    assert_error(status, &body, 409, "collection_in_use");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("feed"),
        "names the source: {body}"
    );
    let (status, body) = a.delete("/api/v1/collections/nope").await;
    assert_error(status, &body, 404, "not_found");
    let (status, body) = a
        .send(a.anonymous(Method::DELETE, "/api/v1/collections/books"))
        .await;
    assert_error(status, &body, 401, "unauthorized");

    let (status, _) = a.delete("/api/v1/sources/feed").await;
    assert_eq!(status, 204);
    // The source's deletion reaches b before b's registry frees the name.
    wait_until(
        "b to see the source deleted",
        Duration::from_secs(10),
        || async {
            let (status, _) = b.get("/api/v1/sources/feed").await;
            (status == 404).then_some(())
        },
    )
    .await;
    let (status, body) = b.delete("/api/v1/collections/books").await;
    assert_eq!(status, 204, "{body}");
    // Durable before the answer, here: gone at once.
    let (status, _) = b.get("/api/v1/collections/books/items").await;
    assert_eq!(status, 404);
    for node in cluster.all() {
        wait_until(
            &format!("the collection gone on {}", node.addr),
            Duration::from_secs(10),
            || async {
                let (items, _) = node.get("/api/v1/collections/books/items").await;
                let (_, list) = node.get("/api/v1/collections").await;
                let listed = list["collections"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|c| c["name"] == "books");
                (items == 404 && !listed).then_some(())
            },
        )
        .await;
    }
    let (status, body) = a.delete("/api/v1/collections/books").await;
    assert_error(status, &body, 404, "not_found");

    // Fed again, the collection starts afresh and replicates as before: the
    // deleted items do not come back, the new ones reach every node.
    a.create_source(&page_spec("feed2", &site.url(&page_path(2)), 3600))
        .await;
    wait_for_items(&cluster.all(), "books", 20, Duration::from_secs(30)).await;
    for node in cluster.all() {
        let items = node.all_items("books").await;
        assert!(
            items.iter().all(|i| i["source"] == "feed2"),
            "nothing of the deleted collection came back on {}",
            node.addr
        );
    }
}

#[tokio::test]
async fn a_node_down_during_a_collection_delete_follows_it_and_brings_nothing_back() {
    use crate::harness::cluster::{wait_for_items, Cluster, ClusterPlan};
    use crate::harness::fixture::{page_path, page_spec, FixtureSite};
    use crate::harness::wait_until;
    use std::time::Duration;

    let site = FixtureSite::start().await;
    let mut cluster = Cluster::start(ClusterPlan::new(2), &[0, 1]).await;
    cluster.formed(Duration::from_secs(20)).await;
    cluster.nodes[&0]
        .create_source(&page_spec("feed", &site.url(&page_path(5)), 3600))
        .await;
    wait_for_items(&cluster.all(), "books", 20, Duration::from_secs(30)).await;
    assert!(cluster.terminate(1), "n1 stops cleanly");

    {
        let n0 = &cluster.nodes[&0];
        assert_eq!(n0.delete("/api/v1/sources/feed").await.0, 204);
        let (status, body) = n0.delete("/api/v1/collections/books").await;
        assert_eq!(status, 204, "{body}");
    }

    // n1 comes back with the collection on its disk: it learns the deletion
    // from n0 and deletes its copy; n0 pulls nothing back from it.
    cluster.add(1, |c| c).await;
    cluster.formed(Duration::from_secs(20)).await;
    let (n0, n1) = (&cluster.nodes[&0], &cluster.nodes[&1]);
    wait_until("n1 to delete its copy", Duration::from_secs(20), || async {
        (n1.get("/api/v1/collections/books/items").await.0 == 404).then_some(())
    })
    .await;
    let rounds = |state: &serde_json::Value| -> u64 {
        state["nodes"][0]["tree"]["children"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["kind"] == "Replicator")
            .unwrap()["stats"]["rounds"]
            .as_u64()
            .unwrap()
    };
    let before = rounds(&n0.get("/debug/state").await.1);
    wait_until(
        "two more rounds on n0 with n1 up",
        Duration::from_secs(20),
        || async { (rounds(&n0.get("/debug/state").await.1) >= before + 2).then_some(()) },
    )
    .await;
    for node in cluster.all() {
        let (status, body) = node.get("/api/v1/collections/books/items").await;
        assert_eq!(status, 404, "{} brought items back: {body}", node.addr);
    }
}
