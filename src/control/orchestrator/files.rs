//! Sources as files: the sources directory as the SourceFiles actor read it
//! becomes registry writes through the same path as the API's (validated
//! specs, records flushed, then sent to every peer).
//!
//! The sync is idempotent: a source whose file states what the registry
//! already holds (same spec, same file) is not written, so every node of a
//! cluster may hold the same directory and apply it: the first node writes,
//! the others find nothing to do. Two nodes writing the same spec at once
//! write two versions of one record; last-writer-wins keeps one, and since
//! both carry the same spec, no scraper restarts (the ScraperSupervisor
//! ignores an unchanged spec).

use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// The sources directory as read: what each good file defines, and which
/// files are broken (their sources stay as they were).
#[derive(Debug, Clone, Default)]
pub struct FileSync {
    /// Good files by name, with the specs each defines.
    pub good: BTreeMap<String, Vec<SourceSpec>>,
    /// Files that could not be read or parsed.
    pub broken: BTreeSet<String>,
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FileSyncOutcome {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub deleted: Vec<String>,
}

impl OrchestratorState {
    /// Applies the directory: creates or updates each file's sources (taking
    /// over an API-made source of the same id: the file is the truth),
    /// deletes file-managed sources whose file is gone or no longer names
    /// them, and leaves alone those of broken files.
    pub(super) async fn sync_files(&self, sync: FileSync, reply: Reply<FileSyncOutcome>) {
        let result = self.apply_files(sync).await;
        let _ = reply.send(result);
    }

    async fn apply_files(&self, sync: FileSync) -> Result<FileSyncOutcome, AdminError> {
        let records: BTreeMap<String, SourceRecord> = self
            .blocking(|s| s.sources())
            .await?
            .into_iter()
            .map(|r| (r.spec.id.clone(), r))
            .collect();
        let now = Utc::now();
        let mut outcome = FileSyncOutcome::default();
        let mut writes = Vec::new();
        let mut named = BTreeSet::new();
        for (file, specs) in &sync.good {
            for spec in specs {
                named.insert(spec.id.clone());
                let previous = records.get(&spec.id);
                let live = previous.filter(|p| !p.deleted);
                let same = live.is_some_and(|p| {
                    p.managed_by == ManagedBy::File
                        && p.file.as_deref() == Some(file.as_str())
                        && p.spec == *spec
                });
                if same {
                    continue;
                }
                match live {
                    Some(_) => outcome.updated.push(spec.id.clone()),
                    None => outcome.created.push(spec.id.clone()),
                }
                writes.push(SourceRecord {
                    version: Version::next(previous.map(|p| &p.version), &self.args.node_id),
                    spec: spec.clone(),
                    deleted: false,
                    created_at: live.map_or(now, |p| p.created_at),
                    updated_at: now,
                    managed_by: ManagedBy::File,
                    file: Some(file.clone()),
                });
            }
        }
        for record in records.values() {
            let Some(file) = record.file.as_deref() else {
                continue;
            };
            let gone = !record.deleted
                && record.managed_by == ManagedBy::File
                && !sync.broken.contains(file)
                && !named.contains(&record.spec.id);
            if gone {
                outcome.deleted.push(record.spec.id.clone());
                writes.push(SourceRecord {
                    version: Version::next(Some(&record.version), &self.args.node_id),
                    deleted: true,
                    updated_at: now,
                    ..record.clone()
                });
            }
        }
        if writes.is_empty() {
            return Ok(outcome);
        }
        let saved = writes.clone();
        self.blocking(move |s| {
            for record in &saved {
                s.put_source(record)?;
            }
            s.flush()
        })
        .await?;
        for record in &writes {
            let (id, file) = (&record.spec.id, record.file.as_deref().unwrap_or_default());
            let change = if record.deleted {
                tracing::info!(source = %id, %file, "source deleted: its file no longer names it");
                "deleted"
            } else if outcome.created.contains(id) {
                tracing::info!(source = %id, %file, url = %record.spec.url, "source created from its file");
                "created"
            } else {
                tracing::info!(source = %id, %file, "source replaced from its file");
                "replaced"
            };
            self.changed(id, change);
            self.reconcile_one(record);
        }
        // To every peer now (gossip carries them to any that miss it).
        for chunk in writes.chunks(200) {
            self.args.cluster.cast_all(&Notice::Sources(chunk.to_vec()));
        }
        Ok(outcome)
    }
}
