//! Webhooks: the node's actor for webhooks (registered as
//! `gleaner.webhooks`). HTTP sends it the admin commands (create, replace,
//! delete, get, list); peers their records (through `control::inbound`). It
//! keeps the replicated registry like the Orchestrator keeps sources: each
//! write flushed, then sent to every peer, answered once one has it (or
//! none is up); last writer wins; versions gossiped every few seconds and
//! on membership changes. And it runs a sender task ([`super::sender`]) for
//! each webhook placement gives this node, restarted with a changed spec
//! and stopped when the webhook moves or is deleted.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use serde::Serialize;
use tokio::task::JoinHandle;

use super::sender::{self, SenderArgs};
use crate::cluster::handle::Answer;
use crate::cluster::wire::{Notice, Request, Response};
use crate::cluster::Cluster;
use crate::domain::webhook::{placement_key, MASK};
use crate::domain::{DeliveryRecord, Version, WebhookRecord, WebhookSpec};
use crate::scrape::fetch::TargetPolicy;
use crate::store::{Flusher, Store, StoreError};

/// How often the node sends its webhook versions to its peers.
pub const GOSSIP_EVERY: Duration = Duration::from_secs(5);
/// How long an admin write waits for a peer to store the record too.
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(2);
/// Deliveries shown in one webhook's status, and in the list.
pub const DELIVERIES_SHOWN: usize = 20;
const DELIVERIES_LISTED: usize = 5;
/// Timeouts of one delivery attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Webhooks;

pub struct WebhooksArgs {
    pub store: Store,
    pub flusher: Flusher,
    pub cluster: Cluster,
    pub targets: TargetPolicy,
    pub node_name: String,
}

/// Why a webhook command was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook '{0}' not found")]
    NotFound(String),
    #[error("webhook '{0}' already exists")]
    Exists(String),
    #[error("{0}")]
    Store(String),
    #[error("{0}")]
    DiskFull(String),
    #[error("{0}")]
    StorageUnavailable(String),
}

impl From<StoreError> for WebhookError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DiskFull { .. } => WebhookError::DiskFull(e.to_string()),
            StoreError::Unavailable(_) => WebhookError::StorageUnavailable(e.to_string()),
            other => WebhookError::Store(other.to_string()),
        }
    }
}

type Reply<T> = RpcReplyPort<Result<T, WebhookError>>;

/// Where a webhook's deliveries stand.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Cursor {
    /// The last acknowledged delivery number (cluster-wide: every node
    /// continues the numbering).
    pub delivery: u64,
    /// The answering node, and its watermark over its own change feed of
    /// the collection (sequence numbers are per node).
    pub node: String,
    pub seq: u64,
    /// Deliveries built but not acknowledged yet (0 or 1).
    pub pending: usize,
}

/// A webhook's live status.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookStatus {
    /// The node that sends its deliveries (its name), once placement settled.
    pub owner: Option<String>,
    pub cursor: Cursor,
    /// The last deliveries, newest first.
    pub deliveries: Vec<DeliveryRecord>,
}

/// A webhook as the API shows it: the spec (secret masked) and its status.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    #[serde(flatten)]
    pub spec: WebhookSpec,
    pub created_at: chrono::DateTime<Utc>,
    pub updated_at: chrono::DateTime<Utc>,
    pub status: WebhookStatus,
}

#[derive(RactorMessage)]
pub enum WebhooksMsg {
    Create(WebhookSpec, Reply<WebhookView>),
    /// Replace; an empty or masked secret keeps the stored one.
    Replace(WebhookSpec, Reply<WebhookView>),
    Delete(String, Reply<()>),
    Get(String, Reply<WebhookView>),
    List(Reply<Vec<WebhookView>>),
    /// Membership changed: place again, and exchange versions.
    Membership,
    Gossip,
    Digest {
        from: String,
        versions: BTreeMap<String, Version>,
    },
    Merge(Vec<WebhookRecord>, Option<Answer>),
    /// What the debug view shows: the senders running here.
    Stats(RpcReplyPort<WebhooksStats>),
}

/// The Webhooks actor's snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct WebhooksStats {
    /// The webhooks this node sends (their sender tasks), by id.
    pub senders: Vec<String>,
}

pub struct WebhooksState {
    args: WebhooksArgs,
    client: reqwest::Client,
    /// The sender tasks running here, with the spec each runs.
    senders: HashMap<String, (WebhookSpec, JoinHandle<()>)>,
}

impl WebhooksState {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Store) -> crate::store::Result<T> + Send + 'static,
    ) -> Result<T, WebhookError> {
        let store = self.args.store.clone();
        tokio::task::spawn_blocking(move || f(store))
            .await
            .map_err(|e| WebhookError::Store(e.to_string()))?
            .map_err(WebhookError::from)
    }

    async fn existing(&self, id: &str) -> Result<WebhookRecord, WebhookError> {
        let key = id.to_owned();
        match self.blocking(move |s| s.webhook(&key)).await? {
            Some(r) if !r.deleted => Ok(r),
            _ => Err(WebhookError::NotFound(id.to_owned())),
        }
    }

    /// Starts, restarts or stops the sender of one webhook as placement says.
    fn reconcile(&mut self, record: &WebhookRecord) {
        let id = &record.spec.id;
        let here = !record.deleted && self.args.cluster.owns(&placement_key(id));
        let current = self
            .senders
            .get(id)
            .filter(|(spec, task)| *spec == record.spec && !task.is_finished())
            .is_some();
        if here && current {
            return;
        }
        if let Some((_, task)) = self.senders.remove(id) {
            task.abort();
            tracing::info!(webhook = %id, "webhook sender stopped");
        }
        if here {
            let args = SenderArgs {
                spec: record.spec.clone(),
                store: self.args.store.clone(),
                flusher: self.args.flusher.clone(),
                cluster: self.args.cluster.clone(),
                client: self.client.clone(),
                targets: self.args.targets.clone(),
                node_name: self.args.node_name.clone(),
            };
            let task = tokio::spawn(sender::run(args));
            self.senders.insert(id.clone(), (record.spec.clone(), task));
        }
    }

    async fn reconcile_all(&mut self) {
        match self.blocking(|s| s.webhooks()).await {
            Ok(records) => {
                for record in &records {
                    self.reconcile(record);
                }
            }
            Err(e) => tracing::error!(error = %e, "reading webhooks failed"),
        }
    }

    async fn view(&self, record: WebhookRecord, shown: usize) -> Result<WebhookView, WebhookError> {
        let id = record.spec.id.clone();
        let (delivery, seq, pending, deliveries) = self
            .blocking(move |s| {
                Ok((
                    s.hook_last_ack(&id)?,
                    s.hook_watermark(&id)?,
                    s.hook_pendings(&id)?.len(),
                    s.hook_records(&id, shown)?,
                ))
            })
            .await?;
        let cluster = &self.args.cluster;
        let owner = cluster
            .owner_of(&placement_key(&record.spec.id))
            .map(|o| cluster.name_of(&o).unwrap_or(o));
        Ok(WebhookView {
            spec: record.spec.masked(),
            created_at: record.created_at,
            updated_at: record.updated_at,
            status: WebhookStatus {
                owner,
                cursor: Cursor {
                    delivery,
                    node: self.args.node_name.clone(),
                    seq,
                    pending,
                },
                deliveries,
            },
        })
    }

    /// Writes a record, flushed, places it, and replies once a peer has it.
    async fn save<T: Send + 'static>(
        &mut self,
        record: WebhookRecord,
        reply: Reply<T>,
        answer: Result<T, WebhookError>,
    ) {
        let saved = record.clone();
        let stored = self
            .blocking(move |s| {
                s.put_webhook(&saved)?;
                if saved.deleted {
                    s.hook_forget(&saved.spec.id)?;
                }
                s.flush()
            })
            .await;
        if let Err(e) = stored {
            let _ = reply.send(Err(e));
            return;
        }
        self.reconcile(&record);
        let pending = self
            .args
            .cluster
            .ask_all(&Request::Webhooks(vec![record.clone()]), REPLICATE_TIMEOUT);
        if pending.asked() == 0 {
            let _ = reply.send(answer);
            return;
        }
        let id = record.spec.id.clone();
        tokio::spawn(async move {
            if pending.first(|r| matches!(r, Response::Ok)).await.is_none() {
                tracing::warn!(webhook = %id, "no peer stored the webhook in time; gossip will carry it");
            }
            let _ = reply.send(answer);
        });
    }

    async fn create(&mut self, spec: WebhookSpec, reply: Reply<WebhookView>) {
        let id = spec.id.clone();
        let previous = match self.blocking(move |s| s.webhook(&id)).await {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if previous.as_ref().is_some_and(|p| !p.deleted) {
            let _ = reply.send(Err(WebhookError::Exists(spec.id)));
            return;
        }
        let now = Utc::now();
        let record = WebhookRecord {
            version: Version::next(
                previous.as_ref().map(|p| &p.version),
                &self.args.cluster.me().node_id,
            ),
            spec,
            deleted: false,
            created_at: now,
            updated_at: now,
        };
        tracing::info!(webhook = %record.spec.id, url = %record.spec.url, collection = %record.spec.collection, "webhook created");
        let view = self.view(record.clone(), DELIVERIES_SHOWN).await;
        self.save(record, reply, view).await;
    }

    async fn replace(&mut self, mut spec: WebhookSpec, reply: Reply<WebhookView>) {
        let previous = match self.existing(&spec.id).await {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        if spec.secret.is_empty() || spec.secret == MASK {
            spec.secret = previous.spec.secret.clone();
        }
        let record = WebhookRecord {
            version: Version::next(Some(&previous.version), &self.args.cluster.me().node_id),
            spec,
            deleted: false,
            created_at: previous.created_at,
            updated_at: Utc::now(),
        };
        tracing::info!(webhook = %record.spec.id, "webhook replaced");
        let view = self.view(record.clone(), DELIVERIES_SHOWN).await;
        self.save(record, reply, view).await;
    }

    async fn delete(&mut self, id: String, reply: Reply<()>) {
        let previous = match self.existing(&id).await {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let record = WebhookRecord {
            version: Version::next(Some(&previous.version), &self.args.cluster.me().node_id),
            deleted: true,
            updated_at: Utc::now(),
            ..previous
        };
        tracing::info!(webhook = %id, "webhook deleted");
        self.save(record, reply, Ok(())).await;
    }

    async fn gossip(&self) {
        if self.args.cluster.node_peers().is_empty() {
            return;
        }
        match self.blocking(|s| s.webhooks()).await {
            Ok(records) => self.args.cluster.cast_all(&Notice::WebhookDigest {
                from: self.args.cluster.me().node_id.clone(),
                versions: records
                    .into_iter()
                    .map(|r| (r.spec.id, r.version))
                    .collect(),
            }),
            Err(e) => tracing::warn!(error = %e, "webhook gossip failed"),
        }
    }

    async fn push_newer(&self, peer: &str, versions: BTreeMap<String, Version>) {
        let Ok(records) = self.blocking(|s| s.webhooks()).await else {
            return;
        };
        let newer: Vec<WebhookRecord> = records
            .into_iter()
            .filter(|r| versions.get(&r.spec.id).is_none_or(|v| *v < r.version))
            .collect();
        for chunk in newer.chunks(200) {
            self.args
                .cluster
                .cast_to(peer, &Notice::Webhooks(chunk.to_vec()));
        }
    }

    async fn merge(&mut self, records: Vec<WebhookRecord>, answer: Option<Answer>) {
        let kept = self
            .blocking(move |s| {
                let mut kept = Vec::new();
                for record in records {
                    if !crate::domain::spec::is_slug(&record.spec.id) {
                        continue;
                    }
                    let newer = s
                        .webhook(&record.spec.id)?
                        .is_none_or(|local| local.version < record.version);
                    if newer {
                        s.put_webhook(&record)?;
                        if record.deleted {
                            s.hook_forget(&record.spec.id)?;
                        }
                        kept.push(record);
                    }
                }
                if !kept.is_empty() {
                    s.flush()?;
                }
                Ok(kept)
            })
            .await;
        let result = match kept {
            Ok(kept) => {
                for record in &kept {
                    tracing::info!(webhook = %record.spec.id, deleted = record.deleted, "webhook record merged from a peer");
                    self.reconcile(record);
                }
                Response::Ok
            }
            Err(e) => {
                tracing::error!(error = %e, "merging peers' webhook records failed");
                Response::Error(e.to_string())
            }
        };
        if let Some(answer) = answer {
            answer.send(result);
        }
    }
}

impl Actor for Webhooks {
    type Msg = WebhooksMsg;
    type State = WebhooksState;
    type Arguments = WebhooksArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: WebhooksArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let client = crate::scrape::fetch::guarded_client(
            &args.targets,
            CONNECT_TIMEOUT,
            ATTEMPT_TIMEOUT,
            &format!("gleaner/{} (webhook)", env!("CARGO_PKG_VERSION")),
        )?;
        let mut state = WebhooksState {
            args,
            client,
            senders: HashMap::new(),
        };
        // Subscribed first: a change during the first reconcile is not lost.
        state
            .args
            .cluster
            .notify_changes(myself.clone(), || WebhooksMsg::Membership);
        state.reconcile_all().await;
        myself.send_interval(GOSSIP_EVERY, || WebhooksMsg::Gossip);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for (_, (_, task)) in state.senders.drain() {
            task.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WebhooksMsg::Create(spec, reply) => state.create(spec, reply).await,
            WebhooksMsg::Replace(spec, reply) => state.replace(spec, reply).await,
            WebhooksMsg::Delete(id, reply) => state.delete(id, reply).await,
            WebhooksMsg::Get(id, reply) => {
                let result = match state.existing(&id).await {
                    Ok(r) => state.view(r, DELIVERIES_SHOWN).await,
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            WebhooksMsg::List(reply) => {
                let result = async {
                    let mut views = Vec::new();
                    for r in state.blocking(|s| s.webhooks()).await? {
                        if !r.deleted {
                            views.push(state.view(r, DELIVERIES_LISTED).await?);
                        }
                    }
                    Ok(views)
                }
                .await;
                let _ = reply.send(result);
            }
            WebhooksMsg::Membership => {
                state.reconcile_all().await;
                state.gossip().await;
            }
            WebhooksMsg::Gossip => {
                // Also restarts a sender task that ended.
                state.reconcile_all().await;
                state.gossip().await;
            }
            WebhooksMsg::Digest { from, versions } => state.push_newer(&from, versions).await,
            WebhooksMsg::Merge(records, answer) => state.merge(records, answer).await,
            WebhooksMsg::Stats(reply) => {
                let mut senders: Vec<String> = state
                    .senders
                    .iter()
                    .filter(|(_, (_, task))| !task.is_finished())
                    .map(|(id, _)| id.clone())
                    .collect();
                senders.sort();
                let _ = reply.send(WebhooksStats { senders });
            }
        }
        Ok(())
    }
}
