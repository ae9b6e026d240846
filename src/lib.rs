//! gleaner: a distributed data scraper.
//!
//! How data flows through a node:
//!
//! 1. An operator adds a *source* (a URL, extraction rules, a schedule) over
//!    the admin HTTP API ([`http::sources`]). The spec is validated in full
//!    ([`domain::spec`]) and stored, flushed, by the Orchestrator ([`actors::orchestrator`]).
//! 2. The Orchestrator places the source ([`cluster::placement`]) and has the
//!    ScraperSupervisor run one Scraper actor for it ([`actors::scraper`]).
//! 3. On its schedule the Scraper fetches the pages ([`scrape::fetch`]: limits,
//!    SSRF guard, retries), extracts items ([`scrape::extract`]: CSS selectors
//!    or JSON pointers) and hands each page's items to its collection's
//!    Aggregator ([`actors::aggregator`]), which upserts them by key into sled
//!    ([`store`]) and flushes before it acknowledges.
//! 4. Clients read collections over HTTP ([`http::collections`]); counts come
//!    from each collection's Endpoint actor ([`actors::endpoint`]).
//! 5. Actors publish what happens ([`events`]); the debug dashboard
//!    ([`http::debug`]) shows the supervision tree live.
//!
//! Module map: [`settings`] (flags, `GLEANER_*` variables, TOML), [`telemetry`]
//! (tracing), [`app`] (build and run a node), [`domain`] (plain types),
//! [`events`] (the node's event stream),
//! [`scrape`] (fetch and extract), [`store`] (sled), [`actors`] (the
//! supervision tree), [`cluster`] (placement and names), [`http`] (routes).

#![forbid(unsafe_code)]

pub mod app;
pub mod cluster;
pub mod control;
pub mod domain;
pub mod events;
pub mod http;
pub mod isolation;
pub mod pipeline;
pub mod scrape;
pub mod settings;
pub mod store;
pub mod supervision;
pub mod telemetry;
pub mod worker;
