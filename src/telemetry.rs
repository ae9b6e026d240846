//! The tracing subscriber: human-readable lines, one JSON object per line
//! when asked (`GLEANER_LOG_FORMAT=json`), filtered by `GLEANER_LOG`.
//!
//! What an operator reads: colour codes only when stdout is a terminal (a
//! file, a pipe or `docker logs` gets plain text), and the internals of the
//! libraries under the node (the actor runtime, sled, the HTTP stacks) at
//! WARN unless `GLEANER_LOG` names them ([`filter`]).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::settings::LogFormat;

/// Targets kept at WARN unless the operator's filter names them (a target
/// also covers its sub-targets: `actix` covers `actix_web`, `hyper` covers
/// `hyper_util`).
pub const QUIET_TARGETS: [&str; 10] = [
    "ractor",
    "ractor_cluster",
    "sled",
    "hyper",
    "h2",
    "reqwest",
    "rustls",
    "actix",
    "bollard",
    "html5ever",
];

/// The filter in force for the operator's `GLEANER_LOG`: theirs, after a
/// `target=warn` for each of [`QUIET_TARGETS`] their filter does not name
/// (a directive names a quiet target when that target starts with the
/// directive's target: `ractor=debug` names `ractor` and `ractor_cluster`).
/// `info` becomes `ractor=warn,ractor_cluster=warn,...,info`.
pub fn filter(user: &str) -> String {
    let named: Vec<&str> = user
        .split(',')
        .filter_map(|d| {
            let d = d.trim();
            // A bare level (`info`) names no target.
            let target = d.split(['=', '[']).next()?.trim();
            let is_level = target
                .parse::<tracing::level_filters::LevelFilter>()
                .is_ok();
            (!target.is_empty() && (d.contains('=') || !is_level)).then_some(target)
        })
        .collect();
    let mut directives: Vec<String> = QUIET_TARGETS
        .iter()
        .filter(|quiet| !named.iter().any(|t| quiet.starts_with(t)))
        .map(|quiet| format!("{quiet}=warn"))
        .collect();
    if !user.trim().is_empty() {
        directives.push(user.trim().to_owned());
    }
    directives.join(",")
}

/// Installs the global subscriber; a bad filter is an error, not a silent default.
pub fn init(user_filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter(user_filter))
        .map_err(|e| anyhow::anyhow!("GLEANER_LOG is not a valid filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

/// As [`init`], with the lines on stderr (for a command whose stdout is
/// its answer).
pub fn init_to_stderr(user_filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter(user_filter))
        .map_err(|e| anyhow::anyhow!("GLEANER_LOG is not a valid filter: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_are_quiet_by_default() {
        let f = filter("info");
        assert!(
            f.starts_with("ractor=warn,ractor_cluster=warn,sled=warn,"),
            "{f}"
        );
        assert!(f.ends_with(",info"), "{f}");
        assert!(
            f.contains("actix=warn") && f.contains("reqwest=warn"),
            "{f}"
        );
        EnvFilter::try_new(&f).unwrap();
    }

    #[test]
    fn a_named_dependency_is_left_to_the_operator() {
        let f = filter("info,ractor=debug,sled[flush]=trace");
        assert!(!f.contains("ractor=warn"), "{f}");
        assert!(!f.contains("ractor_cluster=warn"), "{f}");
        assert!(!f.contains("sled=warn"), "{f}");
        assert!(f.contains("hyper=warn"), "{f}");
        assert!(f.ends_with("info,ractor=debug,sled[flush]=trace"), "{f}");
        // A more specific name leaves the broader quiet directive in place
        // (EnvFilter prefers the more specific one for its target).
        let f = filter("actix_web=debug");
        assert!(f.contains("actix=warn"), "{f}");
        EnvFilter::try_new(&f).unwrap();
    }

    #[test]
    fn levels_name_no_target() {
        for level in ["debug", "TRACE", "warn", "off"] {
            assert!(filter(level).contains("sled=warn"), "{level}");
        }
        assert!(filter("").ends_with("html5ever=warn"));
    }
}
