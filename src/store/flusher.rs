//! Group commit. Writers apply their changes, then ask the [`Flusher`] for
//! a flush that covers them. One flush runs at a time; every request that
//! arrives while it runs is served by the next flush, so N concurrent
//! writers cost one or two fsyncs instead of N.
//!
//! Before a flush starts, the flushing task yields once to the scheduler,
//! so that writers ready at that moment join it: fewer flushes, each
//! covering more pages, without a timer's latency.
//!
//! A waiter is a callback, run on the flushing task once the flush that
//! covers it is done: a writer that only has to answer someone (a lone
//! node's batch) hands over its answer and needs no task of its own.

use tokio::sync::{mpsc, oneshot};

use super::{Store, StoreError};

/// Told how the flush covering it went; runs on the flushing task, so it
/// must not block.
type Waiter = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A cheap, cloneable handle on the node's flushing task.
#[derive(Clone)]
pub struct Flusher {
    tx: mpsc::UnboundedSender<Waiter>,
}

impl Flusher {
    /// Starts the flushing task for `store` (on the current runtime).
    pub fn start(store: Store) -> Flusher {
        let (tx, mut rx) = mpsc::unbounded_channel::<Waiter>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Let every task that is ready now run first (one turn of the
                // scheduler, no timer): writers that were about to ask are
                // covered by this flush rather than the next (side by side,
                // a first-pass page's CPU fell by about a tenth).
                tokio::task::yield_now().await;
                // Everyone who asked before this flush starts is covered by it.
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                let store = store.clone();
                let result = tokio::task::spawn_blocking(move || store.flush())
                    .await
                    .map_err(|e| StoreError::Task(e.to_string()))
                    .and_then(|r| r);
                if let Err(e) = &result {
                    tracing::error!(error = %e, waiters = waiters.len(), "flush failed");
                }
                for w in waiters {
                    w(result.as_ref().map(|_| ()).map_err(StoreError::shared));
                }
            }
        });
        Flusher { tx }
    }

    /// Resolves once every write made before this call is durable.
    pub async fn flushed(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.then(move |r| {
            let _ = tx.send(r);
        });
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Calls `then` once every write made before this call is durable (or
    /// the flush failed), on the flushing task: it must not block.
    pub fn then(&self, then: impl FnOnce(Result<(), StoreError>) + Send + 'static) {
        if let Err(mpsc::error::SendError(w)) = self.tx.send(Box::new(then)) {
            w(Err(stopped()));
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the flusher stopped".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_writers_share_flushes_and_all_are_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20).unwrap();
        let flusher = Flusher::start(store.clone());
        let waits = (0..50).map(|i| {
            let (store, flusher) = (store.clone(), flusher.clone());
            async move {
                store.meta_put(&format!("k{i}"), b"v").expect("write");
                flusher.flushed().await
            }
        });
        for r in futures_util::future::join_all(waits).await {
            r.unwrap();
        }
        drop(store);
    }
}
