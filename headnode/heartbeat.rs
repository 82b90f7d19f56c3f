//! The headnode's `registro.v1.Heartbeat`: datanodes register, anyone asks for the pool's status.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::pool::{Pool, Registration};
use super::probe;
use crate::logfile::LogFile;
use crate::pb::{self, DatanodeStatus, RegisterReply, RegisterRequest, StatusReply, StatusRequest};

/// The Heartbeat service.
pub struct HeartbeatService {
    pool: Arc<Pool>,
    /// Where a newly registered datanode's first probe is logged.
    heartbeat_log: LogFile,
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
}

impl HeartbeatService {
    pub fn new(
        pool: Arc<Pool>,
        heartbeat_log: LogFile,
        heartbeat_interval: Duration,
        heartbeat_timeout: Duration,
    ) -> Self {
        Self {
            pool,
            heartbeat_log,
            heartbeat_interval,
            heartbeat_timeout,
        }
    }
}

fn check_name(name: &str) -> Result<(), Status> {
    if name.is_empty()
        || name.len() > 253
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Status::invalid_argument(format!(
            "datanode name {name:?} must be 1 to 253 characters without spaces"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::heartbeat_server::Heartbeat for HeartbeatService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        crate::auth::check_registered_name(request.extensions(), &request.get_ref().name)?;
        let RegisterRequest { name, address } = request.into_inner();
        check_name(&name)?;
        let (outcome, node) = self
            .pool
            .register(&name, &address)
            .map_err(|e| Status::invalid_argument(format!("invalid address: {e}")))?;
        match &outcome {
            Registration::Known => {}
            Registration::Added => {
                tracing::info!(datanode = %name, address = %address, "datanode registered")
            }
            Registration::Moved { from } => {
                tracing::warn!(datanode = %name, from = %from, to = %address, "datanode registered again from a new address; the newest wins")
            }
            Registration::Renamed { from } => {
                tracing::info!(datanode = %name, static_name = %from, address = %address, "static datanode registered under its own name")
            }
        }
        let added = outcome != Registration::Known;
        if added {
            // Probe at once, so a new datanode takes traffic without waiting for the next round.
            let pool = self.pool.clone();
            let log = self.heartbeat_log.clone();
            let timeout = self.heartbeat_timeout;
            tokio::spawn(async move { probe::probe_now(&pool, &log, &node, timeout).await });
        }
        Ok(Response::new(RegisterReply {
            added,
            heartbeat_interval_ms: u64::try_from(self.heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        let datanodes = self
            .pool
            .members()
            .iter()
            .map(|m| {
                let o = m.observation();
                DatanodeStatus {
                    name: m.name.clone(),
                    address: m.address.clone(),
                    status: o.liveness.as_str().to_string(),
                    last_checked: o.last_checked.map(crate::time::to_proto),
                    latency_ms: o.latency.map_or(0.0, |l| l.as_secs_f64() * 1000.0),
                    routed: m.routed(),
                    detail: o.detail,
                    registered: m.registered,
                }
            })
            .collect();
        Ok(Response::new(StatusReply { datanodes }))
    }
}
