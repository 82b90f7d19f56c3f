//! Idempotency: a Store repeated with the same `request_id` gets the first reply and stores
//! nothing new. Both the headnode and the datanodes keep one [`Dedupe`].
//!
//! Concurrent repeats are coalesced: the first caller runs the store, later ones wait for its
//! result. A store that fails leaves no result, so a retry runs again. Memory is bounded: the
//! map keeps the most recent `capacity` keys and forgets the oldest first.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;

/// A bounded map from request id to the reply of the first Store that carried it.
pub struct Dedupe<V> {
    inner: Mutex<Inner<V>>,
    /// How many keys are remembered; the oldest are forgotten first.
    capacity: usize,
}

struct Inner<V> {
    cells: HashMap<String, Arc<OnceCell<V>>>,
    /// Keys in the order they were first seen, for eviction.
    order: VecDeque<String>,
}

/// What [`Dedupe::run`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<V> {
    /// The operation ran now; this is its result.
    Fresh(V),
    /// An earlier operation with the same key had already produced this result.
    Repeat(V),
}

impl<V: Clone> Dedupe<V> {
    /// An empty map that remembers up to `capacity` keys (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                cells: HashMap::new(),
                order: VecDeque::new(),
            }),
            capacity: capacity.max(1),
        }
    }

    /// Remembers `value` as the result for `key`, as if an operation had produced it (used to
    /// reload what a data file already holds).
    pub fn remember(&self, key: &str, value: V) {
        let cell = self.cell(key);
        // A value already present was set by an earlier operation: the first one wins.
        let _ = cell.set(value);
    }

    /// Runs `op` unless an operation with this key already succeeded (or is running, in which
    /// case this waits for it). An empty key means "no idempotency": `op` always runs.
    pub async fn run<F, Fut, E>(&self, key: &str, op: F) -> Result<Outcome<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        if key.is_empty() {
            return op().await.map(Outcome::Fresh);
        }
        let cell = self.cell(key);
        let mut ran = false;
        let value = cell
            .get_or_try_init(|| {
                ran = true;
                op()
            })
            .await?
            .clone();
        Ok(if ran {
            Outcome::Fresh(value)
        } else {
            Outcome::Repeat(value)
        })
    }

    /// How many keys are remembered now.
    pub fn len(&self) -> usize {
        self.lock().cells.len()
    }

    /// True when no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn cell(&self, key: &str) -> Arc<OnceCell<V>> {
        let mut inner = self.lock();
        if let Some(cell) = inner.cells.get(key) {
            return cell.clone();
        }
        let cell = Arc::new(OnceCell::new());
        inner.cells.insert(key.to_string(), cell.clone());
        inner.order.push_back(key.to_string());
        while inner.order.len() > self.capacity {
            if let Some(oldest) = inner.order.pop_front() {
                inner.cells.remove(&oldest);
            }
        }
        cell
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        // The map holds no invariant a panicking holder could break halfway.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn a_repeated_key_runs_once() {
        let d = Dedupe::new(10);
        let runs = AtomicUsize::new(0);
        let op = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(7)
        };
        assert_eq!(d.run("k", op).await, Ok(Outcome::Fresh(7)));
        assert_eq!(
            d.run("k", || async { Ok::<_, ()>(8) }).await,
            Ok(Outcome::Repeat(7))
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_operation_can_be_retried() {
        let d = Dedupe::new(10);
        assert_eq!(
            d.run("k", || async { Err::<u32, _>("boom") }).await,
            Err("boom")
        );
        assert_eq!(
            d.run("k", || async { Ok::<_, &str>(1) }).await,
            Ok(Outcome::Fresh(1))
        );
    }

    #[tokio::test]
    async fn concurrent_repeats_wait_for_the_first() {
        let d = Arc::new(Dedupe::new(10));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let first = tokio::spawn({
            let d = d.clone();
            async move {
                d.run("k", || async {
                    rx.await.ok();
                    Ok::<_, ()>(1)
                })
                .await
            }
        });
        // The second caller must not run its operation while the first is in flight.
        let second = tokio::spawn({
            let d = d.clone();
            async move { d.run("k", || async { Ok::<_, ()>(2) }).await }
        });
        tokio::task::yield_now().await;
        tx.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Ok(Outcome::Fresh(1)));
        assert_eq!(second.await.unwrap(), Ok(Outcome::Repeat(1)));
    }

    #[tokio::test]
    async fn memory_is_bounded_and_the_oldest_key_is_forgotten() {
        let d = Dedupe::new(2);
        for k in ["a", "b", "c"] {
            d.run(k, || async { Ok::<_, ()>(k) }).await.unwrap();
        }
        assert_eq!(d.len(), 2);
        assert_eq!(
            d.run("a", || async { Ok::<_, ()>("again") }).await,
            Ok(Outcome::Fresh("again"))
        );
        assert_eq!(
            d.run("c", || async { Ok::<_, ()>("x") }).await,
            Ok(Outcome::Repeat("c"))
        );
    }

    #[tokio::test]
    async fn an_empty_key_always_runs() {
        let d = Dedupe::new(2);
        assert_eq!(
            d.run("", || async { Ok::<_, ()>(1) }).await,
            Ok(Outcome::Fresh(1))
        );
        assert_eq!(
            d.run("", || async { Ok::<_, ()>(2) }).await,
            Ok(Outcome::Fresh(2))
        );
        assert!(d.is_empty());
    }
}
