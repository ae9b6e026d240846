//! Delivery: webhooks. Operators register a URL per collection
//! ([`crate::domain::webhook`]); the webhook's owner node (placement over
//! live nodes, like sources) follows its own change feed of the collection
//! and POSTs signed JSON batches, in order, at least once, retried with
//! back-off; a new owner resumes after a failover from the replicated
//! acknowledgements and re-sends a pending delivery under its id.
//!
//! - [`registry`]: the Webhooks actor (the replicated registry, the admin
//!   commands, which senders run here);
//! - [`sender`]: one webhook's sender task (takeover, batches, attempts,
//!   acknowledgements);
//! - [`sign`]: the body and its HMAC-SHA256 signature.
//!
//! docs/webhooks.md tells the design and its windows.

pub mod registry;
pub mod sender;
pub mod sign;
