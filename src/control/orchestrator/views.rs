//! Status views of sources: the stored spec joined with its owner, its last
//! run, the live state of the supervisor that runs it, and its collection's
//! counts.

use super::*;

/// A source as the API returns it: its spec plus live status.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SourceView {
    #[serde(flatten)]
    pub spec: SourceSpec,
    pub status: SourceStatus,
    pub version: Version,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// `api`, or `file` for a source defined by a file of the sources
    /// directory (the API then refuses to change or delete it).
    pub managed_by: ManagedBy,
    /// The file that defines it, for a file-managed source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// Source views together with the live state they were assembled from, so a
/// caller that needs both asks the scrapers and collections once.
#[derive(Debug, Clone)]
pub struct LiveSources {
    pub sources: Vec<SourceView>,
    /// Each scraper's runtime on this node, by source id.
    pub runtimes: BTreeMap<String, SourceRuntime>,
    /// Each collection's summary, by name.
    pub collections: BTreeMap<String, CollectionSummary>,
}

/// A source's live status.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SourceStatus {
    /// The node that runs the source (its name); none while membership settles.
    pub owner: Option<String>,
    /// The owner's node id.
    pub owner_id: Option<String>,
    pub state: SourceState,
    pub last_run: Option<RunRecord>,
    pub next_run: Option<DateTime<Utc>>,
    /// Items in the collection last written by this source.
    pub items: u64,
    pub last_error: Option<String>,
    pub restarts: u64,
    /// `ok`, or `degraded` when the runs drift from what they used to yield
    /// (see `domain::health`); taken from the last run.
    pub health: crate::domain::Health,
    /// Why the source is degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_reason: Option<String>,
    /// The worker container of an isolated source.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<crate::domain::WorkerContainer>,
}

impl OrchestratorState {
    /// The live state of the sources run here (only `ids`, when given),
    /// and every collection's summary.
    pub(super) async fn live(
        &self,
        ids: Option<Vec<String>>,
    ) -> (
        BTreeMap<String, SourceRuntime>,
        BTreeMap<String, CollectionSummary>,
    ) {
        let mut runtimes = ask(
            &self.scrapers,
            |r| ScraperSupervisorMsg::Statuses(ids, r),
            ASK_TIMEOUT,
        )
        .await
        .unwrap_or_default();
        add_worker_runtimes(&mut runtimes, &self.workers).await;
        let summaries = ask(
            &self.args.collections,
            CollectionSupervisorMsg::Summaries,
            ASK_TIMEOUT,
        )
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.name.clone(), c))
        .collect();
        (runtimes, summaries)
    }

    pub(super) async fn views(
        &self,
        records: Vec<SourceRecord>,
    ) -> Result<Vec<SourceView>, AdminError> {
        Ok(self.views_live(records).await?.sources)
    }

    pub(super) async fn views_live(
        &self,
        records: Vec<SourceRecord>,
    ) -> Result<LiveSources, AdminError> {
        let ids: Vec<String> = records.iter().map(|r| r.spec.id.clone()).collect();
        // A few sources: ask for those alone (a create must not cost one
        // call per source of the node).
        let only = (ids.len() <= 16).then(|| ids.clone());
        let last_runs = self
            .blocking(move |s| {
                ids.iter()
                    .map(|id| Ok(s.runs(id, 1)?.pop()))
                    .collect::<crate::store::Result<Vec<_>>>()
            })
            .await?;
        let (runtimes, summaries) = self.live(only).await;
        let sources = records
            .into_iter()
            .zip(last_runs)
            .map(|(record, last_run)| {
                let spec = &record.spec;
                let runtime = runtimes.get(&spec.id);
                // The live scraper's last run is newer when the store could
                // not record it (a full disk); on a tie the stored copy wins
                // (it carries this node's judgement of drift, see inbound).
                let live_run = runtime
                    .and_then(|r| r.scraper.as_ref())
                    .and_then(|s| s.last_run.clone());
                let last_run = match (last_run, live_run) {
                    (Some(kept), Some(live)) if kept.started_at >= live.started_at => Some(kept),
                    (kept, live) => live.or(kept),
                };
                let (state, last_error) = if !spec.enabled {
                    (SourceState::Disabled, None)
                } else {
                    match runtime {
                        Some(r) => (r.state, r.last_error.clone()),
                        None => (SourceState::Scheduled, None),
                    }
                };
                let last_error =
                    last_error.or_else(|| last_run.as_ref().and_then(|r| r.error.clone()));
                let items = summaries
                    .get(&spec.collection)
                    .and_then(|c| c.by_source.get(&spec.id))
                    .copied()
                    .unwrap_or(0);
                let owner_id = self.args.cluster.owner_of(&spec.id);
                let health = last_run.as_ref().map(|r| r.health).unwrap_or_default();
                let health_reason = last_run.as_ref().and_then(|r| r.health_reason.clone());
                SourceView {
                    status: SourceStatus {
                        owner: owner_id
                            .as_deref()
                            .and_then(|id| self.args.cluster.name_of(id)),
                        owner_id,
                        state,
                        last_run,
                        next_run: runtime.and_then(|r| r.next_run),
                        items,
                        last_error,
                        restarts: runtime.map_or(0, |r| r.restarts),
                        health,
                        health_reason,
                        container: runtime.and_then(|r| r.container.clone()),
                    },
                    spec: record.spec,
                    version: record.version,
                    created_at: record.created_at,
                    updated_at: record.updated_at,
                    managed_by: record.managed_by,
                    file: record.file,
                }
            })
            .collect();
        Ok(LiveSources {
            sources,
            runtimes,
            collections: summaries,
        })
    }

    pub(super) async fn view(&self, record: SourceRecord) -> Result<SourceView, AdminError> {
        let mut views = self.views(vec![record]).await?;
        views.pop().ok_or_else(|| store_err("no view"))
    }

    /// Every live (not deleted) source, with the state its view came from.
    pub(super) async fn list_live(&self) -> Result<LiveSources, AdminError> {
        let records = self.blocking(|s| s.sources()).await?;
        self.views_live(records.into_iter().filter(|r| !r.deleted).collect())
            .await
    }
}
