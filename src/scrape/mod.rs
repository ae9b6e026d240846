//! Scraping, without actors: [`fetch`] gets a page within limits and behind the
//! SSRF guard, as the source's request options say, each request under a
//! permit of its host's gate; [`robots`] and [`politeness`] keep each
//! host's policy, permits, robots.txt, Crawl-delay and back-off;
//! [`extract`] turns a page into items; and [`Pager`] walks a source's pages
//! (following `next_page` up to `max_pages`, never twice the same URL),
//! through the host's gate (robots.txt, back-off, gap and requests in
//! flight, held cluster-wide by the host's owner node), and asking the site
//! conditionally when a page is remembered in the store (`store::pages`).
//! Fields that `follow` a URL are completed there too: each detail page is
//! fetched through the same guard and gate, at most once a run, at most
//! `extract.max_follows` a listing page ([`FollowStats`]).

pub mod browser;
pub mod extract;
pub mod fetch;
pub mod politeness;
pub mod robots;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value};
use url::Url;

use crate::domain::item::NamedItems;
use crate::domain::{Item, Method, RequestOptions};
use crate::store::{PageMemo, Store};

use browser::{Blocked, RenderError, RenderOptions};
use extract::{ExtractError, Limits, Page, Report, Rules};
use fetch::{FetchError, Fetcher, Validators};
use politeness::{Permit, Refusal};

/// Why a page could not be scraped.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("fetching {url}: {source}")]
    Fetch { url: String, source: FetchError },
    #[error("extracting {url}: {source}")]
    Extract { url: String, source: ExtractError },
    #[error("extracting {url}: the parser stopped unexpectedly")]
    Crashed { url: String },
    #[error("{source}")]
    Refused { url: String, source: Refusal },
    #[error("rendering {url}: {source}")]
    Render { url: String, source: RenderError },
}

impl ScrapeError {
    /// The run's code for this failure, where one applies
    /// (`robots_disallowed`, `host_backoff`, `host_busy`, `host_gate_unavailable`).
    pub fn code(&self) -> Option<&'static str> {
        match self {
            ScrapeError::Refused { source, .. } => Some(source.code()),
            ScrapeError::Fetch {
                source: FetchError::Throttled { .. },
                ..
            } => Some("host_backoff"),
            ScrapeError::Render {
                source: RenderError::WaitTimeout { .. } | RenderError::LoadTimeout(_),
                ..
            } => Some("render_timeout"),
            _ => None,
        }
    }
}

/// The run's `stopped` note when robots.txt disallows a next page.
pub const STOPPED_ROBOTS: &str = "robots_disallowed";

/// Walks the pages of one run of a source.
pub struct Pager {
    fetcher: Fetcher,
    rules: Arc<Rules>,
    limits: Limits,
    request: RequestOptions,
    next: Option<Url>,
    seen: HashSet<String>,
    pages: u32,
    max_pages: u32,
    stopped: Option<&'static str>,
    memory: Option<Memory>,
    not_modified: u32,
    /// Pages to ask for again, in full, before going on.
    again: Vec<Url>,
    /// Pages to ask for in full, their memory notwithstanding.
    in_full: HashSet<String>,
    /// What extraction saw on the last page parsed.
    report: Option<Report>,
    /// The last page's HTTP status and final URL.
    answered: Option<(u16, Url)>,
    max_follows: u32,
    /// Detail pages of this run by URL: their object, or why there is none.
    details: HashMap<String, Result<Map<String, Value>, String>>,
    follows: FollowStats,
    /// `render: browser`: pages are rendered by the fetcher's browser.
    browser: Option<RenderOptions>,
    blocked: Blocked,
}

/// Detail pages of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FollowStats {
    /// Detail pages fetched (each URL once a run).
    pub fetched: u64,
    /// Follows that left their field null: the page failed, robots.txt
    /// disallowed it, or the page's `max_follows` was spent.
    pub errors: u64,
    /// The first such failure's reason.
    pub error: Option<String>,
}

/// Where a source's pages are remembered for conditional requests.
struct Memory {
    store: Store,
    source: String,
    /// A hash of what shapes the remembered items (extraction rules, key,
    /// request, collection): a page remembered under other rules is ignored.
    fingerprint: String,
}

impl Pager {
    pub fn new(
        start: Url,
        max_pages: u32,
        fetcher: Fetcher,
        rules: Arc<Rules>,
        limits: Limits,
        request: RequestOptions,
    ) -> Self {
        Pager {
            fetcher,
            rules,
            limits,
            request,
            next: Some(start),
            seen: HashSet::new(),
            pages: 0,
            max_pages,
            stopped: None,
            memory: None,
            not_modified: 0,
            again: Vec::new(),
            in_full: HashSet::new(),
            report: None,
            answered: None,
            max_follows: crate::domain::DEFAULT_MAX_FOLLOWS,
            details: HashMap::new(),
            follows: FollowStats::default(),
            browser: None,
            blocked: Blocked::default(),
        }
    }

    /// Fetches at most `n` detail pages for one listing page.
    pub fn with_max_follows(mut self, n: u32) -> Self {
        self.max_follows = n;
        self
    }

    /// What extraction saw on the last page it parsed (none for a 304).
    pub fn report(&self) -> Option<&Report> {
        self.report.as_ref()
    }

    /// The last page's status and final URL, once it answered.
    pub fn answered(&self) -> Option<&(u16, Url)> {
        self.answered.as_ref()
    }

    /// The run's detail pages so far.
    pub fn follow_stats(&self) -> &FollowStats {
        &self.follows
    }

    /// Renders each page in the fetcher's browser instead of fetching it
    /// (`render: browser`); no conditional requests then.
    pub fn with_browser(mut self, options: RenderOptions) -> Self {
        self.browser = Some(options);
        self.memory = None;
        self
    }

    /// Renders the pages when the spec says `render: browser`.
    pub fn with_render(self, spec: &crate::domain::SourceSpec) -> Self {
        if spec.render != crate::domain::spec::Render::Browser {
            return self;
        }
        let e = &spec.extract;
        self.with_browser(RenderOptions {
            wait_for: e.wait_for.clone(),
            timeout: e.wait_timeout(),
            allow_hosts: e.allow_hosts.clone(),
            headers: spec
                .request
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            user_agent: spec.request.user_agent.clone(),
        })
    }

    /// Requests of rendered pages that were refused.
    pub fn blocked(&self) -> &Blocked {
        &self.blocked
    }

    /// Remembers each page's validators and items in `store`, and asks the
    /// site conditionally on the next run (see `store::pages`).
    pub fn with_memory(mut self, store: Store, source: String, fingerprint: String) -> Self {
        self.memory = Some(Memory {
            store,
            source,
            fingerprint,
        });
        self
    }

    /// Pages the site answered 304 Not Modified.
    pub fn not_modified(&self) -> u32 {
        self.not_modified
    }

    /// A page answered from memory with its items by name, whose items the
    /// collection no longer holds as they were (another source or node
    /// changed one since, or the collection was deleted): asks for it
    /// again, in full and unconditionally, as the next page. Pagination
    /// then goes on where it was.
    pub fn again_in_full(&mut self, url: Url) {
        let page = without_fragment(&url);
        self.seen.remove(&page);
        self.in_full.insert(page);
        self.not_modified = self.not_modified.saturating_sub(1);
        self.pages = self.pages.saturating_sub(1);
        self.again.push(url);
    }

    /// The remembered answer for `url`, if it was made under these rules.
    fn memo(&self, url: &Url) -> Option<PageMemo> {
        let m = self.memory.as_ref()?;
        if self.in_full.contains(&without_fragment(url)) {
            return None;
        }
        match m.store.page_memo(&m.source, url.as_str()) {
            Ok(Some(memo)) if memo.fingerprint == m.fingerprint => Some(memo),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(source = %m.source, error = %e, "page memo unreadable");
                None
            }
        }
    }

    /// Why pagination ended early, if it did ([`STOPPED_ROBOTS`]).
    pub fn stopped(&self) -> Option<&'static str> {
        self.stopped
    }

    /// Pages fetched so far.
    pub fn pages(&self) -> u32 {
        self.pages
    }

    /// Fetches and extracts the next page; `None` when the run is over.
    pub async fn next_page(&mut self) -> Option<Result<Page, ScrapeError>> {
        // A page asked for again leaves the next page as it was.
        let (url, again) = match self.again.pop() {
            Some(url) => (url, true),
            None => (self.next.take()?, false),
        };
        if self.pages >= self.max_pages || !self.seen.insert(without_fragment(&url)) {
            return None;
        }
        // The host's gate comes first (inside the fetcher): robots.txt, its
        // pause, its gap and its requests in flight, cluster-wide. A
        // disallowed start URL fails the run, a disallowed next page ends it.
        if let Some(options) = self.browser.clone() {
            // robots.txt and the host's gate for the page itself; the
            // requests the page makes take their own permits (browser.rs).
            let ttl = options.timeout + std::time::Duration::from_secs(5);
            let politeness = self.fetcher.politeness().clone();
            let permit = match politeness.permit(&self.fetcher, &url, true, ttl).await {
                Ok(p) => p,
                Err(Refusal::RobotsDisallowed { .. }) if self.pages > 0 => {
                    self.stopped = Some(STOPPED_ROBOTS);
                    return None;
                }
                Err(source) => {
                    return Some(Err(ScrapeError::Refused {
                        url: url.to_string(),
                        source,
                    }))
                }
            };
            self.pages += 1;
            // The permit is held by the document's request until it has
            // loaded (browser.rs), not for the whole render: the page's
            // other requests to its host need permits of the same gate.
            return Some(self.render(url, &options, permit).await);
        }
        let memo = self.memo(&url);
        let validators = memo
            .as_ref()
            .map(|m| Validators {
                etag: m.etag.clone(),
                last_modified: m.last_modified.clone(),
            })
            .filter(|v| !v.is_empty());
        let fetched = match self
            .fetcher
            .fetch_page(&url, &self.request, validators.as_ref())
            .await
        {
            Ok(f) => f,
            Err(FetchError::Refused(Refusal::RobotsDisallowed { .. })) if self.pages > 0 => {
                self.stopped = Some(STOPPED_ROBOTS);
                return None;
            }
            Err(FetchError::Refused(source)) => {
                return Some(Err(ScrapeError::Refused {
                    url: url.to_string(),
                    source,
                }))
            }
            Err(source) => {
                self.pages += 1;
                return Some(Err(ScrapeError::Fetch {
                    url: url.to_string(),
                    source,
                }));
            }
        };
        self.pages += 1;
        // The final URL after redirects counts as seen too.
        self.seen.insert(without_fragment(&fetched.url));
        self.answered = Some((fetched.status, fetched.url.clone()));
        self.report = None;
        // A body hash only where nothing but the body makes the items (no
        // detail pages to fetch again).
        let body = (!fetched.not_modified && self.rules.follows().is_empty())
            .then(|| body_hash(&fetched.url, fetched.status, &fetched.body));
        if let Some(memo) = memo {
            let same_body = body.is_some() && memo.body == body && memo.named.is_some();
            if fetched.not_modified || same_body {
                // Unchanged: the remembered items again, nothing parsed.
                self.not_modified += 1;
                let next = memo.next.as_deref().and_then(|n| Url::parse(n).ok());
                if !again {
                    self.next = next.clone();
                }
                return Some(Ok(Page {
                    items: memo.items,
                    next,
                    unchanged: memo.named.map(|named| (url, named)),
                }));
            }
        }
        let answered = fetched.validators.clone();
        let requested = url.clone();
        let rules = self.rules.clone();
        let limits = self.limits.clone();
        let page_url = fetched.url.clone();
        let inline = fetched.body.len() <= INLINE_EXTRACT_BYTES;
        let work = move || extract::extract_reported(&fetched.body, &fetched.url, &rules, &limits);
        // A panic in extraction fails this page, not the run's task.
        let parsed = if inline {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|_| ())
        } else {
            tokio::task::spawn_blocking(work).await.map_err(|_| ())
        };
        match parsed {
            Ok(Ok((mut page, report))) => {
                self.report = Some(report);
                if !again {
                    self.next = page.next.clone();
                }
                self.follow(&mut page).await;
                self.remember(&requested, answered, body, &page);
                Some(Ok(page))
            }
            Ok(Err(source)) => Some(Err(ScrapeError::Extract {
                url: page_url.to_string(),
                source,
            })),
            Err(_) => Some(Err(ScrapeError::Crashed {
                url: page_url.to_string(),
            })),
        }
    }
}

impl Pager {
    /// Replaces each following field's URL with its detail page's object
    /// (null when there is none), and rebuilds the items' keys.
    async fn follow(&mut self, page: &mut Page) {
        let rules = self.rules.clone();
        if rules.follows().is_empty() {
            return;
        }
        let mut budget = self.max_follows;
        for item in &mut page.items {
            let mut data = std::mem::take(&mut item.data);
            for follow in rules.follows() {
                let Some(Value::String(url)) = data.get(&follow.field).cloned() else {
                    continue;
                };
                let object = match self.details.get(&url) {
                    Some(known) => known.clone(),
                    None if budget == 0 => Err(format!(
                        "{url}: not fetched, the page's max_follows ({}) is spent",
                        self.max_follows
                    )),
                    None => {
                        budget -= 1;
                        let got = self.detail(&url, &follow.rules).await;
                        self.details.insert(url.clone(), got.clone());
                        got
                    }
                };
                let value = match object {
                    Ok(object) => Value::Object(object),
                    Err(reason) => {
                        self.follows.errors += 1;
                        if self.follows.error.is_none() {
                            tracing::warn!(field = %follow.field, %reason, "detail page not had");
                            self.follows.error = Some(reason);
                        }
                        Value::Null
                    }
                };
                data.insert(follow.field.clone(), value);
            }
            *item = Item::new(data, rules.key());
        }
    }

    /// One detail page as an object: through robots.txt and the host's gate, fetched with
    /// the source's headers (always a GET), extracted by `rules`.
    async fn detail(
        &mut self,
        raw: &str,
        rules: &Arc<Rules>,
    ) -> Result<Map<String, Value>, String> {
        let url = Url::parse(raw).map_err(|e| format!("{raw}: {e}"))?;
        let request = RequestOptions {
            method: Method::Get,
            body: None,
            ..self.request.clone()
        };
        // robots.txt and the host's gate, as for every page.
        let fetched = match self.fetcher.fetch_page(&url, &request, None).await {
            Ok(f) => {
                self.follows.fetched += 1;
                f
            }
            Err(e @ FetchError::Refused(_)) => return Err(e.to_string()),
            Err(e) => {
                self.follows.fetched += 1;
                return Err(format!("fetching {url}: {e}"));
            }
        };
        let (rules, limits) = (rules.clone(), self.limits.clone());
        let work = move || extract::extract_object(&fetched.body, &fetched.url, &rules, &limits);
        match tokio::task::spawn_blocking(work).await {
            Ok(Ok(object)) => Ok(object),
            Ok(Err(e)) => Err(format!("extracting {url}: {e}")),
            Err(_) => Err(format!("extracting {url}: the parser stopped unexpectedly")),
        }
    }

    /// One page through the browser: rendered, then extracted as usual.
    async fn render(
        &mut self,
        url: Url,
        options: &RenderOptions,
        permit: Permit,
    ) -> Result<Page, ScrapeError> {
        let renderer = self
            .fetcher
            .renderer()
            .cloned()
            .ok_or(ScrapeError::Render {
                url: url.to_string(),
                source: RenderError::Unavailable,
            })?;
        let rendered = renderer
            .render(
                &self.fetcher,
                &url,
                options,
                Some(permit),
                &mut self.blocked,
            )
            .await
            .map_err(|source| ScrapeError::Render {
                url: url.to_string(),
                source,
            })?;
        self.seen.insert(without_fragment(&rendered.url));
        self.answered = rendered.status.map(|s| (s, rendered.url.clone()));
        self.report = None;
        let (rules, limits) = (self.rules.clone(), self.limits.clone());
        let page_url = rendered.url.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            extract::extract_reported(rendered.html.as_bytes(), &rendered.url, &rules, &limits)
        })
        .await;
        match parsed {
            Ok(Ok((page, report))) => {
                self.report = Some(report);
                self.next = page.next.clone();
                Ok(page)
            }
            Ok(Err(source)) => Err(ScrapeError::Extract {
                url: page_url.to_string(),
                source,
            }),
            Err(_) => Err(ScrapeError::Crashed {
                url: page_url.to_string(),
            }),
        }
    }

    /// Keeps a fully answered page for the next run: its validators, for a
    /// conditional request, and its body's hash, to know the same answer
    /// again; when it has either.
    fn remember(&self, url: &Url, validators: Validators, body: Option<String>, page: &Page) {
        let Some(m) = &self.memory else {
            return;
        };
        if validators.is_empty() && body.is_none() {
            return;
        }
        let memo = PageMemo {
            fingerprint: m.fingerprint.clone(),
            etag: validators.etag,
            last_modified: validators.last_modified,
            body,
            next: page.next.as_ref().map(Url::to_string),
            named: Some(NamedItems::of(&page.items)),
            items: Vec::new(),
        };
        if let Err(e) = m.store.remember_page(&m.source, url.as_str(), &memo) {
            tracing::warn!(source = %m.source, error = %e, "page not remembered");
        }
    }
}

/// Bodies up to this size are extracted on the run's own task: parsing them
/// takes less than the hop to the blocking pool and back (two thread
/// wake-ups), which profiles showed dominating runs of small pages. Larger
/// bodies are parsed on the blocking pool, off the async workers.
const INLINE_EXTRACT_BYTES: usize = 64 * 1024;

/// What tells a page's full answer from another: a hash of its final URL
/// (against which its links resolve), its status and its body.
fn body_hash(url: &Url, status: u16, body: &[u8]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(url.as_str().as_bytes());
    h.update(&[0]);
    h.update(&status.to_be_bytes());
    h.update(body);
    h.finalize().to_hex()[..32].to_owned()
}

fn without_fragment(url: &Url) -> String {
    let mut u = url.clone();
    u.set_fragment(None);
    u.to_string()
}
