//! Read routes on collections: the list with counts, pages of items (JSON,
//! NDJSON or CSV, with an opaque cursor and field filters), one item, and
//! the deletion of a collection (admin, through the Orchestrator).
//! Item pages are read from the store directly (on a blocking thread when a
//! filter may scan the collection, or for CSV) and kept in a [`PageCache`];
//! counts come from the collections' Endpoints. The change feed reads the
//! store's `changes:{collection}` tree and long-polls on its watch.

use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use super::error::{ApiError, ErrorBody};
use super::{ask, auth, blocking, durable, AppState};
use crate::cluster::groups::COLLECTIONS;
use crate::domain::spec::is_slug;
use crate::domain::StoredItem;
use crate::pipeline::collection_supervisor::CollectionSupervisorMsg;
use crate::store::{ChangeOp, Store, StoreError};

/// Items per page when `limit` is not given, and the most a page may hold.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
const MAX_FILTERS: usize = 16;
/// Response header carrying the next cursor for ndjson and csv.
pub const NEXT_CURSOR_HEADER: &str = "Gleaner-Next-Cursor";

/// An item as the API returns it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ItemView<'a> {
    key: &'a str,
    /// The extracted fields.
    #[schema(value_type = Object)]
    data: &'a Map<String, Value>,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    version: u64,
    source: &'a str,
}

impl<'a> From<&'a StoredItem> for ItemView<'a> {
    fn from(i: &'a StoredItem) -> Self {
        ItemView {
            key: &i.key,
            data: &i.data,
            first_seen: i.first_seen,
            last_seen: i.last_seen,
            version: i.version,
            source: &i.source,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutputFormat {
    Json,
    Ndjson,
    Csv,
}

/// A parsed items query.
#[derive(Debug)]
struct ItemsQuery {
    limit: usize,
    after: Option<String>,
    format: OutputFormat,
    filters: Vec<(String, String)>,
}

fn parse_query(raw: &str) -> Result<ItemsQuery, ApiError> {
    let mut q = ItemsQuery {
        limit: DEFAULT_LIMIT,
        after: None,
        format: OutputFormat::Json,
        filters: Vec::new(),
    };
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "limit",
                            format!("must be an integer from 1 to {MAX_LIMIT}"),
                        )
                    })?;
            }
            "cursor" => q.after = Some(decode_cursor(&v)?),
            "format" => {
                q.format = match v.as_ref() {
                    "json" => OutputFormat::Json,
                    "ndjson" => OutputFormat::Ndjson,
                    "csv" => OutputFormat::Csv,
                    _ => return Err(ApiError::invalid("format", "must be json, ndjson or csv")),
                }
            }
            field => {
                if field.is_empty() || field.len() > 64 || v.len() > 1024 {
                    return Err(ApiError::invalid(field, "filters are field=value, a name of 1-64 characters and a value of at most 1024"));
                }
                if q.filters.len() == MAX_FILTERS {
                    return Err(ApiError::invalid(
                        field,
                        format!("at most {MAX_FILTERS} filters"),
                    ));
                }
                q.filters.push((field.to_owned(), v.into_owned()));
            }
        }
    }
    Ok(q)
}

/// Cursors are the last key of the previous page, encoded so clients treat them as opaque.
fn encode_cursor(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key.as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|k| k.len() <= 128)
        .ok_or_else(|| ApiError::invalid("cursor", "not a cursor returned by this API"))
}

/// Does the item's field equal `wanted`? Strings compare as they are, numbers
/// by value (`7.990` finds 7.99), booleans as `true`/`false`, lists match if
/// any element does.
fn field_matches(value: Option<&Value>, wanted: &str) -> bool {
    match value {
        None => false,
        Some(Value::String(s)) => s == wanted,
        Some(Value::Array(values)) => values.iter().any(|v| field_matches(Some(v), wanted)),
        Some(Value::Null) => wanted == "null",
        Some(Value::Bool(b)) => wanted == if *b { "true" } else { "false" },
        Some(Value::Number(n)) => wanted
            .parse::<f64>()
            .ok()
            .is_some_and(|w| Some(w) == n.as_f64()),
        Some(Value::Object(_)) => false,
    }
}

fn reader(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    auth::require(req, state.read_token.as_deref())
}

/// One collection's summary.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CollectionView {
    pub name: String,
    pub items: u64,
    pub last_update: Option<DateTime<Utc>>,
}

/// Every collection.
#[derive(Serialize, utoipa::ToSchema)]
pub struct CollectionList {
    pub collections: Vec<CollectionView>,
}

/// A page of items (`format=json`; ndjson and csv carry the next cursor in
/// the `Gleaner-Next-Cursor` header). Written from the stored bytes, in
/// exactly this shape.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ItemsPage<'a> {
    pub items: Vec<ItemView<'a>>,
    /// The cursor of the next page; null on the last.
    pub next: Option<String>,
}

/// One item and its collection.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ItemInCollection<'a> {
    #[serde(flatten)]
    pub item: ItemView<'a>,
    pub collection: String,
}

#[utoipa::path(get, path = "/api/v1/collections", tag = "collections", operation_id = "list_collections",
    responses((status = 200, description = "Every collection", body = CollectionList), (status = 401, description = "A token is required and missing or wrong", body = ErrorBody)))]
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    reader(&req, &state)?;
    let summaries = ask(COLLECTIONS, CollectionSupervisorMsg::Summaries).await?;
    let collections = summaries
        .into_iter()
        .map(|c| CollectionView {
            name: c.name,
            items: c.items,
            last_update: c.last_update,
        })
        .collect();
    Ok(HttpResponse::Ok().json(CollectionList { collections }))
}

#[utoipa::path(get, path = "/api/v1/collections/{name}/items", tag = "collections",
    params(("name" = String, Path, description = "The collection"),
        ("limit" = Option<usize>, Query, description = "1 to 1000, default 100"),
        ("cursor" = Option<String>, Query, description = "From the previous page's `next`"),
        ("format" = Option<String>, Query, description = "`json` (default), `ndjson` or `csv`")),
    responses((status = 200, description = "A page of items in key order; any other query parameter filters on a field", body = ItemsPage),
        (status = 400, description = "A bad parameter, naming it", body = ErrorBody), (status = 401, description = "A token is required and missing or wrong", body = ErrorBody),
        (status = 404, description = "No such collection", body = ErrorBody)))]
pub async fn items(
    req: HttpRequest,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    reader(&req, &state)?;
    let query = parse_query(req.query_string())?;
    let name = name.into_inner();
    // Read before rendering: a change made meanwhile makes this page stale at once.
    let generation = state.store.items_generation(&name);
    let cache_key = (name.clone(), req.query_string().to_owned());
    if let Some(page) = state.pages.get(&cache_key, generation) {
        durable(&state, &cache_key.0).await?;
        return Ok(page_response(&page));
    }
    let store = state.store.clone();
    let page = if query.format == OutputFormat::Csv {
        blocking(move || csv_page(&store, &name, &query)).await?
    } else if query.filters.is_empty() {
        // At most MAX_LIMIT items read in place: cheaper on this worker
        // than a hop to the blocking pool and back.
        json_page(&store, &name, &query)?
    } else {
        // A filter may scan the whole collection.
        blocking(move || json_page(&store, &name, &query)).await?
    };
    // Only what a flush covers is served (or cached).
    durable(&state, &cache_key.0).await?;
    let page = Arc::new(page);
    state.pages.put(cache_key, generation, page.clone());
    Ok(page_response(&page))
}

fn page_response(page: &RenderedPage) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    if let Some(n) = &page.next {
        response.insert_header((NEXT_CURSOR_HEADER, n.as_str()));
    }
    response
        .content_type(page.content_type)
        .body(page.body.clone())
}

/// A rendered page of items.
pub struct RenderedPage {
    body: Bytes,
    content_type: &'static str,
    next: Option<String>,
}

/// (collection, query string)
type PageKey = (String, String);

/// Rendered pages of items, each kept with the generation of its collection
/// it was rendered at (`Store::items_generation`) and served again only
/// while that is still the collection's generation: a query never sees
/// items older than the last change made before it. Bounded in bytes, and
/// off with a budget of 0.
pub struct PageCache {
    pages: Option<quick_cache::sync::Cache<PageKey, (u64, Arc<RenderedPage>), PageWeight>>,
}

#[derive(Clone)]
struct PageWeight;

impl quick_cache::Weighter<PageKey, (u64, Arc<RenderedPage>)> for PageWeight {
    fn weight(&self, key: &PageKey, (_, page): &(u64, Arc<RenderedPage>)) -> u64 {
        (key.0.len() + key.1.len() + page.body.len() + 128) as u64
    }
}

impl PageCache {
    pub fn new(budget_bytes: u64) -> PageCache {
        PageCache {
            pages: (budget_bytes > 0).then(|| {
                let estimated_pages = (budget_bytes / (32 * 1024)).max(16) as usize;
                quick_cache::sync::Cache::with_weighter(estimated_pages, budget_bytes, PageWeight)
            }),
        }
    }

    fn get(&self, key: &PageKey, generation: u64) -> Option<Arc<RenderedPage>> {
        let (at, page) = self.pages.as_ref()?.get(key)?;
        (at == generation).then_some(page)
    }

    fn put(&self, key: PageKey, generation: u64, page: Arc<RenderedPage>) {
        if let Some(pages) = &self.pages {
            pages.insert(key, (generation, page));
        }
    }
}

/// A JSON or NDJSON page, written straight from the stored bytes: each item
/// is copied as stored, less its hash (`store::ItemBytes::write_view`).
fn json_page(store: &Store, name: &str, q: &ItemsQuery) -> Result<RenderedPage, ApiError> {
    known_collection(store, name)?;
    let json = q.format == OutputFormat::Json;
    let mut body = Vec::with_capacity(q.limit.min(100) * 512);
    if json {
        body.extend_from_slice(b"{\"items\":[");
    }
    let (mut n, mut last, mut more) = (0usize, String::new(), false);
    store.each_item(name, q.after.as_deref(), |item| {
        if !q.filters.is_empty() {
            let fields = item
                .item_ref()?
                .fields()
                .map_err(|source| StoreError::Corrupt {
                    what: "item",
                    source,
                })?;
            if !matches_all(&fields, &q.filters) {
                return Ok(true);
            }
        }
        if n == q.limit {
            more = true;
            return Ok(false);
        }
        if json && n > 0 {
            body.push(b',');
        }
        item.write_view(&mut body)?;
        if !json {
            body.push(b'\n');
        }
        n += 1;
        last.clear();
        last.push_str(item.key());
        Ok(true)
    })?;
    let next = more.then(|| encode_cursor(&last));
    if json {
        body.extend_from_slice(b"],\"next\":");
        serde_json::to_writer(&mut body, &next).map_err(|e| ApiError::Internal(e.into()))?;
        body.push(b'}');
    }
    Ok(RenderedPage {
        body: body.into(),
        content_type: if json {
            "application/json"
        } else {
            "application/x-ndjson"
        },
        next,
    })
}

fn csv_page(store: &Store, name: &str, q: &ItemsQuery) -> Result<RenderedPage, ApiError> {
    known_collection(store, name)?;
    let keep = |item: &StoredItem| matches_all(&item.data, &q.filters);
    let (items, more) = store.items(name, q.after.as_deref(), q.limit, keep)?;
    let next = if more {
        items.last().map(|i| encode_cursor(&i.key))
    } else {
        None
    };
    Ok(RenderedPage {
        body: to_csv(&items)?.into(),
        content_type: "text/csv; charset=utf-8",
        next,
    })
}

fn matches_all(data: &Map<String, Value>, filters: &[(String, String)]) -> bool {
    filters.iter().all(|(f, v)| field_matches(data.get(f), v))
}

fn known_collection(store: &Store, name: &str) -> Result<(), ApiError> {
    let missing = || ApiError::NotFound(format!("collection '{name}' not found"));
    if !is_slug(name) {
        return Err(missing());
    }
    store.collection(name)?.map(|_| ()).ok_or_else(missing)
}

/// One row per item: its metadata, then every data field of the page in name order.
fn to_csv(items: &[StoredItem]) -> Result<Vec<u8>, ApiError> {
    let fields: std::collections::BTreeSet<&str> = items
        .iter()
        .flat_map(|i| i.data.keys().map(String::as_str))
        .collect();
    let mut w = csv::Writer::from_writer(Vec::new());
    let header = ["key", "source", "version", "first_seen", "last_seen"]
        .into_iter()
        .chain(fields.iter().copied());
    w.write_record(header)
        .map_err(|e| ApiError::Internal(e.into()))?;
    for i in items {
        let mut row = vec![
            i.key.clone(),
            i.source.clone(),
            i.version.to_string(),
            i.first_seen.to_rfc3339(),
            i.last_seen.to_rfc3339(),
        ];
        for f in &fields {
            row.push(match i.data.get(*f) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            });
        }
        w.write_record(&row)
            .map_err(|e| ApiError::Internal(e.into()))?;
    }
    w.into_inner()
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))
}

/// The longest a changes request may wait for a change.
const MAX_WAIT_SECS: u64 = 60;

/// A parsed changes query.
#[derive(Debug, PartialEq)]
struct ChangesQuery {
    since: u64,
    limit: usize,
    wait_secs: u64,
}

fn parse_changes_query(raw: &str) -> Result<ChangesQuery, ApiError> {
    let mut q = ChangesQuery {
        since: 0,
        limit: DEFAULT_LIMIT,
        wait_secs: 0,
    };
    for (k, v) in url::form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "since" => {
                q.since = v.parse().map_err(|_| {
                    ApiError::invalid("since", "must be a change sequence number (0 or more)")
                })?
            }
            "limit" => {
                q.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "limit",
                            format!("must be an integer from 1 to {MAX_LIMIT}"),
                        )
                    })?
            }
            "wait_secs" => {
                q.wait_secs = v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n <= MAX_WAIT_SECS)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "wait_secs",
                            format!("must be an integer from 0 to {MAX_WAIT_SECS}"),
                        )
                    })?
            }
            other => {
                return Err(ApiError::invalid(
                    other,
                    "unknown parameter: since, limit and wait_secs are accepted",
                ))
            }
        }
    }
    Ok(q)
}

/// One change: this node's sequence number for it, what it did, and the
/// item as it is now (its newest version, even if it changed again later).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ChangeView<'a> {
    pub seq: u64,
    pub op: ChangeOp,
    pub item: ItemView<'a>,
}

/// Changes after `since`, oldest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ChangesPage<'a> {
    pub changes: Vec<ChangeView<'a>>,
    /// The last `seq` returned, or `since` when none: the next call's `since`.
    pub next: u64,
}

#[utoipa::path(get, path = "/api/v1/collections/{name}/changes", tag = "collections",
    params(("name" = String, Path, description = "The collection"),
        ("since" = Option<u64>, Query, description = "Changes with a sequence number above this one; default 0"),
        ("limit" = Option<usize>, Query, description = "1 to 1000, default 100"),
        ("wait_secs" = Option<u64>, Query, description = "0 to 60, default 0: with no change past `since`, wait up to this long for one")),
    responses((status = 200, description = "This node's durable changes (inserted or changed items) after `since`, oldest first", body = ChangesPage),
        (status = 400, description = "A bad parameter, naming it", body = ErrorBody), (status = 401, description = "A token is required and missing or wrong", body = ErrorBody),
        (status = 404, description = "No such collection", body = ErrorBody)))]
pub async fn changes(
    req: HttpRequest,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    reader(&req, &state)?;
    let q = parse_changes_query(req.query_string())?;
    let name = name.into_inner();
    let started = tokio::time::Instant::now();
    let deadline = started + std::time::Duration::from_secs(q.wait_secs);
    let store = state.store.clone();
    let n = name.clone();
    blocking(move || known_collection(&store, &n)).await?;
    // Subscribed before the first read: a change made durable after it wakes us.
    let mut watch = state.store.watch_changes(&name);
    let mut waiting = q.wait_secs == 0;
    let found = loop {
        watch.borrow_and_update();
        let (store, n, since, limit) = (state.store.clone(), name.clone(), q.since, q.limit);
        let found = blocking(move || Ok(store.changes_after(&n, since, limit)?)).await?;
        if !found.is_empty() {
            break found;
        }
        if !waiting {
            waiting = true;
            tracing::debug!(collection = %name, since = q.since, wait_secs = q.wait_secs, "changes: waiting for a change");
        }
        // Waiting on the watch holds no worker thread.
        match tokio::time::timeout_at(deadline, watch.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) | Err(_) => break found,
        }
    };
    // Only what a flush covers is served.
    durable(&state, &name).await?;
    tracing::debug!(
        collection = %name,
        since = q.since,
        changes = found.len(),
        waited_ms = started.elapsed().as_millis() as u64,
        "changes served"
    );
    let page = ChangesPage {
        next: found.last().map_or(q.since, |c| c.seq),
        changes: found
            .iter()
            .map(|c| ChangeView {
                seq: c.seq,
                op: c.op,
                item: ItemView::from(&c.item),
            })
            .collect(),
    };
    Ok(HttpResponse::Ok().json(page))
}

#[utoipa::path(get, path = "/api/v1/collections/{name}/items/{key}", tag = "collections",
    params(("name" = String, Path, description = "The collection"),
        ("key" = String, Path, description = "The item's key")),
    responses((status = 200, description = "The item", body = ItemInCollection), (status = 401, description = "A token is required and missing or wrong", body = ErrorBody),
        (status = 404, description = "No such collection or item", body = ErrorBody)))]
pub async fn item(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    reader(&req, &state)?;
    let (name, key) = path.into_inner();
    let store = state.store.clone();
    let found = blocking(move || {
        known_collection(&store, &name)?;
        let item = store
            .item(&name, &key)?
            .ok_or_else(|| ApiError::NotFound(format!("no item '{key}' in collection '{name}'")))?;
        Ok((name, item))
    })
    .await?;
    let (name, item) = found;
    durable(&state, &name).await?;
    Ok(HttpResponse::Ok().json(ItemInCollection {
        item: ItemView::from(&item),
        collection: name,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn queries_parse_and_reject() {
        let q = parse_query("limit=5&format=csv&tags=a&price=3").unwrap();
        assert_eq!((q.limit, q.format), (5, OutputFormat::Csv));
        assert_eq!(q.filters.len(), 2);
        for (raw, field) in [
            ("limit=0", "limit"),
            ("limit=x", "limit"),
            ("format=xml", "format"),
            ("cursor=%%%", "cursor"),
        ] {
            match parse_query(raw) {
                Err(ApiError::Invalid { field: Some(f), .. }) => assert_eq!(f, field, "{raw}"),
                other => panic!("{raw}: {other:?}"),
            }
        }
        let c = encode_cursor("abc");
        assert_eq!(
            parse_query(&format!("cursor={c}"))
                .unwrap()
                .after
                .as_deref(),
            Some("abc")
        );
    }

    #[test]
    fn changes_queries_parse_and_reject() {
        assert_eq!(
            parse_changes_query("").unwrap(),
            ChangesQuery {
                since: 0,
                limit: 100,
                wait_secs: 0
            }
        );
        assert_eq!(
            parse_changes_query("since=7&limit=3&wait_secs=60").unwrap(),
            ChangesQuery {
                since: 7,
                limit: 3,
                wait_secs: 60
            }
        );
        for (raw, field) in [
            ("since=x", "since"),
            ("since=-1", "since"),
            ("limit=1001", "limit"),
            ("limit=x", "limit"),
            ("wait_secs=61", "wait_secs"),
            ("wait_secs=x", "wait_secs"),
            ("after=1", "after"),
        ] {
            match parse_changes_query(raw) {
                Err(ApiError::Invalid { field: Some(f), .. }) => assert_eq!(f, field, "{raw}"),
                other => panic!("{raw}: {other:?}"),
            }
        }
    }

    #[test]
    fn filters_match_text_numbers_and_lists() {
        assert!(field_matches(Some(&json!("a")), "a"));
        assert!(field_matches(Some(&json!(12.5)), "12.5"));
        assert!(field_matches(Some(&json!(12.5)), "12.50"));
        assert!(field_matches(Some(&json!(true)), "true"));
        assert!(field_matches(Some(&json!(["x", "y"])), "y"));
        assert!(!field_matches(Some(&json!("a")), "b"));
        assert!(!field_matches(None, "a"));
    }
}

#[utoipa::path(delete, path = "/api/v1/collections/{name}", tag = "collections", operation_id = "delete_collection",
    params(("name" = String, Path, description = "The collection's name")),
    responses((status = 204, description = "Deleted on this node (flushed) and on a peer if one is up; the other nodes follow within seconds"),
        (status = 401, description = "A token is required and missing or wrong", body = ErrorBody),
        (status = 404, description = "No such collection", body = ErrorBody),
        (status = 409, description = "Sources still feed it (`collection_in_use`, naming them)", body = ErrorBody)))]
pub async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    auth::require(&req, state.admin_token.as_deref())?;
    let name = name.into_inner();
    if !is_slug(&name) {
        return Err(ApiError::NotFound(format!("collection '{name}' not found")));
    }
    ask(crate::cluster::groups::ORCHESTRATOR, |r| {
        crate::control::orchestrator::OrchestratorMsg::DropCollection(name, r)
    })
    .await??;
    Ok(HttpResponse::NoContent().finish())
}
