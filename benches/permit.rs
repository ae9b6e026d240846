//! The cost of the host gate on a node that owns the host (the single-node
//! case, and every host a node owns in a cluster): a permit taken and given
//! back in process, with and without the robots.txt check (rules cached),
//! next to a whole fetch of a 31 KB catalogue page from a loopback server
//! (which takes its own permit), so the ratio is the gate's share of a fetch.
//!
//! `cargo bench --bench permit` (GLEANER_BENCH_ITERS sets the permits per
//! figure, default 200,000). docs/sources.md records one run.

use std::time::{Duration, Instant};

use axum::Router;
use gleaner::domain::host::PermitOutcome;
use gleaner::domain::HostPolicy;
use gleaner::scrape::fetch::{FetchConfig, Fetcher, TargetPolicy};

fn page() -> String {
    let item = "<article class=\"product\"><h3><a href=\"/x\" title=\"A book\">A book</a></h3><p class=\"price\">£10.00</p></article>\n";
    format!(
        "<html><body>{}</body></html>",
        item.repeat(31_000 / item.len())
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let iters: u32 = std::env::var("GLEANER_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let body = page();
    let app = Router::new().fallback(move || {
        let body = body.clone();
        async move { ([("content-type", "text/html")], body) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let fetcher = Fetcher::new(FetchConfig {
        targets: TargetPolicy::AllowAll,
        // The limit out of the way: what is measured is the gate's own work.
        hosts: HostPolicy {
            max_in_flight: 1000,
            min_delay_ms: 0,
            obey_robots: true,
        },
        ..FetchConfig::default()
    })
    .unwrap();
    let url = url::Url::parse(&format!("http://{addr}/catalogue/page-1.html")).unwrap();
    let politeness = fetcher.politeness().clone();
    let ttl = Duration::from_secs(30);

    let mut results = Vec::new();
    for robots in [false, true] {
        // Warm: the gate exists, robots.txt (a 200 here) is cached.
        politeness
            .permit(&fetcher, &url, robots, ttl)
            .await
            .unwrap()
            .release(PermitOutcome::Answered);
        let started = Instant::now();
        for _ in 0..iters {
            let permit = politeness
                .permit(&fetcher, &url, robots, ttl)
                .await
                .unwrap();
            permit.release(PermitOutcome::Answered);
        }
        let per = started.elapsed() / iters;
        results.push((
            if robots {
                "permit + release, robots.txt checked (a page)"
            } else {
                "permit + release (a retry, robots.txt itself)"
            },
            per,
        ));
    }
    let fetches = (iters / 100).max(200);
    for _ in 0..20 {
        fetcher
            .fetch_page(&url, &Default::default(), None)
            .await
            .unwrap();
    }
    let started = Instant::now();
    for _ in 0..fetches {
        fetcher
            .fetch_page(&url, &Default::default(), None)
            .await
            .unwrap();
    }
    let fetch = started.elapsed() / fetches;
    println!("| what | per call | share of a page fetch |");
    println!("|---|---:|---:|");
    for (what, per) in &results {
        println!(
            "| {what} | {:.2} µs | {:.2} % |",
            per.as_secs_f64() * 1e6,
            100.0 * per.as_secs_f64() / fetch.as_secs_f64()
        );
    }
    println!(
        "| a whole page fetch (31 KB, loopback, permit included) | {:.1} µs | 100 % |",
        fetch.as_secs_f64() * 1e6
    );
}
