//! What nodes say to each other. Every node runs one Peer actor (the only
//! actor other nodes can reach); its two message variants carry these types
//! encoded as JSON, so a frame from another version that does not decode is
//! an error we answer, never a panic in the transport. Variants may be added;
//! never rename one or change a field's type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::view::NodeInfo;
use crate::domain::host::{PermitAnswer, PermitRelease, PermitRequest};
pub use crate::domain::ReplicatedBatch;
use crate::domain::SourceRuntime;
use crate::domain::{
    CollectionTombstone, DeliveryAck, DeliveryRecord, HostRecord, HostState, ItemBatch,
    PendingDelivery, RunRecord, SeenBatch, SourceRecord, StoredItem, Version, WebhookRecord,
};
use crate::store::BatchOutcome;

/// One node's applied batches per collection: origin node id -> last sequence number.
pub type Heads = BTreeMap<String, BTreeMap<String, u64>>;

/// One-way messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Notice {
    /// "I am here": sent to every peer at each heartbeat interval.
    Heartbeat(NodeInfo),
    /// The sender's source versions, so the receiver can push what the sender lacks.
    SourceDigest {
        from: String,
        versions: BTreeMap<String, Version>,
    },
    /// Source records the receiver should merge (last writer wins).
    Sources(Vec<SourceRecord>),
    /// A run finished on its owner.
    Run { source: String, run: RunRecord },
    /// The sender's webhook versions, so the receiver can push what the sender lacks.
    WebhookDigest {
        from: String,
        versions: BTreeMap<String, Version>,
    },
    /// Webhook records the receiver should merge (last writer wins).
    Webhooks(Vec<WebhookRecord>),
    /// A delivery attempt ended on the webhook's owner (for its status).
    HookRecord {
        webhook: String,
        record: DeliveryRecord,
    },
    /// The sender's host override versions (as `SourceDigest`, for hosts).
    HostDigest {
        from: String,
        versions: BTreeMap<String, Version>,
    },
    /// Host override records the receiver should merge (last writer wins).
    Hosts(Vec<HostRecord>),
    /// A permit of the receiver's host gate comes back.
    Release(PermitRelease),
    /// The sender (the host's owner) paused the host until then.
    HostPaused {
        host: String,
        until: chrono::DateTime<chrono::Utc>,
    },
}

/// Questions, each answered by one [`Response`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// Merge these records; answered once they are durable.
    Sources(Vec<SourceRecord>),
    /// Apply this batch; answered once it is durable.
    Batch(ReplicatedBatch),
    /// The receiver's applied sequence numbers.
    Heads,
    /// Batches of `origin` in `collection` after `after`, at most `max`.
    Pull {
        collection: String,
        origin: String,
        after: u64,
        max: usize,
    },
    /// A page of the collection's items after `after` (item key order).
    Snapshot {
        collection: String,
        after: Option<String>,
        limit: usize,
    },
    /// The runtime of every source the receiver runs.
    Runtimes,
    /// Run this source now (the receiver owns it); never forwarded further.
    RunNow(String),
    /// The receiver's part of the debug state.
    Stats,
    /// A worker's batch for its owner node to accept as its own.
    Deliver(ItemBatch),
    /// A worker's page answered 304, its items by name, for its owner node
    /// to accept as its own (see `AggregatorMsg::Seen`).
    DeliverSeen(SeenBatch),
    /// Merge these webhook records; answered once they are durable.
    Webhooks(Vec<WebhookRecord>),
    /// Keep this delivery, about to be sent; answered once durable.
    HookPending(PendingDelivery),
    /// This delivery was acknowledged; answered once durable.
    HookAck(DeliveryAck),
    /// The webhook's acknowledgements after `after` and its pending
    /// deliveries, for a node taking the webhook over.
    HookSync { webhook: String, after: u64 },
    /// Delete this collection's data; answered once durable.
    DropCollection(CollectionTombstone),
    /// The receiver's collection tombstones.
    Tombstones,
    /// Merge these host override records; answered once they are durable.
    Hosts(Vec<HostRecord>),
    /// A permit of a host whose gate the receiver holds (it owns the host).
    Permit(PermitRequest),
    /// The state of one host as the receiver holds it, or (`None`) of every
    /// host whose gate it holds.
    HostStates(Option<String>),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Response {
    Ok,
    /// The batch is durable (or was already applied).
    Applied {
        seq: u64,
    },
    /// The batch is ahead of what the receiver has: it will pull the rest first.
    Gap {
        have: u64,
    },
    Heads(Heads),
    Batches(Vec<ReplicatedBatch>),
    /// The log no longer holds the batches asked for; the first it holds is `first`.
    Truncated {
        first: u64,
    },
    Snapshot {
        items: Vec<StoredItem>,
        /// The sender's heads for the collection when the page was read.
        heads: BTreeMap<String, u64>,
        more: bool,
    },
    Runtimes(BTreeMap<String, SourceRuntime>),
    Stats(Value),
    /// The delivered batch is durable (on the owner, and on a peer if one is up).
    Delivered(BatchOutcome),
    /// The delivered named items are durable; `None`: the owner's collection
    /// no longer holds them as named, and the worker asks for the page in full.
    DeliveredSeen(Option<BatchOutcome>),
    HookSync {
        acks: Vec<DeliveryAck>,
        pendings: Vec<PendingDelivery>,
    },
    Tombstones(Vec<CollectionTombstone>),
    Permit(PermitAnswer),
    HostStates(Vec<HostState>),
    Error(String),
}

/// Encodes a wire value (these types always serialise).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("wire types always serialise")
}

/// Decodes a wire value, or says why it could not.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("undecodable cluster message: {e}"))
}
