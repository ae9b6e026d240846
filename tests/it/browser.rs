//! Sources with `"render": "browser"` on the real Docker engine: a node
//! container (the image from `scripts/image.sh`) with the engine's socket
//! starts a browser worker (the variant from `scripts/image.sh --browser`,
//! Debian's Chromium inside) on the test's network, next to a fixture site
//! (`busybox httpd -vv`) whose pages build their products with JavaScript
//! from a JSON endpoint. What the tests read: the collection and the source's
//! status over the node's HTTP API, the fixture's request log, and
//! `docker inspect` of the worker.
//!
//! Also: previews of a browser source rendered in a short-lived container,
//! the worker's processes after a browser crash (no zombies, the next page
//! rendered), and a page's requests held in flight under its host's
//! `max_in_flight`, measured at the site (a CGI script that logs when it
//! opens and closes).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::docker::{
    browser_image, docker, docker_try, exclusive, image, inspect, prefix, Cleanup, Network,
    NodeBox, NodeRun, Site, IMAGE,
};
use crate::harness::node::{Api, ADMIN_TOKEN};
use crate::harness::wait_until;

const WITHIN: Duration = Duration::from_secs(120);
/// Products on each fixture page.
const PER_PAGE: usize = 20;
/// Pages of the paginated fixture.
const PAGES: u32 = 10;

/// Page `n` of `pages`: an empty list that a script fills from
/// `products-n.json`, then adds the link to the next page and `#ready`.
fn app_page(n: u32, pages: u32, extra_script: &str) -> String {
    let next = if n < pages { n + 1 } else { 0 };
    // The same page bench/browser.sh serves.
    include_str!("../fixtures/rendered-page.html")
        .replace("__EXTRA_SCRIPT__", extra_script)
        .replace("__NEXT__", &next.to_string())
        .replace("__N__", &n.to_string())
}

fn products(n: u32) -> String {
    let items: Vec<Value> = (1..=PER_PAGE)
        .map(|i| {
            json!({
                "title": format!("Rendered {n}-{i}"),
                "price": format!("£{}.{:02}", n * 10 + i as u32, i),
                "url": format!("/app/item-{n}-{i}.html"),
            })
        })
        .collect();
    Value::Array(items).to_string()
}

/// Slow requests the burst page makes at once.
const BURST: u32 = 6;
/// How long the site takes to answer one of them.
const SLOW_SECS: &str = "0.4";

/// A page whose script asks `/cgi-bin/slow` [`BURST`] times at once, then
/// builds the products of `products-1.json` and shows `#ready`.
fn burst_page() -> String {
    format!(
        r#"<!doctype html><html><head><title>burst</title></head><body>
<div id="list"></div>
<script>
const slow = [];
for (let i = 1; i <= {BURST}; i++) slow.push(fetch('/cgi-bin/slow?' + i).then(r => r.text()));
Promise.all(slow).then(() => fetch('products-1.json')).then(r => r.json()).then(ps => {{
  const list = document.getElementById('list');
  for (const p of ps) {{
    const a = document.createElement('article');
    a.className = 'product';
    a.innerHTML = '<h3><a></a></h3><p class="price"></p>';
    a.querySelector('a').textContent = p.title;
    a.querySelector('a').setAttribute('href', p.url);
    a.querySelector('.price').textContent = p.price;
    list.appendChild(a);
  }}
  const done = document.createElement('div');
  done.id = 'ready';
  document.body.appendChild(done);
}});
</script></body></html>"#
    )
}

/// The CGI script behind `/cgi-bin/slow`: it logs when it opens and closes
/// (nanoseconds) in the site's `/tmp/spans`, and answers after [`SLOW_SECS`].
fn slow_cgi() -> String {
    format!(
        "#!/bin/sh\necho \"open $(date +%s%N)\" >> /tmp/spans\nsleep {SLOW_SECS}\n\
         echo \"close $(date +%s%N)\" >> /tmp/spans\n\
         printf 'Content-Type: text/plain\\r\\n\\r\\nok\\n'\n"
    )
}

/// The fixture: `/app/page-1..=PAGES.html` with their JSON, a page that never
/// shows `#ready`, one whose script also asks a metadata address, a
/// loopback port and a foreign host, and the burst page with its slow CGI.
fn files() -> Vec<(String, String)> {
    let mut f = Vec::new();
    for n in 1..=PAGES {
        f.push((format!("app/page-{n}.html"), app_page(n, PAGES, "")));
        f.push((format!("app/products-{n}.json"), products(n)));
    }
    f.push((
        "app/never.html".into(),
        "<!doctype html><html><body><p>loading forever</p><script>setInterval(() => \
         document.body.append('.'), 200)</script></body></html>"
            .into(),
    ));
    let probe = "fetch('http://169.254.169.254/latest/meta-data/').catch(() => {});\n\
                 fetch('http://127.0.0.1:9/secret').catch(() => {});\n\
                 new Image().src = 'http://evil.example/pixel.gif';";
    f.push(("app/probe.html".into(), app_page(1, 1, probe)));
    f.push(("app/burst.html".into(), burst_page()));
    f.push(("cgi-bin/slow".into(), slow_cgi()));
    f
}

struct Lab {
    prefix: String,
    network: Network,
    site: Site,
    made: Cleanup,
}

impl Lab {
    fn new(name: &str) -> Lab {
        image();
        browser_image();
        let prefix = prefix(&format!("{name}-"));
        let mut made = Cleanup::default();
        let network = Network::create(&mut made, &format!("{prefix}net"));
        made.sweep = vec![
            format!("network={}", network.name),
            format!("name={prefix}"),
        ];
        let site = Site::serve(&made, &format!("{prefix}site"), &network, &files());
        Lab {
            prefix,
            network,
            site,
            made,
        }
    }

    /// One node with the engine's socket, naming both worker images.
    async fn node(&self) -> NodeBox {
        let name = format!("{}n0", self.prefix);
        let options: Vec<String> = [
            "--user",
            "0",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-e",
            &format!("GLEANER_CLUSTER_ADVERTISE={name}"),
            "-e",
            &format!("GLEANER_WORKER_IMAGE={IMAGE}"),
            "-e",
            &format!("GLEANER_BROWSER_IMAGE={}", browser_image()),
            "-e",
            &format!("GLEANER_WORKER_NETWORK={}", self.network.name),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let node = NodeRun {
            container: &name,
            name: "n0",
            network: &self.network,
            seeds: "",
            options: &options,
        }
        .start(&self.made, WITHIN)
        .await;
        node.wait_ready(WITHIN).await;
        node
    }

    fn spec(&self, id: &str, path: &str, max_pages: u32) -> Value {
        json!({
            "id": id,
            "url": self.site.at(path),
            "collection": id,
            "schedule": { "every_secs": 3600 },
            "isolated": true,
            "render": "browser",
            "extract": {
                "scope": "article.product",
                "fields": {
                    "title": "h3 a",
                    "price": { "css": ".price", "type": "number" },
                    "url": { "css": "h3 a", "attr": "href", "type": "url" }
                },
                "next_page": { "css": "a.next", "max_pages": max_pages },
                "wait_for": "#ready"
            },
            "key": ["url"]
        })
    }

    /// Requests for `path` in the fixture's log.
    fn hits(&self, path: &str) -> usize {
        self.site.hits().iter().filter(|h| h.path == path).count()
    }
}

async fn source(node: &NodeBox, id: &str) -> Option<Value> {
    let (s, v) = node.try_get(&format!("/api/v1/sources/{id}")).await?;
    (s == 200).then_some(v)
}

async fn items(node: &NodeBox, collection: &str) -> u64 {
    match node.try_get("/api/v1/collections").await {
        Some((200, v)) => v["collections"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == collection))
            .and_then(|c| c["items"].as_u64())
            .unwrap_or(0),
        _ => 0,
    }
}

/// The source's last run, once it has one.
async fn last_run(node: &NodeBox, id: &str) -> Value {
    wait_until(&format!("a run of {id}"), WITHIN, || async {
        let s = source(node, id).await?;
        let run = &s["status"]["last_run"];
        run.is_object().then(|| run.clone())
    })
    .await
}

/// The running worker container of a source.
async fn worker_of(node: &NodeBox, id: &str) -> String {
    wait_until(&format!("a running worker for {id}"), WITHIN, || async {
        let s = source(node, id).await?;
        let c = &s["status"]["container"];
        (c["state"] == "running").then(|| c["id"].as_str().unwrap().to_owned())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_page_built_by_javascript_yields_its_items_from_a_hardened_browser_worker() {
    let _one = exclusive().await;
    let lab = Lab::new("br");
    let n0 = lab.node().await;

    // A browser source must be isolated.
    let mut inline = lab.spec("inline", "/app/page-1.html", 1);
    inline["isolated"] = false.into();
    let (status, body) = n0.post("/api/v1/sources", &inline).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "render", "{body}");

    let posted = Instant::now();
    let (status, body) = n0
        .post("/api/v1/sources", &lab.spec("one", "/app/page-1.html", 1))
        .await;
    assert_eq!(status, 201, "{body}");
    wait_until("the 20 rendered products", WITHIN, || async {
        (items(&n0, "one").await == PER_PAGE as u64).then_some(())
    })
    .await;
    eprintln!(
        "browser worker cold start: POST to {PER_PAGE} rendered items in {} ms",
        posted.elapsed().as_millis()
    );
    // The items came from the DOM the script built (from the JSON endpoint).
    let (_, page) = n0.get("/api/v1/collections/one/items?limit=100").await;
    let titles: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["data"]["title"].as_str())
        .collect();
    assert!(titles.contains(&"Rendered 1-7"), "{page}");
    assert!(lab.hits("/app/products-1.json") >= 1);
    let run = last_run(&n0, "one").await;
    assert_eq!(run["items"], PER_PAGE, "{run}");
    assert!(run["error"].is_null(), "{run}");

    // The browser worker keeps the worker's hardening, with an init process.
    let container = worker_of(&n0, "one").await;
    let c = inspect(&container).unwrap();
    let host = &c["HostConfig"];
    assert_eq!(c["Config"]["Image"], browser_image());
    assert_eq!(c["Config"]["Labels"]["org.gleaner.render"], "browser");
    assert_eq!(host["ReadonlyRootfs"], true);
    assert_eq!(host["CapDrop"], json!(["ALL"]));
    assert!(host["SecurityOpt"]
        .to_string()
        .contains("no-new-privileges"));
    assert_eq!(host["Init"], true);
    assert!(host["Memory"].as_i64().unwrap() > 0);
    assert_eq!(host["MemorySwap"], host["Memory"]);
    assert!(host["PidsLimit"].as_i64().unwrap() > 0);
    assert!(!c["Mounts"].to_string().contains("docker.sock"), "{c}");
    let user = c["Config"]["User"].as_str().unwrap_or_default();
    assert!(
        !user.is_empty() && user != "root" && user != "0",
        "user {user:?}"
    );
    // Its health probe (the health file) turns it healthy.
    wait_until("the browser worker healthy", WITHIN, || async {
        let state = inspect(&container).ok()?;
        (state["State"]["Health"]["Status"] == "healthy").then_some(())
    })
    .await;
    if let Ok(stats) = docker_try(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.MemUsage}} {{.PIDs}}",
        &container,
    ]) {
        eprintln!("browser worker after one page: memory and pids {stats}");
    }
    assert_eq!(n0.delete("/api/v1/sources/one").await.0, 204);

    // Pagination follows the links the scripts wrote.
    let (status, body) = n0
        .post(
            "/api/v1/sources",
            &lab.spec("paged", "/app/page-1.html", PAGES),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    wait_until("every rendered page's items", WITHIN, || async {
        (items(&n0, "paged").await == PER_PAGE as u64 * u64::from(PAGES)).then_some(())
    })
    .await;
    let run = last_run(&n0, "paged").await;
    assert_eq!(run["pages"], PAGES, "{run}");
    let ms = run["duration_ms"].as_u64().unwrap().max(1);
    eprintln!(
        "one browser worker: {PAGES} pages in {ms} ms, {:.2} rendered pages/s",
        f64::from(PAGES) * 1000.0 / ms as f64
    );
    let container = worker_of(&n0, "paged").await;
    if let Ok(stats) = docker_try(&[
        "stats",
        "--no-stream",
        "--format",
        "{{.MemUsage}} {{.PIDs}}",
        &container,
    ]) {
        eprintln!("browser worker after {PAGES} pages: memory and pids {stats}");
    }
    assert_eq!(n0.delete("/api/v1/sources/paged").await.0, 204);
    wait_until("no worker left", WITHIN, || async {
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("network={}", lab.network.name),
            "--filter",
            "label=org.gleaner.role=worker",
        ])
        .is_empty()
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_selector_that_never_appears_times_out_and_private_requests_are_blocked() {
    let _one = exclusive().await;
    let lab = Lab::new("brx");
    let n0 = lab.node().await;

    // wait_for never satisfied: a clear timeout in the source's status.
    let mut never = lab.spec("never", "/app/never.html", 1);
    never["extract"]["wait_timeout_ms"] = 1500.into();
    let (status, body) = n0.post("/api/v1/sources", &never).await;
    assert_eq!(status, 201, "{body}");
    let run = wait_until("the timeout in the status", WITHIN, || async {
        let s = source(&n0, "never").await?;
        let run = &s["status"]["last_run"];
        run["error"].is_string().then(|| run.clone())
    })
    .await;
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("extract.wait_for '#ready' did not appear within 1500 ms"),
        "{run}"
    );
    assert_eq!(run["code"], "render_timeout", "{run}");
    assert_eq!(items(&n0, "never").await, 0);
    assert_eq!(n0.delete("/api/v1/sources/never").await.0, 204);

    // A page whose script asks a metadata address, a loopback port (both
    // in allow_hosts, so only the address guard stands in the way) and a
    // foreign host: all three blocked and recorded; the page still renders.
    let mut probe = lab.spec("probe", "/app/probe.html", 1);
    probe["extract"]["allow_hosts"] = json!(["169.254.169.254", "127.0.0.1:9"]);
    let (status, body) = n0.post("/api/v1/sources", &probe).await;
    assert_eq!(status, 201, "{body}");
    wait_until("the probe page's items", WITHIN, || async {
        (items(&n0, "probe").await == PER_PAGE as u64).then_some(())
    })
    .await;
    let run = last_run(&n0, "probe").await;
    let sample = run["blocked_sample"].to_string();
    assert!(run["blocked"].as_u64().unwrap_or(0) >= 3, "{run}");
    assert!(sample.contains("169.254.169.254"), "{run}");
    assert!(sample.contains("127.0.0.1:9"), "{run}");
    assert!(sample.contains("not a public address"), "{run}");
    assert!(sample.contains("evil.example"), "{run}");
    assert!(sample.contains("extract.allow_hosts"), "{run}");
    assert_eq!(n0.delete("/api/v1/sources/probe").await.0, 204);
}

/// A client of the node with room for a preview in a container (its start,
/// Chromium's, the pages).
fn patient(node: &NodeBox) -> Api {
    Api::new(
        &node.addr(),
        Some(ADMIN_TOKEN),
        Some(Duration::from_secs(150)),
    )
}

/// Preview containers (running or not) on the lab's network.
fn previews_left(lab: &Lab) -> String {
    docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("network={}", lab.network.name),
        "--filter",
        "label=org.gleaner.role=preview",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_browser_source_previews_its_rendered_items_from_a_short_lived_container() {
    let _one = exclusive().await;
    let lab = Lab::new("brp");
    let n0 = lab.node().await;
    let api = patient(&n0);

    // An unsaved spec: the 20 products the script builds, from a container.
    let mut spec = lab.spec("pv", "/app/page-1.html", PAGES);
    spec.as_object_mut().unwrap().remove("id");
    spec.as_object_mut().unwrap().remove("collection");
    let mut latencies = Vec::new();
    for _ in 0..3 {
        let clock = Instant::now();
        let (status, body) = api.post("/api/v1/preview", &spec).await;
        latencies.push(clock.elapsed().as_millis() as u64);
        assert_eq!(status, 200, "{body}");
        let page = &body["pages"][0];
        assert_eq!(body["pages"].as_array().unwrap().len(), 1, "{body}");
        assert_eq!(page["items"].as_array().unwrap().len(), PER_PAGE, "{body}");
        assert_eq!(page["status"], 200, "{body}");
        assert!(page["elapsed_ms"].as_u64().is_some(), "{body}");
        assert!(
            page["next_page"]
                .as_str()
                .unwrap()
                .ends_with("/app/page-2.html"),
            "{body}"
        );
        let titles = page["items"].to_string();
        assert!(titles.contains("Rendered 1-7"), "{body}");
        assert!(body["warnings"].is_array(), "{body}");
    }
    latencies.sort_unstable();
    eprintln!(
        "browser preview (POST /api/v1/preview, 1 page, container + Chromium cold): \
         median {} ms of {latencies:?}",
        latencies[1]
    );

    // Two pages: the second page's link was written by a script.
    let (status, body) = api.post("/api/v1/preview?pages=2", &spec).await;
    assert_eq!(status, 200, "{body}");
    let pages = body["pages"].as_array().unwrap();
    assert_eq!(pages.len(), 2, "{body}");
    assert!(pages[1]["url"]
        .as_str()
        .unwrap()
        .ends_with("/app/page-2.html"));
    assert_eq!(
        pages[1]["items"].as_array().unwrap().len(),
        PER_PAGE,
        "{body}"
    );

    // A selector that never shows: the page's error, in bounded time.
    let mut never = lab.spec("never", "/app/never.html", 1);
    never["extract"]["wait_timeout_ms"] = 1500.into();
    let (status, body) = api.post("/api/v1/preview", &never).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["pages"][0]["error"]["code"], "render_timeout",
        "{body}"
    );
    assert!(body["pages"][0]["items"].as_array().unwrap().is_empty());

    // A stored (disabled) source previews the same way.
    let mut stored = lab.spec("stored", "/app/page-1.html", 1);
    stored["enabled"] = false.into();
    let (status, body) = n0.post("/api/v1/sources", &stored).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api.post("/api/v1/sources/stored/preview", &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["pages"][0]["items"].as_array().unwrap().len(),
        PER_PAGE,
        "{body}"
    );

    // Nothing stored, and no preview container left.
    assert_eq!(items(&n0, "stored").await, 0);
    assert_eq!(items(&n0, "preview").await, 0);
    assert_eq!(previews_left(&lab), "");
    assert!(lab.hits("/app/products-1.json") >= 5);
}

/// One process of a container, from its `/proc/PID/stat`.
#[derive(Debug)]
struct Proc {
    pid: u32,
    comm: String,
    state: String,
    ppid: u32,
}

/// The processes of a container, read from `/proc` inside it.
fn processes(container: &str) -> Vec<Proc> {
    let out = docker_try(&[
        "exec",
        container,
        "bash",
        "-c",
        "cat /proc/[0-9]*/stat 2>/dev/null; true",
    ])
    .unwrap_or_default();
    out.lines()
        .filter_map(|l| {
            let (open, close) = (l.find('(')?, l.rfind(')')?);
            let mut rest = l[close + 1..].split_whitespace();
            Some(Proc {
                pid: l[..open].trim().parse().ok()?,
                comm: l[open + 1..close].to_owned(),
                state: rest.next()?.to_owned(),
                ppid: rest.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// The browser's main process: a Chromium process whose parent is gleaner.
fn browser_process(procs: &[Proc]) -> Option<u32> {
    let gleaner = procs.iter().find(|p| p.comm == "gleaner")?.pid;
    procs
        .iter()
        .find(|p| p.ppid == gleaner && p.comm == "chromium" && p.state != "Z")
        .map(|p| p.pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_browser_is_started_anew_and_leaves_no_zombie() {
    let _one = exclusive().await;
    let lab = Lab::new("brz");
    let n0 = lab.node().await;
    let mut spec = lab.spec("z", "/app/page-1.html", 1);
    spec["schedule"] = json!({ "every_secs": 2 });
    let (status, body) = n0.post("/api/v1/sources", &spec).await;
    assert_eq!(status, 201, "{body}");
    wait_until("the rendered products", WITHIN, || async {
        (items(&n0, "z").await == PER_PAGE as u64).then_some(())
    })
    .await;
    let container = worker_of(&n0, "z").await;
    // PID 1 is the engine's init, which reaps what Chromium orphans.
    let procs = processes(&container);
    let init = procs.iter().find(|p| p.pid == 1).expect("a PID 1");
    assert_eq!(init.comm, "docker-init", "{procs:?}");
    let first = wait_until("the browser's process", WITHIN, || async {
        browser_process(&processes(&container))
    })
    .await;

    // A crash: the browser's main process killed from outside.
    docker(&[
        "exec",
        &container,
        "bash",
        "-c",
        &format!("kill -9 {first}"),
    ]);
    let killed_at = chrono::Utc::now();

    // A later run renders again (in a new browser) and stores the page.
    let run = wait_until("a good run after the crash", WITHIN, || async {
        let s = source(&n0, "z").await?;
        let run = &s["status"]["last_run"];
        let started = chrono::DateTime::parse_from_rfc3339(run["started_at"].as_str()?).ok()?;
        (started > killed_at && run["error"].is_null() && run["pages"] == 1).then(|| run.clone())
    })
    .await;
    eprintln!("after the crash: {run}");
    let second = wait_until("a new browser process", WITHIN, || async {
        browser_process(&processes(&container)).filter(|p| *p != first)
    })
    .await;
    assert_ne!(first, second);

    // No zombie outlives the restart: Chromium's helpers were reaped.
    wait_until(
        "no zombie in the worker",
        Duration::from_secs(30),
        || async {
            let procs = processes(&container);
            let zombies: Vec<&Proc> = procs.iter().filter(|p| p.state == "Z").collect();
            if !zombies.is_empty() {
                eprintln!("zombies for now: {zombies:?}");
            }
            (!procs.is_empty() && zombies.is_empty()).then_some(())
        },
    )
    .await;
    assert_eq!(items(&n0, "z").await, PER_PAGE as u64);
    assert_eq!(n0.delete("/api/v1/sources/z").await.0, 204);
}

/// The most `/cgi-bin/slow` requests open at once at the site, and how
/// many there were, from the script's own log.
fn slow_spans(site: &Site) -> (usize, usize) {
    let log = docker_try(&["exec", &site.container, "cat", "/tmp/spans"]).unwrap_or_default();
    let mut edges: Vec<(u128, i32)> = log
        .lines()
        .filter_map(|l| {
            let (what, at) = l.split_once(' ')?;
            let at: u128 = at.trim().parse().ok()?;
            Some((at, if what == "open" { 1 } else { -1 }))
        })
        .collect();
    let opened = edges.iter().filter(|(_, d)| *d == 1).count();
    // A close and an open at the same instant do not overlap.
    edges.sort_unstable();
    let (mut open, mut most) = (0i32, 0i32);
    for (_, d) in edges {
        open += d;
        most = most.max(open);
    }
    (most as usize, opened)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pages_requests_stay_within_its_hosts_max_in_flight() {
    let _one = exclusive().await;
    let lab = Lab::new("brf");
    let n0 = lab.node().await;
    let host = format!("{}:8000", lab.site.container);
    let (status, body) = n0
        .put(
            &format!("/api/v1/hosts/{host}"),
            &json!({"max_in_flight": 1, "min_delay_ms": 0}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut spec = lab.spec("burst", "/app/burst.html", 1);
    spec["extract"]["wait_timeout_ms"] = 30_000.into();
    let (status, body) = n0.post("/api/v1/sources", &spec).await;
    assert_eq!(status, 201, "{body}");
    wait_until("the burst page's products", WITHIN, || async {
        (items(&n0, "burst").await == PER_PAGE as u64).then_some(())
    })
    .await;
    let (most, opened) = slow_spans(&lab.site);
    let run = last_run(&n0, "burst").await;
    eprintln!(
        "{opened} slow requests of a rendered page, max_in_flight 1: at most {most} open at \
         once at the site; the run took {} ms",
        run["duration_ms"]
    );
    assert!(opened >= BURST as usize, "{opened} slow requests seen");
    assert_eq!(most, 1, "{most} of the page's requests were open at once");
    // The permits came from the host's owner (the node, which holds the
    // policy), and every one went back to it when its request ended.
    let state = wait_until("the host's permits given back", WITHIN, || async {
        let (status, state) = n0.get(&format!("/api/v1/hosts/{host}")).await;
        (status == 200 && state["in_flight"] == 0).then_some(state)
    })
    .await;
    let granted = state["requests"].as_u64().unwrap_or(0);
    assert!(
        granted > u64::from(BURST),
        "the owner granted {granted} permits: {state}"
    );
    assert_eq!(n0.delete("/api/v1/sources/burst").await.0, 204);
}
