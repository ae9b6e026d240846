//! Faults an operator meets, each on a real node process with a real disk:
//!
//! - the data directory's disk fills while sources write (a 16 MiB tmpfs,
//!   mounted by the test as root): health and reads keep answering, writes
//!   fail fast with 507 `disk_full`, `/readyz` says why, the node recovers by
//!   itself once space returns, SIGTERM exits 0, and no item that a query ever
//!   returned is missing after a restart;
//! - the same disk filling with the reserve turned off, so that sled itself
//!   runs out of space: the node exits with status 75 instead of hanging,
//!   and a restart (what Docker or systemd does) serves every item a query
//!   ever returned;
//! - kill -9 while sources write: every item a query returned survives.
//!
//! Without the right to mount (not root), the disk test says so and skips,
//! except under CI (`CI=true`), where it fails instead.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::fixture::FixtureSite;
use crate::harness::node::Api;
use crate::harness::{catalogue_spec, wait_until, Node, NodeConfig};
use reqwest::Method;
use serde_json::{json, Value};

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI must run the full-disk test, but a tmpfs cannot be mounted: {why}"
                );
                eprintln!("skipping: mounting a tmpfs needs root here ({why})");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let s = rustix::fs::statvfs(dir).expect("statvfs");
    s.f_bavail * s.f_frsize
}

/// Writes a file of real bytes (tmpfs keeps sparse files free) until the
/// filesystem has about `leave` bytes free.
fn fill_until(dir: &Path, name: &str, leave: u64) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xA5u8; 256 * 1024];
    while free_bytes(dir) > leave + chunk.len() as u64 {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    f.sync_all().ok();
    path
}

/// A growing source on the fixture site: new items on every run.
fn growing_spec(id: &str, site: &FixtureSite) -> Value {
    let mut spec = catalogue_spec(id, &site.url(&format!("/growing/{id}.html")));
    spec["collection"] = json!("growing");
    spec["schedule"] = json!({ "every_secs": 1 });
    spec["extract"].as_object_mut().unwrap().remove("next_page");
    spec
}

/// Starts the node again on its data directory, and asserts that it serves
/// every item key a query returned before (`what` names the fault).
async fn nothing_lost_after_restart(config: NodeConfig, served: &BTreeSet<String>, what: &str) {
    let node = config.start().await;
    let now = node.item_keys("growing").await;
    let lost = missing(served, &now);
    eprintln!("{what}: {} items served, {} lost", served.len(), lost.len());
    assert!(
        lost.is_empty(),
        "{} served items lost: {lost:?}",
        lost.len()
    );
}

/// A node on the tmpfs `disk`, its configuration with `env` added.
fn disk_config(disk: &Tmpfs, env: &[(&str, &str)]) -> NodeConfig {
    env.iter()
        .fold(NodeConfig::new(disk.path()), |c, (k, v)| c.env(k, v))
}

/// A node on `disk` (see [`disk_config`]), the disk then filled until about
/// `leave` bytes are free, five growing sources on the node, and a reader of
/// their collection for `read_for`; and the filler file.
async fn writing_on(
    disk: &Tmpfs,
    site: &FixtureSite,
    env: &[(&str, &str)],
    leave: u64,
    read_for: Duration,
) -> (Node, PathBuf, Reader) {
    let node = disk_config(disk, env).start().await;
    let filler = fill_until(disk.path(), "filler", leave);
    for i in 0..5 {
        node.create_source(&growing_spec(&format!("grow{i}"), site))
            .await;
    }
    let reader = Reader::start(&node, "growing", read_for);
    (node, filler, reader)
}

/// Reads a collection over and over (bounded in count and time) and keeps
/// every item key a query returned, and how the answers went.
struct Reader {
    seen: Arc<Mutex<BTreeSet<String>>>,
    statuses: Arc<Mutex<Vec<u16>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    fn start(node: &Node, collection: &str, within: Duration) -> Reader {
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let statuses = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let api = Api::new(&node.addr(), None, Some(Duration::from_secs(15)));
        let base = format!("/api/v1/collections/{collection}/items?limit=500");
        let (s, st, stop2) = (seen.clone(), statuses.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let deadline = Instant::now() + within;
            for _ in 0..100_000 {
                if stop2.load(Ordering::SeqCst) || Instant::now() > deadline {
                    break;
                }
                let mut cursor: Option<String> = None;
                loop {
                    let url = match &cursor {
                        Some(c) => format!("{base}&cursor={c}"),
                        None => base.clone(),
                    };
                    let Ok(r) = api.anonymous(Method::GET, &url).send().await else {
                        break;
                    };
                    let status = r.status().as_u16();
                    st.lock().unwrap().push(status);
                    if status != 200 {
                        break;
                    }
                    let body: Value = r.json().await.unwrap_or_default();
                    let mut seen = s.lock().unwrap();
                    for item in body["items"].as_array().into_iter().flatten() {
                        seen.insert(item["key"].as_str().unwrap_or_default().to_owned());
                    }
                    match body["next"].as_str() {
                        Some(n) => cursor = Some(n.to_owned()),
                        None => break,
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Reader {
            seen,
            statuses,
            stop,
            task,
        }
    }

    async fn finish(self) -> (BTreeSet<String>, Vec<u16>) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let seen = self.seen.lock().unwrap().clone();
        let statuses = self.statuses.lock().unwrap().clone();
        (seen, statuses)
    }
}

fn missing(served: &BTreeSet<String>, now: &[String]) -> Vec<String> {
    let now: BTreeSet<&String> = now.iter().collect();
    served
        .iter()
        .filter(|k| !now.contains(k))
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_full_disk_refuses_writes_keeps_answering_and_recovers_by_itself() {
    let Some(disk) = Tmpfs::mount("16m") else {
        return;
    };
    let site = FixtureSite::start().await;
    let env = [("GLEANER_DISK_RESERVE_MB", "4"), ("GLEANER_CACHE_MB", "8")];
    // Leave the node ~3 MiB above its reserve, so its own writes cross it soon.
    let (mut node, filler, reader) = writing_on(
        &disk,
        &site,
        &env,
        7 * 1024 * 1024,
        Duration::from_secs(240),
    )
    .await;

    // The disk crosses the reserve: not ready, and it says why.
    let not_ready = wait_until(
        "readyz reports the full disk",
        Duration::from_secs(120),
        || async {
            let (status, body) = node.get("/readyz").await;
            (status == 503 && body["error"]["code"] == "disk_full").then_some(body)
        },
    )
    .await;
    let data_dir = disk.path().display().to_string();
    assert!(
        not_ready["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&data_dir),
        "{not_ready}"
    );
    // Health and reads answer; writes fail fast with 507 naming the directory.
    assert_eq!(node.get("/healthz").await.0, 200);
    let (status, body) = node.get("/api/v1/collections/growing/items?limit=5").await;
    assert_eq!(status, 200, "{body}");
    let asked = Instant::now();
    let (status, body) = node
        .post("/api/v1/sources", &growing_spec("late", &site))
        .await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "disk_full", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&data_dir));
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "the refusal was not fast"
    );
    // The sources show why their runs fail, and stay scheduled.
    let source = node
        .wait_for_run("grow0", Duration::from_secs(30), |run| {
            run["code"] == "disk_full"
        })
        .await;
    assert!(
        source["status"]["last_run"]["error"]
            .as_str()
            .unwrap()
            .contains("disk is full"),
        "{source}"
    );
    let (_, state) = node.get("/debug/state").await;
    let storage = &state["members"][0]["storage"];
    assert_eq!(storage["state"], "disk_full", "{state}");

    // Space returns: the node recovers by itself, and scraping resumes.
    let before = node.item_keys("growing").await.len();
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    wait_until(
        "readyz after space returns",
        Duration::from_secs(30),
        || async { (node.get("/readyz").await.0 == 200).then_some(()) },
    )
    .await;
    let ready_after = freed.elapsed();
    wait_until(
        "new items after space returns",
        Duration::from_secs(30),
        || async { (node.item_keys("growing").await.len() > before).then_some(()) },
    )
    .await;
    let resumed_after = freed.elapsed();
    node.create_source(&growing_spec("late", &site)).await;
    eprintln!(
        "full disk: ready again {} ms and new items {} ms after space was freed",
        ready_after.as_millis(),
        resumed_after.as_millis()
    );

    // SIGTERM exits 0 in the grace period.
    let (served, statuses) = reader.finish().await;
    let stopping = Instant::now();
    assert!(node.terminate(), "SIGTERM did not exit 0");
    assert!(stopping.elapsed() < Duration::from_secs(10));
    assert!(
        statuses.iter().all(|s| *s == 200),
        "reads failed: {statuses:?}"
    );

    // Every item a query returned is still there after a restart.
    drop(node);
    nothing_lost_after_restart(disk_config(&disk, &env), &served, "full disk").await;
}

#[tokio::test]
async fn kill_9_while_writing_loses_nothing_that_was_served() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeConfig::new(dir.path()).start().await;
    for i in 0..5 {
        node.create_source(&growing_spec(&format!("grow{i}"), &site))
            .await;
    }
    let reader = Reader::start(&node, "growing", Duration::from_secs(60));
    wait_until("items are served", Duration::from_secs(30), || async {
        (reader.seen.lock().unwrap().len() >= 300).then_some(())
    })
    .await;
    node.kill9();
    let (served, _) = reader.finish().await;
    drop(node);
    nothing_lost_after_restart(NodeConfig::new(dir.path()), &served, "kill -9").await;
}

#[tokio::test]
async fn sled_out_of_space_ends_the_node_for_a_restart_and_loses_nothing_served() {
    let Some(disk) = Tmpfs::mount("16m") else {
        return;
    };
    let site = FixtureSite::start().await;
    let env = [
        ("GLEANER_DISK_RESERVE_MB", "0"),
        ("GLEANER_STORE_STALL_SECS", "3"),
        ("GLEANER_CACHE_MB", "8"),
    ];
    let (mut node, filler, reader) = writing_on(
        &disk,
        &site,
        &env,
        2 * 1024 * 1024,
        Duration::from_secs(180),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let code = loop {
        if let Some(code) = node.exited() {
            break code;
        }
        assert!(
            Instant::now() < deadline,
            "the node neither filled its disk nor exited in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (served, _) = reader.finish().await;
    assert_eq!(code, Some(75), "{}", node.logs().join("\n"));
    assert!(
        node.logs()
            .iter()
            .any(|l| l.contains("exiting so that the node is restarted")),
        "the node did not say why it exited"
    );
    if let Some(why) = node.logs().iter().find(|l| l.contains("the store failed")) {
        eprintln!("sled out of space: {why}");
    }
    drop(node);
    std::fs::remove_file(&filler).unwrap();
    let what = format!("sled out of space: exit {code:?}");
    nothing_lost_after_restart(disk_config(&disk, &env), &served, &what).await;
}
