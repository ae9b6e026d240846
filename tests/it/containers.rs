//! The node image in a real Docker engine: the image built by
//! `scripts/image.sh`, a Swarm stack from `swarm/`, and container faults
//! (kill, pause, network partition, rolling restart) on a three-node cluster.
//!
//! Every test makes its own user-defined network, containers, and (for Swarm)
//! stack, secrets and volumes, all named with a per-test prefix, and removes
//! them when it ends, also when it fails. The test reaches the nodes only on
//! their published ports on 127.0.0.1. The fixture web site is `busybox httpd`
//! in a container from the image's own base, on the test's network; its
//! verbose log (`docker logs -t`) is the request log: when, from which
//! container address, which page.
//!
//! These tests need a Docker engine: without one they fail, saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::harness::fixture::catalogue_page;
use crate::harness::{catalogue_spec, wait_until, ADMIN_TOKEN, COOKIE};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// The tag the tests build and run.
const IMAGE: &str = "gleaner:test";
const FORM: Duration = Duration::from_secs(90);
const SETTLE: Duration = Duration::from_secs(60);
/// Sources in the fault tests: one catalogue page (20 items) each, every second.
const SOURCES: u32 = 6;
const ITEMS: usize = SOURCES as usize * 20;

/// One container test at a time: each runs three nodes on a two-core machine,
/// and the Swarm test changes the engine's mode.
static DOCKER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------- docker CLI

/// Runs `docker ARGS`; its trimmed stdout, or an error with its stderr.
fn docker_try(args: &[&str]) -> Result<String, String> {
    docker_with(args, None, &[])
}

fn docker_with(args: &[&str], input: Option<&str>, env: &[(&str, &str)]) -> Result<String, String> {
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
fn docker(args: &[&str]) -> String {
    docker_try(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Fails the test at once, and clearly, when no engine answers.
fn require_docker() {
    if let Err(e) = docker_try(&["info", "--format", "{{.ServerVersion}}"]) {
        panic!(
            "these tests need a Docker engine and `docker info` failed: {e}\n\
             (start the engine, or run the other test files with `cargo test --test NAME`)"
        );
    }
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the image once per test run through `scripts/image.sh` (which reuses
/// the base image when it exists, and cargo's and the engine's caches).
fn image() -> &'static str {
    // A failed build is remembered: the other tests fail at once with its output.
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let started = Instant::now();
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/image.sh"))
            .arg(IMAGE)
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("bash scripts/image.sh: {e}"))?;
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(format!("scripts/image.sh {IMAGE} failed:\n{log}"));
        }
        eprintln!(
            "image {IMAGE} ready in {:.1} s:\n{}",
            started.elapsed().as_secs_f64(),
            log.lines()
                .filter(|l| l.starts_with("==>"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        Ok(())
    });
    if let Err(e) = built {
        panic!("{e}");
    }
    IMAGE
}

/// The base image scripts/image.sh made (it has busybox).
fn base_image() -> String {
    std::env::var("GLEANER_BASE_IMAGE").unwrap_or_else(|_| "gleaner-base:bookworm".into())
}

/// A name prefix unique to this process and test.
fn prefix(test: &str) -> String {
    format!("glt{}{}", std::process::id(), test)
}

// ---------------------------------------------------------------- cleanup

/// Everything a test made in the engine, removed on drop (also on panic, when
/// it first prints the containers' last log lines).
#[derive(Default)]
struct Made {
    containers: Mutex<Vec<String>>,
    /// Containers whose logs are shown on failure but that something else
    /// removes (a stack's tasks).
    watched: Vec<String>,
    networks: Vec<String>,
    stack: Option<String>,
    volumes: Vec<String>,
    secrets: Vec<String>,
    tags: Vec<String>,
    left_swarm: bool,
}

impl Made {
    fn container(&self, name: &str) {
        self.containers.lock().unwrap().push(name.to_owned());
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        let containers = self.containers.lock().unwrap().clone();
        if std::thread::panicking() {
            for c in containers.iter().chain(&self.watched) {
                let logs =
                    docker_with(&["logs", "--tail", "40", c], None, &[]).unwrap_or_else(|e| e);
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

// ---------------------------------------------------------------- fixture site

/// One request in the fixture's log.
#[derive(Debug, Clone)]
struct Hit {
    at: DateTime<Utc>,
    ip: String,
    path: String,
}

/// `busybox httpd` serving catalogue pages, in a container on the test network.
struct Web {
    container: String,
}

impl Web {
    fn start(made: &Made, prefix: &str, network: &str, pages: &Path) -> Web {
        let container = format!("{prefix}web");
        made.container(&container);
        let mount = format!("{}:/srv:ro", pages.display());
        docker(&[
            "run",
            "-d",
            "--name",
            &container,
            "--network",
            network,
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
        Web { container }
    }

    fn url(&self, page: u32) -> String {
        format!("http://{}:8000{}", self.container, page_path(page))
    }

    /// Every page request so far (`-vv` logs `[::ffff:IP]:PORT: url:/path`).
    fn hits(&self) -> Vec<Hit> {
        let out = Command::new("docker")
            .args(["logs", "-t", &self.container])
            .stdin(Stdio::null())
            .output()
            .expect("docker logs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
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
}

fn page_path(page: u32) -> String {
    format!("/catalogue/page-{page}.html")
}

/// Writes catalogue pages 1..=n under `dir/catalogue/`.
fn write_pages(dir: &Path, n: u32) {
    let cat = dir.join("catalogue");
    std::fs::create_dir_all(&cat).unwrap();
    for p in 1..=n {
        std::fs::write(cat.join(format!("page-{p}.html")), catalogue_page(p)).unwrap();
    }
}

/// A source that scrapes one page (20 items of its own) every second.
fn page_source(web: &Web, page: u32) -> Value {
    let mut spec = catalogue_spec(&format!("s{page}"), &web.url(page));
    spec["schedule"]["every_secs"] = 1.into();
    spec["extract"]["next_page"]["max_pages"] = 1.into();
    spec
}

// ---------------------------------------------------------------- nodes

/// A gleaner node container, reached on its published port on 127.0.0.1.
struct NodeC {
    container: String,
    name: String,
    addr: Mutex<String>,
}

/// Three node containers and the fixture, on one network of the test's own.
struct Cluster {
    nodes: Vec<NodeC>,
    network: String,
    web: Web,
    client: reqwest::Client,
    _pages: tempfile::TempDir,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The host address (127.0.0.1:port) of a container's published 8080, once it has one.
async fn published(container: &str) -> String {
    wait_until(
        &format!("a published port for {container}"),
        SETTLE,
        || async {
            let out = docker_try(&["port", container, "8080/tcp"]).ok()?;
            out.lines()
                .find(|l| l.starts_with("127.0.0.1:") || l.starts_with("0.0.0.0:"))
                .map(|l| l.replace("0.0.0.0:", "127.0.0.1:"))
        },
    )
    .await
}

/// GET with the admin token; None when the node does not answer.
async fn get_at(client: &reqwest::Client, addr: &str, path: &str) -> Option<(u16, Value)> {
    let r = client
        .get(format!("http://{addr}{path}"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .ok()?;
    let status = r.status().as_u16();
    let body = r.bytes().await.ok()?;
    Some((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

async fn wait_ready(client: &reqwest::Client, addr: &str, within: Duration) {
    wait_until(&format!("{addr} /readyz"), within, || async {
        let (status, _) = get_at(client, addr, "/readyz").await?;
        (status == 200).then_some(())
    })
    .await;
}

impl Cluster {
    async fn start(made: &mut Made, prefix: &str) -> Cluster {
        let image = image();
        let network = format!("{prefix}net");
        docker(&["network", "create", &network]);
        made.networks.push(network.clone());
        let subnet = docker(&[
            "network",
            "inspect",
            &network,
            "-f",
            "{{(index .IPAM.Config 0).Subnet}}",
        ]);
        let pages = tempfile::tempdir().unwrap();
        write_pages(pages.path(), SOURCES);
        let web = Web::start(made, prefix, &network, pages.path());
        let names: Vec<String> = (0..3).map(|i| format!("{prefix}n{i}")).collect();
        let mut nodes = Vec::new();
        for (i, container) in names.iter().enumerate() {
            let seeds = names
                .iter()
                .filter(|n| *n != container)
                .map(|n| format!("{n}:4697"))
                .collect::<Vec<_>>()
                .join(",");
            made.container(container);
            let started = Instant::now();
            // The hostname is the container's name, so the default advertised
            // host (the hostname) is a name peers resolve on this network.
            docker(&[
                "run",
                "-d",
                "--name",
                container,
                "--hostname",
                container,
                "--network",
                &network,
                "-p",
                "127.0.0.1::8080",
                "-e",
                &format!("GLEANER_NODE_NAME=n{i}"),
                "-e",
                &format!("GLEANER_SEEDS={seeds}"),
                "-e",
                &format!("GLEANER_COOKIE={COOKIE}"),
                "-e",
                &format!("GLEANER_ADMIN_TOKEN={ADMIN_TOKEN}"),
                "-e",
                &format!("GLEANER_ALLOW_PRIVATE_TARGETS={subnet}"),
                "-e",
                "GLEANER_RESTART_BACKOFF_MS=200",
                "-e",
                "GLEANER_LOG_FORMAT=json",
                image,
            ]);
            let addr = published(container).await;
            let client = client();
            wait_ready(&client, &addr, SETTLE).await;
            eprintln!(
                "container {container}: docker run to /readyz in {} ms",
                started.elapsed().as_millis()
            );
            nodes.push(NodeC {
                container: container.clone(),
                name: format!("n{i}"),
                addr: Mutex::new(addr),
            });
        }
        let cluster = Cluster {
            nodes,
            network,
            web,
            client: client(),
            _pages: pages,
        };
        cluster.wait_members(&[0, 1, 2], &[0, 1, 2]).await;
        cluster
    }

    fn addr(&self, i: usize) -> String {
        self.nodes[i].addr.lock().unwrap().clone()
    }

    /// Reads node `i`'s published port again (it changes when the container
    /// restarts or rejoins a network).
    async fn refresh(&self, i: usize) {
        let addr = published(&self.nodes[i].container).await;
        *self.nodes[i].addr.lock().unwrap() = addr;
    }

    async fn get(&self, i: usize, path: &str) -> Option<(u16, Value)> {
        get_at(&self.client, &self.addr(i), path).await
    }

    /// The container's address on the test network.
    fn ip(&self, i: usize) -> String {
        docker(&[
            "inspect",
            "-f",
            &format!(
                "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                self.network
            ),
            &self.nodes[i].container,
        ])
    }

    fn name_of(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap()
    }

    /// Waits until each of `on` sees exactly the nodes `want`, all up.
    async fn wait_members(&self, on: &[usize], want: &[usize]) {
        let mut names: Vec<(String, String)> = want
            .iter()
            .map(|&i| (self.nodes[i].name.clone(), "up".to_owned()))
            .collect();
        names.sort();
        for &i in on {
            wait_until(
                &format!("{} to see {names:?} up", self.nodes[i].name),
                FORM,
                || async {
                    let (status, body) = self.get(i, "/api/v1/cluster").await?;
                    let got = members(status, &body)?;
                    let up: Vec<_> = got.into_iter().filter(|(_, s)| s == "up").collect();
                    (up == names).then_some(())
                },
            )
            .await;
        }
    }

    /// Waits until node `on` sees node `who` down.
    async fn wait_down(&self, on: usize, who: usize) {
        let name = self.nodes[who].name.clone();
        wait_until(
            &format!("{} to see {name} down", self.nodes[on].name),
            SETTLE,
            || async {
                let (status, body) = self.get(on, "/api/v1/cluster").await?;
                members(status, &body)?
                    .iter()
                    .any(|(n, s)| *n == name && s == "down")
                    .then_some(())
            },
        )
        .await;
    }

    /// Each source's owner as node `i` sees it.
    async fn owners(&self, i: usize) -> Option<BTreeMap<String, Option<String>>> {
        let (status, body) = self.get(i, "/api/v1/sources").await?;
        if status != 200 {
            return None;
        }
        Some(
            body["sources"]
                .as_array()?
                .iter()
                .map(|s| {
                    (
                        s["id"].as_str().unwrap_or_default().to_owned(),
                        s["status"]["owner"].as_str().map(str::to_owned),
                    )
                })
                .collect(),
        )
    }

    /// Waits until the nodes `on` agree on every source's owner, each among
    /// `allowed`; returns the owners.
    async fn agreed_owners(&self, on: &[usize], allowed: &[usize]) -> BTreeMap<String, String> {
        let allowed: Vec<String> = allowed
            .iter()
            .map(|&i| self.nodes[i].name.clone())
            .collect();
        wait_until("the nodes to agree on the owners", SETTLE, || async {
            let first = self.owners(on[0]).await?;
            if first.len() != SOURCES as usize {
                return None;
            }
            for &i in &on[1..] {
                if self.owners(i).await? != first {
                    return None;
                }
            }
            let agreed: BTreeMap<String, String> = first
                .into_iter()
                .map(|(id, o)| Some((id, o?)))
                .collect::<Option<_>>()?;
            agreed
                .values()
                .all(|o| allowed.contains(o))
                .then_some(agreed)
        })
        .await
    }

    /// The item keys node `i` serves (None if it does not answer).
    async fn item_keys(&self, i: usize) -> Option<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor: Option<String> = None;
        // Bounded: 1000 items a page, and at most 10 pages.
        for _ in 0..10 {
            let mut path = "/api/v1/collections/books/items?limit=1000".to_owned();
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, body) = self.get(i, &path).await?;
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

    /// Waits until every node of `on` serves exactly ITEMS items, none twice.
    async fn wait_items(&self, on: &[usize]) {
        for &i in on {
            let keys = wait_until(
                &format!("{ITEMS} items on {}", self.nodes[i].name),
                SETTLE,
                || async {
                    let k = self.item_keys(i).await?;
                    (k.len() == ITEMS).then_some(k)
                },
            )
            .await;
            let unique: BTreeSet<&String> = keys.iter().collect();
            assert_eq!(
                unique.len(),
                ITEMS,
                "an item twice on {}",
                self.nodes[i].name
            );
        }
    }

    async fn create_sources(&self) {
        for page in 1..=SOURCES {
            let spec = page_source(&self.web, page);
            let r = self
                .client
                .post(format!("http://{}/api/v1/sources", self.addr(0)))
                .bearer_auth(ADMIN_TOKEN)
                .json(&spec)
                .send()
                .await
                .expect("node 0 answers");
            assert_eq!(r.status().as_u16(), 201, "creating s{page}");
        }
    }

    /// Waits until every source's page was requested from the addresses
    /// `from` after log position `since`, `times` times.
    async fn wait_scraped(&self, since: usize, from: &[String], times: usize, what: &str) {
        wait_until(what, SETTLE, || async {
            let hits = self.web.hits();
            let fresh = hits.get(since..).unwrap_or_default();
            (1..=SOURCES)
                .all(|p| {
                    fresh
                        .iter()
                        .filter(|h| h.path == page_path(p) && from.contains(&h.ip))
                        .count()
                        >= times
                })
                .then_some(())
        })
        .await;
    }

    /// Once placement is stable, each page is fetched from its owner's
    /// address only: one scraper per source, as the fixture sees it.
    async fn assert_one_scraper_each(&self, owners: &BTreeMap<String, String>) {
        let ips: BTreeMap<String, String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), self.ip(i)))
            .collect();
        let all: Vec<String> = ips.values().cloned().collect();
        // Let a run that was under way at the change finish, then watch a window.
        let mark = self.web.hits().len();
        self.wait_scraped(mark, &all, 2, "two more runs of every source")
            .await;
        let window = self.web.hits().len();
        self.wait_scraped(window, &all, 2, "a window of runs of every source")
            .await;
        let hits = self.web.hits();
        for (id, owner) in owners {
            let page: u32 = id[1..].parse().unwrap();
            let from: BTreeSet<&String> = hits[window..]
                .iter()
                .filter(|h| h.path == page_path(page))
                .map(|h| &h.ip)
                .collect();
            assert_eq!(
                from,
                BTreeSet::from([&ips[owner]]),
                "source {id} (owner {owner}) fetched from {from:?}; addresses {ips:?}"
            );
        }
    }
}

fn members(status: u16, body: &Value) -> Option<Vec<(String, String)>> {
    if status != 200 {
        return None;
    }
    let mut out: Vec<(String, String)> = body["members"]
        .as_array()?
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or_default().to_owned(),
                m["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    Some(out)
}

/// A cluster with the sources placed and every item collected everywhere.
async fn scraping_cluster(made: &mut Made, prefix: &str) -> (Cluster, BTreeMap<String, String>) {
    let c = Cluster::start(made, prefix).await;
    c.create_sources().await;
    c.wait_items(&[0, 1, 2]).await;
    let owners = c.agreed_owners(&[0, 1, 2], &[0, 1, 2]).await;
    (c, owners)
}

fn ms_since(t: DateTime<Utc>, hit: &Hit) -> i64 {
    (hit.at - t).num_milliseconds()
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_container_s_sources_move_and_nothing_is_lost() {
    let _one = DOCKER.lock().await;
    require_docker();
    let mut made = Made::default();
    let (c, owners) = scraping_cluster(&mut made, &prefix("kill")).await;
    let (source, owner) = owners.iter().next().unwrap();
    let victim = c.name_of(owner);
    let page: u32 = source[1..].parse().unwrap();
    let rest: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    let survivor_ips: Vec<String> = rest.iter().map(|&i| c.ip(i)).collect();

    let killed_at = Utc::now();
    docker(&["kill", &c.nodes[victim].container]);
    let mark = c.web.hits().len();

    // The fixture sees the page fetched again, from a survivor's address.
    let refetch = wait_until(
        "a survivor to fetch the killed owner's page",
        SETTLE,
        || async {
            c.web.hits().into_iter().find(|h| {
                h.path == page_path(page) && survivor_ips.contains(&h.ip) && h.at > killed_at
            })
        },
    )
    .await;
    eprintln!(
        "failover after docker kill: page {page} fetched by a survivor {} ms after the kill",
        ms_since(killed_at, &refetch)
    );
    for &i in &rest {
        c.wait_down(i, victim).await;
    }
    let moved = c.agreed_owners(&rest, &rest).await;
    assert_ne!(moved[source], *owner);
    for (id, o) in &owners {
        if o != owner {
            assert_eq!(moved[id], *o, "{id} moved though its owner lived");
        }
    }
    // Every source is scraped by the survivors, and nothing collected is lost.
    c.wait_scraped(
        mark,
        &survivor_ips,
        1,
        "every source scraped by the survivors",
    )
    .await;
    c.wait_items(&rest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_container_loses_its_sources_and_gets_them_back_once() {
    let _one = DOCKER.lock().await;
    require_docker();
    let mut made = Made::default();
    let (c, owners) = scraping_cluster(&mut made, &prefix("pause")).await;
    let (source, owner) = owners.iter().next().unwrap();
    let frozen = c.name_of(owner);
    let page: u32 = source[1..].parse().unwrap();
    let rest: Vec<usize> = (0..3).filter(|&i| i != frozen).collect();
    let other_ips: Vec<String> = rest.iter().map(|&i| c.ip(i)).collect();

    let paused_at = Utc::now();
    docker(&["pause", &c.nodes[frozen].container]);
    let mark = c.web.hits().len();
    for &i in &rest {
        c.wait_down(i, frozen).await;
    }
    let moved = c.agreed_owners(&rest, &rest).await;
    assert_ne!(moved[source], *owner);
    let refetch = wait_until(
        "another node to fetch the paused owner's page",
        SETTLE,
        || async {
            c.web
                .hits()
                .into_iter()
                .skip(mark)
                .find(|h| h.path == page_path(page) && other_ips.contains(&h.ip))
        },
    )
    .await;
    eprintln!(
        "failover after docker pause: page {page} fetched by another node {} ms after the pause",
        ms_since(paused_at, &refetch)
    );

    docker(&["unpause", &c.nodes[frozen].container]);
    c.wait_members(&[0, 1, 2], &[0, 1, 2]).await;
    let back = c.agreed_owners(&[0, 1, 2], &[0, 1, 2]).await;
    assert_eq!(back, owners, "placement returns to where it was");
    c.assert_one_scraper_each(&back).await;
    c.wait_items(&[0, 1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_container_the_majority_keeps_scraping_and_it_heals_to_one_owner() {
    let _one = DOCKER.lock().await;
    require_docker();
    let mut made = Made::default();
    let (c, owners) = scraping_cluster(&mut made, &prefix("part")).await;
    let (_, owner) = owners.iter().next().unwrap();
    let cut = c.name_of(owner);
    let rest: Vec<usize> = (0..3).filter(|&i| i != cut).collect();
    let majority_ips: Vec<String> = rest.iter().map(|&i| c.ip(i)).collect();

    // A 1|2 partition: the owner leaves the network (and with it the fixture).
    let cut_at = Instant::now();
    docker(&["network", "disconnect", &c.network, &c.nodes[cut].container]);
    let mark = c.web.hits().len();
    for &i in &rest {
        c.wait_down(i, cut).await;
    }
    c.agreed_owners(&rest, &rest).await;
    // The majority scrapes every source, the cut node's included.
    c.wait_scraped(
        mark,
        &majority_ips,
        2,
        "the majority to scrape every source",
    )
    .await;
    eprintln!(
        "partition: the majority scraped every source twice within {} ms of the cut",
        cut_at.elapsed().as_millis()
    );
    c.wait_items(&rest).await;

    docker(&["network", "connect", &c.network, &c.nodes[cut].container]);
    c.refresh(cut).await;
    c.wait_members(&[0, 1, 2], &[0, 1, 2]).await;
    let healed = c.agreed_owners(&[0, 1, 2], &[0, 1, 2]).await;
    assert_eq!(healed, owners, "placement returns to where it was");
    c.assert_one_scraper_each(&healed).await;
    c.wait_items(&[0, 1, 2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_keeps_the_query_api_answering_and_loses_nothing() {
    let _one = DOCKER.lock().await;
    require_docker();
    let mut made = Made::default();
    let (c, _) = scraping_cluster(&mut made, &prefix("roll")).await;
    let c = std::sync::Arc::new(c);
    for i in 0..3 {
        // While node i restarts, some other node answers every query.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let probe = {
            let (c, stop) = (c.clone(), stop.clone());
            tokio::spawn(async move {
                let others: Vec<usize> = (0..3).filter(|&j| j != i).collect();
                let (mut rounds, mut unanswered) = (0u32, Vec::new());
                // Bounded: at most 5 minutes of 100 ms rounds.
                while !stop.load(std::sync::atomic::Ordering::SeqCst) && rounds < 3000 {
                    rounds += 1;
                    let mut answered = false;
                    for &j in &others {
                        if let Some((200, body)) =
                            c.get(j, "/api/v1/collections/books/items?limit=5").await
                        {
                            answered = body["items"].as_array().is_some_and(|a| a.len() == 5);
                            if answered {
                                break;
                            }
                        }
                    }
                    if !answered {
                        unanswered.push(rounds);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (rounds, unanswered)
            })
        };
        let started = Instant::now();
        docker(&["restart", &c.nodes[i].container]);
        c.refresh(i).await;
        wait_ready(&c.client, &c.addr(i), SETTLE).await;
        c.wait_members(&[0, 1, 2], &[0, 1, 2]).await;
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (rounds, unanswered) = probe.await.unwrap();
        eprintln!(
            "rolling restart: {} back and every member up in {} ms; {rounds} query rounds",
            c.nodes[i].name,
            started.elapsed().as_millis()
        );
        assert!(
            unanswered.is_empty(),
            "no other node answered in rounds {unanswered:?} of {rounds} while {} restarted",
            c.nodes[i].name
        );
    }
    let owners = c.agreed_owners(&[0, 1, 2], &[0, 1, 2]).await;
    let all_ips: Vec<String> = (0..3).map(|i| c.ip(i)).collect();
    let mark = c.web.hits().len();
    c.wait_scraped(mark, &all_ips, 1, "every source scraped after the restarts")
        .await;
    assert_eq!(owners.len(), SOURCES as usize);
    c.wait_items(&[0, 1, 2]).await;
}

/// The Swarm stack (swarm/stack.yml with swarm/stack.test.yml): three
/// replicas on this one Swarm node find each other through `tasks.gleaner`
/// and form one cluster, reading the cookie and the tokens from Swarm secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_swarm_stack_forms_one_cluster() {
    let _one = DOCKER.lock().await;
    require_docker();
    let image = image();
    let p = prefix("sw");
    let mut made = Made::default();

    let state = docker(&[
        "info",
        "--format",
        "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
    ]);
    match state.as_str() {
        "active true" => eprintln!("this engine is a Swarm manager already: reused"),
        s if s.starts_with("inactive") => {
            match docker_try(&["swarm", "init", "--advertise-addr", "127.0.0.1"]) {
                Ok(_) => made.left_swarm = true,
                Err(e) => panic!("Swarm mode cannot start on this engine: {e}"),
            }
        }
        other => {
            panic!("this engine's Swarm state is '{other}': the test needs a manager or no Swarm")
        }
    }

    // The secrets the stack reads through GLEANER_*_FILE.
    let admin = format!("{p}-admin-token-0123456789abcdef");
    for (name, value) in [
        ("cookie", COOKIE.to_owned()),
        ("admin_token", admin.clone()),
        ("read_token", format!("{p}-read-token-0123456789abcdef")),
    ] {
        let secret = format!("{p}_{name}");
        docker_with(&["secret", "create", &secret, "-"], Some(&value), &[])
            .unwrap_or_else(|e| panic!("{e}"));
        made.secrets.push(secret);
    }
    // The Swarm agent tries to pull a task's image before it uses the local
    // one: a reference on 127.0.0.1, port 1 (nothing listens there), keeps that
    // attempt on loopback, where it is refused at once.
    let local_ref = format!("127.0.0.1:1/gleaner:{p}");
    docker(&["tag", image, &local_ref]);
    made.tags.push(local_ref.clone());
    made.volumes = (1..=3).map(|s| format!("{p}-data-{s}")).collect();
    made.stack = Some(p.clone());
    let port = crate::harness::node::free_port().to_string();
    let env = [
        ("GLEANER_IMAGE", local_ref.as_str()),
        ("GLEANER_HTTP_PORT", port.as_str()),
        ("GLEANER_TEST_PREFIX", p.as_str()),
    ];
    let swarm = repo_root().join("swarm");
    let (stack, test) = (swarm.join("stack.yml"), swarm.join("stack.test.yml"));
    let out = docker_with(
        &[
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "-c",
            stack.to_str().unwrap(),
            "-c",
            test.to_str().unwrap(),
            &p,
        ],
        None,
        &env,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("docker stack deploy:\n{out}");

    let label = format!("label=com.docker.stack.namespace={p}");
    let deployed = Instant::now();
    let containers: Vec<String> = wait_until("three running tasks", FORM, || async {
        let ids = docker_try(&["ps", "-q", "--filter", &label]).ok()?;
        let ids: Vec<String> = ids.lines().map(str::to_owned).collect();
        (ids.len() == 3).then_some(ids)
    })
    .await;
    made.watched = containers.clone();
    let client = client();
    let mut addrs = Vec::new();
    for id in &containers {
        addrs.push(published(id).await);
    }
    // Every replica lists three members up, named by their task slots.
    for addr in &addrs {
        wait_until(&format!("{addr} to list 3 members up"), FORM, || async {
            let r = client
                .get(format!("http://{addr}/api/v1/cluster"))
                .bearer_auth(&admin)
                .send()
                .await
                .ok()?;
            let body: Value = r.json().await.ok()?;
            let got = members(200, &body)?;
            let want: Vec<(String, String)> = ["n1", "n2", "n3"]
                .iter()
                .map(|n| (n.to_string(), "up".to_string()))
                .collect();
            (got == want).then_some(())
        })
        .await;
    }
    eprintln!(
        "swarm: three tasks formed one cluster {} ms after the deploy",
        deployed.elapsed().as_millis()
    );
    // The admin token is the secret's: a request without it is refused.
    let r = client
        .get(format!("http://{}/api/v1/cluster", addrs[0]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // The image's HEALTHCHECK reports each task healthy.
    for id in &containers {
        wait_until(&format!("task {id} healthy"), FORM, || async {
            let s = docker_try(&["inspect", "-f", "{{.State.Health.Status}}", id]).ok()?;
            (s == "healthy").then_some(())
        })
        .await;
    }
}
