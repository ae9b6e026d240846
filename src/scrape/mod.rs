//! Scraping, without actors: [`fetch`] gets a page within limits and behind the
//! SSRF guard, [`extract`] turns a page into items, and [`Pager`] walks a
//! source's pages (following `next_page` up to `max_pages`, never twice the same URL).

pub mod extract;
pub mod fetch;
pub mod politeness;
pub mod robots;

use std::collections::HashSet;
use std::sync::Arc;

use url::Url;

use crate::domain::RequestOptions;

use extract::{ExtractError, Limits, Page, Rules};
use fetch::{FetchError, Fetcher};
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
        let fetched = match self.fetcher.fetch_with(&url, &self.request).await {
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
