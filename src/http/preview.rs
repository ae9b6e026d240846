//! `POST /api/v1/preview` (admin): a source spec tried against its site
//! before it is saved. The spec is validated as a create would (`id` and
//! `collection` may be left out), then its first pages are walked by the
//! scrapers' own [`Pager`] with the node's fetcher: the same SSRF guard,
//! limits, robots.txt, Crawl-delay and back-off as a real run, detail pages
//! included. Nothing is stored: no items, no remembered pages (no
//! conditional requests either way), no run record. The answer shows each
//! page's items and warnings about the rules ([`warnings`]).
//!
//! `POST /api/v1/sources/{id}/preview` does the same for a stored source,
//! enabled or not.
//!
//! An isolated source (`render: browser` ones included) is never fetched
//! nor parsed in the node: its preview runs in a short-lived container
//! (`gleaner preview`, started through [`crate::isolation`] with a worker's
//! hardening), which renders its pages in Chromium for a browser source, and
//! prints the same answer as JSON; the node answers with it. The walk is
//! bounded ([`preview_budget`]): past it the container is removed and the
//! answer is a 504 `timeout`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::{json, Value};
use url::Url;

use super::error::{ApiError, ErrorBody};
use super::{ask, auth, read_body, AppState};
use crate::cluster::groups::ORCHESTRATOR;
use crate::control::orchestrator::OrchestratorMsg;
use crate::domain::{FieldType, Item, SourceSpec};
use crate::isolation::{IsolationError, PreviewPlan};
use crate::scrape::extract::{Limits, Report, Rules};
use crate::scrape::fetch::{FetchError, Fetcher};
use crate::scrape::{FollowStats, Pager, ScrapeError};

/// Most pages one preview walks.
pub const MAX_PREVIEW_PAGES: u32 = 3;
/// What `id` and `collection` are when the body leaves them out.
const PLACEHOLDER: &str = "preview";

/// One previewed page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PreviewPage {
    /// The URL requested.
    pub url: String,
    /// The site's HTTP status, when it answered.
    pub status: Option<u16>,
    /// From the request (politeness waits included) to the extracted items.
    pub elapsed_ms: u64,
    /// The items as a run would store their data, with their keys.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<Value>,
    /// The next page's URL, if the rules found one.
    pub next_page: Option<String>,
    /// Why the page yielded nothing, when it failed; the preview stops there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<PageError>,
}

/// A page that failed: a stable code where one applies, and the reason.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PageError {
    pub code: Option<String>,
    pub message: String,
}

/// Something about the rules worth a look, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Warning {
    /// Dotted path in the spec, e.g. `extract.fields.price`.
    pub field: String,
    pub message: String,
}

/// A preview's answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Preview {
    pub pages: Vec<PreviewPage>,
    pub warnings: Vec<Warning>,
}

/// `?pages=N`, 1 to [`MAX_PREVIEW_PAGES`], default 1.
fn pages_param(req: &HttpRequest) -> Result<u32, ApiError> {
    let mut pages = 1;
    for (k, v) in url::form_urlencoded::parse(req.query_string().as_bytes()) {
        if k == "pages" {
            pages = v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_PREVIEW_PAGES).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "pages",
                        format!("must be a whole number from 1 to {MAX_PREVIEW_PAGES}"),
                    )
                })?;
        }
    }
    Ok(pages)
}

/// A spec from a preview body: `id` and `collection` may be left out.
fn parse_spec(body: &[u8]) -> Result<SourceSpec, ApiError> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| ApiError::Invalid {
        field: None,
        message: format!("the body is not valid JSON: {e}"),
    })?;
    let object = value.as_object_mut().ok_or_else(|| ApiError::Invalid {
        field: None,
        message: "the body must be a JSON object (a source spec)".into(),
    })?;
    for key in ["id", "collection"] {
        object.entry(key).or_insert_with(|| json!(PLACEHOLDER));
    }
    let spec = SourceSpec::from_json(value.to_string().as_bytes())?;
    spec.validate()?;
    Ok(spec)
}

#[utoipa::path(post, path = "/api/v1/preview", tag = "sources", request_body = SourceSpec,
    params(("pages" = Option<u32>, Query, description = "Pages to walk, 1 to 3 (default 1)")),
    responses(
        (status = 200, description = "The pages' items and warnings; nothing stored", body = Preview),
        (status = 400, description = "An invalid spec or `pages`, naming the field; or a start URL the SSRF guard refuses (field `url`)", body = ErrorBody),
        (status = 401, description = "A token is required and missing or wrong", body = ErrorBody),
        (status = 413, description = "Body over 256 KiB", body = ErrorBody),
        (status = 503, description = "An isolated source, and no engine or image to preview it in a container", body = ErrorBody),
        (status = 504, description = "The preview's container did not finish within its bound", body = ErrorBody)))]
pub async fn preview(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    auth::require(&req, state.admin_token.as_deref())?;
    let pages = pages_param(&req)?;
    let body = read_body(&req, payload).await?;
    let spec = parse_spec(&body)?;
    Ok(HttpResponse::Ok().json(run_preview(&state, &spec, pages).await?))
}

#[utoipa::path(post, path = "/api/v1/sources/{id}/preview", tag = "sources",
    params(("id" = String, Path, description = "The source's id"),
        ("pages" = Option<u32>, Query, description = "Pages to walk, 1 to 3 (default 1)")),
    responses(
        (status = 200, description = "The stored source previewed (enabled or not); nothing stored", body = Preview),
        (status = 400, description = "A bad `pages`, or a start URL the SSRF guard refuses", body = ErrorBody),
        (status = 401, description = "A token is required and missing or wrong", body = ErrorBody),
        (status = 404, description = "No such source", body = ErrorBody),
        (status = 503, description = "An isolated source, and no engine or image to preview it in a container", body = ErrorBody),
        (status = 504, description = "The preview's container did not finish within its bound", body = ErrorBody)))]
pub async fn preview_stored(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    auth::require(&req, state.admin_token.as_deref())?;
    let pages = pages_param(&req)?;
    let view = ask(ORCHESTRATOR, |r| OrchestratorMsg::Get(id.into_inner(), r)).await??;
    Ok(HttpResponse::Ok().json(run_preview(&state, &view.spec, pages).await?))
}

/// How long a preview in a container may take: the container's and the
/// browser's start, then each page's load and wait with some room.
pub fn preview_budget(spec: &SourceSpec, pages: u32) -> std::time::Duration {
    let per_page = spec.extract.wait_timeout() + std::time::Duration::from_secs(10);
    (std::time::Duration::from_secs(20) + per_page * pages)
        .min(crate::isolation::docker::MAX_PREVIEW_BUDGET)
}

/// Previews `spec`: in this process, or in a container for an isolated source.
async fn run_preview(state: &AppState, spec: &SourceSpec, pages: u32) -> Result<Value, ApiError> {
    if !spec.isolated {
        let preview = walk(&state.fetcher, &state.limits, spec, pages).await?;
        return Ok(serde_json::to_value(preview).expect("a preview serialises"));
    }
    // The spec's faults are said at once, before a container starts.
    compile(spec)?;
    let start = Url::parse(&spec.url).map_err(|e| ApiError::invalid("url", e.to_string()))?;
    state
        .fetcher
        .check_target(&start)
        .await
        .map_err(|e| ApiError::invalid("url", e.to_string()))?;
    let plan = PreviewPlan {
        spec: spec.clone(),
        pages,
        budget: preview_budget(spec, pages),
        owner_id: state.node_id.clone(),
        owner_name: state.node_name.clone(),
        allow_private_targets: state.allow_private_targets.clone(),
    };
    let clock = Instant::now();
    let out = state.isolation.preview(&plan).await.map_err(|e| match e {
        IsolationError::TimedOut(ms) => ApiError::Timeout(format!(
            "the preview did not finish within {ms} ms; its container was removed"
        )),
        other => ApiError::Unavailable(format!("the preview's container: {other}")),
    })?;
    tracing::info!(source = %spec.id, render = ?spec.render, elapsed_ms = clock.elapsed().as_millis() as u64, "previewed in a container");
    from_container(&out)
}

/// The answer a preview container printed: a preview, or an error.
fn from_container(out: &str) -> Result<Value, ApiError> {
    let value: Value = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(Value::is_object)
        .ok_or_else(|| {
            let tail: String = out
                .chars()
                .rev()
                .take(300)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            ApiError::Unavailable(format!("the preview's container printed no answer: {tail}"))
        })?;
    if value.get("pages").is_some() {
        return Ok(value);
    }
    let error = &value["error"];
    let message = error["message"].as_str().unwrap_or("unknown").to_owned();
    Err(match error["code"].as_str() {
        Some("invalid_request") => ApiError::Invalid {
            field: error["field"].as_str().map(str::to_owned),
            message,
        },
        Some("timeout") => ApiError::Timeout(message),
        _ => ApiError::Unavailable(message),
    })
}

/// A walk's error as a preview container prints it.
pub fn error_json(e: &ApiError) -> Value {
    let (code, field) = match e {
        ApiError::Invalid { field, .. } => ("invalid_request", field.clone()),
        ApiError::Timeout(_) => ("timeout", None),
        _ => ("unavailable", None),
    };
    json!({ "error": { "code": code, "field": field, "message": e.to_string() } })
}

fn compile(spec: &SourceSpec) -> Result<Rules, ApiError> {
    Rules::compile(&spec.extract, &spec.key).map_err(|e| match e {
        crate::scrape::extract::ExtractError::Selector { field, message } => {
            ApiError::invalid(field, message)
        }
        other => ApiError::Invalid {
            field: None,
            message: other.to_string(),
        },
    })
}

/// Walks up to `pages` pages of `spec` with `fetcher` (rendering them when
/// the fetcher has a browser and the spec asks for one), storing nothing.
pub async fn walk(
    fetcher: &Fetcher,
    limits: &Limits,
    spec: &SourceSpec,
    pages: u32,
) -> Result<Preview, ApiError> {
    let rules = Arc::new(compile(spec)?);
    let start = Url::parse(&spec.url).map_err(|e| ApiError::invalid("url", e.to_string()))?;
    // The SSRF guard's refusal of the start URL is the spec's fault: said
    // before any request (robots.txt included) is made.
    fetcher
        .check_target(&start)
        .await
        .map_err(|e| ApiError::invalid("url", e.to_string()))?;
    let max_pages = spec.extract.next_page.as_ref().map_or(1, |n| n.max_pages);
    let mut pager = Pager::new(
        start.clone(),
        pages.min(max_pages),
        fetcher.clone(),
        rules.clone(),
        limits.clone(),
        spec.request.clone(),
    )
    .with_max_follows(spec.extract.max_follows);
    if fetcher.renderer().is_some() {
        pager = pager.with_render(spec);
    }
    let mut out = Vec::new();
    let mut reports = Vec::new();
    let mut requested = start;
    loop {
        let clock = Instant::now();
        let Some(result) = pager.next_page().await else {
            break;
        };
        let elapsed_ms = clock.elapsed().as_millis() as u64;
        let status = pager.answered().map(|(s, _)| *s);
        match result {
            Ok(page) => {
                if let Some(report) = pager.report() {
                    reports.push(report.clone());
                }
                let next_page = page.next.as_ref().map(Url::to_string);
                out.push(PreviewPage {
                    url: requested.to_string(),
                    status,
                    elapsed_ms,
                    items: page.items.iter().map(item_json).collect(),
                    next_page,
                    error: None,
                });
                match page.next {
                    Some(next) => requested = next,
                    None => break,
                }
            }
            Err(e) => {
                let status = match &e {
                    ScrapeError::Fetch {
                        source: FetchError::Status(s) | FetchError::Throttled { status: s, .. },
                        ..
                    } => Some(*s),
                    _ => status.filter(|_| matches!(e, ScrapeError::Extract { .. })),
                };
                out.push(PreviewPage {
                    url: requested.to_string(),
                    status,
                    elapsed_ms,
                    items: Vec::new(),
                    next_page: None,
                    error: Some(PageError {
                        code: e.code().map(Into::into),
                        message: e.to_string(),
                    }),
                });
                break;
            }
        }
    }
    let items: Vec<&Value> = out.iter().flat_map(|p| p.items.iter()).collect();
    let mut warnings = warnings(spec, &reports, &items, pager.follow_stats());
    if let Some(stopped) = pager.stopped() {
        warnings.push(Warning {
            field: "extract.next_page".into(),
            message: format!("pagination stopped: {stopped}"),
        });
    }
    tracing::debug!(url = %spec.url, pages = out.len(), items = items.len(), "previewed");
    Ok(Preview {
        pages: out,
        warnings,
    })
}

fn item_json(item: &Item) -> Value {
    json!({ "key": item.key, "data": item.data })
}

/// The warnings a preview gives, from what extraction saw on each page
/// (`reports`) and the items' detail objects:
///
/// - the scope matched nothing on any page;
/// - a field matched nothing in any scope, or in only some ("matched in 3
///   of 20 items");
/// - values found that did not parse as the field's number or URL;
/// - a detail page's field that matched on none or only some detail pages,
///   and follows that failed.
pub fn warnings(
    spec: &SourceSpec,
    reports: &[Report],
    items: &[&Value],
    follows: &FollowStats,
) -> Vec<Warning> {
    let mut out = Vec::new();
    if reports.is_empty() {
        return out;
    }
    let scopes: usize = reports.iter().map(|r| r.scopes).sum();
    let pages = reports.len();
    let plural = |n: usize, one: &str, many: &str| {
        if n == 1 {
            format!("{n} {one}")
        } else {
            format!("{n} {many}")
        }
    };
    if scopes == 0 {
        if spec.extract.scope.is_some() {
            out.push(Warning {
                field: "extract.scope".into(),
                message: format!("matched nothing on {}", plural(pages, "page", "pages")),
            });
        }
        return out;
    }
    let unit = if spec.extract.scope.is_some() {
        ("item", "items")
    } else {
        ("page", "pages")
    };
    // Sum each field over the pages (every report names the same fields).
    let mut fields: BTreeMap<&str, (FieldType, usize, usize)> = BTreeMap::new();
    for report in reports {
        for f in &report.fields {
            let entry = fields.entry(f.name.as_str()).or_insert((f.kind, 0, 0));
            entry.1 += f.matched;
            entry.2 += f.unparsed;
        }
    }
    for (name, (kind, matched, unparsed)) in fields {
        let field = format!("extract.fields.{name}");
        if matched == 0 {
            out.push(Warning {
                field: field.clone(),
                message: format!(
                    "matched nothing in any of the {}",
                    plural(scopes, unit.0, unit.1)
                ),
            });
        } else if matched < scopes {
            out.push(Warning {
                field: field.clone(),
                message: format!("matched in {matched} of {}", plural(scopes, unit.0, unit.1)),
            });
        }
        if unparsed > 0 {
            let what = match kind {
                FieldType::Number => "a number",
                FieldType::Url => "an http or https URL",
                FieldType::Text => "text",
            };
            out.push(Warning {
                field,
                message: format!(
                    "{} did not parse as {what}",
                    plural(unparsed, "value found", "values found")
                ),
            });
        }
    }
    // Detail pages: each nested field over the detail objects had.
    for (name, field) in &spec.extract.fields {
        let rule = field.rule(spec.extract.format);
        let Some(follow) = rule.follow else {
            continue;
        };
        let objects: Vec<&serde_json::Map<String, Value>> = items
            .iter()
            .filter_map(|i| i["data"][name.as_str()].as_object())
            .collect();
        for nested in follow.fields.keys() {
            let filled = objects
                .iter()
                .filter(|o| is_filled(o.get(nested).unwrap_or(&Value::Null)))
                .count();
            let at = format!("extract.fields.{name}.follow.fields.{nested}");
            if objects.is_empty() {
                continue;
            }
            if filled == 0 {
                out.push(Warning {
                    field: at,
                    message: format!(
                        "matched nothing on any of the {}",
                        plural(objects.len(), "detail page", "detail pages")
                    ),
                });
            } else if filled < objects.len() {
                out.push(Warning {
                    field: at,
                    message: format!(
                        "matched on {filled} of {}",
                        plural(objects.len(), "detail page", "detail pages")
                    ),
                });
            }
        }
    }
    if follows.errors > 0 {
        let field = spec
            .extract
            .fields
            .iter()
            .find(|(_, f)| f.rule(spec.extract.format).follow.is_some())
            .map_or("extract".to_owned(), |(n, _)| {
                format!("extract.fields.{n}.follow")
            });
        out.push(Warning {
            field,
            message: format!(
                "{} left the field null; first: {}",
                plural(follows.errors as usize, "follow", "follows"),
                follows.error.as_deref().unwrap_or("unknown")
            ),
        });
    }
    out
}

fn is_filled(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        _ => true,
    }
}
