//! Spec validation: every rule names its field.

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

#[test]
fn follow_takes_one_level_of_html_fields() {
    let mut v = books();
    v["extract"]["fields"]["detail"] = serde_json::json!({
        "css": "h3 a", "attr": "href",
        "follow": { "fields": { "upc": "td.upc", "stock": { "css": ".stock", "type": "number" } } }
    });
    let spec = check(v.clone()).unwrap();
    assert!(spec.extract.follows());
    assert_eq!(spec.extract.max_follows, DEFAULT_MAX_FOLLOWS);
    // The default is left out when the spec is shown again.
    let shown = serde_json::to_value(&spec).unwrap();
    assert!(shown["extract"].get("max_follows").is_none());

    let mut nested = v.clone();
    nested["extract"]["fields"]["detail"]["follow"]["fields"]["upc"] =
        serde_json::json!({ "css": "a", "follow": { "fields": { "x": "p" } } });
    assert_eq!(
        field_of(nested),
        "extract.fields.detail.follow.fields.upc.follow"
    );
    let mut bad = v.clone();
    bad["extract"]["fields"]["detail"]["follow"]["fields"]["upc"] = serde_json::json!("[[[");
    assert_eq!(field_of(bad), "extract.fields.detail.follow.fields.upc.css");
    let mut empty = v.clone();
    empty["extract"]["fields"]["detail"]["follow"]["fields"] = serde_json::json!({});
    assert_eq!(field_of(empty), "extract.fields.detail.follow.fields");
    let mut all = v.clone();
    all["extract"]["fields"]["detail"]["all"] = serde_json::json!(true);
    assert_eq!(field_of(all), "extract.fields.detail.all");
    let mut unknown = v.clone();
    unknown["extract"]["fields"]["detail"]["follow"]["depth"] = serde_json::json!(2);
    assert_eq!(field_of(unknown), "extract.fields.detail.follow.depth");
    let mut many = v;
    many["extract"]["max_follows"] = serde_json::json!(MAX_FOLLOWS_LIMIT + 1);
    assert_eq!(field_of(many), "extract.max_follows");
}

#[test]
fn json_sources_do_not_follow() {
    let v = serde_json::json!({
        "id": "api", "url": "https://example.org/api", "collection": "api",
        "extract": { "format": "json", "scope": "/items",
                     "fields": { "link": { "path": "/link", "follow": { "fields": { "x": "/x" } } } } }
    });
    assert_eq!(field_of(v), "extract.fields.link.follow");
}

#[test]
fn browser_rendering_is_for_isolated_html_sources() {
    let mut v = books();
    v["render"] = "browser".into();
    assert_eq!(field_of(v.clone()), "render");
    v["isolated"] = true.into();
    v["extract"]["wait_for"] = "#list article".into();
    v["extract"]["allow_hosts"] =
        serde_json::json!(["cdn.example.org", "127.0.0.1:8000", "*.example.net"]);
    let spec = check(v.clone()).unwrap();
    assert_eq!(spec.render, Render::Browser);
    assert_eq!(
        spec.extract.wait_timeout(),
        std::time::Duration::from_secs(10)
    );
    // The shape round-trips, and an http source keeps its old shape.
    let shown = serde_json::to_value(&spec).unwrap();
    assert_eq!(shown["render"], "browser");
    assert!(serde_json::to_value(check(books()).unwrap())
        .unwrap()
        .get("render")
        .is_none());

    let bad = |path: &str, value: serde_json::Value| {
        let mut w = v.clone();
        let mut at = &mut w;
        let parts: Vec<&str> = path.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            at = &mut at[*p];
        }
        at[parts[parts.len() - 1]] = value;
        field_of(w)
    };
    assert_eq!(
        bad("extract.wait_timeout_ms", 0.into()),
        "extract.wait_timeout_ms"
    );
    assert_eq!(
        bad("extract.wait_timeout_ms", 600_000.into()),
        "extract.wait_timeout_ms"
    );
    assert_eq!(bad("extract.wait_for", "a[".into()), "extract.wait_for");
    assert_eq!(
        bad("extract.allow_hosts", serde_json::json!(["https://x.org/"])),
        "extract.allow_hosts[0]"
    );
    assert_eq!(
        bad("extract.allow_hosts", serde_json::json!(["ok.org", "*"])),
        "extract.allow_hosts[1]"
    );
    assert_eq!(bad("render", "pdf".into()), "render");
    let mut post = v.clone();
    post["request"] = serde_json::json!({ "method": "POST", "body": "x" });
    assert_eq!(field_of(post), "request.method");
    let mut json = v.clone();
    json["extract"] = serde_json::json!({ "format": "json", "fields": { "a": "/a" } });
    assert_eq!(field_of(json), "extract.format");

    // The browser-only options need render browser.
    let mut plain = books();
    plain["extract"]["wait_for"] = "#x".into();
    assert_eq!(field_of(plain), "extract.wait_for");
    let mut plain = books();
    plain["extract"]["wait_timeout_ms"] = 1000.into();
    assert_eq!(field_of(plain), "extract.wait_timeout_ms");
}
