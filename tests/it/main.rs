//! gleaner's integration tests, in one binary: every area is a module here and
//! shares the harnesses in [`harness`] (real `gleaner node` processes, a real
//! local fixture web site, the real Docker engine). Nothing of gleaner's own is
//! mocked: the tests drive the built binary over HTTP and TCP, and the library
//! only where an area tests it directly (the fetcher).
//!
//! `hosts::` runs three node processes against one host (cluster-wide politeness).
//!
//! Run it all with `cargo test --test it` (part of `cargo test`), one area with
//! `cargo test --test it cluster::`, one test by a part of its name.
//! `containers::` and `isolation::` need a Docker engine and build the image
//! with `scripts/image.sh`; `dashboard::` needs Chromium and chromedriver; `metrics::` needs
//! Prometheus and promtool (Debian's `prometheus` package).

mod harness;

mod api;
mod authoring;
mod browser;
mod changes;
mod cluster;
mod containers;
mod dashboard;
mod faults;
mod fetch;
mod files;
mod hostile;
mod hosts;
mod isolation;
mod logs;
mod metrics;
mod pipeline;
mod polite;
mod reference;
mod webhooks;
