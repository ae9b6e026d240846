//! Sources with `"render": "browser"` on the real Docker engine: a node
//! container (the image from `scripts/image.sh`) with the engine's socket
//! starts a browser worker (the variant from `scripts/image.sh --browser`,
//! Debian's Chromium inside) on the test's network, next to a fixture site
//! (`busybox httpd -vv`) whose pages build their products with JavaScript
//! from a JSON endpoint. What the tests read: the collection and the source's
//! status over the node's HTTP API, the fixture's request log, and
//! `docker inspect` of the worker.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::docker::{
    browser_image, docker, docker_try, exclusive, image, inspect, prefix, Cleanup, Network,
    NodeBox, NodeRun, Site, IMAGE,
};
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
    format!(
        r#"<!doctype html><html><head><title>app {n}</title></head><body>
<div id="list"></div><nav id="nav"></nav>
<script>
{extra_script}
fetch('products-{n}.json').then(r => r.json()).then(ps => {{
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
  if ({next} > 0) {{
    const link = document.createElement('a');
    link.className = 'next';
    link.setAttribute('href', 'page-{next}.html');
    document.getElementById('nav').appendChild(link);
  }}
  const done = document.createElement('div');
  done.id = 'ready';
  document.body.appendChild(done);
}});
</script></body></html>"#
    )
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

/// The fixture: `/app/page-1..=PAGES.html` with their JSON, a page that never
/// shows `#ready`, and one whose script also asks a metadata address, a
/// loopback port and a foreign host.
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
