//! `GET /metrics`: the node's metrics in Prometheus's text format (no auth,
//! like `/healthz`). Counters are kept where the work happens; the gauges are
//! taken here from the actors' snapshots, each ask bounded by
//! [`SNAPSHOT_TIMEOUT`], so a scrape answers even when an actor does not
//! (that part's gauges keep their last values). See docs/metrics.md.

use std::time::Duration;

use actix_web::{web, HttpResponse};

use super::AppState;
use crate::cluster::groups::{ORCHESTRATOR, REPLICATOR, SCRAPERS};
use crate::cluster::view::MemberState;
use crate::control::orchestrator::OrchestratorMsg;
use crate::domain::SourceState;
use crate::instruments::{self, Snapshot, StorageGauges};
use crate::pipeline::replicator::ReplicatorMsg;
use crate::pipeline::scraper_supervisor::ScraperSupervisorMsg;
use crate::supervision::ask_named;

/// The longest one part of a scrape waits for its actor (Prometheus's
/// default scrape timeout is 10 s; the parts are asked concurrently).
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text format (docs/metrics.md)", content_type = "text/plain", body = String)))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let snapshot = snapshot(&state).await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(instruments::render(&snapshot))
}

fn source_state(s: SourceState) -> &'static str {
    match s {
        SourceState::Scheduled => "scheduled",
        SourceState::Running => "running",
        SourceState::BackingOff => "backing_off",
        SourceState::Failed => "failed",
        SourceState::Disabled => "disabled",
    }
}

fn member_state(s: MemberState) -> &'static str {
    match s {
        MemberState::Up => "up",
        MemberState::Suspect => "suspect",
        MemberState::Down => "down",
    }
}

async fn snapshot(state: &AppState) -> Snapshot {
    let sources = async {
        // Each node counts the sources it owns, so a sum over nodes counts
        // each source once; the counts are kept by the actors (cheap with
        // thousands of sources).
        let counts = ask_named(ORCHESTRATOR, OrchestratorMsg::StateCounts, SNAPSHOT_TIMEOUT)
            .await
            .ok()?
            .ok()?;
        let mut out = instruments::count_states(&instruments::SOURCE_STATES, []);
        for (state, n) in counts {
            if let Some(c) = out
                .iter_mut()
                .find(|(name, _)| *name == source_state(state))
            {
                c.1 += n;
            }
        }
        // Drift, judged by the scrapers run here (isolated sources' runs are
        // judged too, but counted only in their status).
        let degraded = ask_named(
            SCRAPERS,
            ScraperSupervisorMsg::DegradedCount,
            SNAPSHOT_TIMEOUT,
        )
        .await
        .ok()?;
        Some((out, degraded))
    };
    let behind = async {
        ask_named(REPLICATOR, ReplicatorMsg::Stats, SNAPSHOT_TIMEOUT)
            .await
            .ok()
            .map(|s| s.behind)
    };
    let store = state.store.clone();
    let storage = async move {
        // statvfs on a stuck disk must not hold the scrape either.
        let status = tokio::task::spawn_blocking(move || store.storage_status(true));
        let status = tokio::time::timeout(SNAPSHOT_TIMEOUT, status)
            .await
            .ok()?
            .ok()?;
        Some(StorageGauges {
            state: status.state,
            free_bytes: status.free_bytes,
            reserve_bytes: status.reserve_bytes,
        })
    };
    let (sources, replication_behind, storage) = tokio::join!(sources, behind, storage);
    let members = state.cluster.members();
    let (sources, sources_degraded) = match sources {
        Some((states, degraded)) => (Some(states), Some(degraded)),
        None => (None, None),
    };
    Snapshot {
        sources,
        sources_degraded,
        members: instruments::count_states(
            &instruments::MEMBER_STATES,
            members.iter().map(|m| member_state(m.state)),
        ),
        replication_behind,
        storage,
    }
}
