//! What an operator reads on a node's stdout: plain text when it is not a
//! terminal (here a pipe: no colour codes), the ready line saying where the
//! API, the dashboard and the data are, and no chatter from the libraries
//! under the node at INFO.

use std::time::Duration;

use crate::harness::fixture::{page_path, page_spec, FixtureSite};
use crate::harness::{wait_until, NodeConfig};

#[tokio::test]
async fn piped_text_logs_are_plain_and_say_where_the_node_is() {
    let site = FixtureSite::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = NodeConfig::new(dir.path())
        .env("GLEANER_LOG_FORMAT", "text")
        .env("GLEANER_LOG", "info")
        .start()
        .await;
    node.create_source(&page_spec("one", &site.url(&page_path(1)), 3600))
        .await;
    node.wait_for_run("one", Duration::from_secs(30), |r| r["error"].is_null())
        .await;
    let ready = wait_until("the ready line", Duration::from_secs(10), || async {
        node.logs()
            .into_iter()
            .find(|l| l.contains("gleaner node ready"))
    })
    .await;
    let base = format!("http://{}", node.addr);
    for field in [
        format!("api={base}/api/v1"),
        format!("dashboard={base}/dashboard"),
        format!("metrics={base}/metrics"),
        format!("data_dir={}", dir.path().display()),
    ] {
        assert!(ready.contains(&field), "no `{field}` in: {ready}");
    }
    assert!(ready.contains(" INFO "), "{ready}");
    let logs = node.logs();
    assert!(logs.len() > 2, "{logs:?}");
    for line in &logs {
        assert!(
            !line.contains("\x1b["),
            "a colour code in a piped log: {line:?}"
        );
        for quiet in ["ractor", "sled", "hyper", "reqwest", "actix"] {
            assert!(
                !line.contains(&format!(" INFO {quiet}")),
                "{quiet} logs at INFO by default: {line}"
            );
        }
    }
}
