//! Announcing this datanode to the headnode.
//!
//! The datanode calls `Heartbeat/Register` at start and then again every heartbeat interval (the
//! headnode says how long that is). Registering is idempotent, so repeating it costs one small
//! RPC; in exchange a headnode that restarted and forgot its pool has this datanode back within
//! one interval, with no one restarting anything.

use std::time::Duration;

use tokio::sync::watch;
use tonic::transport::Channel;

use crate::pb::RegisterRequest;
use crate::pb::heartbeat_client::HeartbeatClient;

/// Used until the headnode tells its own interval.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Bound on one Register call, so a hung headnode cannot stall the loop.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Keeps this datanode registered with `headnode` (reached through `channel`) until `stop`
/// turns true.
pub async fn run(
    headnode: String,
    channel: Channel,
    name: String,
    address: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut client = HeartbeatClient::new(channel);
    let mut interval = DEFAULT_INTERVAL;
    // Whether the last attempt failed, so a streak of failures is logged once.
    let mut failing = false;
    loop {
        let request = RegisterRequest {
            name: name.clone(),
            address: address.clone(),
        };
        match tokio::time::timeout(CALL_TIMEOUT, client.register(request)).await {
            Ok(Ok(reply)) => {
                let reply = reply.into_inner();
                if reply.added {
                    tracing::info!(headnode = %headnode, name = %name, address = %address, "registered with the headnode");
                }
                failing = false;
                if reply.heartbeat_interval_ms > 0 {
                    interval = Duration::from_millis(reply.heartbeat_interval_ms);
                }
            }
            Ok(Err(status)) => {
                if !failing {
                    let error = crate::tls::explain(&status, true)
                        .unwrap_or_else(|| crate::one_line(status.message()));
                    tracing::warn!(headnode = %headnode, code = ?status.code(), error = %error, "headnode refused registration; will retry");
                }
                failing = true;
            }
            Err(_) => {
                if !failing {
                    tracing::warn!(headnode = %headnode, "no answer from the headnode to Register; will retry");
                }
                failing = true;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}
