//! Extraction on fixture pages: HTML and JSON rules, values, the depth gate.

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
    let field = |class: &str| json!({ "css": format!("a.{class}"), "attr": "href", "type": "url" });
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
    assert!(matches!(&missing, ExtractError::NotAnItem { scope, .. } if scope == "/data/items"));
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

#[test]
fn the_report_counts_matches_and_unparsed_values_per_field() {
    let rules = rules(
        json!({
            "scope": "li",
            "fields": {
                "name": "b",
                "price": { "css": "i", "type": "number" },
                "link": { "css": "a", "attr": "href" },
                "detail": { "css": "a", "attr": "href", "follow": { "fields": { "upc": "td" } } }
            }
        }),
        &[],
    );
    let body = "<ul><li><b>one</b><i>£3</i><a href='/d/1'>x</a></li>\
                <li><b>two</b><i>free</i></li><li><i>n/a</i></li></ul>";
    let (page, report) = extract_reported(
        body.as_bytes(),
        &url("http://e.org/l"),
        &rules,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(report.scopes, 3);
    let by_name = |n: &str| report.fields.iter().find(|f| f.name == n).unwrap().clone();
    assert_eq!((by_name("name").matched, by_name("name").unparsed), (2, 0));
    assert_eq!(
        (by_name("price").matched, by_name("price").unparsed),
        (3, 2)
    );
    assert_eq!(by_name("link").matched, 1);
    // A following field is a resolved URL until the caller fetches it.
    assert_eq!(page.items[0].data["detail"], json!("http://e.org/d/1"));
    assert_eq!(rules.follows().len(), 1);
    assert_eq!(rules.follows()[0].field, "detail");
    // A detail page is one object, nulls kept.
    let detail = &rules.follows()[0].rules;
    let object = extract_object(
        b"<p>no table</p>",
        &url("http://e.org/d/1"),
        detail,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(Value::Object(object), json!({ "upc": null }));
}
