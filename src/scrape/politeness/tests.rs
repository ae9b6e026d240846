use std::sync::atomic::AtomicUsize;

use super::*;
use crate::scrape::fetch::FetchConfig;

fn fetcher(hosts: HostPolicy) -> Fetcher {
    Fetcher::new(FetchConfig {
        hosts,
        ..FetchConfig::default()
    })
    .unwrap()
}

fn url(s: &str) -> Url {
    Url::parse(s).unwrap()
}

const TTL: Duration = Duration::from_secs(30);

/// Throttles `key` as a permit released after a 429 would, and returns the
/// pause, rounded to whole seconds (the pauses here are whole seconds).
fn throttle(p: &Politeness, key: &str, retry_after: Option<Duration>) -> Duration {
    p.release_local(PermitRelease {
        host: key.into(),
        id: 0,
        outcome: PermitOutcome::Throttled {
            retry_after_ms: retry_after.map(|d| d.as_millis() as u64),
        },
    });
    let until = p.state(key).backoff_until.unwrap();
    let left = (until - Utc::now()).to_std().unwrap_or_default();
    Duration::from_secs((left.as_millis() as u64 + 500) / 1000)
}

#[tokio::test]
async fn pauses_follow_retry_after_else_double() {
    let f = fetcher(HostPolicy::default());
    let p = f.politeness().clone();
    // A permit each makes the gates.
    for u in [
        "http://Example.org:80/a",
        "http://example.org:8080/",
        "http://example.org:81/",
    ] {
        p.permit(&f, &url(u), false, TTL)
            .await
            .unwrap()
            .release(PermitOutcome::Answered);
    }
    let key = "example.org";
    assert_eq!(throttle(&p, key, None), BACKOFF_BASE);
    // A longer pause replaces a shorter one, never the reverse.
    assert_eq!(
        throttle(&p, key, Some(Duration::from_secs(7))),
        Duration::from_secs(7)
    );
    assert_eq!(
        throttle(&p, key, Some(Duration::from_secs(86_400))),
        MAX_BACKOFF
    );
    // Doubling without Retry-After: the fourth throttle in a row is 8 s.
    let other = "example.org:8080";
    assert_eq!(throttle(&p, other, None), BACKOFF_BASE);
    assert_eq!(throttle(&p, other, None), BACKOFF_BASE * 2);
    assert_eq!(throttle(&p, other, None), BACKOFF_BASE * 4);
    // Another host is not affected.
    assert!(p.state("example.org:81").backoff_until.is_none());
}

#[tokio::test]
async fn a_long_pause_refuses_and_a_short_one_waits() {
    let f = fetcher(HostPolicy::default());
    let p = f.politeness().clone();
    let u = url("http://example.org/x");
    let permit = p.permit(&f, &u, false, TTL).await.unwrap();
    permit.release(PermitOutcome::Throttled {
        retry_after_ms: Some(300),
    });
    let asked = Instant::now();
    let permit = p.permit(&f, &u, false, TTL).await.unwrap();
    assert!(
        asked.elapsed() >= Duration::from_millis(280),
        "{:?}",
        asked.elapsed()
    );
    permit.release(PermitOutcome::Throttled {
        retry_after_ms: Some(120_000),
    });
    match p.permit(&f, &u, false, TTL).await {
        Err(r @ Refusal::HostBackoff { .. }) => assert_eq!(r.code(), "host_backoff"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn starts_keep_the_gap_and_in_flight_stays_under_the_limit() {
    let f = fetcher(HostPolicy {
        max_in_flight: 2,
        min_delay_ms: 30,
        obey_robots: false,
    });
    let p = f.politeness().clone();
    let open = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let starts = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (p, f, open, most, starts) = (
            p.clone(),
            f.clone(),
            open.clone(),
            most.clone(),
            starts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = p
                .permit(&f, &url("http://example.org/p"), false, TTL)
                .await
                .unwrap();
            starts.lock().unwrap().push(Instant::now());
            let now_open = open.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now_open, Ordering::SeqCst);
            // Slow responses: the in-flight limit is what holds them.
            tokio::time::sleep(Duration::from_millis(if i % 2 == 0 { 80 } else { 10 })).await;
            open.fetch_sub(1, Ordering::SeqCst);
            permit.release(PermitOutcome::Answered);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut starts = starts.lock().unwrap().clone();
    starts.sort();
    let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
    // The gate grants starts 30 ms apart; what is seen here is when each
    // task woke up, a timer tick or a busy worker thread later than its start
    // (up to ~7 ms on a loaded 2-core machine); their sum is the whole span.
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(15)),
        "{gaps:?}"
    );
    let span = starts[starts.len() - 1] - starts[0];
    assert!(span >= Duration::from_millis(11 * 30 - 5), "{span:?}");
    assert!(
        most.load(Ordering::SeqCst) <= 2,
        "{}",
        most.load(Ordering::SeqCst)
    );
    let state = p.state("example.org");
    assert_eq!((state.in_flight, state.requests), (0, 12));
}

#[tokio::test]
async fn a_dropped_permit_comes_back_and_an_unreturned_one_expires() {
    let f = fetcher(HostPolicy {
        max_in_flight: 1,
        min_delay_ms: 0,
        obey_robots: false,
    });
    let p = f.politeness().clone();
    let u = url("http://example.org/p");
    let permit = p.permit(&f, &u, false, TTL).await.unwrap();
    drop(permit);
    // Held by a holder that never gives it back: taken back after its time.
    let held = p.permit(&f, &u, false, Duration::ZERO).await.unwrap();
    std::mem::forget(held);
    let asked = Instant::now();
    let again = tokio::time::timeout(Duration::from_secs(10), p.permit(&f, &u, false, TTL))
        .await
        .expect("the expired permit is taken back")
        .unwrap();
    assert!(asked.elapsed() >= PERMIT_MARGIN - Duration::from_millis(50));
    again.release(PermitOutcome::Answered);
}

#[test]
fn refusals_carry_their_codes() {
    let r = Refusal::RobotsDisallowed { url: "u".into() };
    assert_eq!(r.code(), "robots_disallowed");
    let r = Refusal::HostBackoff {
        host: "h".into(),
        remaining: Duration::from_secs(90),
    };
    assert_eq!(r.code(), "host_backoff");
    assert!(r.to_string().contains("90s"), "{r}");
    // Through the wire and back.
    let PermitAnswer::Refused {
        code,
        message,
        remaining_ms,
    } = r.answer()
    else {
        panic!()
    };
    let back = Refusal::from_answer("h", &url("http://h/"), &code, message, remaining_ms);
    assert_eq!(back, r);
}

#[test]
fn overrides_change_the_policy_of_one_host() {
    let p = Politeness::new(HostPolicy::default());
    p.set_override(
        "example.org",
        Some(HostOverride {
            min_delay_ms: Some(250),
            ..HostOverride::default()
        }),
    );
    assert_eq!(p.policy("example.org").min_delay_ms, 250);
    assert_eq!(p.policy("example.org").max_in_flight, 8);
    assert_eq!(p.policy("other.org"), HostPolicy::default());
    p.set_override("example.org", None);
    assert_eq!(p.policy("example.org"), HostPolicy::default());
}
