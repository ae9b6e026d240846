//! Plain serde types and their validation, with no I/O: what a source asks for
//! ([`spec`]), what scraping produces and a collection keeps ([`item`]), and
//! what the node records about sources ([`record`]), each host's politeness
//! policy and the host gate's messages ([`host`]), what a source is doing
//! where it runs ([`runtime`]), whether its runs drift from what they used
//! to yield ([`health`]), how CSS selectors and JSON pointers are checked
//! ([`locator`]), webhooks with their replicated delivery state
//! ([`webhook`]), and timestamps written as chrono writes them, faster
//! ([`timestamp`]).

pub mod health;
pub mod host;
pub mod item;
pub mod locator;
pub mod record;
pub mod runtime;
pub mod spec;
pub mod timestamp;
pub mod webhook;

pub use health::{assess, Health};
pub use host::{HostOverride, HostPolicy, HostRecord, HostState};
pub use item::{
    Item, ItemBatch, ItemName, ItemRef, ReplicatedBatch, SeenBatch, StoredItem, Upsert,
};
pub use record::{CollectionTombstone, ManagedBy, RunRecord, SourceRecord, Version};
pub use runtime::{ScraperStats, SourceRuntime, SourceState, Totals, WorkerContainer};
pub use spec::{
    ExtractSpec, FieldRule, FieldSpec, FieldType, Follow, Format, Method, NextPage, RequestOptions,
    Schedule, SharedExtracts, SourceSpec, SpecError, DEFAULT_MAX_FOLLOWS, MAX_FOLLOWS_LIMIT,
};
pub use webhook::{DeliveryAck, DeliveryRecord, PendingDelivery, WebhookRecord, WebhookSpec};
