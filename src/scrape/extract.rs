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
use std::sync::LazyLock;

use html5ever::tendril::{StrTendril, TendrilSink};
use html5ever::tree_builder::{Tracer, TreeSink};
use html5ever::{ParseOpts, Parser};
use scraper::{ElementRef, Html, HtmlTreeSink, Selector};
use serde_json::{Map, Number, Value};
use url::Url;

use crate::domain::{locator, ExtractSpec, FieldType, Format, Item};

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
        Ok(Rules {
            plan,
            key: key.to_vec(),
        })
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
        fields.push(HtmlField {
            name: name.clone(),
            css: css(&format!("extract.fields.{name}.css"), rule.css.as_deref())?,
            attr: rule.attr,
            kind: rule.kind,
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
    match &rules.plan {
        Plan::Html(plan) => extract_html(body, page_url, plan, &rules.key, limits),
        Plan::Json(plan) => extract_json(body, page_url, plan, &rules.key),
    }
}

// ---------------------------------------------------------------- html

fn extract_html(
    body: &[u8],
    page_url: &Url,
    plan: &HtmlPlan,
    key: &[String],
    limits: &Limits,
) -> Result<Page, ExtractError> {
    let text = String::from_utf8_lossy(body);
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
    let mut items = Vec::with_capacity(scopes.len());
    for scope in scopes {
        let mut data = Map::new();
        for field in &plan.fields {
            let mut values = select(&doc, scope, &field.css)
                .map(|el| html_value(el, field.attr.as_deref(), field.kind, &base));
            let value = if field.all {
                Value::Array(values.filter(|v| !v.is_null()).collect())
            } else {
                values.next().unwrap_or(Value::Null)
            };
            data.insert(field.name.clone(), value);
        }
        push_item(&mut items, data, key);
    }

    let next = plan.next.as_ref().and_then(|next| {
        let el = doc.select(&next.css).next()?;
        resolve(&base, el.value().attr(&next.attr)?)
    });
    Ok(Page {
        items,
        next: next.filter(|n| !same_page(n, page_url)),
    })
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

/// One match's value: the attribute (trimmed) or the text (collapsed), typed.
fn html_value(el: ElementRef, attr: Option<&str>, kind: FieldType, base: &Url) -> Value {
    let raw = match attr {
        Some(attr) => match el.value().attr(attr) {
            Some(v) => v.trim().to_owned(),
            None => return Value::Null,
        },
        None => collapse(el.text()),
    };
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
) -> Result<Page, ExtractError> {
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
    let mut items = Vec::with_capacity(elements.len());
    for element in elements {
        let mut data = Map::new();
        for field in &plan.fields {
            let found = element.pointer(&field.path);
            let value = if field.all {
                let list: Vec<Value> = match found {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(list)) => list
                        .iter()
                        .map(|v| json_value(v, field.kind, page_url))
                        .filter(|v| !v.is_null())
                        .collect(),
                    Some(one) => {
                        let v = json_value(one, field.kind, page_url);
                        if v.is_null() {
                            Vec::new()
                        } else {
                            vec![v]
                        }
                    }
                };
                Value::Array(list)
            } else {
                found.map_or(Value::Null, |v| json_value(v, field.kind, page_url))
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
    Ok(Page {
        items,
        next: next.filter(|n| !same_page(n, page_url)),
    })
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
mod tests {
    use std::collections::BTreeSet;
    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::*;
    use crate::domain::SourceSpec;

    const CATALOGUE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/catalogue.html"
    ));

    /// Rules from the `extract` part of a spec, validated as the API would.
    fn rules(extract: Value, key: &[&str]) -> Rules {
        let spec = json!({
            "id": "t", "url": "http://example.org/", "collection": "t",
            "extract": extract, "key": key,
        });
        let spec = SourceSpec::from_json(spec.to_string().as_bytes()).unwrap();
        spec.validate().unwrap();
        Rules::compile(&spec.extract, &spec.key).unwrap()
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn html(body: &str, page: &str, rules: &Rules) -> Result<Page, ExtractError> {
        extract(body.as_bytes(), &url(page), rules, &Limits::default())
    }

    fn catalogue_rules() -> Rules {
        rules(
            json!({
                "scope": "article.product",
                "fields": {
                    "title": { "css": "h3 a", "attr": "title" },
                    "name": "h3",
                    "price": { "css": ".price", "type": "number" },
                    "url": { "css": "h3 a", "attr": "href", "type": "url" },
                    "tags": { "css": ".tag", "all": true },
                    "missing": ".nothing-here",
                    "none": { "css": ".nothing-here", "all": true }
                },
                "next_page": { "css": "li.next a", "attr": "href", "max_pages": 50 }
            }),
            &["url"],
        )
    }

    const PAGE_1: &str = "http://127.0.0.2:8000/catalogue/page-1.html";

    #[test]
    fn a_catalogue_page() {
        let page = html(CATALOGUE, PAGE_1, &catalogue_rules()).unwrap();
        assert_eq!(page.items.len(), 20);
        let first = &page.items[0].data;
        assert_eq!(first["title"], "Book 1");
        assert_eq!(first["name"], "Book 1", "bare selector, text trimmed");
        assert_eq!(first["price"], json!(1.99));
        assert_eq!(first["url"], "http://127.0.0.2:8000/catalogue/item-1.html");
        assert_eq!(first["tags"], json!(["t1", "all"]));
        assert_eq!(first["missing"], Value::Null);
        assert_eq!(first["none"], json!([]));
        let last = &page.items[19].data;
        assert_eq!(
            (&last["title"], &last["price"]),
            (&json!("Book 20"), &json!(20.99))
        );
        assert_eq!(
            page.next.as_ref().map(Url::as_str),
            Some("http://127.0.0.2:8000/catalogue/page-2.html")
        );
        let keys: BTreeSet<&str> = page.items.iter().map(|i| i.key.as_str()).collect();
        assert_eq!(keys.len(), 20, "keys are distinct");
        let again = html(CATALOGUE, PAGE_1, &catalogue_rules()).unwrap();
        assert_eq!(again, page, "and stable");
        // The key is the url field's alone: a price change keeps it.
        let repriced = CATALOGUE.replace("£1.99", "£1.49");
        let repriced = html(&repriced, PAGE_1, &catalogue_rules()).unwrap();
        assert_eq!(repriced.items[0].key, page.items[0].key);
        assert_ne!(repriced.items[0].data, page.items[0].data);
    }

    #[test]
    fn text_is_collapsed_and_absent_values_are_null() {
        let body = "<div class=i><h2>  Many \n\t spaced\u{a0} <b>wo</b>rds  </h2>\
                    <a href='x' title='  padded  '>l</a></div>";
        let r = rules(
            json!({
                "scope": ".i",
                "fields": {
                    "h": "h2",
                    "title": { "css": "a", "attr": "title" },
                    "nope": { "css": "a", "attr": "data-nope" },
                    "gone": "h6",
                    "list": { "css": "h6", "all": true },
                    "links": { "css": "a", "attr": "href", "type": "url", "all": true }
                }
            }),
            &[],
        );
        let page = html(body, "http://example.org/dir/", &r).unwrap();
        let d = &page.items[0].data;
        assert_eq!(d["h"], "Many spaced words");
        assert_eq!(d["title"], "padded");
        assert_eq!(d["nope"], Value::Null);
        assert_eq!(d["gone"], Value::Null);
        assert_eq!(d["list"], json!([]));
        assert_eq!(d["links"], json!(["http://example.org/dir/x"]));
    }

    #[test]
    fn urls_honour_base_and_keep_only_the_web() {
        let body = r#"<html><head><base href="/shop/"></head><body>
            <a class="rel" href="item?id=1">one</a>
            <a class="js" href="javascript:alert(1)">js</a>
            <a class="mail" href="mailto:a@example.org">mail</a>
            <a class="abs" href="https://other.example/x#frag">abs</a>
            <a class="empty" href="  ">empty</a>
            <ul class="pager"><li class="next"><a href="page-2.html">next</a></li></ul>
            </body></html>"#;
        let field =
            |class: &str| json!({ "css": format!("a.{class}"), "attr": "href", "type": "url" });
        let r = rules(
            json!({
                "fields": {
                    "rel": field("rel"), "js": field("js"), "mail": field("mail"),
                    "abs": field("abs"), "empty": field("empty")
                },
                "next_page": { "css": "li.next a" }
            }),
            &[],
        );
        let page = html(body, "http://example.org/a/b/page-1.html", &r).unwrap();
        let d = &page.items[0].data;
        assert_eq!(d["rel"], "http://example.org/shop/item?id=1");
        assert_eq!(d["js"], Value::Null);
        assert_eq!(d["mail"], Value::Null);
        assert_eq!(d["abs"], "https://other.example/x#frag");
        assert_eq!(d["empty"], Value::Null);
        assert_eq!(
            page.next.as_ref().map(Url::as_str),
            Some("http://example.org/shop/page-2.html"),
            "the next link resolves against <base> too"
        );

        // Without a <base>, the page URL; an unusable base is ignored.
        let page = html(
            &body.replace("/shop/", "javascript:void(0)"),
            "http://example.org/a/b/page-1.html",
            &r,
        )
        .unwrap();
        assert_eq!(
            page.items[0].data["rel"],
            "http://example.org/a/b/item?id=1"
        );
    }

    #[test]
    fn next_page_is_never_the_page_itself() {
        let r = rules(
            json!({ "fields": { "h": "h1" }, "next_page": { "css": "a.next", "attr": "data-href" } }),
            &[],
        );
        let page = |href: &str| {
            let body = format!("<h1>t</h1><a class=next href=x data-href='{href}'>n</a>");
            html(&body, "http://example.org/list?p=1", &r).unwrap().next
        };
        assert_eq!(page("?p=1"), None);
        assert_eq!(page("?p=1#top"), None, "fragments aside");
        assert_eq!(page("javascript:next()"), None);
        assert_eq!(
            page("?p=2").as_ref().map(Url::as_str),
            Some("http://example.org/list?p=2")
        );
        let body = "<h1>t</h1><a class=next href=x>no data-href</a>";
        assert_eq!(html(body, "http://example.org/", &r).unwrap().next, None);
    }

    #[test]
    fn without_a_scope_the_page_is_one_item() {
        let body = "<html lang=en><head><title> The  Title </title></head>\
                    <body><p class=n>42 items</p></body></html>";
        let r = rules(
            json!({ "fields": {
                "title": "title",
                "lang": { "css": "html", "attr": "lang" },
                "n": { "css": ".n", "type": "number" }
            } }),
            &[],
        );
        let page = html(body, "http://example.org/", &r).unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(
            Value::Object(page.items[0].data.clone()),
            json!({ "title": "The Title", "lang": "en", "n": 42 })
        );
        assert_eq!(page.next, None);
    }

    #[test]
    fn empty_scope_matches_are_no_items() {
        let body = "<div class=i><b>x</b></div><div class=i></div><div class=i><b> </b></div>";
        let r = rules(
            json!({ "scope": ".i", "fields": { "b": "b", "all": { "css": "b", "all": true, "type": "number" } } }),
            &[],
        );
        let page = html(body, "http://example.org/", &r).unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].data["b"], "x");
    }

    #[test]
    fn numbers() {
        let cases = [
            ("£1,234.50", json!(1234.5)),
            ("-3", json!(-3)),
            ("Change: −3.5%", json!(-3.5)),
            ("item-12", json!(12)),
            ("12 items", json!(12)),
            ("Price: 12", json!(12)),
            ("1e5", json!(1)),
            ("1,2,3", json!(1)),
            ("12,345,678", json!(12_345_678)),
            ("1,2345", json!(1)),
            ("2.00", json!(2.0)),
            ("1.2.3", json!(1.2)),
            ("7.", json!(7)),
            (".5", json!(5)),
            ("18446744073709551615", json!(u64::MAX)),
            ("99999999999999999999", json!(1e20)),
            ("end.", Value::Null),
            ("none", Value::Null),
            ("", Value::Null),
        ];
        for (text, want) in cases {
            assert_eq!(parse_number(text).unwrap_or(Value::Null), want, "{text:?}");
        }
        assert!(parse_number("1").unwrap().is_i64());
        assert!(parse_number("2.00").unwrap().is_f64());
    }

    fn nested(n: usize, open: &str, close: &str) -> String {
        format!(
            "<html><body>{}deep{}</body></html>",
            open.repeat(n),
            close.repeat(n)
        )
    }

    fn depth_of(body: &str) -> Result<Page, ExtractError> {
        let r = rules(json!({ "fields": { "b": "body" } }), &[]);
        html(body, "http://example.org/", &r)
    }

    fn assert_too_deep(body: &str) {
        let started = Instant::now();
        let result = depth_of(body);
        assert!(
            matches!(result, Err(ExtractError::TooDeep { limit: 512, depth }) if depth > 512),
            "{result:?}"
        );
        // Not a benchmark: the point is "not minutes", which the gate prevents.
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn the_depth_gate_refuses_deep_pages_quickly() {
        assert_too_deep(&nested(200_000, "<div>", "</div>"));
        assert_too_deep(&nested(600, "<div>", "</div>"));
        // Markup that does not look nested but is, to the tree builder.
        assert_too_deep(&nested(200_000, "<div></b>", ""));
        assert_too_deep(&nested(200_000, "<div/>", ""));
        assert_too_deep(&nested(200_000, "<rt><optgroup><optgroup>", ""));
        assert_too_deep(&nested(200_000, "<svg><div/></svg>", ""));
        assert_too_deep(&nested(200_000, "<table><td>", ""));
        assert_too_deep(&nested(200_000, "<x a\"=1>", ""));
        // Multi-byte text around the slice boundaries is fine.
        assert_too_deep(&nested(600, "<div>é€😀", "</div>"));
        let err = depth_of(&nested(600, "<div>", "</div>")).unwrap_err();
        assert!(err.to_string().contains("beyond the limit of 512"), "{err}");
    }

    #[test]
    fn the_depth_gate_passes_flat_and_normal_pages() {
        let page = depth_of(&nested(400, "<div>", "</div>")).unwrap();
        assert_eq!(page.items[0].data["b"], "deep");
        depth_of(&nested(100_000, "<p>x", "")).unwrap();
        depth_of(&nested(10_000, "<li>x", "")).unwrap();
        depth_of(&nested(10_000, "<div>x</div>", "")).unwrap();
        depth_of(&nested(10_000, "<br><img src=x>", "")).unwrap();
        // Tags inside quoted attributes, scripts, styles and comments are text.
        let hidden = "<div>".repeat(1000);
        let body = format!(
            "<div title='a>{hidden}'><script>var s = '{hidden}';</script>\
             <style>/*{hidden}*/</style><!-- {hidden} --><textarea>{hidden}</textarea>x</div>"
        );
        depth_of(&body).unwrap();
        html(CATALOGUE, PAGE_1, &catalogue_rules()).unwrap();
        // A low limit applies too.
        let low = Limits { max_depth: 2 };
        let r = catalogue_rules();
        assert!(matches!(
            extract(CATALOGUE.as_bytes(), &url(PAGE_1), &r, &low),
            Err(ExtractError::TooDeep { limit: 2, .. })
        ));
    }

    fn json_rules() -> Rules {
        rules(
            json!({
                "format": "json",
                "scope": "/data/items",
                "fields": {
                    "id": { "path": "/id", "type": "number" },
                    "name": "/name",
                    "maker": "/maker/name",
                    "price": { "path": "/price", "type": "number" },
                    "link": { "path": "/link", "type": "url" },
                    "tags": { "path": "/tags", "all": true },
                    "first_tag": "/tags/0",
                    "raw": "/raw"
                },
                "next_page": { "path": "/data/next" }
            }),
            &["id"],
        )
    }

    const API: &str = "http://127.0.0.2:9000/api/items?page=1";

    fn json_page(body: &Value) -> Result<Page, ExtractError> {
        extract(
            body.to_string().as_bytes(),
            &url(API),
            &json_rules(),
            &Limits::default(),
        )
    }

    #[test]
    fn a_json_page() {
        let body = json!({ "data": {
            "items": [
                { "id": 1, "name": "  A \n b ", "maker": { "name": "M" }, "price": "£12.50",
                  "link": "/p/1", "tags": ["x", 2, true], "raw": { "k": [1] } },
                { "id": "2", "name": 7, "price": 3, "link": "javascript:x()", "tags": "z" },
                { "id": null, "tags": [] },
                "not an object"
            ],
            "next": "/api/items?page=2"
        } });
        let page = json_page(&body).unwrap();
        assert_eq!(
            page.items.len(),
            2,
            "elements with nothing in them are no items"
        );
        let a = Value::Object(page.items[0].data.clone());
        assert_eq!(
            a,
            json!({
                "id": 1, "name": "A b", "maker": "M", "price": 12.5,
                "link": "http://127.0.0.2:9000/p/1", "tags": ["x", "2", "true"],
                "first_tag": "x", "raw": { "k": [1] }
            })
        );
        let b = Value::Object(page.items[1].data.clone());
        assert_eq!(
            b,
            json!({
                "id": 2, "name": "7", "maker": null, "price": 3, "link": null,
                "tags": ["z"], "first_tag": null, "raw": null
            })
        );
        assert_eq!(
            page.next.as_ref().map(Url::as_str),
            Some("http://127.0.0.2:9000/api/items?page=2")
        );
        assert_eq!(
            page.items[0].key,
            Item::new(page.items[0].data.clone(), &["id".into()]).key
        );
    }

    #[test]
    fn json_scopes() {
        // One object is one item; null is none; no next link is no next page.
        let one = json!({ "data": { "items": { "id": 5 }, "next": null } });
        let page = json_page(&one).unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.items[0].data["id"], 5);
        assert_eq!(page.next, None);
        let none = json!({ "data": { "items": null } });
        assert!(json_page(&none).unwrap().items.is_empty());
        // A next link back to the page itself is none.
        let same = json!({ "data": { "items": [], "next": API } });
        assert_eq!(json_page(&same).unwrap().next, None);

        let missing = json_page(&json!({ "data": {} })).unwrap_err();
        assert!(
            matches!(&missing, ExtractError::NotAnItem { scope, .. } if scope == "/data/items")
        );
        assert_eq!(
            missing.to_string(),
            "the json scope \"/data/items\" is not in the page"
        );
        let scalar = json_page(&json!({ "data": { "items": "x" } })).unwrap_err();
        assert!(matches!(scalar, ExtractError::NotAnItem { .. }), "{scalar}");

        // No scope: the document is the item.
        let r = rules(
            json!({ "format": "json", "fields": { "n": { "path": "/n", "type": "number" } } }),
            &[],
        );
        let page = extract(
            b"\xEF\xBB\xBF {\"n\": \"1,000\"}",
            &url(API),
            &r,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(page.items[0].data["n"], 1000);
    }

    #[test]
    fn bad_json_is_an_error_not_a_crash() {
        let r = json_rules();
        let limits = Limits::default();
        for body in [
            "{not json".to_owned(),
            String::new(),
            "<html></html>".to_owned(),
            "[".repeat(100_000) + &"]".repeat(100_000),
            "{\"a\":".repeat(100_000),
        ] {
            let err = extract(body.as_bytes(), &url(API), &r, &limits).unwrap_err();
            assert!(matches!(err, ExtractError::Json(_)), "{err}");
            assert!(err.to_string().starts_with("the page is not valid json"));
        }
    }

    #[test]
    fn compile_names_the_bad_locator() {
        let spec: ExtractSpec = serde_json::from_value(json!({
            "scope": "article",
            "fields": { "a": "h3", "price": { "css": "..bad[" } }
        }))
        .unwrap();
        let err = Rules::compile(&spec, &[]).unwrap_err();
        assert!(
            matches!(&err, ExtractError::Selector { field, .. } if field == "extract.fields.price.css"),
            "{err}"
        );
        let spec: ExtractSpec = serde_json::from_value(json!({
            "format": "json", "scope": "items", "fields": { "a": "/a" }
        }))
        .unwrap();
        let err = Rules::compile(&spec, &[]).unwrap_err();
        assert!(
            matches!(&err, ExtractError::Selector { field, .. } if field == "extract.scope"),
            "{err}"
        );
        let spec: ExtractSpec = serde_json::from_value(json!({
            "fields": { "a": { "path": "/a" } }
        }))
        .unwrap();
        let err = Rules::compile(&spec, &[]).unwrap_err();
        assert_eq!(err.to_string(), "extract.fields.a.css: is required");
    }
}
