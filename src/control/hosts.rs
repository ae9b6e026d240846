//! The replicated host registry: operators' overrides of a host's
//! politeness policy (`PUT /api/v1/hosts/{host}`, reset with `DELETE`),
//! kept like the source registry: each write is flushed before it is
//! acknowledged and sent to every peer (the answer waits until one peer has
//! it too, at most [`REPLICATE_TIMEOUT`]); conflicts resolve last writer wins
//! on the version; a reset is a tombstone; every [`GOSSIP_EVERY`] and at each
//! membership change each node sends its versions, and a peer that holds
//! newer records pushes them back. Every record merged or written is applied
//! to the node's [`Politeness`], whose host gates read it.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;

use crate::cluster::handle::Answer;
use crate::cluster::wire::{Notice, Request, Response};
use crate::cluster::Cluster;
use crate::control::orchestrator::{GOSSIP_EVERY, REPLICATE_TIMEOUT};
use crate::domain::{HostOverride, HostRecord, Version};
use crate::scrape::politeness::Politeness;
use crate::store::{Store, StoreError};

/// Records per push to a peer.
const PUSH_CHUNK: usize = 200;

/// Why a host write was refused.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("host '{0}' has no stored policy")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the storage task failed: {0}")]
    Task(String),
}

/// The registry; cheap to clone.
#[derive(Clone)]
pub struct HostRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    cluster: Cluster,
    politeness: Politeness,
    /// One write at a time on this node, so versions follow each other.
    writes: tokio::sync::Mutex<()>,
}

impl HostRegistry {
    pub fn new(store: Store, cluster: Cluster, politeness: Politeness) -> HostRegistry {
        HostRegistry {
            inner: Arc::new(Inner {
                store,
                cluster,
                politeness,
                writes: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The node's politeness state the registry feeds.
    pub fn politeness(&self) -> &Politeness {
        &self.inner.politeness
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> crate::store::Result<T> + Send + 'static,
    ) -> Result<T, HostsError> {
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| HostsError::Task(e.to_string()))?
            .map_err(HostsError::from)
    }

    fn apply(&self, record: &HostRecord) {
        let policy = (!record.deleted).then_some(record.policy);
        self.inner.politeness.set_override(&record.host, policy);
    }

    /// Applies the stored overrides, then keeps exchanging versions with
    /// peers (every [`GOSSIP_EVERY`], and when membership changes).
    pub async fn start(&self) -> Result<(), HostsError> {
        for record in self.blocking(|s| s.hosts()).await? {
            self.apply(&record);
        }
        let registry = self.clone();
        let mut changes = self.inner.cluster.changes();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(GOSSIP_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    changed = changes.changed() => if changed.is_err() { return },
                }
                if let Err(e) = registry.gossip().await {
                    tracing::warn!(error = %e, "host gossip failed");
                }
            }
        });
        Ok(())
    }

    /// The stored override of `host`, if any.
    pub async fn get(&self, host: &str) -> Result<Option<HostOverride>, HostsError> {
        let key = host.to_owned();
        let record = self.blocking(move |s| s.host(&key)).await?;
        Ok(record.filter(|r| !r.deleted).map(|r| r.policy))
    }

    /// Stores `policy` as `host`'s override (flushed, then replicated).
    pub async fn put(&self, host: String, policy: HostOverride) -> Result<HostRecord, HostsError> {
        self.write(host, Some(policy)).await
    }

    /// Removes `host`'s override: the defaults apply again.
    pub async fn reset(&self, host: String) -> Result<HostRecord, HostsError> {
        self.write(host, None).await
    }

    async fn write(
        &self,
        host: String,
        policy: Option<HostOverride>,
    ) -> Result<HostRecord, HostsError> {
        let record = {
            let _one = self.inner.writes.lock().await;
            let key = host.clone();
            let previous = self.blocking(move |s| s.host(&key)).await?;
            if policy.is_none() && previous.as_ref().is_none_or(|p| p.deleted) {
                return Err(HostsError::NotFound(host));
            }
            let record = HostRecord {
                version: Version::next(
                    previous.as_ref().map(|p| &p.version),
                    &self.inner.cluster.me().node_id,
                ),
                deleted: policy.is_none(),
                policy: policy.unwrap_or_default(),
                host,
                updated_at: Utc::now(),
            };
            let saved = record.clone();
            self.blocking(move |s| {
                s.put_host(&saved)?;
                s.flush()
            })
            .await?;
            self.apply(&record);
            record
        };
        tracing::info!(host = %record.host, reset = record.deleted, policy = ?record.policy, "host policy stored");
        self.replicate(&record).await;
        Ok(record)
    }

    /// Waits until one peer has stored `record` too (bounded).
    async fn replicate(&self, record: &HostRecord) {
        let pending = self
            .inner
            .cluster
            .ask_all(&Request::Hosts(vec![record.clone()]), REPLICATE_TIMEOUT);
        if pending.asked() == 0 {
            return;
        }
        if pending.first(|r| matches!(r, Response::Ok)).await.is_none() {
            tracing::warn!(host = %record.host, "no peer stored the host policy in time; gossip will carry it");
        }
    }

    /// Peers' records: keep the newer; answer once durable when asked.
    pub async fn on_merge(&self, records: Vec<HostRecord>, answer: Option<Answer>) {
        let result = self.merge(records).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "merging peers' host records failed");
        }
        if let Some(answer) = answer {
            answer.send(match result {
                Ok(_) => Response::Ok,
                Err(e) => Response::Error(e.to_string()),
            });
        }
    }

    /// Keeps each record newer than ours; returns how many were kept.
    pub async fn merge(&self, records: Vec<HostRecord>) -> Result<usize, HostsError> {
        let _one = self.inner.writes.lock().await;
        let kept = self
            .blocking(move |s| {
                let mut kept = Vec::new();
                for record in records {
                    // A peer's record is checked as an operator's would be.
                    let normal = crate::domain::host::normalise_host(&record.host);
                    if normal.as_deref() != Ok(record.host.as_str())
                        || record.policy.validate().is_err()
                    {
                        continue;
                    }
                    let newer = s
                        .host(&record.host)?
                        .is_none_or(|local| local.version < record.version);
                    if newer {
                        s.put_host(&record)?;
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
            tracing::info!(host = %record.host, reset = record.deleted, from = %record.version.node, "host policy merged from a peer");
            self.apply(record);
        }
        Ok(kept.len())
    }

    /// Sends our versions to every peer.
    async fn gossip(&self) -> Result<(), HostsError> {
        if self.inner.cluster.node_peers().is_empty() {
            return Ok(());
        }
        let versions = self
            .blocking(|s| {
                Ok(s.hosts()?
                    .into_iter()
                    .map(|r| (r.host, r.version))
                    .collect::<BTreeMap<_, _>>())
            })
            .await?;
        self.inner.cluster.cast_all(&Notice::HostDigest {
            from: self.inner.cluster.me().node_id.clone(),
            versions,
        });
        Ok(())
    }

    /// Pushes to `peer` every record newer than its `versions`.
    pub async fn push_newer(&self, peer: String, versions: BTreeMap<String, Version>) {
        let newer = match self.blocking(|s| s.hosts()).await {
            Ok(all) => all
                .into_iter()
                .filter(|r| versions.get(&r.host).is_none_or(|v| *v < r.version))
                .collect::<Vec<_>>(),
            Err(e) => {
                tracing::warn!(%peer, error = %e, "host records unreadable");
                return;
            }
        };
        for chunk in newer.chunks(PUSH_CHUNK) {
            self.inner
                .cluster
                .cast_to(&peer, &Notice::Hosts(chunk.to_vec()));
        }
    }
}
