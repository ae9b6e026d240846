//! A stranger on the cluster port: raw TCP connections that never
//! authenticate, each one of a few kinds of abuse, and how long the node let
//! each one stay open.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one connection does once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abuse {
    /// A well-formed first handshake frame (the node's name), then silence.
    HalfHandshake,
    /// Three bytes of a frame's eight-byte length prefix, then silence.
    PartialPrefix,
    /// A frame declared 64 MiB long, then as many bytes as the node takes
    /// within a second.
    HugeFrame,
    /// 4 KiB of random bytes.
    RandomBytes,
}

/// What became of one connection.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub abuse: Abuse,
    /// How long the connection took to be established.
    pub connect: Duration,
    /// From connected to the node closing the connection (or giving up).
    pub open_for: Duration,
    /// The node closed it (EOF or reset) before `wait` ran out.
    pub closed: bool,
    /// Bytes the node sent back (a half handshake gets the node's challenge).
    pub answered: usize,
}

/// The 1,000-connection mix: 3 in 10 half handshakes, 3 partial prefixes,
/// 1 huge frame, 3 random.
pub fn mix(n: usize) -> Vec<Abuse> {
    (0..n)
        .map(|i| match i % 10 {
            0..=2 => Abuse::HalfHandshake,
            3..=5 => Abuse::PartialPrefix,
            6 => Abuse::HugeFrame,
            _ => Abuse::RandomBytes,
        })
        .collect()
}

/// One length-prefixed protobuf field: tag, length, bytes (lengths < 128).
fn field(tag: u8, bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len() < 128);
    let mut f = vec![tag, bytes.len() as u8];
    f.extend_from_slice(bytes);
    f
}

/// ractor_cluster's first client frame: NetworkMessage { auth: { name: {
/// name, connection_string } } }, after its u64 big-endian length.
pub fn name_frame(i: usize) -> Vec<u8> {
    let name = [
        field(0x0a, format!("stranger-{i}@127.0.0.1").as_bytes()),
        field(0x1a, b"127.0.0.1:1"),
    ]
    .concat();
    let payload = field(0x0a, &field(0x0a, &name));
    let mut frame = (payload.len() as u64).to_be_bytes().to_vec();
    frame.extend(payload);
    frame
}

/// Opens one connection, abuses it, and waits (at most `wait`) for the node
/// to close it.
pub async fn visit(addr: SocketAddr, abuse: Abuse, i: usize, wait: Duration) -> Outcome {
    let asked = Instant::now();
    let connected = tokio::time::timeout(wait, TcpStream::connect(addr)).await;
    let connect = asked.elapsed();
    let start = Instant::now();
    let outcome = |closed, answered| Outcome {
        abuse,
        connect,
        open_for: start.elapsed(),
        closed,
        answered,
    };
    let Ok(Ok(mut conn)) = connected else {
        // Not even accepted: nothing held.
        return outcome(true, 0);
    };
    // Write errors mean the node already closed the connection.
    let _ = match abuse {
        Abuse::HalfHandshake => conn.write_all(&name_frame(i)).await,
        Abuse::PartialPrefix => conn.write_all(&[0, 0, 0]).await,
        Abuse::HugeFrame => {
            let chunk = vec![0x5a; 64 * 1024];
            let flood = async {
                conn.write_all(&(64u64 << 20).to_be_bytes()).await?;
                for _ in 0..128 {
                    conn.write_all(&chunk).await?;
                }
                Ok::<_, std::io::Error>(())
            };
            tokio::time::timeout(Duration::from_secs(1), flood)
                .await
                .unwrap_or(Ok(()))
        }
        Abuse::RandomBytes => {
            let noise: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
            conn.write_all(&noise).await
        }
    };
    let mut answered = 0;
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(wait.saturating_sub(start.elapsed()), async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answered += n,
            }
        }
    })
    .await
    .is_ok();
    outcome(closed, answered)
}
