//! Building and running a node: open the store, bind the HTTP port, join the
//! cluster (when a cookie is set), start the actor tree, serve HTTP (port 0
//! works for both ports; the bound addresses are logged and exposed), then
//! run until SIGTERM or Ctrl-C and shut down in order: stop taking requests,
//! stop the actors, leave the cluster, flush the store.
//!
//! A watchdog thread, outside the async runtime, bounds what a stuck disk can
//! do: SIGTERM always ends the process with status 0 within [`HARD_STOP`]
//! (whatever was not flushed was never acknowledged), and a store that failed
//! (an I/O error from sled, or a flush that never returns) ends it with
//! [`EXIT_STORE_FAILED`] so that Docker or systemd restarts the node on a
//! fresh open of its data.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{middleware, web, HttpServer};
use anyhow::Context;
use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::cluster::membership::MembershipMsg;
use crate::cluster::view::{NodeInfo, Role};
use crate::cluster::Cluster;
use crate::control::hosts::HostRegistry;
use crate::control::inbound::HostSide;
use crate::control::node_supervisor::{NodeMsg, NodeSupervisor, NodeSupervisorArgs};
use crate::events::Events;
use crate::http::{self, AppState};
use crate::scrape::extract::Limits;
use crate::scrape::fetch::Fetcher;
use crate::settings::Settings;
use crate::store::Store;

/// How long in-flight requests may take to finish at shutdown (below Swarm's
/// 10 s stop grace period).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The longest a node takes to exit after SIGTERM, stuck or not (Swarm's
/// default stop grace period is 10 s).
pub const HARD_STOP: Duration = Duration::from_secs(8);

/// Exit status of a node whose store failed and must be opened afresh
/// (EX_TEMPFAIL: restarting it is the cure).
pub const EXIT_STORE_FAILED: i32 = 75;

/// The base URL of the HTTP server as an operator on this host reaches it
/// (an unspecified address, `0.0.0.0` or `::`, is reached on loopback).
pub fn local_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        }
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// A running node.
pub struct App {
    http_addr: SocketAddr,
    server: actix_web::dev::Server,
    root: ActorRef<NodeMsg>,
    root_done: JoinHandle<()>,
    membership: Option<(ActorRef<MembershipMsg>, JoinHandle<()>)>,
    cluster: Cluster,
    store: Store,
    ready: Arc<AtomicBool>,
    store_stall: Duration,
    /// The engine, for the workers' fate at shutdown.
    isolation: crate::isolation::Isolation,
    node_id: String,
}

impl App {
    /// Opens the store, starts the actors and binds the HTTP server.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        // Before any work, so that no count is lost.
        crate::instruments::install();
        tokio::spawn(crate::instruments::throughput::run_sampler());
        std::fs::create_dir_all(&settings.data_dir).with_context(|| {
            format!(
                "creating the data directory {}",
                settings.data_dir.display()
            )
        })?;
        let (dir, cache) = (settings.data_dir.clone(), settings.cache_bytes);
        let store = tokio::task::spawn_blocking(move || Store::open(&dir, cache))
            .await?
            .with_context(|| format!("opening the database in {}", settings.data_dir.display()))?
            .with_log_retained(settings.log_retained)
            .with_disk_reserve(settings.disk_reserve_bytes);
        let node_id = store.node_id()?;
        let listener = std::net::TcpListener::bind(settings.http_addr)
            .with_context(|| format!("binding the HTTP address {}", settings.http_addr))?;
        let http_addr = listener.local_addr()?;
        let started_at = chrono::Utc::now();
        let fetcher = Fetcher::new(settings.fetch.clone()).context("building the HTTP client")?;
        let registry = |cluster: &Cluster| {
            HostRegistry::new(store.clone(), cluster.clone(), fetcher.politeness().clone())
        };
        let (cluster, membership, hosts) = match &settings.cluster {
            None => {
                let me = node_info(&settings, &node_id, http_addr, None, started_at);
                let cluster = Cluster::single(me);
                let hosts = registry(&cluster);
                (cluster, None, hosts)
            }
            Some(c) => {
                let mut c = c.clone();
                let listener = crate::cluster::guard::bind(c.listen_ip, c.port).await?;
                // Port 0 picked a free one: peers are told the bound port.
                c.port = listener.local_addr()?.port();
                let me = node_info(&settings, &node_id, http_addr, Some(&c), started_at);
                let cluster = Cluster::new(me);
                let hosts = registry(&cluster);
                let side = HostSide {
                    fetcher: Some(fetcher.clone()),
                    registry: Some(hosts.clone()),
                };
                let (membership, done) = crate::control::inbound::join_cluster(
                    c,
                    listener,
                    cluster.clone(),
                    store.clone(),
                    started_at,
                    side,
                )
                .await
                .context("joining the cluster")?;
                (cluster, Some((membership, done)), hosts)
            }
        };
        hosts.start().await.context("loading the host policies")?;
        let events = Events::new(&settings.node_name);
        let flusher = crate::store::Flusher::start(store.clone());
        let isolation = crate::isolation::Isolation::connect(settings.isolation.clone())
            .await
            .in_cluster(settings.cluster.as_ref().map(|c| c.cookie.as_str()));
        let args = NodeSupervisorArgs {
            store: store.clone(),
            node_name: settings.node_name.clone(),
            node_id: node_id.clone(),
            fetcher: fetcher.clone(),
            limits: Limits {
                max_depth: settings.max_html_depth,
            },
            restart: settings.restart,
            events: events.clone(),
            cluster: cluster.clone(),
            isolation: isolation.clone(),
            flusher: flusher.clone(),
            cookie: settings.cluster.as_ref().map(|c| c.cookie.clone()),
            allow_private_targets: settings.allow_private_targets.clone(),
            sources_dir: settings.sources_dir.clone(),
        };
        let (root, root_done) = Actor::spawn(None, NodeSupervisor, args)
            .await
            .context("starting the node's actors")?;

        let ready = Arc::new(AtomicBool::new(false));
        let state = web::Data::new(AppState {
            fetcher,
            limits: Limits {
                max_depth: settings.max_html_depth,
            },
            store: store.clone(),
            node_name: settings.node_name.clone(),
            node_id: node_id.clone(),
            http_addr,
            started_at,
            events,
            cluster: cluster.clone(),
            admin_token: settings.admin_token.clone(),
            read_token: settings.read_token.clone(),
            ready: ready.clone(),
            pages: http::collections::PageCache::new(settings.query_cache_bytes),
            flusher,
            targets: settings.fetch.targets.clone(),
            hosts,
            isolation: isolation.clone(),
            allow_private_targets: settings.allow_private_targets.clone(),
        });
        let server = HttpServer::new(move || {
            actix_web::App::new()
                .app_data(state.clone())
                .wrap(middleware::Compress::default())
                .wrap(middleware::from_fn(http::access_log))
                .configure(http::configure)
        })
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
        .disable_signals()
        .listen(listener)
        .context("listening on the HTTP address")?
        .run();
        ready.store(true, Ordering::Release);
        tracing::info!(
            addr = %http_addr,
            cluster_addr = %cluster.me().cluster,
            node = %settings.node_name,
            node_id = %node_id,
            data_dir = %settings.data_dir.display(),
            "http server listening"
        );
        let base = local_url(http_addr);
        tracing::info!(
            api = %format!("{base}/api/v1"),
            dashboard = %format!("{base}/dashboard"),
            metrics = %format!("{base}/metrics"),
            data_dir = %settings.data_dir.display(),
            node = %settings.node_name,
            "gleaner node ready"
        );
        Ok(App {
            http_addr,
            server,
            root,
            root_done,
            membership,
            cluster,
            store,
            ready,
            store_stall: settings.store_stall,
            isolation,
            node_id,
        })
    }

    /// The address the HTTP server is bound to.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Serves until SIGTERM or Ctrl-C (or until the actor tree gives up), then
    /// shuts down gracefully.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let App {
            server,
            root,
            mut root_done,
            membership,
            cluster,
            store,
            ready,
            store_stall,
            isolation,
            node_id,
            ..
        } = self;
        let stopping = watchdog(store.clone(), store_stall)?;
        let handle = server.handle();
        let mut serving = tokio::spawn(server);
        let outcome = tokio::select! {
            signal = stop_requested(&stopping) => {
                tracing::info!(signal, "shutting down");
                Ok(())
            }
            _ = &mut root_done => Err(anyhow::anyhow!("the node's actors stopped")),
            reason = cluster.fatal_reason() => Err(anyhow::anyhow!(reason)),
            served = &mut serving => served.context("the HTTP server panicked")?.context("the HTTP server failed"),
        };
        ready.store(false, Ordering::Release);
        // Workers normally outlive a stop, to be adopted on return; not when
        // the node's Swarm service is gone (bounded: Swarm's grace is 10 s).
        let _ = tokio::time::timeout(
            SHUTDOWN_GRACE,
            isolation.remove_workers_if_service_gone(&node_id),
        )
        .await;
        handle.stop(true).await;
        root.stop(Some("shutdown".into()));
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, root_done).await;
        if let Some((membership, done)) = membership {
            membership.stop(Some("shutdown".into()));
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, done).await;
        }
        // Bounded: a stuck disk must not hold the exit (the watchdog ends
        // the process at HARD_STOP anyway). Nothing unflushed was acknowledged.
        let flush = tokio::task::spawn_blocking(move || store.flush());
        match tokio::time::timeout(SHUTDOWN_GRACE, flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "final flush failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "final flush panicked"),
            Err(_) => tracing::error!("final flush did not return in time"),
        }
        tracing::info!("stopped");
        outcome
    }
}

/// What this node tells its peers about itself.
fn node_info(
    settings: &Settings,
    node_id: &str,
    http_addr: SocketAddr,
    cluster: Option<&crate::settings::ClusterSettings>,
    started_at: chrono::DateTime<chrono::Utc>,
) -> NodeInfo {
    let (cluster_addr, http) = match cluster {
        Some(c) => {
            let http = if http_addr.ip().is_unspecified() {
                format!("{}:{}", c.advertise, http_addr.port())
            } else {
                http_addr.to_string()
            };
            (format!("{}:{}", c.advertise, c.port), http)
        }
        None => (String::new(), http_addr.to_string()),
    };
    NodeInfo {
        node_id: node_id.to_owned(),
        name: settings.node_name.clone(),
        boot: uuid::Uuid::new_v4().simple().to_string(),
        started_at: started_at.timestamp_millis(),
        role: Role::Node,
        http,
        cluster: cluster_addr,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    }
}

/// Starts the watchdog thread (see the module doc) and returns the flag it
/// shares with the signal handlers: set once SIGTERM or SIGINT arrived.
fn watchdog(store: Store, stall: Duration) -> anyhow::Result<Arc<AtomicBool>> {
    let stopping = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stopping.clone())
            .context("installing the signal handlers")?;
    }
    // A wedged sled shows as a flush that never returns: keep one asked for
    // every few seconds (nearly free when nothing is dirty), so the stall
    // limit catches a wedge even while nothing writes.
    let probe = store.clone();
    std::thread::Builder::new()
        .name("gleaner-store-probe".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_secs(2));
            if probe.failed().is_some() {
                return;
            }
            let _ = probe.flush();
        })
        .context("starting the store probe thread")?;
    let flag = stopping.clone();
    std::thread::Builder::new()
        .name("gleaner-watchdog".into())
        .spawn(move || {
            let mut exit_by = None;
            loop {
                std::thread::sleep(Duration::from_millis(100));
                let stopping = flag.load(Ordering::Acquire);
                if stopping && *exit_by.get_or_insert_with(|| Instant::now() + HARD_STOP) <= Instant::now() {
                    tracing::warn!(after_ms = HARD_STOP.as_millis() as u64, "shutdown did not finish in time, exiting");
                    std::process::exit(0);
                }
                if let Some(age) = store.oldest_flush().filter(|age| *age >= stall) {
                    store.fail(format!("a flush has not returned for {} s", age.as_secs()));
                }
                if let Some(reason) = store.failed() {
                    if stopping {
                        std::process::exit(0);
                    }
                    tracing::error!(%reason, status = EXIT_STORE_FAILED, "the store cannot recover in this process, exiting so that the node is restarted");
                    std::process::exit(EXIT_STORE_FAILED);
                }
            }
        })
        .context("starting the watchdog thread")?;
    Ok(stopping)
}

/// Resolves on SIGTERM or Ctrl-C, naming which.
pub(crate) async fn shutdown_signal() -> &'static str {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
        "interrupt"
    };
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await,
            };
        tokio::select! {
            s = ctrl_c => s,
            _ = term.recv() => "terminate",
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await
}

/// Resolves on SIGTERM or Ctrl-C, or once the watchdog's handlers saw one
/// (tokio's own handlers are installed after them and may miss the first).
async fn stop_requested(stopping: &AtomicBool) -> &'static str {
    let seen = async {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            if stopping.load(Ordering::Acquire) {
                return "terminate";
            }
        }
    };
    tokio::select! {
        s = shutdown_signal() => s,
        s = seen => s,
    }
}
