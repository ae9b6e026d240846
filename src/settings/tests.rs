//! Settings resolution: defaults, files, secrets, refusals.

use super::*;

fn args(extra: &[&str]) -> NodeArgs {
    let mut argv = vec!["gleaner", "node"];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).unwrap().command {
        Command::Node(a) => a,
        Command::Worker(w) => w.node,
        Command::Preview(p) => p.node,
    }
}

#[test]
fn loopback_without_tokens_is_allowed_elsewhere_refused() {
    let s = Settings::resolve(args(&["--config", "/dev/null"])).unwrap();
    assert_eq!(s.http_addr.to_string(), "127.0.0.1:8080");
    let err = Settings::resolve(args(&[
        "--config",
        "/dev/null",
        "--http-addr",
        "0.0.0.0:8080",
    ]))
    .unwrap_err()
    .to_string();
    assert!(err.contains("GLEANER_ADMIN_TOKEN"), "{err}");
    Settings::resolve(args(&[
        "--config",
        "/dev/null",
        "--http-addr",
        "0.0.0.0:8080",
        "--admin-token",
        "t",
    ]))
    .unwrap();
}

#[test]
fn the_contact_url_joins_the_user_agent() {
    let version = env!("CARGO_PKG_VERSION");
    let s = Settings::resolve(args(&["--config", "/dev/null"])).unwrap();
    assert_eq!(s.fetch.user_agent, format!("gleaner/{version}"));
    let s = Settings::resolve(args(&[
        "--config",
        "/dev/null",
        "--contact-url",
        "https://example.org/crawler",
    ]))
    .unwrap();
    assert_eq!(
        s.fetch.user_agent,
        format!("gleaner/{version} (+https://example.org/crawler)")
    );
    assert_eq!(
        s.isolation.contact_url.as_deref(),
        Some("https://example.org/crawler")
    );
    let err = Settings::resolve(args(&[
        "--config",
        "/dev/null",
        "--contact-url",
        "ftp://x/",
    ]))
    .unwrap_err()
    .to_string();
    assert!(err.contains("GLEANER_CONTACT_URL"), "{err}");
}

#[test]
fn file_settings_are_strict_and_layered_under_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(&path, "data_dir = \"/x\"\nnode_name = \"from-file\"\n").unwrap();
    let p = path.to_str().unwrap();
    let s = Settings::resolve(args(&["--config", p, "--node-name", "flag"])).unwrap();
    assert_eq!(
        (s.data_dir, s.node_name.as_str()),
        (PathBuf::from("/x"), "flag")
    );
    std::fs::write(&path, "colour = \"red\"\n").unwrap();
    let err = format!(
        "{:#}",
        Settings::resolve(args(&["--config", p])).unwrap_err()
    );
    assert!(err.contains("colour"), "{err}");
}

#[test]
fn peers_need_a_cookie_and_a_cookie_opens_the_listener() {
    let err = Settings::resolve(args(&[
        "--config",
        "/dev/null",
        "--seeds",
        "127.0.0.1:4697",
    ]))
    .unwrap_err()
    .to_string();
    assert!(err.contains("GLEANER_COOKIE"), "{err}");
    assert!(Settings::resolve(args(&["--config", "/dev/null"]))
        .unwrap()
        .cluster
        .is_none());
    let s = Settings::resolve(args(&[
        "--config",
        "/dev/null",
        "--cookie",
        "0123456789abcdef0123",
        "--seeds",
        "a:1, b:2",
    ]))
    .unwrap();
    let c = s.cluster.unwrap();
    assert_eq!(c.seeds, ["a:1", "b:2"]);
    assert_eq!((c.advertise.as_str(), c.port), ("127.0.0.1", 4697));
    assert!(c.listen_ip.is_loopback());
    assert_eq!(c.handshake_timeout, Duration::from_secs(5));
    let short = Settings::resolve(args(&["--config", "/dev/null", "--cookie", "short"]));
    assert!(short.unwrap_err().to_string().contains("at least"));
}

#[test]
fn secrets_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, "s3cret\n").unwrap();
    let s = Settings::resolve(args(&[
        "--config",
        "/dev/null",
        "--admin-token-file",
        path.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(s.admin_token.as_deref(), Some("s3cret"));
}

#[test]
fn host_defaults_come_from_flags_and_are_bounded() {
    let s = Settings::resolve(args(&["--config", "/dev/null"])).unwrap();
    assert_eq!(s.fetch.hosts, crate::domain::HostPolicy::default());
    let s = Settings::resolve(args(&[
        "--config",
        "/dev/null",
        "--host-max-in-flight",
        "2",
        "--host-min-delay-ms",
        "250",
    ]))
    .unwrap();
    assert_eq!(
        (s.fetch.hosts.max_in_flight, s.fetch.hosts.min_delay_ms),
        (2, 250)
    );
    for (flag, value, name) in [
        ("--host-max-in-flight", "0", "GLEANER_HOST_MAX_IN_FLIGHT"),
        (
            "--host-min-delay-ms",
            "3600001",
            "GLEANER_HOST_MIN_DELAY_MS",
        ),
    ] {
        let err = Settings::resolve(args(&["--config", "/dev/null", flag, value]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(name), "{err}");
    }
}
