//! The guard on the cluster port: what a stranger can make this node hold
//! before it has proved it knows the cookie.
//!
//! ractor_cluster's own listener reads whole frames (up to the limit set for
//! authenticated traffic, 64 MiB) from anyone, and gives a handshake no
//! deadline. So the public cluster port is this guard's, and the NodeServer's
//! own listener is bound to an ephemeral loopback port that no peer is told
//! about (the NodeServer advertises the guard's port).
//!
//! What flows in and out:
//! - **In:** TCP connections on the public cluster port ([`bind`]).
//! - **Out:** each connection admitted becomes an incoming session of the
//!   NodeServer, handed over as an in-memory pipe
//!   (`NodeServerMessage::ConnectionOpenedExternal`) labelled with the peer's
//!   address; the guard copies bytes between the socket and the pipe.
//! - **In:** the NodeServer's "session authenticated" events, through
//!   [`GuardEvents`], matched by that label. They lift the limits.
//!
//! Until its session has authenticated, a connection:
//! - counts against [`Limits::max_pending`]; a connection over the cap is
//!   closed at once;
//! - is closed when [`Limits::handshake_timeout`] has passed;
//! - is forwarded frame by frame (a u64 big-endian length, then the payload),
//!   and only frames of at most [`Limits::frame_bytes`] and
//!   [`Limits::total_bytes`] in all. Bytes beyond that are not read at all
//!   until the session authenticates (a peer's first frames after its own
//!   side of the handshake can overtake the event), so the socket's buffers
//!   are all the memory they take.
//!
//! Once authenticated, bytes are copied both ways unchanged, and only
//! ractor_cluster's own frame limit applies.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::ActorRef;
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{
    BoxRead, BoxWrite, ClusterBidiStream, NodeEventSubscription, NodeServerMessage,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Largest frame forwarded before authentication. The handshake's frames
/// carry a node name, an address, a challenge and a digest: well under this.
pub const PRE_AUTH_FRAME_BYTES: u64 = 4 * 1024;
/// Bytes (length prefixes included) forwarded before authentication, in all.
pub const PRE_AUTH_BYTES: u64 = 16 * 1024;
/// Connections allowed to be unauthenticated at once.
pub const MAX_PENDING: usize = 128;

/// Capacity of the in-memory pipe between the guard and the NodeServer, each way.
const PIPE_BYTES: usize = 64 * 1024;
/// What one read from a socket takes, before authentication.
const READ_CHUNK: usize = 4 * 1024;
/// Length of a frame's length prefix.
const FRAME_HEADER: usize = 8;
/// Least time between two warnings about refused connections.
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);
/// Wait after a failed accept (out of file descriptors, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// What an unauthenticated connection may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub frame_bytes: u64,
    pub total_bytes: u64,
    pub max_pending: usize,
}

impl Limits {
    /// The defaults, with the handshake deadline as configured.
    pub fn new(handshake_timeout: Duration) -> Limits {
        Limits {
            handshake_timeout,
            frame_bytes: PRE_AUTH_FRAME_BYTES,
            total_bytes: PRE_AUTH_BYTES,
            max_pending: MAX_PENDING,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("binding the cluster port {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("not authenticated within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("the node server is gone")]
    ServerGone,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Binds the public cluster port (0 picks a free one; the listener knows which).
pub async fn bind(ip: IpAddr, port: u16) -> Result<TcpListener, GuardError> {
    let addr = SocketAddr::new(ip, port);
    TcpListener::bind(addr)
        .await
        .map_err(|source| GuardError::Bind { addr, source })
}

/// What [`FrameMeter::feed`] did with a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// The whole chunk was taken (passed on, or kept as part of a length prefix).
    All,
    /// A frame over the limits begins here: `chunk[rest..]` was not taken,
    /// and its length prefix is [`FrameMeter::kept`].
    Held { rest: usize },
}

/// Follows the framing of what a peer sends before authenticating, and says
/// what may pass: whole frames within the limits. A length prefix is passed
/// on only once it is complete and admitted.
#[derive(Debug)]
pub struct FrameMeter {
    frame_limit: u64,
    /// Bytes that may still pass.
    budget: u64,
    header: [u8; FRAME_HEADER],
    /// Bytes of `header` received.
    have: usize,
    /// Bytes of the current frame's payload still to pass.
    payload_left: u64,
}

impl FrameMeter {
    pub fn new(frame_limit: u64, budget: u64) -> FrameMeter {
        FrameMeter {
            frame_limit,
            budget,
            header: [0; FRAME_HEADER],
            have: 0,
            payload_left: 0,
        }
    }

    /// Appends to `out` the bytes of `chunk` that may pass.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Fed {
        let mut i = 0;
        loop {
            if self.payload_left > 0 {
                let n = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len() - i);
                out.extend_from_slice(&chunk[i..i + n]);
                i += n;
                self.payload_left -= n as u64;
            }
            if i == chunk.len() && self.have < FRAME_HEADER {
                return Fed::All;
            }
            let n = (FRAME_HEADER - self.have).min(chunk.len() - i);
            self.header[self.have..self.have + n].copy_from_slice(&chunk[i..i + n]);
            self.have += n;
            i += n;
            if self.have < FRAME_HEADER {
                return Fed::All;
            }
            let len = u64::from_be_bytes(self.header);
            let cost = len.saturating_add(FRAME_HEADER as u64);
            if len > self.frame_limit || cost > self.budget {
                return Fed::Held { rest: i };
            }
            self.budget -= cost;
            out.extend_from_slice(&self.header);
            self.have = 0;
            self.payload_left = len;
        }
    }

    /// The bytes of a length prefix taken but not passed on: to send first
    /// once the limits are lifted.
    pub fn kept(&self) -> &[u8] {
        &self.header[..self.have]
    }
}

/// Connections waiting for authentication, by the label the NodeServer knows
/// them by (the peer's address), each with a connection number so that a
/// finished connection never removes a newer one's entry.
#[derive(Clone, Default)]
struct Pending(Arc<Mutex<Waiting>>);

/// Label → (connection number, where to say "authenticated").
type Waiting = HashMap<String, (u64, oneshot::Sender<()>)>;

impl Pending {
    fn insert(&self, label: &str, id: u64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(label.to_owned(), (id, tx));
        rx
    }

    fn remove(&self, label: &str, id: u64) {
        let mut map = self.lock();
        if map.get(label).is_some_and(|(i, _)| *i == id) {
            map.remove(label);
        }
    }

    fn authenticated(&self, label: &str) {
        if let Some((_, tx)) = self.lock().remove(label) {
            let _ = tx.send(());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The NodeServer's session events, as the guard needs them: subscribe it
/// with `NodeServerMessage::SubscribeToEvents`.
pub struct GuardEvents(Pending);

impl NodeEventSubscription for GuardEvents {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}
    fn node_session_disconnected(&self, _ses: NodeServerSessionInformation) {}
    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        if ses.is_server {
            self.0.authenticated(&ses.peer_addr);
        }
    }
}

/// The NodeServer's end of a guarded connection.
struct Upstream {
    pipe: DuplexStream,
    label: String,
}

impl ClusterBidiStream for Upstream {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (r, w) = tokio::io::split(self.pipe);
        (Box::new(r), Box::new(w))
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.label.clone())
    }

    fn local_label(&self) -> Option<String> {
        Some("cluster-guard".to_owned())
    }
}

/// The accept loop on the public cluster port.
pub struct Guard {
    listener: TcpListener,
    limits: Limits,
    pending: Pending,
}

impl Guard {
    pub fn new(listener: TcpListener, limits: Limits) -> Guard {
        Guard {
            listener,
            limits,
            pending: Pending::default(),
        }
    }

    /// The subscription that tells this guard which sessions authenticated.
    pub fn events(&self) -> GuardEvents {
        GuardEvents(self.pending.clone())
    }

    /// Accepts connections until dropped (abort the task that runs it); the
    /// connections in progress end with it.
    pub async fn run(self, server: ActorRef<NodeServerMessage>) {
        let permits = Arc::new(Semaphore::new(self.limits.max_pending));
        let mut conns = JoinSet::new();
        let mut next_id = 0u64;
        let mut refused = 0u64;
        let mut last_warn: Option<Instant> = None;
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let (conn, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "cluster port accept failed");
                            tokio::time::sleep(ACCEPT_BACKOFF).await;
                            continue;
                        }
                    };
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        // Counted, and warned about in bulk: an attack must
                        // not cost a log line per connection.
                        refused += 1;
                        if last_warn.is_none_or(|t| t.elapsed() >= REFUSAL_WARN_EVERY) {
                            tracing::warn!(
                                refused,
                                max_pending = self.limits.max_pending,
                                "cluster port full of unauthenticated connections; refusing more"
                            );
                            last_warn = Some(Instant::now());
                            refused = 0;
                        }
                        drop(conn);
                        continue;
                    };
                    let _ = conn.set_nodelay(true);
                    next_id += 1;
                    let id = next_id;
                    let label = peer.to_string();
                    let authed = self.pending.insert(&label, id);
                    let pending = self.pending.clone();
                    let server = server.clone();
                    let limits = self.limits;
                    conns.spawn(async move {
                        let result = serve(conn, &label, server, limits, authed, permit).await;
                        pending.remove(&label, id);
                        match result {
                            Ok(()) => tracing::debug!(%peer, "cluster connection closed"),
                            Err(e @ GuardError::HandshakeTimeout(_)) => {
                                tracing::debug!(%peer, error = %e, "unauthenticated cluster connection closed")
                            }
                            Err(e) => tracing::debug!(%peer, error = %e, "cluster connection ended"),
                        }
                    });
                }
                Some(_) = conns.join_next() => {}
            }
        }
    }
}

/// One connection: hands the NodeServer its end of a pipe, then copies both
/// ways until either side closes (or the handshake deadline passes).
async fn serve(
    conn: TcpStream,
    label: &str,
    server: ActorRef<NodeServerMessage>,
    limits: Limits,
    authed: oneshot::Receiver<()>,
    permit: OwnedSemaphorePermit,
) -> Result<(), GuardError> {
    let deadline = Instant::now() + limits.handshake_timeout;
    let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
    server
        .cast(NodeServerMessage::ConnectionOpenedExternal {
            stream: Box::new(Upstream {
                pipe: theirs,
                label: label.to_owned(),
            }),
            is_server: true,
        })
        .map_err(|_| GuardError::ServerGone)?;
    let (mut from_peer, mut to_peer) = conn.into_split();
    let (mut from_node, mut to_node) = tokio::io::split(ours);
    tokio::select! {
        r = tokio::io::copy(&mut from_node, &mut to_peer) => {
            r?;
            Ok(())
        }
        r = inbound(&mut from_peer, &mut to_node, limits, deadline, authed, permit) => r,
    }
}

/// The peer-to-node direction: metered until authentication, then copied.
async fn inbound<R, W>(
    from_peer: &mut R,
    to_node: &mut W,
    limits: Limits,
    deadline: Instant,
    authed: oneshot::Receiver<()>,
    permit: OwnedSemaphorePermit,
) -> Result<(), GuardError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // A dropped sender (the entry removed) never authenticates.
    let authed = async move {
        if authed.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(authed);
    let timeout = GuardError::HandshakeTimeout(limits.handshake_timeout);
    let mut meter = FrameMeter::new(limits.frame_bytes, limits.total_bytes);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut out = Vec::with_capacity(READ_CHUNK + FRAME_HEADER);
    let mut held: Option<Range<usize>> = None;
    loop {
        if held.is_some() {
            tokio::select! {
                biased;
                _ = &mut authed => break,
                _ = tokio::time::sleep_until(deadline) => return Err(timeout),
            }
        }
        let n = tokio::select! {
            biased;
            _ = &mut authed => break,
            _ = tokio::time::sleep_until(deadline) => return Err(timeout),
            r = from_peer.read(&mut buf) => r?,
        };
        if n == 0 {
            return Ok(());
        }
        out.clear();
        let fed = meter.feed(&buf[..n], &mut out);
        tokio::time::timeout_at(deadline, to_node.write_all(&out))
            .await
            .map_err(|_| GuardError::HandshakeTimeout(limits.handshake_timeout))??;
        if let Fed::Held { rest } = fed {
            held = Some(rest..n);
        }
    }
    drop(permit);
    to_node.write_all(meter.kept()).await?;
    if let Some(rest) = held {
        to_node.write_all(&buf[rest]).await?;
    }
    drop(buf);
    drop(out);
    tokio::io::copy(from_peer, to_node).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Vec<u8> {
        let mut f = (len as u64).to_be_bytes().to_vec();
        f.extend(std::iter::repeat_n(7u8, len));
        f
    }

    #[test]
    fn small_frames_pass_whole() {
        let mut m = FrameMeter::new(100, 1000);
        let mut out = Vec::new();
        let bytes = [frame(10), frame(0), frame(100)].concat();
        assert_eq!(m.feed(&bytes, &mut out), Fed::All);
        assert_eq!(out, bytes);
        assert!(m.kept().is_empty());
    }

    #[test]
    fn a_length_prefix_split_across_reads_passes_once_complete() {
        let mut m = FrameMeter::new(100, 1000);
        let bytes = frame(20);
        let mut out = Vec::new();
        for b in &bytes[..5] {
            assert_eq!(m.feed(std::slice::from_ref(b), &mut out), Fed::All);
        }
        assert!(out.is_empty(), "a partial prefix is kept back");
        assert_eq!(m.kept(), &bytes[..5]);
        assert_eq!(m.feed(&bytes[5..12], &mut out), Fed::All);
        assert_eq!(out, &bytes[..12]);
        assert_eq!(m.feed(&bytes[12..], &mut out), Fed::All);
        assert_eq!(out, bytes);
    }

    #[test]
    fn a_large_frame_is_held_at_its_prefix() {
        let mut m = FrameMeter::new(100, 1000);
        let small = frame(10);
        let mut bytes = small.clone();
        bytes.extend((64u64 << 20).to_be_bytes());
        bytes.extend([1, 2, 3]);
        let mut out = Vec::new();
        assert_eq!(
            m.feed(&bytes, &mut out),
            Fed::Held {
                rest: small.len() + 8
            }
        );
        assert_eq!(out, small);
        assert_eq!(m.kept(), (64u64 << 20).to_be_bytes());
        // Fed again while held, it takes nothing more.
        out.clear();
        assert_eq!(m.feed(&[9, 9], &mut out), Fed::Held { rest: 0 });
        assert!(out.is_empty());
    }

    #[test]
    fn the_total_is_capped_prefixes_included() {
        let mut m = FrameMeter::new(100, 3 * (8 + 50));
        let mut out = Vec::new();
        let bytes = [frame(50), frame(50), frame(50), frame(50)].concat();
        assert_eq!(m.feed(&bytes, &mut out), Fed::Held { rest: 3 * 58 + 8 });
        assert_eq!(out.len(), 3 * 58);
    }

    #[test]
    fn a_payload_split_across_reads_is_followed() {
        let mut m = FrameMeter::new(100, 1000);
        let bytes = [frame(30), frame(200)].concat();
        let mut out = Vec::new();
        assert_eq!(m.feed(&bytes[..20], &mut out), Fed::All);
        assert_eq!(m.feed(&bytes[20..38], &mut out), Fed::All);
        assert_eq!(out, &bytes[..38]);
        assert_eq!(m.feed(&bytes[38..], &mut out), Fed::Held { rest: 8 });
    }

    #[test]
    fn an_entry_is_removed_only_by_its_own_connection() {
        let p = Pending::default();
        let _old = p.insert("127.0.0.1:9", 1);
        let mut new = p.insert("127.0.0.1:9", 2);
        p.remove("127.0.0.1:9", 1);
        p.authenticated("127.0.0.1:9");
        assert!(new.try_recv().is_ok());
    }

    #[tokio::test]
    async fn after_authentication_everything_passes_and_before_it_the_deadline_closes() {
        let limits = Limits {
            handshake_timeout: Duration::from_millis(200),
            ..Limits::new(Duration::ZERO)
        };
        let permits = Arc::new(Semaphore::new(1));

        // Held at a large frame, then lifted: the held bytes follow in order.
        let big = frame(10_000);
        let (mut peer, mut guard_side) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = oneshot::channel();
        let mut node = Vec::new();
        let permit = permits.clone().try_acquire_owned().unwrap();
        let task = tokio::spawn(async move {
            let r = inbound(
                &mut guard_side,
                &mut node,
                Limits {
                    handshake_timeout: Duration::from_secs(30),
                    ..limits
                },
                Instant::now() + Duration::from_secs(30),
                rx,
                permit,
            )
            .await;
            (r, node)
        });
        peer.write_all(&frame(3)).await.unwrap();
        peer.write_all(&big).await.unwrap();
        tokio::task::yield_now().await;
        tx.send(()).unwrap();
        peer.shutdown().await.unwrap();
        drop(peer);
        let (r, node) = task.await.unwrap();
        r.unwrap();
        assert_eq!(node, [frame(3), big].concat());
        assert_eq!(permits.available_permits(), 1, "the permit is returned");

        // Never authenticated: closed at the deadline.
        let (_peer, mut guard_side) = tokio::io::duplex(1024);
        let (_tx, rx) = oneshot::channel::<()>();
        let mut node = Vec::new();
        let start = Instant::now();
        let r = inbound(
            &mut guard_side,
            &mut node,
            limits,
            start + limits.handshake_timeout,
            rx,
            permits.clone().try_acquire_owned().unwrap(),
        )
        .await;
        assert!(matches!(r, Err(GuardError::HandshakeTimeout(_))), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
