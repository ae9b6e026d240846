//! The harnesses the test areas share:
//!
//! - [`node`]: a real `gleaner node` process, its HTTP client, and
//!   [`wait_until`], which polls a condition against a deadline;
//! - [`cluster`]: several nodes seeded with each other, and the steps the
//!   cluster tests repeat (who owns what, kill one, name the survivors, wait
//!   for them to agree), for process nodes and container nodes alike;
//! - [`docker`]: the one wrapper around the Docker CLI (commands, the image
//!   built by `scripts/image.sh`, inspect, published ports, cleanup);
//! - [`fixture`]: the local fixture web site (and its canary);
//! - [`prometheus`]: a real Prometheus server scraping nodes, and `promtool`;
//! - [`receiver`]: a webhook receiver that checks signatures and records deliveries;
//! - [`stranger`]: a hostile client of the cluster port.

pub mod cluster;
pub mod docker;
pub mod fixture;
pub mod node;
pub mod prometheus;
pub mod receiver;
pub mod stranger;

pub use fixture::catalogue_spec;
pub use node::{wait_until, Node, NodeConfig, ADMIN_TOKEN, COOKIE};
