//! The heartbeat: every interval, one `grpc.health.v1.Health/Check` per datanode (for
//! `registro.v1.Store`, so a datanode whose disk fails reads NOT_SERVING), its result recorded in
//! the pool and written as one heartbeat-log line:
//!
//! `<ts> <datanode> <address> <STATUS> <detail>` — detail is the latency (`0.42ms`) or the error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use super::pool::{Datanode, Pool, ProbeResult};
use crate::logfile::LogFile;

/// Probes the whole pool every `interval` until `stop` turns true.
pub async fn run(
    pool: Arc<Pool>,
    log: LogFile,
    interval: Duration,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let members = pool.members();
        let results = futures::future::join_all(members.iter().map(|m| probe(m, timeout))).await;
        for (member, result) in members.iter().zip(results) {
            record(&pool, &log, member, &result);
        }
    }
}

/// Probes one datanode now, outside the periodic round (a datanode that just registered).
pub async fn probe_now(pool: &Pool, log: &LogFile, member: &Datanode, timeout: Duration) {
    let result = probe(member, timeout).await;
    record(pool, log, member, &result);
}

fn record(pool: &Pool, log: &LogFile, member: &Datanode, result: &ProbeResult) {
    let before = member.observation().liveness;
    pool.record_probe(member, result);
    let line = format_line(&crate::time::now(), &member.name, &member.address, result);
    let after = member.observation().liveness;
    if before != after {
        tracing::info!(datanode = %member.name, from = before.as_str(), to = after.as_str(), "datanode status changed");
    }
    log.line(line);
}

/// One health check with a deadline.
pub async fn probe(member: &Datanode, timeout: Duration) -> ProbeResult {
    let mut client = member.health_client();
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: crate::STORE_SERVICE.to_string(),
    });
    request.set_timeout(timeout);
    let start = Instant::now();
    match tokio::time::timeout(timeout, client.check(request)).await {
        Ok(Ok(reply)) => {
            let latency = start.elapsed();
            if reply.into_inner().status() == ServingStatus::Serving {
                ProbeResult::Serving(latency)
            } else {
                ProbeResult::NotServing(latency)
            }
        }
        Ok(Err(status)) => ProbeResult::Unreachable(describe(&status)),
        Err(_) => ProbeResult::Unreachable(format!(
            "no answer within {}",
            humantime::format_duration(timeout)
        )),
    }
}

/// A status as one line of text: code and message, with the transport's underlying cause.
pub fn describe(status: &tonic::Status) -> String {
    use std::error::Error as _;
    let mut text = format!("{:?}: {}", status.code(), status.message());
    let mut source = status.source();
    while let Some(cause) = source {
        // Transport errors repeat their causes' text; keep each piece once.
        let piece = cause.to_string();
        if !text.contains(&piece) {
            text.push_str(": ");
            text.push_str(&piece);
        }
        source = cause.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The heartbeat-log line for one probe.
pub fn format_line(ts: &str, name: &str, address: &str, result: &ProbeResult) -> String {
    let (status, detail) = match result {
        ProbeResult::Serving(latency) => ("SERVING", format_latency(*latency)),
        ProbeResult::NotServing(latency) => ("NOT_SERVING", format_latency(*latency)),
        ProbeResult::Unreachable(error) => ("UNREACHABLE", error.clone()),
    };
    format!("{ts} {name} {address} {status} {detail}")
}

fn format_latency(latency: Duration) -> String {
    format!("{:.2}ms", latency.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_follow_the_spec() {
        let ts = "2026-11-23T10:00:00.000Z";
        assert_eq!(
            format_line(
                ts,
                "datanode1",
                "datanode1:6000",
                &ProbeResult::Serving(Duration::from_micros(420))
            ),
            "2026-11-23T10:00:00.000Z datanode1 datanode1:6000 SERVING 0.42ms"
        );
        assert_eq!(
            format_line(
                ts,
                "d",
                "h:1",
                &ProbeResult::Unreachable("Unavailable: connection refused".into())
            ),
            "2026-11-23T10:00:00.000Z d h:1 UNREACHABLE Unavailable: connection refused"
        );
    }
}
