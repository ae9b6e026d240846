//! The one wrapper around the real Docker engine, for both container areas
//! (`containers::` and `isolation::`): the `docker` CLI ([`docker`],
//! [`docker_try`], [`docker_with`]), the image built once per run by
//! `scripts/image.sh` ([`image`]), inspect, user-defined networks, the fixture
//! site in a container ([`Site`]: `busybox httpd -vv` from the image's base,
//! whose log is the request log), node containers reached on their published
//! port ([`NodeBox`]), and [`Cleanup`], which removes everything a test made,
//! also when it fails.
//!
//! Without an engine these tests fail at once, saying so. They take the engine
//! one at a time ([`exclusive`]): each runs several nodes on a small machine,
//! and the Swarm test changes the engine's mode.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::cluster::{members_in, owners_in, Member};
use super::fixture::{catalogue_page, page_path};
use super::node::{wait_until, Api, ADMIN_TOKEN, COOKIE};

/// The tag the tests build and run.
pub const IMAGE: &str = "gleaner:test";

/// One engine test at a time.
static ENGINE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes the engine for one test, and checks that it answers.
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    let guard = ENGINE.lock().await;
    require_engine();
    guard
}

// ---------------------------------------------------------------- docker CLI

/// Runs `docker ARGS`; its trimmed stdout, or an error with its stderr.
pub fn docker_try(args: &[&str]) -> Result<String, String> {
    docker_with(args, None, &[])
}

/// Runs `docker ARGS` with `input` on its stdin and `env` added.
pub fn docker_with(
    args: &[&str],
    input: Option<&str>,
    env: &[(&str, &str)],
) -> Result<String, String> {
    let mut cmd = Command::new("docker");
    cmd.args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("docker {}: {e}", args.join(" ")))?;
    if let Some(input) = input {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `docker ARGS`, panicking with its error output if it fails.
pub fn docker(args: &[&str]) -> String {
    docker_try(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Everything `docker` wrote, stdout and stderr (a container's log).
fn docker_output(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the docker client runs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Fails the test at once, and clearly, when no engine answers.
pub fn require_engine() {
    if let Err(e) = docker_try(&["info", "--format", "{{.ServerVersion}}"]) {
        panic!(
            "these tests need a Docker engine and `docker info` failed: {e}\n\
             (start the engine, or run the other areas: `cargo test --test it -- \
             --skip containers:: --skip isolation::`)"
        );
    }
}

/// `docker inspect` of one object.
pub fn inspect(id: &str) -> Result<Value, String> {
    let out = docker_try(&["inspect", id])?;
    let all: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    Ok(all[0].clone())
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the image once per test run through `scripts/image.sh` (which reuses
/// the base image when it exists, and cargo's and the engine's caches).
pub fn image() -> &'static str {
    // A failed build is remembered: the other tests fail at once with its output.
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        require_engine();
        build_with_script(&[IMAGE], IMAGE)
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    IMAGE
}

/// The browser variant the tests build and run (`scripts/image.sh --browser`).
pub const BROWSER_IMAGE: &str = "gleaner-browser:test";

/// Builds the browser variant once per test run (after [`image`], so the
/// binary is built once; its Chromium base is made once and reused).
pub fn browser_image() -> &'static str {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    image();
    let built =
        BUILT.get_or_init(|| build_with_script(&["--browser", BROWSER_IMAGE], BROWSER_IMAGE));
    if let Err(e) = built {
        panic!("{e}");
    }
    BROWSER_IMAGE
}

/// Runs `scripts/image.sh ARGS` to build `tag`; on failure, its whole output.
fn build_with_script(args: &[&str], tag: &str) -> Result<(), String> {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/image.sh"))
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("bash scripts/image.sh {}: {e}", args.join(" ")))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!(
            "scripts/image.sh {} failed:\n{log}",
            args.join(" ")
        ));
    }
    eprintln!(
        "image {tag} ready in {:.1} s:\n{}",
        started.elapsed().as_secs_f64(),
        log.lines()
            .filter(|l| l.starts_with("==>"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    Ok(())
}

/// The base image scripts/image.sh made (it has busybox).
pub fn base_image() -> String {
    std::env::var("GLEANER_BASE_IMAGE").unwrap_or_else(|_| "gleaner-base:bookworm".into())
}

/// A name prefix unique to this process and test.
pub fn prefix(test: &str) -> String {
    format!("glt{}{}", std::process::id(), test)
}

// ---------------------------------------------------------------- cleanup

/// Everything a test made in the engine, removed on drop (also on panic, when
/// it first prints the containers' last log lines).
#[derive(Default)]
pub struct Cleanup {
    containers: Mutex<Vec<String>>,
    /// `docker ps` filters whose containers are removed too: those that
    /// something else started (the workers a node starts).
    pub sweep: Vec<String>,
    /// Containers whose logs are shown on failure but that something else
    /// removes (a stack's tasks).
    pub watched: Vec<String>,
    pub networks: Vec<String>,
    pub stack: Option<String>,
    pub volumes: Vec<String>,
    pub secrets: Vec<String>,
    pub tags: Vec<String>,
    pub left_swarm: bool,
}

impl Cleanup {
    /// Removes the container `name` at the end.
    pub fn container(&self, name: &str) {
        self.containers.lock().unwrap().push(name.to_owned());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut containers = self.containers.lock().unwrap().clone();
        let mut swept = BTreeSet::new();
        for filter in &self.sweep {
            if let Ok(ids) = docker_try(&["ps", "-aq", "--filter", filter]) {
                swept.extend(ids.split_whitespace().map(str::to_owned));
            }
        }
        containers.extend(swept);
        if std::thread::panicking() {
            for c in containers.iter().chain(&self.watched) {
                let logs = docker_try(&["logs", "--tail", "40", c]).unwrap_or_else(|e| e);
                eprintln!("--- last log lines of container {c} ---\n{logs}");
            }
        }
        for c in &containers {
            let _ = docker_try(&["rm", "-f", "-v", c]);
        }
        if let Some(stack) = &self.stack {
            let _ = docker_try(&["stack", "rm", stack]);
            // Bounded: the tasks stop within their grace period.
            let label = format!("label=com.docker.stack.namespace={stack}");
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                match docker_try(&["ps", "-aq", "--filter", &label]) {
                    Ok(ids) if ids.is_empty() => break,
                    Err(_) => break,
                    _ => std::thread::sleep(Duration::from_millis(250)),
                }
            }
            let _ = docker_try(&["network", "rm", &format!("{stack}_cluster")]);
        }
        for n in &self.networks {
            let _ = docker_try(&["network", "rm", n]);
        }
        for v in &self.volumes {
            let _ = docker_try(&["volume", "rm", v]);
        }
        for s in &self.secrets {
            let _ = docker_try(&["secret", "rm", s]);
        }
        for t in &self.tags {
            let _ = docker_try(&["image", "rm", t]);
        }
        if self.left_swarm {
            let _ = docker_try(&["swarm", "leave", "--force"]);
        }
    }
}

// ---------------------------------------------------------------- networks

/// A user-defined network of the test's own.
pub struct Network {
    pub name: String,
    /// Its subnet, which the nodes on it may scrape.
    pub subnet: String,
}

impl Network {
    pub fn create(cleanup: &mut Cleanup, name: &str) -> Network {
        docker(&["network", "create", name]);
        cleanup.networks.push(name.to_owned());
        let subnet = docker(&[
            "network",
            "inspect",
            name,
            "-f",
            "{{(index .IPAM.Config 0).Subnet}}",
        ]);
        Network {
            name: name.to_owned(),
            subnet,
        }
    }

    /// A container's address on this network.
    pub fn ip(&self, container: &str) -> String {
        docker(&[
            "inspect",
            "-f",
            &format!(
                "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                self.name
            ),
            container,
        ])
    }
}

// ---------------------------------------------------------------- fixture site

/// One request in the fixture's log.
#[derive(Debug, Clone)]
pub struct Hit {
    pub at: DateTime<Utc>,
    pub ip: String,
    pub path: String,
}

/// `busybox httpd` serving catalogue pages 1..=n (under `/catalogue/`), in a
/// container named `container` on the test's network.
pub struct Site {
    pub container: String,
    _pages: tempfile::TempDir,
}

impl Site {
    pub fn start(cleanup: &Cleanup, container: &str, network: &Network, pages: u32) -> Site {
        let files: Vec<(String, String)> = (1..=pages)
            .map(|p| (format!("catalogue/page-{p}.html"), catalogue_page(p)))
            .collect();
        Site::serve(cleanup, container, network, &files)
    }

    /// `busybox httpd` serving `files` (paths relative to the site's root;
    /// those under `cgi-bin/` are made executable: httpd runs them as CGI
    /// scripts, with the container's shell and a writable `/tmp`).
    pub fn serve(
        cleanup: &Cleanup,
        container: &str,
        network: &Network,
        files: &[(String, String)],
    ) -> Site {
        let dir = tempfile::tempdir().unwrap();
        for (path, body) in files {
            let at = dir.path().join(path);
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            std::fs::write(&at, body).unwrap();
            if path.starts_with("cgi-bin/") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&at, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        cleanup.container(container);
        let mount = format!("{}:/srv:ro", dir.path().display());
        docker(&[
            "run",
            "-d",
            "--name",
            container,
            "--network",
            &network.name,
            "-v",
            &mount,
            &base_image(),
            "busybox",
            "httpd",
            "-f",
            "-vv",
            "-p",
            "8000",
            "-h",
            "/srv",
        ]);
        Site {
            container: container.to_owned(),
            _pages: dir,
        }
    }

    /// The URL of `path` (from the site's root, with a leading `/`).
    pub fn at(&self, path: &str) -> String {
        format!("http://{}:8000{path}", self.container)
    }

    /// Catalogue page `page`'s URL, for a node on the network.
    pub fn url(&self, page: u32) -> String {
        format!("http://{}:8000{}", self.container, page_path(page))
    }

    /// Every page request so far (`-vv` logs `[::ffff:IP]:PORT: url:/path`).
    pub fn hits(&self) -> Vec<Hit> {
        docker_output(&["logs", "-t", &self.container])
            .lines()
            .filter_map(|l| {
                let (ts, rest) = l.split_once(' ')?;
                let (peer, path) = rest.split_once(": url:")?;
                let ip = peer
                    .trim_start_matches('[')
                    .rsplit_once("]:")?
                    .0
                    .trim_start_matches("::ffff:")
                    .to_owned();
                Some(Hit {
                    at: DateTime::parse_from_rfc3339(ts).ok()?.with_timezone(&Utc),
                    ip,
                    path: path.trim().to_owned(),
                })
            })
            .collect()
    }

    /// Requests so far for catalogue page `page`, from anywhere.
    pub fn count(&self, page: u32) -> usize {
        let path = page_path(page);
        self.hits().iter().filter(|h| h.path == path).count()
    }
}

// ---------------------------------------------------------------- nodes

/// A gleaner node container, reached on its published port on 127.0.0.1 with
/// the admin token; its HTTP client ([`Api`]) is reached through it.
pub struct NodeBox {
    pub container: String,
    /// Its node name (`GLEANER_NODE_NAME`).
    pub name: String,
    api: Api,
}

impl std::ops::Deref for NodeBox {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// How to run a node container: `docker run -d` with the container's name
/// as its hostname (a name peers resolve on the network), its 8080 published
/// on 127.0.0.1, the tests' cookie and admin token, the network's subnet as
/// the private targets it may scrape, and JSON logs.
pub struct NodeRun<'a> {
    pub container: &'a str,
    pub name: &'a str,
    pub network: &'a Network,
    /// `host:port` of the peers, comma-separated.
    pub seeds: &'a str,
    /// More `docker run` options (`-e KEY=VALUE`, volumes, the user).
    pub options: &'a [String],
}

impl NodeRun<'_> {
    /// Starts the container, removed by `cleanup`; waits for its published port.
    pub async fn start(self, cleanup: &Cleanup, within: Duration) -> NodeBox {
        cleanup.container(self.container);
        let env = [
            format!("GLEANER_NODE_NAME={}", self.name),
            format!("GLEANER_SEEDS={}", self.seeds),
            format!("GLEANER_COOKIE={COOKIE}"),
            format!("GLEANER_ADMIN_TOKEN={ADMIN_TOKEN}"),
            format!("GLEANER_ALLOW_PRIVATE_TARGETS={}", self.network.subnet),
            "GLEANER_LOG_FORMAT=json".to_owned(),
        ];
        let mut args: Vec<&str> = vec![
            "run",
            "-d",
            "--name",
            self.container,
            "--hostname",
            self.container,
            "--network",
            &self.network.name,
            "-p",
            "127.0.0.1::8080",
        ];
        for e in &env {
            args.extend(["-e", e.as_str()]);
        }
        args.extend(self.options.iter().map(String::as_str));
        args.push(image());
        docker(&args);
        NodeBox::attach(self.container, self.name, ADMIN_TOKEN, within).await
    }
}

impl NodeBox {
    /// A client of a running container's published 8080, once it has one.
    pub async fn attach(container: &str, name: &str, token: &str, within: Duration) -> NodeBox {
        let addr = published(container, within).await;
        NodeBox {
            container: container.to_owned(),
            name: name.to_owned(),
            api: Api::new(&addr, Some(token), Some(Duration::from_secs(5))),
        }
    }

    /// Reads the published port again (it changes when the container
    /// restarts or rejoins a network).
    pub async fn refresh(&self, within: Duration) {
        let addr = published(&self.container, within).await;
        self.api.set_addr(&addr);
    }
}

/// The host address (127.0.0.1:port) of a container's published 8080, once it has one.
pub async fn published(container: &str, within: Duration) -> String {
    wait_until(
        &format!("a published port for {container}"),
        within,
        || async {
            let out = docker_try(&["port", container, "8080/tcp"]).ok()?;
            out.lines()
                .find(|l| l.starts_with("127.0.0.1:") || l.starts_with("0.0.0.0:"))
                .map(|l| l.replace("0.0.0.0:", "127.0.0.1:"))
        },
    )
    .await
}

impl Member for NodeBox {
    fn label(&self) -> String {
        self.name.clone()
    }

    async fn seen_members(&self) -> Option<Vec<(String, String)>> {
        match self.try_get("/api/v1/cluster").await? {
            (200, body) => members_in(&body),
            _ => None,
        }
    }

    async fn seen_owners(&self) -> Option<BTreeMap<String, Option<String>>> {
        match self.try_get("/api/v1/sources").await? {
            (200, body) => owners_in(&body),
            _ => None,
        }
    }

    /// Bounded: 1000 items a page, and at most 10 pages.
    async fn served_keys(&self, collection: &str) -> Option<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10 {
            let mut path = format!("/api/v1/collections/{collection}/items?limit=1000");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, body) = self.try_get(&path).await?;
            if status == 404 {
                return Some(keys);
            }
            if status != 200 {
                return None;
            }
            keys.extend(
                body["items"]
                    .as_array()?
                    .iter()
                    .filter_map(|it| it["key"].as_str().map(str::to_owned)),
            );
            match body["next"].as_str() {
                Some(n) => cursor = Some(n.to_owned()),
                None => return Some(keys),
            }
        }
        None
    }
}
