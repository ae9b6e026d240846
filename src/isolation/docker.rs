//! Worker containers for isolated sources, through the Docker Engine API
//! (bollard). This module only speaks to the engine: which containers exist
//! (found by their labels), starting one for a source, removing one. The
//! WorkerSupervisor actor decides when.
//!
//! A worker container runs `gleaner worker` for one source from the node's
//! own image. It carries gleaner labels, memory, CPU and pids limits, a
//! read-only root filesystem (a small tmpfs holds its scratch database), no
//! capabilities, no-new-privileges and no Docker socket.

use std::collections::HashMap;
use std::sync::Arc;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StartContainerOptions,
};
use bollard::Docker;

use crate::domain::{SourceSpec, WorkerContainer};
use crate::settings::IsolationConfig;

/// Label keys on worker containers.
pub const LABEL_ROLE: &str = "org.gleaner.role";
pub const LABEL_OWNER: &str = "org.gleaner.owner";
pub const LABEL_SOURCE: &str = "org.gleaner.source";
pub const LABEL_SPEC: &str = "org.gleaner.spec-version";
/// A digest of the cluster's cookie: which cluster a worker belongs to, so
/// that any node of it may remove the orphans of a dead one.
pub const LABEL_CLUSTER: &str = "org.gleaner.cluster";
/// `browser` for a worker of a `render: browser` source.
pub const LABEL_RENDER: &str = "org.gleaner.render";

/// Where a worker keeps its scratch database (and Chromium its profile).
const SCRATCH: &str = "/scratch";
/// The file a worker touches while healthy (see the image's HEALTHCHECK).
const HEALTH_FILE: &str = "/scratch/healthy";
/// The label Swarm puts on a stack's containers and networks: its name.
const STACK_LABEL: &str = "com.docker.stack.namespace";
/// How long a node whose stack was removed tries to remove the stack's
/// network (within its stop grace, see `remove_stack_network`).
const NETWORK_REMOVAL: std::time::Duration = std::time::Duration::from_secs(3);
const NETWORK_RETRY: std::time::Duration = std::time::Duration::from_millis(200);
/// A browser worker's pids limit: Chromium's processes and threads count.
const BROWSER_PIDS: i64 = 512;
/// A browser worker's /dev/shm (Chromium's shared memory between processes).
const BROWSER_SHM_BYTES: i64 = 256 * 1024 * 1024;

/// Why the engine could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IsolationError {
    #[error("the Docker engine is not reachable: {0}")]
    Unreachable(String),
    #[error("no worker image is configured: set GLEANER_WORKER_IMAGE to this node's image")]
    NoImage,
    #[error("no browser image is configured: set GLEANER_BROWSER_IMAGE (scripts/image.sh --browser builds one)")]
    NoBrowserImage,
    #[error("the Docker engine refused: {0}")]
    Engine(String),
    #[error("this node is leaving for good (its service is gone): no worker starts")]
    Closed,
    #[error("the container did not finish within {0} ms")]
    TimedOut(u128),
}

/// Everything a worker needs to run one source.
#[derive(Debug, Clone)]
pub struct WorkerPlan {
    pub spec: SourceSpec,
    pub spec_version: String,
    /// This node: the worker's owner.
    pub owner_id: String,
    pub owner_name: String,
    /// The owner's cluster address, the worker's only seed.
    pub owner_cluster: String,
    pub cookie: String,
    /// Passed on as the worker's GLEANER_ALLOW_PRIVATE_TARGETS.
    pub allow_private_targets: Option<String>,
}

/// What a preview container is asked: walk `pages` pages of `spec` within
/// `budget`, and print the answer.
#[derive(Debug, Clone)]
pub struct PreviewPlan {
    pub spec: SourceSpec,
    pub pages: u32,
    pub budget: std::time::Duration,
    /// This node, which started it.
    pub owner_id: String,
    pub owner_name: String,
    /// Passed on as the container's GLEANER_ALLOW_PRIVATE_TARGETS.
    pub allow_private_targets: Option<String>,
}

/// How long after its budget a preview container is waited for (its own
/// deadline ends the walk; this covers its exit).
const PREVIEW_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest budget any preview is given, whatever its spec.
pub const MAX_PREVIEW_BUDGET: std::time::Duration = std::time::Duration::from_secs(120);
/// A preview container older than this (by its creation time) has no
/// preview waiting on it any more: its node gave up on it at
/// [`MAX_PREVIEW_BUDGET`] plus [`PREVIEW_GRACE`] after creating it. The
/// extra margin covers clocks and the removal under way.
pub const PREVIEW_MAX_AGE: std::time::Duration =
    std::time::Duration::from_secs(MAX_PREVIEW_BUDGET.as_secs() + PREVIEW_GRACE.as_secs() + 30);

/// The [`LABEL_CLUSTER`] value of the cluster with this cookie (a digest:
/// the label never shows the cookie).
pub fn cluster_label(cookie: &str) -> String {
    let digest = blake3::hash(format!("gleaner-cluster:{cookie}").as_bytes());
    digest.to_hex()[..16].to_owned()
}

/// A preview container on this engine, as the orphan pass sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviewContainer {
    pub id: String,
    pub name: String,
    /// The node id of the node that started it.
    pub owner: String,
    /// The engine's state: `created`, `running`, `exited`, ...
    pub state: String,
    /// When it was created (Unix seconds, the engine's clock).
    pub created: i64,
}

/// Why a preview container is stray (and is removed), or `None` while a
/// preview may still wait on it. `me` is this node's id; `live_here`: this
/// process is running the preview that made it; `owner_live`: its owner is
/// a live member of the cluster; `now`: Unix seconds.
///
/// - past [`PREVIEW_MAX_AGE`], whatever its state and owner: its preview
///   gave up on it;
/// - one of this node's that no preview of this process waits on: left by
///   an earlier run of this node (killed mid-preview), or by a preview whose
///   request was dropped before it removed its container;
/// - another node's that no longer runs, when that node is no live member:
///   a dead node's (its own budget ended it). One that still runs is left
///   to end by its budget; a live node's, to that node.
pub fn stray_preview(
    c: &PreviewContainer,
    me: &str,
    live_here: bool,
    owner_live: bool,
    now: i64,
) -> Option<&'static str> {
    let age = now.saturating_sub(c.created);
    if age > PREVIEW_MAX_AGE.as_secs() as i64 {
        return Some("it outlived the longest preview budget");
    }
    if c.owner == me {
        return (!live_here).then_some("no preview of this node waits on it");
    }
    let stopped = matches!(c.state.as_str(), "created" | "exited" | "dead");
    (stopped && !owner_live).then_some("its node is gone and it stopped")
}

/// A container as the engine lists it: what the listings above read.
struct Labelled {
    id: String,
    name: String,
    state: String,
    created: i64,
    labels: HashMap<String, String>,
}

/// A worker container of the cluster, as the orphan sweep sees it.
#[derive(Debug, Clone)]
pub struct ClusterWorker {
    pub container: WorkerContainer,
    /// The node id of the node that started it.
    pub owner: String,
}

/// A handle on the engine, or the reason there is none.
#[derive(Clone)]
pub struct Isolation {
    docker: Result<Docker, IsolationError>,
    config: IsolationConfig,
    /// Shared by every clone: true once this node removes its workers for
    /// good. A start holds it for reading from its check to the container's
    /// start, so none is under way, and none follows, once it is set.
    closed: Arc<tokio::sync::RwLock<bool>>,
    /// The [`LABEL_CLUSTER`] of this node's cluster (none without a cookie):
    /// put on its preview containers, so that any node of it may remove
    /// those a dead node left.
    cluster: Option<String>,
    /// The names of the preview containers this process's previews wait on,
    /// shared by every clone; a name is in before its container is created.
    previews: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// Holds a preview container's name in [`Isolation::previews`] while its
/// preview runs, cancelled or not.
struct LivePreview<'a> {
    previews: &'a std::sync::Mutex<std::collections::HashSet<String>>,
    name: String,
}

impl Drop for LivePreview<'_> {
    fn drop(&mut self) {
        self.previews
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.name);
    }
}

fn engine(e: bollard::errors::Error) -> IsolationError {
    match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => {
            IsolationError::Engine(message)
        }
        other => IsolationError::Unreachable(other.to_string()),
    }
}

/// The container name of a source's worker on a node. Names are unique per
/// engine, and several nodes (or clusters) may share one: the owner's id
/// makes it unique, its display name makes it readable.
pub fn container_name(owner_name: &str, owner_id: &str, source: &str) -> String {
    let clean: String = owner_name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(24)
        .collect();
    let id: String = owner_id.chars().take(8).collect();
    format!("gleaner-worker-{source}-{clean}-{id}")
}

impl Isolation {
    /// Connects to the local engine (DOCKER_HOST or the default socket) and
    /// agrees on an API version; an unreachable engine is remembered, not
    /// fatal. Without a worker image there is nothing to start, so the engine
    /// is not asked at all.
    pub async fn connect(config: IsolationConfig) -> Isolation {
        let docker = if config.image.is_none() {
            Err(IsolationError::NoImage)
        } else {
            match Docker::connect_with_local_defaults() {
                Ok(d) => d
                    .negotiate_version()
                    .await
                    .map_err(|e| IsolationError::Unreachable(e.to_string())),
                Err(e) => Err(IsolationError::Unreachable(e.to_string())),
            }
        };
        if let Err(e) = &docker {
            tracing::info!(error = %e, "isolated sources cannot run on this node");
        }
        Isolation {
            docker,
            config,
            closed: Arc::default(),
            cluster: None,
            previews: Arc::default(),
        }
    }

    /// The same handle, for the node of the cluster with this cookie (its
    /// preview containers carry the cluster's label).
    pub fn in_cluster(mut self, cookie: Option<&str>) -> Isolation {
        self.cluster = cookie.map(cluster_label);
        self
    }

    /// Is a preview of this process waiting on the container `name`?
    pub fn previewing(&self, name: &str) -> bool {
        self.previews
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(name)
    }

    /// The preview containers the orphan pass looks at: those of this
    /// node's cluster, or without a cluster this node's own, running or not.
    pub async fn list_previews(
        &self,
        owner_id: &str,
    ) -> Result<Vec<PreviewContainer>, IsolationError> {
        let scope = match &self.cluster {
            Some(cluster) => format!("{LABEL_CLUSTER}={cluster}"),
            None => format!("{LABEL_OWNER}={owner_id}"),
        };
        let listed = self
            .containers_labelled(vec![format!("{LABEL_ROLE}=preview"), scope])
            .await?;
        Ok(listed
            .into_iter()
            .map(|c| PreviewContainer {
                owner: c.labels.get(LABEL_OWNER).cloned().unwrap_or_default(),
                id: c.id,
                name: c.name,
                state: c.state,
                created: c.created,
            })
            .collect())
    }

    fn docker(&self) -> Result<&Docker, IsolationError> {
        self.docker.as_ref().map_err(Clone::clone)
    }

    /// The worker containers this node owns, running or not.
    pub async fn list(&self, owner_id: &str) -> Result<Vec<WorkerContainer>, IsolationError> {
        let found = self
            .list_labelled(vec![
                format!("{LABEL_ROLE}=worker"),
                format!("{LABEL_OWNER}={owner_id}"),
            ])
            .await?;
        Ok(found.into_iter().map(|w| w.container).collect())
    }

    /// Every worker container of the cluster on this engine, whoever owns it.
    pub async fn list_cluster(&self, cluster: &str) -> Result<Vec<ClusterWorker>, IsolationError> {
        self.list_labelled(vec![
            format!("{LABEL_ROLE}=worker"),
            format!("{LABEL_CLUSTER}={cluster}"),
        ])
        .await
    }

    async fn list_labelled(
        &self,
        labels: Vec<String>,
    ) -> Result<Vec<ClusterWorker>, IsolationError> {
        let listed = self.containers_labelled(labels).await?;
        Ok(listed
            .into_iter()
            .filter_map(|c| {
                Some(ClusterWorker {
                    owner: c.labels.get(LABEL_OWNER).cloned().unwrap_or_default(),
                    container: WorkerContainer {
                        source: c.labels.get(LABEL_SOURCE)?.clone(),
                        spec_version: c.labels.get(LABEL_SPEC).cloned().unwrap_or_default(),
                        id: c.id,
                        name: c.name,
                        state: c.state,
                    },
                })
            })
            .collect())
    }

    /// The containers on this engine carrying every one of `labels`,
    /// running or not (those the engine lists without an id left out).
    async fn containers_labelled(
        &self,
        labels: Vec<String>,
    ) -> Result<Vec<Labelled>, IsolationError> {
        let docker = self.docker()?;
        let filters = HashMap::from([("label", labels)]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let listed = docker
            .list_containers(Some(options))
            .await
            .map_err(engine)?;
        Ok(listed
            .into_iter()
            .filter_map(|c| {
                Some(Labelled {
                    id: c.id?,
                    name: c
                        .names
                        .and_then(|n| n.into_iter().next())
                        .unwrap_or_default()
                        .trim_start_matches('/')
                        .to_owned(),
                    state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                    created: c.created.unwrap_or_default(),
                    labels: c.labels.unwrap_or_default(),
                })
            })
            .collect())
    }

    /// The image for a worker (or preview) of `spec`: the browser variant
    /// for `render: browser`.
    fn image_for(&self, spec: &SourceSpec) -> Result<String, IsolationError> {
        if spec.render == crate::domain::spec::Render::Browser {
            self.config
                .browser_image
                .clone()
                .ok_or(IsolationError::NoBrowserImage)
        } else {
            self.config.image.clone().ok_or(IsolationError::NoImage)
        }
    }

    /// Creates and starts the worker container for `plan`.
    pub async fn start(&self, plan: &WorkerPlan) -> Result<WorkerContainer, IsolationError> {
        let docker = self.docker()?;
        let closed = self.closed.read().await;
        if *closed {
            return Err(IsolationError::Closed);
        }
        let browser = plan.spec.render == crate::domain::spec::Render::Browser;
        let image = self.image_for(&plan.spec)?;
        let name = container_name(&plan.owner_name, &plan.owner_id, &plan.spec.id);
        let spec_json = serde_json::to_string(&plan.spec).expect("a spec always serialises");
        let mut env = vec![
            format!("GLEANER_WORKER_SPEC={spec_json}"),
            format!("GLEANER_WORKER_OWNER={}", plan.owner_id),
            format!("GLEANER_SEEDS={}", plan.owner_cluster),
            format!("GLEANER_COOKIE={}", plan.cookie),
            format!("GLEANER_CLUSTER_ADVERTISE={name}"),
            "GLEANER_CLUSTER_PORT=4697".to_owned(),
            format!("GLEANER_HEALTH_FILE={HEALTH_FILE}"),
        ];
        env.extend(self.container_env(&name, plan.allow_private_targets.as_deref()));
        let labels = HashMap::from([
            (LABEL_ROLE.to_owned(), "worker".to_owned()),
            (LABEL_OWNER.to_owned(), plan.owner_id.clone()),
            (LABEL_SOURCE.to_owned(), plan.spec.id.clone()),
            (LABEL_SPEC.to_owned(), plan.spec_version.clone()),
            (LABEL_CLUSTER.to_owned(), cluster_label(&plan.cookie)),
            (
                LABEL_RENDER.to_owned(),
                if browser { "browser" } else { "http" }.to_owned(),
            ),
        ]);
        let host = self.hardened(browser);
        let body = ContainerCreateBody {
            image: Some(image),
            cmd: Some(vec!["worker".to_owned()]),
            env: Some(env),
            labels: Some(labels),
            hostname: Some(name.clone()),
            host_config: Some(host),
            ..ContainerCreateBody::default()
        };
        let created = docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await
            .map_err(engine)?;
        docker
            .start_container(&created.id, None::<StartContainerOptions>)
            .await
            .map_err(engine)?;
        tracing::info!(source = %plan.spec.id, container = %created.id, %name, "worker container started");
        Ok(WorkerContainer {
            id: created.id,
            name,
            source: plan.spec.id.clone(),
            spec_version: plan.spec_version.clone(),
            state: "running".to_owned(),
        })
    }

    /// The environment every container of ours gets, worker or preview:
    /// its name, its scratch space, no HTTP, JSON logs filtered as the
    /// node's are, and the node's private-target allowance and contact URL.
    fn container_env(&self, name: &str, allow_private_targets: Option<&str>) -> Vec<String> {
        let mut env = vec![
            format!("GLEANER_NODE_NAME={name}"),
            format!("GLEANER_DATA_DIR={SCRATCH}"),
            // Chromium writes below HOME (its NSS database, caches).
            format!("HOME={SCRATCH}"),
            format!("TMPDIR={SCRATCH}"),
            // A container serves no HTTP; this keeps the image's public
            // default (which requires an admin token) from applying.
            "GLEANER_HTTP_ADDR=127.0.0.1:0".to_owned(),
            "GLEANER_LOG_FORMAT=json".to_owned(),
        ];
        if let Some(allow) = allow_private_targets {
            env.push(format!("GLEANER_ALLOW_PRIVATE_TARGETS={allow}"));
        }
        if let Some(contact) = &self.config.contact_url {
            env.push(format!("GLEANER_CONTACT_URL={contact}"));
        }
        if let Some(filter) = &self.config.log_filter {
            env.push(format!("GLEANER_LOG={filter}"));
        }
        env
    }

    /// Previews a source in a container of its own (`gleaner preview`),
    /// with a worker's image and hardening but no cluster: it walks the
    /// pages (rendering them for a browser source), prints the answer on
    /// its stdout and exits. Returns that output. The container is removed
    /// in every case; past `plan.budget` (and a grace) it is removed
    /// running, and the answer is [`IsolationError::TimedOut`].
    pub async fn preview(&self, plan: &PreviewPlan) -> Result<String, IsolationError> {
        use futures_util::StreamExt;
        let docker = self.docker()?;
        let browser = plan.spec.render == crate::domain::spec::Render::Browser;
        let image = self.image_for(&plan.spec)?;
        let owner: String = plan.owner_id.chars().take(8).collect();
        let name = format!(
            "gleaner-preview-{owner}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        // In before the container exists: the orphan pass never takes a
        // container a preview is about to wait on.
        self.previews
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.clone());
        let _live = LivePreview {
            previews: &self.previews,
            name: name.clone(),
        };
        let budget = plan.budget.min(MAX_PREVIEW_BUDGET);
        let spec_json = serde_json::to_string(&plan.spec).expect("a spec always serialises");
        let mut env = vec![
            format!("GLEANER_PREVIEW_SPEC={spec_json}"),
            format!("GLEANER_PREVIEW_PAGES={}", plan.pages),
            format!("GLEANER_PREVIEW_BUDGET_MS={}", budget.as_millis()),
        ];
        env.extend(self.container_env(&name, plan.allow_private_targets.as_deref()));
        let mut labels = HashMap::from([
            (LABEL_ROLE.to_owned(), "preview".to_owned()),
            (LABEL_OWNER.to_owned(), plan.owner_id.clone()),
            (LABEL_SOURCE.to_owned(), plan.spec.id.clone()),
            (
                LABEL_RENDER.to_owned(),
                if browser { "browser" } else { "http" }.to_owned(),
            ),
        ]);
        if let Some(cluster) = &self.cluster {
            labels.insert(LABEL_CLUSTER.to_owned(), cluster.clone());
        }
        let body = ContainerCreateBody {
            image: Some(image),
            cmd: Some(vec!["preview".to_owned()]),
            env: Some(env),
            labels: Some(labels),
            hostname: Some(name.clone()),
            host_config: Some(self.hardened(browser)),
            ..ContainerCreateBody::default()
        };
        let created = docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                body,
            )
            .await
            .map_err(engine)?;
        let id = created.id;
        let run = async {
            docker
                .start_container(&id, None::<StartContainerOptions>)
                .await
                .map_err(engine)?;
            // Its exit, whatever its code (a non-zero one is an error here).
            let _ = docker
                .wait_container(&id, None::<bollard::query_parameters::WaitContainerOptions>)
                .next()
                .await;
            let mut logs = docker.logs(
                &id,
                Some(
                    bollard::query_parameters::LogsOptionsBuilder::new()
                        .stdout(true)
                        .stderr(false)
                        .tail("all")
                        .build(),
                ),
            );
            let mut out = Vec::new();
            while let Some(chunk) = logs.next().await {
                if let bollard::container::LogOutput::StdOut { message } = chunk.map_err(engine)? {
                    out.extend_from_slice(&message);
                }
            }
            Ok::<String, IsolationError>(String::from_utf8_lossy(&out).into_owned())
        };
        let limit = budget + PREVIEW_GRACE;
        let outcome = match tokio::time::timeout(limit, run).await {
            Ok(result) => result,
            Err(_) => Err(IsolationError::TimedOut(limit.as_millis())),
        };
        if let Err(e) = self.remove(&id).await {
            tracing::warn!(container = %id, error = %e, "preview container not removed");
        }
        outcome
    }

    /// A container's limits and hardening (a worker's or a preview's).
    fn hardened(&self, browser: bool) -> HostConfig {
        let (memory, pids, scratch) = if browser {
            (self.config.browser_memory_bytes, BROWSER_PIDS, "256m")
        } else {
            (self.config.memory_bytes, self.config.pids_limit, "64m")
        };
        HostConfig {
            memory: Some(memory),
            // No swap beyond the memory limit.
            memory_swap: Some(memory),
            nano_cpus: Some(self.config.nano_cpus),
            pids_limit: Some(pids),
            // An init process (the engine's) as PID 1 reaps the processes
            // Chromium leaves when it is restarted or crashes.
            init: Some(true),
            shm_size: browser.then_some(BROWSER_SHM_BYTES),
            readonly_rootfs: Some(true),
            cap_drop: Some(vec!["ALL".to_owned()]),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            // The image's /data volume goes unused (an anonymous volume,
            // removed with the container: see `remove`).
            tmpfs: Some(HashMap::from([(
                SCRATCH.to_owned(),
                format!("rw,noexec,nosuid,size={scratch}"),
            )])),
            network_mode: self.config.network.clone(),
            ..HostConfig::default()
        }
    }

    /// Is this process a Swarm task whose service is gone (`docker stack rm`,
    /// `docker service rm`)? Then its workers have no owner to come back, and
    /// the answer is its container's labels (the stack's name among them).
    /// A task's hostname is its container's short id unless the stack sets
    /// another; anything that cannot be read answers no (`None`).
    pub async fn own_service_removed(&self) -> Option<HashMap<String, String>> {
        let docker = self.docker().ok()?;
        let me = hostname::get().ok()?.into_string().ok()?;
        let container = docker
            .inspect_container(
                &me,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()?;
        let labels = container.config.and_then(|c| c.labels)?;
        let service = labels.get("com.docker.swarm.service.id")?;
        matches!(
            docker
                .inspect_service(
                    service,
                    None::<bollard::query_parameters::InspectServiceOptions>
                )
                .await,
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                ..
            })
        )
        .then_some(labels)
    }

    /// At a node's shutdown: when its Swarm service is gone (`docker stack
    /// rm`), nothing will return to adopt its workers, so they are removed
    /// with their volumes. Otherwise (a restart, a rolling update) they stay.
    /// The WorkerSupervisor still runs at that point and would replace a
    /// removed worker: starts are closed first (waiting for one under way).
    pub async fn remove_workers_if_service_gone(&self, owner_id: &str) {
        if self.docker().is_err() {
            return;
        }
        let Some(labels) = self.own_service_removed().await else {
            return;
        };
        *self.closed.write().await = true;
        if let Ok(mine) = self.list(owner_id).await {
            for c in mine {
                tracing::info!(source = %c.source, container = %c.id, "the service is gone: removing its worker");
                if let Err(e) = self.remove(&c.id).await {
                    tracing::warn!(container = %c.id, error = %e, "worker not removed");
                }
            }
        }
        if let Some(stack) = labels.get(STACK_LABEL) {
            self.remove_stack_network(stack).await;
        }
    }

    /// `docker stack rm` removes the stack's network right after its
    /// services, while workers are still attached to it, and Swarm refuses
    /// ("in use by task") without retrying. So once its workers are gone, a
    /// node whose stack was removed removes the workers' network itself, if
    /// it is that stack's (its `com.docker.stack.namespace` label): it tries
    /// for [`NETWORK_REMOVAL`], while the other nodes remove their workers.
    /// Only a manager's engine may remove a Swarm network; elsewhere, or when
    /// a worker remains, it is left as `docker stack rm` left it.
    async fn remove_stack_network(&self, stack: &str) {
        let (Ok(docker), Some(network)) = (self.docker(), &self.config.network) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + NETWORK_REMOVAL;
        loop {
            let Ok(found) = docker
                .inspect_network(
                    network,
                    None::<bollard::query_parameters::InspectNetworkOptions>,
                )
                .await
            else {
                return;
            };
            let labels = found.labels.unwrap_or_default();
            if labels.get(STACK_LABEL).map(String::as_str) != Some(stack) {
                return;
            }
            match docker.remove_network(network).await {
                Ok(()) => {
                    tracing::info!(%network, %stack, "the removed stack's network removed");
                    return;
                }
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    tracing::info!(%network, error = %engine(e), "the removed stack's network left");
                    return;
                }
                Err(_) => tokio::time::sleep(NETWORK_RETRY).await,
            }
        }
    }

    /// Removes a container, running or not, with its anonymous volumes
    /// (the image's `/data`).
    pub async fn remove(&self, id: &str) -> Result<(), IsolationError> {
        let docker = self.docker()?;
        match docker
            .remove_container(
                id,
                Some(
                    RemoveContainerOptionsBuilder::new()
                        .force(true)
                        .v(true)
                        .build(),
                ),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(engine(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_are_valid_for_the_engine() {
        assert_eq!(
            container_name("node 1.example", "0123456789abcdef", "books"),
            "gleaner-worker-books-node-1-example-01234567"
        );
    }

    fn preview(owner: &str, state: &str, created: i64) -> PreviewContainer {
        PreviewContainer {
            id: "c0ffee".into(),
            name: "gleaner-preview-x".into(),
            owner: owner.into(),
            state: state.into(),
            created,
        }
    }

    #[test]
    fn a_preview_someone_waits_on_is_never_stray() {
        let now = 1_000_000;
        let max = PREVIEW_MAX_AGE.as_secs() as i64;
        // This node's own, while its preview runs, exited or not.
        for state in ["created", "running", "exited"] {
            assert_eq!(
                stray_preview(&preview("me", state, now - max), "me", true, true, now),
                None
            );
        }
        // A live node's, in any state: that node removes it.
        for state in ["created", "running", "exited"] {
            assert_eq!(
                stray_preview(&preview("peer", state, now - 5), "me", false, true, now),
                None
            );
        }
        // A dead node's still running: its own budget ends it.
        assert_eq!(
            stray_preview(
                &preview("peer", "running", now - 5),
                "me",
                false,
                false,
                now
            ),
            None
        );
    }

    #[test]
    fn a_dead_node_s_stopped_preview_an_abandoned_one_and_an_overdue_one_are_stray() {
        let now = 1_000_000;
        let max = PREVIEW_MAX_AGE.as_secs() as i64;
        for state in ["created", "exited", "dead"] {
            assert!(
                stray_preview(&preview("peer", state, now - 5), "me", false, false, now).is_some()
            );
        }
        // This node's, and none of its previews waits on it (an earlier run's).
        assert!(
            stray_preview(&preview("me", "running", now - 5), "me", false, true, now).is_some()
        );
        // Past the longest budget and its grace, whoever made it and whatever its state.
        assert!(stray_preview(
            &preview("peer", "running", now - max - 1),
            "me",
            false,
            true,
            now
        )
        .is_some());
        assert!(stray_preview(
            &preview("me", "running", now - max - 1),
            "me",
            true,
            true,
            now
        )
        .is_some());
        assert!(PREVIEW_MAX_AGE > MAX_PREVIEW_BUDGET + PREVIEW_GRACE);
    }
}
