//! One webhook's sender: the task its owner node runs (started and stopped
//! by the [`super::registry::Webhooks`] actor as placement says). It takes
//! the webhook over from whoever sent before (the acknowledgements and the
//! pending deliveries its peers hold), re-sends a pending delivery with its
//! id and body, then follows the node's own change feed of the collection
//! from its watermark: each batch is recorded on a peer as pending before its
//! first attempt, sent until a 2xx with capped exponential back-off, and its
//! acknowledgement recorded on a peer before the next batch is built. Batches
//! are sent one at a time, in feed order. docs/webhooks.md tells why.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::Rng;
use reqwest::header::{HeaderValue, CONTENT_TYPE};

use super::sign;
use crate::cluster::wire::{Notice, Request, Response};
use crate::cluster::Cluster;
use crate::domain::{DeliveryAck, DeliveryRecord, PendingDelivery, WebhookSpec};
use crate::scrape::fetch::{check_url_now, request_error, TargetPolicy};
use crate::store::{Flusher, Store, StoreError};

/// Changes in one delivery at most.
pub const MAX_CHANGES: usize = 100;
/// About the largest body of one delivery (a single larger item still goes alone).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// First retry delay; it doubles per failed attempt up to [`RETRY_CAP`].
pub const RETRY_BASE: Duration = Duration::from_millis(500);
pub const RETRY_CAP: Duration = Duration::from_secs(30);
/// How long a peer may take to store a pending delivery or an acknowledgement.
const REPLICATE_TIMEOUT: Duration = Duration::from_secs(2);
/// Acknowledgements per catch-up answer.
const SYNC_PAGE: usize = 1000;
/// The longest wait for a change before the feed is read again anyway.
const IDLE_WAIT: Duration = Duration::from_secs(60);

/// What a sender needs.
#[derive(Clone)]
pub struct SenderArgs {
    pub spec: WebhookSpec,
    pub store: Store,
    pub flusher: Flusher,
    pub cluster: Cluster,
    pub client: reqwest::Client,
    pub targets: TargetPolicy,
    pub node_name: String,
}

/// Why a step of the sender failed (it is retried after a back-off).
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("the storage task failed: {0}")]
    Task(String),
    #[error("no peer stored the {0} in time")]
    NotReplicated(&'static str),
}

async fn blocking<T: Send + 'static>(
    store: &Store,
    f: impl FnOnce(&Store) -> crate::store::Result<T> + Send + 'static,
) -> Result<T, SendError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| SendError::Task(e.to_string()))?
        .map_err(SendError::from)
}

/// The delay before attempt `attempt + 1` (1-based), with jitter.
pub fn backoff(attempt: u32) -> Duration {
    let exp = RETRY_BASE.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(RETRY_CAP);
    let jitter = rand::rng().random_range(0.8..1.2);
    capped.mul_f64(jitter).min(RETRY_CAP)
}

/// Runs the webhook's deliveries until the task is aborted.
pub async fn run(args: SenderArgs) {
    let id = args.spec.id.clone();
    tracing::info!(webhook = %id, collection = %args.spec.collection, "webhook sender started");
    let mut failures = 0;
    let mut next = loop {
        match take_over(&args).await {
            Ok(next) => break next,
            Err(e) => {
                failures += 1;
                tracing::warn!(webhook = %id, error = %e, "webhook takeover failed, retrying");
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    };
    let mut failures = 0;
    loop {
        match step(&args, next).await {
            Ok(Some(n)) => {
                next = n + 1;
                failures = 0;
            }
            Ok(None) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(webhook = %id, error = %e, "webhook delivery step failed, retrying");
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}

/// Learns from every peer the acknowledgements this node lacks and the
/// deliveries left pending, re-sends those, and returns the next delivery
/// number.
async fn take_over(args: &SenderArgs) -> Result<u64, SendError> {
    let id = args.spec.id.clone();
    let mut pendings: Vec<PendingDelivery> = {
        let id = id.clone();
        blocking(&args.store, move |s| s.hook_pendings(&id)).await?
    };
    for peer in args.cluster.node_peers() {
        loop {
            let after = {
                let id = id.clone();
                blocking(&args.store, move |s| s.hook_last_ack(&id)).await?
            };
            let request = Request::HookSync {
                webhook: id.clone(),
                after,
            };
            let answer = args
                .cluster
                .call(&peer.info.node_id, &request, REPLICATE_TIMEOUT)
                .await;
            let Ok(Response::HookSync {
                acks,
                pendings: theirs,
            }) = answer
            else {
                tracing::warn!(webhook = %id, peer = %peer.info.name, "a peer did not share its webhook state");
                break;
            };
            let full = acks.len() >= SYNC_PAGE;
            pendings.extend(theirs);
            let spec = args.spec.clone();
            blocking(&args.store, move |s| {
                for ack in &acks {
                    s.hook_ack(ack)?;
                }
                s.hook_advance(&spec, 100_000)?;
                s.flush()
            })
            .await?;
            if !full {
                break;
            }
        }
    }
    let last = {
        let id = id.clone();
        blocking(&args.store, move |s| s.hook_last_ack(&id)).await?
    };
    pendings.retain(|p| p.n > last && p.webhook == id);
    pendings.sort_by_key(|p| p.n);
    let mut seen = HashSet::new();
    pendings.retain(|p| seen.insert(p.id.clone()));
    let mut next = last + 1;
    for pending in pendings {
        tracing::info!(webhook = %id, delivery = %pending.id, n = pending.n, "re-sending a pending delivery");
        crate::instruments::webhook_attempt("retried");
        send_until_acked(args, &pending, None).await?;
        next = next.max(pending.n + 1);
    }
    Ok(next)
}

/// Builds and delivers the next batch, or waits for a change; returns the
/// delivery number used, if one was.
async fn step(args: &SenderArgs, n: u64) -> Result<Option<u64>, SendError> {
    let collection = args.spec.collection.clone();
    let mut watch = args.store.watch_changes(&collection);
    watch.borrow_and_update();
    let spec = args.spec.clone();
    let built = blocking(&args.store, move |s| build(s, &spec, n)).await?;
    let Some((pending, scanned_to)) = built else {
        let _ = tokio::time::timeout(IDLE_WAIT, watch.changed()).await;
        return Ok(None);
    };
    // Only what a flush covers is sent: a crash must not take back an item
    // a receiver has seen.
    if !args.store.durable(&collection) {
        args.flusher.flushed().await?;
    }
    let stored = pending.clone();
    blocking(&args.store, move |s| {
        s.hook_pending(&stored)?;
        s.flush()
    })
    .await?;
    replicate(
        args,
        &Request::HookPending(pending.clone()),
        "pending delivery",
    )
    .await?;
    send_until_acked(args, &pending, Some(scanned_to)).await?;
    Ok(Some(pending.n))
}

/// The next batch after this node's watermark: wanted changes whose item
/// version was not delivered yet, one per item, in feed order. `None` (and
/// the watermark moved past what was looked at) when there is none.
fn build(
    store: &Store,
    spec: &WebhookSpec,
    n: u64,
) -> crate::store::Result<Option<(PendingDelivery, u64)>> {
    let from = store.hook_watermark(&spec.id)?;
    let mut scanned = from;
    let mut changes = Vec::new();
    let mut pairs = Vec::new();
    let mut keys = HashSet::new();
    let mut bytes = 0;
    'pages: loop {
        let page = store.changes_after(&spec.collection, scanned, 256)?;
        let full = page.len() == 256;
        for change in page {
            if changes.len() >= MAX_CHANGES || bytes >= MAX_BODY_BYTES {
                break 'pages;
            }
            let op = match change.op {
                crate::store::ChangeOp::Inserted => "inserted",
                crate::store::ChangeOp::Changed => "changed",
            };
            let item = &change.item;
            let wanted = spec.wants(op)
                && !keys.contains(&item.key)
                && !store.hook_covers(&spec.id, item)?;
            if wanted {
                let value = sign::change(change.seq, op, item);
                bytes += value.to_string().len();
                changes.push(value);
                pairs.push((item.key.clone(), item.version, item.hash.clone()));
                keys.insert(item.key.clone());
            }
            scanned = change.seq;
        }
        if !full {
            break;
        }
    }
    if changes.is_empty() {
        if scanned != from {
            store.set_hook_watermark(&spec.id, scanned)?;
        }
        return Ok(None);
    }
    let count = changes.len();
    Ok(Some((
        PendingDelivery {
            webhook: spec.id.clone(),
            n,
            id: uuid::Uuid::new_v4().to_string(),
            body: sign::body(&spec.id, &spec.collection, changes),
            pairs,
            changes: count,
            created_at: Utc::now(),
        },
        scanned,
    )))
}

/// Sends `request` to every peer that stores data and waits (bounded) until
/// one has it durable; Ok at once when there is no peer.
async fn replicate(
    args: &SenderArgs,
    request: &Request,
    what: &'static str,
) -> Result<(), SendError> {
    let pending = args.cluster.ask_all(request, REPLICATE_TIMEOUT);
    if pending.asked() == 0 {
        return Ok(());
    }
    let answers = pending.all().await;
    if answers.values().any(|r| matches!(r, Ok(Response::Ok))) {
        Ok(())
    } else {
        Err(SendError::NotReplicated(what))
    }
}

/// One attempt's outcome: the receiver's status, or why there was none.
struct Attempt {
    status: Option<u16>,
    error: Option<String>,
    elapsed: Duration,
}

async fn attempt(args: &SenderArgs, pending: &PendingDelivery) -> Attempt {
    let started = Instant::now();
    let result = async {
        let url = url::Url::parse(&args.spec.url).map_err(|e| e.to_string())?;
        // IP literals are checked here; names by the client's resolver.
        check_target_literal(&url, &args.targets)?;
        let signature = sign::signature(&args.spec.secret, pending.body.as_bytes());
        let mut signature = HeaderValue::from_str(&signature).map_err(|e| e.to_string())?;
        signature.set_sensitive(true);
        let response = args
            .client
            .post(url)
            .header(CONTENT_TYPE, "application/json")
            .header("X-Gleaner-Signature", signature)
            .header("X-Gleaner-Delivery", pending.id.as_str())
            .header("X-Gleaner-Webhook", args.spec.id.as_str())
            .body(pending.body.clone())
            .send()
            .await
            .map_err(|e| request_error(e).to_string())?;
        // The answer's body is not read: only the status counts.
        Ok::<u16, String>(response.status().as_u16())
    }
    .await;
    let elapsed = started.elapsed();
    match result {
        Ok(status) if (200..300).contains(&status) => Attempt {
            status: Some(status),
            error: None,
            elapsed,
        },
        Ok(status) => Attempt {
            status: Some(status),
            error: Some(format!("the receiver answered {status}")),
            elapsed,
        },
        Err(error) => Attempt {
            status: None,
            error: Some(error),
            elapsed,
        },
    }
}

/// The guard on an IP-literal URL (a host name is checked as it resolves).
fn check_target_literal(url: &url::Url, targets: &TargetPolicy) -> Result<(), String> {
    check_url_now(url, targets).map_err(|e| e.to_string())
}

/// Attempts `pending` until the receiver answers 2xx, then records the
/// acknowledgement here and on a peer (and moves this node's watermark to
/// `scanned_to` when the batch was built here).
async fn send_until_acked(
    args: &SenderArgs,
    pending: &PendingDelivery,
    scanned_to: Option<u64>,
) -> Result<(), SendError> {
    let id = &args.spec.id;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        if attempts > 1 {
            crate::instruments::webhook_attempt("retried");
        }
        let outcome = attempt(args, pending).await;
        let ok = outcome.error.is_none();
        let record = DeliveryRecord {
            id: pending.id.clone(),
            n: pending.n,
            at: Utc::now(),
            changes: pending.changes,
            outcome: if ok { "ok" } else { "retrying" }.to_owned(),
            status: outcome.status,
            error: outcome.error.clone(),
            attempts,
            latency_ms: outcome.elapsed.as_millis() as u64,
            node: args.node_name.clone(),
        };
        let (webhook, kept) = (id.clone(), record.clone());
        blocking(&args.store, move |s| s.hook_record(&webhook, &kept)).await?;
        args.cluster.cast_all(&Notice::HookRecord {
            webhook: id.clone(),
            record,
        });
        if ok {
            crate::instruments::webhook_attempt("ok");
            let age = (Utc::now() - pending.created_at)
                .to_std()
                .unwrap_or_default();
            crate::instruments::webhook_delivered(age);
            tracing::debug!(webhook = %id, delivery = %pending.id, n = pending.n, changes = pending.changes, attempts, "webhook delivery acknowledged");
            break;
        }
        crate::instruments::webhook_attempt("failed");
        let delay = backoff(attempts);
        tracing::warn!(
            webhook = %id,
            delivery = %pending.id,
            status = outcome.status,
            error = outcome.error.as_deref().unwrap_or(""),
            attempts,
            retry_in_ms = delay.as_millis() as u64,
            "webhook delivery failed"
        );
        tokio::time::sleep(delay).await;
    }
    let ack = DeliveryAck {
        webhook: id.clone(),
        n: pending.n,
        id: pending.id.clone(),
        pairs: pending.pairs.clone(),
    };
    let (stored, spec) = (ack.clone(), args.spec.clone());
    blocking(&args.store, move |s| {
        s.hook_ack(&stored)?;
        if let Some(seq) = scanned_to {
            if seq > s.hook_watermark(&spec.id)? {
                s.set_hook_watermark(&spec.id, seq)?;
            }
        }
        s.hook_advance(&spec, 10_000)?;
        s.flush()
    })
    .await?;
    // The next batch waits until a peer knows this one was acknowledged, so a
    // new owner never sends its items again under another id.
    let mut failures = 0;
    while let Err(e) = replicate(args, &Request::HookAck(ack.clone()), "acknowledgement").await {
        failures += 1;
        tracing::warn!(webhook = %id, error = %e, "acknowledgement not replicated, retrying");
        tokio::time::sleep(backoff(failures)).await;
    }
    Ok(())
}
