//! `gleaner worker`: one isolated source, in a container its owner node
//! started (see [`crate::isolation`]). The worker joins the cluster as a
//! member of role `worker` (it never owns sources and keeps no collections),
//! runs the source's scraper on its schedule under a ScraperSupervisor, and
//! hands each batch to a Courier, which delivers it to the owner node. Its
//! scratch database (run history, for the schedule) lives on a tmpfs.
//!
//! `gleaner preview` ([`preview`]) is the short-lived sibling a node starts
//! to preview an isolated source: no cluster, no store; it walks the first
//! pages (in Chromium for `render: browser`) and prints the answer.

use std::time::Duration;

use anyhow::{bail, Context};
use ractor::Actor;

use crate::cluster::view::{NodeInfo, Role};
use crate::cluster::Cluster;
use crate::domain::SourceSpec;
use crate::events::Events;
use crate::isolation::courier::{Courier, CourierArgs};
use crate::pipeline::scraper_supervisor::{
    BatchSink, ScraperSupervisor, ScraperSupervisorArgs, ScraperSupervisorMsg,
};
use crate::scrape::browser::{Renderer, RendererConfig};
use crate::scrape::extract::Limits;
use crate::scrape::fetch::Fetcher;
use crate::settings::{PreviewArgs, Settings, WorkerArgs};
use crate::store::Store;

/// Pages a browser renders before it is started anew (a bound on what a
/// long-lived Chromium accumulates).
const PAGES_PER_BROWSER: u32 = 50;
/// V8's old-space limit in a rendered page, in MiB.
const JS_HEAP_MB: u32 = 256;
/// How often the health file is touched while the worker is healthy.
const HEALTH_EVERY: Duration = Duration::from_secs(2);

/// How long the worker waits for its owner to be reachable before it runs anyway
/// (deliveries then fail, and the scraper's restart policy takes over).
const OWNER_WAIT: Duration = Duration::from_secs(30);

/// Resolves once the owner has been away (not a member, or down) for
/// `grace`: a worker whose owner died or moved the source stops scraping,
/// and the container stays exited until an owner removes it.
async fn owner_gone(cluster: Cluster, owner: String, grace: Duration) -> String {
    let mut away_since: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let present = cluster.is_live(&owner);
        match (present, away_since) {
            (true, _) => away_since = None,
            (false, None) => away_since = Some(tokio::time::Instant::now()),
            (false, Some(t)) if t.elapsed() >= grace => {
                return format!("the owner {owner} has been away for {grace:?}: stopping");
            }
            (false, Some(_)) => {}
        }
    }
}

/// Touches `path` every [`HEALTH_EVERY`] while the owner is present (a
/// member, not down): the image's HEALTHCHECK reports the container
/// `unhealthy` once the file is older than a few periods.
async fn keep_healthy(cluster: Cluster, owner: String, path: std::path::PathBuf) {
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    loop {
        tick.tick().await;
        let present = cluster.is_live(&owner);
        if present {
            let now = chrono::Utc::now().to_rfc3339();
            if let Err(e) = tokio::fs::write(&path, now).await {
                tracing::warn!(path = %path.display(), error = %e, "health file not written");
            }
        }
    }
}

/// The fetcher a worker or a preview uses for `spec`: with a browser (its
/// profile below the data directory) when the source renders.
fn fetcher_for(
    spec: &SourceSpec,
    settings: &Settings,
    chromium: &std::path::Path,
) -> anyhow::Result<(Fetcher, Option<Renderer>)> {
    let mut fetcher = Fetcher::new(settings.fetch.clone()).context("building the HTTP client")?;
    let renderer = (spec.render == crate::domain::spec::Render::Browser).then(|| {
        std::fs::create_dir_all(&settings.data_dir).ok();
        Renderer::new(RendererConfig {
            chromium: chromium.to_path_buf(),
            data_dir: settings.data_dir.clone(),
            pages_per_browser: PAGES_PER_BROWSER,
            js_heap_mb: JS_HEAP_MB,
            targets: settings.fetch.targets.clone(),
            user_agent: settings.fetch.user_agent.clone(),
        })
    });
    if let Some(r) = &renderer {
        fetcher = fetcher.with_renderer(r.clone());
    }
    Ok((fetcher, renderer))
}

/// Runs the worker until SIGTERM (its container being removed) or a fatal error.
pub async fn run(args: WorkerArgs, settings: Settings) -> anyhow::Result<()> {
    let spec = SourceSpec::from_json(args.spec.as_bytes())
        .map_err(|e| anyhow::anyhow!("GLEANER_WORKER_SPEC: {e}"))?;
    spec.validate()
        .map_err(|e| anyhow::anyhow!("GLEANER_WORKER_SPEC: {e}"))?;
    let Some(mut cluster_settings) = settings.cluster.clone() else {
        bail!("a worker needs its owner: set GLEANER_COOKIE and GLEANER_SEEDS");
    };
    // Its HTTP address is loopback (it serves none), but peers must reach its
    // cluster listener: listen on every interface of the container.
    cluster_settings.listen_ip = std::net::IpAddr::from([0u16; 8]);
    std::fs::create_dir_all(&settings.data_dir).context("creating the scratch directory")?;
    // The scratch database lives on a 64 MiB tmpfs and holds only run
    // history: a small reserve keeps sled clear of a full disk there.
    let store = Store::open(&settings.data_dir, 8 * 1024 * 1024)
        .context("opening the scratch database")?
        .with_disk_reserve(4 * 1024 * 1024);
    let node_id = store.node_id()?;
    let listener =
        crate::cluster::guard::bind(cluster_settings.listen_ip, cluster_settings.port).await?;
    cluster_settings.port = listener.local_addr()?.port();
    let started_at = chrono::Utc::now();
    let me = NodeInfo {
        node_id,
        name: settings.node_name.clone(),
        boot: uuid::Uuid::new_v4().simple().to_string(),
        started_at: started_at.timestamp_millis(),
        role: Role::Worker,
        http: String::new(),
        cluster: format!("{}:{}", cluster_settings.advertise, cluster_settings.port),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let cluster = Cluster::new(me);
    // Its requests (a rendered page's included) take permits from each
    // host's owner node, like a node's: the fetcher the scraper uses is the
    // one whose politeness joining the cluster routes to the owners.
    let (fetcher, renderer) = fetcher_for(&spec, &settings, &args.chromium)?;
    let (membership, membership_done) = crate::control::inbound::join_cluster(
        cluster_settings,
        listener,
        cluster.clone(),
        store.clone(),
        started_at,
        crate::control::inbound::HostSide {
            fetcher: Some(fetcher.clone()),
            registry: None,
        },
    )
    .await
    .context("joining the cluster")?;
    let events = Events::new(&settings.node_name);
    let (courier, _) = Actor::spawn(
        None,
        Courier,
        CourierArgs {
            cluster: cluster.clone(),
            owner: args.owner.clone(),
        },
    )
    .await?;
    let (scrapers, scrapers_done) = Actor::spawn(
        None,
        ScraperSupervisor,
        ScraperSupervisorArgs {
            fetcher,
            limits: Limits {
                max_depth: settings.max_html_depth,
            },
            store: store.clone(),
            sink: BatchSink::Fixed(courier.clone()),
            restart: settings.restart,
            events,
            cluster: cluster.clone(),
        },
    )
    .await?;
    // Runs are worth starting only once the owner can take the batches.
    let deadline = tokio::time::Instant::now() + OWNER_WAIT;
    let mut changes = cluster.changes();
    while cluster.name_of(&args.owner).is_none() || !cluster.settled() {
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            tracing::warn!(owner = %args.owner, "the owner is not reachable yet; starting anyway");
            break;
        }
    }
    tracing::info!(source = %spec.id, owner = %args.owner, "worker running");
    scrapers.cast(ScraperSupervisorMsg::Ensure(Box::new(spec)))?;
    let owner_gone = owner_gone(
        cluster.clone(),
        args.owner.clone(),
        settings
            .cluster
            .as_ref()
            .map_or(Duration::from_secs(3), |c| c.peer_timeout)
            * 2,
    );
    let health = args
        .health_file
        .clone()
        .map(|path| tokio::spawn(keep_healthy(cluster.clone(), args.owner.clone(), path)));
    let outcome = tokio::select! {
        why = owner_gone => Err(anyhow::anyhow!(why)),
        signal = crate::app::shutdown_signal() => {
            tracing::info!(signal, "worker stopping");
            Ok(())
        }
        reason = cluster.fatal_reason() => Err(anyhow::anyhow!(reason)),
        _ = scrapers_done => Err(anyhow::anyhow!("the worker's scraper supervisor stopped")),
        _ = membership_done => Err(anyhow::anyhow!("the worker left the cluster")),
    };
    if let Some(h) = health {
        h.abort();
    }
    scrapers.stop(None);
    if let Some(r) = renderer {
        r.shutdown().await;
    }
    courier.stop(None);
    membership.stop(None);
    let _ = tokio::task::spawn_blocking(move || store.flush()).await;
    outcome
}

/// `gleaner preview`: walks the spec's first pages as a node's preview does
/// (`http::preview::walk`), rendering them in Chromium for a browser source,
/// within `budget_ms`, and prints the answer (or `{"error": ..}`) as one
/// JSON line on stdout. Nothing is stored: its only state is the browser's
/// profile on the container's tmpfs.
pub async fn preview(args: PreviewArgs, settings: Settings) -> anyhow::Result<()> {
    use crate::http::error::ApiError;
    use crate::http::preview::{error_json, walk};
    let spec = SourceSpec::from_json(args.spec.as_bytes())
        .map_err(|e| anyhow::anyhow!("GLEANER_PREVIEW_SPEC: {e}"))?;
    let (fetcher, renderer) = fetcher_for(&spec, &settings, &args.chromium)?;
    let limits = Limits {
        max_depth: settings.max_html_depth,
    };
    let budget = Duration::from_millis(args.budget_ms);
    let answer =
        match tokio::time::timeout(budget, walk(&fetcher, &limits, &spec, args.pages)).await {
            Ok(Ok(preview)) => serde_json::to_value(preview).expect("a preview serialises"),
            Ok(Err(e)) => error_json(&e),
            Err(_) => error_json(&ApiError::Timeout(format!(
                "the preview did not finish within {} ms",
                args.budget_ms
            ))),
        };
    if let Some(r) = renderer {
        r.shutdown().await;
    }
    println!("{answer}");
    Ok(())
}
