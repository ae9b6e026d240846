//! Registry and process-group names, in one place.

/// The node's Orchestrator (admin writes, source status).
pub const ORCHESTRATOR: &str = "gleaner.orchestrator";
/// The node's CollectionSupervisor (collection summaries, aggregators).
pub const COLLECTIONS: &str = "gleaner.collections";
