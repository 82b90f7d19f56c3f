//! The pool: every datanode the headnode knows, its health as the last probe or forward saw it,
//! and a key's placement order over it ([`Pool::placement`], by [`super::placement::order`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

use super::batch::{self, Batcher};
use crate::direct::Direct;
use crate::pb::store_client::StoreClient;
use crate::pb::{Record, StoreReply};
use crate::tls::Tls;

/// The HTTP/2 flow-control window of one List stream from a datanode: the most a List whose
/// reader is slow holds in the headnode per datanode.
pub const LIST_STREAM_WINDOW: u32 = 64 * 1024;
/// The largest window HTTP/2 allows.
const MAX_WINDOW: u32 = (1 << 31) - 1;

/// How a datanode looked the last time anyone checked: the words of the heartbeat log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Not probed yet: not routed to.
    Unknown,
    /// Answered the health check with SERVING: routed to.
    Serving,
    /// Answered, but not SERVING (for example its disk is failing): not routed to.
    NotServing,
    /// No answer, or a forward to it just failed: not routed to.
    Unreachable,
}

impl Liveness {
    /// The heartbeat log's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Liveness::Unknown => "UNKNOWN",
            Liveness::Serving => "SERVING",
            Liveness::NotServing => "NOT_SERVING",
            Liveness::Unreachable => "UNREACHABLE",
        }
    }
}

/// What a health probe found.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeResult {
    /// Answered SERVING after this long.
    Serving(Duration),
    /// Answered something other than SERVING after this long.
    NotServing(Duration),
    /// Did not answer: why.
    Unreachable(String),
}

/// A datanode's state as last observed.
#[derive(Debug, Clone)]
pub struct Observation {
    pub liveness: Liveness,
    /// When the last probe finished (a forward failure does not count as a check).
    pub last_checked: Option<DateTime<Utc>>,
    /// The last successful probe's round trip.
    pub latency: Option<Duration>,
    /// The last error, when unreachable.
    pub detail: String,
    /// When its liveness last changed (the status page's "last change").
    pub last_change: Option<DateTime<Utc>>,
}

/// One change of a datanode's liveness, as the status page lists them.
#[derive(Debug, Clone)]
pub struct Transition {
    pub at: DateTime<Utc>,
    pub datanode: String,
    pub address: String,
    pub from: Liveness,
    pub to: Liveness,
    /// The error that made it unreachable, or the probe latency that found it answering.
    pub detail: String,
}

/// How many recent transitions the pool keeps for the status page.
pub const RECENT_TRANSITIONS: usize = 20;

/// One datanode in the pool.
pub struct Datanode {
    pub name: String,
    /// host:port the headnode dials.
    pub address: String,
    /// True when it announced itself; false when it came from `--datanodes`.
    pub registered: bool,
    /// Stores bound here, sent in batches over HTTP/2 connections of their own (the batcher
    /// keeps one call out on each).
    batcher: Batcher,
    /// A connection of its own for List, so that streams a slow reader leaves unread (holding
    /// flow-control window) cannot stall forwards.
    list_channel: Channel,
    /// A connection of its own for health probes and the Watch stream, so a probe never queues
    /// behind forwards.
    health_channel: Channel,
    observation: Mutex<Observation>,
    /// Messages stored on it through this headnode.
    routed: AtomicU64,
    /// Transitions into SERVING, NOT_SERVING and UNREACHABLE (see [`Datanode::transitions`]).
    transitions: [AtomicU64; 3],
}

impl Datanode {
    fn new(
        name: String,
        address: String,
        registered: bool,
        dialing: &Dialing,
    ) -> Result<Self, String> {
        crate::config::check_host_port(&address)?;
        let dial = || {
            crate::config::dial(&address, dialing.connect_timeout, dialing.tls.as_ref())
                .map_err(|e| e.to_string())
        };
        let forward_connections: Vec<Direct> = (0..dialing.connections.max(1))
            .map(|_| {
                Direct::new(
                    &address,
                    crate::unary::STORE_BATCH,
                    dialing.connect_timeout,
                    dialing.tls.as_ref(),
                )
            })
            .collect::<Result<_, _>>()?;
        let health_channel = dial()?.connect_lazy();
        // Every List stream may hold its whole window unread, and the connection's window is
        // room for all of them: a reader that stops cannot take another List's share.
        let list_window = u32::try_from(dialing.max_lists.max(1))
            .unwrap_or(u32::MAX)
            .saturating_mul(LIST_STREAM_WINDOW)
            .min(MAX_WINDOW);
        let list_channel = dial()?
            .initial_stream_window_size(LIST_STREAM_WINDOW)
            .initial_connection_window_size(list_window)
            .connect_lazy();
        Ok(Self {
            name,
            batcher: Batcher::new(forward_connections, dialing.forward_timeout),
            list_channel,
            health_channel,
            address,
            registered,
            observation: Mutex::new(Observation {
                liveness: Liveness::Unknown,
                last_checked: None,
                latency: None,
                detail: String::new(),
                last_change: None,
            }),
            routed: AtomicU64::new(0),
            transitions: Default::default(),
        })
    }

    /// Stores one record on this datanode, in the next batch sent to it; a `caller` that gives
    /// up while the record is still queued stops it (see [`Batcher::store`]).
    pub async fn store(
        &self,
        record: Record,
        caller: &batch::Caller,
    ) -> Result<StoreReply, batch::Error> {
        self.batcher.store(record, caller).await
    }

    /// A Store client on this datanode's List connection.
    pub fn list_client(&self) -> StoreClient<Channel> {
        StoreClient::new(self.list_channel.clone())
            .max_decoding_message_size(crate::server::MAX_GRPC_MESSAGE_BYTES)
            .max_encoding_message_size(crate::server::MAX_GRPC_MESSAGE_BYTES)
    }

    /// A health client on this datanode's probe connection.
    pub fn health_client(&self) -> HealthClient<Channel> {
        HealthClient::new(self.health_channel.clone())
    }

    /// The current observation.
    pub fn observation(&self) -> Observation {
        self.lock().clone()
    }

    /// Messages routed here so far.
    pub fn routed(&self) -> u64 {
        self.routed.load(Ordering::Relaxed)
    }

    /// Counts one message stored here.
    pub fn count_routed(&self) {
        self.routed.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times it has turned SERVING, NOT_SERVING and UNREACHABLE, in that order.
    pub fn transitions(&self) -> [(Liveness, u64); 3] {
        let count = |i: usize| self.transitions[i].load(Ordering::Relaxed);
        [
            (Liveness::Serving, count(0)),
            (Liveness::NotServing, count(1)),
            (Liveness::Unreachable, count(2)),
        ]
    }

    fn count_transition(&self, to: Liveness) {
        let i = match to {
            Liveness::Serving => 0,
            Liveness::NotServing => 1,
            Liveness::Unreachable => 2,
            // Nothing turns UNKNOWN: it is only where a datanode starts.
            Liveness::Unknown => return,
        };
        self.transitions[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether it is routed to: SERVING at its last probe, and no forward failed since.
    pub fn is_serving(&self) -> bool {
        self.lock().liveness == Liveness::Serving
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Observation> {
        self.observation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a registration changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// A new member.
    Added,
    /// Already known under this name and address: nothing changed.
    Known,
    /// Known under this name at another address: the newest address wins.
    Moved { from: String },
    /// A static entry for this address now goes by the datanode's own name.
    Renamed { from: String },
}

/// Every datanode the headnode knows, by name.
pub struct Pool {
    members: RwLock<BTreeMap<String, Arc<Datanode>>>,
    /// How every member is dialled.
    dialing: Dialing,
    /// How many members are SERVING; the headnode's readiness follows it.
    serving: watch::Sender<usize>,
    /// Ticks on every observation and membership change (the warm-up waits on it).
    changed: watch::Sender<()>,
    /// The last [`RECENT_TRANSITIONS`] liveness changes, oldest first.
    recent: Mutex<VecDeque<Transition>>,
}

/// Datanodes a pool holds at most; a Register for one more is refused.
pub const MAX_MEMBERS: usize = 1024;

/// Why a Register was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("invalid address: {0}")]
    Address(String),
    #[error("the pool is full: {MAX_MEMBERS} datanodes")]
    Full,
}

/// How the headnode connects to every datanode.
struct Dialing {
    connect_timeout: Duration,
    /// Forward connections per datanode.
    connections: usize,
    /// Deadline of one forward call, from when it is sent.
    forward_timeout: Duration,
    /// Lists open at once, for the List connections' windows.
    max_lists: usize,
    /// Mutual TLS for every connection to a datanode; `None`: plaintext.
    tls: Option<Tls>,
}

impl Pool {
    /// An empty pool that opens `connections` forward connections to each datanode (plus one
    /// for probes and one for up to `max_lists` Lists), with `tls` when given; connecting gives
    /// up after `connect_timeout`, a forward call after `forward_timeout`.
    pub fn new(
        connect_timeout: Duration,
        connections: usize,
        forward_timeout: Duration,
        max_lists: usize,
        tls: Option<Tls>,
    ) -> Self {
        Self {
            members: RwLock::new(BTreeMap::new()),
            dialing: Dialing {
                connect_timeout,
                connections,
                forward_timeout,
                max_lists,
                tls,
            },
            serving: watch::Sender::new(0),
            changed: watch::Sender::new(()),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_TRANSITIONS)),
        }
    }

    /// Adds a datanode from `--datanodes`, named after its address (see
    /// [`crate::config::static_datanode_name`]).
    pub fn add_static(&self, address: &str) -> Result<(), String> {
        let name = crate::config::static_datanode_name(address);
        let node = Datanode::new(name.clone(), address.to_string(), false, &self.dialing)?;
        self.write().insert(name, Arc::new(node));
        self.publish_serving();
        Ok(())
    }

    /// Registers a datanode that announced itself. The newest announcement of a name wins.
    pub fn register(
        &self,
        name: &str,
        address: &str,
    ) -> Result<(Registration, Arc<Datanode>), RegisterError> {
        let mut members = self.write();
        if let Some(existing) = members.get(name)
            && existing.address == address
        {
            return Ok((Registration::Known, existing.clone()));
        }
        // Every member costs connections, a batcher and a probe each round: a pool cannot grow
        // without bound, whoever registers (without TLS, anyone can).
        if !members.contains_key(name) && members.len() >= MAX_MEMBERS {
            return Err(RegisterError::Full);
        }
        let node = Arc::new(
            Datanode::new(name.to_string(), address.to_string(), true, &self.dialing)
                .map_err(RegisterError::Address)?,
        );
        let outcome = match members.insert(name.to_string(), node.clone()) {
            Some(old) => Registration::Moved {
                from: old.address.clone(),
            },
            None => {
                // A static entry for the same address is this datanode under a provisional name.
                let provisional = members
                    .iter()
                    .find(|(n, m)| !m.registered && m.address == address && n.as_str() != name)
                    .map(|(n, _)| n.clone());
                match provisional {
                    Some(old_name) => {
                        members.remove(&old_name);
                        Registration::Renamed { from: old_name }
                    }
                    None => Registration::Added,
                }
            }
        };
        drop(members);
        self.publish_serving();
        Ok((outcome, node))
    }

    /// Every member, ordered by name.
    pub fn members(&self) -> Vec<Arc<Datanode>> {
        self.read().values().cloned().collect()
    }

    /// The member called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Datanode>> {
        self.read().get(name).cloned()
    }

    /// Every member in `key`'s placement order, best first, healthy or not: ranked over all
    /// the names, so a datanode that is down keeps its place and a retry after it is back goes
    /// to it again. The caller skips the ones not [`Datanode::is_serving`].
    pub fn placement(&self, key: &str) -> Vec<Arc<Datanode>> {
        let members: Vec<Arc<Datanode>> = self.read().values().cloned().collect();
        super::placement::order(key, members, |m| m.name.as_str())
    }

    /// Whether any member has not been probed yet (registered, its first probe under way).
    pub fn any_unprobed(&self) -> bool {
        self.read()
            .values()
            .any(|m| m.lock().liveness == Liveness::Unknown)
    }

    /// Follows every change of any member's health, and every new member.
    pub fn changes(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Records a probe's result on `node`.
    pub fn record_probe(&self, node: &Datanode, result: &ProbeResult) {
        let detail = match result {
            ProbeResult::Serving(latency) | ProbeResult::NotServing(latency) => {
                format!("probe answered in {:.2}ms", latency.as_secs_f64() * 1000.0)
            }
            ProbeResult::Unreachable(error) => error.clone(),
        };
        self.update(node, detail, |o| {
            o.last_checked = Some(Utc::now());
            match result {
                ProbeResult::Serving(latency) => {
                    o.liveness = Liveness::Serving;
                    o.latency = Some(*latency);
                    o.detail.clear();
                }
                ProbeResult::NotServing(latency) => {
                    o.liveness = Liveness::NotServing;
                    o.latency = Some(*latency);
                    o.detail.clear();
                }
                ProbeResult::Unreachable(error) => {
                    o.liveness = Liveness::Unreachable;
                    o.detail = error.clone();
                }
            }
        });
    }

    /// Takes `node` out of routing at once because a forward to it failed; the next probe that
    /// finds it SERVING puts it back.
    pub fn mark_down(&self, node: &Datanode, error: &str) {
        self.update(node, error.to_string(), |o| {
            o.liveness = Liveness::Unreachable;
            o.detail = error.to_string();
        });
    }

    /// Takes `node` out of routing at once because it said it is not serving (its health Watch
    /// stream); the next probe that finds it SERVING puts it back.
    pub fn mark_not_serving(&self, node: &Datanode) {
        self.update(node, "its health watch said NOT_SERVING".to_string(), |o| {
            o.liveness = Liveness::NotServing;
            o.detail.clear();
        });
    }

    /// The last [`RECENT_TRANSITIONS`] liveness changes of any member, newest first.
    pub fn recent_transitions(&self) -> Vec<Transition> {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.iter().rev().cloned().collect()
    }

    /// Applies `change` to `node`'s observation; a change of liveness is counted and kept among
    /// the recent transitions with `detail` (why). Then republishes the number of SERVING members.
    fn update(&self, node: &Datanode, detail: String, change: impl FnOnce(&mut Observation)) {
        let transition = {
            let mut o = node.lock();
            let before = o.liveness;
            change(&mut o);
            (o.liveness != before).then(|| {
                let at = Utc::now();
                o.last_change = Some(at);
                Transition {
                    at,
                    datanode: node.name.clone(),
                    address: node.address.clone(),
                    from: before,
                    to: o.liveness,
                    detail,
                }
            })
        };
        if let Some(transition) = transition {
            node.count_transition(transition.to);
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            if recent.len() == RECENT_TRANSITIONS {
                recent.pop_front();
            }
            recent.push_back(transition);
        }
        self.publish_serving();
    }

    /// Follows the number of SERVING members.
    pub fn serving(&self) -> watch::Receiver<usize> {
        self.serving.subscribe()
    }

    fn publish_serving(&self) {
        self.changed.send_replace(());
        let count = self.read().values().filter(|m| m.is_serving()).count();
        self.serving
            .send_if_modified(|n| std::mem::replace(n, count) != count);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Datanode>>> {
        self.members.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Datanode>>> {
        self.members.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Pool {
        Pool::new(
            Duration::from_millis(100),
            2,
            Duration::from_millis(500),
            4,
            None,
        )
    }

    /// The order of [`Pool::placement`] is [`super::super::placement::rank`] over every
    /// member's name, healthy or not, whatever order the members joined in.
    #[tokio::test]
    async fn placement_ranks_every_member_by_name_healthy_or_not() {
        let p = pool();
        for port in [3, 1, 2] {
            p.add_static(&format!("127.0.0.1:{port}")).unwrap();
        }
        let a = p.get("127.0.0.1:1").unwrap();
        p.record_probe(&a, &ProbeResult::Serving(Duration::ZERO));
        let names = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];
        for key in ["k1", "k2", "k3", "k4"] {
            let expected: Vec<&str> = super::super::placement::rank(key, &names)
                .into_iter()
                .map(|i| names[i])
                .collect();
            let got: Vec<String> = p.placement(key).iter().map(|m| m.name.clone()).collect();
            assert_eq!(got, expected, "{key}");
        }
        assert!(p.any_unprobed());
        for m in p.members() {
            p.mark_down(&m, "gone");
        }
        assert!(!p.any_unprobed());
        assert!(p.placement("k1").iter().all(|m| !m.is_serving()));
        assert_eq!(*p.serving().borrow(), 0);
    }

    #[tokio::test]
    async fn registration_renames_a_static_entry_and_the_newest_address_wins() {
        let p = pool();
        p.add_static("127.0.0.1:6001").unwrap();
        let (r, _) = p.register("datanode1", "127.0.0.1:6001").unwrap();
        assert_eq!(
            r,
            Registration::Renamed {
                from: "127.0.0.1:6001".into()
            }
        );
        assert_eq!(p.members().len(), 1);
        assert_eq!(
            p.register("datanode1", "127.0.0.1:6001").unwrap().0,
            Registration::Known
        );
        let (r, _) = p.register("datanode1", "127.0.0.1:7001").unwrap();
        assert_eq!(
            r,
            Registration::Moved {
                from: "127.0.0.1:6001".into()
            }
        );
        assert_eq!(p.get("datanode1").unwrap().address, "127.0.0.1:7001");
        assert!(p.register("bad", "no-port").is_err());
    }

    /// A pool holds at most MAX_MEMBERS datanodes: one more name is refused (whoever registers
    /// it), while a member that is already in may register again, from any address.
    #[tokio::test]
    async fn the_pool_cannot_grow_past_its_bound() {
        let p = pool();
        for i in 0..MAX_MEMBERS {
            p.register(&format!("d{i}"), "127.0.0.1:6001").unwrap();
        }
        assert!(matches!(
            p.register("one-more", "127.0.0.1:6001"),
            Err(RegisterError::Full)
        ));
        assert_eq!(p.members().len(), MAX_MEMBERS);
        assert!(p.register("d0", "127.0.0.1:7001").is_ok());
    }

    /// Each change of liveness is counted by where it went and kept among the recent
    /// transitions (the last RECENT_TRANSITIONS, newest first); a repeat of the same status is
    /// not a transition.
    #[tokio::test]
    async fn transitions_are_counted_and_the_last_ones_kept() {
        let p = pool();
        p.add_static("127.0.0.1:1").unwrap();
        let a = p.get("127.0.0.1:1").unwrap();
        let serving = ProbeResult::Serving(Duration::from_micros(500));
        p.record_probe(&a, &serving);
        p.record_probe(&a, &serving);
        assert!(a.observation().last_change.is_some());
        for i in 0..15 {
            p.mark_down(&a, &format!("refused {i}"));
            p.record_probe(&a, &serving);
        }
        p.mark_not_serving(&a);
        let counts = a.transitions();
        assert_eq!(counts[0], (Liveness::Serving, 16));
        assert_eq!(counts[1], (Liveness::NotServing, 1));
        assert_eq!(counts[2], (Liveness::Unreachable, 15));
        let recent = p.recent_transitions();
        assert_eq!(recent.len(), RECENT_TRANSITIONS);
        assert_eq!(
            (recent[0].from, recent[0].to),
            (Liveness::Serving, Liveness::NotServing)
        );
        assert_eq!(recent[1].detail, "probe answered in 0.50ms");
        assert_eq!(
            (recent[2].to, recent[2].detail.as_str()),
            (Liveness::Unreachable, "refused 14")
        );
    }
}
