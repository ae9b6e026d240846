//! The write path's store half, without the network: catalogue-shaped pages
//! (20 items of title, price, url and tags, keyed by url) applied through the
//! real [`Store`] the way an Aggregator applies them (`apply_replicated`, a
//! group-commit flush every few pages), in passes over the same catalogue:
//!
//! 1. first pass: every item new;
//! 2. second pass: the same items again, unchanged (only `last_seen` moves);
//! 3. third pass: one item in 20 with a new price.
//!
//! `cargo bench --bench store [PAGES] [PASSES] [READS]` (default 2,000
//! pages, 3 passes, no reads) prints each pass's pages/s, CPU per page and
//! ratio to the first; then walks the collection READS times in pages of 100
//! items as the query API writes them (`ItemBytes::write_view`, the query
//! cache off), and prints items/s. After a second pass every item's
//! `last_seen` comes from the key directory, not from its stored bytes.
//! Wall-clock figures move with the machine's load; for a figure that does
//! not, count instructions with callgrind (every thread, sled's included),
//! once with one pass and once with two: the difference is the second pass.
//!
//! ```text
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null BENCH_EXE 300 1
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null BENCH_EXE 300 2
//! ```
//!
//! With `--named`, the second pass applies each page by name
//! (`apply_seen`: each item's key and content hash, as a page answered 304
//! hands its remembered items over) instead of with its items' data.
//!
//! With `--floor`, the same first pass is then written with sled alone, each
//! layout in a fresh database with the same flushes, to show what sled costs
//! whatever gleaner does around it: the page's 20 stored items as 20 values
//! (the bytes the store writes for them); the same plus the batch copied as
//! one more value (the replication log's entry); the batch alone (what an
//! unchanged page's log entry costs); and the 20 items as one value.

use std::time::Instant;

use chrono::Utc;
use gleaner::domain::StoredItem;
use gleaner::domain::{Item, ItemBatch, ItemName, ReplicatedBatch, SeenBatch};
use gleaner::store::Store;
use serde_json::json;

/// The node's allocator, so the figures are the node's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const ITEMS: usize = 20;
/// Pages applied between two flushes (group commit covers a few at a time).
const FLUSH_EVERY: usize = 4;

fn page(n: usize, pass: usize) -> Vec<Item> {
    (0..ITEMS)
        .map(|i| {
            // The third pass changes one item in 20.
            let cents = if pass >= 3 && i == n % ITEMS { 50 } else { 99 };
            let data = json!({
                "title": format!("Book {n}-{i} of a catalogue"),
                "price": format!("{i}.{cents}").parse::<f64>().unwrap(),
                "url": format!("http://127.0.0.1/catalogue/item-{n}-{i}.html"),
                "tags": [format!("t{}", i % 3), "all"],
            });
            Item::new(data.as_object().unwrap().clone(), &["url".into()])
        })
        .collect()
}

/// Process CPU time (user + system, every thread) in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after ')'.
    match (ticks(11), ticks(12)) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => 0.0,
    }
}

fn main() {
    let numbers: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .filter_map(|a| a.parse().ok())
        .collect();
    let pages = numbers.first().copied().unwrap_or(2_000);
    let passes = numbers.get(1).copied().unwrap_or(3);
    let reads = numbers.get(2).copied().unwrap_or(0);
    let floor = std::env::args().any(|a| a == "--floor");
    let named = std::env::args().any(|a| a == "--named");
    let dir = tempfile::tempdir().expect("a scratch directory");
    let store = Store::open(dir.path(), 64 << 20).expect("the store opens");
    let mut seq = 0;
    let mut first_rate = None;
    println!("store: {pages} pages of {ITEMS} items a pass, a flush every {FLUSH_EVERY} pages");
    for pass in 1..=passes {
        let batches: Vec<Vec<Item>> = (0..pages).map(|n| page(n, pass)).collect();
        // As a page answered 304 remembers them: named beforehand.
        let mut names: Vec<Vec<ItemName>> = if named && pass == 2 {
            let name = |items: &Vec<Item>| items.iter().map(ItemName::from).collect();
            batches.iter().map(name).collect()
        } else {
            Vec::new()
        };
        let (cpu0, wall0) = (cpu_seconds(), Instant::now());
        let (mut inserted, mut changed, mut unchanged) = (0, 0, 0);
        for (n, items) in batches.into_iter().enumerate() {
            seq += 1;
            let rb = ReplicatedBatch {
                origin: "bench-node".into(),
                seq,
                batch: ItemBatch {
                    source: format!("cat-{:04}", n / 100),
                    collection: "catalogue".into(),
                    fetched_at: Utc::now(),
                    items,
                },
            };
            let out = if let Some(names) = names.get_mut(n) {
                let seen = SeenBatch {
                    source: rb.batch.source,
                    collection: rb.batch.collection,
                    fetched_at: rb.batch.fetched_at,
                    names: std::mem::take(names),
                };
                let applied = store.apply_seen("bench-node", seq, &seen, false);
                applied
                    .expect("the batch applies")
                    .expect("every item as named")
                    .0
            } else {
                store.apply_replicated(&rb).expect("the batch applies")
            };
            inserted += out.inserted;
            changed += out.changed;
            unchanged += out.unchanged;
            if seq % FLUSH_EVERY as u64 == 0 {
                store.flush().expect("the flush");
            }
        }
        store.flush().expect("the flush");
        let wall = wall0.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        let rate = pages as f64 / wall;
        let ratio = rate / *first_rate.get_or_insert(rate);
        println!(
            "pass {pass}: {rate:>8.0} pages/s, {:>6.3} ms CPU a page, {ratio:.2} x the first pass \
             (inserted {inserted}, changed {changed}, unchanged {unchanged})",
            1000.0 * cpu / pages as f64
        );
    }
    if floor {
        for layout in [
            Layout::Items,
            Layout::ItemsAndLog,
            Layout::LogOnly,
            Layout::OneValue,
        ] {
            let (rate, cpu_ms) = sled_floor(pages, layout);
            println!(
                "sled alone, {:<34} {rate:>8.0} pages/s, {cpu_ms:>6.3} ms CPU a page",
                layout.name()
            );
        }
    }
    for walk in 1..=reads {
        let (cpu0, wall0) = (cpu_seconds(), Instant::now());
        let (items, bytes) = walk_collection(&store);
        let wall = wall0.elapsed().as_secs_f64();
        println!(
            "walk {walk}: {:>9.0} items/s, {:>6.3} µs CPU an item ({items} items, {bytes} bytes)",
            items as f64 / wall,
            1e6 * (cpu_seconds() - cpu0) / items as f64
        );
    }
}

/// Reads the whole collection in pages of 100 items, each page written as
/// the query API writes it; returns the items and bytes written.
fn walk_collection(store: &Store) -> (usize, usize) {
    const PAGE: usize = 100;
    let (mut items, mut bytes) = (0, 0);
    let mut after: Option<String> = None;
    loop {
        let mut body = Vec::with_capacity(PAGE * 512);
        let (mut n, mut last) = (0, String::new());
        store
            .each_item("catalogue", after.as_deref(), |item| {
                if n == PAGE {
                    return Ok(false);
                }
                item.write_view(&mut body)?;
                body.push(b',');
                n += 1;
                last.clear();
                last.push_str(item.key());
                Ok(true)
            })
            .expect("the walk");
        items += n;
        bytes += body.len();
        if n < PAGE {
            return (items, bytes);
        }
        after = Some(last);
    }
}

/// A page as sled alone is given it: each item's key and stored bytes, and
/// the batch as its log entry holds it.
type Encoded = (Vec<(String, Vec<u8>)>, Vec<u8>);

/// What sled alone is given for each page, in [`sled_floor`].
#[derive(Clone, Copy)]
enum Layout {
    Items,
    ItemsAndLog,
    LogOnly,
    OneValue,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Items => "20 items as 20 values:",
            Layout::ItemsAndLog => "20 items + the batch as a log value:",
            Layout::LogOnly => "the batch as a log value alone:",
            Layout::OneValue => "20 items as one value:",
        }
    }
}

/// First-pass pages written with sled alone in `layout` (one `apply_batch`
/// and one flush every [`FLUSH_EVERY`] pages, as the store does), in a
/// fresh database; returns pages/s and process CPU a page in ms.
fn sled_floor(pages: usize, layout: Layout) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let db = sled::Config::new()
        .path(dir.path().join("db"))
        .cache_capacity(64 << 20)
        .open()
        .expect("sled opens");
    let tree = db.open_tree("items:catalogue").expect("the tree");
    let now = Utc::now();
    let encoded: Vec<Encoded> = (0..pages)
        .map(|n| {
            let items = page(n, 1);
            let stored = items
                .iter()
                .map(|item| {
                    let s = StoredItem {
                        hash: item.content_hash(),
                        key: item.key.clone(),
                        data: item.data.clone(),
                        first_seen: now,
                        last_seen: now,
                        version: 1,
                        source: format!("cat-{:04}", n / 100),
                    };
                    (item.key.clone(), serde_json::to_vec(&s).expect("encodes"))
                })
                .collect();
            let rb = ReplicatedBatch {
                origin: "bench-node".into(),
                seq: n as u64 + 1,
                batch: ItemBatch {
                    source: format!("cat-{:04}", n / 100),
                    collection: "catalogue".into(),
                    fetched_at: now,
                    items,
                },
            };
            (stored, serde_json::to_vec(&rb).expect("encodes"))
        })
        .collect();
    let (cpu0, wall0) = (cpu_seconds(), Instant::now());
    let mut batch = sled::Batch::default();
    for (n, (stored, log)) in encoded.iter().enumerate() {
        let log_key = [&[0xFA][..], &(n as u64).to_be_bytes()].concat();
        match layout {
            Layout::Items | Layout::ItemsAndLog => {
                for (key, value) in stored {
                    batch.insert(key.as_bytes(), value.as_slice());
                }
                if matches!(layout, Layout::ItemsAndLog) {
                    batch.insert(log_key, log.as_slice());
                }
            }
            Layout::LogOnly => batch.insert(log_key, log.as_slice()),
            Layout::OneValue => {
                let value: Vec<u8> = stored.iter().flat_map(|(_, v)| v.iter().copied()).collect();
                batch.insert(stored[0].0.as_bytes(), value);
            }
        }
        if (n + 1) % FLUSH_EVERY == 0 {
            tree.apply_batch(std::mem::take(&mut batch))
                .expect("sled applies");
            tree.flush().expect("the flush");
        }
    }
    tree.apply_batch(batch).expect("sled applies");
    tree.flush().expect("the flush");
    let wall = wall0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    (pages as f64 / wall, 1000.0 * cpu / pages as f64)
}
