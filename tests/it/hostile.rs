//! Hostile responses, each scraped through the real node: a gzip bomb,
//! 200,000 nested <div>s, a 200 MB body (with and without Content-Length), an
//! endless slow body, and redirects to the cloud metadata address and to
//! loopback with private targets not allowed. Each must end as an error on the
//! source within its limits, with nothing sent where it must not go, while the
//! node stays healthy and within its memory bound.

use std::time::{Duration, Instant};

use crate::harness::fixture::FixtureSite;
use crate::harness::{catalogue_spec, NodeConfig};
use serde_json::json;

/// The node's resident memory must stay under this after all of it (the body
/// cap is 10 MiB; several hostile runs at once stay well below this).
const RSS_BOUND_KIB: u64 = 256 * 1024;

#[tokio::test]
async fn hostile_responses_end_as_errors_within_limits() {
    let site = FixtureSite::start().await;
    site.prepare_hostile();
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path())
        .env("GLEANER_FETCH_TIMEOUT_SECS", "4")
        .env("GLEANER_FETCH_RETRIES", "0")
        .start()
        .await;
    let idle_rss = node.rss_kib();
    let cases = [
        ("bomb", "/hostile/gzip-bomb", "larger than"),
        ("deep", "/hostile/deep", "deep"),
        ("huge", "/hostile/huge", "larger than"),
        ("huge-cl", "/hostile/huge-cl", "larger than"),
        ("slow", "/hostile/slow", "timed out"),
        ("metadata", "/hostile/redirect-metadata", "169.254.169.254"),
        ("loopback", "/hostile/redirect-loopback", "127.0.0.1"),
        ("loop", "/hostile/redirect-loop", "redirect"),
    ];
    let started = Instant::now();
    for (id, path, _) in cases {
        let mut spec = catalogue_spec(id, &site.url(path));
        spec["collection"] = json!("hostile");
        node.create_source(&spec).await;
    }
    let mut peak_rss = 0;
    for (id, _, expected) in cases {
        let source = node
            .wait_for_run(id, Duration::from_secs(60), |run| run["error"].is_string())
            .await;
        peak_rss = peak_rss.max(node.rss_kib());
        let error = source["status"]["last_run"]["error"]
            .as_str()
            .unwrap()
            .to_lowercase();
        assert!(
            error.contains(expected),
            "{id}: expected '{expected}' in: {error}"
        );
        assert_eq!(source["status"]["last_run"]["items"], 0, "{id}");
        eprintln!("{id}: {error}");
    }
    eprintln!(
        "all hostile sources failed within {:?}; RSS idle {idle_rss} KiB, peak seen {peak_rss} KiB, now {} KiB",
        started.elapsed(),
        node.rss_kib()
    );
    // Nothing reached loopback outside the allowed fixture address.
    assert_eq!(
        site.canary_hits(),
        0,
        "a request reached a forbidden address"
    );
    // A direct loopback source is refused at fetch time as well.
    let mut direct = catalogue_spec("direct", &site.canary_url("/catalogue/page-1.html"));
    direct["collection"] = json!("hostile");
    node.create_source(&direct).await;
    let d = node
        .wait_for_run("direct", Duration::from_secs(30), |r| {
            r["error"].is_string()
        })
        .await;
    assert!(
        d["status"]["last_run"]["error"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "{d}"
    );
    assert_eq!(site.canary_hits(), 0);

    // The node is healthy, within bounds, and still scrapes.
    let (status, _) = node.get("/healthz").await;
    assert_eq!(status, 200);
    assert!(node.rss_kib() < RSS_BOUND_KIB, "RSS {} KiB", node.rss_kib());
    assert!(peak_rss < RSS_BOUND_KIB, "peak RSS {peak_rss} KiB");
    node.create_source(&catalogue_spec("fine", &site.url("/catalogue/page-1.html")))
        .await;
    let fine = node
        .wait_for_run("fine", Duration::from_secs(30), |r| r["error"].is_null())
        .await;
    assert_eq!(fine["status"]["last_run"]["items"], 400);
}
