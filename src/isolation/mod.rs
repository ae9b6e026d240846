//! Isolated sources: each runs in its own hardened container, started from
//! the node's own image, instead of inside the node.
//!
//! - [`worker_supervisor`]: on the owner node, one worker container per
//!   isolated source placed here, reconciled by label (adopt, replace, remove).
//! - [`docker`]: the Docker Engine through bollard (the only module that
//!   touches it): labels, limits, hardening.
//! - the `gleaner worker` process inside the container (the top-level `worker`
//!   module, beside `app`): it joins the cluster as a worker member and runs
//!   the one source.
//! - [`courier`]: inside the worker, carries its item batches to the owner
//!   node's aggregator.
//!
//! In: isolated source specs (from the control plane). Out: item batches,
//! delivered to the owner as if scraped there; container status for views.

pub mod courier;
pub mod docker;
pub mod worker_supervisor;

pub use docker::{
    cluster_label, container_name, Isolation, IsolationError, PreviewPlan, WorkerPlan,
};
