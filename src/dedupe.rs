//! Idempotency: a Store repeated with the same `request_id` gets the first reply and stores
//! nothing new; the same key with a different message is a conflict (ALREADY_EXISTS), because a
//! key names one message. Both the headnode and the datanodes keep one [`Dedupe`].
//!
//! A store is *claimed* before it runs ([`Dedupe::claim`]): the first caller gets a [`Ticket`],
//! later callers with the same key wait until the ticket is completed (then they get the first
//! result) or dropped (the store failed: the next caller runs it again). Claiming apart from
//! running lets a caller claim a whole batch first and then store every fresh message of it in
//! one append.
//!
//! Memory is bounded twice: by the number of keys (`--dedupe-capacity`) and by the bytes they
//! hold (`--dedupe-memory`). Each entry is charged its key, its value's heap bytes and
//! [`ENTRY_OVERHEAD`] (the map's and the slot's own allocations, measured by
//! `tests/dedupe_memory.rs`); the oldest keys are forgotten first. A client cannot make the map
//! grow past either bound, whatever its keys: keys are at most [`MAX_REQUEST_ID_BYTES`] anyway.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OwnedMutexGuard;

/// The longest `request_id` accepted, in bytes (SPEC: 1–128 printable ASCII characters).
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Bytes charged to every entry besides its key and its value's heap bytes: the hash map's
/// bucket (at its worst load factor), the shared key's allocation header, the order queue's slot
/// and the slot's own allocation. `tests/dedupe_memory.rs` measures the real figure with a
/// counting allocator and checks that this charge is not below it.
pub const ENTRY_OVERHEAD: usize = 320;

/// The default `--dedupe-capacity`: request ids remembered.
pub const DEFAULT_CAPACITY: usize = 100_000;
/// The default `--dedupe-memory`: bytes the remembered ids may hold.
pub const DEFAULT_MEMORY_BYTES: usize = 64 * 1024 * 1024;

/// Checks a `request_id` against the rules of SPEC: empty (no idempotency) or 1–128 printable
/// ASCII characters (`!`…`~`).
pub fn validate_request_id(request_id: &str) -> Result<(), tonic::Status> {
    if request_id.len() > MAX_REQUEST_ID_BYTES {
        return Err(tonic::Status::invalid_argument(format!(
            "request_id is {} bytes, over the limit of {MAX_REQUEST_ID_BYTES}",
            request_id.len()
        )));
    }
    if let Some(bad) = request_id.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(tonic::Status::invalid_argument(format!(
            "request_id may hold only printable ASCII characters (! to ~, no spaces); it holds {:?}",
            bad
        )));
    }
    Ok(())
}

/// The refusal of a key already used for another message: ALREADY_EXISTS, nothing stored.
pub fn conflict(request_id: &str) -> tonic::Status {
    tonic::Status::already_exists(format!(
        "request_id {request_id:?} was already used for a different message; a request_id names one message"
    ))
}

/// Heap bytes a remembered value holds, for the memory bound.
pub trait HeapSize {
    /// Bytes this value owns on the heap (not its inline size).
    fn heap_bytes(&self) -> usize;
}

impl HeapSize for crate::pb::StoreReply {
    fn heap_bytes(&self) -> usize {
        self.id.capacity()
            + self.datanode.capacity()
            + self.receipt.capacity()
            + self.replicas.capacity() * std::mem::size_of::<String>()
            + self.replicas.iter().map(String::capacity).sum::<usize>()
            + if self.stored_at.is_some() {
                std::mem::size_of::<prost_types::Timestamp>()
            } else {
                0
            }
    }
}

/// The two bounds of a [`Dedupe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Keys remembered at most.
    pub entries: usize,
    /// Bytes charged to remembered keys at most (see [`ENTRY_OVERHEAD`]).
    pub bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            entries: DEFAULT_CAPACITY,
            bytes: DEFAULT_MEMORY_BYTES,
        }
    }
}

/// A bounded map from request id to the message it named and the reply of its first Store.
/// Cheap to clone: clones share the map.
pub struct Dedupe<V> {
    shared: Arc<Shared<V>>,
}

impl<V> Clone for Dedupe<V> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

struct Shared<V> {
    inner: Mutex<Inner<V>>,
    limits: Limits,
    /// Keys the message fingerprints, so a client cannot craft two messages that collide.
    hasher: RandomState,
}

type Slot<V> = Arc<tokio::sync::Mutex<Option<V>>>;

struct Entry<V> {
    /// Hash of the message this key named first.
    fingerprint: u64,
    /// The first reply once a store succeeded; locked while a store of this key runs.
    slot: Slot<V>,
    /// What this entry is charged against [`Limits::bytes`].
    bytes: usize,
}

struct Inner<V> {
    map: HashMap<Arc<str>, Entry<V>>,
    /// Keys oldest first, for eviction.
    order: VecDeque<Arc<str>>,
    /// Sum of the entries' charges.
    bytes: usize,
}

/// What [`Dedupe::claim`] found.
pub enum Claim<V> {
    /// The key is new (or its earlier store failed): run the store, then
    /// [`Ticket::complete`] with its result.
    Fresh(Ticket<V>),
    /// An earlier store with this key and the same message produced this reply.
    Repeat(V),
    /// This key named a different message: refuse (ALREADY_EXISTS), store nothing.
    Conflict,
}

/// What [`Dedupe::run`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<V> {
    /// The operation ran now; this is its result.
    Fresh(V),
    /// An earlier operation with the same key and message had already produced this result.
    Repeat(V),
    /// The key was used before for a different message; nothing ran.
    Conflict,
}

/// The right to run the store of one key. Completing it remembers the result; dropping it
/// (the store failed or was abandoned) lets the next caller with this key run it again.
pub struct Ticket<V> {
    /// `None` for an empty key: nothing is remembered.
    held: Option<Held<V>>,
}

struct Held<V> {
    shared: Arc<Shared<V>>,
    key: Arc<str>,
    guard: OwnedMutexGuard<Option<V>>,
}

impl<V: Clone + HeapSize> Ticket<V> {
    /// Remembers `value` as the reply for this ticket's key.
    pub fn complete(self, value: V) {
        let Some(Held {
            shared,
            key,
            mut guard,
        }) = self.held
        else {
            return;
        };
        let extra = value.heap_bytes();
        *guard = Some(value);
        let slot = OwnedMutexGuard::mutex(&guard).clone();
        drop(guard);
        let mut inner = shared.lock();
        // The entry may have been evicted (or replaced) while the store ran: charge only the
        // entry that still holds this slot.
        let inner = &mut *inner;
        if let Some(entry) = inner
            .map
            .get_mut(&key)
            .filter(|e| Arc::ptr_eq(&e.slot, &slot))
        {
            entry.bytes += extra;
            inner.bytes += extra;
        }
        shared.evict(inner);
    }
}

impl<V: Clone + HeapSize> Dedupe<V> {
    /// An empty map within `limits` (each at least one entry).
    pub fn new(limits: Limits) -> Self {
        Self {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner {
                    map: HashMap::new(),
                    order: VecDeque::new(),
                    bytes: 0,
                }),
                limits: Limits {
                    entries: limits.entries.max(1),
                    bytes: limits.bytes.max(1),
                },
                hasher: RandomState::new(),
            }),
        }
    }

    /// Claims `key` for a store of `message`, waiting while another store of the same key runs.
    /// An empty key means "no idempotency": always [`Claim::Fresh`], nothing remembered.
    pub async fn claim(&self, key: &str, message: &str) -> Claim<V> {
        if key.is_empty() {
            return Claim::Fresh(Ticket { held: None });
        }
        let fingerprint = self.shared.hasher.hash_one(message);
        loop {
            let (key, slot, known) = match self.slot(key, fingerprint) {
                Ok(found) => found,
                Err(Conflict) => return Claim::Conflict,
            };
            let guard = slot.clone().lock_owned().await;
            if let Some(claim) = self.decide(key, slot, known, guard) {
                return claim;
            }
        }
    }

    /// [`Self::claim`] without waiting: `None` while another store of this key runs.
    pub fn try_claim(&self, key: &str, message: &str) -> Option<Claim<V>> {
        if key.is_empty() {
            return Some(Claim::Fresh(Ticket { held: None }));
        }
        let fingerprint = self.shared.hasher.hash_one(message);
        let (key, slot, known) = match self.slot(key, fingerprint) {
            Ok(found) => found,
            Err(Conflict) => return Some(Claim::Conflict),
        };
        let guard = slot.clone().try_lock_owned().ok()?;
        self.decide(key, slot, known, guard)
    }

    /// Runs `op` unless a store with this key already succeeded (or is running, in which case
    /// this waits for it); refuses a key already used for a different message.
    pub async fn run<F, Fut, E>(&self, key: &str, message: &str, op: F) -> Result<Outcome<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        match self.claim(key, message).await {
            Claim::Repeat(v) => Ok(Outcome::Repeat(v)),
            Claim::Conflict => Ok(Outcome::Conflict),
            Claim::Fresh(ticket) => {
                let value = op().await?;
                // An empty key remembers nothing: no copy to make.
                if ticket.held.is_some() {
                    ticket.complete(value.clone());
                }
                Ok(Outcome::Fresh(value))
            }
        }
    }

    /// Remembers `value` as the reply for `key` and `message`, as if a store had produced it
    /// (to reload what a data file already holds). The first value for a key wins.
    pub fn remember(&self, key: &str, message: &str, value: V) {
        if let Some(Claim::Fresh(ticket)) = self.try_claim(key, message) {
            ticket.complete(value);
        }
    }

    /// How many keys are remembered now.
    pub fn len(&self) -> usize {
        self.shared.lock().map.len()
    }

    /// True when no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes charged to the remembered keys now (at most [`Limits::bytes`]).
    pub fn bytes(&self) -> usize {
        self.shared.lock().bytes
    }

    /// The slot of `key`, made if absent; `Err` when the key is known with another message.
    /// Also says whether the entry existed.
    fn slot(&self, key: &str, fingerprint: u64) -> Result<(Arc<str>, Slot<V>, bool), Conflict> {
        let mut inner = self.shared.lock();
        if let Some((k, entry)) = inner.map.get_key_value(key) {
            if entry.fingerprint != fingerprint {
                return Err(Conflict);
            }
            return Ok((k.clone(), entry.slot.clone(), true));
        }
        let key: Arc<str> = key.into();
        let slot: Slot<V> = Arc::new(tokio::sync::Mutex::new(None));
        let bytes = key.len() + ENTRY_OVERHEAD;
        inner.map.insert(
            key.clone(),
            Entry {
                fingerprint,
                slot: slot.clone(),
                bytes,
            },
        );
        inner.order.push_back(key.clone());
        inner.bytes += bytes;
        self.shared.evict(&mut inner);
        Ok((key, slot, false))
    }

    /// With the slot locked: the first reply if there is one, else a ticket. `None` when the
    /// entry was evicted while this caller waited (it starts over with a fresh entry).
    fn decide(
        &self,
        key: Arc<str>,
        slot: Slot<V>,
        known: bool,
        guard: OwnedMutexGuard<Option<V>>,
    ) -> Option<Claim<V>> {
        if let Some(value) = guard.as_ref() {
            return Some(Claim::Repeat(value.clone()));
        }
        let current = {
            let inner = self.shared.lock();
            inner
                .map
                .get(&key)
                .is_some_and(|e| Arc::ptr_eq(&e.slot, &slot))
        };
        if !current && known {
            return None;
        }
        Some(Claim::Fresh(Ticket {
            held: Some(Held {
                shared: self.shared.clone(),
                key,
                guard,
            }),
        }))
    }
}

/// The key is known with another message.
struct Conflict;

impl<V> Shared<V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        // The map holds no invariant a panicking holder could break halfway.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets the oldest keys until both bounds hold.
    fn evict(&self, inner: &mut Inner<V>) {
        while inner.map.len() > self.limits.entries || inner.bytes > self.limits.bytes {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(entry) = inner.map.remove(&oldest) {
                inner.bytes -= entry.bytes;
            }
        }
        if inner.order.capacity() > 4 * inner.order.len().max(64) {
            inner.order.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    impl HeapSize for u32 {
        fn heap_bytes(&self) -> usize {
            0
        }
    }
    impl HeapSize for &str {
        fn heap_bytes(&self) -> usize {
            0
        }
    }

    fn limits(entries: usize) -> Limits {
        Limits {
            entries,
            bytes: usize::MAX,
        }
    }

    #[tokio::test]
    async fn a_repeated_key_runs_once() {
        let d = Dedupe::new(limits(10));
        let runs = AtomicUsize::new(0);
        let op = || async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(7u32)
        };
        assert_eq!(d.run("k", "m", op).await, Ok(Outcome::Fresh(7)));
        assert_eq!(
            d.run("k", "m", || async { Ok::<_, ()>(8) }).await,
            Ok(Outcome::Repeat(7))
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_same_key_with_another_message_is_a_conflict() {
        let d = Dedupe::new(limits(10));
        d.run("k", "first", || async { Ok::<_, ()>(1u32) })
            .await
            .unwrap();
        assert_eq!(
            d.run("k", "second", || async { Ok::<_, ()>(2) }).await,
            Ok(Outcome::Conflict)
        );
        assert!(matches!(d.try_claim("k", "second"), Some(Claim::Conflict)));
    }

    #[tokio::test]
    async fn a_failed_operation_can_be_retried() {
        let d = Dedupe::new(limits(10));
        assert_eq!(
            d.run("k", "m", || async { Err::<u32, _>("boom") }).await,
            Err("boom")
        );
        assert_eq!(
            d.run("k", "m", || async { Ok::<_, &str>(1) }).await,
            Ok(Outcome::Fresh(1))
        );
    }

    #[tokio::test]
    async fn concurrent_repeats_wait_for_the_first() {
        let d = Dedupe::new(limits(10));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let Claim::Fresh(ticket) = d.claim("k", "m").await else {
            panic!("first claim must be fresh");
        };
        // A second caller can neither claim without waiting nor run its own store.
        assert!(d.try_claim("k", "m").is_none());
        let second = tokio::spawn({
            let d = d.clone();
            async move { d.run("k", "m", || async { Ok::<_, ()>(2u32) }).await }
        });
        tokio::spawn(async move {
            rx.await.ok();
            ticket.complete(1);
        });
        tx.send(()).unwrap();
        assert_eq!(second.await.unwrap(), Ok(Outcome::Repeat(1)));
    }

    #[tokio::test]
    async fn a_dropped_ticket_lets_the_next_caller_store() {
        let d = Dedupe::<u32>::new(limits(10));
        let Claim::Fresh(ticket) = d.claim("k", "m").await else {
            panic!("fresh");
        };
        drop(ticket);
        assert!(matches!(d.try_claim("k", "m"), Some(Claim::Fresh(_))));
    }

    #[tokio::test]
    async fn memory_is_bounded_by_count_and_the_oldest_key_is_forgotten() {
        let d = Dedupe::new(limits(2));
        for k in ["a", "b", "c"] {
            d.run(k, "m", || async { Ok::<_, ()>(k) }).await.unwrap();
        }
        assert_eq!(d.len(), 2);
        assert_eq!(
            d.run("a", "m", || async { Ok::<_, ()>("again") }).await,
            Ok(Outcome::Fresh("again"))
        );
        assert_eq!(
            d.run("c", "m", || async { Ok::<_, ()>("x") }).await,
            Ok(Outcome::Repeat("c"))
        );
    }

    #[tokio::test]
    async fn memory_is_bounded_in_bytes_whatever_the_keys() {
        let budget = 100 * (ENTRY_OVERHEAD + MAX_REQUEST_ID_BYTES);
        let d = Dedupe::new(Limits {
            entries: usize::MAX,
            bytes: budget,
        });
        for i in 0..10_000u32 {
            let key = format!("{i:0>128}");
            d.remember(&key, "m", i);
            assert!(d.bytes() <= budget);
        }
        assert_eq!(d.len(), 100);
    }

    #[tokio::test]
    async fn an_empty_key_always_runs() {
        let d = Dedupe::new(limits(2));
        assert_eq!(
            d.run("", "m", || async { Ok::<_, ()>(1u32) }).await,
            Ok(Outcome::Fresh(1))
        );
        assert_eq!(
            d.run("", "m", || async { Ok::<_, ()>(2) }).await,
            Ok(Outcome::Fresh(2))
        );
        assert!(d.is_empty());
    }

    #[test]
    fn request_ids_follow_the_spec() {
        assert!(validate_request_id("").is_ok());
        assert!(validate_request_id("a").is_ok());
        assert!(validate_request_id(&"~".repeat(128)).is_ok());
        assert!(validate_request_id("!\"#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~").is_ok());
        for bad in [
            "x".repeat(129),
            "with space".into(),
            "tab\t".into(),
            "new\nline".into(),
            "ñ".into(),
            "\u{7f}".into(),
        ] {
            let status = validate_request_id(&bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad:?}");
        }
    }
}
