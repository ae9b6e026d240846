//! Scraping, without actors: [`fetch`] gets a page within limits and behind the
//! SSRF guard, [`extract`] turns a page into items, and [`Pager`] walks a
//! source's pages (following `next_page` up to `max_pages`, never twice the same URL).

pub mod extract;
pub mod fetch;

use std::collections::HashSet;
use std::sync::Arc;

use url::Url;

use crate::domain::RequestOptions;

use extract::{ExtractError, Limits, Page, Rules};
use fetch::{FetchError, Fetcher};

/// Why a page could not be scraped.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("fetching {url}: {source}")]
    Fetch { url: String, source: FetchError },
    #[error("extracting {url}: {source}")]
    Extract { url: String, source: ExtractError },
    #[error("extracting {url}: the parser stopped unexpectedly")]
    Crashed { url: String },
}

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
        }
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
        self.pages += 1;
        let fetched = match self.fetcher.fetch_with(&url, &self.request).await {
            Ok(f) => f,
            Err(source) => {
                return Some(Err(ScrapeError::Fetch {
                    url: url.to_string(),
                    source,
                }))
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
