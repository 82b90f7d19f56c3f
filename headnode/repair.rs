//! `Heartbeat/Repair`: copies every message held by fewer than `--replicas` healthy datanodes
//! onto the next datanodes of its placement order, streaming its progress to the caller.
//!
//! **What it reads.** Every datanode SERVING when the repair starts, each through its own List
//! (the pool's List connection, never the forward connections), one after another. A record's
//! placement key is recomputed from the record itself: its `request_id`, or its `id` when that is
//! empty (a Store without a request id is placed by a random key that is also its id, see
//! [`super::record`]). Its order is [`super::pool::Pool::placement`].
//!
//! **Bounded memory.** The repair never holds the whole cluster's ids, nor any message text
//! across a scan. A *pass* covers the ids whose 128-bit hash falls in one class (`h mod m == r`,
//! `m` a power of two) and keeps, for each, only its hash and a bitset of the datanodes holding it:
//! at most `--repair-ids-per-pass` entries (see [`DEFAULT_IDS_PER_PASS`]). When a pass would go past that
//! budget it is split in place: its class becomes `(2m, r)` (the entries of the other half are
//! dropped) and the other half `(2m, r + m)` becomes a pass of its own, queued, so nothing read
//! is read again for the half kept. After reading every datanode for a pass, the entries held by
//! fewer than R datanodes are under-replicated; the holders of those are read a second time, and
//! each under-replicated record met there is copied onto the first datanodes of its order that
//! are SERVING, were read and do not hold it, until R hold it. Copies go out in
//! `Datanode/StoreBatch` calls of at most [`MAX_STORE_BATCH`] records and
//! [`COPY_BATCH_BYTES`] of text in all, on a connection of the repair's own to each datanode,
//! dialled with the headnode's TLS identity (the headnode role StoreBatch needs).
//!
//! The hashes are keyed with fresh random keys on every repair (SipHash, twice): two ids share a
//! hash with a probability of about n²/2¹²⁹, and nobody can craft ids that do.
//!
//! **Idempotent.** A repair copies only what is under-replicated when it reads; a second one
//! finds nothing to copy. A copy that meets the record already there (a Store landed meanwhile)
//! adds no line: the datanode answers it from its idempotency map, by request id, or by id for a
//! record without one (see `datanode::store`).
//!
//! **One at a time** per headnode: another repair while one runs is ABORTED (a concurrency
//! conflict the caller resolves by waiting and running it again). Fewer healthy datanodes than
//! R is UNAVAILABLE at once. A datanode whose List fails midway ends the repair with UNAVAILABLE
//! (what it holds is unknown, so nothing more can be decided); the copies made until then stand.
//! A caller that goes away stops the repair.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, watch};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use super::pool::{Datanode, Pool};
use super::probe::describe;
use crate::pb::datanode_client::DatanodeClient;
use crate::pb::{ListRequest, Record, RepairReply, StoreBatchRequest, StoredMessage};
use crate::server::MAX_STORE_BATCH;
use crate::tls::Tls;

/// The default `--repair-ids-per-pass`: ids one pass keeps. Each takes a 24-byte slot of a hash
/// table that is at least 7/16 full, and 8 bytes of bitset (up to 63 datanodes): at most about
/// 30 MiB at this budget, plus the old table while the last resize copies it.
pub const DEFAULT_IDS_PER_PASS: usize = 500_000;
/// The smallest budget accepted: below it a repair spends its time splitting passes.
pub const MIN_IDS_PER_PASS: usize = 1_000;
/// Text of pending copies, summed over every target, at which they are sent.
pub const COPY_BATCH_BYTES: usize = 1024 * 1024;
/// How often the caller hears of progress while a datanode is read.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// Replies queued for a slow caller; progress replies beyond it are skipped, not waited for.
const REPLY_BUFFER: usize = 4;

/// How repairs run on this headnode.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--replicas`: copies every message should have.
    pub replicas: usize,
    /// `--repair-ids-per-pass`.
    pub ids_per_pass: usize,
    /// Mutual TLS for the copy connections (the headnode's identity); `None`: plaintext.
    pub tls: Option<Tls>,
    /// Connecting to a datanode gives up after this long.
    pub connect_timeout: Duration,
    /// A datanode's List that sends nothing this long (or a copy call that takes this long)
    /// fails.
    pub idle_timeout: Duration,
}

/// Starts repairs, one at a time.
pub struct Repairer {
    pool: Arc<Pool>,
    settings: Settings,
    /// True once the headnode knows its pool (see [`super::warmup`]): placement before that is
    /// a guess.
    warm: watch::Receiver<bool>,
    /// Held by the repair that runs.
    running: Arc<Mutex<()>>,
}

/// The stream a caller reads.
pub type Replies = mpsc::Receiver<Result<RepairReply, Status>>;

impl Repairer {
    pub fn new(pool: Arc<Pool>, settings: Settings, warm: watch::Receiver<bool>) -> Self {
        Self {
            pool,
            settings,
            warm,
            running: Arc::new(Mutex::new(())),
        }
    }

    /// Starts a repair in a task of its own and returns its progress stream; refuses at once
    /// when one is running, the headnode is warming up, or fewer than R datanodes are healthy.
    pub fn start(&self) -> Result<Replies, Status> {
        let guard = self.running.clone().try_lock_owned().map_err(|_| {
            Status::aborted(
                "a repair is already running on this headnode; wait for it to finish and run repair again",
            )
        })?;
        if !*self.warm.borrow() {
            return Err(super::warmup::unavailable());
        }
        let members = self.pool.members();
        let (nodes, skipped): (Vec<_>, Vec<_>) = members.into_iter().partition(|m| m.is_serving());
        let needed = self.settings.replicas.max(1);
        if nodes.len() < needed {
            return Err(Status::unavailable(format!(
                "not enough healthy datanodes to repair: --replicas {needed} needs {needed}, {} of {} healthy; nothing copied",
                nodes.len(),
                nodes.len() + skipped.len()
            )));
        }
        let copiers = nodes
            .iter()
            .map(|n| {
                crate::config::lazy_channel(
                    &n.address,
                    self.settings.connect_timeout,
                    self.settings.tls.as_ref(),
                )
                .map(|c| {
                    DatanodeClient::new(c)
                        .max_decoding_message_size(crate::server::MAX_GRPC_MESSAGE_BYTES)
                        .max_encoding_message_size(crate::server::MAX_GRPC_BATCH_BYTES)
                })
                .map_err(|e| Status::internal(format!("cannot dial {}: {e}", n.name)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = mpsc::channel(REPLY_BUFFER);
        let mut repair = Repair {
            pool: self.pool.clone(),
            replicas: needed,
            budget: self.settings.ids_per_pass.max(MIN_IDS_PER_PASS),
            idle: self.settings.idle_timeout,
            index: nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.name.clone(), i))
                .collect(),
            nodes,
            copiers,
            hashers: (RandomState::new(), RandomState::new()),
            reply: RepairReply {
                phase: "scan".into(),
                pass: 1,
                passes: 1,
                skipped: skipped.iter().map(|s| s.name.clone()).collect(),
                ..Default::default()
            },
            tx,
            last_progress: Instant::now(),
        };
        repair.reply.datanodes = repair.nodes.iter().map(|n| n.name.clone()).collect();
        repair.reply.steps_total = 2 * repair.nodes.len() as u64;
        tokio::spawn(async move {
            let _running = guard;
            let started = Instant::now();
            tracing::info!(datanodes = ?repair.reply.datanodes, skipped = ?repair.reply.skipped, replicas = repair.replicas, "repair started");
            match repair.run().await {
                Ok(()) => {
                    let r = &repair.reply;
                    tracing::info!(scanned = r.scanned, under_replicated = r.under_replicated, copied = r.copied, failed = r.failed, passes = r.passes, records_read = r.records_read, elapsed = ?started.elapsed(), "repair done");
                }
                Err(Stop::CallerGone) => {
                    tracing::info!("repair stopped: its caller went away");
                }
                Err(Stop::Failed(status)) => {
                    tracing::warn!(error = %status.message(), "repair failed");
                    let _ = repair.tx.send(Err(status)).await;
                }
            }
        });
        Ok(rx)
    }
}

/// Why a repair ended early.
enum Stop {
    CallerGone,
    Failed(Status),
}

/// One repair's state.
struct Repair {
    pool: Arc<Pool>,
    replicas: usize,
    budget: usize,
    idle: Duration,
    /// The datanodes read, SERVING when the repair started; a holder is an index into these.
    nodes: Vec<Arc<Datanode>>,
    /// Name → index in `nodes`.
    index: HashMap<String, usize>,
    /// A StoreBatch client per datanode, on a connection of the repair's own.
    copiers: Vec<DatanodeClient<Channel>>,
    /// The two keyed hashes of an id (see the module docs).
    hashers: (RandomState, RandomState),
    /// The running totals, sent as progress.
    reply: RepairReply,
    tx: mpsc::Sender<Result<RepairReply, Status>>,
    last_progress: Instant,
}

/// The ids of one pass: hash → the datanodes holding it (a bitset, one bit per datanode read,
/// and one more marking an id already copied in this pass).
struct Holdings {
    /// Words per entry in `bits`.
    words: usize,
    /// The id's hash (as two words: 8-byte aligned, so a slot is 24 bytes, not 32) → its index
    /// in `bits`. Grown as ids come (never allocated for the whole budget up front: a small
    /// cluster costs little).
    slots: HashMap<[u64; 2], u32>,
    bits: Vec<u64>,
}

fn key(h: u128) -> [u64; 2] {
    [(h >> 64) as u64, h as u64]
}

fn unkey(k: [u64; 2]) -> u128 {
    (u128::from(k[0]) << 64) | u128::from(k[1])
}

impl Holdings {
    fn new(nodes: usize) -> Self {
        Self {
            words: (nodes + 1).div_ceil(64),
            slots: HashMap::new(),
            bits: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.slots.len()
    }

    fn contains(&self, h: u128) -> bool {
        self.slots.contains_key(&key(h))
    }

    fn set(&mut self, h: u128, bit: usize) {
        let words = self.words;
        let next = self.slots.len();
        let slot = *self.slots.entry(key(h)).or_insert_with(|| {
            // Below u32::MAX: the budget is a count of ids a machine can hold.
            u32::try_from(next).unwrap_or(u32::MAX)
        });
        let base = slot as usize * words;
        if base + words > self.bits.len() {
            self.bits.resize(base + words, 0);
        }
        self.bits[base + bit / 64] |= 1 << (bit % 64);
    }

    fn entry(&self, h: u128) -> Option<&[u64]> {
        let base = *self.slots.get(&key(h))? as usize * self.words;
        self.bits.get(base..base + self.words)
    }

    fn has(&self, h: u128, bit: usize) -> bool {
        self.entry(h)
            .is_some_and(|e| e[bit / 64] & (1 << (bit % 64)) != 0)
    }

    /// Keeps only the ids `keep` accepts, compacting the bitsets.
    fn retain(&mut self, keep: impl Fn(u128) -> bool) {
        let words = self.words;
        let mut bits = std::mem::take(&mut self.bits);
        let mut next = 0usize;
        let mut kept: Vec<([u64; 2], u32)> = Vec::new();
        self.slots.retain(|&k, slot| {
            if keep(unkey(k)) {
                kept.push((k, *slot));
            }
            false
        });
        // Moved down in the order they were in, so no entry is overwritten before it moves.
        kept.sort_unstable_by_key(|&(_, old)| old);
        for (k, old) in kept {
            let from = old as usize * words;
            bits.copy_within(from..from + words, next * words);
            self.slots
                .insert(k, u32::try_from(next).unwrap_or(u32::MAX));
            next += 1;
        }
        bits.truncate(next * words);
        bits.shrink_to(next * words);
        self.bits = bits;
    }

    fn hashes(&self) -> impl Iterator<Item = (u128, &[u64])> {
        self.slots.iter().map(move |(&k, &slot)| {
            let base = slot as usize * self.words;
            (unkey(k), &self.bits[base..base + self.words])
        })
    }
}

/// Holders in a bitset (the marker bit `nodes` excluded).
fn holders(entry: &[u64], nodes: usize) -> usize {
    let all: u32 = entry.iter().map(|w| w.count_ones()).sum();
    let marker = entry[nodes / 64] & (1 << (nodes % 64)) != 0;
    all as usize - usize::from(marker)
}

/// A class of ids: those whose hash's high half is `residue` modulo `modulus` (a power of two).
#[derive(Debug, Clone, Copy)]
struct Class {
    modulus: u64,
    residue: u64,
}

impl Class {
    fn holds(self, h: u128) -> bool {
        ((h >> 64) as u64) & (self.modulus - 1) == self.residue
    }
}

impl Repair {
    fn hash(&self, id: &str) -> u128 {
        (u128::from(self.hashers.0.hash_one(id)) << 64) | u128::from(self.hashers.1.hash_one(id))
    }

    async fn run(&mut self) -> Result<(), Stop> {
        let n = self.nodes.len();
        let mut queue = VecDeque::from([Class {
            modulus: 1,
            residue: 0,
        }]);
        let mut pass = 0u32;
        while let Some(class) = queue.pop_front() {
            pass += 1;
            self.reply.pass = pass;
            let holdings = self.scan(class, &mut queue).await?;
            let mut under = 0u64;
            let mut read_again = vec![false; n];
            for (_, entry) in holdings.hashes() {
                if holders(entry, n) < self.replicas {
                    under += 1;
                    for (i, again) in read_again.iter_mut().enumerate() {
                        *again |= entry[i / 64] & (1 << (i % 64)) != 0;
                    }
                }
            }
            self.reply.scanned += holdings.len() as u64;
            self.reply.under_replicated += under;
            self.copy(holdings, &read_again).await?;
        }
        self.reply.phase = "done".into();
        self.reply.datanode.clear();
        self.reply.done = true;
        self.tx
            .send(Ok(self.reply.clone()))
            .await
            .map_err(|_| Stop::CallerGone)
    }

    /// Reads every datanode for the ids of `class`, splitting it when it outgrows the budget.
    async fn scan(
        &mut self,
        mut class: Class,
        queue: &mut VecDeque<Class>,
    ) -> Result<Holdings, Stop> {
        let n = self.nodes.len();
        let mut holdings = Holdings::new(n);
        self.reply.phase = "scan".into();
        for i in 0..n {
            let (node, mut stream) = self.open(i).await?;
            while let Some(m) = self.next(&node, &mut stream).await? {
                let h = self.hash(&m.id);
                if !class.holds(h) {
                    continue;
                }
                if !holdings.contains(h) && holdings.len() >= self.budget {
                    while holdings.len() >= self.budget && class.modulus < 1 << 62 {
                        let half = Class {
                            modulus: class.modulus * 2,
                            residue: class.residue + class.modulus,
                        };
                        class.modulus *= 2;
                        queue.push_back(half);
                        holdings.retain(|h| class.holds(h));
                        self.reply.passes += 1;
                        self.reply.steps_total += 2 * n as u64;
                        tracing::info!(
                            pass = self.reply.pass,
                            passes = self.reply.passes,
                            budget = self.budget,
                            "repair pass split: more ids than --repair-ids-per-pass"
                        );
                    }
                    if !class.holds(h) {
                        continue;
                    }
                }
                holdings.set(h, i);
                self.progress(false)?;
            }
            self.reply.steps_done += 1;
        }
        Ok(holdings)
    }

    /// Reads again the datanodes marked in `read_again` and copies every under-replicated record
    /// of `holdings` met there.
    async fn copy(&mut self, mut holdings: Holdings, read_again: &[bool]) -> Result<(), Stop> {
        let n = self.nodes.len();
        self.reply.phase = "copy".into();
        let mut pending: Vec<Vec<Record>> = vec![Vec::new(); n];
        let mut pending_bytes = 0usize;
        for (i, &again) in read_again.iter().enumerate() {
            if !again {
                self.reply.steps_done += 1;
                continue;
            }
            let (node, mut stream) = self.open(i).await?;
            while let Some(m) = self.next(&node, &mut stream).await? {
                let h = self.hash(&m.id);
                let Some(entry) = holdings.entry(h) else {
                    continue;
                };
                let held = holders(entry, n);
                if held >= self.replicas || holdings.has(h, n) {
                    continue;
                }
                holdings.set(h, n);
                let targets = self.targets(&m, &holdings, h, self.replicas - held);
                self.reply.failed += (self.replicas - held - targets.len()) as u64;
                let record = Record {
                    id: m.id,
                    stored_at: m.stored_at,
                    message: m.message,
                    request_id: m.request_id,
                };
                for t in targets {
                    pending_bytes += record.message.len() + record.id.len() + 64;
                    pending[t].push(record.clone());
                    if pending[t].len() >= MAX_STORE_BATCH {
                        pending_bytes -= batch_bytes(&pending[t]);
                        let batch = std::mem::take(&mut pending[t]);
                        self.send(t, batch).await;
                    }
                }
                if pending_bytes >= COPY_BATCH_BYTES {
                    self.flush(&mut pending).await;
                    pending_bytes = 0;
                }
                self.progress(false)?;
            }
            self.reply.steps_done += 1;
        }
        self.flush(&mut pending).await;
        Ok(())
    }

    /// The first `count` datanodes of `m`'s placement order that were read, are SERVING and do
    /// not hold it.
    fn targets(&self, m: &StoredMessage, holdings: &Holdings, h: u128, count: usize) -> Vec<usize> {
        self.pool
            .placement(super::record::placement_key(&m.request_id, &m.id))
            .iter()
            .filter(|d| d.is_serving())
            .filter_map(|d| self.index.get(&d.name).copied())
            .filter(|&i| !holdings.has(h, i))
            .take(count)
            .collect()
    }

    async fn flush(&mut self, pending: &mut [Vec<Record>]) {
        for (t, records) in pending.iter_mut().enumerate() {
            if !records.is_empty() {
                let batch = std::mem::take(records);
                self.send(t, batch).await;
            }
        }
    }

    /// Copies `records` onto datanode `t`; counts what was copied and what failed.
    async fn send(&mut self, t: usize, records: Vec<Record>) {
        let count = records.len() as u64;
        let name = self.nodes[t].name.clone();
        let call = self.copiers[t].store_batch(StoreBatchRequest { records });
        match tokio::time::timeout(self.idle, call).await {
            Ok(Ok(reply)) => {
                let results = reply.into_inner().results;
                let ok = results.iter().filter(|r| r.code == 0).count() as u64;
                if let Some(bad) = results.iter().find(|r| r.code != 0) {
                    tracing::warn!(datanode = %name, failed = count - ok, error = %crate::one_line(&bad.error), "repair copies refused");
                }
                // A datanode of another protocol may answer fewer results than records.
                self.reply.copied += ok;
                self.reply.failed += count - ok;
            }
            Ok(Err(status)) => {
                tracing::warn!(datanode = %name, records = count, error = %describe(&status), "repair copy failed");
                self.reply.failed += count;
            }
            Err(_) => {
                tracing::warn!(datanode = %name, records = count, timeout = ?self.idle, "repair copy timed out");
                self.reply.failed += count;
            }
        }
    }

    /// Starts reading datanode `i` (a List of everything it holds), named in the progress sent
    /// at once.
    async fn open(&mut self, i: usize) -> Result<(Arc<Datanode>, Streaming<StoredMessage>), Stop> {
        let node = self.nodes[i].clone();
        self.reply.datanode = node.name.clone();
        self.progress(true)?;
        let request = ListRequest {
            datanode: String::new(),
            limit: 0,
        };
        match tokio::time::timeout(self.idle, node.list_client().list(request)).await {
            Ok(Ok(stream)) => Ok((node, stream.into_inner())),
            Ok(Err(status)) => Err(self.broke(&node, &describe(&status))),
            Err(_) => Err(self.broke(&node, "its List did not answer within the idle timeout")),
        }
    }

    /// The next record of `node`'s List, counted as read.
    async fn next(
        &mut self,
        node: &Datanode,
        stream: &mut Streaming<StoredMessage>,
    ) -> Result<Option<StoredMessage>, Stop> {
        match tokio::time::timeout(self.idle, stream.message()).await {
            Ok(Ok(m)) => {
                self.reply.records_read += u64::from(m.is_some());
                Ok(m)
            }
            Ok(Err(status)) => Err(self.broke(node, &describe(&status))),
            Err(_) => Err(self.broke(node, "its List sent nothing for the idle timeout")),
        }
    }

    fn broke(&self, node: &Datanode, why: &str) -> Stop {
        Stop::Failed(Status::unavailable(format!(
            "repair stopped: datanode {} could not be read in pass {} ({why}); what it holds is unknown, so nothing more was decided. Copies made so far: {}, failed: {}. Run repair again once it is healthy (or down, to repair without it)",
            node.name, self.reply.pass, self.reply.copied, self.reply.failed
        )))
    }

    /// Sends the running totals: at once when `now`, else at most every [`PROGRESS_EVERY`];
    /// never waits for a slow caller (a reply it has not taken yet is as good).
    fn progress(&mut self, now: bool) -> Result<(), Stop> {
        if self.tx.is_closed() {
            return Err(Stop::CallerGone);
        }
        if now || self.last_progress.elapsed() >= PROGRESS_EVERY {
            self.last_progress = Instant::now();
            let _ = self.tx.try_send(Ok(self.reply.clone()));
        }
        Ok(())
    }
}

fn batch_bytes(records: &[Record]) -> usize {
    records
        .iter()
        .map(|r| r.message.len() + r.id.len() + 64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(modulus: u64, residue: u64) -> Class {
        Class { modulus, residue }
    }

    #[test]
    fn holdings_keep_a_bitset_per_id_and_retain_compacts_them() {
        let mut h = Holdings::new(70);
        assert_eq!(h.words, 2);
        for id in 0..10u128 {
            h.set(id << 64, 0);
            if id % 2 == 0 {
                h.set(id << 64, 69);
            }
        }
        h.set(3 << 64, 0);
        assert_eq!(h.len(), 10);
        assert_eq!(holders(h.entry(4 << 64).unwrap(), 70), 2);
        assert_eq!(holders(h.entry(3 << 64).unwrap(), 70), 1);
        h.set(3 << 64, 70);
        assert!(h.has(3 << 64, 70));
        assert_eq!(
            holders(h.entry(3 << 64).unwrap(), 70),
            1,
            "the marker is no holder"
        );
        let even = class(2, 0);
        h.retain(|x| even.holds(x));
        assert_eq!(h.len(), 5);
        assert_eq!(h.bits.len(), 10);
        for id in (0..10u128).step_by(2) {
            assert!(h.has(id << 64, 0) && h.has(id << 64, 69), "{id}");
            assert_eq!(holders(h.entry(id << 64).unwrap(), 70), 2);
        }
        assert!(h.entry(3 << 64).is_none());
    }

    #[test]
    fn classes_split_into_halves_that_cover_the_class() {
        let c = class(4, 1);
        let (a, b) = (class(8, 1), class(8, 5));
        for x in 0..64u128 {
            let h = x << 64;
            assert_eq!(c.holds(h), a.holds(h) || b.holds(h), "{x}");
            assert!(!(a.holds(h) && b.holds(h)));
        }
    }
}
