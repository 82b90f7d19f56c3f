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
//! [`probe_bound`].

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

/// Waits out the window, then until every member of `pool` has been probed (at most
/// [`probe_bound`] more), then sets `warm`. Ends early, leaving `warm` false, when `stop`
/// turns true.
pub async fn run(
    pool: Arc<Pool>,
    window: Duration,
    probe_timeout: Duration,
    warm: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let started = Instant::now();
    tokio::select! {
        () = tokio::time::sleep(window) => {}
        _ = stop.wait_for(|s| *s) => return,
    }
    let deadline = Instant::now() + probe_bound(probe_timeout);
    let mut changes = pool.changes();
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

    /// Warm-up ends only once every known datanode has had its first probe.
    #[tokio::test(start_paused = true)]
    async fn warm_up_waits_for_the_window_and_every_first_probe() {
        let pool = Arc::new(Pool::new(
            Duration::from_millis(100),
            1,
            Duration::from_secs(1),
            1,
        ));
        pool.add_static("127.0.0.1:1").unwrap();
        let (warm_tx, mut warm) = watch::channel(false);
        let (_stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(run(
            pool.clone(),
            Duration::from_secs(1),
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
