//! Every setting of a node: a command-line flag, a `GLEANER_*` environment
//! variable of the same meaning, or a key in a TOML file (`config/default.toml`
//! when present, or the file `--config` names). Flags and variables win over
//! the file, the file over the defaults. Unknown keys in the file are errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

use crate::scrape::fetch::{FetchConfig, TargetPolicy};

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "gleaner", version, about = "A distributed data scraper")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: HTTP API, scrapers, collections.
    Node(NodeArgs),
    /// Run one isolated source and deliver its items to its owner node
    /// (started by the owner in a container; not for direct use).
    Worker(WorkerArgs),
    /// Preview a source's first pages and print the answer as JSON on
    /// stdout (started by a node in a container for an isolated source's
    /// preview; not for direct use).
    Preview(PreviewArgs),
}

/// A preview container's settings: a node's, plus the spec and the bounds.
#[derive(Debug, Clone, Args)]
pub struct PreviewArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// The source's spec, as JSON.
    #[arg(long, env = "GLEANER_PREVIEW_SPEC", hide_env_values = true)]
    pub spec: String,
    /// Pages to walk.
    #[arg(long, env = "GLEANER_PREVIEW_PAGES", default_value_t = 1)]
    pub pages: u32,
    /// The bound on the whole walk, in milliseconds.
    #[arg(long, env = "GLEANER_PREVIEW_BUDGET_MS", default_value_t = 60_000)]
    pub budget_ms: u64,
    /// The Chromium binary, for `render: browser` (the browser image's).
    #[arg(long, env = "GLEANER_CHROMIUM", default_value = "chromium")]
    pub chromium: std::path::PathBuf,
}

/// A worker's settings: a node's, plus the source and its owner.
#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub node: NodeArgs,
    /// The source's spec, as JSON.
    #[arg(long, env = "GLEANER_WORKER_SPEC", hide_env_values = true)]
    pub spec: String,
    /// The node id of the owner the worker delivers to.
    #[arg(long, env = "GLEANER_WORKER_OWNER")]
    pub owner: String,
    /// A file the worker touches every few seconds while it is healthy
    /// (running, its owner present): the image's HEALTHCHECK reads its age.
    #[arg(long, env = "GLEANER_HEALTH_FILE")]
    pub health_file: Option<std::path::PathBuf>,
    /// The Chromium binary, for `render: browser` (the browser image's).
    #[arg(long, env = "GLEANER_CHROMIUM", default_value = "chromium")]
    pub chromium: std::path::PathBuf,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Settings as given: each one optional, so flags, environment and file can be layered.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeArgs {
    /// A TOML file of settings (default: config/default.toml if it exists).
    #[arg(long, env = "GLEANER_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address the HTTP API listens on [default: 127.0.0.1:8080].
    #[arg(long, env = "GLEANER_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Directory of the node's database [default: ./data].
    #[arg(long, env = "GLEANER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// The node's display name [default: the hostname].
    #[arg(long, env = "GLEANER_NODE_NAME")]
    pub node_name: Option<String>,
    /// Bearer token for admin routes.
    #[arg(long, env = "GLEANER_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// File holding the admin token (a Swarm secret).
    #[arg(long, env = "GLEANER_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Bearer token for read routes (collections); none means they are open.
    #[arg(long, env = "GLEANER_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,
    /// File holding the read token (a Swarm secret).
    #[arg(long, env = "GLEANER_READ_TOKEN_FILE")]
    pub read_token_file: Option<PathBuf>,
    /// Log filter, in tracing's EnvFilter syntax [default: info].
    #[arg(long, env = "GLEANER_LOG")]
    pub log: Option<String>,
    /// Log format [default: text].
    #[arg(long, env = "GLEANER_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Non-public fetch targets allowed: "1" for all, or a comma-separated list of
    /// CIDRs [default: none; loopback, private, link-local and metadata addresses are refused].
    #[arg(long, env = "GLEANER_ALLOW_PRIVATE_TARGETS")]
    pub allow_private_targets: Option<String>,
    /// Total time for one fetch attempt, body included, in seconds [default: 30].
    #[arg(long, env = "GLEANER_FETCH_TIMEOUT_SECS")]
    pub fetch_timeout_secs: Option<u64>,
    /// Time to connect, in seconds [default: 5].
    #[arg(long, env = "GLEANER_CONNECT_TIMEOUT_SECS")]
    pub connect_timeout_secs: Option<u64>,
    /// Largest response body, counted after decompression [default: 10485760].
    #[arg(long, env = "GLEANER_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Extra attempts after a 5xx or a timeout [default: 2].
    #[arg(long, env = "GLEANER_FETCH_RETRIES")]
    pub fetch_retries: Option<u32>,
    /// A URL where site owners can reach this crawler's operator; appended to
    /// the default user agent as ` (+URL)` [default: none].
    #[arg(long, env = "GLEANER_CONTACT_URL")]
    pub contact_url: Option<String>,
    /// Requests open at once to one host, cluster-wide, unless the host's
    /// policy says otherwise [default: 8].
    #[arg(long, env = "GLEANER_HOST_MAX_IN_FLIGHT")]
    pub host_max_in_flight: Option<u32>,
    /// Least time between the starts of two requests to one host,
    /// cluster-wide, in ms, unless the host's policy says otherwise
    /// (robots.txt's Crawl-delay raises it) [default: 0].
    #[arg(long, env = "GLEANER_HOST_MIN_DELAY_MS")]
    pub host_min_delay_ms: Option<u64>,
    /// Deepest HTML element nesting accepted [default: 512].
    #[arg(long, env = "GLEANER_MAX_HTML_DEPTH")]
    pub max_html_depth: Option<usize>,
    /// sled page cache, in MiB [default: 64].
    #[arg(long, env = "GLEANER_CACHE_MB")]
    pub cache_mb: Option<u64>,
    /// Rendered pages of items kept for repeated queries, in MiB; 0 turns the cache off [default: 64].
    #[arg(long, env = "GLEANER_QUERY_CACHE_MB")]
    pub query_cache_mb: Option<u64>,
    /// Free space kept on the data directory's filesystem, in MiB: below it
    /// writes are refused (HTTP 507 `disk_full`) until space returns
    /// [default: 64].
    #[arg(long, env = "GLEANER_DISK_RESERVE_MB")]
    pub disk_reserve_mb: Option<u64>,
    /// A flush that has not returned after this many seconds fails the
    /// store, and the node exits to be restarted [default: 30].
    #[arg(long, env = "GLEANER_STORE_STALL_SECS")]
    pub store_stall_secs: Option<u64>,
    /// First delay before restarting a failed scraper, in ms; it doubles each time [default: 500].
    #[arg(long, env = "GLEANER_RESTART_BACKOFF_MS")]
    pub restart_backoff_ms: Option<u64>,
    /// Failures within the restart window that mark a source failed [default: 3].
    #[arg(long, env = "GLEANER_RESTART_INTENSITY")]
    pub restart_intensity: Option<u32>,
    /// The restart window, in seconds [default: 60].
    #[arg(long, env = "GLEANER_RESTART_WINDOW_SECS")]
    pub restart_window_secs: Option<u64>,
    /// Port of the cluster listener [default: 4697; 0 picks a free one]. The
    /// listener runs only when a cookie is set.
    #[arg(long, env = "GLEANER_CLUSTER_PORT")]
    pub cluster_port: Option<u16>,
    /// The host peers dial to reach this node [default: 127.0.0.1 when the
    /// HTTP address is loopback, else the hostname].
    #[arg(long, env = "GLEANER_CLUSTER_ADVERTISE")]
    pub cluster_advertise: Option<String>,
    /// Peers to join, as a comma-separated list of host:port.
    #[arg(long, env = "GLEANER_SEEDS")]
    pub seeds: Option<String>,
    /// A DNS name whose addresses are peers (in Swarm: tasks.<service>),
    /// re-resolved periodically; peers listen on the cluster port.
    #[arg(long, env = "GLEANER_DISCOVERY_DNS")]
    pub discovery_dns: Option<String>,
    /// The shared secret that authenticates cluster members.
    #[arg(long, env = "GLEANER_COOKIE", hide_env_values = true)]
    pub cookie: Option<String>,
    /// File holding the cookie (a Swarm secret).
    #[arg(long, env = "GLEANER_COOKIE_FILE")]
    pub cookie_file: Option<PathBuf>,
    /// Item batches kept per collection and origin node for peers that fall
    /// behind [default: 10000]; a peer further behind copies the collection.
    #[arg(long, env = "GLEANER_LOG_RETAINED")]
    pub log_retained: Option<u64>,
    /// The image of worker containers for isolated sources (this node's own image).
    #[arg(long, env = "GLEANER_WORKER_IMAGE")]
    pub worker_image: Option<String>,
    /// The Docker network worker containers join (one that reaches this node).
    #[arg(long, env = "GLEANER_WORKER_NETWORK")]
    pub worker_network: Option<String>,
    /// Memory limit of a worker container, in MiB [default: 256].
    #[arg(long, env = "GLEANER_WORKER_MEMORY_MB")]
    pub worker_memory_mb: Option<u64>,
    /// CPU limit of a worker container, in CPUs [default: 0.5].
    #[arg(long, env = "GLEANER_WORKER_CPUS")]
    pub worker_cpus: Option<f64>,
    /// The image of worker containers for `render: browser` sources: the
    /// node's image with Chromium (`scripts/image.sh --browser`).
    #[arg(long, env = "GLEANER_BROWSER_IMAGE")]
    pub browser_image: Option<String>,
    /// Memory limit of a browser worker container, in MiB [default: 1024].
    #[arg(long, env = "GLEANER_BROWSER_MEMORY_MB")]
    pub browser_memory_mb: Option<u64>,
    /// Interval between heartbeats to each peer, in ms [default: 300].
    #[arg(long, env = "GLEANER_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Silence after which a peer is marked down, in ms [default: 3000]; it
    /// is shown `suspect` from a third of that.
    #[arg(long, env = "GLEANER_PEER_TIMEOUT_MS")]
    pub peer_timeout_ms: Option<u64>,
    /// Time an inbound cluster connection has to authenticate, in ms
    /// [default: 5000]; the node closes it after that.
    #[arg(long, env = "GLEANER_CLUSTER_HANDSHAKE_TIMEOUT_MS")]
    pub cluster_handshake_timeout_ms: Option<u64>,
    /// A directory of source files (`*.json`, `*.toml`, `*.yaml`, `*.yml`),
    /// applied at start and on change; a node where it does not exist
    /// leaves file-managed sources alone [default: config/sources].
    #[arg(long, env = "GLEANER_SOURCES_DIR")]
    pub sources_dir: Option<PathBuf>,
}

impl NodeArgs {
    /// Fills every unset value from `file`.
    fn or(self, file: NodeArgs) -> NodeArgs {
        NodeArgs {
            config: self.config,
            http_addr: self.http_addr.or(file.http_addr),
            data_dir: self.data_dir.or(file.data_dir),
            node_name: self.node_name.or(file.node_name),
            admin_token: self.admin_token.or(file.admin_token),
            admin_token_file: self.admin_token_file.or(file.admin_token_file),
            read_token: self.read_token.or(file.read_token),
            read_token_file: self.read_token_file.or(file.read_token_file),
            log: self.log.or(file.log),
            log_format: self.log_format.or(file.log_format),
            allow_private_targets: self.allow_private_targets.or(file.allow_private_targets),
            fetch_timeout_secs: self.fetch_timeout_secs.or(file.fetch_timeout_secs),
            connect_timeout_secs: self.connect_timeout_secs.or(file.connect_timeout_secs),
            max_body_bytes: self.max_body_bytes.or(file.max_body_bytes),
            fetch_retries: self.fetch_retries.or(file.fetch_retries),
            contact_url: self.contact_url.or(file.contact_url),
            host_max_in_flight: self.host_max_in_flight.or(file.host_max_in_flight),
            host_min_delay_ms: self.host_min_delay_ms.or(file.host_min_delay_ms),
            max_html_depth: self.max_html_depth.or(file.max_html_depth),
            cache_mb: self.cache_mb.or(file.cache_mb),
            query_cache_mb: self.query_cache_mb.or(file.query_cache_mb),
            disk_reserve_mb: self.disk_reserve_mb.or(file.disk_reserve_mb),
            store_stall_secs: self.store_stall_secs.or(file.store_stall_secs),
            restart_backoff_ms: self.restart_backoff_ms.or(file.restart_backoff_ms),
            restart_intensity: self.restart_intensity.or(file.restart_intensity),
            restart_window_secs: self.restart_window_secs.or(file.restart_window_secs),
            cluster_port: self.cluster_port.or(file.cluster_port),
            cluster_advertise: self.cluster_advertise.or(file.cluster_advertise),
            seeds: self.seeds.or(file.seeds),
            discovery_dns: self.discovery_dns.or(file.discovery_dns),
            cookie: self.cookie.or(file.cookie),
            cookie_file: self.cookie_file.or(file.cookie_file),
            log_retained: self.log_retained.or(file.log_retained),
            worker_image: self.worker_image.or(file.worker_image),
            worker_network: self.worker_network.or(file.worker_network),
            worker_memory_mb: self.worker_memory_mb.or(file.worker_memory_mb),
            worker_cpus: self.worker_cpus.or(file.worker_cpus),
            browser_image: self.browser_image.or(file.browser_image),
            browser_memory_mb: self.browser_memory_mb.or(file.browser_memory_mb),
            heartbeat_ms: self.heartbeat_ms.or(file.heartbeat_ms),
            peer_timeout_ms: self.peer_timeout_ms.or(file.peer_timeout_ms),
            cluster_handshake_timeout_ms: self
                .cluster_handshake_timeout_ms
                .or(file.cluster_handshake_timeout_ms),
            sources_dir: self.sources_dir.or(file.sources_dir),
        }
    }
}

/// When a failed actor is restarted, and when restarting stops.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Delay before the first restart; it doubles with each failure in the window.
    pub backoff: Duration,
    /// Longest delay between restarts.
    pub max_backoff: Duration,
    /// More failures than this within `window` marks the child failed.
    pub intensity: u32,
    pub window: Duration,
}

/// Resolved settings of a node.
#[derive(Debug, Clone)]
pub struct Settings {
    pub http_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub node_name: String,
    pub admin_token: Option<String>,
    pub read_token: Option<String>,
    pub log: String,
    pub log_format: LogFormat,
    pub fetch: FetchConfig,
    pub max_html_depth: usize,
    pub cache_bytes: u64,
    /// The query cache's budget (0: off).
    pub query_cache_bytes: u64,
    /// Batches kept in each collection's log per origin.
    pub log_retained: u64,
    /// Free bytes kept on the data directory's filesystem.
    pub disk_reserve_bytes: u64,
    /// How long a flush may take before the store is declared failed.
    pub store_stall: Duration,
    pub restart: RestartPolicy,
    /// Cluster membership; `None` runs a cluster of one (no listener).
    pub cluster: Option<ClusterSettings>,
    /// How worker containers for isolated sources are made.
    pub isolation: IsolationConfig,
    /// As given, to pass on to worker containers.
    pub allow_private_targets: Option<String>,
    /// The sources directory (relative paths from the working directory).
    pub sources_dir: PathBuf,
}

/// How a node joins the cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub port: u16,
    /// The address the listener binds to (loopback for a loopback node).
    pub listen_ip: std::net::IpAddr,
    /// The host peers dial.
    pub advertise: String,
    pub seeds: Vec<String>,
    pub discovery_dns: Option<String>,
    pub cookie: String,
    pub heartbeat: Duration,
    pub peer_timeout: Duration,
    /// How long an inbound connection may take to authenticate.
    pub handshake_timeout: Duration,
}

/// Cookies shorter than this are refused: the handshake is only as strong as the cookie.
const MIN_COOKIE_LEN: usize = 16;

impl Settings {
    /// Layers flags/environment over the TOML file over the defaults, reads
    /// secret files, and refuses unsafe combinations.
    pub fn resolve(args: NodeArgs) -> anyhow::Result<Settings> {
        let file = match &args.config {
            Some(path) => read_file_settings(path)?,
            None => {
                let default = Path::new("config/default.toml");
                if default.exists() {
                    read_file_settings(default)?
                } else {
                    NodeArgs::default()
                }
            }
        };
        let a = args.or(file);
        let admin_token = secret(
            "admin token",
            a.admin_token.clone(),
            a.admin_token_file.clone(),
        )?;
        let read_token = secret(
            "read token",
            a.read_token.clone(),
            a.read_token_file.clone(),
        )?;
        let http_addr = a
            .http_addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        if !http_addr.ip().is_loopback() && admin_token.is_none() {
            bail!(
                "refusing to serve on {http_addr} without an admin token: set GLEANER_ADMIN_TOKEN \
                 or GLEANER_ADMIN_TOKEN_FILE, or bind to a loopback address"
            );
        }
        let cluster = cluster_settings(&a, http_addr)?;
        let cpus = a.worker_cpus.unwrap_or(0.5);
        if !(0.01..=64.0).contains(&cpus) {
            bail!("GLEANER_WORKER_CPUS must be between 0.01 and 64");
        }
        let isolation = IsolationConfig {
            image: a.worker_image.clone().filter(|i| !i.trim().is_empty()),
            network: a.worker_network.clone().filter(|n| !n.trim().is_empty()),
            memory_bytes: (a.worker_memory_mb.unwrap_or(256).max(16) * 1024 * 1024) as i64,
            nano_cpus: (cpus * 1e9) as i64,
            pids_limit: 128,
            browser_image: a.browser_image.clone().filter(|i| !i.trim().is_empty()),
            browser_memory_bytes: (a.browser_memory_mb.unwrap_or(1024).max(128) * 1024 * 1024)
                as i64,
            contact_url: a.contact_url.clone().filter(|c| !c.trim().is_empty()),
            log_filter: a.log.clone().filter(|l| !l.trim().is_empty()),
        };
        let allow_private_targets = a.allow_private_targets.clone();
        let targets = match a.allow_private_targets.as_deref() {
            None => TargetPolicy::PublicOnly,
            Some(s) => s
                .parse::<TargetPolicy>()
                .map_err(|e| anyhow::anyhow!("GLEANER_ALLOW_PRIVATE_TARGETS: {e}"))?,
        };
        let defaults = FetchConfig::default();
        let user_agent = match a.contact_url.as_deref().map(str::trim) {
            None | Some("") => defaults.user_agent.clone(),
            Some(contact) => {
                // The parsed form: the URL parser drops tabs and newlines,
                // which a header value may not hold.
                let contact = crate::domain::spec::validate_url(contact)
                    .map_err(|e| anyhow::anyhow!("GLEANER_CONTACT_URL: {e}"))?;
                format!("{} (+{contact})", defaults.user_agent)
            }
        };
        let fetch = FetchConfig {
            user_agent,
            connect_timeout: a
                .connect_timeout_secs
                .map_or(defaults.connect_timeout, Duration::from_secs),
            total_timeout: a
                .fetch_timeout_secs
                .map_or(defaults.total_timeout, Duration::from_secs),
            max_body_bytes: a.max_body_bytes.unwrap_or(defaults.max_body_bytes),
            retries: a.fetch_retries.unwrap_or(defaults.retries),
            targets,
            hosts: host_defaults(&a)?,
            ..defaults
        };
        if fetch.total_timeout.is_zero() || fetch.connect_timeout.is_zero() {
            bail!("fetch timeouts must be at least one second");
        }
        let node_name = match a.node_name {
            Some(n) if !n.trim().is_empty() => n,
            Some(_) => bail!("GLEANER_NODE_NAME must not be empty"),
            None => hostname::get()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "gleaner".into()),
        };
        Ok(Settings {
            sources_dir: a
                .sources_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("config/sources")),
            cluster,
            isolation,
            allow_private_targets,
            http_addr,
            data_dir: a.data_dir.unwrap_or_else(|| PathBuf::from("./data")),
            node_name,
            admin_token,
            read_token,
            log: a.log.unwrap_or_else(|| "info".into()),
            log_format: a.log_format.unwrap_or_default(),
            fetch,
            max_html_depth: a.max_html_depth.unwrap_or(512),
            cache_bytes: a.cache_mb.unwrap_or(64) * 1024 * 1024,
            query_cache_bytes: a.query_cache_mb.unwrap_or(64) * 1024 * 1024,
            log_retained: a.log_retained.unwrap_or(crate::store::LOG_RETAINED).max(1),
            disk_reserve_bytes: a
                .disk_reserve_mb
                .map_or(crate::store::guard::DEFAULT_RESERVE, |mb| mb * 1024 * 1024),
            store_stall: Duration::from_secs(a.store_stall_secs.unwrap_or(30).max(1)),
            restart: RestartPolicy {
                backoff: Duration::from_millis(a.restart_backoff_ms.unwrap_or(500)),
                max_backoff: Duration::from_secs(60),
                intensity: a.restart_intensity.unwrap_or(3),
                window: Duration::from_secs(a.restart_window_secs.unwrap_or(60)),
            },
        })
    }
}

/// The cluster part of the settings: peers need a cookie, a cookie needs a
/// sensible length, and the listener stays on loopback for a loopback node.
fn cluster_settings(
    a: &NodeArgs,
    http_addr: SocketAddr,
) -> anyhow::Result<Option<ClusterSettings>> {
    let cookie = secret("cookie", a.cookie.clone(), a.cookie_file.clone())?;
    let seeds: Vec<String> = a
        .seeds
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let dns = a
        .discovery_dns
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let port = a.cluster_port.unwrap_or(4697);
    for seed in &seeds {
        match seed.rsplit_once(':') {
            Some((host, p)) if !host.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0) => {}
            _ => bail!("GLEANER_SEEDS: '{seed}' is not host:port"),
        }
    }
    let Some(cookie) = cookie else {
        if !seeds.is_empty() || dns.is_some() {
            bail!(
                "peers are configured (GLEANER_SEEDS or GLEANER_DISCOVERY_DNS) but no cookie: \
                 set GLEANER_COOKIE or GLEANER_COOKIE_FILE to the cluster's shared secret"
            );
        }
        return Ok(None);
    };
    if cookie.len() < MIN_COOKIE_LEN {
        bail!("the cookie must be at least {MIN_COOKIE_LEN} characters (use 32 random hex digits or more)");
    }
    let loopback = http_addr.ip().is_loopback();
    let advertise = match a.cluster_advertise.as_deref().map(str::trim) {
        Some(h) if !h.is_empty() => h.to_owned(),
        _ if loopback => "127.0.0.1".to_owned(),
        _ => hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .context("GLEANER_CLUSTER_ADVERTISE is unset and the hostname is unreadable")?,
    };
    let listen_ip = if loopback {
        http_addr.ip()
    } else {
        std::net::IpAddr::from([0u8; 16])
    };
    let heartbeat = Duration::from_millis(a.heartbeat_ms.unwrap_or(300).max(50));
    let peer_timeout = Duration::from_millis(a.peer_timeout_ms.unwrap_or(3000));
    if peer_timeout < heartbeat * 3 {
        bail!("GLEANER_PEER_TIMEOUT_MS must be at least three heartbeats");
    }
    let handshake_timeout =
        Duration::from_millis(a.cluster_handshake_timeout_ms.unwrap_or(5000).max(100));
    Ok(Some(ClusterSettings {
        port,
        listen_ip,
        advertise,
        seeds,
        discovery_dns: dns,
        cookie,
        heartbeat,
        peer_timeout,
        handshake_timeout,
    }))
}

/// Every host's policy unless an override says otherwise.
fn host_defaults(a: &NodeArgs) -> anyhow::Result<crate::domain::HostPolicy> {
    let defaults = crate::domain::HostPolicy::default();
    let o = crate::domain::HostOverride {
        max_in_flight: a.host_max_in_flight,
        min_delay_ms: a.host_min_delay_ms,
        obey_robots: None,
    };
    o.validate().map_err(|e| {
        let name = match e.field.as_str() {
            "max_in_flight" => "GLEANER_HOST_MAX_IN_FLIGHT",
            _ => "GLEANER_HOST_MIN_DELAY_MS",
        };
        anyhow::anyhow!("{name}: {}", e.message)
    })?;
    Ok(defaults.with(&o))
}

fn read_file_settings(path: &Path) -> anyhow::Result<NodeArgs> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading settings file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("settings file {}", path.display()))
}

/// A secret given directly or through a file (trailing newline dropped);
/// giving both is an error, and so is an empty one.
fn secret(
    what: &str,
    value: Option<String>,
    file: Option<PathBuf>,
) -> anyhow::Result<Option<String>> {
    let value = match (value, file) {
        (Some(_), Some(_)) => bail!("the {what} is given both directly and as a file: give one"),
        (Some(v), None) => v,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .with_context(|| format!("reading the {what} from {}", path.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        (None, None) => return Ok(None),
    };
    if value.is_empty() {
        bail!("the {what} is empty");
    }
    Ok(Some(value))
}

/// How worker containers for isolated sources are made (`isolation`).
#[derive(Debug, Clone)]
pub struct IsolationConfig {
    /// The image to run (the node's own); none means isolation is not configured.
    pub image: Option<String>,
    /// The Docker network the worker joins (it must reach the owner's cluster port).
    pub network: Option<String>,
    pub memory_bytes: i64,
    pub nano_cpus: i64,
    pub pids_limit: i64,
    /// The image for `render: browser` workers (`GLEANER_BROWSER_IMAGE`).
    pub browser_image: Option<String>,
    /// A browser worker's memory limit (Chromium needs more than a worker).
    pub browser_memory_bytes: i64,
    /// `GLEANER_CONTACT_URL`, handed on to workers so that their user agent
    /// is the node's.
    pub contact_url: Option<String>,
    /// `GLEANER_LOG` as the operator set it, handed on to workers and
    /// previews so that their logs are filtered as the node's are.
    pub log_filter: Option<String>,
}

#[cfg(test)]
mod tests;
