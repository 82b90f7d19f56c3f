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
    /// The longest time one Store that needed a retry took, from its first attempt to its
    /// acknowledgement: the gap a client sees when a server fails under it.
    worst_retried: Duration,
}

/// Starts `clients` concurrent clients, each sending Stores (request ids `c{client}-{i}`) until
/// `stop` is set. A failure that the protocol calls retryable ([`registro::retry::may_retry`]:
/// UNAVAILABLE, RESOURCE_EXHAUSTED, a broken connection) is retried with the same request id, on
/// the next of `urls`, until it succeeds or [`STORE_PATIENCE`] passes; any other failure is
/// final. `progress` counts acknowledgements.
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
                    let mut retried = false;
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
                            Err(status)
                                if start.elapsed() > STORE_PATIENCE
                                    || !registro::retry::may_retry(&status, &request) =>
                            {
                                report.failed.push(format!(
                                    "{}: {:?}: {}",
                                    request.request_id,
                                    status.code(),
                                    status.message()
                                ));
                                break;
                            }
                            Err(_) => {
                                retried = true;
                                report.retries += 1;
                                next = (next + 1) % stubs.len();
                                // A back-off between attempts, as a client would: not a wait
                                // for any condition.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                    }
                    report.worst = report.worst.max(start.elapsed());
                    if retried {
                        report.worst_retried = report.worst_retried.max(start.elapsed());
                    }
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
            total.worst_retried = total.worst_retried.max(r.worst_retried);
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

/// Headnode `name` (its logs `name.registro.log` and `name.heartbeat.log`, kept across
/// restarts as a real deployment keeps them) listening on `listen`, in its `run`th start
/// (stderr in `name-run.err`).
fn spawn_headnode(dir: &Path, listen: &str, name: &str, run: usize) -> Proc {
    let registro_log = format!("{name}.registro.log");
    let heartbeat_log = format!("{name}.heartbeat.log");
    Proc::spawn(
        "headnode",
        &[
            "--listen",
            listen,
            "--registro-log",
            &registro_log,
            "--heartbeat-log",
            &heartbeat_log,
        ],
        dir,
        &format!("{name}-{run}.err"),
    )
}

/// Runs the client binary in `dir` with `args`; its exit code and output.
fn client(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(bin("client"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run client");
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
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
    let mut head = spawn_headnode(dir.path(), "127.0.0.1:0", "h", 1);
    let head_addr = head.addr.clone();
    let url = head.url();
    let _datanodes = spawn_datanodes(dir.path(), &url);
    wait_pool(&url, 3).await;
    wait_ready(&url).await;

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let load = retrying_load(vec![url.clone()], 8, stop.clone(), progress.clone());
    for round in 2..=3 {
        let at = progress.load(Ordering::SeqCst);
        wait_progress(&progress, at + 1500).await;
        head.signal("KILL");
        head.wait_exit();
        head = spawn_headnode(dir.path(), &head_addr, "h", round);
    }
    let at = progress.load(Ordering::SeqCst);
    wait_progress(&progress, at + 1500).await;
    stop.store(true, Ordering::SeqCst);
    let report = load.await.unwrap();

    let twice = stored_twice(dir.path());
    println!(
        "{} acknowledged, {} retried attempts, worst Store {:?}, worst retried Store {:?}; request ids stored twice: {}",
        report.acks.len(),
        report.retries,
        report.worst,
        report.worst_retried,
        twice.len()
    );
    assert!(report.failed.is_empty(), "failed: {:?}", report.failed);
    check_acks(dir.path(), &report.acks);
    assert!(twice.is_empty(), "stored twice: {twice:?}");
}

/// Two headnodes and three datanodes registered with both (one by IP address, one by a host
/// name): SIGKILL one headnode under load from clients that know both addresses and retry with
/// the same request id, and no Store fails, nothing acknowledged is lost, no request id is
/// stored twice, and `client send --addr DEAD,LIVE` exits 0. Restarted, the killed headnode has
/// its whole pool back within about one heartbeat interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_know_two_headnodes_lose_nothing_when_one_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = spawn_headnode(dir.path(), "127.0.0.1:0", "a", 1);
    let b = spawn_headnode(dir.path(), "127.0.0.1:0", "b", 1);
    let (a_addr, a_url, b_url) = (a.addr.clone(), a.url(), b.url());
    let b_port = b.addr.rsplit(':').next().unwrap().to_string();
    // Headnode b by name: `localhost` is resolved (again every heartbeat) to its addresses.
    let headnodes = format!("{a_url},http://localhost:{b_port}");
    let _datanodes = spawn_datanodes(dir.path(), &headnodes);
    for url in [&a_url, &b_url] {
        wait_pool(url, 3).await;
        wait_ready(url).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let load = retrying_load(
        vec![a_url.clone(), b_url.clone()],
        8,
        stop.clone(),
        progress.clone(),
    );
    wait_progress(&progress, 1500).await;
    a.signal("KILL");
    a.wait_exit();
    let killed_at = progress.load(Ordering::SeqCst);
    wait_progress(&progress, killed_at + 1500).await;

    // The command-line client fails over too, keeping each message's request id.
    let addrs = format!("{a_url},{b_url}");
    let (code, out) = client(
        dir.path(),
        &["--addr", &addrs, "send", "--count", "5", "--log", "c.log"],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("stored on datanode"), "{out}");
    let (code, out) = client(dir.path(), &["--addr", &addrs, "status"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out.matches(" SERVING ").count(), 3, "{out}");

    // Restarted on its address, it has every datanode back within about one interval.
    a = spawn_headnode(dir.path(), &a_addr, "a", 2);
    let restarted = Instant::now();
    wait_pool(&a_url, 3).await;
    let whole = restarted.elapsed();
    let at = progress.load(Ordering::SeqCst);
    wait_progress(&progress, at + 1000).await;
    stop.store(true, Ordering::SeqCst);
    let report = load.await.unwrap();

    let twice = stored_twice(dir.path());
    println!(
        "{} acknowledged, {} retried attempts, worst Store {:?}, worst retried Store (the failover gap) {:?}; restarted headnode's pool whole after {whole:?}; request ids stored twice: {}",
        report.acks.len(),
        report.retries,
        report.worst,
        report.worst_retried,
        twice.len()
    );
    assert!(report.failed.is_empty(), "failed: {:?}", report.failed);
    check_acks(dir.path(), &report.acks);
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    // One interval (1 s) for every datanode's next Register, plus its first probe; the slack
    // is for a loaded machine.
    assert!(
        whole < Duration::from_millis(2500),
        "pool whole after {whole:?}"
    );
    drop(a);
}

/// The same request id through either headnode is one message: one record in the data files,
/// and the same reply (id, datanode, time, receipt) from both; the same id for another message
/// is ALREADY_EXISTS on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_request_id_through_either_headnode_is_one_record_with_one_reply() {
    let dir = tempfile::tempdir().unwrap();
    let a = spawn_headnode(dir.path(), "127.0.0.1:0", "a", 1);
    let b = spawn_headnode(dir.path(), "127.0.0.1:0", "b", 1);
    let _datanodes = spawn_datanodes(dir.path(), &format!("{},{}", a.url(), b.url()));
    for url in [a.url(), b.url()] {
        wait_pool(&url, 3).await;
        wait_ready(&url).await;
    }
    for i in 0..20 {
        let key = format!("same-{i}");
        let first = store(&a.url(), "una vez", &key).await.unwrap();
        let again = store(&b.url(), "una vez", &key).await.unwrap();
        assert_eq!(first, again, "{key}");
        assert_eq!(first.replicas, std::slice::from_ref(&first.datanode));
        for url in [a.url(), b.url()] {
            let other = store(&url, "otra cosa", &key).await.unwrap_err();
            assert_eq!(other.code(), tonic::Code::AlreadyExists, "{other:?}");
        }
        let held: Vec<_> = files(dir.path())
            .into_iter()
            .flat_map(|(name, records)| records.into_iter().map(move |r| (name.clone(), r)))
            .filter(|(_, r)| r.request_id == key)
            .collect();
        assert_eq!(held.len(), 1, "{key}: {held:?}");
        assert_eq!(held[0].0, first.datanode);
        assert_eq!(held[0].1.id, first.id);
    }
}

/// With random request ids, placement spreads Stores evenly: 3000 Stores without a request id
/// over 3 datanodes put 900 to 1100 on each (1000 ± 3.9 standard deviations).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_spreads_random_keys_evenly_over_three_datanodes() {
    let dir = tempfile::tempdir().unwrap();
    let head = spawn_headnode(dir.path(), "127.0.0.1:0", "h", 1);
    let _datanodes = spawn_datanodes(dir.path(), &head.url());
    wait_pool(&head.url(), 3).await;
    let url = head.url();
    wait_ready(&url).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = store_client(&url).await;
            for i in (t..3000).step_by(8) {
                client
                    .store(store_request(&format!("spread {i}"), ""))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let counts: HashMap<String, usize> = files(dir.path())
        .into_iter()
        .map(|(name, records)| {
            let n = records
                .iter()
                .filter(|r| r.message.starts_with("spread "))
                .count();
            (name, n)
        })
        .collect();
    println!("3000 Stores: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 3000);
    assert!(
        counts.values().all(|n| (900..=1100).contains(n)),
        "{counts:?}"
    );
}

/// List on the headnode returns each id once: a record held by two datanodes (a replica, or the
/// stray copy of a forward that timed out) is listed once, oldest first among the others.
#[tokio::test]
async fn list_returns_each_id_once_however_many_datanodes_hold_it() {
    use registro::pb::datanode_client::DatanodeClient;
    use registro::pb::{ListRequest, StoreBatchRequest};

    let cluster = Cluster::start(2).await;
    let url = cluster.headnode.url();
    let before = store(&url, "antes", "k-before").await.unwrap();
    let copy = registro::headnode::record::new("en dos sitios", "k-copy").record;
    for node in &cluster.datanodes {
        let mut client = DatanodeClient::connect(node.url()).await.unwrap();
        let results = client
            .store_batch(StoreBatchRequest {
                records: vec![copy.clone()],
            })
            .await
            .unwrap()
            .into_inner()
            .results;
        assert_eq!(results[0].code, 0, "{results:?}");
    }
    let after = store(&url, "después", "k-after").await.unwrap();
    let mut stream = store_client(&url)
        .await
        .list(ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut ids = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        ids.push(m.id);
    }
    // Oldest first, ties (the same millisecond) by id.
    let key = |t: &Option<prost_types::Timestamp>, id: &str| {
        let t = t.unwrap_or_default();
        (t.seconds, t.nanos, id.to_string())
    };
    let mut expected = vec![
        key(&before.stored_at, &before.id),
        key(&copy.stored_at, &copy.id),
        key(&after.stored_at, &after.id),
    ];
    expected.sort();
    let expected: Vec<String> = expected.into_iter().map(|(_, _, id)| id).collect();
    assert_eq!(ids, expected);
    let held: usize = ["datanode1", "datanode2"]
        .iter()
        .map(|n| cluster.records(n).len())
        .sum();
    assert_eq!(held, 4, "the files hold both copies");
}
