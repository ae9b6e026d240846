//! Extraction: one fetched page in, its items (and the link to the next page)
//! out. Pure and runtime-free: no actor, no network, no async and no clock, so
//! it is tested on fixture pages and run by the caller on a blocking thread.
//!
//! A source's rules are compiled once into [`Rules`] (CSS selectors for HTML,
//! JSON pointers for JSON) and applied to each page by [`extract`]:
//!
//! - **HTML** goes through html5ever (the `scraper` crate). Each match of the
//!   scope selector is one item (no scope: the whole document is one item) and
//!   each field is the first match (or, with `all`, every match) of its
//!   selector inside the item, typed as text, number or URL.
//! - **JSON** goes through serde_json. The scope pointer names an array (each
//!   element is one item) or an object (one item); field paths are pointers
//!   relative to the item.
//!
//! Values: a field with no match is null; with `all` it is an array of the
//! matches' values, leaving out those that come out null. HTML text is every
//! descendant text joined, trimmed, with whitespace runs collapsed to one
//! space; an attribute value is trimmed. A number is the first one in the
//! text (`£1,234.50` is 1234.5; no exponents, so `1e5` is 1), an integer
//! unless it has a fraction. A URL is resolved against the page's `<base
//! href>` or URL and kept only if it is http or https. An item whose every
//! field is null, `""` or `[]` is dropped. A JSON scope that is missing from
//! the page is an error ([`ExtractError::NotAnItem`]), so that a changed API
//! is noticed rather than silently yielding nothing; a null scope is no items.
//!
//! **The depth gate.** html5ever's tree building is quadratic in nesting
//! depth (for most start tags it walks its stack of open elements), so
//! 200,000 nested `<div>`s take minutes, and a parse on a blocking thread
//! cannot be interrupted by a timeout. The page is therefore fed to the parser
//! a kibibyte at a time; after each slice the tree builder's own stack is
//! measured, and past [`Limits::max_depth`] the parse is abandoned with
//! [`ExtractError::TooDeep`]. The measure is the parser's, not an estimate:
//! stray end tags, `<div/>`, quoted `>`, scripts or elements whose end tags
//! are implied can neither hide nesting nor fake it (a byte scanner run before
//! parsing cannot match the tree builder: `<rt><optgroup><optgroup>` repeated
//! nests three levels a time). The work done before a refusal is bounded by
//! the limit plus one slice, so a hostile page is refused in milliseconds.
//! JSON needs no gate: serde_json's recursion limit (128) bounds its nesting.

use std::cell::Cell;
use std::sync::{Arc, LazyLock};

use html5ever::tendril::{StrTendril, TendrilSink};
use html5ever::tree_builder::{Tracer, TreeSink};
use html5ever::{ParseOpts, Parser};
use scraper::{ElementRef, Html, HtmlTreeSink, Selector};
use serde_json::{Map, Number, Value};
use url::Url;

use crate::domain::item::NamedItems;
use crate::domain::{locator, ExtractSpec, FieldRule, FieldSpec, FieldType, Format, Item};

/// Bounds on the work one page may cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Deepest element nesting an HTML page may have (counted as the tree
    /// builder's open and active formatting elements); deeper pages are
    /// refused part-way through parsing. The count is taken every kibibyte of
    /// input, so nesting that rises past the limit and falls back within one
    /// kibibyte goes unseen (and costs little). Browsers stop nesting near 512.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: 512 }
    }
}

/// Why a page yielded nothing, or why rules do not compile.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The depth gate refused the page; `depth` is how deep the parser had
    /// got when the gate stopped it.
    #[error("the page nests elements at least {depth} deep, beyond the limit of {limit}")]
    TooDeep { depth: usize, limit: usize },
    /// The body is not JSON (or nests deeper than serde_json's limit).
    #[error("the page is not valid json: {0}")]
    Json(String),
    /// A selector or pointer of the rules does not compile; `field` is its
    /// dotted path in the spec, e.g. `extract.fields.price.css`.
    #[error("{field}: {message}")]
    Selector { field: String, message: String },
    /// The JSON scope is missing from the page, or is a string, number or
    /// boolean rather than an object or an array of items.
    #[error("the json scope {scope:?} {problem}")]
    NotAnItem { scope: String, problem: String },
}

/// A source's extraction rules, compiled once and reused every run.
#[derive(Debug)]
pub struct Rules {
    plan: Plan,
    /// The fields whose values make an item's key (empty: the whole item).
    key: Vec<String>,
    /// The fields that follow their URL to a detail page, with the rules
    /// applied there; the caller fetches (see `scrape::Pager`).
    follows: Vec<FollowRule>,
}

/// A field whose value (a URL) is fetched, and the rules that make the
/// detail page into the field's object.
#[derive(Debug)]
pub struct FollowRule {
    pub field: String,
    pub rules: Arc<Rules>,
}

/// What extraction saw on one page, beyond the items: the material of a
/// preview's warnings. Counting costs a few comparisons per match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Scope matches on the page (1 without a scope), empty items included.
    pub scopes: usize,
    /// Each field, in name order.
    pub fields: Vec<FieldReport>,
}

/// How one field fared on one page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldReport {
    pub name: String,
    pub kind: FieldType,
    /// Scopes where the field's selector (or pointer) found a value.
    pub matched: usize,
    /// Values found that did not parse as the field's type (a number
    /// without digits, a URL that does not resolve to http or https).
    pub unparsed: usize,
}

#[derive(Debug)]
enum Plan {
    Html(HtmlPlan),
    Json(JsonPlan),
}

#[derive(Debug)]
struct HtmlPlan {
    scope: Option<Selector>,
    fields: Vec<HtmlField>,
    next: Option<HtmlNext>,
}

#[derive(Debug)]
struct HtmlField {
    name: String,
    /// Fields that follow keep their value as a URL.
    css: Selector,
    /// Take this attribute's value instead of the element's text.
    attr: Option<String>,
    kind: FieldType,
    all: bool,
}

#[derive(Debug)]
struct HtmlNext {
    css: Selector,
    attr: String,
}

#[derive(Debug)]
struct JsonPlan {
    /// A JSON pointer; `""` is the whole document.
    scope: String,
    fields: Vec<JsonField>,
    next: Option<String>,
}

#[derive(Debug)]
struct JsonField {
    name: String,
    path: String,
    kind: FieldType,
    all: bool,
}

/// What one page yielded.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<Item>,
    /// The next page's URL (http or https, never the page itself), if the
    /// rules found one. Page limits and cycles are the caller's business.
    pub next: Option<Url>,
    /// A page answered 304 Not Modified (or with the same body) and
    /// remembered by name: the URL it was asked at, and its items named, not
    /// extracted (`items` is then empty; see `store::pages`).
    pub unchanged: Option<(Url, NamedItems)>,
}

// `Rules` is shared with blocking threads through an `Arc`.
const _: fn() = || {
    fn shareable<T: Send + Sync + 'static>() {}
    shareable::<Rules>();
};

/// The first `<base>` with an `href` sets the document's base URL.
static BASE: LazyLock<Selector> =
    LazyLock::new(|| Selector::parse("base[href]").expect("a constant selector parses"));

impl Rules {
    /// Compiles a validated spec's extraction rules once (a scraper reuses
    /// them every run). `key` names the fields that make an item's key.
    pub fn compile(spec: &ExtractSpec, key: &[String]) -> Result<Rules, ExtractError> {
        let plan = match spec.format {
            Format::Html => Plan::Html(compile_html(spec)?),
            Format::Json => Plan::Json(compile_json(spec)?),
        };
        let mut follows = Vec::new();
        for (name, field) in &spec.fields {
            let FieldSpec::Rule(FieldRule {
                follow: Some(follow),
                ..
            }) = field
            else {
                continue;
            };
            let detail = ExtractSpec {
                format: spec.format,
                scope: None,
                fields: follow.fields.clone(),
                next_page: None,
                max_follows: 0,
                wait_for: None,
                wait_timeout_ms: None,
                allow_hosts: Vec::new(),
            };
            let rules = Rules::compile(&detail, &[]).map_err(|e| match e {
                ExtractError::Selector { field, message } => ExtractError::Selector {
                    field: field.replacen(
                        "extract.fields",
                        &format!("extract.fields.{name}.follow.fields"),
                        1,
                    ),
                    message,
                },
                other => other,
            })?;
            follows.push(FollowRule {
                field: name.clone(),
                rules: Arc::new(rules),
            });
        }
        Ok(Rules {
            plan,
            key: key.to_vec(),
            follows,
        })
    }

    /// The fields that follow a URL to a detail page.
    pub fn follows(&self) -> &[FollowRule] {
        &self.follows
    }

    /// The key fields.
    pub fn key(&self) -> &[String] {
        &self.key
    }

    /// The names of the fields, in order.
    pub fn field_names(&self) -> Vec<String> {
        match &self.plan {
            Plan::Html(p) => p.fields.iter().map(|f| f.name.clone()).collect(),
            Plan::Json(p) => p.fields.iter().map(|f| f.name.clone()).collect(),
        }
    }
}

fn compile_html(spec: &ExtractSpec) -> Result<HtmlPlan, ExtractError> {
    let scope = spec
        .scope
        .as_deref()
        .map(|s| css("extract.scope", Some(s)))
        .transpose()?;
    let mut fields = Vec::with_capacity(spec.fields.len());
    for (name, field) in &spec.fields {
        let rule = field.rule(Format::Html);
        let kind = if rule.follow.is_some() {
            FieldType::Url
        } else {
            rule.kind
        };
        fields.push(HtmlField {
            name: name.clone(),
            css: css(&format!("extract.fields.{name}.css"), rule.css.as_deref())?,
            attr: rule.attr,
            kind,
            all: rule.all,
        });
    }
    let next = match &spec.next_page {
        None => None,
        Some(next) => Some(HtmlNext {
            css: css("extract.next_page.css", next.css.as_deref())?,
            attr: next.attr.clone().unwrap_or_else(|| "href".to_owned()),
        }),
    };
    Ok(HtmlPlan {
        scope,
        fields,
        next,
    })
}

fn compile_json(spec: &ExtractSpec) -> Result<JsonPlan, ExtractError> {
    let scope = pointer("extract.scope", Some(spec.scope.as_deref().unwrap_or("")))?;
    let mut fields = Vec::with_capacity(spec.fields.len());
    for (name, field) in &spec.fields {
        let rule = field.rule(Format::Json);
        fields.push(JsonField {
            name: name.clone(),
            path: pointer(&format!("extract.fields.{name}.path"), rule.path.as_deref())?,
            kind: rule.kind,
            all: rule.all,
        });
    }
    let next = spec
        .next_page
        .as_ref()
        .map(|next| pointer("extract.next_page.path", next.path.as_deref()))
        .transpose()?;
    Ok(JsonPlan {
        scope,
        fields,
        next,
    })
}

fn css(field: &str, raw: Option<&str>) -> Result<Selector, ExtractError> {
    let raw = raw.ok_or_else(|| locator_error(field, "is required"))?;
    locator::parse_selector(raw).map_err(|e| locator_error(field, &e))
}

fn pointer(field: &str, raw: Option<&str>) -> Result<String, ExtractError> {
    let raw = raw.ok_or_else(|| locator_error(field, "is required"))?;
    locator::check_pointer(raw).map_err(|e| locator_error(field, &e))?;
    Ok(raw.to_owned())
}

fn locator_error(field: &str, message: &str) -> ExtractError {
    ExtractError::Selector {
        field: field.to_owned(),
        message: message.to_owned(),
    }
}

/// Extracts the items of one fetched page. `page_url` is the final URL after
/// redirects: relative URLs resolve against it (or an HTML page's `<base>`).
pub fn extract(
    body: &[u8],
    page_url: &Url,
    rules: &Rules,
    limits: &Limits,
) -> Result<Page, ExtractError> {
    extract_reported(body, page_url, rules, limits).map(|(page, _)| page)
}

/// As [`extract`], with what extraction saw of each field ([`Report`]).
pub fn extract_reported(
    body: &[u8],
    page_url: &Url,
    rules: &Rules,
    limits: &Limits,
) -> Result<(Page, Report), ExtractError> {
    match &rules.plan {
        Plan::Html(plan) => extract_html(body, page_url, plan, &rules.key, limits),
        Plan::Json(plan) => extract_json(body, page_url, plan, &rules.key),
    }
}

/// A detail page made into one object by `rules` (fields that match
/// nothing are null; nothing is dropped).
pub fn extract_object(
    body: &[u8],
    page_url: &Url,
    rules: &Rules,
    limits: &Limits,
) -> Result<Map<String, Value>, ExtractError> {
    let (page, _) = extract_reported(body, page_url, rules, limits)?;
    Ok(match page.items.into_iter().next() {
        Some(item) => item.data,
        None => rules
            .field_names()
            .into_iter()
            .map(|name| (name, Value::Null))
            .collect(),
    })
}

// ---------------------------------------------------------------- html

fn extract_html(
    body: &[u8],
    page_url: &Url,
    plan: &HtmlPlan,
    key: &[String],
    limits: &Limits,
) -> Result<(Page, Report), ExtractError> {
    // Valid UTF-8 (nearly every page) is checked by the faster validator;
    // only a page with invalid bytes pays for their replacement.
    let text = match std::str::from_utf8(body) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(body),
    };
    let doc = parse_gated(&text, limits.max_depth)?;
    // A `<base href>` is itself resolved against the page URL; an unusable
    // one (unparseable, or not http/https) leaves the page URL as the base.
    let base = doc
        .select(&BASE)
        .next()
        .and_then(|el| el.value().attr("href"))
        .and_then(|href| resolve(page_url, href))
        .unwrap_or_else(|| page_url.clone());

    let scopes: Vec<Option<ElementRef>> = match &plan.scope {
        Some(scope) => doc.select(scope).map(Some).collect(),
        None => vec![None],
    };
    let mut report = Report {
        scopes: scopes.len(),
        fields: plan
            .fields
            .iter()
            .map(|f| FieldReport::new(&f.name, f.kind))
            .collect(),
    };
    let mut items = Vec::with_capacity(scopes.len());
    for scope in scopes {
        let mut data = Map::new();
        for (field, seen) in plan.fields.iter().zip(&mut report.fields) {
            let mut found = false;
            let mut typed = |el: ElementRef| {
                let raw = raw_value(el, field.attr.as_deref())?;
                found = true;
                let v = typed_value(raw, field.kind, &base);
                if v.is_null() {
                    seen.unparsed += 1;
                }
                Some(v)
            };
            let value = if field.all {
                Value::Array(
                    select(&doc, scope, &field.css)
                        .filter_map(&mut typed)
                        .filter(|v| !v.is_null())
                        .collect(),
                )
            } else {
                select(&doc, scope, &field.css)
                    .next()
                    .and_then(typed)
                    .unwrap_or(Value::Null)
            };
            seen.matched += usize::from(found);
            data.insert(field.name.clone(), value);
        }
        push_item(&mut items, data, key);
    }

    let next = plan.next.as_ref().and_then(|next| {
        let el = doc.select(&next.css).next()?;
        resolve(&base, el.value().attr(&next.attr)?)
    });
    Ok((
        Page {
            items,
            next: next.filter(|n| !same_page(n, page_url)),
            unchanged: None,
        },
        report,
    ))
}

impl FieldReport {
    fn new(name: &str, kind: FieldType) -> FieldReport {
        FieldReport {
            name: name.to_owned(),
            kind,
            matched: 0,
            unparsed: 0,
        }
    }
}

/// The matches of `css` inside `scope`, or in the whole document.
fn select<'a, 'b>(
    doc: &'a Html,
    scope: Option<ElementRef<'a>>,
    css: &'b Selector,
) -> Box<dyn Iterator<Item = ElementRef<'a>> + 'b>
where
    'a: 'b,
{
    match scope {
        Some(el) => Box::new(el.select(css)),
        None => Box::new(doc.select(css)),
    }
}

/// One match's raw value: the attribute (trimmed) or the text (collapsed);
/// none when the attribute is missing.
fn raw_value(el: ElementRef, attr: Option<&str>) -> Option<String> {
    match attr {
        Some(attr) => el.value().attr(attr).map(|v| v.trim().to_owned()),
        None => Some(collapse(el.text())),
    }
}

/// A raw value typed: null when it does not parse as `kind`.
fn typed_value(raw: String, kind: FieldType, base: &Url) -> Value {
    match kind {
        FieldType::Text => Value::String(raw),
        FieldType::Number => parse_number(&raw).unwrap_or(Value::Null),
        FieldType::Url => url_value(base, &raw),
    }
}

/// Joins text pieces, trimmed, every run of whitespace made one space.
fn collapse<'a>(pieces: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = String::new();
    let mut space = false;
    for piece in pieces {
        for c in piece.chars() {
            if c.is_whitespace() {
                space = !out.is_empty();
            } else {
                if space {
                    out.push(' ');
                    space = false;
                }
                out.push(c);
            }
        }
    }
    out
}

/// The first number in `text`: an optional `-` (or `−`) right before it,
/// digits with optional `,` thousands separators (a comma followed by exactly
/// three digits), and an optional `.` fraction. `£1,234.50` is 1234.5,
/// `12 items` is 12. Exponents are not read (`1e5` is 1), a `-` joined to a
/// word is no sign (`item-12` is 12), and a fraction needs a leading digit
/// (`.5` is 5). Without a fraction the number is an integer; with one, a
/// float (`2.00` is 2.0). `None` when there is no digit.
fn parse_number(text: &str) -> Option<Value> {
    let b = text.as_bytes();
    let start = b.iter().position(u8::is_ascii_digit)?;
    let before = &text[..start];
    let negative = match before
        .strip_suffix('-')
        .or_else(|| before.strip_suffix('−'))
    {
        Some(rest) => !rest.ends_with(|c: char| c.is_alphanumeric()),
        None => false,
    };
    let mut digits = String::with_capacity(b.len() - start + 1);
    if negative {
        digits.push('-');
    }
    let mut fraction = false;
    let mut i = start;
    while let Some(&c) = b.get(i) {
        if c.is_ascii_digit() {
            digits.push(char::from(c));
        } else if c == b',' && !fraction && is_digit_group(b, i + 1) {
            // A thousands separator: skipped.
        } else if c == b'.' && !fraction && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
            fraction = true;
            digits.push('.');
        } else {
            break;
        }
        i += 1;
    }
    if !fraction {
        if let Ok(n) = digits.parse::<i64>() {
            return Some(Value::from(n));
        }
        if let Ok(n) = digits.parse::<u64>() {
            return Some(Value::from(n));
        }
    }
    let float = digits.parse::<f64>().ok()?;
    Number::from_f64(float).map(Value::Number)
}

/// Exactly three digits at `at`, not followed by a fourth.
fn is_digit_group(b: &[u8], at: usize) -> bool {
    b.len() >= at + 3
        && b[at..at + 3].iter().all(u8::is_ascii_digit)
        && !b.get(at + 3).is_some_and(u8::is_ascii_digit)
}

/// Resolves `href` against `base`, keeping only http and https URLs; an empty
/// `href` is no URL.
fn resolve(base: &Url, href: &str) -> Option<Url> {
    let href = href.trim();
    if href.is_empty() {
        return None;
    }
    let url = base.join(href).ok()?;
    matches!(url.scheme(), "http" | "https").then_some(url)
}

fn url_value(base: &Url, href: &str) -> Value {
    resolve(base, href).map_or(Value::Null, |u| Value::String(u.into()))
}

/// Are `a` and `b` one page, fragments aside?
fn same_page(a: &Url, b: &Url) -> bool {
    a[..url::Position::AfterQuery] == b[..url::Position::AfterQuery]
}

/// Keeps an item unless it carries nothing: every field null, `""` or `[]`
/// (an empty scope match, say).
fn push_item(items: &mut Vec<Item>, data: Map<String, Value>, key: &[String]) {
    let empty = data.values().all(|v| match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    });
    if !empty {
        items.push(Item::new(data, key));
    }
}

// ---------------------------------------------------------------- json

fn extract_json(
    body: &[u8],
    page_url: &Url,
    plan: &JsonPlan,
    key: &[String],
) -> Result<(Page, Report), ExtractError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    // serde_json's recursion limit (128) stays on: deep input is an error,
    // not a stack overflow.
    let doc: Value = serde_json::from_slice(body).map_err(|e| ExtractError::Json(e.to_string()))?;
    let not_an_item = |problem: &str| ExtractError::NotAnItem {
        scope: plan.scope.clone(),
        problem: problem.to_owned(),
    };
    let elements: &[Value] = match doc.pointer(&plan.scope) {
        None => return Err(not_an_item("is not in the page")),
        Some(Value::Array(list)) => list,
        Some(Value::Null) => &[],
        Some(object @ Value::Object(_)) => std::slice::from_ref(object),
        Some(Value::String(_)) => return Err(not_an_item("is a string, not an object or array")),
        Some(Value::Number(_)) => return Err(not_an_item("is a number, not an object or array")),
        Some(Value::Bool(_)) => return Err(not_an_item("is a boolean, not an object or array")),
    };
    let mut report = Report {
        scopes: elements.len(),
        fields: plan
            .fields
            .iter()
            .map(|f| FieldReport::new(&f.name, f.kind))
            .collect(),
    };
    let mut items = Vec::with_capacity(elements.len());
    for element in elements {
        let mut data = Map::new();
        for (field, seen) in plan.fields.iter().zip(&mut report.fields) {
            let found = element.pointer(&field.path).filter(|v| !v.is_null());
            seen.matched += usize::from(found.is_some());
            let mut typed = |v: &Value| {
                let out = json_value(v, field.kind, page_url);
                if out.is_null() && !v.is_null() {
                    seen.unparsed += 1;
                }
                out
            };
            let value = if field.all {
                let list: Vec<Value> = match found {
                    None => Vec::new(),
                    Some(Value::Array(list)) => list
                        .iter()
                        .map(&mut typed)
                        .filter(|v| !v.is_null())
                        .collect(),
                    Some(one) => {
                        let v = typed(one);
                        if v.is_null() {
                            Vec::new()
                        } else {
                            vec![v]
                        }
                    }
                };
                Value::Array(list)
            } else {
                found.map_or(Value::Null, typed)
            };
            data.insert(field.name.clone(), value);
        }
        push_item(&mut items, data, key);
    }
    let next = plan
        .next
        .as_deref()
        .and_then(|p| doc.pointer(p))
        .and_then(Value::as_str)
        .and_then(|href| resolve(page_url, href));
    Ok((
        Page {
            items,
            next: next.filter(|n| !same_page(n, page_url)),
            unchanged: None,
        },
        report,
    ))
}

/// A JSON value by field type. Text: strings are collapsed, numbers and
/// booleans become their string form, objects and arrays are kept as they
/// are. Number: numbers as they are, strings read like HTML text. URL:
/// strings resolved against the page URL. Anything else is null.
fn json_value(v: &Value, kind: FieldType, page_url: &Url) -> Value {
    match (kind, v) {
        (FieldType::Text, Value::String(s)) => Value::String(collapse([s.as_str()])),
        (FieldType::Text, Value::Number(n)) => Value::String(n.to_string()),
        (FieldType::Text, Value::Bool(b)) => Value::String(b.to_string()),
        (FieldType::Text, other @ (Value::Object(_) | Value::Array(_))) => other.clone(),
        (FieldType::Number, Value::Number(_)) => v.clone(),
        (FieldType::Number, Value::String(s)) => parse_number(s).unwrap_or(Value::Null),
        (FieldType::Url, Value::String(s)) => url_value(page_url, s),
        _ => Value::Null,
    }
}

// ---------------------------------------------------------------- depth gate

/// Bytes handed to the parser between two depth checks: small, so that the
/// nesting one slice can add before it is seen (a third of it, `<a>` after
/// `<a>`) costs little.
const SLICE: usize = 1024;

/// Parses `text` like `Html::parse_document`, but a slice at a time: after
/// each slice the tree builder's state is measured, and the parse is given up
/// once it holds more than `limit` elements.
fn parse_gated(text: &str, limit: usize) -> Result<Html, ExtractError> {
    let sink = HtmlTreeSink::new(Html::new_document());
    let mut parser = html5ever::parse_document(sink, ParseOpts::default());
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + SLICE).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        parser.process(StrTendril::from_slice(&text[start..end]));
        start = end;
        let depth = builder_depth(&parser);
        if depth > limit {
            return Err(ExtractError::TooDeep { depth, limit });
        }
    }
    Ok(parser.finish())
}

/// Counts the handles a tree builder holds.
struct Counter(Cell<usize>);

impl Tracer for Counter {
    type Handle = <HtmlTreeSink as TreeSink>::Handle;

    fn trace_handle(&self, _node: &Self::Handle) {
        self.0.set(self.0.get() + 1);
    }
}

/// How deep the tree builder is: its open elements (html5ever walks them for
/// most start tags) and its active formatting elements (walked when they are
/// reconstructed), plus its `<head>` and `<form>` pointers. The stack of open
/// elements is private to html5ever; its tracing hook is the public way to
/// see it.
fn builder_depth(parser: &Parser<HtmlTreeSink>) -> usize {
    let counter = Counter(Cell::new(0));
    parser.tokenizer.sink.trace_handles(&counter);
    // The document itself is traced too.
    counter.0.get().saturating_sub(1)
}

#[cfg(test)]
mod tests;
