//! What a source is doing on the node that runs it, as the supervisors report
//! it: plain data that crosses actors and nodes (the cluster's `Runtimes`
//! answer, the views of sources), so it lives here rather than in an actor.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::RunRecord;

/// Where a source's scraper is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    Scheduled,
    Running,
    BackingOff,
    Failed,
    Disabled,
}

/// A source's run counts on this node since it was placed here; kept by the
/// supervisor, so a scraper's restart does not lose them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Totals {
    pub runs: u64,
    pub errors: u64,
    pub pages: u64,
    pub items: u64,
}

/// A source's live status on its owner node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceRuntime {
    pub totals: Totals,
    pub state: SourceState,
    pub next_run: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// Restarts after failures since the spec was last set.
    pub restarts: u64,
    /// The live scraper's counters, when one runs.
    pub scraper: Option<ScraperStats>,
    /// The worker container, for an isolated source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<WorkerContainer>,
}

/// A scraper's snapshot. Its run counts are kept by the ScraperSupervisor
/// (`Totals`), which outlives the actor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScraperStats {
    pub source: String,
    pub running: bool,
    /// The last run, only while the store could not record it (a full
    /// disk): a recorded run is read from the store, and an idle source
    /// does not keep a second copy.
    pub last_run: Option<RunRecord>,
    pub next_run: Option<DateTime<Utc>>,
}

/// A worker container as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerContainer {
    pub id: String,
    pub name: String,
    pub source: String,
    /// The spec version it was started for.
    pub spec_version: String,
    /// The engine's state: created, running, exited, ...
    pub state: String,
}
