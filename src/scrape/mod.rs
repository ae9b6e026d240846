//! Scraping, without actors: [`fetch`] gets a page within limits and behind the
//! SSRF guard, as the source's request options say; [`robots`] and
//! [`politeness`] keep each host's robots.txt, Crawl-delay and back-off;
//! [`extract`] turns a page into items; and [`Pager`] walks a source's pages
//! (following `next_page` up to `max_pages`, never twice the same URL),
//! asking the politeness state first and the site conditionally when a page
//! is remembered in the store (`store::pages`).

pub mod browser;
pub mod extract;
pub mod fetch;
pub mod politeness;
pub mod robots;

use std::collections::HashSet;
use std::sync::Arc;

use url::Url;

use crate::domain::RequestOptions;
use crate::store::{PageMemo, Store};

use browser::{Blocked, RenderError, RenderOptions};
use extract::{ExtractError, Limits, Page, Rules};
use fetch::{FetchError, Fetcher, Validators};
use politeness::Refusal;

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
    /// (`robots_disallowed`, `host_backoff`).
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
    /// `render: browser`: pages are rendered by the fetcher's browser.
    browser: Option<RenderOptions>,
    blocked: Blocked,
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
            browser: None,
            blocked: Blocked::default(),
        }
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

    /// The remembered answer for `url`, if it was made under these rules.
    fn memo(&self, url: &Url) -> Option<PageMemo> {
        let m = self.memory.as_ref()?;
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
        let url = self.next.take()?;
        if self.pages >= self.max_pages || !self.seen.insert(without_fragment(&url)) {
            return None;
        }
        // robots.txt, the host's pause and its Crawl-delay come first: a
        // disallowed start URL fails the run, a disallowed next page ends it.
        let politeness = self.fetcher.politeness().clone();
        match politeness.admit(&self.fetcher, &url).await {
            Ok(()) => {}
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
        }
        self.pages += 1;
        if let Some(options) = self.browser.clone() {
            return Some(self.render(url, &options).await);
        }
        let memo = self.memo(&url);
        let validators = memo.as_ref().map(|m| Validators {
            etag: m.etag.clone(),
            last_modified: m.last_modified.clone(),
        });
        let fetched = match self
            .fetcher
            .fetch_conditional(&url, &self.request, validators.as_ref())
            .await
        {
            Ok(f) => {
                politeness.answered(&url);
                f
            }
            Err(source) => {
                if let FetchError::Throttled { retry_after, .. } = &source {
                    politeness.throttled(&url, *retry_after);
                }
                return Some(Err(ScrapeError::Fetch {
                    url: url.to_string(),
                    source,
                }));
            }
        };
        // The final URL after redirects counts as seen too.
        self.seen.insert(without_fragment(&fetched.url));
        if fetched.not_modified {
            if let Some(memo) = memo {
                // Unchanged: the remembered items again, nothing parsed.
                self.not_modified += 1;
                let next = memo.next.as_deref().and_then(|n| Url::parse(n).ok());
                self.next = next.clone();
                return Some(Ok(Page {
                    items: memo.items,
                    next,
                }));
            }
        }
        let answered = fetched.validators.clone();
        let requested = url.clone();
        let rules = self.rules.clone();
        let limits = self.limits.clone();
        let page_url = fetched.url.clone();
        let inline = fetched.body.len() <= INLINE_EXTRACT_BYTES;
        let work = move || extract::extract(&fetched.body, &fetched.url, &rules, &limits);
        // A panic in extraction fails this page, not the run's task.
        let parsed = if inline {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|_| ())
        } else {
            tokio::task::spawn_blocking(work).await.map_err(|_| ())
        };
        match parsed {
            Ok(Ok(page)) => {
                self.next = page.next.clone();
                self.remember(&requested, answered, &page);
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
    /// One page through the browser: rendered, then extracted as usual.
    async fn render(&mut self, url: Url, options: &RenderOptions) -> Result<Page, ScrapeError> {
        let renderer = self
            .fetcher
            .renderer()
            .cloned()
            .ok_or(ScrapeError::Render {
                url: url.to_string(),
                source: RenderError::Unavailable,
            })?;
        let rendered = renderer
            .render(&self.fetcher, &url, options, &mut self.blocked)
            .await
            .map_err(|source| ScrapeError::Render {
                url: url.to_string(),
                source,
            })?;
        self.seen.insert(without_fragment(&rendered.url));
        let (rules, limits) = (self.rules.clone(), self.limits.clone());
        let page_url = rendered.url.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            extract::extract(rendered.html.as_bytes(), &rendered.url, &rules, &limits)
        })
        .await;
        match parsed {
            Ok(Ok(page)) => {
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

    /// Keeps a fully answered page for the next run's conditional request,
    /// when it came with a validator.
    fn remember(&self, url: &Url, validators: Validators, page: &Page) {
        let Some(m) = &self.memory else {
            return;
        };
        if validators.is_empty() {
            return;
        }
        let memo = PageMemo {
            fingerprint: m.fingerprint.clone(),
            etag: validators.etag,
            last_modified: validators.last_modified,
            next: page.next.as_ref().map(Url::to_string),
            items: page.items.clone(),
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

fn without_fragment(url: &Url) -> String {
    let mut u = url.clone();
    u.set_fragment(None);
    u.to_string()
}
