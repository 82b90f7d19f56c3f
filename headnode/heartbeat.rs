//! The headnode's `registro.v1.Heartbeat`: datanodes register, anyone asks for the pool's status.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::pool::{Pool, RegisterError, Registration};
use super::probe;
use super::repair::Repairer;
use crate::logfile::LogFile;
use crate::pb::{
    self, DatanodeStatus, RegisterReply, RegisterRequest, RepairReply, RepairRequest, StatusReply,
    StatusRequest,
};

/// The Heartbeat service.
pub struct HeartbeatService {
    pool: Arc<Pool>,
    /// Where a newly registered datanode's first probe is logged.
    heartbeat_log: LogFile,
    heartbeat_interval: Duration,
    heartbeat_timeout: Duration,
    /// Runs `Repair`; without one (a headnode built without it) Repair is UNIMPLEMENTED.
    repairer: Option<Repairer>,
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
            repairer: None,
        }
    }

    /// Serves `Repair` with `repairer`.
    pub fn with_repair(mut self, repairer: Repairer) -> Self {
        self.repairer = Some(repairer);
        self
    }
}

/// The longest datanode name accepted at Register (a DNS name's limit).
pub const MAX_NAME_BYTES: usize = 253;

/// A datanode name is what a host name may be: 1 to [`MAX_NAME_BYTES`] ASCII letters, digits,
/// `.`, `-` and `_`. Names reach the heartbeat log, the registro log and Status; anything else
/// (spaces, newlines, control or non-ASCII characters) could forge or shift a log line.
pub fn check_name(name: &str) -> Result<(), Status> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    if name.is_empty() || name.len() > MAX_NAME_BYTES || !name.chars().all(allowed) {
        return Err(Status::invalid_argument(format!(
            "datanode name {name:?} must be 1 to {MAX_NAME_BYTES} ASCII letters, digits, '.', '-' or '_'"
        )));
    }
    Ok(())
}

/// A registered address is `host:port` in printable ASCII (it reaches the same logs as a name).
fn check_address(address: &str) -> Result<(), Status> {
    if address.len() > MAX_NAME_BYTES + 6 || !address.chars().all(|c| c.is_ascii_graphic()) {
        return Err(Status::invalid_argument(format!(
            "datanode address {address:?} must be host:port in printable ASCII"
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
        check_address(&address)?;
        let (outcome, node) = self.pool.register(&name, &address).map_err(|e| match e {
            RegisterError::Address(_) => Status::invalid_argument(e.to_string()),
            RegisterError::Full => Status::resource_exhausted(e.to_string()),
        })?;
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

    type RepairStream = tokio_stream::wrappers::ReceiverStream<Result<RepairReply, Status>>;

    async fn repair(
        &self,
        _request: Request<RepairRequest>,
    ) -> Result<Response<Self::RepairStream>, Status> {
        let repairer = self
            .repairer
            .as_ref()
            .ok_or_else(|| Status::unimplemented("this headnode does not repair"))?;
        let replies = repairer.start()?;
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            replies,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_host_names() {
        for good in [
            "datanode1",
            "datanode-0.datanode.default.svc",
            "d_1",
            &"a".repeat(253),
        ] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "two words",
            "line\n2026-01-01T00:00:00.000Z forged SERVING",
            "tab\t",
            "ñandú",
            "127.0.0.1:6001",
            &"a".repeat(254),
        ] {
            assert_eq!(
                check_name(bad).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad:?}"
            );
        }
        assert!(check_address("10.0.0.1:6000").is_ok());
        assert!(check_address("host:1\nforged").is_err());
        assert!(check_address("host:\u{1b}[2J").is_err());
    }
}
