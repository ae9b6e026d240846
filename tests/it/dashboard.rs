//! The debug dashboard in a real browser: headless Chromium (Debian's
//! `chromium` and `chromium-driver`, installed by `.ci/run`) driven over
//! WebDriver. The page must refuse to show data without the token, show the
//! node, its actors, sources and collections with the counters of
//! `/debug/state`, update live without a reload, show a failed source with its
//! error, and show scraped markup as text without running it. A screenshot is
//! written to `target/screenshots/dashboard.png`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::fixture::FixtureSite;
use crate::harness::{catalogue_spec, wait_until, NodeConfig, ADMIN_TOKEN};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// A chromedriver process on a free loopback port.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    async fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver is installed (Debian package chromium-driver; .ci/run installs it)",
            );
        let status = format!("http://127.0.0.1:{port}/status");
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        wait_until("chromedriver to answer", Duration::from_secs(30), || {
            let (http, status) = (http.clone(), status.clone());
            async move {
                http.get(&status)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ())
            }
        })
        .await;
        Driver { child, port }
    }

    async fn browser(&self) -> Client {
        // Two rustls providers are linked (ring, aws-lc-rs): choose one.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                         "--disable-dev-shm-usage", "--window-size=1400,1600"]
            }),
        );
        ClientBuilder::rustls()
            .unwrap()
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn text(browser: &Client, css: &str) -> Option<String> {
    browser
        .find(Locator::Css(css))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// Types a token into the page's login form and submits it.
async fn log_in(browser: &Client, token: &str) {
    let field = browser.find(Locator::Css("#token")).await.unwrap();
    field.send_keys(token).await.unwrap();
    let submit = browser
        .find(Locator::Css("#login-form button"))
        .await
        .unwrap();
    submit.click().await.unwrap();
}

async fn wait_text(
    browser: &Client,
    css: &str,
    what: &str,
    accept: impl Fn(&str) -> bool,
) -> String {
    wait_until(what, Duration::from_secs(20), || async {
        text(browser, css).await.filter(|t| accept(t))
    })
    .await
}

#[tokio::test]
async fn the_dashboard_shows_the_live_node_safely() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path())
        .env("GLEANER_FETCH_RETRIES", "0")
        .start()
        .await;
    let mut books = catalogue_spec("books", &site.url("/catalogue/page-1.html"));
    books["extract"]["next_page"]["max_pages"] = json!(2);
    node.create_source(&books).await;
    let mut broken = catalogue_spec("broken", &site.url("/fail"));
    broken["collection"] = json!("broken");
    node.create_source(&broken).await;
    let mut xss = catalogue_spec("xss", &site.url("/xss.html"));
    xss["collection"] = json!("xss");
    xss["extract"]["fields"] = json!({ "title": "h3 a", "price": ".price" });
    xss["key"] = json!([]);
    node.create_source(&xss).await;
    node.wait_for_run("books", Duration::from_secs(30), |r| r["error"].is_null())
        .await;
    node.wait_for_run("xss", Duration::from_secs(30), |r| r["error"].is_null())
        .await;

    let driver = Driver::start().await;
    let browser = driver.browser().await;
    browser.goto(&node.url("/dashboard")).await.unwrap();

    // Without the token: the login form, and no data.
    wait_until("the login form", Duration::from_secs(20), || async {
        let shown = browser
            .find(Locator::Css("#login"))
            .await
            .ok()?
            .is_displayed()
            .await
            .ok()?;
        shown.then_some(())
    })
    .await;
    let body = text(&browser, "body").await.unwrap();
    assert!(
        !body.contains("books") && !body.contains("broken"),
        "data shown without a token: {body}"
    );
    // A wrong token is refused and still shows nothing.
    log_in(&browser, "wrong").await;
    wait_text(&browser, "#login-error", "the refusal", |t| {
        t.contains("refused")
    })
    .await;
    assert!(!text(&browser, "body").await.unwrap().contains("books"));

    // With the token: the node, its actors, sources and collections.
    log_in(&browser, ADMIN_TOKEN).await;
    wait_text(&browser, "#node-name", "the node's name", |t| {
        t == "test-node"
    })
    .await;
    wait_text(
        &browser,
        "#members tr[data-member='test-node']",
        "the member row",
        |t| t.contains("up"),
    )
    .await;
    let tree = wait_text(&browser, "#trees", "the supervision tree", |t| {
        t.contains("ScraperSupervisor")
    })
    .await;
    for actor in [
        "NodeSupervisor",
        "Orchestrator",
        "CollectionSupervisor",
        "Aggregator books",
        "Endpoint books",
    ] {
        assert!(
            tree.contains(actor),
            "{actor} missing from the tree: {tree}"
        );
    }
    wait_text(&browser, "#live", "the live stream", |t| t == "live").await;

    // The counters on screen are those of /debug/state.
    let (_, state) = node.get("/debug/state").await;
    let scraper =
        find_actor(&state["nodes"][0]["tree"], "Scraper", "books").expect("a books scraper");
    let books_status = state["nodes"][0]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "books")
        .unwrap()["status"]
        .clone();
    let row = "tr[data-source='books']";
    assert_eq!(
        text(&browser, &format!("{row} .runs")).await.unwrap(),
        scraper["stats"]["runs"].to_string()
    );
    assert_eq!(
        text(&browser, &format!("{row} .items")).await.unwrap(),
        books_status["items"].to_string()
    );
    assert_eq!(
        text(&browser, "tr[data-collection='books'] .items")
            .await
            .unwrap(),
        state["nodes"][0]["collections"][0]["items"].to_string()
    );

    // Live: a run changes the counter on screen, without a reload.
    let runs_before: u64 = text(&browser, &format!("{row} .runs"))
        .await
        .unwrap()
        .parse()
        .unwrap();
    browser
        .execute("window.__no_reload = true;", vec![])
        .await
        .unwrap();
    let asked = Instant::now();
    let (status, _) = node.post("/api/v1/sources/books/run", &json!({})).await;
    assert_eq!(status, 202);
    wait_text(
        &browser,
        &format!("{row} .runs"),
        "the run counter to change on screen",
        |t| t.parse::<u64>().is_ok_and(|n| n > runs_before),
    )
    .await;
    eprintln!(
        "run asked -> counter changed on screen in {:?}",
        asked.elapsed()
    );
    let still = browser
        .execute("return window.__no_reload === true;", vec![])
        .await
        .unwrap();
    assert_eq!(still, Value::Bool(true), "the page reloaded");

    // A failing source shows failed with its error.
    wait_text(
        &browser,
        "tr[data-source='broken'] .state",
        "the failed state",
        |t| t == "failed",
    )
    .await;
    let error = text(&browser, "tr[data-source='broken'] .last-error")
        .await
        .unwrap();
    assert!(error.contains("500"), "{error}");
    // Its counts outlive the scraper actors that failed: every run was an error.
    let runs = text(&browser, "tr[data-source='broken'] .runs")
        .await
        .unwrap();
    let errors = text(&browser, "tr[data-source='broken'] .errors")
        .await
        .unwrap();
    assert!(runs.parse::<u64>().unwrap() > 1, "runs {runs}");
    assert_eq!(runs, errors);

    // Scraped markup is shown as text and runs nothing.
    browser
        .find(Locator::Css("tr[data-collection='xss']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let preview = wait_text(&browser, "#preview-rows", "the item preview", |t| {
        t.contains("onerror")
    })
    .await;
    assert!(
        preview.contains("<img src=x onerror=alert(1)>"),
        "{preview}"
    );
    assert!(preview.contains("<script>alert(2)</script>"), "{preview}");
    assert!(
        browser.get_alert_text().await.is_err(),
        "an alert opened: scraped markup ran"
    );
    let injected = browser
        .execute(
            "return document.querySelectorAll('main img, main script').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, json!(0));

    // A picture for people.
    let png = browser.screenshot().await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard.png"), png).unwrap();
    browser.close().await.unwrap();
}

fn find_actor<'a>(actor: &'a Value, kind: &str, id: &str) -> Option<&'a Value> {
    if actor["kind"] == kind && actor["id"] == id {
        return Some(actor);
    }
    actor["children"]
        .as_array()?
        .iter()
        .find_map(|c| find_actor(c, kind, id))
}

/// The source editor: a pasted spec is previewed (its warnings and items
/// shown, scraped markup as text), a bad one is refused naming the field,
/// and a saved one appears as a source.
#[tokio::test]
async fn the_editor_previews_and_saves_a_pasted_source() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    let driver = Driver::start().await;
    let browser = driver.browser().await;
    browser.goto(&node.url("/dashboard")).await.unwrap();
    wait_until("the login form", Duration::from_secs(20), || async {
        browser.find(Locator::Css("#token")).await.ok().map(|_| ())
    })
    .await;
    log_in(&browser, ADMIN_TOKEN).await;
    wait_text(&browser, "#node-name", "the node's name", |t| {
        t == "test-node"
    })
    .await;

    let spec = json!({
        "id": "pasted", "url": site.url("/xss.html"), "collection": "pasted",
        "extract": { "scope": "article.product",
                     "fields": { "title": "h3 a", "price": ".price", "missing": ".no-such" } }
    });
    let area = browser.find(Locator::Css("#editor-spec")).await.unwrap();
    area.send_keys(&spec.to_string()).await.unwrap();
    browser
        .find(Locator::Css("#editor-preview"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let items = wait_text(&browser, "#editor-result", "the previewed items", |t| {
        t.contains("onerror")
    })
    .await;
    assert!(items.contains("<img src=x onerror=alert(1)>"), "{items}");
    assert!(items.contains("<script>alert(2)</script>"), "{items}");
    let warnings = text(&browser, "#editor-warnings").await.unwrap();
    assert!(
        warnings.contains("extract.fields.missing: matched nothing"),
        "{warnings}"
    );
    assert!(
        browser.get_alert_text().await.is_err(),
        "scraped markup ran"
    );
    let injected = browser
        .execute(
            "return document.querySelectorAll('#editor img, #editor script').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, json!(0));
    // The preview stored nothing.
    let (status, _) = node.get("/api/v1/sources/pasted").await;
    assert_eq!(status, 404);

    // A bad spec is refused, naming the field.
    area.clear().await.unwrap();
    let mut bad = spec.clone();
    bad["id"] = json!("Not A Slug");
    area.send_keys(&bad.to_string()).await.unwrap();
    browser
        .find(Locator::Css("#editor-save"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&browser, "#editor-error", "the refusal", |t| {
        t.starts_with("id: ")
    })
    .await;

    // Saved: the source exists and shows in the list.
    area.clear().await.unwrap();
    area.send_keys(&spec.to_string()).await.unwrap();
    browser
        .find(Locator::Css("#editor-save"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&browser, "#editor-status", "the save", |t| {
        t == "created pasted"
    })
    .await;
    let source = node.source("pasted").await;
    assert_eq!(source["url"], site.url("/xss.html"));
    wait_text(
        &browser,
        "tr[data-source='pasted'] .id",
        "the new source's row",
        |t| t == "pasted",
    )
    .await;
    assert_eq!(
        text(&browser, "tr[data-source='pasted'] .health")
            .await
            .unwrap(),
        "ok"
    );
    // "edit" loads a stored source back into the editor.
    area.clear().await.unwrap();
    browser
        .find(Locator::Css("tr[data-source='pasted'] button.edit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let loaded = wait_until(
        "the spec in the editor",
        Duration::from_secs(20),
        || async {
            let v = browser
                .execute(
                    "return document.getElementById('editor-spec').value;",
                    vec![],
                )
                .await
                .ok()?;
            serde_json::from_str::<Value>(v.as_str()?).ok()
        },
    )
    .await;
    assert_eq!(loaded["id"], "pasted");
    assert!(loaded.get("status").is_none(), "{loaded}");
    let png = browser.screenshot().await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("editor.png"), png).unwrap();
    browser.close().await.unwrap();
}

/// The throughput charts (inline SVG drawn by the page's own script from
/// each node's samples) and the webhooks table with its last deliveries.
#[tokio::test]
async fn the_dashboard_charts_throughput_and_lists_webhooks() {
    use crate::harness::fixture::page_spec;
    use crate::harness::receiver::Receiver;
    let site = FixtureSite::start().await;
    let secret = "dashboard-webhook-secret-0123";
    let receiver = Receiver::start(secret).await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path()).start().await;
    node.create_source(&page_spec("pages", &site.url("/catalogue/page-1.html"), 1))
        .await;
    let (status, body) = node
        .post(
            "/api/v1/webhooks",
            &json!({"id": "books-hook", "url": receiver.url("/hook"), "collection": "books", "secret": secret}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // An operator's text that looks like markup is shown as text.
    let markup = "/<img src=x onerror=alert(3)>";
    let (status, body) = node
        .post(
            "/api/v1/webhooks",
            &json!({"id": "markup-hook", "url": receiver.url(markup), "collection": "books", "secret": secret}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // A few runs, and a delivery.
    wait_until("runs and a delivery", Duration::from_secs(40), || async {
        let runs = node.get("/api/v1/sources/pages/runs").await.1["runs"]
            .as_array()
            .map_or(0, Vec::len);
        (runs >= 3 && !receiver.accepted().is_empty()).then_some(())
    })
    .await;

    let driver = Driver::start().await;
    let browser = driver.browser().await;
    browser.goto(&node.url("/dashboard")).await.unwrap();
    log_in(&browser, ADMIN_TOKEN).await;
    let paths = wait_until("a drawn pages/s chart", Duration::from_secs(40), || async {
        let d = browser
            .execute(
                "return [...document.querySelectorAll(\"#charts svg.chart[data-series='pages'] path.line\")].map(p => p.getAttribute('d'));",
                vec![],
            )
            .await
            .ok()?;
        let d: Vec<String> = serde_json::from_value(d).ok()?;
        // Drawn: a move and at least one line segment.
        d.iter()
            .any(|p| p.starts_with('M') && p.contains('L'))
            .then_some(d)
    })
    .await;
    assert!(!paths.is_empty());
    for series in ["items", "errors"] {
        let n = browser
            .execute(
                &format!("return document.querySelectorAll(\"#charts svg.chart[data-series='{series}'] path.line\").length;"),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(n, json!(1), "one {series} chart for the one node");
    }
    let row = wait_text(
        &browser,
        "#webhooks tr[data-webhook='books-hook']",
        "the webhook row with a delivery",
        |t| t.contains("ok 200"),
    )
    .await;
    assert!(row.contains("test-node") && !row.contains(secret), "{row}");
    let shown = wait_text(
        &browser,
        "#webhooks tr[data-webhook='markup-hook']",
        "the webhook with markup in its URL",
        |t| t.contains("onerror"),
    )
    .await;
    assert!(shown.contains(markup), "{shown}");
    let injected = browser
        .execute(
            "return document.querySelectorAll('#webhooks img').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, json!(0));
    assert!(browser.get_alert_text().await.is_err(), "markup ran");
    let png = browser.screenshot().await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("dashboard-charts.png"), png).unwrap();
    browser.close().await.unwrap();
}
