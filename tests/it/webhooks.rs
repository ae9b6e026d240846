//! Webhooks, through the API and a real receiver ([`Receiver`]: a local HTTP
//! server that checks every signature): CRUD with bad input and the SSRF
//! guard, the secret never shown nor logged; deliveries signed, in order,
//! retried after 500s under the same delivery id; the event filter; and a
//! failover: three node processes, the webhook's owner killed with SIGKILL
//! while the site keeps changing, every change still delivered, any
//! duplicate only inside a delivery re-sent under its id.
//!
//! `GLEANER_WEBHOOK_LATENCY=1` also runs a measurement: the time from a change
//! on the site to the receiver, over 50 changes (median and max printed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::cluster::{index_of, Cluster, ClusterPlan};
use crate::harness::fixture::FixtureSite;
use crate::harness::receiver::{Received, Receiver};
use crate::harness::{catalogue_spec, wait_until, Node, NodeConfig};

const SECRET: &str = "webhook-secret-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(45);

fn hook(id: &str, url: &str, collection: &str) -> Value {
    json!({
        "id": id, "url": url, "collection": collection,
        "events": ["inserted", "changed"], "secret": SECRET,
    })
}

/// The source of the site's page that changes on demand (3 items).
fn changing_spec(every_secs: u64) -> Value {
    let mut spec = catalogue_spec("changing", "");
    spec["collection"] = json!("changing");
    spec["schedule"]["every_secs"] = json!(every_secs);
    spec
}

/// The highest version received per item key, over accepted deliveries.
fn delivered_versions(received: &[Received]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for r in received {
        for (key, version, _) in r.changes() {
            let v = out.entry(key).or_insert(0);
            *v = (*v).max(version);
        }
    }
    out
}

/// Each item's version as `node` serves it.
async fn served_versions(node: &Node, collection: &str) -> BTreeMap<String, u64> {
    node.all_items(collection)
        .await
        .iter()
        .map(|i| {
            (
                i["key"].as_str().unwrap().to_owned(),
                i["version"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Asserts that a (key, version) received more than once was always inside
/// the same delivery (same `X-Gleaner-Delivery`); returns how many items
/// were received again.
fn duplicates_only_by_delivery_id(received: &[Received]) -> usize {
    let mut ids: BTreeMap<(String, u64), BTreeSet<String>> = BTreeMap::new();
    let mut seen = 0;
    let mut total = 0;
    for r in received {
        for (key, version, _) in r.changes() {
            total += 1;
            ids.entry((key, version)).or_default().insert(r.id.clone());
        }
    }
    for (pair, set) in &ids {
        assert_eq!(
            set.len(),
            1,
            "{pair:?} was delivered under several delivery ids: {set:?}"
        );
        seen += 1;
    }
    total - seen
}

#[tokio::test]
async fn webhooks_are_validated_guarded_and_never_show_their_secret() {
    let receiver = Receiver::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;

    let (status, body) = node
        .post(
            "/api/v1/webhooks",
            &hook("h1", &receiver.url("/hook"), "books"),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["secret"], "***", "{body}");
    assert_eq!(body["events"], json!(["inserted", "changed"]));
    assert_eq!(body["status"]["owner"], "test-node", "{body}");
    let (status, body) = node
        .post(
            "/api/v1/webhooks",
            &hook("h1", &receiver.url("/hook"), "books"),
        )
        .await;
    assert_eq!(status, 409, "{body}");

    let loopback = format!("http://127.0.0.1:{}/hook", node.addr.port());
    let mut cases: Vec<(Value, &str)> = vec![
        (
            hook("h2", "http://169.254.169.254/latest/meta-data/", "books"),
            "url",
        ),
        (hook("h2", &loopback, "books"), "url"),
        (hook("h2", "http://localhost:9/hook", "books"), "url"),
        (hook("h2", "http://[::1]:9/hook", "books"), "url"),
        (hook("h2", "ftp://127.0.0.2/hook", "books"), "url"),
        (hook("h2", "not a url", "books"), "url"),
        (hook("H 2", &receiver.url("/"), "books"), "id"),
        (hook("h2", &receiver.url("/"), "Not A Name"), "collection"),
    ];
    let mut no_secret = hook("h2", &receiver.url("/"), "books");
    no_secret.as_object_mut().unwrap().remove("secret");
    cases.push((no_secret, "secret"));
    let mut short = hook("h2", &receiver.url("/"), "books");
    short["secret"] = json!("short");
    cases.push((short, "secret"));
    let mut bad_event = hook("h2", &receiver.url("/"), "books");
    bad_event["events"] = json!(["inserted", "deleted"]);
    cases.push((bad_event, "events[1]"));
    let mut unknown = hook("h2", &receiver.url("/"), "books");
    unknown["retries"] = json!(3);
    cases.push((unknown, "retries"));
    for (body, field) in cases {
        let (status, answer) = node.post("/api/v1/webhooks", &body).await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["error"]["field"], field, "{body}: {answer}");
    }
    let (status, answer) = node
        .send(
            node.request(reqwest::Method::POST, "/api/v1/webhooks")
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    let (status, _) = node.get("/api/v1/webhooks/h2").await;
    assert_eq!(status, 404, "nothing refused was stored");
    let (status, _) = node
        .send(node.request(reqwest::Method::PATCH, "/api/v1/webhooks/h1"))
        .await;
    assert_eq!(status, 405);
    let (status, _) = node
        .send(node.anonymous(reqwest::Method::GET, "/api/v1/webhooks"))
        .await;
    assert_eq!(status, 401, "admin only");

    // Replace: events change, a left-out secret is kept (still masked).
    let mut replaced = hook("h1", &receiver.url("/other"), "books");
    replaced.as_object_mut().unwrap().remove("secret");
    replaced["events"] = json!(["changed"]);
    let (status, body) = node.put("/api/v1/webhooks/h1", &replaced).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["events"], &body["secret"]),
        (&json!(["changed"]), &json!("***"))
    );
    replaced["id"] = json!("other");
    let (status, body) = node.put("/api/v1/webhooks/h1", &replaced).await;
    assert_eq!(
        (status, &body["error"]["field"]),
        (400, &json!("id")),
        "{body}"
    );

    // The secret is in no view and no log line.
    let (status, one) = node.get("/api/v1/webhooks/h1").await;
    assert_eq!(status, 200);
    assert_eq!(one["secret"], "***");
    assert!(one["status"]["cursor"].is_object(), "{one}");
    assert!(one["status"]["deliveries"].is_array(), "{one}");
    let (_, list) = node.get("/api/v1/webhooks").await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1, "{list}");
    let (_, debug) = node.get("/debug/state").await;
    for shown in [
        one.to_string(),
        list.to_string(),
        debug.to_string(),
        node.logs().join("\n"),
    ] {
        assert!(!shown.contains(SECRET), "the secret leaked: {shown}");
    }
    let (_, openapi) = node.get("/api/v1/openapi.json").await;
    assert!(openapi["paths"]["/api/v1/webhooks/{id}"].is_object());

    let (status, _) = node.delete("/api/v1/webhooks/h1").await;
    assert_eq!(status, 204);
    let (status, _) = node.get("/api/v1/webhooks/h1").await;
    assert_eq!(status, 404);
    let (status, _) = node.delete("/api/v1/webhooks/h1").await;
    assert_eq!(status, 404);
}

/// A metric's value in a /metrics text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn changes_are_delivered_signed_in_order_and_retried_after_errors() {
    let site = FixtureSite::start().await;
    let receiver = Receiver::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let mut spec = changing_spec(3600);
    spec["url"] = json!(site.url("/changing.html"));
    node.create_source(&spec).await;
    let (status, body) = node
        .post(
            "/api/v1/webhooks",
            &hook("h", &receiver.url("/hook"), "changing"),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // The first scrape's three inserts arrive.
    wait_until("the inserts delivered", WAIT, || async {
        let v = delivered_versions(&receiver.accepted());
        (v.len() == 3 && v.values().all(|v| *v == 1)).then_some(())
    })
    .await;

    // The debug view shows the sender in the node's tree.
    let (_, debug) = node.get("/debug/state").await;
    let webhooks = debug["nodes"][0]["tree"]["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "Webhooks")
        .cloned()
        .unwrap_or_else(|| panic!("no Webhooks actor in {debug}"));
    assert_eq!(webhooks["children"][0]["kind"], "Sender", "{webhooks}");
    assert_eq!(webhooks["children"][0]["id"], "h", "{webhooks}");

    // The receiver fails twice: the same delivery is sent again, same id and body.
    receiver.fail_next(2);
    site.set_revision(2);
    let (status, _) = node.post("/api/v1/sources/changing/run", &json!({})).await;
    assert_eq!(status, 202);
    wait_until("the changes delivered", WAIT, || async {
        let v = delivered_versions(&receiver.accepted());
        v.values().all(|v| *v == 2).then_some(())
    })
    .await;
    let all = receiver.received();
    assert!(
        all.iter().all(|r| r.signature_ok),
        "every delivery is signed"
    );
    let failed: Vec<&Received> = all.iter().filter(|r| r.answered == 500).collect();
    assert_eq!(failed.len(), 2, "{all:?}");
    let last = receiver.accepted().last().unwrap().clone();
    for f in &failed {
        assert_eq!(
            (&f.id, &f.raw),
            (&last.id, &last.raw),
            "a retry is the same delivery"
        );
    }
    assert!(
        failed[1].at - failed[0].at >= Duration::from_millis(300),
        "retries back off"
    );

    // In order: sequence numbers only grow, each change once.
    let accepted = receiver.accepted();
    let seqs: Vec<u64> = accepted
        .iter()
        .flat_map(|r| r.changes())
        .map(|c| c.2)
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(seqs.len(), 6, "3 inserts, 3 changes: {seqs:?}");
    assert_eq!(duplicates_only_by_delivery_id(&accepted), 0);
    assert_eq!(accepted[0].body["webhook"], "h");
    assert_eq!(accepted[0].body["collection"], "changing");
    assert_eq!(accepted[0].body["changes"][0]["op"], "inserted");

    // The status shows the retried delivery; the metrics count it.
    let (_, view) = node.get("/api/v1/webhooks/h").await;
    let newest = &view["status"]["deliveries"][0];
    assert_eq!(
        (
            &newest["id"],
            &newest["attempts"],
            &newest["outcome"],
            &newest["status"]
        ),
        (&json!(last.id), &json!(3), &json!("ok"), &json!(200)),
        "{view}"
    );
    assert_eq!(view["status"]["cursor"]["delivery"], 2, "{view}");
    let text = node
        .anonymous(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metric(
            &text,
            "gleaner_webhook_deliveries_total{outcome=\"failed\"}"
        ) >= 2.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "gleaner_webhook_deliveries_total{outcome=\"retried\"}"
        ) >= 2.0
    );
    assert!(metric(&text, "gleaner_webhook_deliveries_total{outcome=\"ok\"}") >= 2.0);
    assert!(
        metric(&text, "gleaner_webhook_delivery_seconds_count") >= 2.0,
        "{text}"
    );

    // Only inserts wanted (the secret left out is kept): the next changes are
    // passed over, and the watermark moves past them.
    let mut only_inserts = hook("h", &receiver.url("/hook"), "changing");
    only_inserts.as_object_mut().unwrap().remove("secret");
    only_inserts["events"] = json!(["inserted"]);
    let (status, body) = node.put("/api/v1/webhooks/h", &only_inserts).await;
    assert_eq!(status, 200, "{body}");
    site.set_revision(3);
    node.post("/api/v1/sources/changing/run", &json!({})).await;
    node.wait_for_run("changing", WAIT, |r| r["changed"] == 3)
        .await;
    let (_, feed) = node
        .get("/api/v1/collections/changing/changes?since=0")
        .await;
    let newest_seq = feed["next"].as_u64().unwrap();
    wait_until("the watermark past the unwanted changes", WAIT, || async {
        let (_, view) = node.get("/api/v1/webhooks/h").await;
        (view["status"]["cursor"]["seq"].as_u64()? >= newest_seq).then_some(())
    })
    .await;
    assert!(
        delivered_versions(&receiver.accepted())
            .values()
            .all(|v| *v == 2),
        "no change delivered to an inserts-only webhook"
    );
    assert!(!node.logs().join("\n").contains(SECRET));
}

#[tokio::test]
async fn a_killed_owners_deliveries_resume_elsewhere_without_loss() {
    let site = FixtureSite::start().await;
    let receiver = Receiver::start(SECRET).await;
    let mut cluster = Cluster::start(ClusterPlan::new(3), &[0, 1, 2]).await;
    cluster.formed(Duration::from_secs(60)).await;
    let mut spec = changing_spec(1);
    spec["url"] = json!(site.url("/changing.html"));
    cluster.nodes[&0].create_source(&spec).await;
    let source_owner = wait_until("the source's owner", WAIT, || async {
        let s = cluster.nodes[&0].source("changing").await;
        s["status"]["owner"].as_str().map(str::to_owned)
    })
    .await;

    // A webhook owned by another node than the source's, so that killing it
    // leaves the site being scraped.
    let mut chosen = None;
    for i in 0..12 {
        let id = format!("h{i}");
        let (status, body) = cluster.nodes[&0]
            .post(
                "/api/v1/webhooks",
                &hook(&id, &receiver.url("/hook"), "changing"),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let owner = body["status"]["owner"].as_str().unwrap().to_owned();
        if owner != source_owner {
            chosen = Some((id, owner));
            break;
        }
        let (status, _) = cluster.nodes[&0]
            .delete(&format!("/api/v1/webhooks/{id}"))
            .await;
        assert_eq!(status, 204);
    }
    let (id, owner) = chosen.expect("a webhook placed apart from the source");
    let victim = index_of(&owner);

    // The site keeps changing.
    let changing = Arc::new(AtomicBool::new(true));
    let revision = Arc::new(AtomicU32::new(1));
    let bumper = {
        let (changing, revision) = (changing.clone(), revision.clone());
        let site_rev = site.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(400));
            for _ in 0..600 {
                tick.tick().await;
                if !changing.load(Ordering::SeqCst) {
                    break;
                }
                let r = revision.fetch_add(1, Ordering::SeqCst) + 1;
                site_rev.set_revision(r);
            }
        })
    };

    wait_until("deliveries before the kill", WAIT, || async {
        (receiver.accepted().len() >= 4).then_some(())
    })
    .await;
    // The owner dies while the receiver holds a delivery: it was received,
    // never acknowledged to the owner.
    receiver.hold_next(1);
    let held = wait_until("a delivery held by the receiver", WAIT, || async {
        receiver.received().into_iter().find(|r| r.held)
    })
    .await;
    let before = receiver.accepted().len();
    let killed_at = Instant::now();
    cluster.kill9(victim);
    let survivors: Vec<usize> = cluster.nodes.keys().copied().collect();
    let new_owner = wait_until("a new owner among the survivors", WAIT, || async {
        let (_, view) = cluster.nodes[&survivors[0]]
            .get(&format!("/api/v1/webhooks/{id}"))
            .await;
        view["status"]["owner"]
            .as_str()
            .filter(|o| *o != owner)
            .map(str::to_owned)
    })
    .await;
    wait_until("deliveries after the kill", WAIT, || async {
        (receiver.accepted().len() >= before + 3).then_some(())
    })
    .await;
    changing.store(false, Ordering::SeqCst);
    bumper.await.unwrap();
    let last_revision = revision.load(Ordering::SeqCst);

    // Every survivor settles on the last revision, and the receiver has every
    // item at the version the survivors hold.
    let node = &cluster.nodes[&survivors[0]];
    let want = wait_until("the last revision scraped and replicated", WAIT, || async {
        let a = served_versions(node, "changing").await;
        let b = served_versions(&cluster.nodes[&survivors[1]], "changing").await;
        let price = format!("1.{last_revision}0").parse::<f64>().ok()?;
        let items = node.all_items("changing").await;
        let current = items
            .iter()
            .any(|i| i["data"]["price"].as_f64() == Some(price));
        (a == b && a.len() == 3 && current).then_some(a)
    })
    .await;
    wait_until("every change delivered", WAIT, || async {
        let got = delivered_versions(&receiver.accepted());
        want.iter()
            .all(|(k, v)| got.get(k).is_some_and(|g| g >= v))
            .then_some(())
    })
    .await;
    // The held delivery was sent again by the new owner, under its id, with
    // its body.
    let resends: Vec<Received> = wait_until("the held delivery re-sent", WAIT, || async {
        let again: Vec<Received> = receiver
            .received()
            .into_iter()
            .filter(|r| r.id == held.id && !r.held)
            .collect();
        (!again.is_empty()).then_some(again)
    })
    .await;
    assert!(resends
        .iter()
        .all(|r| r.raw == held.raw && r.at > killed_at));
    let accepted = receiver.accepted();
    assert!(receiver.received().iter().all(|r| r.signature_ok));
    let again = duplicates_only_by_delivery_id(&accepted);
    // Per item, versions never go back (a re-sent delivery may repeat one).
    let mut last: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for r in &accepted {
        for (key, version, _) in r.changes() {
            if let Some((v, by)) = last.get(&key) {
                assert!(
                    version > *v || (version == *v && *by == r.id),
                    "{key} went from v{v} to v{version}"
                );
            }
            last.insert(key, (version, r.id.clone()));
        }
    }
    let after: Vec<&Received> = accepted.iter().filter(|r| r.at > killed_at).collect();
    let resent = after
        .iter()
        .filter(|r| accepted.iter().any(|o| o.at < killed_at && o.id == r.id))
        .count();
    let last_before = accepted
        .iter()
        .filter(|r| r.at < killed_at)
        .map(|r| r.at)
        .max()
        .unwrap();
    let gap = after
        .first()
        .map(|r| r.at - last_before)
        .unwrap_or_default();
    eprintln!(
        "webhook failover: owner {owner} killed, new owner {new_owner}; {} deliveries ({} after the kill, {} re-sent under their id), {again} items received twice (all inside one delivery id), gap between deliveries across the kill {} ms, revisions {last_revision}",
        accepted.len(),
        after.len(),
        resent,
        gap.as_millis()
    );
}

#[tokio::test]
async fn delivery_latency_from_a_change_on_the_site() {
    if std::env::var("GLEANER_WEBHOOK_LATENCY").is_err() {
        eprintln!("skipped: set GLEANER_WEBHOOK_LATENCY=1 to measure");
        return;
    }
    let site = FixtureSite::start().await;
    let receiver = Receiver::start(SECRET).await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let mut spec = changing_spec(3600);
    spec["url"] = json!(site.url("/changing.html"));
    node.create_source(&spec).await;
    node.post(
        "/api/v1/webhooks",
        &hook("h", &receiver.url("/hook"), "changing"),
    )
    .await;
    wait_until("the inserts delivered", WAIT, || async {
        (delivered_versions(&receiver.accepted()).len() == 3).then_some(())
    })
    .await;
    let mut latencies = Vec::new();
    for rev in 2..52u64 {
        site.set_revision(rev as u32);
        let t0 = Instant::now();
        let (status, _) = node.post("/api/v1/sources/changing/run", &json!({})).await;
        assert_eq!(status, 202);
        let at = wait_until("the change delivered", WAIT, || async {
            receiver
                .accepted()
                .iter()
                .find(|r| r.changes().iter().any(|c| c.1 == rev))
                .map(|r| r.at)
        })
        .await;
        latencies.push(at - t0);
    }
    latencies.sort();
    eprintln!(
        "webhook latency over {} changes (site change + run request to receipt): median {} ms, max {} ms",
        latencies.len(),
        latencies[latencies.len() / 2].as_millis(),
        latencies.last().unwrap().as_millis()
    );
}
