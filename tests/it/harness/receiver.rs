//! A webhook receiver for the tests: a real HTTP server (axum) on
//! 127.0.0.2, the address test nodes may reach, that checks each delivery's
//! `X-Gleaner-Signature` (HMAC-SHA256 of the body with the shared secret),
//! records every request (delivery id, body, what it answered) and can be
//! told to answer 500 to the next few, or to answer the next few late.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use hmac::{KeyInit, Mac};
use serde_json::Value;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    /// `X-Gleaner-Delivery`.
    pub id: String,
    pub signature_ok: bool,
    pub body: Value,
    pub raw: Bytes,
    /// What the receiver answered.
    pub answered: u16,
    /// It was held (answered late, as a slow receiver would).
    pub held: bool,
}

impl Received {
    /// The changes as (item key, item version, seq).
    pub fn changes(&self) -> Vec<(String, u64, u64)> {
        self.body["changes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        (
                            c["item"]["key"].as_str().unwrap_or("").to_owned(),
                            c["item"]["version"].as_u64().unwrap_or(0),
                            c["seq"].as_u64().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

struct Inner {
    secret: String,
    log: Mutex<Vec<Received>>,
    fail_next: AtomicU32,
    hold_next: AtomicU32,
}

pub struct Receiver {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

/// Does `signature` (`sha256=<hex>`) sign `body` with `secret`?
pub fn verify(secret: &str, body: &[u8], signature: &str) -> bool {
    let Some(hex) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex) else {
        return false;
    };
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

async fn receive(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let signature_ok = verify(&inner.secret, &body, &header("x-gleaner-signature"));
    let failing = inner
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let held = inner
        .hold_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let status = if !signature_ok {
        StatusCode::UNAUTHORIZED
    } else if failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    inner.log.lock().unwrap().push(Received {
        at: Instant::now(),
        id: header("x-gleaner-delivery"),
        signature_ok,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: body,
        answered: status.as_u16(),
        held,
    });
    if held {
        // A slow receiver: the sender waits (or dies) meanwhile.
        tokio::time::sleep(HOLD).await;
    }
    status
}

/// How long a held request waits before its answer.
pub const HOLD: std::time::Duration = std::time::Duration::from_secs(8);

impl Receiver {
    pub async fn start(secret: &str) -> Receiver {
        let inner = Arc::new(Inner {
            secret: secret.to_owned(),
            log: Mutex::new(Vec::new()),
            fail_next: AtomicU32::new(0),
            hold_next: AtomicU32::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0")
            .await
            .expect("127.0.0.2 is on the loopback interface");
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(receive).with_state(inner.clone());
        tokio::spawn(axum::serve(listener, app).into_future());
        Receiver { addr, inner }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Answers 500 to the next `n` deliveries.
    pub fn fail_next(&self, n: u32) {
        self.inner.fail_next.store(n, Ordering::SeqCst);
    }

    /// Records the next `n` deliveries at once but answers them (200) only
    /// after [`HOLD`].
    pub fn hold_next(&self, n: u32) {
        self.inner.hold_next.store(n, Ordering::SeqCst);
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.inner.log.lock().unwrap().clone()
    }

    /// The requests answered 2xx, in arrival order.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.answered))
            .collect()
    }
}
