//! The fetcher against the real local fixture site: pages, retries, hostile
//! bodies, and the SSRF guard. The site (127.0.0.2) is allowed by the target
//! policy; the canary (127.0.0.1) is not, and must never see a request. Every
//! test is bounded by the fetcher's own timeouts, never by a sleep.

use std::time::Duration;

use crate::harness::fixture::FixtureSite;
use gleaner::scrape::fetch::{FetchConfig, FetchError, Fetched, Fetcher, TargetPolicy};
use url::Url;

/// Reaches the fixture site (127.0.0.2) and nothing else non-public.
fn site_only() -> TargetPolicy {
    TargetPolicy::AllowList(vec!["127.0.0.2/32".parse().expect("a net")])
}

/// Quick retries and a bounded attempt, reaching only the fixture site.
fn config() -> FetchConfig {
    FetchConfig {
        connect_timeout: Duration::from_secs(2),
        total_timeout: Duration::from_secs(10),
        retry_base: Duration::from_millis(10),
        targets: site_only(),
        ..FetchConfig::default()
    }
}

fn fetcher(config: FetchConfig) -> Fetcher {
    Fetcher::new(config).expect("the fetcher builds")
}

fn url(s: &str) -> Url {
    Url::parse(s).expect("a valid url")
}

async fn fetch(fetcher: &Fetcher, u: &str) -> Result<Fetched, FetchError> {
    fetcher.fetch(&url(u)).await
}

#[tokio::test]
async fn a_catalogue_page_is_fetched() {
    let site = FixtureSite::start().await;
    let page = fetch(&fetcher(config()), &site.url("/catalogue/page-1.html"))
        .await
        .expect("page 1 is fetched");
    assert_eq!(page.status, 200);
    assert_eq!(page.attempts, 1);
    assert_eq!(page.url.as_str(), site.url("/catalogue/page-1.html"));
    assert!(
        page.content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("text/html")),
        "{page:?}"
    );
    let text = std::str::from_utf8(&page.body).expect("utf-8");
    assert_eq!(text.matches("<article class=\"product\">").count(), 20);
    assert!(text.contains("title=\"Book 20\"") && text.contains("£20.99"));
    assert!(text.contains("href=\"page-2.html\""));
    assert_eq!(site.hits("/catalogue/page-1.html"), 1);
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let site = FixtureSite::start().await;
    let config = FetchConfig {
        retries: 2,
        ..config()
    };
    let err = fetch(&fetcher(config), &site.url("/fail"))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Status(500)), "{err:?}");
    assert_eq!(site.hits("/fail"), 3, "one attempt and two retries");
}

#[tokio::test]
async fn not_found_is_not_retried() {
    let site = FixtureSite::start().await;
    let err = fetch(&fetcher(config()), &site.url("/missing"))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Status(404)), "{err:?}");
    assert_eq!(site.hits("/missing"), 1);
}

#[tokio::test]
async fn a_gzip_bomb_stops_at_the_cap() {
    let site = FixtureSite::start().await;
    let limit = FetchConfig::default().max_body_bytes;
    let err = fetch(&fetcher(config()), &site.url("/hostile/gzip-bomb"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::TooLarge { limit: l } if l == limit),
        "{err:?}"
    );
    assert!(err.to_string().contains("larger than"), "{err}");
    assert_eq!(site.hits("/hostile/gzip-bomb"), 1, "never retried");
}

#[tokio::test]
async fn huge_bodies_stop_at_the_cap() {
    let site = FixtureSite::start().await;
    let fetcher = fetcher(config());
    for path in ["/hostile/huge", "/hostile/huge-cl"] {
        let err = fetch(&fetcher, &site.url(path)).await.unwrap_err();
        assert!(
            matches!(err, FetchError::TooLarge { .. }),
            "{path}: {err:?}"
        );
        assert_eq!(site.hits(path), 1, "{path} is not retried");
    }
}

#[tokio::test]
async fn a_small_cap_refuses_an_ordinary_page() {
    let site = FixtureSite::start().await;
    let config = FetchConfig {
        max_body_bytes: 1000,
        ..config()
    };
    let err = fetch(&fetcher(config), &site.url("/catalogue/page-1.html"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, FetchError::TooLarge { limit: 1000 }),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_endless_slow_body_times_out() {
    let site = FixtureSite::start().await;
    let config = FetchConfig {
        total_timeout: Duration::from_secs(1),
        retries: 0,
        ..config()
    };
    let err = fetch(&fetcher(config), &site.url("/hostile/slow"))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Timeout), "{err:?}");
    assert!(err.to_string().contains("timed out"));
}

#[tokio::test]
async fn timeouts_are_retried() {
    let site = FixtureSite::start().await;
    let config = FetchConfig {
        total_timeout: Duration::from_millis(300),
        retries: 1,
        ..config()
    };
    let err = fetch(&fetcher(config), &site.url("/hostile/slow"))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Timeout), "{err:?}");
    assert_eq!(site.hits("/hostile/slow"), 2);
}

#[tokio::test]
async fn a_redirect_to_the_metadata_address_is_refused() {
    let site = FixtureSite::start().await;
    let err = fetch(&fetcher(config()), &site.url("/hostile/redirect-metadata"))
        .await
        .unwrap_err();
    match &err {
        FetchError::Forbidden { target, reason } => {
            assert_eq!(target, "169.254.169.254");
            assert!(reason.contains("not a public address"), "{reason}");
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    assert_eq!(site.hits("/hostile/redirect-metadata"), 1, "never retried");
    assert_eq!(site.canary_hits(), 0);
}

#[tokio::test]
async fn a_redirect_to_loopback_is_refused() {
    let site = FixtureSite::start().await;
    let err = fetch(&fetcher(config()), &site.url("/hostile/redirect-loopback"))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Forbidden { .. }), "{err:?}");
    assert!(err.to_string().contains("127.0.0.1"), "{err}");
    assert_eq!(site.canary_hits(), 0, "the canary was reached");
}

#[tokio::test]
async fn a_redirect_loop_ends() {
    let site = FixtureSite::start().await;
    let config = config();
    let hops = config.max_redirects;
    let err = fetch(&fetcher(config), &site.url("/hostile/redirect-loop"))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::TooManyRedirects), "{err:?}");
    assert!(err.to_string().contains("redirect"));
    assert_eq!(
        site.hits("/hostile/redirect-loop"),
        hops + 1,
        "the request and {hops} redirects"
    );
}

#[tokio::test]
async fn loopback_is_refused_before_connecting() {
    let site = FixtureSite::start().await;
    for targets in [TargetPolicy::PublicOnly, site_only()] {
        let config = FetchConfig {
            targets,
            ..config()
        };
        let err = fetch(&fetcher(config), &site.canary_url("/catalogue/page-1.html"))
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Forbidden { .. }), "{err:?}");
        assert!(err.to_string().contains("127.0.0.1"), "{err}");
    }
    let config = FetchConfig {
        targets: TargetPolicy::PublicOnly,
        ..config()
    };
    let err = fetch(&fetcher(config), &site.url("/catalogue/page-1.html"))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Forbidden { .. }), "{err:?}");
    assert_eq!(site.canary_hits(), 0);
    assert_eq!(site.hits("/"), 0);
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_by_the_resolver() {
    let site = FixtureSite::start().await;
    let canary = url(&site.canary_url("/catalogue/page-1.html"));
    let port = canary.port().expect("the canary's port");
    let err = fetch(
        &fetcher(config()),
        &format!("http://localhost:{port}/catalogue/page-1.html"),
    )
    .await
    .unwrap_err();
    match &err {
        FetchError::Forbidden { target, reason } => {
            assert_eq!(target, "localhost");
            assert!(reason.contains("non-public"), "{reason}");
        }
        other => panic!("expected Forbidden, got {other:?}"),
    }
    assert_eq!(site.canary_hits(), 0);
}

#[tokio::test]
async fn other_schemes_are_refused() {
    let fetcher = fetcher(config());
    for u in ["ftp://127.0.0.2/file", "file:///etc/passwd"] {
        let err = fetch(&fetcher, u).await.unwrap_err();
        assert!(matches!(err, FetchError::BadScheme(_)), "{u}: {err:?}");
    }
}
