//! The cluster's side of the host gates ([`crate::scrape::politeness`]): a
//! host's owner is the live node of role `node` with the highest rendezvous
//! hash of (host, node id), as for sources; other nodes and workers ask it
//! for permits (`Request::Permit`) and give them back (`Notice::Release`),
//! and the owner tells every node of a pause (`Notice::HostPaused`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::view::Role;
use super::wire::{Notice, Request, Response};
use super::Cluster;
use crate::domain::host::{PermitAnswer, PermitRelease, PermitRequest};
use crate::scrape::politeness::{BoxFuture, Router, QUEUE_WAIT};

/// How long an ask for a permit may take: a turn in the owner's queue, and
/// a margin for the message.
pub const PERMIT_CALL_TIMEOUT: Duration = Duration::from_secs(QUEUE_WAIT.as_secs() + 10);

/// Routes permits through the cluster.
pub struct HostRouter {
    cluster: Cluster,
    changes: watch::Receiver<u64>,
}

impl HostRouter {
    pub fn new(cluster: Cluster) -> HostRouter {
        let changes = cluster.changes();
        HostRouter { cluster, changes }
    }
}

impl Router for HostRouter {
    fn me(&self) -> String {
        self.cluster.me().node_id.clone()
    }

    fn remote_owner(&self, host: &str) -> Option<String> {
        self.cluster
            .owner_of(host)
            .filter(|o| *o != self.cluster.me().node_id)
    }

    fn epoch(&self) -> u64 {
        *self.changes.borrow()
    }

    fn may_own(&self) -> bool {
        self.cluster.me().role == Role::Node
    }

    fn acquire(
        &self,
        owner: String,
        request: PermitRequest,
    ) -> BoxFuture<Result<PermitAnswer, String>> {
        let cluster = self.cluster.clone();
        Box::pin(async move {
            match cluster
                .call(&owner, &Request::Permit(request), PERMIT_CALL_TIMEOUT)
                .await
            {
                Ok(Response::Permit(a)) => Ok(a),
                Ok(Response::Error(e)) => Err(e),
                Ok(other) => Err(format!("unexpected answer: {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        })
    }

    fn release(&self, owner: &str, release: PermitRelease) {
        self.cluster.cast_to(owner, &Notice::Release(release));
    }

    fn paused(&self, host: &str, until: DateTime<Utc>) {
        self.cluster.cast_all(&Notice::HostPaused {
            host: host.to_owned(),
            until,
        });
    }
}
