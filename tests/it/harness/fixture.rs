//! A real local web site for the tests, served by axum on 127.0.0.2 (the
//! address the test nodes are allowed to fetch), plus a *canary* listener on
//! 127.0.0.1 that only counts what reaches it: a node must never reach it.
//!
//! Routes: a 20-page catalogue, any number of single catalogue pages, slow
//! pages that log each request's start and end, a 3-page cycle, a paginated JSON API, a page
//! that changes on demand, a two-page shop whose products link to detail pages
//! (one of them failing), a page whose markup can be "redesigned", failures (always, or for a while), a page of markup-looking text, and
//! hostile responses (gzip bomb, deep nesting, huge and endless bodies,
//! redirects to the metadata address, to loopback, and to itself).

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// Pages of the catalogue, and items on each.
pub const CATALOGUE_PAGES: u32 = 20;
pub const ITEMS_PER_PAGE: u32 = 20;

struct Site {
    /// Every request's path and query, with when it arrived.
    log: Mutex<Vec<(Instant, String)>>,
    revision: AtomicU32,
    /// Pages served under /growing/, each with items never seen before.
    grown: AtomicU32,
    /// /flaky.html answers 500 until then.
    flaky_until: Mutex<Instant>,
    canary_hits: AtomicUsize,
    canary: OnceLock<SocketAddr>,
    /// Every request in full (method, headers, body), for the politeness tests.
    requests: Mutex<Vec<Recorded>>,
    /// What /robots.txt answers: status and body (404 by default).
    robots: Mutex<(u16, String)>,
    /// The next requests under /catalogue/ answer this status with this
    /// `Retry-After`, as many times as the count says.
    throttle: Mutex<Option<(u16, String, u32)>>,
    /// /redesign.html marks its products `article.item` instead of
    /// `article.product`.
    redesigned: std::sync::atomic::AtomicBool,
    /// How long each /slow/ page takes to answer, in ms.
    slow_ms: std::sync::atomic::AtomicU64,
    /// Each /slow/ request's path, when its handler started and when it ended.
    spans: Mutex<Vec<Span>>,
}

/// One request to a /slow/ page as the site saw it: it started (the
/// handler ran) at `start` and was answered at `end`.
#[derive(Debug, Clone)]
pub struct Span {
    pub path: String,
    pub start: Instant,
    pub end: Instant,
}

/// One request as the site saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The status it was answered with by the throttle (None: a normal answer).
    pub throttled: Option<u16>,
}

/// Clones share the site (its state and listeners).
#[derive(Clone)]
pub struct FixtureSite {
    addr: SocketAddr,
    canary: SocketAddr,
    site: Arc<Site>,
}

impl FixtureSite {
    pub async fn start() -> FixtureSite {
        let site = Arc::new(Site {
            log: Mutex::new(Vec::new()),
            revision: AtomicU32::new(1),
            grown: AtomicU32::new(0),
            flaky_until: Mutex::new(Instant::now()),
            canary_hits: AtomicUsize::new(0),
            canary: OnceLock::new(),
            requests: Mutex::new(Vec::new()),
            robots: Mutex::new((404, String::new())),
            throttle: Mutex::new(None),
            redesigned: std::sync::atomic::AtomicBool::new(false),
            slow_ms: std::sync::atomic::AtomicU64::new(300),
            spans: Mutex::new(Vec::new()),
        });
        let canary_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let canary = canary_listener.local_addr().unwrap();
        site.canary.set(canary).unwrap();
        let counted = site.clone();
        let canary_app = Router::new().fallback(move || {
            let counted = counted.clone();
            async move {
                counted.canary_hits.fetch_add(1, Ordering::SeqCst);
                html(catalogue_page(1))
            }
        });
        tokio::spawn(axum::serve(canary_listener, canary_app).into_future());

        let listener = tokio::net::TcpListener::bind("127.0.0.2:0")
            .await
            .expect("127.0.0.2 is on the loopback interface");
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(route).with_state(site.clone());
        tokio::spawn(axum::serve(listener, app).into_future());
        FixtureSite { addr, canary, site }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn canary_url(&self, path: &str) -> String {
        format!("http://{}{}", self.canary, path)
    }

    pub fn canary_hits(&self) -> usize {
        self.site.canary_hits.load(Ordering::SeqCst)
    }

    /// Requests so far whose path and query start with `prefix`.
    pub fn hits(&self, prefix: &str) -> usize {
        self.site
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p)| p.starts_with(prefix))
            .count()
    }

    /// When the first request for exactly `path` after `after` arrived.
    #[allow(dead_code)] // used by benches/cluster.rs
    pub fn first_hit_after(&self, path: &str, after: Instant) -> Option<Instant> {
        self.site
            .log
            .lock()
            .unwrap()
            .iter()
            .find(|(at, p)| *at > after && p == path)
            .map(|(at, _)| *at)
    }

    /// Builds the large hostile bodies now, so that no request waits on them.
    pub fn prepare_hostile(&self) {
        gzip_bomb();
        deep_page();
    }

    /// Makes /flaky.html answer 500 for `outage` from now (a page of 5
    /// products otherwise); returns when it recovers.
    pub fn fail_for(&self, outage: Duration) -> Instant {
        let until = Instant::now() + outage;
        *self.site.flaky_until.lock().unwrap() = until;
        until
    }

    /// Every request so far whose path starts with `prefix`, in order.
    pub fn requests(&self, prefix: &str) -> Vec<Recorded> {
        self.site
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Makes /robots.txt answer `status` with `body`.
    pub fn set_robots(&self, status: u16, body: &str) {
        *self.site.robots.lock().unwrap() = (status, body.to_owned());
    }

    /// Makes the next `times` requests under /catalogue/ answer `status`
    /// with this `Retry-After` header (none when empty).
    pub fn throttle(&self, status: u16, retry_after: &str, times: u32) {
        *self.site.throttle.lock().unwrap() = Some((status, retry_after.to_owned(), times));
    }

    /// Switches /redesign.html to its new markup (products in
    /// `article.item`) or back.
    pub fn set_redesigned(&self, on: bool) {
        self.site.redesigned.store(on, Ordering::SeqCst);
    }

    /// Makes each /slow/page-N.html take `ms` to answer.
    #[allow(dead_code)] // used by the hosts tests
    pub fn set_slow_ms(&self, ms: u64) {
        self.site.slow_ms.store(ms, Ordering::SeqCst);
    }

    /// Every /slow/ request so far, by start.
    #[allow(dead_code)] // used by the hosts tests
    pub fn spans(&self) -> Vec<Span> {
        let mut spans = self.site.spans.lock().unwrap().clone();
        spans.sort_by_key(|s| s.start);
        spans
    }

    /// Changes the prices on /changing.html.
    pub fn set_revision(&self, rev: u32) {
        self.site.revision.store(rev, Ordering::SeqCst);
    }
}

/// A catalogue source on the fixture site, as a JSON spec.
pub fn catalogue_spec(id: &str, url: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "url": url,
        "collection": "books",
        "schedule": { "every_secs": 3600 },
        "extract": {
            "format": "html",
            "scope": "article.product",
            "fields": {
                "title": { "css": "h3 a", "attr": "title" },
                "price": { "css": ".price", "type": "number" },
                "url":   { "css": "h3 a", "attr": "href", "type": "url" },
                "tags":  { "css": ".tag", "all": true }
            },
            "next_page": { "css": "li.next a", "attr": "href", "max_pages": 50 }
        },
        "key": ["url"]
    })
}

/// A source that scrapes the one catalogue page at `url` (20 items of its
/// own) every `every_secs`.
pub fn page_spec(id: &str, url: &str, every_secs: u64) -> serde_json::Value {
    let mut spec = catalogue_spec(id, url);
    spec["schedule"]["every_secs"] = every_secs.into();
    spec["extract"]["next_page"]["max_pages"] = 1.into();
    spec
}

/// Products on each shop listing page; both pages link to the same
/// detail pages `/shop/detail-1.html` ..= `-4`, and detail 3 answers 500.
pub const SHOP_PRODUCTS: u32 = 4;
/// The shop detail page that fails.
pub const SHOP_FAILING_DETAIL: u32 = 3;

/// A source over the two-page shop whose `detail` field follows each
/// product's link.
pub fn shop_spec(id: &str, url: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "url": url,
        "collection": "shop",
        "schedule": { "every_secs": 3600 },
        "extract": {
            "scope": "article.product",
            "fields": {
                "title": { "css": "h3 a", "attr": "title" },
                "detail": { "css": "h3 a", "attr": "href",
                            "follow": { "fields": { "upc": "td.upc", "description": "#desc",
                                                    "stock": { "css": ".stock", "type": "number" } } } }
            },
            "next_page": { "css": "li.next a", "attr": "href", "max_pages": 5 }
        },
        "key": ["title"]
    })
}

fn shop_list(n: u32) -> String {
    let products: String = (1..=SHOP_PRODUCTS)
        .map(|k| {
            format!(
                "  <article class=\"product\"><h3><a href=\"detail-{k}.html\" title=\"Product {n}-{k}\">Product {n}-{k}</a></h3></article>\n"
            )
        })
        .collect();
    page(&products, (n == 1).then(|| "list-2.html".to_owned()))
}

fn shop_detail(k: u32) -> String {
    format!(
        "<!DOCTYPE html>\n<html><body><table><tr><th>UPC</th><td class=\"upc\">UPC-{k:04}</td></tr></table>\n\
         <div id=\"desc\"> Detail of product {k}. </div><p class=\"stock\">In stock ({k} available)</p></body></html>\n"
    )
}

/// The path of catalogue page `page`.
pub fn page_path(page: u32) -> String {
    format!("/catalogue/page-{page}.html")
}

fn html(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn product(i: u32, href: &str, price: &str) -> String {
    format!(
        "  <article class=\"product\">\n    <h3>\n      <a href=\"{href}\" title=\"Book {i}\">Book {i}</a>\n    </h3>\n    \
         <p class=\"price\">\n      £{price}  </p>\n    <span class=\"tag\">t{}</span> <span class=\"tag\">all</span>\n  </article>\n",
        i % 3
    )
}

fn page(products: &str, next: Option<String>) -> String {
    let pager = next
        .map(|n| {
            format!("  <ul class=\"pager\"><li class=\"next\"><a href=\"{n}\">next</a></li></ul>\n")
        })
        .unwrap_or_default();
    format!("<!DOCTYPE html>\n<html>\n<head><title>Catalogue</title></head>\n<body>\n{products}{pager}</body>\n</html>\n")
}

/// Page `n` of the catalogue: items (n-1)*20+1 ..= n*20.
pub fn catalogue_page(n: u32) -> String {
    let products: String = (1..=ITEMS_PER_PAGE)
        .map(|k| {
            let i = (n - 1) * ITEMS_PER_PAGE + k;
            product(i, &format!("/catalogue/item-{i}.html"), &format!("{i}.99"))
        })
        .collect();
    page(
        &products,
        (n < CATALOGUE_PAGES).then(|| format!("page-{}.html", n + 1)),
    )
}

fn numbered(path: &str, prefix: &str, suffix: &str) -> Option<u32> {
    path.strip_prefix(prefix)?
        .strip_suffix(suffix)?
        .parse()
        .ok()
}

/// 100 MiB of zeros, gzipped. Compressing 100 MiB takes seconds in a debug
/// build (long enough to trip a test's fetch timeout), so 1 MiB is deflated
/// once into byte-aligned blocks (a sync flush) that refer only to zeros; the
/// blocks repeated inflate to 1 MiB each. An empty final block, the combined
/// CRC and the length close the gzip member.
fn gzip_bomb() -> &'static [u8] {
    use flate2::{Compress, Compression, Crc, FlushCompress};
    static BOMB: OnceLock<Vec<u8>> = OnceLock::new();
    BOMB.get_or_init(|| {
        const PIECE: usize = 1024 * 1024;
        const PIECES: usize = 100;
        let zeros = vec![0u8; PIECE];
        let mut deflate = Compress::new(Compression::best(), false);
        let mut block = Vec::with_capacity(64 * 1024);
        deflate
            .compress_vec(&zeros, &mut block, FlushCompress::Sync)
            .unwrap();
        assert_eq!(deflate.total_in(), PIECE as u64);
        let mut piece_crc = Crc::new();
        piece_crc.update(&zeros);
        let mut crc = Crc::new();
        // Gzip header: magic, deflate, no flags, no mtime, no extra flags, unknown OS.
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
        for _ in 0..PIECES {
            out.extend_from_slice(&block);
            crc.combine(&piece_crc);
        }
        // A final block with fixed Huffman codes holding only end-of-block.
        out.extend_from_slice(&[0x03, 0x00]);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&crc.amount().to_le_bytes());
        out
    })
}

fn deep_page() -> &'static str {
    static DEEP: OnceLock<String> = OnceLock::new();
    DEEP.get_or_init(|| {
        format!(
            "<html><body>{}deep{}</body></html>",
            "<div>".repeat(200_000),
            "</div>".repeat(200_000)
        )
    })
}

/// 200 MB in 64 KiB chunks, generated as it is sent.
fn huge_body() -> Body {
    const CHUNK: usize = 64 * 1024;
    let chunks = (200 * 1024 * 1024) / CHUNK;
    let stream = futures_util::stream::iter(
        (0..chunks).map(|_| Ok::<_, std::convert::Infallible>(Bytes::from(vec![b'a'; CHUNK]))),
    );
    Body::from_stream(stream)
}

/// A small chunk every 100 ms, for at most ten minutes or until the client goes.
fn slow_body() -> Body {
    let stream = futures_util::stream::unfold(0u32, |n| async move {
        if n >= 6000 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from_static(b"<p>still going</p>\n")),
            n + 1,
        ))
    });
    Body::from_stream(stream)
}

fn redirect(to: String) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

async fn route(
    State(site): State<Arc<Site>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path_and_query = uri
        .path_and_query()
        .map_or(uri.path().to_owned(), |p| p.to_string());
    let now = Instant::now();
    site.log.lock().unwrap().push((now, path_and_query.clone()));
    let path = uri.path();
    let throttled = if path.starts_with("/catalogue/") {
        let mut throttle = site.throttle.lock().unwrap();
        match throttle.as_mut() {
            Some((status, retry_after, times)) if *times > 0 => {
                *times -= 1;
                Some((*status, retry_after.clone()))
            }
            _ => None,
        }
    } else {
        None
    };
    site.requests.lock().unwrap().push(Recorded {
        at: now,
        method: method.to_string(),
        path: path_and_query,
        headers,
        body,
        throttled: throttled.as_ref().map(|(s, _)| *s),
    });
    if let Some((status, retry_after)) = throttled {
        let status = StatusCode::from_u16(status).unwrap();
        if retry_after.is_empty() {
            return (status, "slow down").into_response();
        }
        return (status, [(header::RETRY_AFTER, retry_after)], "slow down").into_response();
    }
    // Catalogue pages with validators: /etag/ with an ETag (and a
    // Last-Modified), /lastmod/ with a Last-Modified only; each answers 304
    // to a request that carries its current validator.
    for (prefix, with_etag) in [("/etag/page-", true), ("/lastmod/page-", false)] {
        if let Some(n) = numbered(path, prefix, ".html") {
            if !(1..=CATALOGUE_PAGES).contains(&n) {
                return StatusCode::NOT_FOUND.into_response();
            }
            let rev = site.revision.load(Ordering::SeqCst);
            let etag = format!("\"cat-{n}-r{rev}\"");
            let modified = httpdate::fmt_http_date(
                std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + u64::from(rev)),
            );
            let request = site
                .requests
                .lock()
                .unwrap()
                .last()
                .unwrap()
                .headers
                .clone();
            let unchanged = if with_etag {
                request
                    .get(header::IF_NONE_MATCH)
                    .is_some_and(|v| v == etag.as_str())
            } else {
                request
                    .get(header::IF_MODIFIED_SINCE)
                    .is_some_and(|v| v == modified.as_str())
            };
            if unchanged {
                return StatusCode::NOT_MODIFIED.into_response();
            }
            let mut response = html(catalogue_page(n));
            let headers = response.headers_mut();
            if with_etag {
                headers.insert(header::ETAG, etag.parse().unwrap());
            }
            headers.insert(header::LAST_MODIFIED, modified.parse().unwrap());
            return response;
        }
    }
    if path == "/robots.txt" {
        let (status, text) = site.robots.lock().unwrap().clone();
        let status = StatusCode::from_u16(status).unwrap();
        return (status, [(header::CONTENT_TYPE, "text/plain")], text).into_response();
    }
    if let Some(n) = numbered(path, "/catalogue/page-", ".html") {
        if (1..=CATALOGUE_PAGES).contains(&n) {
            return html(catalogue_page(n));
        }
    }
    // One-page catalogues that take a while to answer; each request's start
    // and end are logged (the politeness tests measure gaps and overlap).
    if let Some(n) = numbered(path, "/slow/page-", ".html") {
        let ms = site.slow_ms.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let end = Instant::now();
        site.spans.lock().unwrap().push(Span {
            path: path.to_owned(),
            start: now,
            end,
        });
        return html(catalogue_page(n.clamp(1, 1000)));
    }
    // Any number of distinct one-page catalogues, for many-source runs.
    if let Some(n) = numbered(path, "/single/page-", ".html") {
        if (1..=100_000).contains(&n) {
            return html(catalogue_page(n));
        }
    }
    if let Some(n) = numbered(path, "/cycle/page-", ".html") {
        if (1..=3).contains(&n) {
            let products: String = (1..=2)
                .map(|k| {
                    let i = 1000 + n * 10 + k;
                    product(i, &format!("/cycle/item-{i}.html"), &format!("{i}.00"))
                })
                .collect();
            let next = if n == 3 {
                "page-1.html".to_string()
            } else {
                format!("page-{}.html", n + 1)
            };
            return html(page(&products, Some(next)));
        }
    }
    // Every request, 20 items never served before, with ~1 KiB titles: a
    // collection that grows until the disk fills.
    if path.starts_with("/growing/") {
        let n = site.grown.fetch_add(1, Ordering::SeqCst);
        let filler = "lorem ipsum dolor sit amet ".repeat(40);
        let products: String = (0..ITEMS_PER_PAGE)
            .map(|k| {
                let i = n * ITEMS_PER_PAGE + k;
                product(i, &format!("/growing/item-{i}.html"), &format!("{i}.00")).replace(
                    &format!("title=\"Book {i}\""),
                    &format!("title=\"Book {i} {filler}\""),
                )
            })
            .collect();
        return html(page(&products, None));
    }
    if let Some(n) = numbered(path, "/shop/list-", ".html") {
        if (1..=2).contains(&n) {
            return html(shop_list(n));
        }
    }
    if let Some(k) = numbered(path, "/shop/detail-", ".html") {
        if k == SHOP_FAILING_DETAIL {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "detail failing on purpose",
            )
                .into_response();
        }
        if (1..=SHOP_PRODUCTS).contains(&k) {
            return html(shop_detail(k));
        }
    }
    match path {
        "/redesign.html" => {
            let products: String = (1..=5)
                .map(|i| product(i, &format!("/redesign/item-{i}.html"), &format!("{i}.75")))
                .collect();
            let products = if site.redesigned.load(Ordering::SeqCst) {
                products.replace("class=\"product\"", "class=\"item\"")
            } else {
                products
            };
            html(page(&products, None))
        }
        "/api/items" => {
            let n: u32 = uri
                .query()
                .and_then(|q| q.strip_prefix("page="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if !(1..=3).contains(&n) {
                return StatusCode::NOT_FOUND.into_response();
            }
            let items: Vec<serde_json::Value> = (1..=5)
                .map(|k| {
                    let id = (n - 1) * 5 + k;
                    serde_json::json!({ "id": id, "name": format!("Item {id}"), "price": format!("{id}.50"), "link": format!("/p/{id}") })
                })
                .collect();
            let next = (n < 3).then(|| format!("/api/items?page={}", n + 1));
            axum::Json(serde_json::json!({ "data": { "items": items, "next": next } })).into_response()
        }
        "/changing.html" => {
            let rev = site.revision.load(Ordering::SeqCst);
            let products: String = (1..=3)
                .map(|i| product(i, &format!("/changing/item-{i}.html"), &format!("{i}.{rev}0")))
                .collect();
            html(page(&products, None))
        }
        "/xss.html" => html(page(
            &format!(
                "  <article class=\"product\"><h3><a href=\"/x\" title=\"x\">{}</a></h3><p class=\"price\">{}</p></article>\n",
                "&lt;img src=x onerror=alert(1)&gt;",
                "&lt;script&gt;alert(2)&lt;/script&gt;"
            ),
            None,
        )),
        "/fail" => (StatusCode::INTERNAL_SERVER_ERROR, "failing on purpose").into_response(),
        "/flaky.html" => {
            if Instant::now() < *site.flaky_until.lock().unwrap() {
                return (StatusCode::INTERNAL_SERVER_ERROR, "down for a while").into_response();
            }
            let products: String = (1..=5)
                .map(|i| product(i, &format!("/flaky/item-{i}.html"), &format!("{i}.25")))
                .collect();
            html(page(&products, None))
        }
        "/missing" => StatusCode::NOT_FOUND.into_response(),
        "/hostile/gzip-bomb" => (
            [(header::CONTENT_TYPE, "text/html"), (header::CONTENT_ENCODING, "gzip")],
            gzip_bomb(),
        )
            .into_response(),
        "/hostile/deep" => html(deep_page().to_owned()),
        "/hostile/huge" => ([(header::CONTENT_TYPE, "text/html")], huge_body()).into_response(),
        "/hostile/huge-cl" => (
            [(header::CONTENT_TYPE, "text/html".to_owned()), (header::CONTENT_LENGTH, (200u64 * 1024 * 1024).to_string())],
            huge_body(),
        )
            .into_response(),
        "/hostile/slow" => ([(header::CONTENT_TYPE, "text/html")], slow_body()).into_response(),
        "/hostile/redirect-metadata" => redirect("http://169.254.169.254/latest/meta-data/".into()),
        "/hostile/redirect-loopback" => {
            let canary = site.canary.get().expect("the canary is bound first");
            redirect(format!("http://{canary}/catalogue/page-1.html"))
        }
        "/hostile/redirect-loop" => redirect("/hostile/redirect-loop".into()),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
