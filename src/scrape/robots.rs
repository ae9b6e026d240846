//! robots.txt (RFC 9309) for gleaner's user-agent token `gleaner`: what a
//! fetched file means, and the host a file applies to. Parsing is
//! `texting_robots`'s (it also reads `Crawl-delay`); fetching and caching are
//! in [`super::politeness`].

use std::time::Duration;

use url::Url;

/// The product token gleaner matches `User-agent` lines against.
pub const ROBOTS_TOKEN: &str = "gleaner";
/// The longest `Crawl-delay` honoured; a longer one is cut to this, so that a
/// run's wait stays bounded.
pub const MAX_CRAWL_DELAY: Duration = Duration::from_secs(60);

/// What one host's robots.txt allows.
#[derive(Debug)]
pub enum RobotsRules {
    /// No usable file (a 4xx answer): everything is allowed.
    AllowAll,
    /// The file could not be had (a 5xx or 429 answer, a network error):
    /// nothing is allowed until the next try.
    DisallowAll,
    /// A file's rules for `gleaner`.
    Parsed(Box<texting_robots::Robot>),
}

impl RobotsRules {
    /// Rules from a file's body. A body that does not parse allows
    /// everything (RFC 9309 asks crawlers to use what they can parse).
    pub fn parse(body: &[u8]) -> RobotsRules {
        match texting_robots::Robot::new(ROBOTS_TOKEN, body) {
            Ok(robot) => RobotsRules::Parsed(Box::new(robot)),
            Err(_) => RobotsRules::AllowAll,
        }
    }

    /// May `url` be fetched?
    pub fn allows(&self, url: &Url) -> bool {
        match self {
            RobotsRules::AllowAll => true,
            RobotsRules::DisallowAll => false,
            RobotsRules::Parsed(robot) => robot.allowed(url.as_str()),
        }
    }

    /// The `Crawl-delay` for gleaner, at most [`MAX_CRAWL_DELAY`].
    pub fn crawl_delay(&self) -> Option<Duration> {
        match self {
            RobotsRules::Parsed(robot) => robot
                .delay
                .filter(|d| d.is_finite() && *d > 0.0)
                .map(|d| Duration::from_secs_f32(d).min(MAX_CRAWL_DELAY)),
            _ => None,
        }
    }
}

/// The host a URL's politeness state is kept under: its authority without
/// userinfo, lowercased, the scheme's default port left out
/// (`HTTP://User@Example.ORG:80/x` is `example.org`).
pub fn host_key(url: &Url) -> Option<String> {
    let host = url.host_str()?.to_ascii_lowercase();
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    })
}

/// Where the robots.txt that applies to `url` is.
pub fn robots_url(url: &Url) -> Option<Url> {
    let mut robots = url.clone();
    robots.set_path("/robots.txt");
    robots.set_query(None);
    robots.set_fragment(None);
    robots.set_username("").ok()?;
    robots.set_password(None).ok()?;
    Some(robots)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(
            host_key(&url("HTTP://User:pw@Example.ORG:80/x")).unwrap(),
            "example.org"
        );
        assert_eq!(
            host_key(&url("https://example.org:443/")).unwrap(),
            "example.org"
        );
        assert_eq!(
            host_key(&url("https://example.org:8443/")).unwrap(),
            "example.org:8443"
        );
        assert_eq!(
            host_key(&url("http://127.0.0.2:8080/a?b")).unwrap(),
            "127.0.0.2:8080"
        );
        assert_eq!(host_key(&url("http://[::1]:81/")).unwrap(), "[::1]:81");
        assert_eq!(
            robots_url(&url("http://u:p@example.org:81/a/b?c#d"))
                .unwrap()
                .as_str(),
            "http://example.org:81/robots.txt"
        );
    }

    #[test]
    fn rules_for_gleaner() {
        let rules = RobotsRules::parse(
            b"User-agent: *\nDisallow: /\n\nUser-agent: gleaner\nDisallow: /private/\nAllow: /\nCrawl-delay: 2\n",
        );
        assert!(rules.allows(&url("http://example.org/catalogue/page-1.html")));
        assert!(!rules.allows(&url("http://example.org/private/x")));
        assert_eq!(rules.crawl_delay(), Some(Duration::from_secs(2)));
        let others = RobotsRules::parse(b"User-agent: other\nDisallow: /\n");
        assert!(others.allows(&url("http://example.org/")));
        let long = RobotsRules::parse(b"User-agent: *\nCrawl-delay: 86400\n");
        assert_eq!(long.crawl_delay(), Some(MAX_CRAWL_DELAY));
        assert!(!RobotsRules::DisallowAll.allows(&url("http://example.org/")));
        assert!(RobotsRules::AllowAll.allows(&url("http://example.org/")));
    }
}
