//! The control plane of a node: the supervision root, the replicated
//! source registry and the replicated host registry ([`hosts`]).
//!
//! ```text
//! NodeSupervisor                     restarts its children together
//! ├── Orchestrator                   the source registry (gossip, merge, acks), placement
//! │                                  reconciliation, and the views of sources for the API
//! ├── CollectionSupervisor           (pipeline)
//! ├── ScraperSupervisor              (pipeline, under the Orchestrator)
//! ├── WorkerSupervisor               (isolation, under the Orchestrator)
//! ├── Replicator                     (pipeline)
//! └── SourceFiles                    the sources directory, applied through the Orchestrator
//! ```
//!
//! In: admin commands (from `http`, or from peers through `cluster`), member
//! changes. Out: which sources run here (to the pipeline and isolation),
//! source records to peers, views for the API.

pub mod hosts;
pub mod inbound;
pub mod node_supervisor;
pub mod orchestrator;
pub mod source_files;
pub mod views;
