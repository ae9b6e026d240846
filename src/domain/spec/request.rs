//! How a source's pages are requested: method, headers, body and user agent,
//! validated at submit; which header values are secrets and how they are
//! masked in shared views.

use super::*;

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

    pub(super) fn validate(&self) -> Result<(), SpecError> {
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
