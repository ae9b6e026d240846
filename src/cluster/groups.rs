//! Registry and process-group names, in one place.

/// The node's Orchestrator (admin writes, source status).
pub const ORCHESTRATOR: &str = "gleaner.orchestrator";
/// The node's CollectionSupervisor (collection summaries, aggregators).
pub const COLLECTIONS: &str = "gleaner.collections";
/// The node's ScraperSupervisor (what runs here, for peers asking).
pub const SCRAPERS: &str = "gleaner.scrapers";
/// The node's WorkerSupervisor (worker containers of isolated sources).
pub const WORKERS: &str = "gleaner.workers";
/// The node's Replicator (catches up on collections from peers).
pub const REPLICATOR: &str = "gleaner.replicator";
/// The node's Webhooks actor (the webhook registry, its senders).
pub const WEBHOOKS: &str = "gleaner.webhooks";
/// The node's SourceFiles actor (the sources directory).
pub const SOURCE_FILES: &str = "gleaner.source_files";
/// The process group every node's Peer actor joins.
pub const PEERS: &str = "gleaner.peers";

/// The registered name of a node's Peer actor: unique per process start, so
/// a restarted node's actor never collides with its predecessor's proxy.
pub fn peer(boot: &str) -> String {
    format!("gleaner.peer.{boot}")
}
