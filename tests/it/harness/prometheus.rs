//! A real Prometheus server (Debian's `prometheus` package) on a free
//! loopback port, with a temporary configuration that scrapes given targets
//! every second and its TSDB in a temporary directory; queried through its
//! HTTP API. Also `promtool`, the package's checker. `.ci/run` installs both;
//! the tests that use them fail with a clear message where they are missing.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::node::{free_port, wait_until};

/// Panics, naming the package, when `tool` is not on the PATH.
pub fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{tool}` is not installed: the metrics tests need Debian's `prometheus` package \
         (apt-get install -y prometheus; .ci/run installs it)"
    );
}

pub struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
    client: reqwest::Client,
    pub addr: String,
}

impl Prometheus {
    /// Starts a server that scrapes each of `targets` (`host:port`) every
    /// second, and waits until it answers.
    pub async fn start(targets: &[String]) -> Prometheus {
        require("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: gleaner\n    static_configs:\n      - targets: [{list}]\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts");
        let prometheus = Prometheus {
            child,
            _dir: dir,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            addr,
        };
        wait_until("prometheus is ready", Duration::from_secs(30), || async {
            let r = prometheus
                .client
                .get(format!("http://{}/-/ready", prometheus.addr))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        prometheus
    }

    /// The samples of an instant query (`data.result`); None when the query
    /// fails.
    pub async fn query(&self, query: &str) -> Option<Vec<Value>> {
        let r = self
            .client
            .get(format!("http://{}/api/v1/query", self.addr))
            .query(&[("query", query)])
            .send()
            .await
            .ok()?;
        let body: Value = r.json().await.ok()?;
        (body["status"] == "success").then(|| body["data"]["result"].as_array().cloned())?
    }

    /// The value of a query that yields one sample, if it does.
    pub async fn value(&self, query: &str) -> Option<f64> {
        let result = self.query(query).await?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `promtool check metrics` on an exposition text: Ok, or promtool's
/// complaints.
pub fn check_metrics(text: &str, scratch: &Path) -> Result<(), String> {
    require("promtool");
    let file = scratch.join("metrics.txt");
    std::fs::write(&file, text).unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("promtool check metrics < \"$0\"")
        .arg(&file)
        .output()
        .expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(said)
    }
}
