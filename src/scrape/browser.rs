//! Rendering a page in headless Chromium (`render: browser`), for worker
//! containers: the page's scripts run, and the DOM they leave is the HTML that
//! [`super::extract`] reads.
//!
//! - **Crate.** chromiumoxide speaks the DevTools protocol (CDP) to a
//!   Chromium it launches, on tokio. Its Fetch domain pauses every request the
//!   page makes, which is what the guard below needs; WebDriver (fantoccini,
//!   through chromedriver) has no request interception, and headless_chrome
//!   is blocking.
//! - **Every request is intercepted** ([`decide`]): only http(s); only the
//!   page's own host and the spec's `extract.allow_hosts`; never a non-public
//!   address unless the operator's [`TargetPolicy`] allows it (an IP literal
//!   is checked as it is, a name on every address it resolves to); and the
//!   host's politeness (robots.txt, Crawl-delay, back-off) as for any fetch.
//!   A refused request fails inside the page (`BlockedByClient`) and is
//!   counted, with a few samples, in the run record.
//! - **Requests in flight.** The permit an admitted request took from its
//!   host's gate (in a worker, granted by the host's owner node over the
//!   cluster, under the policy the cluster stores for the host) is held
//!   until the request ends, as Chromium reports it on
//!   the Network domain (`loadingFinished`, `loadingFailed`), keyed by the
//!   request's network id; so a host's `max_in_flight` counts the page's
//!   requests while they are open, not only their starts. The page's own
//!   document holds the permit the pager took for it the same way. A
//!   request that never ends holds its permit at most until the page is
//!   closed, and the gate itself takes a permit back after its ttl (the
//!   page's timeout). A 429 or 503 answer gives the permit back as a
//!   throttle, which pauses the host as for any fetch.
//! - **Protocol drift.** Debian's Chromium is newer than the protocol
//!   chromiumoxide was generated from: a message the client cannot read is
//!   dropped, and logged by its CDP method (`unparsed`); a warning when it
//!   is one the guard depends on (`Fetch.requestPaused`,
//!   `Network.responseReceived`, `loadingFinished`, `loadingFailed`). Today
//!   only `Network.requestWillBeSentExtraInfo` fails, which the guard does
//!   not use.
//! - **Bounds.** One page at a time; the load and the `wait_for` selector
//!   share the spec's `wait_timeout_ms`; V8's heap is capped
//!   ([`RendererConfig::js_heap_mb`]); the browser is started anew after
//!   [`RendererConfig::pages_per_browser`] pages and after any failure
//!   (a crash included). The container's memory and pids limits bound the
//!   rest, and its init process reaps what Chromium leaves.
//! - **Flags.** `--headless --no-sandbox --disable-gpu
//!   --disable-background-networking`: Chromium's own sandbox needs user
//!   namespaces or setuid, which the hardened container (no capabilities,
//!   no-new-privileges) refuses; the container is the sandbox.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::fetch::{
    ContinueRequestParams, EventRequestPaused, FailRequestParams, HeaderEntry,
};
use chromiumoxide::cdp::browser_protocol::network::{
    ErrorReason, EventLoadingFailed, EventLoadingFinished, EventResponseReceived, ResourceType,
};
use chromiumoxide::Page;
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use url::{Host, Url};

use super::fetch::{Fetcher, TargetPolicy};
use super::politeness::Permit;
use super::robots::host_key;
use crate::domain::host::PermitOutcome;

/// Room over a page's timeout for opening and closing its tab.
const RENDER_MARGIN: Duration = Duration::from_secs(10);

/// Blocked requests kept as samples per run.
pub const BLOCKED_SAMPLES: usize = 5;

/// How the worker runs Chromium.
#[derive(Debug, Clone)]
pub struct RendererConfig {
    /// The Chromium binary (`GLEANER_CHROMIUM`; Debian's is `chromium`).
    pub chromium: PathBuf,
    /// A writable directory for the profile (the worker's tmpfs).
    pub data_dir: PathBuf,
    /// Pages rendered before the browser is started anew.
    pub pages_per_browser: u32,
    /// V8's old-space limit per renderer, in MiB.
    pub js_heap_mb: u32,
    /// Which non-public addresses pages may request.
    pub targets: TargetPolicy,
    /// The user agent, unless the source's request names one.
    pub user_agent: String,
}

/// What one page asks of the renderer.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// A CSS selector the page must show before it is read.
    pub wait_for: Option<String>,
    /// The bound on loading and waiting.
    pub timeout: Duration,
    /// Other hosts the page may request (`host`, `host:port`, `*.domain`).
    pub allow_hosts: Vec<String>,
    /// Headers sent with the page's requests to its own host.
    pub headers: Vec<(String, String)>,
    pub user_agent: Option<String>,
}

/// Why a page could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("this process has no browser: render \"browser\" runs only in a browser worker")]
    Unavailable,
    #[error("the browser did not start: {0}")]
    Launch(String),
    #[error("loading the page did not finish within {0} ms")]
    LoadTimeout(u128),
    #[error("extract.wait_for '{selector}' did not appear within {ms} ms")]
    WaitTimeout { selector: String, ms: u128 },
    #[error("the browser failed: {0}")]
    Browser(String),
}

/// Requests a rendered page was refused.
#[derive(Debug, Clone, Default)]
pub struct Blocked {
    pub count: u64,
    /// The first few, as `URL (reason)`.
    pub sample: Vec<String>,
}

impl Blocked {
    fn add(&mut self, url: &str, reason: &str) {
        self.count += 1;
        if self.sample.len() < BLOCKED_SAMPLES {
            let shown: String = url.chars().take(200).collect();
            self.sample.push(format!("{shown} ({reason})"));
        }
    }

    pub fn merge(&mut self, other: Blocked) {
        self.count += other.count;
        let room = BLOCKED_SAMPLES.saturating_sub(self.sample.len());
        self.sample.extend(other.sample.into_iter().take(room));
    }
}

/// A rendered page: its URL after navigation and its DOM as HTML.
#[derive(Debug)]
pub struct Rendered {
    pub url: Url,
    /// The HTTP status of the page's document, when Chromium reported one.
    pub status: Option<u16>,
    pub html: String,
}

/// One Chromium, started when first needed; cheap to clone.
#[derive(Clone)]
pub struct Renderer {
    config: Arc<RendererConfig>,
    slot: Arc<tokio::sync::Mutex<Option<Running>>>,
}

struct Running {
    browser: Browser,
    events: JoinHandle<()>,
    pages: u32,
}

impl Running {
    /// Closes the browser and waits for its process (its own children are
    /// the container's init's to reap).
    async fn shut(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(3), self.browser.close()).await;
        if tokio::time::timeout(Duration::from_secs(3), self.browser.wait())
            .await
            .is_err()
        {
            let _ = self.browser.kill().await;
            let _ = self.browser.wait().await;
        }
        self.events.abort();
    }
}

impl Renderer {
    pub fn new(config: RendererConfig) -> Renderer {
        Renderer {
            config: Arc::new(config),
            slot: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    async fn launch(&self) -> Result<Running, RenderError> {
        let c = &self.config;
        let profile = c
            .data_dir
            .join(format!("chromium-{}", uuid::Uuid::new_v4().simple()));
        let config = BrowserConfig::builder()
            .chrome_executable(&c.chromium)
            .user_data_dir(&profile)
            // Its singleton socket and temporary files: the root is read-only.
            .env("TMPDIR", c.data_dir.display().to_string())
            .no_sandbox()
            .enable_request_intercept()
            // Handed to the loop below, which names what did not parse.
            .surface_invalid_messages()
            .disable_cache()
            .launch_timeout(Duration::from_secs(20))
            .args([
                "--disable-gpu".to_owned(),
                "--disable-dev-shm-usage".to_owned(),
                "--disable-background-networking".to_owned(),
                "--disable-component-update".to_owned(),
                "--no-first-run".to_owned(),
                format!("--js-flags=--max-old-space-size={}", c.js_heap_mb),
            ])
            .build()
            .map_err(RenderError::Launch)?;
        let (browser, mut handler) = Browser::launch(config)
            .await
            .map_err(|e| RenderError::Launch(e.to_string()))?;
        // The handler drives the protocol; it ends when the browser is gone
        // (a connection error: the next page then starts a new browser).
        let events = tokio::spawn(async move {
            while let Some(event) = handler.next().await {
                match event {
                    Ok(()) => {}
                    Err(chromiumoxide::error::CdpError::InvalidMessage(raw, error)) => {
                        unparsed(&raw, &error);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the browser's connection ended");
                        break;
                    }
                }
            }
        });
        tracing::info!(chromium = %c.chromium.display(), "browser started");
        Ok(Running {
            browser,
            events,
            pages: 0,
        })
    }

    /// Renders `url`: loads it with every request guarded, waits for
    /// `wait_for`, and returns the DOM. `document` is the permit the caller
    /// took for the page itself: it is held until the document has loaded.
    /// The requests refused on the way are added to `blocked`, whatever the
    /// outcome.
    pub async fn render(
        &self,
        fetcher: &Fetcher,
        url: &Url,
        options: &RenderOptions,
        document: Option<Permit>,
        blocked: &mut Blocked,
    ) -> Result<Rendered, RenderError> {
        let mut slot = self.slot.lock().await;
        let stale = slot
            .as_ref()
            .is_some_and(|r| r.events.is_finished() || r.pages >= self.config.pages_per_browser);
        if stale {
            if let Some(old) = slot.take() {
                tracing::info!(
                    pages = old.pages,
                    crashed = old.events.is_finished(),
                    "restarting the browser"
                );
                old.shut().await;
            }
        }
        if slot.is_none() {
            *slot = Some(self.launch().await?);
        }
        let running = slot.as_mut().expect("launched above");
        running.pages += 1;
        let log = Arc::new(Mutex::new(Blocked::default()));
        // A browser that stopped answering (a crash the handler has not
        // seen) must not hold the run: the whole page is bounded.
        let bound = options.timeout + RENDER_MARGIN;
        let result = tokio::time::timeout(
            bound,
            self.render_in(
                &running.browser,
                fetcher,
                url,
                options,
                document,
                log.clone(),
            ),
        )
        .await
        .unwrap_or_else(|_| {
            Err(RenderError::Browser(format!(
                "the browser did not answer within {} ms",
                bound.as_millis()
            )))
        });
        blocked.merge(std::mem::take(
            &mut *log.lock().unwrap_or_else(|p| p.into_inner()),
        ));
        if let Err(e) = &result {
            // A timeout may leave the browser busy; a failure may mean it died:
            // the next page gets a new one.
            if !matches!(e, RenderError::WaitTimeout { .. }) {
                if let Some(old) = slot.take() {
                    old.shut().await;
                }
            }
        }
        result
    }

    async fn render_in(
        &self,
        browser: &Browser,
        fetcher: &Fetcher,
        url: &Url,
        options: &RenderOptions,
        document: Option<Permit>,
        log: Arc<Mutex<Blocked>>,
    ) -> Result<Rendered, RenderError> {
        let fail = |e: chromiumoxide::error::CdpError| RenderError::Browser(e.to_string());
        let page = browser.new_page("about:blank").await.map_err(fail)?;
        let agent = options
            .user_agent
            .clone()
            .unwrap_or_else(|| self.config.user_agent.clone());
        page.set_user_agent(agent).await.map_err(fail)?;
        let paused = page
            .event_listener::<EventRequestPaused>()
            .await
            .map_err(fail)?;
        let in_flight = InFlight::default();
        let ends = tokio::spawn(
            in_flight.clone().follow(
                page.event_listener::<EventResponseReceived>()
                    .await
                    .map_err(fail)?,
                page.event_listener::<EventLoadingFinished>()
                    .await
                    .map_err(fail)?,
                page.event_listener::<EventLoadingFailed>()
                    .await
                    .map_err(fail)?,
            ),
        );
        let guard = Guard {
            page: page.clone(),
            fetcher: fetcher.clone(),
            targets: self.config.targets.clone(),
            document: url.clone(),
            document_permit: Mutex::new(document),
            in_flight: in_flight.clone(),
            options: options.clone(),
            log,
        };
        let interceptor = tokio::spawn(guard.run(paused));
        let outcome = self.load_and_wait(&page, url, options).await;
        let rendered = match outcome {
            Ok(()) => {
                let html = page.content().await.map_err(fail);
                let at = page
                    .url()
                    .await
                    .ok()
                    .flatten()
                    .and_then(|u| Url::parse(&u).ok())
                    .unwrap_or_else(|| url.clone());
                let status = in_flight.document_status();
                html.map(|html| Rendered {
                    url: at,
                    status,
                    html,
                })
            }
            Err(e) => Err(e),
        };
        interceptor.abort();
        let _ = tokio::time::timeout(Duration::from_secs(3), page.close()).await;
        ends.abort();
        // Whatever is still open ends with the page.
        in_flight.close();
        rendered
    }

    /// Navigates, then polls for `wait_for`, both within `options.timeout`.
    async fn load_and_wait(
        &self,
        page: &Page,
        url: &Url,
        options: &RenderOptions,
    ) -> Result<(), RenderError> {
        let started = tokio::time::Instant::now();
        let deadline = started + options.timeout;
        let ms = options.timeout.as_millis();
        match tokio::time::timeout_at(deadline, page.goto(url.as_str())).await {
            Err(_) => return Err(RenderError::LoadTimeout(ms)),
            Ok(Err(e)) => return Err(RenderError::Browser(format!("loading {url}: {e}"))),
            Ok(Ok(_)) => {}
        }
        let Some(selector) = &options.wait_for else {
            return Ok(());
        };
        let probe = format!(
            "document.querySelector({}) !== null",
            serde_json::to_string(selector).expect("a string serialises")
        );
        loop {
            let found = tokio::time::timeout_at(deadline, page.evaluate(probe.as_str()))
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|r| r.into_value::<bool>().ok())
                .unwrap_or(false);
            if found {
                return Ok(());
            }
            if tokio::time::Instant::now() + Duration::from_millis(100) >= deadline {
                return Err(RenderError::WaitTimeout {
                    selector: selector.clone(),
                    ms,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the browser, if one runs.
    pub async fn shutdown(&self) {
        if let Some(running) = self.slot.lock().await.take() {
            running.shut().await;
        }
    }
}

/// A message from the browser that the protocol client could not read (a
/// Chromium newer than the protocol the client was generated from; with
/// Debian's Chromium, `Network.requestWillBeSentExtraInfo`, which the guard
/// does not use). It is dropped, and logged by its method: one the guard
/// depends on (a paused request, a request's answer or end) is a warning,
/// since a request then stays paused, or holds its permit until the page
/// closes.
fn unparsed(raw: &str, error: &serde_json::Error) {
    let method = serde_json::from_str::<serde_json::Value>(raw)
        .ok()
        .and_then(|v| v.get("method").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_default();
    let relied_on = [
        "Fetch.requestPaused",
        "Network.responseReceived",
        "Network.loadingFinished",
        "Network.loadingFailed",
    ];
    if relied_on.contains(&method.as_str()) {
        tracing::warn!(%method, %error, "a browser event the guard needs did not parse");
    } else {
        tracing::debug!(%method, %error, "a browser message did not parse");
    }
}

/// Decides every paused request of one page.
struct Guard {
    page: Page,
    fetcher: Fetcher,
    targets: TargetPolicy,
    /// The page being rendered: its host is allowed, and its own request
    /// was admitted by the pager already.
    document: Url,
    /// The pager's permit for the document, held by its request once seen.
    document_permit: Mutex<Option<Permit>>,
    in_flight: InFlight,
    options: RenderOptions,
    log: Arc<Mutex<Blocked>>,
}

/// The permits of a page's requests in flight, by network request id.
#[derive(Clone, Default)]
struct InFlight {
    inner: Arc<Mutex<InFlightState>>,
}

#[derive(Default)]
struct InFlightState {
    held: HashMap<String, Held>,
    /// The status of the first document response (the page's own).
    document_status: Option<u16>,
    closed: bool,
}

struct Held {
    permit: Permit,
    /// The answer's status, once its headers arrived.
    status: Option<i64>,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, InFlightState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds `permit` while request `id` is open. A redirect reuses the id:
    /// the permit of the hop before is given back then.
    fn hold(&self, id: String, permit: Permit) {
        let mut state = self.lock();
        if state.closed {
            tracing::debug!(network = %id, "page closed: permit given back at once");
            return;
        }
        tracing::debug!(network = %id, held = state.held.len() + 1, "page request holds its permit");
        if let Some(before) = state.held.insert(
            id,
            Held {
                permit,
                status: None,
            },
        ) {
            before.permit.release(PermitOutcome::Answered);
        }
    }

    /// Request `id` ended: its permit goes back, as a throttle after a 429
    /// or a 503.
    fn end(&self, id: &str, failed: bool) {
        let held = self.lock().held.remove(id);
        tracing::debug!(network = %id, failed, held = held.is_some(), "page request ended");
        if let Some(held) = held {
            let outcome = match held.status {
                Some(429 | 503) => PermitOutcome::Throttled {
                    retry_after_ms: None,
                },
                _ if failed => PermitOutcome::Failed,
                _ => PermitOutcome::Answered,
            };
            held.permit.release(outcome);
        }
    }

    fn document_status(&self) -> Option<u16> {
        self.lock().document_status
    }

    /// The page is closed: every permit still held goes back.
    fn close(&self) {
        let held: Vec<Held> = {
            let mut state = self.lock();
            state.closed = true;
            state.held.drain().map(|(_, h)| h).collect()
        };
        for h in held {
            h.permit.release(PermitOutcome::Failed);
        }
    }

    /// Follows the page's requests to their ends (until aborted).
    async fn follow(
        self,
        mut responses: chromiumoxide::listeners::EventStream<EventResponseReceived>,
        mut finished: chromiumoxide::listeners::EventStream<EventLoadingFinished>,
        mut failed: chromiumoxide::listeners::EventStream<EventLoadingFailed>,
    ) {
        loop {
            tokio::select! {
                Some(r) = responses.next() => {
                    let status = r.response.status;
                    let mut state = self.lock();
                    if r.r#type == ResourceType::Document && state.document_status.is_none() {
                        state.document_status = u16::try_from(status).ok();
                    }
                    if let Some(h) = state.held.get_mut(r.request_id.inner()) {
                        h.status = Some(status);
                    }
                }
                Some(e) = finished.next() => self.end(e.request_id.inner(), false),
                Some(e) = failed.next() => self.end(e.request_id.inner(), true),
                else => break,
            }
        }
    }
}

impl Guard {
    async fn run(self, mut paused: chromiumoxide::listeners::EventStream<EventRequestPaused>) {
        let guard = Arc::new(self);
        while let Some(event) = paused.next().await {
            let guard = guard.clone();
            tokio::spawn(async move { guard.answer(&event).await });
        }
    }

    async fn answer(&self, event: &EventRequestPaused) {
        let raw = &event.request.url;
        let first = event.resource_type == ResourceType::Document && *raw == self.document.as_str();
        let verdict = match Url::parse(raw) {
            Ok(url) => self.decide(&url, first).await,
            Err(_) => Err("not a valid URL".to_owned()),
        };
        let id = event.request_id.clone();
        if let Ok(Some(permit)) = &verdict {
            tracing::debug!(
                request = %id.inner(),
                network = event.network_id.as_ref().map(|n| n.inner().as_str()),
                url = %raw,
                granted_by = permit.granted_by().unwrap_or("this process"),
                waited_ms = permit.waited.as_millis() as u64,
                "page request admitted"
            );
        }
        let sent = match verdict {
            Ok(permit) => {
                // Held before the request goes on, so its end cannot come first.
                let permit = match permit {
                    Some(p) => Some(p),
                    None if first => self
                        .document_permit
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take(),
                    None => None,
                };
                if let Some(permit) = permit {
                    let key = event
                        .network_id
                        .as_ref()
                        .map_or_else(|| id.inner().clone(), |n| n.inner().clone());
                    self.in_flight.hold(key, permit);
                }
                let mut params = ContinueRequestParams::new(id);
                if !self.options.headers.is_empty() && same_host(raw, &self.document) {
                    params.headers =
                        Some(with_headers(&event.request.headers, &self.options.headers));
                }
                self.page.execute(params).await.map(|_| ())
            }
            Err(reason) => {
                tracing::info!(url = %raw, %reason, "page request blocked");
                self.log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .add(raw, &reason);
                self.page
                    .execute(FailRequestParams::new(id, ErrorReason::BlockedByClient))
                    .await
                    .map(|_| ())
            }
        };
        if let Err(e) = sent {
            tracing::debug!(url = %raw, error = %e, "paused request not answered");
        }
    }

    /// The permit to hold while the request is open (none for the page's
    /// own document: the pager's is used), or the reason it is refused.
    async fn decide(&self, url: &Url, first: bool) -> Result<Option<Permit>, String> {
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!("scheme {} is not fetched", url.scheme()));
        }
        let host = host_key(url).ok_or("no host")?;
        let own = host_key(&self.document).is_some_and(|h| h == host);
        if !own
            && !self
                .options
                .allow_hosts
                .iter()
                .any(|p| host_matches(p, &host))
        {
            return Err(format!(
                "{host} is not the page's host nor in extract.allow_hosts"
            ));
        }
        check_address(url, &self.targets).await?;
        if first {
            return Ok(None);
        }
        // robots.txt and the host's gate: the permit spaces this request's
        // start from the host's others and counts it in flight until it
        // ends (or the page's timeout, the permit's ttl, has passed).
        self.fetcher
            .politeness()
            .permit(&self.fetcher, url, true, self.options.timeout)
            .await
            .map(Some)
            .map_err(|r| r.to_string())
    }
}

/// Is `url`'s host the document's?
fn same_host(url: &str, document: &Url) -> bool {
    Url::parse(url).ok().and_then(|u| host_key(&u)) == host_key(document)
}

/// The request's headers with the source's own set over them.
fn with_headers(
    sent: &chromiumoxide::cdp::browser_protocol::network::Headers,
    ours: &[(String, String)],
) -> Vec<HeaderEntry> {
    let mut out: Vec<HeaderEntry> = sent
        .inner()
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(name, _)| !ours.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)))
        .filter_map(|(name, value)| Some(HeaderEntry::new(name.clone(), value.as_str()?)))
        .collect();
    out.extend(
        ours.iter()
            .map(|(n, v)| HeaderEntry::new(n.clone(), v.clone())),
    );
    out
}

/// Does `host` (a host key: lowercase host, `:port` unless the default)
/// match an `allow_hosts` entry: equal, or under a `*.domain`?
pub fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(domain) => host
            .strip_suffix(domain)
            .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        None => pattern == host,
    }
}

/// The SSRF guard for a browser request: an IP literal as it is; a name on
/// every address it resolves to (Chromium may dial any of them).
pub async fn check_address(url: &Url, targets: &TargetPolicy) -> Result<(), String> {
    let refuse =
        |ip: IpAddr| format!("{ip} is not a public address (see GLEANER_ALLOW_PRIVATE_TARGETS)");
    let ip = match url.host() {
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(Host::Domain(name)) => {
            let port = url.port_or_known_default().unwrap_or(80);
            let found: Vec<IpAddr> = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::lookup_host((name, port)),
            )
            .await
            .map_err(|_| format!("resolving {name} timed out"))?
            .map_err(|e| format!("resolving {name}: {e}"))?
            .map(|a| a.ip())
            .collect();
            if found.is_empty() {
                return Err(format!("{name} resolves to no address"));
            }
            return match found.into_iter().find(|ip| !targets.permits(*ip)) {
                Some(ip) => Err(refuse(ip)),
                None => Ok(()),
            };
        }
        None => return Err("no host".into()),
    };
    if targets.permits(ip) {
        Ok(())
    } else {
        Err(refuse(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_hosts_match_exactly_or_under_a_domain() {
        assert!(host_matches("cdn.example.org", "cdn.example.org"));
        assert!(!host_matches("cdn.example.org", "cdn.example.org:8080"));
        assert!(host_matches("127.0.0.1:8000", "127.0.0.1:8000"));
        assert!(host_matches("*.example.org", "a.b.example.org"));
        assert!(!host_matches("*.example.org", "example.org"));
        assert!(!host_matches("*.example.org", "badexample.org"));
    }

    #[tokio::test]
    async fn metadata_and_loopback_addresses_are_refused_by_default() {
        let public = TargetPolicy::PublicOnly;
        for u in [
            "http://169.254.169.254/latest/meta-data/",
            "http://127.0.0.1:9/",
            "http://[::1]/",
            "http://localhost/",
        ] {
            let url = Url::parse(u).unwrap();
            assert!(check_address(&url, &public).await.is_err(), "{u}");
        }
        let allowed: TargetPolicy = "127.0.0.0/8".parse().unwrap();
        let url = Url::parse("http://127.0.0.1:9/").unwrap();
        assert!(check_address(&url, &allowed).await.is_ok());
        let url = Url::parse("http://169.254.169.254/").unwrap();
        assert!(check_address(&url, &allowed).await.is_err());
    }

    #[test]
    fn blocked_keeps_a_bounded_sample() {
        let mut b = Blocked::default();
        for i in 0..20 {
            b.add(&format!("http://x/{i}"), "r");
        }
        assert_eq!(b.count, 20);
        assert_eq!(b.sample.len(), BLOCKED_SAMPLES);
    }
}
