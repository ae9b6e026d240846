//! The source spec: one scraping configuration as an operator submits it, and
//! its validation. Every field is checked when the spec is submitted, so a
//! stored spec is always runnable; errors name the field at fault with a
//! dotted path (`extract.fields.price.css`).

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

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
    /// How items are found in a fetched page.
    pub extract: ExtractSpec,
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
}

fn default_true() -> bool {
    true
}

/// When a source runs: every `every_secs`, or at the times of the `cron`
/// expression (UTC; exactly one of the two), plus a random delay of up to
/// `jitter_secs` so that many sources with one period do not fire together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_secs: Option<u64>,
    /// 5 fields (minute hour day-of-month month day-of-week), or 6 with
    /// seconds first; UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default)]
    pub jitter_secs: u64,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            every_secs: Some(300),
            cron: None,
            jitter_secs: 0,
        }
    }
}

/// Longest jitter of a cron schedule: one hour.
pub const MAX_CRON_JITTER_SECS: u64 = 3600;
/// Longest cron expression, in bytes.
pub const MAX_CRON_LEN: usize = 256;

/// Parses a cron expression: 5 fields, or 6 with seconds first (croner's
/// syntax: ranges, steps, lists, names, `L`, `#`, `?`), evaluated in UTC.
pub fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    if expr.len() > MAX_CRON_LEN {
        return Err(format!("must be at most {MAX_CRON_LEN} bytes"));
    }
    let fields = expr.split_whitespace().count();
    if fields != 5 && fields != 6 {
        return Err(format!(
            "must have 5 fields, or 6 with seconds first (found {fields})"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("not a valid cron expression: {e}"))
}

impl Schedule {
    /// The first time the source is due strictly after `from`, before jitter:
    /// `from + every_secs`, or the cron expression's next time.
    pub fn next_after(&self, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if let Some(expr) = &self.cron {
            let cron = parse_cron(expr).ok()?;
            return cron.find_next_occurrence(&from, false).ok();
        }
        let secs = self.every_secs.unwrap_or(300);
        Some(from + chrono::Duration::seconds(i64::try_from(secs).unwrap_or(i64::MAX / 1000)))
    }

    /// A typical gap between runs: `every_secs`, or the gap between the cron
    /// expression's next two times (an hour when it has none). The failure
    /// back-off of a source starts from it.
    pub fn period(&self) -> std::time::Duration {
        let now = Utc::now();
        self.next_after(now)
            .and_then(|a| Some((a, self.next_after(a)?)))
            .and_then(|(a, b)| (b - a).to_std().ok())
            .unwrap_or(std::time::Duration::from_secs(3600))
    }

    fn validate(&self) -> Result<(), SpecError> {
        match (&self.every_secs, &self.cron) {
            (Some(_), Some(_)) => Err(SpecError::new(
                "schedule",
                "every_secs and cron are exclusive: give one of them",
            )),
            (None, None) => Err(SpecError::new("schedule", "needs every_secs or cron")),
            (Some(every), None) => {
                if *every < 1 || *every > MAX_EVERY_SECS {
                    return Err(SpecError::new(
                        "schedule.every_secs",
                        format!("must be between 1 and {MAX_EVERY_SECS}"),
                    ));
                }
                if self.jitter_secs > *every {
                    return Err(SpecError::new(
                        "schedule.jitter_secs",
                        "must not exceed schedule.every_secs",
                    ));
                }
                Ok(())
            }
            (None, Some(expr)) => {
                let cron = parse_cron(expr).map_err(|m| SpecError::new("schedule.cron", m))?;
                if cron.find_next_occurrence(&Utc::now(), false).is_err() {
                    return Err(SpecError::new("schedule.cron", "never fires"));
                }
                if self.jitter_secs > MAX_CRON_JITTER_SECS {
                    return Err(SpecError::new(
                        "schedule.jitter_secs",
                        format!("must be at most {MAX_CRON_JITTER_SECS} with a cron schedule"),
                    ));
                }
                Ok(())
            }
        }
    }
}

/// The HTTP method of a source's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Get,
    Post,
}

/// Most headers a source may set.
pub const MAX_HEADERS: usize = 32;
/// Longest header name, in bytes.
pub const MAX_HEADER_NAME_LEN: usize = 128;
/// Longest header value, in bytes.
pub const MAX_HEADER_VALUE_LEN: usize = 4096;
/// Largest POST body, in bytes.
pub const MAX_REQUEST_BODY_LEN: usize = 64 * 1024;
/// Longest user agent, in bytes.
pub const MAX_USER_AGENT_LEN: usize = 256;
/// What a sensitive header's value is shown as.
pub const MASK: &str = "***";

/// Headers gleaner sets itself: a source may not set them.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "user-agent",
    "if-none-match",
    "if-modified-since",
];

/// How a source's pages are requested. Every page of a run (the start URL
/// and each next page) is requested the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestOptions {
    #[serde(default)]
    pub method: Method,
    /// Extra request headers, by name.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The request body, only with POST.
    #[serde(default)]
    pub body: Option<String>,
    /// Replaces the node's user agent (`gleaner/<version>`, plus
    /// ` (+<GLEANER_CONTACT_URL>)` when that is set) for this source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

impl RequestOptions {
    pub fn is_default(&self) -> bool {
        *self == RequestOptions::default()
    }

    fn validate(&self) -> Result<(), SpecError> {
        if self.body.is_some() && self.method != Method::Post {
            return Err(SpecError::new(
                "request.body",
                "a body is sent only with POST",
            ));
        }
        if self
            .body
            .as_ref()
            .is_some_and(|b| b.len() > MAX_REQUEST_BODY_LEN)
        {
            return Err(SpecError::new(
                "request.body",
                format!("must be at most {MAX_REQUEST_BODY_LEN} bytes"),
            ));
        }
        if let Some(ua) = &self.user_agent {
            if ua.trim().is_empty() || ua.len() > MAX_USER_AGENT_LEN || !is_header_value(ua) {
                return Err(SpecError::new(
                    "request.user_agent",
                    format!("must be 1-{MAX_USER_AGENT_LEN} bytes of printable characters"),
                ));
            }
        }
        if self.headers.len() > MAX_HEADERS {
            return Err(SpecError::new(
                "request.headers",
                format!("at most {MAX_HEADERS} headers"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (name, value) in &self.headers {
            let at = format!("request.headers.{name}");
            check_header(name, value).map_err(|m| SpecError::new(at.clone(), m))?;
            if !seen.insert(name.to_ascii_lowercase()) {
                return Err(SpecError::new(
                    at,
                    "is given twice (names are case-insensitive)",
                ));
            }
        }
        Ok(())
    }

    /// These options with every sensitive header's value replaced by `***`.
    pub fn masked(&self) -> RequestOptions {
        let mut out = self.clone();
        for (name, value) in out.headers.iter_mut() {
            if is_sensitive_header(name) {
                *value = MASK.to_owned();
            }
        }
        out
    }
}

/// A header name and value a source may send: the name an RFC 9110 token
/// not set by gleaner itself, the value without CR, LF or other controls.
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_HEADER_NAME_LEN {
        return Err(format!("header names are 1-{MAX_HEADER_NAME_LEN} bytes"));
    }
    if !name.bytes().all(is_tchar) {
        return Err("not a valid header name (an RFC 9110 token)".into());
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err("is set by gleaner and may not be given (see request.user_agent)".into());
    }
    if value.len() > MAX_HEADER_VALUE_LEN {
        return Err(format!("values are at most {MAX_HEADER_VALUE_LEN} bytes"));
    }
    if !is_header_value(value) {
        return Err("values may not hold CR, LF or other control characters".into());
    }
    Ok(())
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A field value: tab, visible ASCII, space, or non-ASCII (obs-text).
fn is_header_value(v: &str) -> bool {
    v.bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80)
}

/// Is this header's value a secret: `authorization`, `cookie`,
/// `proxy-authorization`, or a name holding `key`, `token`, `secret`,
/// `password` or `auth` (case-insensitive)?
pub fn is_sensitive_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    matches!(
        lower.as_str(),
        "authorization" | "cookie" | "proxy-authorization"
    ) || ["key", "token", "secret", "password", "auth"]
        .iter()
        .any(|w| lower.contains(w))
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
}

/// A field: a bare selector string (its text is taken) or a full rule.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
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
        let spec: SourceSpec = serde_path_to_error::deserialize(de).map_err(|e| {
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
        })?;
        Ok(spec)
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
        if self.fields.is_empty() {
            return Err(SpecError::new(
                "extract.fields",
                "must name at least one field",
            ));
        }
        if self.fields.len() > MAX_FIELDS {
            return Err(SpecError::new(
                "extract.fields",
                format!("at most {MAX_FIELDS} fields"),
            ));
        }
        for (name, field) in &self.fields {
            let at = format!("extract.fields.{name}");
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
mod tests {
    use super::*;

    fn books() -> serde_json::Value {
        serde_json::json!({
            "id": "books",
            "url": "https://example.org/catalogue/page-1.html",
            "collection": "books",
            "schedule": { "every_secs": 300, "jitter_secs": 10 },
            "extract": {
                "format": "html",
                "scope": "article.product",
                "fields": {
                    "title": { "css": "h3 a", "attr": "title" },
                    "price": { "css": ".price", "type": "number" },
                    "url":   { "css": "h3 a", "attr": "href", "type": "url" },
                    "tags":  { "css": ".tag", "all": true },
                    "name":  "h3"
                },
                "next_page": { "css": "li.next a", "attr": "href", "max_pages": 50 }
            },
            "key": ["url"],
            "isolated": false,
            "enabled": true
        })
    }

    fn check(v: serde_json::Value) -> Result<SourceSpec, SpecError> {
        let spec = SourceSpec::from_json(v.to_string().as_bytes())?;
        spec.validate()?;
        Ok(spec)
    }

    fn field_of(v: serde_json::Value) -> String {
        check(v).expect_err("should be rejected").field
    }

    #[test]
    fn the_architecture_example_is_valid() {
        let spec = check(books()).unwrap();
        assert_eq!(spec.extract.fields.len(), 5);
        assert_eq!(
            spec.extract.fields["name"],
            FieldSpec::Selector("h3".into())
        );
        // A stored spec round-trips to the same JSON shape.
        let again = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            SourceSpec::from_json(again.to_string().as_bytes()).unwrap(),
            spec
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(&str, serde_json::Value)> = vec![
            ("id", serde_json::json!("Not A Slug")),
            ("collection", serde_json::json!("../etc")),
            ("url", serde_json::json!("ftp://example.org/")),
            ("url", serde_json::json!("not a url")),
            ("url", serde_json::json!("http://user:pw@example.org/")),
        ];
        for (field, value) in cases {
            let mut v = books();
            v[field] = value;
            assert_eq!(field_of(v), field);
        }
        let mut v = books();
        v["schedule"]["every_secs"] = 0.into();
        assert_eq!(field_of(v), "schedule.every_secs");
        let mut v = books();
        v["schedule"]["jitter_secs"] = 301.into();
        assert_eq!(field_of(v), "schedule.jitter_secs");
        let mut v = books();
        v["extract"]["fields"]["price"]["css"] = "..bad[".into();
        assert_eq!(field_of(v), "extract.fields.price.css");
        let mut v = books();
        v["extract"]["scope"] = "a".repeat(MAX_SELECTOR_LEN + 1).into();
        assert_eq!(field_of(v), "extract.scope");
        let mut v = books();
        v["extract"]["next_page"]["max_pages"] = 0.into();
        assert_eq!(field_of(v), "extract.next_page.max_pages");
        let mut v = books();
        v["key"] = serde_json::json!(["nope"]);
        assert_eq!(field_of(v), "key[0]");
        let mut v = books();
        v["extract"]["fields"] = serde_json::json!({});
        assert_eq!(field_of(v), "extract.fields");
    }

    #[test]
    fn serde_errors_carry_the_path() {
        let mut v = books();
        v["extract"]["fields"]["price"]["colour"] = "red".into();
        assert_eq!(field_of(v), "extract.fields.price.colour");
        let mut v = books();
        v["schedule"]["every_secs"] = "often".into();
        assert_eq!(field_of(v), "schedule.every_secs");
        let mut v = books();
        v["extract"]["fields"]["price"]["type"] = "money".into();
        assert_eq!(field_of(v), "extract.fields.price.type");
        let mut v = books();
        v.as_object_mut().unwrap().remove("url");
        assert_eq!(field_of(v), "url");
    }

    #[test]
    fn json_sources_use_pointers() {
        let v = serde_json::json!({
            "id": "api", "url": "http://example.org/api", "collection": "api",
            "extract": { "format": "json", "scope": "/items",
                         "fields": { "name": "/name", "n": { "path": "/n", "type": "number" } },
                         "next_page": { "path": "/next" } }
        });
        check(v.clone()).unwrap();
        let mut bad = v.clone();
        bad["extract"]["fields"]["name"] = "name".into();
        assert_eq!(field_of(bad), "extract.fields.name.path");
        // RFC 6901: '~' only as '~0' or '~1'.
        for pointer in ["/~2", "/~", "/a~b"] {
            let mut bad = v.clone();
            bad["extract"]["scope"] = pointer.into();
            assert_eq!(field_of(bad), "extract.scope", "{pointer}");
            let mut bad = v.clone();
            bad["extract"]["fields"]["n"]["path"] = pointer.into();
            assert_eq!(field_of(bad), "extract.fields.n.path", "{pointer}");
            let mut bad = v.clone();
            bad["extract"]["next_page"]["path"] = pointer.into();
            assert_eq!(field_of(bad), "extract.next_page.path", "{pointer}");
        }
        let mut good = v;
        good["extract"]["scope"] = "/a~1b/~0".into();
        check(good).unwrap();
    }

    #[test]
    fn selector_errors_name_the_field_and_the_fault() {
        for (css, want) in [
            (":has(", "unclosed `:has(`"),
            (":not(", "unclosed `:not(`"),
            ("ns|a", "namespace prefixes"),
        ] {
            let mut v = books();
            v["extract"]["fields"]["price"]["css"] = css.into();
            let err = check(v).expect_err(css);
            assert_eq!(err.field, "extract.fields.price.css");
            assert!(err.message.contains(want), "{css}: {}", err.message);
        }
    }

    #[test]
    fn request_options_are_checked_field_by_field() {
        let mut v = books();
        v["request"] = serde_json::json!({
            "method": "POST",
            "headers": { "Authorization": "Bearer s3cret", "X-Api-Key": "k", "Accept": "text/html" },
            "body": "q=books",
            "user_agent": "my-crawler/1.0"
        });
        let spec = check(v.clone()).unwrap();
        assert_eq!(spec.request.method, Method::Post);
        let masked = spec.masked();
        assert_eq!(masked.request.headers["Authorization"], MASK);
        assert_eq!(masked.request.headers["X-Api-Key"], MASK);
        assert_eq!(masked.request.headers["Accept"], "text/html");
        let cases: Vec<(&str, serde_json::Value)> = vec![
            (
                "request.headers.x y",
                serde_json::json!({ "headers": { "x y": "1" } }),
            ),
            (
                "request.headers.X-A",
                serde_json::json!({ "headers": { "X-A": "a\r\nInjected: 1" } }),
            ),
            (
                "request.headers.X-A",
                serde_json::json!({ "headers": { "X-A": "a".repeat(MAX_HEADER_VALUE_LEN + 1) } }),
            ),
            (
                "request.headers.Host",
                serde_json::json!({ "headers": { "Host": "evil" } }),
            ),
            (
                "request.headers.x-a",
                serde_json::json!({ "headers": { "X-A": "1", "x-a": "2" } }),
            ),
            (
                "request.headers.",
                serde_json::json!({ "headers": { "": "1" } }),
            ),
            ("request.body", serde_json::json!({ "body": "x" })),
            (
                "request.body",
                serde_json::json!({ "method": "POST", "body": "x".repeat(MAX_REQUEST_BODY_LEN + 1) }),
            ),
            (
                "request.user_agent",
                serde_json::json!({ "user_agent": "a\nb" }),
            ),
            (
                "request.user_agent",
                serde_json::json!({ "user_agent": "" }),
            ),
            ("request.method", serde_json::json!({ "method": "DELETE" })),
            ("request.colour", serde_json::json!({ "colour": "red" })),
        ];
        for (field, request) in cases {
            let mut v = books();
            v["request"] = request.clone();
            assert_eq!(field_of(v), field, "{request}");
        }
        // Default options are left out of the stored shape.
        let plain = check(books()).unwrap();
        assert!(serde_json::to_value(&plain)
            .unwrap()
            .get("request")
            .is_none());
    }

    #[test]
    fn sensitive_headers() {
        for name in [
            "Authorization",
            "cookie",
            "Proxy-Authorization",
            "X-Api-Key",
            "X-Auth-User",
            "x-access-token",
            "Client-Secret",
            "X-Password",
        ] {
            assert!(is_sensitive_header(name), "{name}");
        }
        for name in ["Accept", "Accept-Language", "X-Requested-With", "Referer"] {
            assert!(!is_sensitive_header(name), "{name}");
        }
    }

    #[test]
    fn cron_schedules() {
        let mut v = books();
        v["schedule"] = serde_json::json!({ "cron": "*/15 * * * *", "jitter_secs": 5 });
        let spec = check(v).unwrap();
        let from: DateTime<Utc> = "2026-01-01T10:07:30Z".parse().unwrap();
        let next = spec.schedule.next_after(from).unwrap();
        assert_eq!(
            next,
            "2026-01-01T10:15:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!(spec.schedule.period(), std::time::Duration::from_secs(900));
        // The example of docs/sources.md.
        let mut v = books();
        v["schedule"] = serde_json::json!({ "cron": "*/15 8-18 * * mon-fri", "jitter_secs": 30 });
        check(v).unwrap();
        // Six fields: seconds first.
        let mut v = books();
        v["schedule"] = serde_json::json!({ "cron": "30 0 12 * * *" });
        let spec = check(v).unwrap();
        let next = spec.schedule.next_after(from).unwrap();
        assert_eq!(
            next,
            "2026-01-01T12:00:30Z".parse::<DateTime<Utc>>().unwrap()
        );
        for (schedule, field) in [
            (serde_json::json!({ "cron": "* * *" }), "schedule.cron"),
            (
                serde_json::json!({ "cron": "* * * * * * *" }),
                "schedule.cron",
            ),
            (serde_json::json!({ "cron": "61 * * * *" }), "schedule.cron"),
            (serde_json::json!({ "cron": "* * 31 2 *" }), "schedule.cron"),
            (
                serde_json::json!({ "cron": "bad cron at all x" }),
                "schedule.cron",
            ),
            (
                serde_json::json!({ "cron": "* * * * *", "every_secs": 60 }),
                "schedule",
            ),
            (serde_json::json!({ "jitter_secs": 1 }), "schedule"),
            (
                serde_json::json!({ "cron": "* * * * *", "jitter_secs": 3601 }),
                "schedule.jitter_secs",
            ),
            (serde_json::json!({ "cron": 5 }), "schedule.cron"),
        ] {
            let mut v = books();
            v["schedule"] = schedule.clone();
            assert_eq!(field_of(v), field, "{schedule}");
        }
    }
}
