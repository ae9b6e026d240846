//! Extraction against its limit, in one run: the raw html5ever parse rate of a
//! ~30 KB catalogue page (parse only) next to gleaner's extraction of the same
//! page (depth gate + parse + selectors + typing + keys), on one core.
//! Run: `cargo bench --bench extract`. Prints pages/s and the ratio.
//!
//! The two alternate in short rounds and the figures are medians over the
//! rounds, so a change in the machine's speed during the run (a VM's
//! neighbours) moves both alike instead of skewing the ratio.

use std::hint::black_box;
use std::time::{Duration, Instant};

use gleaner::domain::SourceSpec;
use gleaner::scrape::extract::{extract, Limits, Rules};

/// The node's allocator, so the figures are the node's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const ROUNDS: usize = 15;
const ROUND: Duration = Duration::from_millis(400);

/// A catalogue page of 20 products padded with descriptions to about 30 KB,
/// the size of a typical listing page.
fn page() -> String {
    let mut html =
        String::from("<!DOCTYPE html><html><head><title>Catalogue</title></head><body><main>");
    for i in 1..=20 {
        html.push_str(&format!(
            "<article class=\"product\"><h3><a href=\"/catalogue/item-{i}.html\" title=\"Book {i}\">Book {i}</a></h3>\
             <p class=\"price\">£{i}.99</p><span class=\"tag\">t{}</span><span class=\"tag\">all</span>\
             <div class=\"desc\"><p>{}</p></div></article>",
            i % 3,
            "A long description of the book, as shops write them. ".repeat(25)
        ));
    }
    html.push_str("<ul class=\"pager\"><li class=\"next\"><a href=\"page-2.html\">next</a></li></ul></main></body></html>");
    html
}

/// Runs `f` repeatedly for about `budget` and returns calls per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        f();
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let html = page();
    let spec: SourceSpec = serde_json::from_value(serde_json::json!({
        "id": "bench", "url": "http://127.0.0.1/catalogue/page-1.html", "collection": "bench",
        "extract": {
            "scope": "article.product",
            "fields": {
                "title": { "css": "h3 a", "attr": "title" },
                "price": { "css": ".price", "type": "number" },
                "url": { "css": "h3 a", "attr": "href", "type": "url" },
                "tags": { "css": ".tag", "all": true }
            },
            "next_page": { "css": "li.next a" }
        },
        "key": ["url"]
    }))
    .expect("a valid spec");
    spec.validate().expect("a valid spec");
    let rules = Rules::compile(&spec.extract, &spec.key).expect("rules compile");
    let url = url::Url::parse(&spec.url).expect("a URL");
    let limits = Limits::default();
    assert_eq!(
        extract(html.as_bytes(), &url, &rules, &limits)
            .unwrap()
            .items
            .len(),
        20
    );

    let (mut parses, mut fulls, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let parse = rate(ROUND, || {
            black_box(scraper::Html::parse_document(black_box(&html)));
        });
        let full = rate(ROUND, || {
            black_box(extract(black_box(html.as_bytes()), &url, &rules, &limits).unwrap());
        });
        parses.push(parse);
        fulls.push(full);
        ratios.push(full / parse);
    }
    let (parse, full) = (median(&mut parses), median(&mut fulls));
    let kb = html.len() as f64 / 1024.0;
    println!("page: {kb:.1} KiB, 20 items");
    println!(
        "raw html5ever parse:  {parse:8.0} pages/s ({:.1} MiB/s)",
        parse * kb / 1024.0
    );
    println!(
        "gleaner extraction:   {full:8.0} pages/s ({:.0} items/s)",
        full * 20.0
    );
    println!(
        "extraction / raw parse: {:.2} (median of {ROUNDS} rounds; range {:.2}-{:.2})",
        median(&mut ratios),
        ratios[0],
        ratios[ROUNDS - 1]
    );
}

/// Sorts `v` and returns its middle value.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
