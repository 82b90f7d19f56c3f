//! Exactly once through any headnode: real headnode and datanode processes, headnodes SIGKILLed
//! and restarted under load from clients that retry every failure with the same request id (on
//! the next address when they know several). Every acknowledged message is checked against the
//! data files, and no request id may be in them twice. Every wait is a poll with a deadline.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use registro::pb::StoreRequest;
use registro::pb::store_client::StoreClient;
use tonic::transport::Channel;

/// How long one Store (with all its retries) may take before the load counts it as failed.
const STORE_PATIENCE: Duration = Duration::from_secs(30);
/// Each client's Stores are bounded in count as well as in time.
const MAX_PER_CLIENT: usize = 20_000;

/// One acknowledged Store.
#[derive(Debug, Clone)]
struct Ack {
    request_id: String,
    id: String,
    datanode: String,
}

/// What a load run saw.
#[derive(Debug, Default)]
struct LoadReport {
    acks: Vec<Ack>,
    /// Stores given up after [`STORE_PATIENCE`], with their last error.
    failed: Vec<String>,
    /// Failed attempts that were retried.
    retries: usize,
    /// The longest time one Store took, retries included.
    worst: Duration,
}

/// Starts `clients` concurrent clients, each sending Stores (request ids `c{client}-{i}`) until
/// `stop` is set. Every failure is retried with the same request id, on the next of `urls`,
/// until it succeeds or [`STORE_PATIENCE`] passes. `progress` counts acknowledgements.
fn retrying_load(
    urls: Vec<String>,
    clients: usize,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<LoadReport> {
    tokio::spawn(async move {
        let mut handles = Vec::new();
        for c in 0..clients {
            let urls = urls.clone();
            let stop = stop.clone();
            let progress = progress.clone();
            handles.push(tokio::spawn(async move {
                let mut stubs: Vec<StoreClient<Channel>> = urls
                    .iter()
                    .map(|u| {
                        let channel = registro::config::endpoint(u, Duration::from_secs(1))
                            .unwrap()
                            .timeout(Duration::from_secs(3))
                            .connect_lazy();
                        StoreClient::new(channel)
                    })
                    .collect();
                let mut report = LoadReport::default();
                let mut next = c % stubs.len();
                for i in 0..MAX_PER_CLIENT {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let request = StoreRequest {
                        message: format!("load {c} {i}"),
                        request_id: format!("c{c}-{i}"),
                    };
                    let start = Instant::now();
                    loop {
                        let stub = &mut stubs[next];
                        match stub.store(request.clone()).await {
                            Ok(reply) => {
                                let reply = reply.into_inner();
                                report.acks.push(Ack {
                                    request_id: request.request_id.clone(),
                                    id: reply.id,
                                    datanode: reply.datanode,
                                });
                                progress.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            Err(status) if start.elapsed() > STORE_PATIENCE => {
                                report.failed.push(format!(
                                    "{}: {:?}: {}",
                                    request.request_id,
                                    status.code(),
                                    status.message()
                                ));
                                break;
                            }
                            Err(_) => {
                                report.retries += 1;
                                next = (next + 1) % stubs.len();
                                // A back-off between attempts, as a client would: not a wait
                                // for any condition.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                    report.worst = report.worst.max(start.elapsed());
                }
                report
            }));
        }
        let mut total = LoadReport::default();
        for h in handles {
            let r = h.await.unwrap();
            total.acks.extend(r.acks);
            total.failed.extend(r.failed);
            total.retries += r.retries;
            total.worst = total.worst.max(r.worst);
        }
        total
    })
}

async fn wait_progress(progress: &AtomicUsize, at_least: usize) {
    eventually(&format!("{at_least} acknowledgements"), || async {
        (progress.load(Ordering::SeqCst) >= at_least).then_some(())
    })
    .await;
}

/// Three datanode processes `datanode1`… (data in `dN`) registering with `headnodes`.
fn spawn_datanodes(dir: &Path, headnodes: &str) -> Vec<Proc> {
    (1..=3)
        .map(|i| {
            let name = format!("datanode{i}");
            let data = format!("d{i}");
            Proc::spawn(
                "datanode",
                &[
                    "--listen",
                    "127.0.0.1:0",
                    "--name",
                    &name,
                    "--data-dir",
                    &data,
                    "--headnode",
                    headnodes,
                ],
                dir,
                &format!("{name}.err"),
            )
        })
        .collect()
}

/// A headnode process listening on `listen`.
fn spawn_headnode(dir: &Path, listen: &str, log: &str) -> Proc {
    Proc::spawn(
        "headnode",
        &[
            "--listen",
            listen,
            "--registro-log",
            &format!("{log}.registro.log"),
            "--heartbeat-log",
            &format!("{log}.heartbeat.log"),
        ],
        dir,
        &format!("{log}.err"),
    )
}

/// Waits until the headnode at `url` has `n` registered datanodes SERVING.
async fn wait_pool(url: &str, n: usize) {
    eventually(
        &format!("{n} registered datanodes SERVING on {url}"),
        || async {
            let s = status(url).await;
            (s.iter()
                .filter(|d| d.status == "SERVING" && d.registered)
                .count()
                == n)
                .then_some(())
        },
    )
    .await;
}

/// Every record of the three data files, by datanode name.
fn files(dir: &Path) -> HashMap<String, Vec<registro::datanode::data_file::Record>> {
    (1..=3)
        .map(|i| {
            (
                format!("datanode{i}"),
                records_in(&dir.join(format!("d{i}"))),
            )
        })
        .collect()
}

/// The request ids held more than once across the data files, with how many copies.
fn stored_twice(dir: &Path) -> Vec<(String, usize)> {
    let mut copies: HashMap<String, usize> = HashMap::new();
    for r in files(dir).into_values().flatten() {
        *copies.entry(r.request_id).or_default() += 1;
    }
    let mut twice: Vec<(String, usize)> = copies.into_iter().filter(|(_, n)| *n > 1).collect();
    twice.sort();
    twice
}

/// Every acknowledged Store is in the file of the datanode its reply named, under its id.
fn check_acks(dir: &Path, acks: &[Ack]) {
    let files = files(dir);
    let mut held: HashMap<&str, HashMap<&str, &str>> = HashMap::new();
    for (name, records) in &files {
        held.insert(
            name,
            records
                .iter()
                .map(|r| (r.request_id.as_str(), r.id.as_str()))
                .collect(),
        );
    }
    for ack in acks {
        assert_eq!(
            held.get(ack.datanode.as_str())
                .and_then(|m| m.get(ack.request_id.as_str())),
            Some(&ack.id.as_str()),
            "acknowledged {ack:?} is not in {}'s file under its id",
            ack.datanode
        );
    }
}

/// One headnode SIGKILLed and restarted twice while 8 clients retry every failure with the same
/// request id: no Store fails for good, every acknowledged message is where its reply says, and
/// no request id is stored twice (a retry after a restart reaches the datanode that holds it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headnode_killed_and_restarted_twice_under_retrying_load_stores_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut head = spawn_headnode(dir.path(), "127.0.0.1:0", "h1");
    let head_addr = head.addr.clone();
    let url = head.url();
    let _datanodes = spawn_datanodes(dir.path(), &url);
    wait_pool(&url, 3).await;

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let load = retrying_load(vec![url.clone()], 8, stop.clone(), progress.clone());
    for round in 2..=3 {
        let at = progress.load(Ordering::SeqCst);
        wait_progress(&progress, at + 1500).await;
        head.signal("KILL");
        head.wait_exit();
        head = spawn_headnode(dir.path(), &head_addr, &format!("h{round}"));
    }
    let at = progress.load(Ordering::SeqCst);
    wait_progress(&progress, at + 1500).await;
    stop.store(true, Ordering::SeqCst);
    let report = load.await.unwrap();

    let twice = stored_twice(dir.path());
    println!(
        "{} acknowledged, {} retried attempts, worst Store {:?}; request ids stored twice: {}",
        report.acks.len(),
        report.retries,
        report.worst,
        twice.len()
    );
    assert!(report.failed.is_empty(), "failed: {:?}", report.failed);
    check_acks(dir.path(), &report.acks);
    assert!(twice.is_empty(), "stored twice: {twice:?}");
}
