//! The node's answers to its peers: every notice and request a peer sends
//! (but heartbeats, which Membership takes) arrives here from the cluster's
//! Peer actor and is handed to the local actor in charge: the Orchestrator
//! for the source registry, the CollectionSupervisor for item batches, the
//! ScraperSupervisor and WorkerSupervisor for runtimes and runs, the store
//! for logs and snapshots and webhooks' delivery state, the Webhooks actor
//! for webhook records, the debug view for stats, the host registry for
//! host policies, and the node's host gates for permits. Nothing here blocks
//! the Peer: store work runs on the blocking pool, asks on their own tasks.

use ractor::RpcReplyPort;

use super::hosts::HostRegistry;
use crate::cluster::groups;
use crate::cluster::handle::Answer;
use crate::cluster::hosts::HostRouter;
use crate::cluster::peer::Inbound;
use crate::cluster::wire::{Notice, Request, Response};
use crate::control::orchestrator::OrchestratorMsg;
use crate::delivery::registry::WebhooksMsg;
use crate::isolation::worker_supervisor::{add_worker_runtimes, WorkerSupervisorMsg};
use crate::pipeline::aggregator::AggregatorMsg;
use crate::pipeline::collection_supervisor::CollectionSupervisorMsg;
use crate::pipeline::scraper_supervisor::ScraperSupervisorMsg;
use crate::scrape::fetch::Fetcher;
use crate::store::{LogSlice, Store};
use crate::supervision::{ask, find, ASK_TIMEOUT};

/// About how many bytes of batches one pull answer carries (far below the
/// cluster's frame limit).
const PULL_BYTES: usize = 4 * 1024 * 1024;

/// Starts Membership (the cluster listener behind its guard, heartbeats,
/// the Peer actor) with this node's router behind its Peer: how a node and
/// a worker both join the cluster.
pub async fn join_cluster(
    settings: crate::settings::ClusterSettings,
    listener: tokio::net::TcpListener,
    cluster: crate::cluster::Cluster,
    store: Store,
    started_at: chrono::DateTime<chrono::Utc>,
    hosts: HostSide,
) -> Result<
    (
        ractor::ActorRef<crate::cluster::membership::MembershipMsg>,
        tokio::task::JoinHandle<()>,
    ),
    ractor::SpawnErr,
> {
    if let Some(fetcher) = &hosts.fetcher {
        fetcher
            .politeness()
            .set_router(std::sync::Arc::new(HostRouter::new(cluster.clone())));
    }
    let inbound = std::sync::Arc::new(NodeInbound {
        store,
        cluster: cluster.clone(),
        started_at,
        hosts,
    });
    let args = crate::cluster::membership::MembershipArgs {
        settings,
        listener,
        cluster,
        inbound,
    };
    ractor::Actor::spawn(None, crate::cluster::membership::Membership, args).await
}

/// What the router needs of the node.
pub struct NodeInbound {
    pub store: Store,
    pub cluster: crate::cluster::Cluster,
    /// When this process started, for the stats answer.
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub hosts: HostSide,
}

/// The node's host gates and host registry: a node has both; a worker has
/// its fetcher (whose permits its owners grant) and no registry.
#[derive(Clone, Default)]
pub struct HostSide {
    /// The fetcher whose politeness holds this node's host gates; its
    /// permits are routed through the cluster once joined.
    pub fetcher: Option<Fetcher>,
    pub registry: Option<HostRegistry>,
}

/// Runs blocking store work and answers with its result.
fn answer_blocking(
    store: &Store,
    answer: Answer,
    f: impl FnOnce(&Store) -> crate::store::Result<Response> + Send + 'static,
) {
    let store = store.clone();
    tokio::spawn(async move {
        let result = tokio::task::spawn_blocking(move || f(&store)).await;
        answer.send(match result {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => Response::Error(e.to_string()),
            Err(e) => Response::Error(e.to_string()),
        });
    });
}

impl Inbound for NodeInbound {
    fn notice(&self, notice: Notice) {
        let args = self;
        match notice {
            // Membership takes heartbeats before they get here.
            Notice::Heartbeat(_) => {}
            Notice::SourceDigest { from, versions } => {
                if let Some(o) = find::<OrchestratorMsg>(groups::ORCHESTRATOR) {
                    let _ = o.cast(OrchestratorMsg::Digest { from, versions });
                }
            }
            Notice::Sources(records) => {
                if let Some(o) = find::<OrchestratorMsg>(groups::ORCHESTRATOR) {
                    let _ = o.cast(OrchestratorMsg::Merge(records, None));
                }
            }
            Notice::HostDigest { from, versions } => {
                if let Some(r) = args.hosts.registry.clone() {
                    tokio::spawn(async move { r.push_newer(from, versions).await });
                }
            }
            Notice::Hosts(records) => {
                if let Some(r) = args.hosts.registry.clone() {
                    tokio::spawn(async move { r.on_merge(records, None).await });
                }
            }
            Notice::Release(release) => {
                if let Some(f) = &args.hosts.fetcher {
                    f.politeness().release_local(release);
                }
            }
            Notice::HostPaused { host, until } => {
                if let Some(f) = &args.hosts.fetcher {
                    f.politeness().note_pause(&host, until);
                }
            }
            Notice::WebhookDigest { from, versions } => {
                if let Some(w) = find::<WebhooksMsg>(groups::WEBHOOKS) {
                    let _ = w.cast(WebhooksMsg::Digest { from, versions });
                }
            }
            Notice::Webhooks(records) => {
                if let Some(w) = find::<WebhooksMsg>(groups::WEBHOOKS) {
                    let _ = w.cast(WebhooksMsg::Merge(records, None));
                }
            }
            Notice::HookRecord { webhook, record } => {
                let store = args.store.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = store.hook_record(&webhook, &record) {
                        tracing::warn!(%webhook, error = %e, "replicated delivery record not kept");
                    }
                });
            }
            Notice::Run { source, mut run } => {
                let store = args.store.clone();
                tokio::task::spawn_blocking(move || {
                    // Drift is judged again against this node's copy of the
                    // history: a worker container's scratch history starts
                    // empty each time the container does.
                    match store.runs(&source, 10) {
                        Ok(earlier) => {
                            (run.health, run.health_reason) = crate::domain::assess(&run, &earlier)
                        }
                        Err(e) => tracing::warn!(%source, error = %e, "run history unreadable"),
                    }
                    if let Err(e) = store.record_run(&source, &run) {
                        tracing::warn!(%source, error = %e, "replicated run not recorded");
                    }
                });
            }
        }
    }

    fn request(&self, request: Request, answer: Answer) {
        let args = self;
        match request {
            Request::Sources(records) => match find::<OrchestratorMsg>(groups::ORCHESTRATOR) {
                Some(o) => {
                    if let Err(e) = o.cast(OrchestratorMsg::Merge(records, Some(answer))) {
                        tracing::warn!(error = %e, "orchestrator unreachable");
                    }
                }
                None => answer.send(Response::Error("the orchestrator is restarting".into())),
            },
            Request::Batch(batch) => match find::<CollectionSupervisorMsg>(groups::COLLECTIONS) {
                Some(c) => {
                    if let Err(e) = c.cast(CollectionSupervisorMsg::Replica(batch, answer)) {
                        tracing::warn!(error = %e, "collections unreachable");
                    }
                }
                None => answer.send(Response::Error("the collections are restarting".into())),
            },
            Request::Heads => {
                answer_blocking(&args.store, answer, |s| Ok(Response::Heads(s.heads()?)))
            }
            Request::Pull {
                collection,
                origin,
                after,
                max,
            } => answer_blocking(&args.store, answer, move |s| {
                Ok(
                    match s.log_after(&collection, &origin, after, max.min(1024), PULL_BYTES)? {
                        LogSlice::Batches(b) => Response::Batches(b),
                        LogSlice::Truncated { first } => Response::Truncated { first },
                    },
                )
            }),
            Request::Snapshot {
                collection,
                after,
                limit,
            } => answer_blocking(&args.store, answer, move |s| {
                let heads = s.heads_of(&collection)?;
                let (items, more) =
                    s.items(&collection, after.as_deref(), limit.min(2000), |_| true)?;
                Ok(Response::Snapshot { items, heads, more })
            }),
            Request::Runtimes => {
                tokio::spawn(async move {
                    let mut response = match find::<ScraperSupervisorMsg>(groups::SCRAPERS) {
                        Some(s) => {
                            match ask(&s, |r| ScraperSupervisorMsg::Statuses(None, r), ASK_TIMEOUT)
                                .await
                            {
                                Ok(r) => Response::Runtimes(r),
                                Err(_) => Response::Error("the scrapers did not answer".into()),
                            }
                        }
                        None => Response::Error("the scrapers are restarting".into()),
                    };
                    // Isolated sources' workers count as this node's runtimes too.
                    if let (Response::Runtimes(r), Some(w)) =
                        (&mut response, find::<WorkerSupervisorMsg>(groups::WORKERS))
                    {
                        add_worker_runtimes(r, &w).await;
                    }
                    answer.send(response);
                });
            }
            Request::RunNow(id) => {
                tokio::spawn(async move {
                    let response = match find::<ScraperSupervisorMsg>(groups::SCRAPERS) {
                        Some(s) => {
                            match ask(&s, |r| ScraperSupervisorMsg::RunNow(id, r), ASK_TIMEOUT)
                                .await
                            {
                                Ok(Ok(())) => Response::Ok,
                                Ok(Err(e)) => Response::Error(e),
                                Err(_) => Response::Error("the scrapers did not answer".into()),
                            }
                        }
                        None => Response::Error("the scrapers are restarting".into()),
                    };
                    answer.send(response);
                });
            }
            Request::Webhooks(records) => match find::<WebhooksMsg>(groups::WEBHOOKS) {
                Some(w) => {
                    if let Err(e) = w.cast(WebhooksMsg::Merge(records, Some(answer))) {
                        tracing::warn!(error = %e, "webhooks unreachable");
                    }
                }
                None => answer.send(Response::Error("the webhooks are restarting".into())),
            },
            Request::HookPending(pending) => answer_blocking(&args.store, answer, move |s| {
                s.hook_pending(&pending)?;
                s.flush()?;
                Ok(Response::Ok)
            }),
            Request::HookAck(ack) => answer_blocking(&args.store, answer, move |s| {
                if s.hook_ack(&ack)? {
                    if let Some(record) = s.webhook(&ack.webhook)?.filter(|r| !r.deleted) {
                        s.hook_advance(&record.spec, 10_000)?;
                    }
                }
                s.flush()?;
                Ok(Response::Ok)
            }),
            Request::HookSync { webhook, after } => {
                answer_blocking(&args.store, answer, move |s| {
                    Ok(Response::HookSync {
                        acks: s.hook_acks_after(&webhook, after, 1000)?,
                        pendings: s.hook_pendings(&webhook)?,
                    })
                })
            }
            Request::DropCollection(tombstone) => {
                tokio::spawn(async move {
                    answer.send(match drop_collection(tombstone).await {
                        Ok(_) => Response::Ok,
                        Err(e) => Response::Error(e),
                    });
                });
            }
            Request::Tombstones => answer_blocking(&args.store, answer, |s| {
                Ok(Response::Tombstones(s.tombstones()?))
            }),
            Request::Hosts(records) => match args.hosts.registry.clone() {
                Some(r) => {
                    tokio::spawn(async move { r.on_merge(records, Some(answer)).await });
                }
                None => answer.send(Response::Error("a worker keeps no host policies".into())),
            },
            Request::Permit(request) => match args.hosts.fetcher.clone() {
                Some(f) => {
                    tokio::spawn(async move {
                        answer.send(match f.politeness().serve(&f, request).await {
                            Ok(a) => Response::Permit(a),
                            Err(e) => Response::Error(e),
                        });
                    });
                }
                None => answer.send(Response::Error("this member holds no host gates".into())),
            },
            Request::HostStates(host) => {
                let states = match &args.hosts.fetcher {
                    None => Vec::new(),
                    Some(f) => {
                        let p = f.politeness();
                        match host {
                            Some(h) => vec![p.state(&h)],
                            None => p
                                .states()
                                .into_iter()
                                .filter(|s| p.holds_gate(&s.host))
                                .collect(),
                        }
                    }
                };
                answer.send(Response::HostStates(states));
            }
            Request::Deliver(batch) => {
                tokio::spawn(async move {
                    let collection = batch.collection.clone();
                    let apply = |r| AggregatorMsg::Apply(batch, r);
                    answer.send(deliver(&collection, apply, Response::Delivered).await);
                });
            }
            Request::DeliverSeen(batch) => {
                tokio::spawn(async move {
                    let collection = batch.collection.clone();
                    let seen = |r| AggregatorMsg::Seen(batch, r);
                    answer.send(deliver(&collection, seen, Response::DeliveredSeen).await);
                });
            }
            Request::Stats => {
                let (cluster, started_at) = (args.cluster.clone(), args.started_at);
                let storage = args.store.storage_status(true);
                tokio::spawn(async move {
                    answer.send(
                        match super::views::node_state(&cluster, started_at, storage).await {
                            Ok(v) => Response::Stats(v),
                            Err(e) => Response::Error(e.to_string()),
                        },
                    );
                });
            }
        }
    }
}

/// Deletes a collection's data on this node (a peer's or this node's
/// deletion); true if anything was deleted.
pub async fn drop_collection(
    tombstone: crate::domain::CollectionTombstone,
) -> Result<bool, String> {
    if !crate::domain::spec::is_slug(&tombstone.name) {
        return Err("not a collection name".into());
    }
    let collections = find::<CollectionSupervisorMsg>(groups::COLLECTIONS)
        .ok_or("the collections are restarting")?;
    ask(
        &collections,
        |r| CollectionSupervisorMsg::Drop(tombstone, r),
        ASK_TIMEOUT * 6,
    )
    .await
    .map_err(|e| e.to_string())?
}

/// Accepts a worker's delivery to `collection` (its items, or its named
/// items: `build` makes the aggregator's message) as a local scraper's.
async fn deliver<T: Send + 'static>(
    collection: &str,
    build: impl FnOnce(RpcReplyPort<Result<T, String>>) -> AggregatorMsg,
    delivered: fn(T) -> Response,
) -> Response {
    let aggregator = match aggregator_for(collection).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    match ask(&aggregator, build, ASK_TIMEOUT * 6).await {
        Ok(Ok(outcome)) => delivered(outcome),
        Ok(Err(e)) => Response::Error(e),
        Err(_) => Response::Error("the aggregator did not answer".into()),
    }
}

/// The local aggregator of a worker's collection, or the answer refusing
/// the delivery.
async fn aggregator_for(collection: &str) -> Result<ractor::ActorRef<AggregatorMsg>, Response> {
    if !crate::domain::spec::is_slug(collection) {
        return Err(Response::Error("not a collection name".into()));
    }
    let Some(collections) = find::<CollectionSupervisorMsg>(groups::COLLECTIONS) else {
        return Err(Response::Error("the collections are restarting".into()));
    };
    let name = collection.to_owned();
    match ask(
        &collections,
        |r| CollectionSupervisorMsg::Aggregator(name, r),
        ASK_TIMEOUT,
    )
    .await
    {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(e)) => Err(Response::Error(e)),
        Err(_) => Err(Response::Error("the collections did not answer".into())),
    }
}
