//! Warm-up: a headnode that has just started does not take Stores until it knows its pool.
//!
//! Placement is only as good as the pool it ranks: a headnode restarted with an empty pool
//! that placed a retried message while only some datanodes had re-registered would put it on a
//! datanode other than the one that already holds it, and it would be stored twice. So until the
//! headnode has heard from every datanode that will come back, Store answers UNAVAILABLE (a
//! client with another headnode's address goes there at once; one without retries after a
//! back-off) and the health protocol reports `registro.v1.Store` NOT_SERVING.
//!
//! Every registered datanode re-registers once per heartbeat interval (the interval the headnode
//! tells it), so one interval after the start, plus one timeout for the call to arrive, every
//! datanode that is alive has registered; datanodes given with `--datanodes` are known at once
//! and need only the first probe round. Either way warm-up then waits for every
//! datanode known to have had its first probe (a registration probes at once), bounded by
//! twice the probe timeout.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Status;

use super::pool::Pool;

/// The answer to a Store during warm-up.
pub fn unavailable() -> Status {
    Status::unavailable(
        "the headnode has just started and is still learning which datanodes it has (warm-up: one heartbeat interval plus timeout); retry, or send to another headnode",
    )
}

/// How long warm-up waits for registrations: one heartbeat interval plus timeout when datanodes
/// register themselves, nothing when they are all given with `--datanodes`.
pub fn window(static_datanodes: bool, interval: Duration, timeout: Duration) -> Duration {
    if static_datanodes {
        Duration::ZERO
    } else {
        interval + timeout
    }
}

/// The longest warm-up waits for first probes after the window: a probe ends within its
/// timeout; twice that leaves room for connecting.
fn probe_bound(timeout: Duration) -> Duration {
    timeout * 2
}

/// How much of the end of the heartbeat log [`expected_from_log`] reads: many rounds of a large
/// pool, and a bounded read at start-up whatever the log's size.
const LOG_TAIL_BYTES: u64 = 256 * 1024;

/// The datanodes the heartbeat log at `path` says were SERVING in the last round it holds (the
/// lines within two `interval`s of its last line, each datanode's last word): the ones a
/// restarted headnode can expect to re-register. Empty when there is no log or it says
/// nothing usable. Blocking (it reads a file): call it from `spawn_blocking`.
pub fn expected_from_log(path: &Path, interval: Duration) -> BTreeSet<String> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return BTreeSet::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut tail = Vec::new();
    if file
        .seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))
        .and_then(|_| file.take(LOG_TAIL_BYTES).read_to_end(&mut tail))
        .is_err()
    {
        return BTreeSet::new();
    }
    last_round_serving(&String::from_utf8_lossy(&tail), interval)
}

/// The names SERVING in the last round of heartbeat-log `text` (see [`expected_from_log`]).
fn last_round_serving(text: &str, interval: Duration) -> BTreeSet<String> {
    // (time, name, status) of every well-formed line; a torn first line of the tail is skipped.
    let lines: Vec<_> = text
        .lines()
        .filter_map(|line| {
            let mut words = line.split(' ');
            let at = crate::time::parse(words.next()?)?;
            let name = words.next()?;
            let _address = words.next()?;
            let status = words.next()?;
            Some((at, name, status))
        })
        .collect();
    let Some(last) = lines.iter().map(|(at, _, _)| *at).max() else {
        return BTreeSet::new();
    };
    let since = last - chrono::Duration::from_std(interval * 2).unwrap_or_default();
    let mut latest: BTreeMap<&str, &str> = BTreeMap::new();
    for (at, name, status) in lines {
        if at >= since {
            latest.insert(name, status);
        }
    }
    latest
        .into_iter()
        .filter(|(_, status)| *status == "SERVING")
        .map(|(name, _)| name.to_string())
        .collect()
}

/// Whether every datanode in `expected` is back in `pool` and has been probed.
fn all_back(pool: &Pool, expected: &BTreeSet<String>) -> bool {
    !expected.is_empty()
        && expected.iter().all(|name| pool.get(name).is_some())
        && !pool.any_unprobed()
}

/// Waits out the window (or until every datanode in `expected` is back and probed), then until
/// every member of `pool` has been probed (at most twice `probe_timeout` more), then sets `warm`.
/// Ends early, leaving `warm` false, when `stop` turns true.
pub async fn run(
    pool: Arc<Pool>,
    window: Duration,
    expected: BTreeSet<String>,
    probe_timeout: Duration,
    warm: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let mut changes = pool.changes();
    let window_end = started + window;
    loop {
        changes.borrow_and_update();
        if all_back(&pool, &expected) {
            tracing::info!(datanodes = ?expected, "warm-up: every datanode SERVING before the restart is back");
            break;
        }
        tokio::select! {
            () = tokio::time::sleep_until(window_end) => break,
            changed = changes.changed() => if changed.is_err() { break },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
    let deadline = Instant::now() + probe_bound(probe_timeout);
    loop {
        changes.borrow_and_update();
        if !pool.any_unprobed() {
            break;
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!("warm-up: some datanodes were not probed in time; taking Stores without them");
                break;
            }
            _ = stop.wait_for(|s| *s) => return,
        }
    }
    warm.send_replace(true);
    tracing::info!(
        after = ?started.elapsed(),
        datanodes = pool.members().len(),
        "warm-up done: taking Stores"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headnode::pool::ProbeResult;

    #[test]
    fn the_window_is_one_interval_plus_timeout_unless_every_datanode_is_static() {
        let (i, t) = (Duration::from_secs(1), Duration::from_millis(500));
        assert_eq!(window(false, i, t), Duration::from_millis(1500));
        assert_eq!(window(true, i, t), Duration::ZERO);
    }

    #[test]
    fn the_heartbeat_log_names_the_datanodes_serving_in_its_last_round() {
        let log = "\
ragged tail of an older line
2026-11-23T10:00:00.000Z datanode9 h:9 SERVING 0.40ms
2026-11-23T10:00:10.000Z datanode1 h:1 SERVING 0.42ms
2026-11-23T10:00:10.001Z datanode2 h:2 UNREACHABLE connection refused
2026-11-23T10:00:10.002Z datanode3 h:3 NOT_SERVING 0.50ms
2026-11-23T10:00:11.000Z datanode1 h:1 SERVING 0.41ms
2026-11-23T10:00:11.001Z datanode3 h:3 SERVING 0.43ms
2026-11-23T10:00:11.002Z datanode4 h:4 UNREACHABLE no answer within 500ms
";
        let expected = last_round_serving(log, Duration::from_secs(1));
        // datanode9 is from long before the end; datanode2 and datanode4 were down.
        assert_eq!(
            expected.into_iter().collect::<Vec<_>>(),
            ["datanode1", "datanode3"]
        );
        assert!(last_round_serving("", Duration::from_secs(1)).is_empty());
        assert!(
            expected_from_log(
                Path::new("/nonexistent/heartbeat.log"),
                Duration::from_secs(1)
            )
            .is_empty()
        );
    }

    /// A restarted headnode whose log names its datanodes ends warm-up as soon as they are all
    /// back and probed, well before the window.
    #[tokio::test(start_paused = true)]
    async fn warm_up_ends_early_once_the_datanodes_of_the_last_run_are_back() {
        let pool = Arc::new(Pool::new(
            Duration::from_millis(100),
            1,
            Duration::from_secs(1),
            1,
            None,
        ));
        let (warm_tx, mut warm) = watch::channel(false);
        let (_stop_tx, stop) = watch::channel(false);
        let expected: BTreeSet<String> = ["datanode1".to_string()].into();
        let started = Instant::now();
        let task = tokio::spawn(run(
            pool.clone(),
            Duration::from_secs(60),
            expected,
            Duration::from_secs(1),
            warm_tx,
            stop,
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!*warm.borrow());
        let (_, node) = pool.register("datanode1", "127.0.0.1:1").unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!*warm.borrow(), "registered but not probed yet");
        pool.record_probe(&node, &ProbeResult::Serving(Duration::ZERO));
        warm.wait_for(|w| *w).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(60));
        task.await.unwrap();
    }

    /// Warm-up ends only once every known datanode has had its first probe.
    #[tokio::test(start_paused = true)]
    async fn warm_up_waits_for_the_window_and_every_first_probe() {
        let pool = Arc::new(Pool::new(
            Duration::from_millis(100),
            1,
            Duration::from_secs(1),
            1,
            None,
        ));
        pool.add_static("127.0.0.1:1").unwrap();
        let (warm_tx, mut warm) = watch::channel(false);
        let (_stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(run(
            pool.clone(),
            Duration::from_secs(1),
            BTreeSet::new(),
            Duration::from_secs(10),
            warm_tx,
            stop,
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!*warm.borrow(), "a datanode is still unprobed");
        let node = pool.get("127.0.0.1:1").unwrap();
        pool.record_probe(&node, &ProbeResult::Serving(Duration::ZERO));
        warm.wait_for(|w| *w).await.unwrap();
        task.await.unwrap();
    }
}
