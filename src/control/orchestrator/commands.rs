//! One method per admin command the Orchestrator takes (its `handle` only
//! dispatches), and how writes are answered: once a peer has the record too.

use super::*;
use crate::domain::CollectionTombstone;

/// How long an admin write waits for a peer to store the record too.
pub const REPLICATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl OrchestratorState {
    /// Creates a source: 409 if its id is taken (a deleted one may be created again).
    pub(super) async fn create(&self, spec: SourceSpec, reply: Reply<SourceView>) {
        let result = async {
            let id = spec.id.clone();
            let previous = self.blocking(move |s| s.source(&id)).await?;
            if previous.as_ref().is_some_and(|p| !p.deleted) {
                return Err(AdminError::Conflict(format!(
                    "source '{}' already exists",
                    spec.id
                )));
            }
            let now = Utc::now();
            let record = SourceRecord {
                version: Version::next(previous.as_ref().map(|p| &p.version), &self.args.node_id),
                spec,
                deleted: false,
                created_at: now,
                updated_at: now,
                managed_by: ManagedBy::Api,
                file: None,
            };
            let record = self.save(record).await?;
            tracing::info!(source = %record.spec.id, url = %record.spec.url, "source created");
            self.changed(&record.spec.id, "created");
            let view = self.view(record.clone()).await;
            Ok((record, view))
        }
        .await;
        self.answer_write(reply, result);
    }

    /// Replaces an existing source's spec.
    pub(super) async fn replace(&self, spec: SourceSpec, reply: Reply<SourceView>) {
        let result = async {
            let previous = self.editable(&spec.id).await?;
            self.replace_with(previous, spec).await
        }
        .await;
        self.answer_write(reply, result);
    }

    /// Applies a JSON merge patch (RFC 7396) to a source's spec; the result
    /// is validated like a replacement.
    pub(super) async fn patch(
        &self,
        id: String,
        patch: serde_json::Value,
        reply: Reply<SourceView>,
    ) {
        let result = async {
            let previous = self.editable(&id).await?;
            let mut merged = serde_json::to_value(&previous.spec).map_err(store_err)?;
            json_patch::merge(&mut merged, &patch);
            if merged
                .get("id")
                .is_some_and(|given| *given != serde_json::json!(id))
            {
                return Err(AdminError::Invalid(crate::domain::SpecError::new(
                    "id",
                    format!("must match the path's id '{id}'"),
                )));
            }
            let spec = SourceSpec::from_value(merged).map_err(AdminError::Invalid)?;
            spec.validate().map_err(AdminError::Invalid)?;
            self.replace_with(previous, spec).await
        }
        .await;
        self.answer_write(reply, result);
    }

    /// A live source the API may change: 409 for a file-managed one.
    async fn editable(&self, id: &str) -> Result<SourceRecord, AdminError> {
        let record = self.existing(id).await?;
        if record.managed_by == ManagedBy::File {
            return Err(AdminError::ManagedByFile {
                id: id.to_owned(),
                file: record.file.unwrap_or_default(),
            });
        }
        Ok(record)
    }

    async fn replace_with(
        &self,
        previous: SourceRecord,
        spec: SourceSpec,
    ) -> Result<(SourceRecord, Result<SourceView, AdminError>), AdminError> {
        let record = SourceRecord {
            version: Version::next(Some(&previous.version), &self.args.node_id),
            spec,
            deleted: false,
            created_at: previous.created_at,
            updated_at: Utc::now(),
            managed_by: ManagedBy::Api,
            file: None,
        };
        let record = self.save(record).await?;
        tracing::info!(source = %record.spec.id, "source replaced");
        self.changed(&record.spec.id, "replaced");
        let view = self.view(record.clone()).await;
        Ok((record, view))
    }

    /// Deletes a source: a tombstone, so no stale copy can bring it back.
    pub(super) async fn delete(&self, id: String, reply: Reply<()>) {
        let result = async {
            let previous = self.editable(&id).await?;
            let record = SourceRecord {
                version: Version::next(Some(&previous.version), &self.args.node_id),
                deleted: true,
                updated_at: Utc::now(),
                ..previous
            };
            let record = self.save(record).await?;
            tracing::info!(source = %id, "source deleted");
            self.changed(&id, "deleted");
            Ok((record, Ok(())))
        }
        .await;
        self.answer_write(reply, result);
    }

    /// Runs a source now, here or on its owner.
    pub(super) async fn run_now(&self, id: String, reply: Reply<()>) {
        let result = async {
            let record = self.existing(&id).await?;
            if !record.spec.enabled {
                return Err(AdminError::Conflict(format!("source '{id}' is disabled")));
            }
            if record.spec.isolated {
                return Err(AdminError::Conflict(
                    "an isolated source runs on its schedule in its worker container".into(),
                ));
            }
            let owner = self.args.cluster.owner_of(&id);
            if let Some(owner) = owner.filter(|o| *o != self.args.node_id) {
                // The owner runs it: ask it, off this mailbox.
                return Ok(Some(owner));
            }
            let id = id.clone();
            match ask(
                &self.scrapers,
                |r| ScraperSupervisorMsg::RunNow(id, r),
                ASK_TIMEOUT,
            )
            .await
            {
                Ok(r) => r.map(|()| None).map_err(AdminError::Conflict),
                Err(e) => Err(AdminError::Unavailable(e.to_string())),
            }
        }
        .await;
        match result {
            Ok(Some(owner)) => {
                let cluster = self.args.cluster.clone();
                tokio::spawn(async move {
                    let asked = cluster
                        .call(&owner, &Request::RunNow(id), ASK_TIMEOUT)
                        .await;
                    let _ = reply.send(match asked {
                        Ok(Response::Ok) => Ok(()),
                        Ok(Response::Error(e)) => Err(AdminError::Conflict(e)),
                        Ok(other) => {
                            Err(AdminError::Store(format!("unexpected answer: {other:?}")))
                        }
                        Err(e) => Err(AdminError::Unavailable(e.to_string())),
                    });
                });
            }
            other => {
                let _ = reply.send(other.map(|_| ()));
            }
        }
    }

    /// One source's view.
    pub(super) async fn get(&self, id: String, reply: Reply<SourceView>) {
        let result = async { self.view(self.existing(&id).await?).await }.await;
        let _ = reply.send(result);
    }

    /// Every source's view.
    pub(super) async fn list(&self, reply: Reply<Vec<SourceView>>) {
        let result = async { Ok(self.list_live().await?.sources) }.await;
        let _ = reply.send(result);
    }

    /// Every source's view with the live state it was built from.
    pub(super) async fn list_with_live(&self, reply: Reply<LiveSources>) {
        let _ = reply.send(self.list_live().await);
    }

    /// A source's recent runs, newest first.
    pub(super) async fn runs(&self, id: String, limit: usize, reply: Reply<Vec<RunRecord>>) {
        let result = async {
            self.existing(&id).await?;
            self.blocking(move |s| s.runs(&id, limit)).await
        }
        .await;
        let _ = reply.send(result);
    }

    /// Answers an admin write: at once if it failed, else once replicated.
    pub(super) fn answer_write<T: Send + 'static>(
        &self,
        reply: Reply<T>,
        result: Result<(SourceRecord, Result<T, AdminError>), AdminError>,
    ) {
        match result {
            Ok((record, answer)) => self.reply_after_replicated(&record, reply, answer),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Replies once a peer has stored `record` too (bounded; see [`REPLICATE_TIMEOUT`]).
    pub(super) fn reply_after_replicated<T: Send + 'static>(
        &self,
        record: &SourceRecord,
        reply: Reply<T>,
        result: Result<T, AdminError>,
    ) {
        let pending = self
            .args
            .cluster
            .ask_all(&Request::Sources(vec![record.clone()]), REPLICATE_TIMEOUT);
        if pending.asked() == 0 {
            let _ = reply.send(result);
            return;
        }
        let id = record.spec.id.clone();
        tokio::spawn(async move {
            if pending.first(|r| matches!(r, Response::Ok)).await.is_none() {
                tracing::warn!(source = %id, "no peer stored the source in time; gossip will carry it");
            }
            let _ = reply.send(result);
        });
    }
}

impl OrchestratorState {
    /// Sources owned here per state: the disabled ones counted here, the
    /// others by the supervisors (scrapers, worker containers), off this
    /// mailbox.
    pub(super) fn state_counts(&self, reply: Reply<Vec<(SourceState, u64)>>) {
        let disabled = self
            .disabled_here
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len() as u64;
        let (scrapers, workers) = (self.scrapers.clone(), self.workers.clone());
        tokio::spawn(async move {
            let mut counts =
                match ask(&scrapers, ScraperSupervisorMsg::StateCounts, ASK_TIMEOUT).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = reply.send(Err(AdminError::Unavailable(e.to_string())));
                        return;
                    }
                };
            let mut isolated = BTreeMap::new();
            add_worker_runtimes(&mut isolated, &workers).await;
            for runtime in isolated.values() {
                match counts.iter_mut().find(|(s, _)| *s == runtime.state) {
                    Some(c) => c.1 += 1,
                    None => counts.push((runtime.state, 1)),
                }
            }
            counts.push((SourceState::Disabled, disabled));
            let _ = reply.send(Ok(counts));
        });
    }

    /// Deletes a collection's data on every node: refused while a source
    /// feeds it; answered once it is durable here and on one peer (or none
    /// is up, or none answered in time: the peers' Replicators then follow
    /// the tombstone within a round).
    pub(super) async fn drop_collection(&self, name: String, reply: Reply<()>) {
        let checked = async {
            let n = name.clone();
            let (exists, feeding, previous) = self
                .blocking(move |s| {
                    let exists = s.collection(&n)?.is_some();
                    let feeding: Vec<String> = s
                        .sources()?
                        .into_iter()
                        .filter(|r| !r.deleted && r.spec.collection == n)
                        .map(|r| r.spec.id)
                        .collect();
                    Ok((exists, feeding, s.tombstone(&n)?))
                })
                .await?;
            if !feeding.is_empty() {
                return Err(AdminError::CollectionInUse {
                    name: name.clone(),
                    sources: feeding,
                });
            }
            if !exists {
                return Err(AdminError::CollectionNotFound(name.clone()));
            }
            Ok(CollectionTombstone {
                version: Version::next(previous.map(|p| p.version).as_ref(), &self.args.node_id),
                name: name.clone(),
            })
        }
        .await;
        let tombstone = match checked {
            Ok(t) => t,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        // Off this mailbox: deleting a large collection takes a while.
        let collections = self.args.collections.clone();
        let cluster = self.args.cluster.clone();
        tokio::spawn(async move {
            let result = async {
                let drop = |r| CollectionSupervisorMsg::Drop(tombstone.clone(), r);
                match ask(&collections, drop, ASK_TIMEOUT * 6).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(AdminError::Store(e)),
                    Err(e) => return Err(AdminError::Unavailable(e.to_string())),
                }
                let pending =
                    cluster.ask_all(&Request::DropCollection(tombstone.clone()), REPLICATE_TIMEOUT);
                if pending.asked() > 0
                    && pending.first(|r| matches!(r, Response::Ok)).await.is_none()
                {
                    tracing::warn!(collection = %tombstone.name, "no peer deleted the collection in time; their replicators will");
                }
                Ok(())
            }
            .await;
            let _ = reply.send(result);
        });
    }
}
