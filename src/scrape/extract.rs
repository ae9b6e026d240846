//! Extraction: a fetched page in, items out. Pure and runtime-free: it needs
//! no actor, no network and no async, so it is tested on fixture pages.
//!
//! HTML goes through html5ever (the `scraper` crate) and CSS selectors; JSON
//! through serde_json and JSON pointers. Before HTML is parsed, a linear
//! **depth gate** estimates how deeply its elements nest and refuses pages
//! deeper than [`Limits::max_depth`]: html5ever's tree building is quadratic in
//! nesting depth (200,000 nested `<div>`s take minutes), and a parse on a
//! blocking thread cannot be interrupted by a timeout. JSON nesting is bounded
//! by serde_json's own recursion limit (128).

use scraper::{ElementRef, Html, Selector};
use serde_json::{Map, Value};
use url::Url;

use crate::domain::{ExtractSpec, FieldType, Format, Item};

/// Bounds on what a page may make the parser do.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Deepest element nesting accepted (browsers stop nesting near 512).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: 512 }
    }
}

/// Why a page yielded no items.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("the page nests elements too deep (more than {limit} levels)")]
    TooDeep { limit: usize },
    #[error("the page is not valid JSON: {0}")]
    Json(String),
    #[error("{field}: {message}")]
    Selector { field: String, message: String },
    #[error("the scope {0} matches nothing in the page")]
    ScopeMissing(String),
}

/// Where a value is: a compiled CSS selector or a JSON pointer.
enum Locator {
    Css(Selector),
    Pointer(String),
}

struct FieldPlan {
    name: String,
    at: Locator,
    attr: Option<String>,
    kind: FieldType,
    all: bool,
}

struct NextPlan {
    at: Locator,
    attr: String,
}

/// A source's extraction rules, compiled once and reused every run.
pub struct Rules {
    format: Format,
    scope: Option<Locator>,
    fields: Vec<FieldPlan>,
    next: Option<NextPlan>,
    key: Vec<String>,
    base: Selector,
}

/// What one page yielded.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Item>,
    /// The next page to fetch, if the rules found one.
    pub next: Option<Url>,
}

fn locate(format: Format, field: &str, raw: &str) -> Result<Locator, ExtractError> {
    match format {
        Format::Html => {
            Selector::parse(raw)
                .map(Locator::Css)
                .map_err(|e| ExtractError::Selector {
                    field: field.to_owned(),
                    message: format!("invalid CSS selector: {e}"),
                })
        }
        Format::Json => Ok(Locator::Pointer(raw.to_owned())),
    }
}

impl Rules {
    /// Compiles a validated spec's rules.
    pub fn compile(spec: &ExtractSpec, key: &[String]) -> Result<Rules, ExtractError> {
        let format = spec.format;
        let scope = spec
            .scope
            .as_deref()
            .map(|s| locate(format, "extract.scope", s))
            .transpose()?;
        let mut fields = Vec::with_capacity(spec.fields.len());
        for (name, field) in &spec.fields {
            let rule = field.rule(format);
            let at_name = format!("extract.fields.{name}");
            let raw = match format {
                Format::Html => rule.css.as_deref(),
                Format::Json => rule.path.as_deref(),
            }
            .ok_or_else(|| ExtractError::Selector {
                field: at_name.clone(),
                message: "has no locator".into(),
            })?;
            fields.push(FieldPlan {
                name: name.clone(),
                at: locate(format, &at_name, raw)?,
                attr: rule.attr.clone(),
                kind: rule.kind,
                all: rule.all,
            });
        }
        let next = match &spec.next_page {
            None => None,
            Some(n) => {
                let raw = match format {
                    Format::Html => n.css.as_deref(),
                    Format::Json => n.path.as_deref(),
                };
                match raw {
                    None => None,
                    Some(raw) => Some(NextPlan {
                        at: locate(format, "extract.next_page", raw)?,
                        attr: n.attr.clone().unwrap_or_else(|| "href".into()),
                    }),
                }
            }
        };
        Ok(Rules {
            format,
            scope,
            fields,
            next,
            key: key.to_vec(),
            base: Selector::parse("base[href]").expect("a constant selector"),
        })
    }
}

/// Extracts the items of one page; `page_url` is its final URL.
pub fn extract(
    body: &[u8],
    page_url: &Url,
    rules: &Rules,
    limits: &Limits,
) -> Result<Page, ExtractError> {
    match rules.format {
        Format::Html => extract_html(body, page_url, rules, limits),
        Format::Json => extract_json(body, page_url, rules),
    }
}

fn extract_html(
    body: &[u8],
    page_url: &Url,
    rules: &Rules,
    limits: &Limits,
) -> Result<Page, ExtractError> {
    let text = String::from_utf8_lossy(body);
    if exceeds_depth(text.as_bytes(), limits.max_depth) {
        return Err(ExtractError::TooDeep {
            limit: limits.max_depth,
        });
    }
    let doc = Html::parse_document(&text);
    let base = doc
        .select(&rules.base)
        .next()
        .and_then(|b| b.value().attr("href"))
        .and_then(|href| page_url.join(href.trim()).ok())
        .unwrap_or_else(|| page_url.clone());
    let scopes: Vec<ElementRef> = match &rules.scope {
        Some(Locator::Css(sel)) => doc.select(sel).collect(),
        _ => vec![doc.root_element()],
    };
    let mut items = Vec::with_capacity(scopes.len());
    for scope in scopes {
        let mut data = Map::new();
        for field in &rules.fields {
            let Locator::Css(sel) = &field.at else {
                continue;
            };
            let mut values = scope
                .select(sel)
                .map(|el| html_value(el, field.attr.as_deref(), field.kind, &base));
            let value = if field.all {
                Value::Array(values.collect())
            } else {
                values.next().unwrap_or(Value::Null)
            };
            data.insert(field.name.clone(), value);
        }
        push_item(&mut items, data, &rules.key);
    }
    let next = match &rules.next {
        Some(NextPlan {
            at: Locator::Css(sel),
            attr,
        }) => doc
            .select(sel)
            .next()
            .and_then(|el| el.value().attr(attr))
            .and_then(|href| resolve(&base, href)),
        _ => None,
    };
    Ok(Page {
        items,
        next: next.filter(|n| !same_page(n, page_url)),
    })
}

fn html_value(el: ElementRef, attr: Option<&str>, kind: FieldType, base: &Url) -> Value {
    let raw = match attr {
        Some(a) => match el.value().attr(a) {
            Some(v) => collapse(v),
            None => return Value::Null,
        },
        None => collapse(&el.text().collect::<String>()),
    };
    typed(raw, kind, base)
}

fn typed(raw: String, kind: FieldType, base: &Url) -> Value {
    match kind {
        FieldType::Text => Value::String(raw),
        FieldType::Number => parse_number(&raw).unwrap_or(Value::Null),
        FieldType::Url => resolve(base, &raw).map_or(Value::Null, |u| Value::String(u.to_string())),
    }
}

/// Trims and collapses every run of whitespace to one space.
fn collapse(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// The first number in `s`: an optional `-`, digits with optional `,`
/// thousands separators, an optional `.` fraction (`£1,234.50` is 1234.5).
/// Exponents are not read (`1e5` is 1). Integers stay integers.
fn parse_number(s: &str) -> Option<Value> {
    let b = s.as_bytes();
    let start = b.iter().position(u8::is_ascii_digit)?;
    let negative = start > 0 && b[start - 1] == b'-';
    let mut digits = String::new();
    let mut fraction = false;
    let mut i = start;
    while i < b.len() {
        let c = b[i];
        let next_is_digit = b.get(i + 1).is_some_and(u8::is_ascii_digit);
        if c.is_ascii_digit() {
            digits.push(c as char);
        } else if c == b',' && !fraction && next_is_digit {
            // a thousands separator
        } else if c == b'.' && !fraction && next_is_digit {
            fraction = true;
            digits.push('.');
        } else {
            break;
        }
        i += 1;
    }
    if negative {
        digits.insert(0, '-');
    }
    if fraction {
        digits
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
    } else {
        match digits.parse::<i64>() {
            Ok(n) => Some(Value::from(n)),
            Err(_) => digits
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map(Value::Number),
        }
    }
}

/// Resolves `href` against `base`, keeping only http and https URLs.
fn resolve(base: &Url, href: &str) -> Option<Url> {
    let url = base.join(href.trim()).ok()?;
    matches!(url.scheme(), "http" | "https").then_some(url)
}

fn same_page(a: &Url, b: &Url) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    a.set_fragment(None);
    b.set_fragment(None);
    a == b
}

/// Keeps an item unless every field came out empty.
fn push_item(items: &mut Vec<Item>, data: Map<String, Value>, key: &[String]) {
    let empty = data.values().all(|v| match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    });
    if !empty {
        items.push(Item::new(data, key));
    }
}

fn extract_json(body: &[u8], page_url: &Url, rules: &Rules) -> Result<Page, ExtractError> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| ExtractError::Json(e.to_string()))?;
    let scope = match &rules.scope {
        Some(Locator::Pointer(p)) => doc
            .pointer(p)
            .ok_or_else(|| ExtractError::ScopeMissing(p.clone()))?,
        _ => &doc,
    };
    let elements: Vec<&Value> = match scope {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    let mut items = Vec::with_capacity(elements.len());
    for element in elements {
        let mut data = Map::new();
        for field in &rules.fields {
            let Locator::Pointer(p) = &field.at else {
                continue;
            };
            let found = element.pointer(p);
            let value = if field.all {
                let list: Vec<Value> = match found {
                    Some(Value::Array(a)) => a
                        .iter()
                        .map(|v| json_typed(v, field.kind, page_url))
                        .collect(),
                    Some(Value::Null) | None => Vec::new(),
                    Some(v) => vec![json_typed(v, field.kind, page_url)],
                };
                Value::Array(list)
            } else {
                found.map_or(Value::Null, |v| json_typed(v, field.kind, page_url))
            };
            data.insert(field.name.clone(), value);
        }
        push_item(&mut items, data, &rules.key);
    }
    let next = match &rules.next {
        Some(NextPlan {
            at: Locator::Pointer(p),
            ..
        }) => doc
            .pointer(p)
            .and_then(Value::as_str)
            .and_then(|href| resolve(page_url, href)),
        _ => None,
    };
    Ok(Page {
        items,
        next: next.filter(|n| !same_page(n, page_url)),
    })
}

/// A JSON value by field type: text trims strings and keeps other values as
/// they are; numbers parse strings; URLs resolve strings.
fn json_typed(v: &Value, kind: FieldType, base: &Url) -> Value {
    match (kind, v) {
        (FieldType::Text, Value::String(s)) => Value::String(collapse(s)),
        (FieldType::Text, other) => other.clone(),
        (FieldType::Number, Value::Number(_)) => v.clone(),
        (FieldType::Number, Value::String(s)) => parse_number(s).unwrap_or(Value::Null),
        (FieldType::Url, Value::String(s)) => {
            resolve(base, s).map_or(Value::Null, |u| Value::String(u.to_string()))
        }
        _ => Value::Null,
    }
}

/// Elements that never hold children.
const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source",
    "track", "wbr", "keygen", "frame", "basefont", "bgsound",
];
/// Elements a sibling closes implicitly: not counted, so that a long run of
/// unclosed `<p>` or `<li>` is not mistaken for nesting.
const IMPLIED: &[&str] = &[
    "p", "li", "dt", "dd", "option", "optgroup", "tr", "td", "th", "thead", "tbody", "tfoot", "rp",
    "rt", "rb", "rtc", "colgroup", "caption",
];
/// Elements whose content is raw text: tags inside them are not tags.
const RAW_TEXT: &[&str] = &[
    "script", "style", "textarea", "title", "xmp", "noscript", "iframe", "noembed", "noframes",
];

/// Does the document nest elements deeper than `limit`? A single pass that
/// keeps a stack of open element names (never more than `limit`): a close tag
/// pops up to its matching open element and is ignored when nothing matches,
/// as a browser's tree builder would, so stray close tags cannot hide nesting.
fn exceeds_depth(html: &[u8], limit: usize) -> bool {
    let n = html.len();
    let mut stack: Vec<String> = Vec::new();
    let mut i = 0;
    while i < n {
        let Some(lt) = html[i..].iter().position(|&b| b == b'<') else {
            break;
        };
        i += lt;
        let rest = &html[i..];
        if rest.starts_with(b"<!--") {
            i = find(html, i + 4, b"-->").map_or(n, |p| p + 3);
            continue;
        }
        match rest.get(1) {
            Some(b'!') | Some(b'?') => {
                i = find(html, i + 2, b">").map_or(n, |p| p + 1);
            }
            Some(b'/') => {
                let (name, end) = tag_name(html, i + 2);
                i = skip_tag(html, end);
                if name.is_empty() {
                    continue;
                }
                if let Some(pos) = stack.iter().rposition(|open| *open == name) {
                    stack.truncate(pos);
                }
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let (name, end) = tag_name(html, i + 1);
                let (after, self_closing) = scan_attributes(html, end);
                i = after;
                let named = name.as_str();
                if self_closing || VOID.contains(&named) || IMPLIED.contains(&named) {
                    continue;
                }
                if RAW_TEXT.contains(&named) {
                    // Skip to the matching close tag; it is then read as a close.
                    i = find_close(html, i, named).unwrap_or(n);
                    continue;
                }
                stack.push(name);
                if stack.len() > limit {
                    return true;
                }
            }
            _ => i += 1,
        }
    }
    false
}

fn find(html: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if from >= html.len() {
        return None;
    }
    html[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Position of `</name` (case-insensitive) at or after `from`.
fn find_close(html: &[u8], from: usize, name: &str) -> Option<usize> {
    let mut i = from;
    while let Some(p) = find(html, i, b"</") {
        let candidate = &html[p + 2..];
        if candidate.len() >= name.len()
            && candidate[..name.len()].eq_ignore_ascii_case(name.as_bytes())
        {
            return Some(p);
        }
        i = p + 2;
    }
    None
}

/// Reads a tag name (lowercased, at most 32 bytes kept) starting at `from`.
fn tag_name(html: &[u8], from: usize) -> (String, usize) {
    let mut end = from;
    while end < html.len()
        && (html[end].is_ascii_alphanumeric() || html[end] == b'-' || html[end] == b':')
    {
        end += 1;
    }
    let kept = &html[from..end.min(from + 32)];
    (String::from_utf8_lossy(kept).to_ascii_lowercase(), end)
}

/// Skips a tag's attributes (quotes respected) to just past its `>`; says
/// whether the tag closed itself with `/>`.
fn scan_attributes(html: &[u8], from: usize) -> (usize, bool) {
    let mut i = from;
    let mut quote: Option<u8> = None;
    let mut last = 0u8;
    while i < html.len() {
        let c = html[i];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'"' || c == b'\'' => quote = Some(c),
            None if c == b'>' => return (i + 1, last == b'/'),
            None => {}
        }
        if !c.is_ascii_whitespace() {
            last = c;
        }
        i += 1;
    }
    (html.len(), false)
}

fn skip_tag(html: &[u8], from: usize) -> usize {
    find(html, from, b">").map_or(html.len(), |p| p + 1)
}

/// Distinct keys in a page, for tests and diagnostics.
pub fn key_count(items: &[Item]) -> usize {
    items
        .iter()
        .map(|i| i.key.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// `Rules` is shared with blocking threads.
const _: fn() = || {
    fn check<T: Send + Sync + 'static>() {}
    check::<Rules>();
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SourceSpec;
    use serde_json::json;
    use std::time::Instant;

    const CATALOGUE: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/catalogue.html"
    ));

    fn rules(extract: Value, key: &[&str]) -> Rules {
        let spec: SourceSpec = serde_json::from_value(json!({
            "id": "t", "url": "http://example.org/", "collection": "t", "extract": extract, "key": key
        }))
        .unwrap();
        spec.validate().unwrap();
        Rules::compile(&spec.extract, &spec.key).unwrap()
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
                "next_page": { "css": "li.next a" }
            }),
            &["url"],
        )
    }

    fn page_url() -> Url {
        Url::parse("http://127.0.0.2:8000/catalogue/page-1.html").unwrap()
    }

    #[test]
    fn a_catalogue_page() {
        let page = extract(
            CATALOGUE.as_bytes(),
            &page_url(),
            &catalogue_rules(),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(page.items.len(), 20);
        assert_eq!(key_count(&page.items), 20);
        let first = &page.items[0].data;
        assert_eq!(first["title"], "Book 1");
        assert_eq!(first["name"], "Book 1", "text is trimmed and collapsed");
        assert_eq!(first["price"], json!(1.99));
        assert_eq!(first["url"], "http://127.0.0.2:8000/catalogue/item-1.html");
        assert_eq!(first["tags"], json!(["t1", "all"]));
        assert_eq!(first["missing"], Value::Null);
        assert_eq!(first["none"], json!([]));
        assert_eq!(
            page.next.unwrap().as_str(),
            "http://127.0.0.2:8000/catalogue/page-2.html"
        );
        // Same page, same keys.
        let again = extract(
            CATALOGUE.as_bytes(),
            &page_url(),
            &catalogue_rules(),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(page.items[5].key, again.items[5].key);
    }

    #[test]
    fn base_href_javascript_links_and_whole_page_items() {
        let html = r#"<html><head><base href="/shop/"></head><body>
            <h1>  Hello
               World </h1>
            <a class="x" href="item?id=1">one</a><a class="j" href="javascript:alert(1)">j</a>
            <li class="next"><a href="page-1.html">same page</a></li></body></html>"#;
        let r = rules(
            json!({
                "fields": {
                    "h": "h1",
                    "link": { "css": "a.x", "attr": "href", "type": "url" },
                    "js": { "css": "a.j", "attr": "href", "type": "url" }
                },
                "next_page": { "css": "li.next a" }
            }),
            &[],
        );
        let url = Url::parse("http://example.org/shop/page-1.html").unwrap();
        let page = extract(html.as_bytes(), &url, &r, &Limits::default()).unwrap();
        assert_eq!(page.items.len(), 1);
        let d = &page.items[0].data;
        assert_eq!(d["h"], "Hello World");
        assert_eq!(d["link"], "http://example.org/shop/item?id=1");
        assert_eq!(d["js"], Value::Null);
        assert!(
            page.next.is_none(),
            "a link to the page itself is no next page"
        );
    }

    #[test]
    fn numbers() {
        let cases = [
            ("£1,234.50", json!(1234.5)),
            ("-3", json!(-3)),
            ("12 items", json!(12)),
            ("Price: 7.99 EUR", json!(7.99)),
            ("1e5", json!(1)),
            ("1,2,3", json!(123)),
            ("end.", Value::Null),
            ("none", Value::Null),
        ];
        for (text, want) in cases {
            assert_eq!(parse_number(text).unwrap_or(Value::Null), want, "{text}");
        }
    }

    #[test]
    fn the_depth_gate() {
        let nested = |n: usize, tag: &str| {
            format!(
                "{}x{}",
                format!("<{tag}>").repeat(n),
                format!("</{tag}>").repeat(n)
            )
        };
        let started = Instant::now();
        assert!(exceeds_depth(nested(200_000, "div").as_bytes(), 512));
        assert!(started.elapsed().as_millis() < 1000, "the gate is linear");
        assert!(exceeds_depth(nested(600, "div").as_bytes(), 512));
        assert!(!exceeds_depth(nested(400, "div").as_bytes(), 512));
        assert!(
            !exceeds_depth("<p>x".repeat(100_000).as_bytes(), 512),
            "unclosed <p> is not nesting"
        );
        assert!(!exceeds_depth(CATALOGUE.as_bytes(), 64));
        // Siblings do not add up.
        assert!(!exceeds_depth("<div>a</div>".repeat(10_000).as_bytes(), 8));
        // Stray close tags do not hide nesting.
        assert!(exceeds_depth("<div></span>".repeat(1000).as_bytes(), 512));
        // '>' inside a quoted attribute, tags inside scripts and comments.
        assert!(!exceeds_depth(
            format!(
                "<div title='a>b'><script>{}</script><!-- {} --></div>",
                "<div>".repeat(1000),
                "<div>".repeat(1000)
            )
            .as_bytes(),
            512
        ));
        let r = catalogue_rules();
        let err = extract(
            nested(1000, "div").as_bytes(),
            &page_url(),
            &r,
            &Limits::default(),
        )
        .unwrap_err();
        assert!(matches!(err, ExtractError::TooDeep { limit: 512 }));
    }

    #[test]
    fn json_pages() {
        let body = json!({
            "data": {
                "items": [
                    { "id": 1, "name": "  A  b ", "price": "12.50", "link": "/p/1", "tags": ["x", "y"] },
                    { "id": 2, "name": "C", "price": 3, "link": "https://other.example/p/2", "tags": "z" },
                    { "id": null }
                ],
                "next": "/api/items?page=2"
            }
        })
        .to_string();
        let r = rules(
            json!({
                "format": "json", "scope": "/data/items",
                "fields": {
                    "id": "/id", "name": "/name",
                    "price": { "path": "/price", "type": "number" },
                    "link": { "path": "/link", "type": "url" },
                    "tags": { "path": "/tags", "all": true }
                },
                "next_page": { "path": "/data/next" }
            }),
            &["id"],
        );
        let url = Url::parse("http://127.0.0.2:9/api/items?page=1").unwrap();
        let page = extract(body.as_bytes(), &url, &r, &Limits::default()).unwrap();
        assert_eq!(page.items.len(), 2, "an all-empty element is no item");
        let a = &page.items[0].data;
        assert_eq!(
            (a["id"].clone(), a["name"].clone(), a["price"].clone()),
            (json!(1), json!("A b"), json!(12.5))
        );
        assert_eq!(a["link"], "http://127.0.0.2:9/p/1");
        assert_eq!(a["tags"], json!(["x", "y"]));
        assert_eq!(page.items[1].data["tags"], json!(["z"]));
        assert_eq!(
            page.next.unwrap().as_str(),
            "http://127.0.0.2:9/api/items?page=2"
        );

        assert!(matches!(
            extract(b"{not json", &url, &r, &Limits::default()),
            Err(ExtractError::Json(_))
        ));
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            extract(deep.as_bytes(), &url, &r, &Limits::default()),
            Err(ExtractError::Json(_))
        ));
        assert!(matches!(
            extract(b"{\"other\": 1}", &url, &r, &Limits::default()),
            Err(ExtractError::ScopeMissing(_))
        ));
    }
}
