//! gleaner: a distributed data scraper.
//!
//! How data flows through a node (folders by concern; `docs/architecture.md`
//! draws the actor tree):
//!
//! 1. An operator adds a *source* (a URL, extraction rules, a schedule) over
//!    the admin HTTP API ([`http::sources`]). The spec is validated in full
//!    ([`domain::spec`]; [`http::preview`] tries a spec against its site
//!    first, storing nothing) and stored, flushed, by the Orchestrator
//!    ([`control::orchestrator`]), which replicates it to every node. Specs
//!    may also be files of the sources directory, applied the same way
//!    ([`control::source_files`]).
//! 2. Placement ([`cluster::placement`]) gives each source one owner node;
//!    there the ScraperSupervisor runs one Scraper actor for it
//!    ([`pipeline::scraper`]), or, for an isolated source, the
//!    WorkerSupervisor runs a worker container ([`isolation`], [`worker`]).
//! 3. On its schedule (a period or a cron expression) the Scraper fetches
//!    the pages ([`scrape::fetch`]: the source's request options, limits,
//!    SSRF guard, retries; [`scrape::politeness`]: every request takes a
//!    permit of its host's gate, held cluster-wide by the host's owner node
//!    ([`cluster::hosts`]) under the host's policy ([`control::hosts`]):
//!    robots.txt, the gap between starts, requests in flight, back-off;
//!    conditional requests against the pages remembered in [`store`]),
//!    extracts items ([`scrape::extract`]: CSS selectors
//!    or JSON pointers; fields that `follow` a link take a detail page's
//!    object) and hands each page's items as a batch to its
//!    collection's Aggregator ([`pipeline::aggregator`]).
//! 4. The Aggregator upserts the batch by item key into sled ([`store`]),
//!    logs it, has it flushed (group commit) and sends it to every peer
//!    ([`cluster`]); the Replicator ([`pipeline::replicator`]) pulls whatever
//!    live replication missed.
//! 5. Clients read collections over HTTP from any node
//!    ([`http::collections`]), served only once flushed; counts come from
//!    each collection's Endpoint actor ([`pipeline::endpoint`]).
//! 6. Actors publish what happens ([`events`]); the debug view
//!    ([`control::views`], served by [`http::debug`]) shows every node's
//!    supervision tree live. Counters of the work (pages, bytes, items,
//!    runs, requests) and gauges taken from the actors at scrape time are
//!    served as Prometheus text by [`http::metrics`] ([`instruments`]).
//! 7. Webhooks ([`delivery`]): each webhook's owner node follows its change
//!    feed of a collection and POSTs signed batches to the operator's URL,
//!    in order, at least once, resumed by another node after a failover.
//!
//! Module map, in dependency order (each imports only those before it):
//! [`domain`] (plain types), [`instruments`] (the metrics families, for
//! `GET /metrics`; imports nothing of gleaner's), [`events`], [`store`] (sled), [`scrape`]
//! (fetch, politeness and extract), [`settings`] (flags, `GLEANER_*` variables, TOML),
//! [`supervision`] (restart policy, typed asks), [`cluster`] (membership,
//! peers, wire, placement, the cluster port's guard), [`pipeline`]
//! (scrapers, aggregators, endpoints, replication), [`isolation`] (worker
//! containers), [`delivery`] (webhooks), [`control`] (the supervision root, the source registry, the
//! views), [`http`] (routes), then the two processes: [`app`] (a node) and
//! [`worker`] (one isolated source); [`telemetry`] sets up tracing for both.

#![forbid(unsafe_code)]

pub mod app;
pub mod cluster;
pub mod control;
pub mod delivery;
pub mod domain;
pub mod events;
pub mod http;
pub mod instruments;
pub mod isolation;
pub mod pipeline;
pub mod scrape;
pub mod settings;
pub mod store;
pub mod supervision;
pub mod telemetry;
pub mod worker;
