//! A real `gleaner node` process ([`Node`], started from a [`NodeConfig`]) on
//! loopback with its own data directory, the HTTP client that talks to it (and
//! to node containers: [`Api`]), and [`wait_until`], which polls a condition
//! against a deadline instead of sleeping a fixed time.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cluster::members_in;

/// The token the tests' nodes use for admin routes.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// Polls `check` every 50 ms until it returns `Some`, or panics after `within`.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The HTTP client of one node's API (a process here, or a container): the
/// node's address and the bearer token it sends. Clones share the address,
/// which a container's restart changes ([`Api::set_addr`]).
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    addr: Arc<Mutex<String>>,
    token: Option<String>,
}

impl Api {
    /// A client of `addr` (`host:port`); `timeout` bounds each request.
    pub fn new(addr: &str, token: Option<&str>, timeout: Option<Duration>) -> Api {
        let mut client = reqwest::Client::builder().no_proxy();
        if let Some(t) = timeout {
            client = client.timeout(t);
        }
        Api {
            client: client.build().unwrap(),
            addr: Arc::new(Mutex::new(addr.to_owned())),
            token: token.map(str::to_owned),
        }
    }

    /// The node's `host:port` now.
    pub fn addr(&self) -> String {
        self.addr.lock().unwrap().clone()
    }

    pub fn set_addr(&self, addr: &str) {
        *self.addr.lock().unwrap() = addr.to_owned();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr(), path)
    }

    /// A request builder with the token attached.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.client.request(method, self.url(path));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// A request builder without any token.
    pub fn anonymous(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// Sends; the status and the body as JSON (Null if empty or not JSON), or
    /// None when the node does not answer.
    pub async fn try_send(&self, rb: reqwest::RequestBuilder) -> Option<(u16, Value)> {
        let r = rb.send().await.ok()?;
        let status = r.status().as_u16();
        let body = r.bytes().await.ok()?;
        Some((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// Sends and returns the status and the body as JSON (Null if empty or
    /// not JSON); the node must answer.
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> (u16, Value) {
        let r = rb.send().await.expect("the node answers");
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap_or_default();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// GET with the token; None when the node does not answer.
    pub async fn try_get(&self, path: &str) -> Option<(u16, Value)> {
        self.try_send(self.request(reqwest::Method::GET, path))
            .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(self.request(reqwest::Method::PUT, path).json(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.send(self.request(reqwest::Method::DELETE, path)).await
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        wait_until(&format!("{} /readyz", self.addr()), within, || async {
            let (status, _) = self.try_get("/readyz").await?;
            (status == 200).then_some(())
        })
        .await;
    }
}

/// A `gleaner node` process on loopback, port 0, with its own data directory.
/// Its HTTP client ([`Api`], with the configured token) is reached through it:
/// `node.get(path)`.
pub struct Node {
    child: Child,
    pub addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    api: Api,
}

impl std::ops::Deref for Node {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// How to start a node.
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub env: Vec<(String, String)>,
    /// Sent as the bearer token on every request the helper makes.
    pub token: Option<String>,
}

impl NodeConfig {
    /// A node that may scrape the fixture site (127.0.0.2) and nothing else
    /// non-public, with an admin token, and quick restarts for tests.
    pub fn new(data_dir: &Path) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.to_path_buf(),
            env: vec![
                ("GLEANER_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
                (
                    "GLEANER_ALLOW_PRIVATE_TARGETS".into(),
                    "127.0.0.2/32".into(),
                ),
                ("GLEANER_RESTART_BACKOFF_MS".into(), "200".into()),
            ],
            token: Some(ADMIN_TOKEN.into()),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> NodeConfig {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn without_env(mut self, key: &str) -> NodeConfig {
        self.env.retain(|(k, _)| k != key);
        self
    }

    /// The binary's command with this configuration, stdio piped.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gleaner"));
        cmd.arg("node");
        for (k, _) in std::env::vars() {
            if k.starts_with("GLEANER_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("GLEANER_HTTP_ADDR", "127.0.0.1:0")
            .env("GLEANER_DATA_DIR", &self.data_dir)
            .env("GLEANER_CONFIG", "/dev/null")
            .env("GLEANER_LOG_FORMAT", "json")
            // ractor_cluster is quiet by default; the cluster tests read its
            // INFO line on refused handshakes (`authentication failure`).
            .env("GLEANER_LOG", "info,gleaner=debug,ractor_cluster=info")
            .env("GLEANER_NODE_NAME", "test-node")
            // No sources directory unless a test gives one (the default,
            // config/sources, is relative to the tests' working directory).
            .env("GLEANER_SOURCES_DIR", self.data_dir.join("no-sources"));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    pub async fn start(self) -> Node {
        Node::start(self).await
    }

    /// Runs the node expecting it to exit by itself within `within`;
    /// returns whether it exited 0, and its output.
    pub fn run_to_exit(&self, within: Duration) -> (bool, String) {
        let mut child = self.command().spawn().expect("the gleaner binary starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, _rx) = mpsc::channel();
        pump(child.stdout.take().unwrap(), logs.clone(), tx.clone());
        pump(child.stderr.take().unwrap(), logs.clone(), tx);
        let deadline = Instant::now() + within;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // Let the pumps drain what the process wrote before it exited.
        let drained = Instant::now() + Duration::from_secs(2);
        let mut last = 0;
        while Instant::now() < drained {
            let n = logs.lock().unwrap().len();
            if n == last && n > 0 {
                break;
            }
            last = n;
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = logs.lock().unwrap().join("\n");
        assert!(
            status.is_some(),
            "the node did not exit within {within:?}:\n{out}"
        );
        (status.unwrap().success(), out)
    }
}

/// Resident memory of a process, in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// File descriptors a process has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// The cookie the tests' clusters share.
pub const COOKIE: &str = "test-cluster-cookie-0123456789abcdef";

/// A port free on loopback right now, for a listener started later (a
/// cluster plan names every node's port before the nodes start, some of
/// them much later). It is taken below the kernel's ephemeral range (and
/// below Swarm's own range for published ports), so no outgoing connection
/// and no `:0` listener of another test can take it in between; each is
/// handed out once per test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Below Swarm's range for published ports it picks itself (30000 up).
    let (low, high): (u16, u16) = (20000, ephemeral_start.min(30000));
    if high > low + 1000 {
        let span = high - low;
        // A start of this process's own, so that two test processes at once
        // are unlikely to try the same ports first.
        let _ = NEXT.compare_exchange(
            0,
            (std::process::id() % u32::from(span)) as u16 + 1,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::SeqCst);
            let port = low + n % span;
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn pump(
    stream: impl std::io::Read + Send + 'static,
    logs: Arc<Mutex<Vec<String>>>,
    addr: mpsc::Sender<SocketAddr>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["message"] == "http server listening" {
                    if let Some(a) = v["addr"].as_str().and_then(|a| a.parse().ok()) {
                        let _ = addr.send(a);
                    }
                }
            } else if line.contains("http server listening") {
                // GLEANER_LOG_FORMAT=text: `... http server listening addr=127.0.0.1:PORT ...`
                let found = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .and_then(|a| a.parse().ok());
                if let Some(a) = found {
                    let _ = addr.send(a);
                }
            }
            logs.lock().unwrap().push(line);
        }
    });
}

impl Node {
    pub async fn start(config: NodeConfig) -> Node {
        let mut child = config.command().spawn().expect("the gleaner binary starts");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        pump(child.stdout.take().unwrap(), logs.clone(), tx.clone());
        pump(child.stderr.take().unwrap(), logs.clone(), tx);
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(100)) {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "node exited with {status} before listening:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "node did not start listening within 30 s"
            );
        };
        let node = Node {
            child,
            addr,
            logs,
            api: Api::new(&addr.to_string(), config.token.as_deref(), None),
        };
        wait_until("the node is ready", Duration::from_secs(30), || async {
            let r = node
                .anonymous(reqwest::Method::GET, "/readyz")
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        node
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Creates a source, asserting 201.
    pub async fn create_source(&self, spec: &Value) -> Value {
        let (status, body) = self.post("/api/v1/sources", spec).await;
        assert_eq!(status, 201, "creating {spec}: {body}");
        body
    }

    /// The source's view, asserting 200.
    pub async fn source(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/api/v1/sources/{id}")).await;
        assert_eq!(status, 200, "GET source {id}: {body}");
        body
    }

    /// Waits until the source's last run satisfies `accept`, and returns the source.
    pub async fn wait_for_run(
        &self,
        id: &str,
        within: Duration,
        accept: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_until(&format!("a run of source {id}"), within, || async {
            let s = self.source(id).await;
            let run = &s["status"]["last_run"];
            (!run.is_null() && accept(run)).then_some(s)
        })
        .await
    }

    /// Every item of a collection, walking the cursor.
    pub async fn all_items(&self, collection: &str) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = format!("/api/v1/collections/{collection}/items?limit=37");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (status, body) = self.get(&path).await;
            assert_eq!(status, 200, "{path}: {body}");
            items.extend(body["items"].as_array().unwrap().iter().cloned());
            match body["next"].as_str() {
                Some(n) => cursor = Some(n.to_owned()),
                None => return items,
            }
        }
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait (bounded) for the exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit code if the process has exited (`Some(None)`: by a signal),
    /// without waiting.
    pub fn exited(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().ok().flatten().map(|s| s.code())
    }

    /// Sends a signal by name (`STOP`, `CONT`, ...).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{name} {}", self.pid());
    }

    /// The members this node sees, as (name, state) pairs sorted by name.
    pub async fn members(&self) -> Vec<(String, String)> {
        let (status, body) = self.get("/api/v1/cluster").await;
        assert_eq!(status, 200, "{body}");
        members_in(&body).unwrap_or_else(|| panic!("members in {body}"))
    }

    /// The items' keys of a collection, sorted (empty if it does not exist yet).
    pub async fn item_keys(&self, collection: &str) -> Vec<String> {
        let (status, _) = self
            .get(&format!("/api/v1/collections/{collection}/items?limit=1"))
            .await;
        if status == 404 {
            return Vec::new();
        }
        let mut keys: Vec<String> = self
            .all_items(collection)
            .await
            .iter()
            .map(|i| i["key"].as_str().unwrap().to_owned())
            .collect();
        keys.sort();
        keys
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let logs = self.logs.lock().unwrap();
            let start = logs.len().saturating_sub(60);
            eprintln!(
                "--- last log lines of node {} ---\n{}",
                self.addr,
                logs[start..].join("\n")
            );
        }
    }
}
