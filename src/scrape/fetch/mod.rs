//! Fetching one page, within limits and behind the SSRF guard.
//!
//! - **Limits.** A connect timeout and a total timeout per attempt that covers
//!   reading the body (so an endless slow body ends); the body is counted
//!   *after* decompression (gzip, brotli, deflate) and cut off past the cap, so
//!   a compression bomb costs at most the cap; at most `max_redirects` hops.
//! - **SSRF guard.** Non-public addresses (loopback, private, link-local and so
//!   cloud metadata, CGNAT, multicast, reserved) are refused unless the
//!   [`TargetPolicy`] allows them. Host names are checked on the addresses they
//!   *resolve to*, inside the client's own resolver, so what is checked is what
//!   is dialled (no DNS-rebinding gap). IP-literal hosts never reach a resolver,
//!   so they are checked before the first request and on every redirect hop.
//!   Environment proxies are ignored: a proxy would dial on our behalf.
//! - **Retries.** 5xx (but 503), timeouts and connection errors are retried
//!   with exponential backoff and jitter; nothing else is. A 429 or 503 is
//!   [`FetchError::Throttled`]: the host is paused instead (`politeness`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use bytes::{Bytes, BytesMut};
use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{
    HeaderName, HeaderValue, CONTENT_ENCODING, CONTENT_TYPE, ETAG, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, LAST_MODIFIED, RETRY_AFTER, USER_AGENT,
};
use url::{Host, Url};

use crate::domain::host::{HostPolicy, PermitOutcome};
use crate::domain::spec::is_sensitive_header;
use crate::domain::{Method, RequestOptions};

use super::politeness::{Politeness, Refusal};

/// Which non-public addresses may be fetched.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TargetPolicy {
    /// Public addresses only (the default).
    #[default]
    PublicOnly,
    /// Any address (`GLEANER_ALLOW_PRIVATE_TARGETS=1`).
    AllowAll,
    /// Public addresses and these networks.
    AllowList(Vec<IpNet>),
}

impl FromStr for TargetPolicy {
    type Err = String;

    /// `""`, `0`, `false`, `no`: public only; `1`, `true`, `yes`, `all`:
    /// anything; otherwise a comma-separated list of CIDRs or addresses.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "0" | "false" | "no" => return Ok(TargetPolicy::PublicOnly),
            "1" | "true" | "yes" | "all" => return Ok(TargetPolicy::AllowAll),
            _ => {}
        }
        let nets = s
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|entry| {
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("'{entry}' is not a CIDR or an IP address"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TargetPolicy::AllowList(nets))
    }
}

impl TargetPolicy {
    /// May `ip` be fetched?
    pub fn permits(&self, ip: IpAddr) -> bool {
        if is_public(ip) {
            return true;
        }
        match self {
            TargetPolicy::PublicOnly => false,
            TargetPolicy::AllowAll => true,
            TargetPolicy::AllowList(nets) => nets.iter().any(|n| n.contains(&ip)),
        }
    }
}

/// Is `ip` a public unicast address? IPv4-mapped, -compatible and NAT64
/// addresses are judged by the IPv4 address they carry.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking 198.18/15
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let seg = ip.segments();
    // IPv4-compatible (::a.b.c.d, deprecated) and NAT64 (64:ff9b::/96).
    if seg[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified() {
        return is_public_v4(Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        ));
    }
    // 6to4 (2002:V4ADDR::/48) carries an IPv4 address in its second and third groups.
    if seg[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        ));
    }
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0; 4] {
        return is_public_v4(Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        ));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (seg[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
        || (seg[0] == 0x2001 && seg[1] == 0x0db8)) // documentation
}

/// Limits and policy of the fetcher.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    pub connect_timeout: Duration,
    /// Total time of one attempt, body included.
    pub total_timeout: Duration,
    /// Largest body, counted after decompression.
    pub max_body_bytes: usize,
    pub max_redirects: usize,
    pub user_agent: String,
    /// Extra attempts after a retryable failure.
    pub retries: u32,
    /// First retry delay; it grows exponentially, with jitter.
    pub retry_base: Duration,
    pub targets: TargetPolicy,
    /// Every host's policy unless an override says otherwise
    /// (`GLEANER_HOST_MAX_IN_FLIGHT`, `GLEANER_HOST_MIN_DELAY_MS`).
    pub hosts: HostPolicy,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(30),
            max_body_bytes: 10 * 1024 * 1024,
            max_redirects: 5,
            user_agent: format!("gleaner/{}", env!("CARGO_PKG_VERSION")),
            retries: 2,
            retry_base: Duration::from_millis(200),
            targets: TargetPolicy::PublicOnly,
            hosts: HostPolicy::default(),
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The SSRF guard refused `target` (an address, a host or a URL).
    #[error("refused {target}: {reason}")]
    Forbidden { target: String, reason: String },
    #[error("timed out")]
    Timeout,
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the server answered {0}")]
    Status(u16),
    /// A 429 or 503 answer: the host asks to be left alone (for
    /// `retry_after`, when it says). Not retried here: the host is paused
    /// (see `politeness`).
    #[error("the server answered {status}{}", .retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    Throttled {
        status: u16,
        retry_after: Option<Duration>,
    },
    #[error("too many redirects")]
    TooManyRedirects,
    /// The host's gate refused the request (robots.txt, a long pause).
    #[error("{0}")]
    Refused(Refusal),
    #[error("{0}: only http and https are fetched")]
    BadScheme(String),
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("reading the body failed: {0}")]
    Body(String),
    #[error("the request failed: {0}")]
    Client(String),
}

impl FetchError {
    /// Worth another attempt: the server or the network may do better next time.
    pub fn is_retryable(&self) -> bool {
        match self {
            FetchError::Status(s) => *s >= 500 || *s == 429,
            FetchError::Timeout | FetchError::Connect(_) => true,
            _ => false,
        }
    }
}

/// A page's validators: sent back as `If-None-Match` / `If-Modified-Since`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

/// Longest validator kept, in bytes; a longer one is ignored.
const MAX_VALIDATOR_LEN: usize = 512;

/// A fetched page.
#[derive(Debug)]
pub struct Fetched {
    /// The final URL, after redirects.
    pub url: Url,
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Bytes,
    /// Attempts it took (1 when the first one succeeded).
    pub attempts: u32,
    /// The answer's `ETag` and `Last-Modified`.
    pub validators: Validators,
    /// A 304 to a conditional request: the page is as it was (no body).
    pub not_modified: bool,
}

/// The guard's refusal, carried through reqwest's error chain.
#[derive(Debug, thiserror::Error)]
#[error("{target} is not allowed: {reason}")]
struct Refused {
    target: String,
    reason: String,
}

#[derive(Debug, thiserror::Error)]
#[error("too many redirects")]
struct RedirectLimit;

/// Resolves host names and keeps only the addresses the policy permits.
struct GuardedResolver {
    targets: TargetPolicy,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let targets = self.targets.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| targets.permits(a.ip()))
                .collect();
            if allowed.is_empty() {
                let shown: Vec<String> = found.iter().map(|a| a.ip().to_string()).collect();
                return Err(Box::new(Refused {
                    target: host,
                    reason: format!(
                        "it resolves only to non-public addresses ({})",
                        shown.join(", ")
                    ),
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Checks a URL's scheme and, for an IP-literal host, the address.
fn check_url(url: &Url, targets: &TargetPolicy) -> Result<(), Refused> {
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(Refused {
            target: url.to_string(),
            reason: "only http and https are fetched".into(),
        });
    }
    let ip = match url.host() {
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
        Some(Host::Domain(_)) => return Ok(()),
        None => {
            return Err(Refused {
                target: url.to_string(),
                reason: "it has no host".into(),
            })
        }
    };
    if targets.permits(ip) {
        Ok(())
    } else {
        Err(Refused {
            target: ip.to_string(),
            reason: "it is not a public address (see GLEANER_ALLOW_PRIVATE_TARGETS)".into(),
        })
    }
}

/// Checks an outbound URL given by an operator (a webhook's) against the
/// policy now: its scheme, an IP-literal host as it is, and a host name by
/// the addresses it resolves to (at least one must be permitted; the
/// [`guarded_client`] dials only those).
pub async fn check_target(url: &Url, targets: &TargetPolicy) -> Result<(), FetchError> {
    check_url(url, targets).map_err(|r| FetchError::Forbidden {
        target: r.target,
        reason: r.reason,
    })?;
    if let Some(Host::Domain(host)) = url.host() {
        let port = url.port_or_known_default().unwrap_or(80);
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| FetchError::Connect(format!("resolving {host}: {e}")))?
            .collect();
        if !found.iter().any(|a| targets.permits(a.ip())) {
            let shown: Vec<String> = found.iter().map(|a| a.ip().to_string()).collect();
            return Err(FetchError::Forbidden {
                target: host.to_owned(),
                reason: format!(
                    "it resolves only to non-public addresses ({}; see GLEANER_ALLOW_PRIVATE_TARGETS)",
                    shown.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// The checks of [`check_target`] that need no I/O: the scheme, and an
/// IP-literal host's address.
pub fn check_url_now(url: &Url, targets: &TargetPolicy) -> Result<(), FetchError> {
    check_url(url, targets).map_err(|r| FetchError::Forbidden {
        target: r.target,
        reason: r.reason,
    })
}

/// An HTTP client for POSTs to operator-given URLs (webhooks) behind the
/// same guard as fetches: host names resolved by the guarded resolver (what
/// is checked is what is dialled), no redirects, no proxy, bounded connect
/// and total timeouts. Check IP-literal URLs with [`check_target`] first.
pub fn guarded_client(
    targets: &TargetPolicy,
    connect_timeout: Duration,
    total_timeout: Duration,
    user_agent: &str,
) -> Result<reqwest::Client, FetchError> {
    reqwest::Client::builder()
        .no_proxy()
        .user_agent(user_agent)
        .connect_timeout(connect_timeout)
        .timeout(total_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedResolver {
            targets: targets.clone(),
        }))
        .build()
        .map_err(|e| FetchError::Client(e.to_string()))
}

/// reqwest's error as ours, the guard's refusals found in its chain.
pub fn request_error(e: reqwest::Error) -> FetchError {
    classify(e)
}

/// The HTTP client of every scraper on a node; cheap to clone.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    config: Arc<FetchConfig>,
    /// Per-host robots.txt, Crawl-delay and back-off, shared by every
    /// scraper that uses this client (so: node-wide).
    politeness: Politeness,
    /// Headless Chromium for `render: browser` (browser workers only).
    renderer: Option<super::browser::Renderer>,
}

impl Fetcher {
    pub fn new(config: FetchConfig) -> Result<Fetcher, FetchError> {
        let targets = config.targets.clone();
        let max_redirects = config.max_redirects;
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > max_redirects {
                return attempt.error(RedirectLimit);
            }
            match check_url(attempt.url(), &targets) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        });
        let client = reqwest::Client::builder()
            .no_proxy()
            .user_agent(config.user_agent.clone())
            .connect_timeout(config.connect_timeout)
            .timeout(config.total_timeout)
            .redirect(redirects)
            .dns_resolver(Arc::new(GuardedResolver {
                targets: config.targets.clone(),
            }))
            .gzip(true)
            .brotli(true)
            .deflate(true)
            .build()
            .map_err(|e| FetchError::Client(e.to_string()))?;
        Ok(Fetcher {
            client,
            politeness: Politeness::new(config.hosts),
            config: Arc::new(config),
            renderer: None,
        })
    }

    /// This client with a browser, for sources with `render: browser`.
    pub fn with_renderer(mut self, renderer: super::browser::Renderer) -> Fetcher {
        self.renderer = Some(renderer);
        self
    }

    /// The browser, in a browser worker.
    pub fn renderer(&self) -> Option<&super::browser::Renderer> {
        self.renderer.as_ref()
    }

    /// The policy on non-public addresses.
    pub fn targets(&self) -> &TargetPolicy {
        &self.config.targets
    }

    /// Would the SSRF guard let a request to `url` through? Checks the
    /// scheme and a literal address, and resolves a host name as a fetch
    /// would (a name that does not resolve is left to the fetch to report).
    /// A request is checked anyway; this lets a caller refuse before any
    /// other request (robots.txt) is made for it.
    pub async fn check_target(&self, url: &Url) -> Result<(), FetchError> {
        let forbidden = |r: Refused| FetchError::Forbidden {
            target: r.target,
            reason: r.reason,
        };
        check_url(url, &self.config.targets).map_err(forbidden)?;
        let Some(Host::Domain(host)) = url.host() else {
            return Ok(());
        };
        let Ok(found) = tokio::net::lookup_host((host, 0)).await else {
            return Ok(());
        };
        let found: Vec<SocketAddr> = found.collect();
        if !found.is_empty() && !found.iter().any(|a| self.config.targets.permits(a.ip())) {
            return Err(FetchError::Forbidden {
                target: host.to_owned(),
                reason: "it resolves only to non-public addresses".into(),
            });
        }
        Ok(())
    }

    /// The node's per-host politeness state.
    pub fn politeness(&self) -> &Politeness {
        &self.politeness
    }

    /// Requests a source's page: as [`Fetcher::fetch_conditional`], after
    /// robots.txt allowed it (when the host's policy obeys robots.txt).
    pub async fn fetch_page(
        &self,
        url: &Url,
        request: &RequestOptions,
        validators: Option<&Validators>,
    ) -> Result<Fetched, FetchError> {
        self.fetch_gated(url, request, validators, true).await
    }

    /// GETs `url` with the limits, the guard and retries. Ok only for 2xx.
    pub async fn fetch(&self, url: &Url) -> Result<Fetched, FetchError> {
        self.fetch_with(url, &RequestOptions::default()).await
    }

    /// Requests `url` as `request` says (method, headers, body, user agent),
    /// with the limits, the guard and retries. Ok only for 2xx.
    pub async fn fetch_with(
        &self,
        url: &Url,
        request: &RequestOptions,
    ) -> Result<Fetched, FetchError> {
        self.fetch_conditional(url, request, None).await
    }

    /// As [`Fetcher::fetch_with`], sending `validators` (when given) as
    /// `If-None-Match` / `If-Modified-Since`: a 304 answer is then Ok, with
    /// `not_modified` set and no body.
    pub async fn fetch_conditional(
        &self,
        url: &Url,
        request: &RequestOptions,
        validators: Option<&Validators>,
    ) -> Result<Fetched, FetchError> {
        self.fetch_gated(url, request, validators, false).await
    }

    /// Every attempt takes a permit from the host's gate (the first also
    /// checks robots.txt when `robots`) and gives it back with what the
    /// host answered.
    async fn fetch_gated(
        &self,
        url: &Url,
        request: &RequestOptions,
        validators: Option<&Validators>,
        robots: bool,
    ) -> Result<Fetched, FetchError> {
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(FetchError::BadScheme(url.scheme().to_owned()));
        }
        check_url(url, &self.config.targets).map_err(|r| FetchError::Forbidden {
            target: r.target,
            reason: r.reason,
        })?;
        let attempts = AtomicU32::new(0);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.config.retry_base)
            .with_max_delay(self.config.retry_base * 16)
            .with_max_times(self.config.retries as usize)
            .with_jitter();
        let ttl = self.config.total_timeout + self.config.connect_timeout;
        let result = (|| async {
            let first = attempts.fetch_add(1, Ordering::Relaxed) == 0;
            let permit = self
                .politeness
                .permit(self, url, robots && first, ttl)
                .await
                .map_err(FetchError::Refused)?;
            let result = self.attempt(url, request, validators).await;
            permit.release(match &result {
                Err(FetchError::Throttled { retry_after, .. }) => PermitOutcome::Throttled {
                    retry_after_ms: retry_after.map(|d| d.as_millis() as u64),
                },
                Ok(_) | Err(FetchError::Status(_)) => PermitOutcome::Answered,
                Err(_) => PermitOutcome::Failed,
            });
            result
        })
        .retry(backoff)
        .when(FetchError::is_retryable)
        .notify(|e, delay| {
            tracing::warn!(%url, error = %e, delay_ms = delay.as_millis() as u64, "fetch failed, retrying");
        })
        .await;
        result.map(|mut f| {
            f.attempts = attempts.load(Ordering::Relaxed);
            f
        })
    }

    /// One request, counted in the metrics by its status class and body size.
    async fn attempt(
        &self,
        url: &Url,
        request: &RequestOptions,
        validators: Option<&Validators>,
    ) -> Result<Fetched, FetchError> {
        let result = self.attempt_uncounted(url, request, validators).await;
        match &result {
            Ok(f) => crate::instruments::page_fetched(Some(f.status), f.body.len()),
            Err(FetchError::Status(status)) => crate::instruments::page_fetched(Some(*status), 0),
            Err(FetchError::Throttled { status, .. }) => {
                crate::instruments::page_fetched(Some(*status), 0)
            }
            Err(_) => crate::instruments::page_fetched(None, 0),
        }
        result
    }

    async fn attempt_uncounted(
        &self,
        url: &Url,
        request: &RequestOptions,
        validators: Option<&Validators>,
    ) -> Result<Fetched, FetchError> {
        let limit = self.config.max_body_bytes;
        let mut builder = match request.method {
            Method::Get => self.client.get(url.clone()),
            Method::Post => self.client.post(url.clone()),
        };
        for (name, value) in &request.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| FetchError::Client(format!("header {name}: {e}")))?;
            let mut value = HeaderValue::from_str(value)
                .or_else(|_| HeaderValue::from_bytes(value.as_bytes()))
                .map_err(|e| FetchError::Client(format!("header {name}: {e}")))?;
            // Sensitive values are kept out of reqwest's and hyper's debug output.
            value.set_sensitive(is_sensitive_header(name.as_str()));
            builder = builder.header(name, value);
        }
        if let Some(agent) = &request.user_agent {
            builder = builder.header(USER_AGENT, agent.as_str());
        }
        if let Some(body) = &request.body {
            builder = builder.body(body.clone());
        }
        if let Some(v) = validators {
            if let Some(etag) = &v.etag {
                builder = builder.header(IF_NONE_MATCH, etag.as_str());
            }
            if let Some(date) = &v.last_modified {
                builder = builder.header(IF_MODIFIED_SINCE, date.as_str());
            }
        }
        let mut response = builder.send().await.map_err(classify)?;
        let status = response.status();
        let validator = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty() && v.len() <= MAX_VALIDATOR_LEN)
                .map(str::to_owned)
        };
        let answered = Validators {
            etag: validator(ETAG),
            last_modified: validator(LAST_MODIFIED),
        };
        if status.as_u16() == 304 && validators.is_some() {
            return Ok(Fetched {
                url: response.url().clone(),
                status: 304,
                content_type: None,
                body: Bytes::new(),
                attempts: 1,
                validators: answered,
                not_modified: true,
            });
        }
        if status.as_u16() == 429 || status.as_u16() == 503 {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
            return Err(FetchError::Throttled {
                status: status.as_u16(),
                retry_after,
            });
        }
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        let encoded = response.headers().contains_key(CONTENT_ENCODING);
        if !encoded && response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(FetchError::TooLarge { limit });
        }
        let final_url = response.url().clone();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Sized once when the length is known (and within the limit), so
        // the body is not copied again as it grows.
        let expected = response.content_length().filter(|_| !encoded);
        let mut body =
            BytesMut::with_capacity(expected.map_or(0, |n| n.min(limit as u64) as usize));
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if body.len() + chunk.len() > limit {
                return Err(FetchError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched {
            url: final_url,
            status: status.as_u16(),
            content_type,
            body: body.freeze(),
            attempts: 1,
            validators: answered,
            not_modified: false,
        })
    }
}

/// The longest `Retry-After` honoured: one hour.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A `Retry-After` value (RFC 9110: delay seconds or an HTTP date) as a
/// delay from `now`, at most [`MAX_RETRY_AFTER`]; a date in the past is no
/// delay. `None` when it is neither.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// Turns reqwest's error into ours, finding the guard's refusals in its chain.
fn classify(e: reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<Refused>() {
            return FetchError::Forbidden {
                target: refused.target.clone(),
                reason: refused.reason.clone(),
            };
        }
        if err.downcast_ref::<RedirectLimit>().is_some() {
            return FetchError::TooManyRedirects;
        }
        source = err.source();
    }
    if e.is_timeout() {
        FetchError::Timeout
    } else if e.is_connect() {
        FetchError::Connect(chain(&e))
    } else if e.is_body() || e.is_decode() {
        FetchError::Body(chain(&e))
    } else {
        FetchError::Client(chain(&e))
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests;
