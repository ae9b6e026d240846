//! The replicated source registry: records saved and flushed before any
//! acknowledgement, gossip of versions, merge of peers' newer records
//! (last-writer-wins), and reconciliation of what runs on this node.

use super::*;

/// How often the node sends its source versions to its peers.
pub const GOSSIP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Records per push to a peer.
const PUSH_CHUNK: usize = 200;

impl OrchestratorState {
    /// Membership changed: reconcile, and exchange versions with peers.
    pub(super) async fn on_membership(&self) {
        if let Err(e) = self.reconcile_all().await {
            tracing::error!(error = %e, "reconcile after a membership change failed");
        }
        if let Err(e) = self.gossip().await {
            tracing::warn!(error = %e, "gossip failed");
        }
    }

    /// Time to send our versions to peers.
    pub(super) async fn on_gossip(&self) {
        if let Err(e) = self.gossip().await {
            tracing::warn!(error = %e, "gossip failed");
        }
    }

    /// A peer's versions: push it what it lacks.
    pub(super) async fn on_digest(&self, from: String, versions: BTreeMap<String, Version>) {
        if let Err(e) = self.push_newer(&from, versions).await {
            tracing::warn!(peer = %from, error = %e, "push to peer failed");
        }
    }

    /// Peers' records: keep the newer, and answer once durable when asked.
    pub(super) async fn on_merge(&self, records: Vec<SourceRecord>, answer: Option<Answer>) {
        let result = self.merge(records).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "merging peers' source records failed");
        }
        if let Some(answer) = answer {
            answer.send(match result {
                Ok(_) => Response::Ok,
                Err(e) => Response::Error(e.to_string()),
            });
        }
    }

    /// Does this node run the source?
    pub(super) fn runs_here(&self, record: &SourceRecord) -> bool {
        let spec = &record.spec;
        !record.deleted && spec.enabled && !spec.isolated && self.args.cluster.owns(&spec.id)
    }

    /// Sends our versions to every peer.
    pub(super) async fn gossip(&self) -> Result<(), AdminError> {
        if self.args.cluster.node_peers().is_empty() {
            return Ok(());
        }
        let versions = self
            .blocking(|s| {
                Ok(s.sources()?
                    .into_iter()
                    .map(|r| (r.spec.id, r.version))
                    .collect::<BTreeMap<_, _>>())
            })
            .await?;
        self.args.cluster.cast_all(&Notice::SourceDigest {
            from: self.args.node_id.clone(),
            versions,
        });
        Ok(())
    }

    /// Pushes to `peer` every record newer than its `versions`.
    pub(super) async fn push_newer(
        &self,
        peer: &str,
        versions: BTreeMap<String, Version>,
    ) -> Result<(), AdminError> {
        let newer: Vec<SourceRecord> = self
            .blocking(|s| s.sources())
            .await?
            .into_iter()
            .filter(|r| versions.get(&r.spec.id).is_none_or(|v| *v < r.version))
            .collect();
        for chunk in newer.chunks(PUSH_CHUNK) {
            self.args
                .cluster
                .cast_to(peer, &Notice::Sources(chunk.to_vec()));
        }
        Ok(())
    }

    /// Keeps each record newer than ours; returns those kept.
    pub(super) async fn merge(
        &self,
        records: Vec<SourceRecord>,
    ) -> Result<Vec<SourceRecord>, AdminError> {
        let kept = self
            .blocking(move |s| {
                let mut kept = Vec::new();
                for record in records {
                    if !crate::domain::spec::is_slug(&record.spec.id) {
                        continue;
                    }
                    let newer = s
                        .source(&record.spec.id)?
                        .is_none_or(|local| local.version < record.version);
                    if newer {
                        s.put_source(&record)?;
                        kept.push(record);
                    }
                }
                if !kept.is_empty() {
                    s.flush()?;
                }
                Ok(kept)
            })
            .await?;
        for record in &kept {
            tracing::info!(source = %record.spec.id, deleted = record.deleted, from = %record.version.node, "source record merged from a peer");
            self.changed(
                &record.spec.id,
                if record.deleted {
                    "deleted"
                } else {
                    "replicated"
                },
            );
            self.reconcile_one(record);
        }
        Ok(kept)
    }

    pub(super) fn reconcile_one(&self, record: &SourceRecord) {
        let spec = &record.spec;
        {
            let mut disabled = self.disabled_here.lock().unwrap_or_else(|e| e.into_inner());
            if !record.deleted && !spec.enabled && self.args.cluster.owns(&spec.id) {
                disabled.insert(spec.id.clone());
            } else {
                disabled.remove(&spec.id);
            }
        }
        let msg = if self.runs_here(record) {
            ScraperSupervisorMsg::Ensure(Box::new(spec.clone()))
        } else {
            ScraperSupervisorMsg::Remove(spec.id.clone())
        };
        if let Err(e) = self.scrapers.cast(msg) {
            tracing::error!(source = %spec.id, error = %e, "scraper supervisor unreachable");
        }
        let isolated_here =
            !record.deleted && spec.enabled && spec.isolated && self.args.cluster.owns(&spec.id);
        let msg = if isolated_here {
            let version = format!("{}-{}", record.version.millis, record.version.node);
            WorkerSupervisorMsg::Ensure(Box::new(spec.clone()), version)
        } else {
            WorkerSupervisorMsg::Remove(spec.id.clone())
        };
        if let Err(e) = self.workers.cast(msg) {
            tracing::error!(source = %spec.id, error = %e, "worker supervisor unreachable");
        }
    }

    pub(super) async fn reconcile_all(&self) -> Result<(), AdminError> {
        for record in self.blocking(|s| s.sources()).await? {
            self.reconcile_one(&record);
        }
        Ok(())
    }

    /// Writes a record and flushes it before anything is acknowledged.
    pub(super) async fn save(&self, record: SourceRecord) -> Result<SourceRecord, AdminError> {
        let saved = record.clone();
        self.blocking(move |s| {
            s.put_source(&saved)?;
            s.flush()
        })
        .await?;
        self.reconcile_one(&record);
        Ok(record)
    }
}
