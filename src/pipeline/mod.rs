//! The pipeline: what turns a source into items in a collection, on one node.
//!
//! ```text
//! ScraperSupervisor                 one Scraper per source placed here; backoff, intensity, healing
//! └── Scraper{source}               on its schedule: fetch -> extract (scrape) -> ItemBatch
//!     (one node-wide Timer sends each scraper its Tick when its run is due)
//!                                        │ Apply (reply once durable here and on one peer)
//! CollectionSupervisor               one pair per collection, spawned on first use
//! ├── Aggregator{collection}        numbers, upserts and logs each batch (store), group commit,
//! │                                 sends it to every peer; applies peers' batches in order
//! └── Endpoint{collection}          the collection's summary (counts, last update) for queries
//! Replicator                         pulls from peers what live replication missed (log or snapshot)
//! ```
//!
//! In: source specs to run (`ScraperSupervisorMsg::Ensure`, from the control
//! plane), batches and snapshot pages from peers (through `cluster`). Out:
//! items in the store, batches to peers, run notices, events.

pub mod aggregator;
pub mod collection_supervisor;
pub mod endpoint;
pub mod replicator;
pub mod scraper;
pub mod scraper_supervisor;
pub mod timer;
