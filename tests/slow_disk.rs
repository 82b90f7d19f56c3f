//! Load is not failure: a datanode whose disk is slow, but that answers each call within the
//! forward deadline, stays in routing under full load, and nothing is stored twice.
//!
//! The slow disk is real: `tests/shim/slow_fsync.c`, compiled here with `cc -shared -fPIC` and
//! preloaded into one datanode process, makes every `fsync`/`fdatasync` sleep first.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use registro::pb::StoreRequest;
use registro::pb::store_client::StoreClient;

/// Every fsync on the slow datanode sleeps this long first.
const FSYNC_DELAY_MS: u64 = 600;
/// The headnode's `--forward-timeout`: a call to the slow datanode takes about one delayed
/// fsync, well inside it; a call plus a wait in the queue for the call before it does not.
const FORWARD_TIMEOUT: &str = "1s";
/// Stores in flight at once: a whole batch's worth.
const IN_FLIGHT: usize = 256;
/// Stores each client sends, one after another.
const PER_CLIENT: usize = 6;

/// Builds the fsync shim into `dir` and returns its path.
fn build_shim(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/shim/slow_fsync.c");
    let out = dir.join("libslow_fsync.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&out)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("the slow-disk test needs a C compiler (`cc`) to build its LD_PRELOAD shim");
    assert!(status.success(), "cc failed to build {}", source.display());
    out
}

/// What one run of the load saw.
#[derive(Debug, Default)]
struct Outcome {
    acknowledged: usize,
    errors: Vec<String>,
    worst: Duration,
}

/// `IN_FLIGHT` clients each sending `PER_CLIENT` Stores with their own request ids.
async fn load(url: &str) -> Outcome {
    let channel = registro::config::endpoint(url, Duration::from_secs(5))
        .unwrap()
        .connect_lazy();
    let tasks: Vec<_> = (0..IN_FLIGHT)
        .map(|t| {
            let mut client = StoreClient::new(channel.clone());
            tokio::spawn(async move {
                let mut out = Outcome::default();
                for i in 0..PER_CLIENT {
                    let start = Instant::now();
                    let result = client
                        .store(StoreRequest {
                            message: format!("slow disk {t} {i}"),
                            request_id: format!("slow-{t}-{i}"),
                        })
                        .await;
                    out.worst = out.worst.max(start.elapsed());
                    match result {
                        Ok(_) => out.acknowledged += 1,
                        Err(s) => out.errors.push(format!("{:?}: {}", s.code(), s.message())),
                    }
                }
                out
            })
        })
        .collect();
    let mut total = Outcome::default();
    for task in tasks {
        let o = task.await.unwrap();
        total.acknowledged += o.acknowledged;
        total.errors.extend(o.errors);
        total.worst = total.worst.max(o.worst);
    }
    total
}

/// A datanode whose every fsync takes 600 ms (each call still answered well inside the 1 s
/// forward deadline), under 256 Stores in flight: no datanode is marked down (heartbeat log,
/// Status and the headnode's warnings agree), every Store succeeds, and no request id is stored
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_under_full_load_is_not_marked_down_and_nothing_is_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let shim = build_shim(dir.path());
    let delay = FSYNC_DELAY_MS.to_string();
    let shim_env = shim.to_str().unwrap();
    let datanodes: Vec<Proc> = (1..=3)
        .map(|i| {
            let name = format!("datanode{i}");
            let data = format!("d{i}");
            let args = [
                "--listen",
                "127.0.0.1:0",
                "--name",
                &name,
                "--data-dir",
                &data,
            ];
            let env: &[(&str, &str)] = if i == 1 {
                &[("LD_PRELOAD", shim_env), ("REGISTRO_SLOW_FSYNC_MS", &delay)]
            } else {
                &[]
            };
            Proc::spawn_full("datanode", &args, env, dir.path(), &format!("{name}.err"))
        })
        .collect();
    assert!(
        datanodes[0].log_text().contains("slow_fsync: delaying"),
        "the shim is not in effect:\n{}",
        datanodes[0].log_text()
    );
    let list = datanodes
        .iter()
        .map(|d| d.addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    let headnode = Proc::spawn(
        "headnode",
        &[
            "--listen",
            "127.0.0.1:0",
            "--datanodes",
            &list,
            "--heartbeat-interval",
            "200ms",
            "--forward-timeout",
            FORWARD_TIMEOUT,
        ],
        dir.path(),
        "headnode.err",
    );
    let url = headnode.url();
    wait_serving_at(&url, 3).await;

    // Status, sampled all through the load: every datanode stays SERVING.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (url, done) = (url.clone(), done.clone());
        async move {
            let mut seen_down = Vec::new();
            while !done.load(Ordering::SeqCst) {
                for d in status(&url).await {
                    if d.status != "SERVING" {
                        seen_down.push(format!("{} {} {}", d.name, d.status, d.detail));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            seen_down
        }
    });
    let outcome = load(&url).await;
    done.store(true, Ordering::SeqCst);
    let seen_down = sampler.await.unwrap();

    let heartbeat = std::fs::read_to_string(dir.path().join("heartbeat.log")).unwrap();
    let down_lines: Vec<&str> = heartbeat
        .lines()
        .filter(|l| !l.contains(" SERVING "))
        .collect();
    let head_log = headnode.log_text();
    let marked_down = head_log.matches("marking the datanode down").count();
    let mut copies: HashMap<String, usize> = HashMap::new();
    let mut per_datanode = Vec::new();
    for i in 1..=3 {
        let records = records_in(&dir.path().join(format!("d{i}")));
        per_datanode.push(records.len());
        for r in records {
            *copies.entry(r.request_id).or_default() += 1;
        }
    }
    let twice: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    println!(
        "slow disk ({FSYNC_DELAY_MS} ms fsync on datanode1, forward timeout {FORWARD_TIMEOUT}): \
         {} acknowledged, {} errors, worst {:?}; forwards marking a datanode down: {marked_down}; \
         non-SERVING heartbeat lines: {}; Status samples not SERVING: {}; request ids stored \
         twice: {}; records per datanode: {per_datanode:?}",
        outcome.acknowledged,
        outcome.errors.len(),
        outcome.worst,
        down_lines.len(),
        seen_down.len(),
        twice.len(),
    );
    let context = format!(
        "errors: {:?}\nheartbeat: {:?}\nstatus: {:?}\nheadnode warnings:\n{}",
        outcome.errors.iter().take(5).collect::<Vec<_>>(),
        down_lines.iter().take(5).collect::<Vec<_>>(),
        seen_down.iter().take(5).collect::<Vec<_>>(),
        warnings(&head_log)
    );
    assert_eq!(marked_down, 0, "{context}");
    assert!(down_lines.is_empty(), "{context}");
    assert!(seen_down.is_empty(), "{context}");
    assert!(twice.is_empty(), "stored twice: {twice:?}\n{context}");
    assert!(outcome.errors.is_empty(), "{context}");
    assert_eq!(outcome.acknowledged, IN_FLIGHT * PER_CLIENT);
    assert_eq!(copies.len(), IN_FLIGHT * PER_CLIENT, "{context}");
    assert!(per_datanode[0] > 0, "the slow datanode took no Store");
}
