//! Announcing this datanode to its headnodes.
//!
//! The datanode calls `Heartbeat/Register` at start and then again every heartbeat interval (the
//! headnode says how long that is). Registering is idempotent, so repeating it costs one small
//! RPC; in exchange a headnode that restarted and forgot its pool has this datanode back within
//! one interval, with no one restarting anything. While a headnode cannot be reached the datanode
//! tries again every 200 ms, so a headnode that restarts has it back at once.
//!
//! `--headnode` lists one or more URLs, comma-separated; the datanode registers with each (the
//! headnodes share nothing, so each must hear from it). A URL whose host is a name means every
//! address the name resolves to, resolved again every interval: that is how a datanode finds
//! every replica of a headnode behind Swarm's `tasks.headnode` or a Kubernetes headless Service,
//! including one that was just started. Each address gets a registration loop of its own, so a
//! hung headnode cannot delay the others.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::codegen::http::Uri;
use tonic::transport::Channel;

use crate::config::DialError;
use crate::pb::RegisterRequest;
use crate::pb::heartbeat_client::HeartbeatClient;
use crate::tls::Tls;

/// Used until a headnode tells its own interval.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on one Register call (and one name resolution), so a hung headnode cannot stall its
/// loop.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// The wait between attempts while a headnode cannot be reached (when shorter than its
/// interval): a restarted headnode hears from this datanode within this long of listening, so
/// its warm-up ends sooner, for the cost of a refused connection a few times a second.
const RETRY_WHILE_FAILING: Duration = Duration::from_millis(200);

/// Who this datanode is, as it announces itself.
#[derive(Debug, Clone)]
struct Announcement {
    name: String,
    address: String,
}

/// The headnode URLs of `--headnode` (comma-separated URLs or host:port).
fn urls(headnodes: &str) -> impl Iterator<Item = &str> {
    headnodes
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
}

/// Checks every headnode address at start-up: with TLS, an http:// headnode is an error then,
/// not a silent retry loop.
pub fn check(headnodes: &str, tls: Option<&Tls>) -> Result<(), DialError> {
    for url in urls(headnodes) {
        crate::config::dial(url, CALL_TIMEOUT, tls)?;
    }
    Ok(())
}

/// Keeps this datanode registered with every headnode `headnodes` names (comma-separated URLs or
/// host:port) until `stop` turns true; dials with mutual TLS when `tls` is given.
pub async fn run(
    headnodes: String,
    tls: Option<Tls>,
    name: String,
    address: String,
    stop: watch::Receiver<bool>,
) {
    let me = Announcement { name, address };
    let mut tasks = tokio::task::JoinSet::new();
    for url in urls(&headnodes) {
        tasks.spawn(follow(
            url.to_string(),
            tls.clone(),
            me.clone(),
            stop.clone(),
        ));
    }
    tasks.join_all().await;
}

/// The parts of a `--headnode` URL that resolution needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    scheme: String,
    host: String,
    port: u16,
}

impl Target {
    /// Parses `url` (`http://host:port`, `https://…`, or a bare `host:port`, which is https://
    /// when this datanode has TLS).
    fn parse(url: &str, tls: bool) -> Result<Self, String> {
        let uri: Uri = crate::config::url(url, tls)
            .map_err(|e| e.to_string())?
            .parse()
            .map_err(|e| format!("{e}"))?;
        let scheme = uri.scheme_str().unwrap_or("http").to_string();
        let host = uri.host().ok_or("no host")?.to_string();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        Ok(Self { scheme, host, port })
    }

    /// The IP address when the host is one (nothing to resolve).
    fn ip(&self) -> Option<IpAddr> {
        self.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .ok()
    }

    /// The URL of one resolved address.
    fn url_of(&self, addr: SocketAddr) -> String {
        format!("{}://{addr}", self.scheme)
    }

    /// A channel to one resolved address. Under TLS the headnode's certificate is checked
    /// against the host name, not the address it resolved to.
    fn channel_to(&self, addr: SocketAddr, tls: Option<&Tls>) -> Result<Channel, String> {
        let endpoint =
            crate::config::endpoint(&self.url_of(addr), CALL_TIMEOUT).map_err(|e| e.to_string())?;
        let endpoint = match tls {
            Some(tls) => endpoint
                .tls_config(tls.client_config().domain_name(self.host.clone()))
                .map_err(|e| e.to_string())?,
            None => endpoint,
        };
        Ok(endpoint.connect_lazy())
    }
}

/// Keeps this datanode registered with every address `url` names: one loop for an IP address,
/// or one per resolved address of a host name, following the name as it changes.
async fn follow(url: String, tls: Option<Tls>, me: Announcement, mut stop: watch::Receiver<bool>) {
    let target = match Target::parse(&url, tls.is_some()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(headnode = %url, error = %e, "invalid --headnode address; not registering with it");
            return;
        }
    };
    // The interval the headnodes of this URL asked for, in milliseconds, shared by the loops.
    let interval = Arc::new(AtomicU64::new(millis(DEFAULT_INTERVAL)));
    if target.ip().is_some() {
        match crate::config::lazy_channel(&url, CALL_TIMEOUT, tls.as_ref()) {
            Ok(channel) => keep_registered(url, channel, me, interval, stop).await,
            Err(e) => {
                tracing::error!(headnode = %url, error = %e, "invalid --headnode address; not registering with it")
            }
        }
        return;
    }
    let mut loops: BTreeMap<SocketAddr, JoinHandle<()>> = BTreeMap::new();
    // Whether the last resolution failed, so a streak of failures is logged once.
    let mut failing = false;
    loop {
        let resolved = tokio::time::timeout(
            CALL_TIMEOUT,
            tokio::net::lookup_host((target.host.as_str(), target.port)),
        )
        .await;
        match resolved {
            Ok(Ok(addrs)) => {
                failing = false;
                let now: BTreeSet<SocketAddr> = addrs.collect();
                loops.retain(|addr, task| {
                    let keep = now.contains(addr);
                    if !keep {
                        tracing::info!(headnode = %url, address = %addr, "no longer resolved; stopped registering with it");
                        task.abort();
                    }
                    keep
                });
                for addr in now {
                    if loops.contains_key(&addr) {
                        continue;
                    }
                    match target.channel_to(addr, tls.as_ref()) {
                        Ok(channel) => {
                            let task = tokio::spawn(keep_registered(
                                target.url_of(addr),
                                channel,
                                me.clone(),
                                interval.clone(),
                                stop.clone(),
                            ));
                            loops.insert(addr, task);
                        }
                        Err(e) => {
                            tracing::error!(headnode = %url, address = %addr, error = %e, "cannot dial a resolved headnode address")
                        }
                    }
                }
            }
            // A failed lookup keeps the addresses already known: a DNS hiccup is not a reason
            // to stop heartbeats.
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(headnode = %url, error = %e, "cannot resolve the headnode's host; will retry");
                }
                failing = true;
            }
            Err(_) => {
                if !failing {
                    tracing::warn!(headnode = %url, "resolving the headnode's host timed out; will retry");
                }
                failing = true;
            }
        }
        let wait = Duration::from_millis(interval.load(Ordering::Relaxed));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|stopped| *stopped) => break,
        }
    }
    for (_, task) in loops {
        let _ = task.await;
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Registers with the headnode at `url` (reached through `channel`) every interval until `stop`
/// turns true.
async fn keep_registered(
    url: String,
    channel: Channel,
    me: Announcement,
    interval: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) {
    let mut client = HeartbeatClient::new(channel);
    // Whether the last attempt failed, so a streak of failures is logged once.
    let mut failing = false;
    loop {
        let request = RegisterRequest {
            name: me.name.clone(),
            address: me.address.clone(),
        };
        match tokio::time::timeout(CALL_TIMEOUT, client.register(request)).await {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                if reply.added {
                    tracing::info!(headnode = %url, name = %me.name, address = %me.address, "registered with the headnode");
                }
                failing = false;
                if reply.heartbeat_interval_ms > 0 {
                    interval.store(reply.heartbeat_interval_ms, Ordering::Relaxed);
                }
            }
            Ok(Err(status)) => {
                if !failing {
                    let error = crate::tls::explain(&status, true)
                        .unwrap_or_else(|| crate::one_line(status.message()));
                    tracing::warn!(headnode = %url, code = ?status.code(), error = %error, "headnode refused registration; will retry");
                }
                failing = true;
            }
            Err(_) => {
                if !failing {
                    tracing::warn!(headnode = %url, "no answer from the headnode to Register; will retry");
                }
                failing = true;
            }
        }
        let mut wait = Duration::from_millis(interval.load(Ordering::Relaxed));
        if failing {
            wait = wait.min(RETRY_WHILE_FAILING);
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headnode_urls_parse_with_or_without_a_scheme() {
        let t = Target::parse("http://tasks.headnode:5000", false).unwrap();
        assert_eq!(
            t,
            Target {
                scheme: "http".into(),
                host: "tasks.headnode".into(),
                port: 5000
            }
        );
        assert!(t.ip().is_none());
        let bare = Target::parse("127.0.0.1:5000", false).unwrap();
        assert_eq!(bare.scheme, "http");
        assert_eq!(
            Target::parse("127.0.0.1:5000", true).unwrap().scheme,
            "https"
        );
        assert!(
            Target::parse("http://h:5000", true).is_err(),
            "plaintext under TLS"
        );
        assert_eq!(bare.ip(), Some(IpAddr::from([127, 0, 0, 1])));
        let v6 = Target::parse("http://[::1]:5000", false).unwrap();
        assert!(v6.ip().is_some());
        assert_eq!(
            v6.url_of("[::1]:5000".parse().unwrap()),
            "http://[::1]:5000"
        );
        assert!(Target::parse("http://", false).is_err());
    }
}
