//! The source spec: one scraping configuration as an operator submits it, and
//! its validation. Every field is checked when the spec is submitted, so a
//! stored spec is always runnable; errors name the field at fault with a
//! dotted path (`extract.fields.price.css`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

pub mod files;
mod request;
mod schedule;
mod shared;

pub use request::*;
pub use schedule::*;
pub use shared::SharedExtracts;

/// Longest CSS selector or JSON pointer accepted, in bytes.
pub const MAX_SELECTOR_LEN: usize = 1024;
/// Most fields one source may extract.
pub const MAX_FIELDS: usize = 64;
/// Upper bound of `next_page.max_pages`.
pub const MAX_PAGES_LIMIT: u32 = 1000;
/// Longest schedule period: one week.
pub const MAX_EVERY_SECS: u64 = 7 * 24 * 3600;
/// Longest source URL, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// Default of `extract.max_follows`: detail pages fetched per listing page.
pub const DEFAULT_MAX_FOLLOWS: u32 = 100;
/// Upper bound of `extract.max_follows`.
pub const MAX_FOLLOWS_LIMIT: u32 = 1000;
/// `extract.wait_timeout_ms` when it is not given: 10 s.
pub const DEFAULT_WAIT_TIMEOUT_MS: u64 = 10_000;
/// Bounds of `extract.wait_timeout_ms`.
pub const MIN_WAIT_TIMEOUT_MS: u64 = 100;
pub const MAX_WAIT_TIMEOUT_MS: u64 = 60_000;
/// Most entries of `extract.allow_hosts`.
pub const MAX_ALLOW_HOSTS: usize = 32;

/// One scraping configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// A slug, unique in the cluster; it names the scraper actor.
    pub id: String,
    /// The first page to fetch (http or https).
    pub url: String,
    /// The collection the items go to (a slug).
    pub collection: String,
    /// How often the source runs.
    #[serde(default)]
    pub schedule: Schedule,
    /// How items are found in a fetched page. Shared between the sources
    /// of a node that extract alike ([`SharedExtracts`]): a fleet often runs
    /// one template over many start URLs, and an idle source's memory is
    /// mostly what it holds.
    #[serde(with = "shared::arc")]
    #[schema(value_type = ExtractSpec)]
    pub extract: Arc<ExtractSpec>,
    /// The fields whose values make an item's key; empty means the whole item.
    #[serde(default)]
    pub key: Vec<String>,
    /// Run in a worker container of its own instead of inside the node.
    #[serde(default)]
    pub isolated: bool,
    /// A disabled source is kept but never scraped.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How each page is requested: method, headers, body, user agent.
    /// Left out when it is all defaults, so older specs keep their shape.
    #[serde(default, skip_serializing_if = "RequestOptions::is_default")]
    pub request: RequestOptions,
    /// `browser`: the page is rendered in headless Chromium (in the worker
    /// container, so only with `isolated`) and extracted from the rendered
    /// DOM. Left out when `http` (the default: the page as served).
    #[serde(default, skip_serializing_if = "Render::is_http")]
    pub render: Render,
}

/// How a page becomes the HTML that is extracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Render {
    /// The body as the server sends it.
    #[default]
    Http,
    /// The DOM after headless Chromium ran the page's scripts.
    Browser,
}

impl Render {
    pub fn is_http(&self) -> bool {
        *self == Render::Http
    }
}

fn default_true() -> bool {
    true
}

/// The page format a source extracts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Html,
    Json,
}

/// Extraction rules: an optional scope (each match is one item), named fields,
/// and an optional link to the next page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractSpec {
    #[serde(default)]
    pub format: Format,
    /// CSS selector (html) or JSON pointer (json); absent means the whole page is one item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    pub fields: BTreeMap<String, FieldSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page: Option<NextPage>,
    /// Most detail pages (fields with `follow`) fetched for one listing
    /// page; further follows on that page are left null and counted.
    #[serde(
        default = "default_max_follows",
        skip_serializing_if = "is_default_max_follows"
    )]
    pub max_follows: u32,
    /// With `render: browser`: a CSS selector the rendered page must
    /// contain before it is extracted (waited for up to `wait_timeout_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for: Option<String>,
    /// With `render: browser`: how long a page may take to load and show
    /// `wait_for`, in ms (default 10000, 100 to 60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_timeout_ms: Option<u64>,
    /// With `render: browser`: other hosts than the page's own that the
    /// page may request (`cdn.example.org`, `host:port`, or `*.example.org`);
    /// every other host is blocked. The SSRF guard applies to all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_hosts: Vec<String>,
}

fn default_max_follows() -> u32 {
    DEFAULT_MAX_FOLLOWS
}

fn is_default_max_follows(n: &u32) -> bool {
    *n == DEFAULT_MAX_FOLLOWS
}

impl ExtractSpec {
    /// Does any field follow its URL to a detail page?
    pub fn follows(&self) -> bool {
        self.fields
            .values()
            .any(|f| matches!(f, FieldSpec::Rule(r) if r.follow.is_some()))
    }

    /// `wait_timeout_ms`, or its default.
    pub fn wait_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.wait_timeout_ms.unwrap_or(DEFAULT_WAIT_TIMEOUT_MS))
    }
}

/// A field: a bare selector string (its text is taken) or a full rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum FieldSpec {
    Selector(String),
    Rule(FieldRule),
}

impl FieldSpec {
    /// The field as a full rule (a bare string becomes `css` for html and
    /// `path` for json).
    pub fn rule(&self, format: Format) -> FieldRule {
        match self {
            FieldSpec::Rule(rule) => rule.clone(),
            FieldSpec::Selector(s) => match format {
                Format::Html => FieldRule {
                    css: Some(s.clone()),
                    ..FieldRule::default()
                },
                Format::Json => FieldRule {
                    path: Some(s.clone()),
                    ..FieldRule::default()
                },
            },
        }
    }
}

// A hand-written visitor instead of `#[serde(untagged)]`, so that a mistake
// inside a rule (an unknown key, a wrong type) is reported as itself rather
// than as "did not match any variant".
impl<'de> Deserialize<'de> for FieldSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldVisitor;
        impl<'de> Visitor<'de> for FieldVisitor {
            type Value = FieldSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a selector string or a field rule object")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldSpec, E> {
                Ok(FieldSpec::Selector(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FieldSpec, A::Error> {
                FieldRule::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(FieldSpec::Rule)
            }
        }
        deserializer.deserialize_any(FieldVisitor)
    }
}

/// A full field rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldRule {
    /// CSS selector, relative to the scope element (html).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub css: Option<String>,
    /// JSON pointer, relative to the scope value (json).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Take this attribute instead of the text (html).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attr: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: FieldType,
    /// Take every match as a list instead of the first one.
    #[serde(default)]
    pub all: bool,
    /// Fetch the field's value (a URL, resolved against the page) and apply
    /// these rules to that detail page: the field becomes an object. HTML
    /// sources only; one level (the nested fields cannot follow again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<Follow>,
}

/// A detail page's rules: nested fields, in the same grammar as
/// `extract.fields`, applied to the whole detail page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Follow {
    #[schema(no_recursion)]
    pub fields: BTreeMap<String, FieldSpec>,
}

/// How a field's raw text becomes a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// Trimmed text with inner whitespace collapsed.
    #[default]
    Text,
    /// The first number in the text (`£1,234.50` is 1234.5); null when there is none.
    Number,
    /// A URL resolved against the page URL.
    Url,
}

/// Pagination: where the next page's URL is, and how many pages at most.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NextPage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub css: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Defaults to `href` for html.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attr: Option<String>,
    #[serde(default = "default_max_pages")]
    pub max_pages: u32,
}

fn default_max_pages() -> u32 {
    10
}

/// Keys a source view carries besides the spec (status and bookkeeping):
/// a view sent back as a spec (`PUT` of what `GET` returned) drops them.
pub const VIEW_ONLY_FIELDS: &[&str] = &[
    "status",
    "version",
    "created_at",
    "updated_at",
    "managed_by",
    "file",
];

/// A deserialisation failure as a [`SpecError`] naming the field at fault.
fn path_error<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> SpecError {
    let path = e.path().to_string();
    let mut field = if path == "." { String::new() } else { path };
    let message = e.inner().to_string();
    // For a missing key, the key itself is the field at fault (the path
    // stops at its parent; for an unknown key it already names the key).
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    if let Some(name) = missing {
        if !field.is_empty() {
            field.push('.');
        }
        field.push_str(name);
    }
    SpecError::new(field, message)
}

/// A spec that cannot be accepted, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Dotted path of the field at fault, e.g. `extract.fields.price.css`.
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Is `s` a slug: 1 to 64 of `a-z 0-9 - _`, starting with a letter or digit.
pub fn is_slug(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_')
}

impl SourceSpec {
    /// Parses a spec from JSON, reporting the path of the field at fault.
    pub fn from_json(bytes: &[u8]) -> Result<Self, SpecError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de).map_err(path_error)
    }

    /// Parses a spec from a JSON value (a file's document, a merged patch),
    /// reporting the path of the field at fault.
    pub fn from_value(value: serde_json::Value) -> Result<Self, SpecError> {
        serde_path_to_error::deserialize(value).map_err(path_error)
    }

    /// Parses a spec as the API returned it: the view's read-only keys
    /// ([`VIEW_ONLY_FIELDS`]) are dropped, anything else unknown is an error.
    pub fn from_view(mut value: serde_json::Value) -> Result<Self, SpecError> {
        if let Some(object) = value.as_object_mut() {
            for key in VIEW_ONLY_FIELDS {
                object.remove(*key);
            }
        }
        Self::from_value(value)
    }

    /// This spec as shown in shared views (the source list, `/debug/state`,
    /// the dashboard): sensitive header values replaced by `***`.
    pub fn masked(&self) -> SourceSpec {
        SourceSpec {
            request: self.request.masked(),
            ..self.clone()
        }
    }

    /// Checks every field; the first fault found is returned.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !is_slug(&self.id) {
            return Err(SpecError::new(
                "id",
                "must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit",
            ));
        }
        if !is_slug(&self.collection) {
            return Err(SpecError::new(
                "collection",
                "must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit",
            ));
        }
        validate_url(&self.url).map_err(|m| SpecError::new("url", m))?;
        self.schedule.validate()?;
        self.request.validate()?;
        self.extract.validate()?;
        self.validate_render()?;
        let mut seen = std::collections::BTreeSet::new();
        for (i, k) in self.key.iter().enumerate() {
            if !self.extract.fields.contains_key(k) {
                return Err(SpecError::new(
                    format!("key[{i}]"),
                    format!("'{k}' is not one of extract.fields"),
                ));
            }
            if !seen.insert(k) {
                return Err(SpecError::new(
                    format!("key[{i}]"),
                    format!("'{k}' is listed twice"),
                ));
            }
        }
        Ok(())
    }
}

impl SourceSpec {
    /// `render: browser` needs a worker container (`isolated`) and HTML;
    /// the browser-only options need `render: browser`.
    fn validate_render(&self) -> Result<(), SpecError> {
        let e = &self.extract;
        if self.render == Render::Http {
            let stray = [
                ("extract.wait_for", e.wait_for.is_some()),
                ("extract.wait_timeout_ms", e.wait_timeout_ms.is_some()),
                ("extract.allow_hosts", !e.allow_hosts.is_empty()),
            ];
            if let Some((field, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(SpecError::new(
                    *field,
                    "only applies with \"render\": \"browser\"",
                ));
            }
            return Ok(());
        }
        if !self.isolated {
            return Err(SpecError::new(
                "render",
                "\"browser\" runs only in a worker container: set \"isolated\": true",
            ));
        }
        if self.request.method != Method::Get {
            return Err(SpecError::new(
                "request.method",
                "a rendered page is loaded with GET",
            ));
        }
        if e.format != Format::Html {
            return Err(SpecError::new(
                "extract.format",
                "a rendered page is html: \"render\": \"browser\" needs format html",
            ));
        }
        if let Some(wait_for) = &e.wait_for {
            e.check_locator("extract.wait_for", wait_for)?;
        }
        if let Some(ms) = e.wait_timeout_ms {
            if !(MIN_WAIT_TIMEOUT_MS..=MAX_WAIT_TIMEOUT_MS).contains(&ms) {
                return Err(SpecError::new(
                    "extract.wait_timeout_ms",
                    format!("must be between {MIN_WAIT_TIMEOUT_MS} and {MAX_WAIT_TIMEOUT_MS}"),
                ));
            }
        }
        if e.allow_hosts.len() > MAX_ALLOW_HOSTS {
            return Err(SpecError::new(
                "extract.allow_hosts",
                format!("at most {MAX_ALLOW_HOSTS} hosts"),
            ));
        }
        for (i, host) in e.allow_hosts.iter().enumerate() {
            if !is_host_pattern(host) {
                return Err(SpecError::new(
                    format!("extract.allow_hosts[{i}]"),
                    "a host name, host:port, or *.domain (lowercase, no scheme or path)",
                ));
            }
        }
        Ok(())
    }
}

/// `example.org`, `127.0.0.1:8000`, `[::1]:8000` or `*.example.org`.
fn is_host_pattern(p: &str) -> bool {
    let name = p.strip_prefix("*.").unwrap_or(p);
    if name.is_empty() || p.len() > 255 || name.starts_with('*') {
        return false;
    }
    match url::Url::parse(&format!("http://{name}/")) {
        Ok(u) => {
            let mut shown = u.host_str().unwrap_or_default().to_owned();
            if let Some(port) = u.port() {
                shown.push_str(&format!(":{port}"));
            }
            shown == name && u.username().is_empty()
        }
        Err(_) => false,
    }
}

/// An absolute http(s) URL with a host and no credentials.
pub fn validate_url(raw: &str) -> Result<url::Url, String> {
    if raw.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} bytes"));
    }
    let url = url::Url::parse(raw).map_err(|e| format!("not a valid URL: {e}"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "scheme must be http or https, not '{}'",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must have a host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    Ok(url)
}

impl ExtractSpec {
    fn validate(&self) -> Result<(), SpecError> {
        if let Some(scope) = &self.scope {
            self.check_locator("extract.scope", scope)?;
        }
        self.check_fields("extract.fields", &self.fields, true)?;
        if self.max_follows > MAX_FOLLOWS_LIMIT {
            return Err(SpecError::new(
                "extract.max_follows",
                format!("must be between 0 and {MAX_FOLLOWS_LIMIT}"),
            ));
        }
        if let Some(next) = &self.next_page {
            if next.max_pages < 1 || next.max_pages > MAX_PAGES_LIMIT {
                return Err(SpecError::new(
                    "extract.next_page.max_pages",
                    format!("must be between 1 and {MAX_PAGES_LIMIT}"),
                ));
            }
            match self.format {
                Format::Html => {
                    let css = next.css.as_deref().ok_or_else(|| {
                        SpecError::new("extract.next_page.css", "is required for html")
                    })?;
                    self.check_locator("extract.next_page.css", css)?;
                    if let Some(attr) = &next.attr {
                        check_attr("extract.next_page.attr", attr)?;
                    }
                }
                Format::Json => {
                    let path = next.path.as_deref().ok_or_else(|| {
                        SpecError::new("extract.next_page.path", "is required for json")
                    })?;
                    self.check_locator("extract.next_page.path", path)?;
                }
            }
        }
        Ok(())
    }

    /// Checks one set of field rules (`extract.fields`, or a follow's
    /// nested fields at `at`); nested fields may not follow again.
    fn check_fields(
        &self,
        at: &str,
        fields: &BTreeMap<String, FieldSpec>,
        top: bool,
    ) -> Result<(), SpecError> {
        if fields.is_empty() {
            return Err(SpecError::new(at, "must name at least one field"));
        }
        if fields.len() > MAX_FIELDS {
            return Err(SpecError::new(at, format!("at most {MAX_FIELDS} fields")));
        }
        for (name, field) in fields {
            let at = format!("{at}.{name}");
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                return Err(SpecError::new(
                    at,
                    "field names are 1-64 printable characters",
                ));
            }
            let rule = field.rule(self.format);
            match self.format {
                Format::Html => {
                    if rule.path.is_some() {
                        return Err(SpecError::new(
                            format!("{at}.path"),
                            "html fields use 'css'",
                        ));
                    }
                    let css = rule
                        .css
                        .as_deref()
                        .ok_or_else(|| SpecError::new(format!("{at}.css"), "is required"))?;
                    self.check_locator(&format!("{at}.css"), css)?;
                    if let Some(attr) = &rule.attr {
                        check_attr(&format!("{at}.attr"), attr)?;
                    }
                }
                Format::Json => {
                    if rule.css.is_some() || rule.attr.is_some() {
                        return Err(SpecError::new(
                            at,
                            "json fields use 'path' (a JSON pointer), not 'css' or 'attr'",
                        ));
                    }
                    let path = rule
                        .path
                        .as_deref()
                        .ok_or_else(|| SpecError::new(format!("{at}.path"), "is required"))?;
                    self.check_locator(&format!("{at}.path"), path)?;
                }
            }
            if let Some(follow) = &rule.follow {
                let here = format!("{at}.follow");
                if !top {
                    return Err(SpecError::new(
                        here,
                        "a detail page's fields cannot follow again (one level only)",
                    ));
                }
                if self.format != Format::Html {
                    return Err(SpecError::new(
                        here,
                        "only html sources follow detail pages",
                    ));
                }
                if rule.all {
                    return Err(SpecError::new(
                        format!("{at}.all"),
                        "cannot be combined with follow (one detail page per field)",
                    ));
                }
                self.check_fields(&format!("{here}.fields"), &follow.fields, false)?;
            }
        }
        Ok(())
    }

    /// A CSS selector that compiles (html) or a JSON pointer (json).
    fn check_locator(&self, field: &str, value: &str) -> Result<(), SpecError> {
        if value.len() > MAX_SELECTOR_LEN {
            return Err(SpecError::new(
                field,
                format!("must be at most {MAX_SELECTOR_LEN} bytes"),
            ));
        }
        match self.format {
            Format::Html => {
                if value.trim().is_empty() {
                    return Err(SpecError::new(field, "must not be empty"));
                }
                super::locator::parse_selector(value)
                    .map(|_| ())
                    .map_err(|e| SpecError::new(field, e))
            }
            Format::Json => {
                super::locator::check_pointer(value).map_err(|e| SpecError::new(field, e))
            }
        }
    }
}

fn check_attr(field: &str, attr: &str) -> Result<(), SpecError> {
    if attr.is_empty()
        || attr.len() > 128
        || attr
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\"'>/=".contains(c))
    {
        return Err(SpecError::new(field, "not a valid attribute name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
