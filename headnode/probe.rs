//! The heartbeat: every interval, one `grpc.health.v1.Health/Check` per datanode, its result
//! recorded in the pool and written as one heartbeat-log line:
//!
//! `<ts> <datanode> <address> <STATUS> <detail>` — detail is the latency (`0.42ms`) or the error.
//!
//! Between rounds, the headnode also follows each datanode's `Health/Watch` stream: a datanode
//! that dies (its connection drops) or turns NOT_SERVING (shutting down, disk failing) is taken
//! out of routing the moment its stream says so, and that change gets a log line of its own.
//! Bringing a datanode back is left to the probes, so a flapping stream cannot route to a node
//! that no probe has seen healthy.
//!
//! Both ask about `registro.v1.Datanode`, the service the headnode forwards through: a datanode
//! whose disk fails reads NOT_SERVING, and a server that does not offer the service (a datanode
//! of an older version, or any other Store server) answers NOT_FOUND and never gets traffic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use super::pool::{Datanode, Liveness, Pool, ProbeResult};
use crate::logfile::{LogFile, field};

/// The first early round's delay while no datanode is SERVING; each one after waits twice as
/// long, up to the heartbeat interval.
const FIRST_RECHECK: Duration = Duration::from_millis(100);

/// Probes the whole pool every `interval` until `stop` turns true, and sooner while no datanode
/// is SERVING.
///
/// When the last SERVING datanode leaves routing, a round runs at once, and while none is back
/// the next rounds come after 100 ms, 200 ms, 400 ms, … up to `interval`. That is for a stall
/// that hits every datanode together (a disk they share, a headnode starved of CPU past the
/// forward deadline): the forwards time out and mark them all down, and every Store gets
/// UNAVAILABLE until a probe finds one healthy, which would otherwise be up to an interval after
/// the stall ended. It also finds datanodes that start after the headnode sooner. A cluster that
/// stays down gets a handful of extra rounds, then the usual rhythm.
pub async fn run(
    pool: Arc<Pool>,
    log: LogFile,
    interval: Duration,
    timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut serving = pool.serving();
    let mut watchers = Watchers::default();
    let mut next = tokio::time::Instant::now();
    // The wait before the next early round, while no datanode is SERVING.
    let mut recheck = FIRST_RECHECK;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            changed = serving.changed() => {
                if changed.is_err() {
                    return;
                }
                if *serving.borrow_and_update() > 0 {
                    recheck = FIRST_RECHECK;
                    continue;
                }
                if recheck > FIRST_RECHECK {
                    // Already rechecking on the back-off.
                    continue;
                }
                tracing::info!("no datanode is SERVING any more; probing them all now");
            }
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let round = tokio::time::Instant::now();
        let members = pool.members();
        watchers.follow(&members, &pool, &log);
        let results = futures::future::join_all(members.iter().map(|m| probe(m, timeout))).await;
        for (member, result) in members.iter().zip(results) {
            record(&pool, &log, member, &result);
        }
        // This round's own results are not a reason for another one.
        let none_serving = *serving.borrow_and_update() == 0;
        if none_serving && !members.is_empty() && recheck < interval {
            next = round + recheck;
            recheck *= 2;
        } else {
            next = round + interval;
            if !none_serving {
                recheck = FIRST_RECHECK;
            }
        }
    }
}

/// One `Health/Watch` task per datanode (by name and address), restarted each round if it ended.
#[derive(Default)]
struct Watchers {
    tasks: HashMap<(String, String), tokio::task::JoinHandle<()>>,
}

impl Watchers {
    fn follow(&mut self, members: &[Arc<Datanode>], pool: &Arc<Pool>, log: &LogFile) {
        self.tasks.retain(|(name, address), task| {
            let current = members
                .iter()
                .any(|m| &m.name == name && &m.address == address);
            if !current {
                task.abort();
            }
            current && !task.is_finished()
        });
        for member in members {
            self.tasks
                .entry((member.name.clone(), member.address.clone()))
                .or_insert_with(|| tokio::spawn(watch(pool.clone(), log.clone(), member.clone())));
        }
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

/// Follows one datanode's health stream until it ends; takes the datanode out of routing the
/// moment the stream reports it not serving, or breaks.
async fn watch(pool: Arc<Pool>, log: LogFile, member: Arc<Datanode>) {
    let request = HealthCheckRequest {
        service: crate::DATANODE_SERVICE.to_string(),
    };
    // A datanode that cannot be reached now is the probes' business; the next round retries.
    let Ok(stream) = member.health_client().watch(request).await else {
        return;
    };
    let mut stream = stream.into_inner();
    loop {
        let serving = member.observation().liveness == Liveness::Serving;
        match stream.message().await {
            Ok(Some(reply)) if reply.status() == ServingStatus::Serving => {}
            Ok(Some(_)) => {
                if serving {
                    tracing::info!(datanode = %member.name, "health watch: datanode not serving; out of routing now");
                    pool.mark_not_serving(&member);
                    log.line(format!(
                        "{} {} {} NOT_SERVING health watch",
                        crate::time::now(),
                        field(&member.name),
                        field(&member.address)
                    ));
                }
            }
            Ok(None) | Err(_) => {
                if member.observation().liveness == Liveness::Serving {
                    let error = "health watch stream broke: connection lost";
                    tracing::info!(datanode = %member.name, "{error}; out of routing now");
                    pool.mark_down(&member, error);
                    let result = ProbeResult::Unreachable(error.to_string());
                    log.line(format_line(
                        &crate::time::now(),
                        &member.name,
                        &member.address,
                        &result,
                    ));
                }
                return;
            }
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
        service: crate::DATANODE_SERVICE.to_string(),
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
        Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
            ProbeResult::Unreachable(format!(
                "it does not serve {} (a datanode of another version?)",
                crate::DATANODE_SERVICE
            ))
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
    crate::one_line(&text)
}

/// The heartbeat-log line for one probe.
pub fn format_line(ts: &str, name: &str, address: &str, result: &ProbeResult) -> String {
    let (status, detail) = match result {
        ProbeResult::Serving(latency) => ("SERVING", format_latency(*latency)),
        ProbeResult::NotServing(latency) => ("NOT_SERVING", format_latency(*latency)),
        ProbeResult::Unreachable(error) => ("UNREACHABLE", error.clone()),
    };
    let (name, address) = (field(name), field(address));
    format!(
        "{ts} {name} {address} {status} {}",
        crate::one_line(&detail)
    )
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

    #[test]
    fn a_name_or_an_error_cannot_forge_a_heartbeat_line() {
        let line = format_line(
            "ts",
            "d\nts forged SERVING",
            "h:1 x",
            &ProbeResult::Unreachable("refused\nts other UNREACHABLE".into()),
        );
        assert_eq!(line.lines().count(), 1, "{line}");
        assert_eq!(
            line,
            r"ts d\nts\u{20}forged\u{20}SERVING h:1\u{20}x UNREACHABLE refused ts other UNREACHABLE"
        );
    }
}
