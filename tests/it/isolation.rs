//! Isolated sources on the real Docker engine: node containers (the image
//! from `scripts/image.sh`) with the engine's socket start one worker
//! container per isolated source, on a network the test creates, next to a
//! fixture site served by `busybox httpd -vv` (which logs each URL) from the same base image.

use std::time::Duration;

use crate::harness::docker::{
    docker, docker_try, exclusive, image, inspect, prefix, Cleanup, Network, NodeBox, NodeRun,
    Site, IMAGE,
};
use crate::harness::fixture::page_spec;
use crate::harness::node::Api;
use crate::harness::{wait_until, ADMIN_TOKEN, COOKIE};
use serde_json::Value;

const WITHIN: Duration = Duration::from_secs(60);
/// The nodes' `GLEANER_LOG`, which their workers must be given.
const WORKER_LOG: &str = "info,gleaner::scrape=debug";

/// The network, the fixture site and the containers of one test, removed
/// when it ends (with the workers the nodes started on the network).
struct Lab {
    prefix: String,
    network: Network,
    site: Site,
    made: Cleanup,
}

impl Lab {
    fn new(name: &str) -> Lab {
        image();
        let prefix = prefix(&format!("{name}-"));
        let mut made = Cleanup::default();
        let network = Network::create(&mut made, &format!("{prefix}net"));
        made.sweep = vec![
            format!("network={}", network.name),
            format!("name={prefix}"),
        ];
        let site = Site::start(&made, &format!("{prefix}site"), &network, 20);
        Lab {
            prefix,
            network,
            site,
            made,
        }
    }

    /// Fetches of catalogue page `n` so far, from the fixture's own request log.
    fn hits(&self, n: u32) -> usize {
        self.site.count(n)
    }

    /// Starts a node container with the engine's socket (as root, to use it).
    async fn node(&self, i: usize, peers: &[usize]) -> NodeBox {
        let name = format!("{}n{i}", self.prefix);
        let seeds: Vec<String> = peers
            .iter()
            .map(|p| format!("{}n{p}:4697", self.prefix))
            .collect();
        let options: Vec<String> = [
            "--user",
            "0",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-e",
            &format!("GLEANER_CLUSTER_ADVERTISE={name}"),
            "-e",
            &format!("GLEANER_WORKER_IMAGE={IMAGE}"),
            "-e",
            &format!("GLEANER_WORKER_NETWORK={}", self.network.name),
            "-e",
            &format!("GLEANER_LOG={WORKER_LOG}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        NodeRun {
            container: &name,
            name: &format!("n{i}"),
            network: &self.network,
            seeds: &seeds.join(","),
            options: &options,
        }
        .start(&self.made, WITHIN)
        .await
    }

    /// This lab's worker containers: (id, name, state, source label).
    fn workers(&self) -> Vec<(String, String, String, String)> {
        let network = format!("network={}", self.network.name);
        let out = docker(&[
            "ps",
            "-a",
            "--filter",
            &network,
            "--filter",
            "label=org.gleaner.role=worker",
            "--format",
            "{{.ID}} {{.Names}} {{.State}} {{.Label \"org.gleaner.source\"}}",
        ]);
        out.lines()
            .filter_map(|l| {
                let p: Vec<&str> = l.split_whitespace().collect();
                (p.len() == 4).then(|| {
                    (
                        p[0].to_owned(),
                        p[1].to_owned(),
                        p[2].to_owned(),
                        p[3].to_owned(),
                    )
                })
            })
            .collect()
    }
}

/// A source's view, if the node answers 200.
async fn source(node: &NodeBox, id: &str) -> Option<Value> {
    let (s, v) = node.try_get(&format!("/api/v1/sources/{id}")).await?;
    (s == 200).then_some(v)
}

/// The items a node counts in a collection (0 when it does not answer).
async fn items(node: &NodeBox, collection: &str) -> u64 {
    match node.try_get("/api/v1/collections").await {
        Some((200, v)) => v["collections"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == collection))
            .and_then(|c| c["items"].as_u64())
            .unwrap_or(0),
        _ => 0,
    }
}

fn isolated_spec(lab: &Lab, id: &str, page: u32) -> Value {
    let mut spec = page_spec(id, &lab.site.url(page), 1);
    spec["collection"] = "iso".into();
    spec["isolated"] = true.into();
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolated_sources_run_in_locked_down_workers_that_are_replaced_and_removed() {
    let _one = exclusive().await;
    let lab = Lab::new("iso");
    let n0 = lab.node(0, &[1]).await;
    let n1 = lab.node(1, &[0]).await;
    n0.wait_ready(WITHIN).await;
    n1.wait_ready(WITHIN).await;
    let posted = std::time::Instant::now();
    assert_eq!(
        n0.post("/api/v1/sources", &isolated_spec(&lab, "iso1", 1))
            .await
            .0,
        201
    );
    // A worker container runs it and its items reach every node.
    let container = wait_until("a running worker container", WITHIN, || async {
        let s = source(&n1, "iso1").await?;
        let c = &s["status"]["container"];
        (c["state"] == "running" && s["status"]["state"] == "running")
            .then(|| c["id"].as_str().unwrap().to_owned())
    })
    .await;
    wait_until("the worker's first fetch", WITHIN, || async {
        (lab.hits(1) > 0).then_some(())
    })
    .await;
    // A figure for the notes (not asserted): POST to the worker's first fetch.
    eprintln!(
        "worker start latency: POST to first fetch {} ms",
        posted.elapsed().as_millis()
    );
    for n in [&n0, &n1] {
        wait_until("the worker's items everywhere", WITHIN, || async {
            (items(n, "iso").await == 20).then_some(())
        })
        .await;
    }
    // Locked down as promised.
    let inspected = inspect(&container).unwrap();
    let c = &inspected;
    let host = &c["HostConfig"];
    assert_eq!(host["ReadonlyRootfs"], true);
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
    assert!(host["SecurityOpt"]
        .to_string()
        .contains("no-new-privileges"));
    assert!(host["Memory"].as_i64().unwrap() > 0);
    assert!(host["NanoCpus"].as_i64().unwrap() > 0);
    assert!(host["PidsLimit"].as_i64().unwrap() > 0);
    assert!(!c["Mounts"].to_string().contains("docker.sock"), "{c}");
    assert_eq!(host["Init"], true);
    assert_eq!(c["Config"]["Labels"]["org.gleaner.source"], "iso1");
    // Its logs are filtered as its node's are.
    let env = c["Config"]["Env"].as_array().unwrap();
    let log = format!("GLEANER_LOG={WORKER_LOG}");
    assert!(env.iter().any(|e| e == log.as_str()), "{env:?}");
    assert!(
        c["Config"]["Labels"]["org.gleaner.cluster"].is_string(),
        "{c}"
    );
    // A worker serves no HTTP; its health file turns it healthy.
    wait_until("the worker healthy", WITHIN, || async {
        let state = inspect(&container).ok()?;
        (state["State"]["Health"]["Status"] == "healthy").then_some(())
    })
    .await;
    // The worker is a cluster member of role worker, never an owner.
    let (_, cluster) = n0.try_get("/api/v1/cluster").await.unwrap();
    assert!(
        cluster["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["role"] == "worker" && m["state"] == "up"),
        "{cluster}"
    );

    // A killed worker is replaced, and the source keeps running.
    docker(&["kill", &container]);
    let hits = lab.hits(1);
    let replaced = wait_until("a replacement worker", WITHIN, || async {
        let s = source(&n0, "iso1").await?;
        let id = s["status"]["container"]["id"].as_str()?.to_owned();
        (id != container && s["status"]["container"]["state"] == "running").then_some(id)
    })
    .await;
    wait_until("the replacement to scrape", WITHIN, || async {
        (lab.hits(1) > hits).then_some(())
    })
    .await;

    // Replacing the spec replaces the container; deleting removes it.
    let mut spec = isolated_spec(&lab, "iso1", 2);
    spec["schedule"]["every_secs"] = 2.into();
    assert_eq!(n1.put("/api/v1/sources/iso1", &spec).await.0, 200);
    wait_until("a worker for the new spec", WITHIN, || async {
        let s = source(&n0, "iso1").await?;
        let id = s["status"]["container"]["id"].as_str()?.to_owned();
        (id != replaced && s["status"]["container"]["state"] == "running").then_some(())
    })
    .await;
    wait_until("the new spec's items", WITHIN, || async {
        (items(&n0, "iso").await == 40).then_some(())
    })
    .await;
    let volume = data_volume(&lab.workers()[0].0);
    assert_eq!(n0.delete("/api/v1/sources/iso1").await.0, 204);
    wait_until("no worker container left", WITHIN, || async {
        lab.workers().is_empty().then_some(())
    })
    .await;
    // Its anonymous /data volume went with it.
    assert!(
        docker_try(&["volume", "inspect", &volume]).is_err(),
        "{volume} left"
    );
}

/// The anonymous volume a worker container has at the image's /data.
fn data_volume(container: &str) -> String {
    let c = inspect(container).unwrap();
    c["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Destination"] == "/data")
        .and_then(|m| m["Name"].as_str())
        .unwrap_or_else(|| panic!("no /data volume: {c}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_are_adopted_after_a_restart_and_follow_their_source_to_a_new_owner() {
    let _one = exclusive().await;
    let lab = Lab::new("adopt");
    let n0 = lab.node(0, &[1]).await;
    let n1 = lab.node(1, &[0]).await;
    n0.wait_ready(WITHIN).await;
    n1.wait_ready(WITHIN).await;
    assert_eq!(
        n0.post("/api/v1/sources", &isolated_spec(&lab, "iso2", 3))
            .await
            .0,
        201
    );
    let (owner, container) = wait_until("a running worker", WITHIN, || async {
        let s = source(&n0, "iso2").await?;
        let c = &s["status"]["container"];
        (c["state"] == "running").then(|| {
            (
                s["status"]["owner"].as_str().unwrap().to_owned(),
                c["id"].as_str().unwrap().to_owned(),
            )
        })
    })
    .await;
    let (owner_box, other) = if owner == "n0" {
        (&n0, &n1)
    } else {
        (&n1, &n0)
    };

    // The owner restarts: its worker is adopted, not replaced.
    docker(&["restart", "-t", "5", &owner_box.container]);
    owner_box.refresh(WITHIN).await;
    owner_box.wait_ready(WITHIN).await;
    wait_until("the owner to report its adopted worker", WITHIN, || async {
        let s = source(owner_box, "iso2").await?;
        (s["status"]["container"]["id"] == container.as_str()
            && s["status"]["container"]["state"] == "running")
            .then_some(())
    })
    .await;

    // The owner dies: the survivor runs the source in a worker of its own,
    // and the dead owner's worker stops by itself.
    docker(&["kill", &owner_box.container]);
    wait_until("a worker started by the survivor", WITHIN, || async {
        let s = source(other, "iso2").await?;
        let c = &s["status"]["container"];
        (s["status"]["owner"] != owner.as_str()
            && c["state"] == "running"
            && c["id"] != container.as_str())
        .then_some(())
    })
    .await;
    // The orphan stops by itself, and the survivor's reconcile removes it
    // with its volume (its owner is no live member); then one worker is left.
    let volume = data_volume(&container);
    wait_until("the orphan worker removed", WITHIN, || async {
        (!lab
            .workers()
            .iter()
            .any(|(id, _, _, _)| container.starts_with(id.as_str())))
        .then_some(())
    })
    .await;
    assert!(
        docker_try(&["volume", "inspect", &volume]).is_err(),
        "{volume} left"
    );
    let left: Vec<_> = lab
        .workers()
        .into_iter()
        .filter(|(_, _, _, source)| source == "iso2")
        .collect();
    assert_eq!(left.len(), 1, "one worker for the source: {left:?}");
    assert_eq!(left[0].2, "running", "{left:?}");
    let hits = lab.hits(3);
    wait_until("the survivor's worker to scrape", WITHIN, || async {
        (lab.hits(3) > hits).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_an_engine_an_isolated_source_fails_visibly_and_never_runs_in_process() {
    let site = crate::harness::fixture::FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = crate::harness::NodeConfig::new(dir.path())
        .env(
            "DOCKER_HOST",
            &format!("unix://{}/no-engine.sock", dir.path().display()),
        )
        .env("GLEANER_WORKER_IMAGE", IMAGE)
        .start()
        .await;
    let mut spec = crate::harness::catalogue_spec("iso", &site.url("/catalogue/page-7.html"));
    spec["isolated"] = true.into();
    spec["schedule"]["every_secs"] = 1.into();
    node.create_source(&spec).await;
    let status = wait_until("the engine's error on the source", WITHIN, || async {
        let s = node.source("iso").await;
        (s["status"]["state"] == "failed").then(|| s["status"].clone())
    })
    .await;
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("Docker engine"), "{status}");
    // The node shows it as a worker (never a Scraper), and never fetched the page.
    let (_, debug) = node.get("/debug/state").await;
    assert!(
        !debug.to_string().contains("\"kind\":\"Scraper\""),
        "{debug}"
    );
    assert_eq!(site.hits("/catalogue/page-7.html"), 0);
    let (status, body) = node
        .post("/api/v1/sources/iso/run", &serde_json::json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
}

/// Preview containers of the lab's cluster (running or not): (id, state, owner label).
fn previews(lab: &Lab) -> Vec<(String, String, String)> {
    let cluster = format!(
        "label=org.gleaner.cluster={}",
        gleaner::isolation::cluster_label(COOKIE)
    );
    docker(&[
        "ps",
        "-a",
        "--no-trunc",
        "--filter",
        &format!("network={}", lab.network.name),
        "--filter",
        "label=org.gleaner.role=preview",
        "--filter",
        &cluster,
        "--format",
        "{{.ID}} {{.State}} {{.Label \"org.gleaner.owner\"}}",
    ])
    .lines()
    .filter_map(|l| {
        let p: Vec<&str> = l.split_whitespace().collect();
        (p.len() == 3).then(|| (p[0].to_owned(), p[1].to_owned(), p[2].to_owned()))
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_preview_container_left_by_a_killed_node_is_removed_by_another_node_of_its_cluster() {
    let _one = exclusive().await;
    let lab = Lab::new("pvo");
    // A page that never answers: httpd runs the script, which only sleeps.
    let hang = Site::serve(
        &lab.made,
        &format!("{}hang", lab.prefix),
        &lab.network,
        &[(
            "cgi-bin/hang".to_owned(),
            "#!/bin/sh\nsleep 600\n".to_owned(),
        )],
    );
    let n0 = lab.node(0, &[1]).await;
    let n1 = lab.node(1, &[0]).await;
    n0.wait_ready(WITHIN).await;
    n1.wait_ready(WITHIN).await;
    let patient =
        |n: &NodeBox| Api::new(&n.addr(), Some(ADMIN_TOKEN), Some(Duration::from_secs(150)));

    // n0 previews the page that never answers: its container waits on it.
    let mut spec = isolated_spec(&lab, "pv", 1);
    spec["url"] = hang.at("/cgi-bin/hang").into();
    let on_n0 = patient(&n0);
    // Its answer never comes: the node dies first.
    let pending = tokio::spawn(async move {
        on_n0
            .try_send(
                on_n0
                    .request(reqwest::Method::POST, "/api/v1/preview")
                    .json(&spec),
            )
            .await
    });
    let (container, _, owner) = wait_until("n0's preview container running", WITHIN, || async {
        let [p]: [_; 1] = previews(&lab).try_into().ok()?;
        (p.1 == "running").then_some(p)
    })
    .await;
    wait_until("the preview's request at the page", WITHIN, || async {
        hang.hits()
            .iter()
            .any(|h| h.path == "/cgi-bin/hang")
            .then_some(())
    })
    .await;

    // n0 dies mid-preview (SIGKILL): nothing of it removes its container,
    // which runs on until its own budget ends the walk.
    docker(&["kill", "--signal", "KILL", &n0.container]);
    let killed = std::time::Instant::now();
    assert_eq!(pending.await.unwrap(), None, "a killed node answered");
    // Meanwhile a preview on n1 runs to its end: n1's pass never takes a
    // container a live preview of its waits on.
    let mut ok = isolated_spec(&lab, "ok", 2);
    ok.as_object_mut().unwrap().remove("id");
    let (status, body) = patient(&n1).post("/api/v1/preview", &ok).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["pages"][0]["items"].as_array().unwrap().len(),
        20,
        "{body}"
    );
    let still = previews(&lab);
    assert!(
        still.iter().any(|(id, _, _)| *id == container),
        "the dead node's preview container was removed while it ran: {still:?}"
    );

    // Once it has exited, n1 (same cluster, n0 no live member) removes it.
    let within = gleaner::isolation::docker::MAX_PREVIEW_BUDGET;
    wait_until(
        "the dead node's preview container removed",
        within,
        || async { (!previews(&lab).iter().any(|(id, _, _)| *id == container)).then_some(()) },
    )
    .await;
    eprintln!(
        "stray preview: SIGKILL of its node to its removal by another node {} ms",
        killed.elapsed().as_millis()
    );
    let logs = docker(&["logs", &n1.container]);
    assert!(
        logs.lines()
            .any(|l| l.contains("removing a stray preview container")
                && l.contains(&container)
                && l.contains(&owner)),
        "n1 does not say it removed {container}"
    );
    assert_eq!(previews(&lab), Vec::new());
}
