//! Nothing lost: real processes killed, frozen, restarted and starved of disk under concurrent
//! load. Every acknowledged message is checked against the data files; every wait is a poll
//! with a deadline.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use registro::pb::StoreRequest;
use registro::pb::store_client::StoreClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

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
    errors: Vec<String>,
    worst: Duration,
}

/// Sends `per_task` Stores from each of `tasks` concurrent clients, each with its own request
/// id; `progress` counts acknowledgements as they come, so a test can act at a given point.
async fn load(
    url: String,
    tasks: usize,
    per_task: usize,
    progress: Arc<AtomicUsize>,
) -> LoadReport {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let url = url.clone();
        let progress = progress.clone();
        handles.push(tokio::spawn(async move {
            let mut report = LoadReport::default();
            let channel = registro::config::endpoint(&url, Duration::from_secs(2))
                .unwrap()
                .connect_lazy();
            let mut client = StoreClient::new(channel);
            for i in 0..per_task {
                let request_id = format!("t{t}-{i}");
                let start = Instant::now();
                let result = client
                    .store(StoreRequest {
                        message: format!("load {t} {i}"),
                        request_id: request_id.clone(),
                    })
                    .await;
                report.worst = report.worst.max(start.elapsed());
                match result {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        report.acks.push(Ack {
                            request_id,
                            id: reply.id,
                            datanode: reply.datanode,
                        });
                        progress.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(status) => {
                        report
                            .errors
                            .push(format!("{:?}: {}", status.code(), status.message()))
                    }
                }
            }
            report
        }));
    }
    let mut total = LoadReport::default();
    for h in handles {
        let r = h.await.unwrap();
        total.acks.extend(r.acks);
        total.errors.extend(r.errors);
        total.worst = total.worst.max(r.worst);
    }
    total
}

async fn wait_progress(progress: &AtomicUsize, at_least: usize) {
    eventually(&format!("{at_least} acknowledgements"), || async {
        (progress.load(Ordering::SeqCst) >= at_least).then_some(())
    })
    .await;
}

/// Three datanode processes (`datanode1`…, data in `dN`) and a headnode process that knows them.
struct ProcCluster {
    dir: tempfile::TempDir,
    datanodes: Vec<Option<Proc>>,
    addrs: Vec<String>,
    headnode: Proc,
}

impl ProcCluster {
    fn start(headnode_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let datanodes: Vec<Proc> = (1..=3)
            .map(|i| spawn_datanode(dir.path(), i, "127.0.0.1:0", &[]))
            .collect();
        let addrs: Vec<String> = datanodes.iter().map(|d| d.addr.clone()).collect();
        let list = addrs.join(",");
        let mut args = vec!["--listen", "127.0.0.1:0", "--datanodes", &list];
        args.extend_from_slice(headnode_args);
        let headnode = Proc::spawn("headnode", &args, dir.path(), "headnode.err");
        Self {
            dir,
            datanodes: datanodes.into_iter().map(Some).collect(),
            addrs,
            headnode,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    async fn wait_status(&self, addr: &str, word: &str) {
        let url = self.headnode.url();
        eventually(&format!("{addr} {word}"), || async {
            status(&url)
                .await
                .iter()
                .any(|d| d.address == addr && d.status == word)
                .then_some(())
        })
        .await;
    }

    async fn wait_all_serving(&self) {
        for addr in &self.addrs {
            self.wait_status(addr, "SERVING").await;
        }
    }

    /// Checks every ack against the files: the acknowledged id is in the datanode its reply
    /// named. Returns how many records exist beyond the acknowledged ones (copies a failed
    /// forward left on a datanode that died or froze before answering).
    fn check_acks(&self, acks: &[Ack]) -> usize {
        let mut files: HashMap<String, Vec<registro::datanode::data_file::Record>> = HashMap::new();
        for i in 1..=3 {
            files.insert(
                format!("datanode{i}"),
                records_in(&self.path().join(format!("d{i}"))),
            );
        }
        for ack in acks {
            let records = &files[&ack.datanode];
            assert!(
                records
                    .iter()
                    .any(|r| r.id == ack.id && r.request_id == ack.request_id),
                "acknowledged {ack:?} is missing from {}'s file",
                ack.datanode
            );
        }
        let acked: HashSet<&str> = acks.iter().map(|a| a.id.as_str()).collect();
        let extra: Vec<_> = files
            .values()
            .flatten()
            .filter(|r| !acked.contains(r.id.as_str()))
            .collect();
        let acked_request_ids: HashSet<&str> = acks.iter().map(|a| a.request_id.as_str()).collect();
        for r in &extra {
            assert!(
                acked_request_ids.contains(r.request_id.as_str()),
                "a stray record nobody sent: {r:?}"
            );
        }
        extra.len()
    }
}

/// SIGKILL a datanode under concurrent load, then restart it on the same data directory: no
/// client sees an error, every acknowledged message is in the file its reply named, and List
/// returns them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_datanode_under_load_loses_nothing_and_clients_see_no_error() {
    // A killed datanode is noticed by its broken connections, not by deadlines: generous
    // deadlines keep a starved CI machine (debug build, every fault test at once) from timing
    // out the healthy datanodes too. The frozen-datanode test measures the deadlines.
    let mut cluster = ProcCluster::start(&[
        "--heartbeat-interval",
        "200ms",
        "--heartbeat-timeout",
        "2s",
        "--forward-timeout",
        "2s",
    ]);
    cluster.wait_all_serving().await;
    let progress = Arc::new(AtomicUsize::new(0));
    let run = tokio::spawn(load(cluster.headnode.url(), 8, 150, progress.clone()));

    wait_progress(&progress, 200).await;
    let victim = cluster.datanodes[1].take().unwrap();
    victim.signal("KILL");
    drop(victim);
    wait_progress(&progress, 600).await;
    let addr = cluster.addrs[1].clone();
    cluster.datanodes[1] = Some(spawn_datanode(cluster.path(), 2, &addr, &[]));

    let report = run.await.unwrap();
    assert!(
        report.errors.is_empty(),
        "clients saw errors: {:?}\nheadnode warnings:\n{}",
        report.errors,
        warnings(&cluster.headnode.log_text())
    );
    assert_eq!(report.acks.len(), 8 * 150);
    let extra = cluster.check_acks(&report.acks);
    println!(
        "kill test: {} acknowledged, 0 failed, 0 lost, {extra} unacknowledged copies, worst wait {:?}",
        report.acks.len(),
        report.worst
    );
    assert!(
        extra <= 8,
        "at most one unacknowledged copy per request in flight at the kill"
    );

    cluster.wait_status(&addr, "SERVING").await;
    let mut stream = store_client(&cluster.headnode.url())
        .await
        .list(registro::pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut listed = HashSet::new();
    while let Some(m) = stream.message().await.unwrap() {
        listed.insert(m.id);
    }
    for ack in &report.acks {
        assert!(listed.contains(&ack.id), "List misses {ack:?}");
    }
}

/// A datanode that hangs (SIGSTOP) does not stall clients: forwards to it time out
/// (`--forward-timeout`, 500 ms) and go elsewhere, no client sees an error, and it is SERVING
/// again once it continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_datanode_does_not_stall_clients() {
    let cluster = ProcCluster::start(&["--heartbeat-interval", "200ms"]);
    cluster.wait_all_serving().await;
    let progress = Arc::new(AtomicUsize::new(0));
    let run = tokio::spawn(load(cluster.headnode.url(), 8, 100, progress.clone()));
    wait_progress(&progress, 100).await;
    let frozen = cluster.datanodes[1].as_ref().unwrap();
    frozen.signal("STOP");
    cluster.wait_status(&cluster.addrs[1], "UNREACHABLE").await;
    wait_progress(&progress, 500).await;
    frozen.signal("CONT");
    let report = run.await.unwrap();
    assert!(
        report.errors.is_empty(),
        "clients saw errors: {:?}",
        report.errors
    );
    println!("frozen datanode: worst client wait {:?}", report.worst);
    // The forward deadline is 500 ms; a Store that waited several seconds was stalled.
    assert!(
        report.worst < Duration::from_secs(3),
        "a client waited {:?}",
        report.worst
    );
    cluster.check_acks(&report.acks);
    cluster.wait_status(&cluster.addrs[1], "SERVING").await;
}

/// A stall of every datanode at once (a disk they share, a starved machine; here SIGSTOP) times
/// the forwards out and leaves none SERVING, so a Store gets UNAVAILABLE. Once they resume,
/// Stores succeed again within about a second although the next periodic probe is 30 s away:
/// while no datanode is SERVING the headnode probes at once and then on a short back-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_every_datanode_stalled_traffic_returns_before_the_next_heartbeat() {
    let cluster = ProcCluster::start(&[
        "--heartbeat-interval",
        "30s",
        "--heartbeat-timeout",
        "300ms",
        "--forward-timeout",
        "300ms",
    ]);
    cluster.wait_all_serving().await;
    let url = cluster.headnode.url();
    store(&url, "before", "").await.unwrap();
    for node in cluster.datanodes.iter().flatten() {
        node.signal("STOP");
    }
    let refused = store(&url, "during", "stalled-1").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    for node in cluster.datanodes.iter().flatten() {
        node.signal("CONT");
    }
    let resumed = Instant::now();
    // `eventually` gives up after 15 s, half the heartbeat interval.
    let reply = eventually("a Store succeeds again", || {
        let url = url.clone();
        async move { store(&url, "after", "after-1").await.ok() }
    })
    .await;
    println!(
        "every datanode stalled: Stores succeed again {:?} after they resumed (on {})",
        resumed.elapsed(),
        reply.datanode
    );
}

/// With the default heartbeat (1 s interval, 500 ms timeout), a SIGKILLed datanode shows
/// UNREACHABLE in the heartbeat log within interval + timeout, and SERVING again after it
/// returns. Prints the measured times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_datanode_is_detected_within_one_interval_plus_timeout() {
    let mut cluster = ProcCluster::start(&[]);
    cluster.wait_all_serving().await;
    let log = cluster.path().join("heartbeat.log");
    let name = cluster.addrs[0].clone();
    let lines_before = std::fs::read_to_string(&log).unwrap().lines().count();
    let victim = cluster.datanodes[0].take().unwrap();
    let killed = Instant::now();
    victim.signal("KILL");
    drop(victim);
    let has_line = |word: &'static str, after: usize| {
        let (log, name) = (log.clone(), name.clone());
        move || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let found = text.lines().skip(after).any(|l| {
                let f: Vec<_> = l.splitn(5, ' ').collect();
                f.len() == 5 && f[1] == name && f[3] == word
            });
            async move { found.then_some(()) }
        }
    };
    eventually("UNREACHABLE line", has_line("UNREACHABLE", lines_before)).await;
    let detection = killed.elapsed();

    let lines_before = std::fs::read_to_string(&log).unwrap().lines().count();
    let restarted = Instant::now();
    cluster.datanodes[0] = Some(spawn_datanode(cluster.path(), 1, &name, &[]));
    eventually("SERVING line", has_line("SERVING", lines_before)).await;
    let back = restarted.elapsed();
    println!("detection: UNREACHABLE {detection:?} after SIGKILL; SERVING {back:?} after restart");
    assert!(
        detection <= Duration::from_millis(1500),
        "detected after {detection:?}"
    );
    assert!(
        back <= Duration::from_millis(2500),
        "SERVING again after {back:?}"
    );
}

/// SIGKILL the headnode and restart it on the same port with an empty pool: datanodes that
/// registered themselves are back and SERVING within about one heartbeat interval, with no
/// datanode restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_datanodes_return_after_a_headnode_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut head = Proc::spawn(
        "headnode",
        &["--listen", "127.0.0.1:0"],
        dir.path(),
        "h1.err",
    );
    let head_addr = head.addr.clone();
    let url = head.url();
    let _datanodes: Vec<Proc> = (1..=3)
        .map(|i| spawn_datanode(dir.path(), i, "127.0.0.1:0", &["--headnode", &url]))
        .collect();
    let three_serving = || async {
        let s = status(&url).await;
        (s.iter()
            .filter(|d| d.status == "SERVING" && d.registered)
            .count()
            == 3)
            .then_some(())
    };
    eventually("3 registered datanodes SERVING", three_serving).await;
    head.signal("KILL");
    head.wait_exit();
    let restarted = Instant::now();
    let _head = Proc::spawn("headnode", &["--listen", &head_addr], dir.path(), "h2.err");
    eventually("3 datanodes back after the restart", three_serving).await;
    println!(
        "headnode restart: pool complete {:?} after start",
        restarted.elapsed()
    );
    wait_ready(&url).await;
    println!(
        "headnode restart: warm-up over {:?} after start",
        restarted.elapsed()
    );
    store(&url, "after restart", "").await.unwrap();
}

/// SIGTERM with a health Watch stream open and load running: the stream sees NOT_SERVING and
/// ends, in-flight requests finish, the process exits 0 long before its 30 s grace period
/// (open streams do not hold it), and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_health_off_closes_watch_streams_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = spawn_datanode(dir.path(), 1, "127.0.0.1:0", &["--shutdown-grace", "30s"]);
    let channel = registro::config::endpoint(&node.url(), Duration::from_secs(2))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: registro::STORE_SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    let progress = Arc::new(AtomicUsize::new(0));
    let run = tokio::spawn(load(node.url(), 4, 1000, progress.clone()));
    wait_progress(&progress, 50).await;

    let start = Instant::now();
    node.signal("TERM");
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    assert!(
        watch.message().await.map(|m| m.is_none()).unwrap_or(true),
        "the Watch stream ends"
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = node.wait_exit();
        (status, node)
    })
    .await
    .unwrap();
    let took = start.elapsed();
    assert!(
        status.0.success(),
        "exit {}: {}",
        status.0,
        status.1.log_text()
    );
    println!("shutdown: exited 0 after {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?}: something held the server open"
    );

    let report = run.await.unwrap();
    let records = records_in(&dir.path().join("d1"));
    for ack in &report.acks {
        assert!(
            records.iter().any(|r| r.id == ack.id),
            "acknowledged {ack:?} lost in shutdown"
        );
    }
}

/// A torn last record (a crash mid-write) is moved at start-up to a side file, byte for byte, with
/// a warning naming it; every complete record is kept and served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_record_is_dropped_at_start_up_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = spawn_datanode(dir.path(), 1, "127.0.0.1:0", &[]);
    for i in 0..5 {
        store(&node.url(), &format!("kept {i}"), "").await.unwrap();
    }
    node.signal("KILL");
    node.wait_exit();
    let file = dir.path().join("d1/messages.jsonl");
    let mut bytes = std::fs::read(&file).unwrap();
    let good = bytes.len();
    bytes.extend_from_slice(br#"{"id":"torn","stored_at":"2026-01-01T00:00:00.000Z","mess"#);
    std::fs::write(&file, &bytes).unwrap();

    let node = spawn_datanode(dir.path(), 1, "127.0.0.1:0", &[]);
    assert!(
        node.log_text().contains("torn last record"),
        "{}",
        node.log_text()
    );
    assert_eq!(std::fs::metadata(&file).unwrap().len() as usize, good);
    let sides: Vec<_> = std::fs::read_dir(dir.path().join("d1"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("messages.jsonl.corrupt-"))
        .collect();
    assert_eq!(sides.len(), 1, "{sides:?}");
    assert_eq!(std::fs::read(&sides[0]).unwrap(), &bytes[good..]);
    assert!(
        node.log_text()
            .contains(&*sides[0].file_name().unwrap().to_string_lossy()),
        "the warning names the side file"
    );
    store(&node.url(), "after", "").await.unwrap();
    let messages: Vec<_> = records_in(&dir.path().join("d1"))
        .into_iter()
        .map(|r| r.message)
        .collect();
    assert_eq!(
        messages,
        ["kept 0", "kept 1", "kept 2", "kept 3", "kept 4", "after"]
    );
}

/// A tiny tmpfs mounted for one test and unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs failed (see common::with_mount_privileges): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A datanode whose disk fills up (a 512 KiB tmpfs) answers UNAVAILABLE without leaving a partial
/// record, reports NOT_SERVING, the headnode stores elsewhere with no client error, and the
/// datanode is SERVING again once space is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_retryable_never_torn_and_recovers() {
    if !with_mount_privileges("a_full_disk_is_retryable_never_torn_and_recovers") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    let _tmpfs = Tmpfs::mount(&mnt, "512k");
    std::fs::write(mnt.join("filler"), vec![0u8; 320 * 1024]).unwrap();

    let mut config = registro::datanode::Config::new("tiny", mnt.join("data"));
    config.headnode = None;
    let tiny = datanode_on("127.0.0.1:0", config).await;
    let healthy = datanode_on("127.0.0.1:0", datanode_config(dir.path(), "healthy")).await;
    let head = headnode(headnode_config(
        dir.path(),
        vec![tiny.addr.to_string(), healthy.addr.to_string()],
    ))
    .await;
    let head_url = head.url();
    wait_serving_at(&head_url, 2).await;

    // Straight to the small datanode until its disk is full.
    let big = "b".repeat(60 * 1024);
    let mut acked = 0;
    let refusal = loop {
        match store(&tiny.url(), &big, "").await {
            Ok(_) => acked += 1,
            Err(status) => break status,
        }
        assert!(acked < 20, "the disk never filled up");
    };
    assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
    let records = records_in(&mnt.join("data"));
    assert_eq!(
        records.len(),
        acked,
        "no partial record: every line parses and is acknowledged"
    );

    let tiny_url = tiny.url();
    let store_health = |url: String| async move {
        let channel = registro::config::endpoint(&url, Duration::from_secs(1))
            .unwrap()
            .connect()
            .await
            .ok()?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: registro::STORE_SERVICE.into(),
            })
            .await
            .ok()
            .map(|r| r.into_inner().status())
    };
    eventually("the full datanode NOT_SERVING", || {
        let url = tiny_url.clone();
        async move { (store_health(url).await == Some(ServingStatus::NotServing)).then_some(()) }
    })
    .await;

    for i in 0..10 {
        let reply = store(&head_url, &big, &format!("r{i}"))
            .await
            .expect("the headnode stores elsewhere");
        assert_eq!(reply.datanode, "healthy");
    }

    std::fs::remove_file(mnt.join("filler")).unwrap();
    eventually("SERVING again once space is freed", || {
        let url = tiny_url.clone();
        async move { (store_health(url).await == Some(ServingStatus::Serving)).then_some(()) }
    })
    .await;
    store(&tiny.url(), &big, "").await.expect("writes again");
    assert_eq!(records_in(&mnt.join("data")).len(), acked + 1);
    drop(head);
    tiny.stop().await;
}

/// A draining datanode never reports SERVING again: its disk fills up (NOT_SERVING), SIGTERM
/// comes while an unread List holds the server open, and the disk frees up during the drain;
/// the writer sees it, but the disk-health follower has already stopped, so health is never
/// turned back to SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_datanode_never_reports_serving_again() {
    if !with_mount_privileges("a_draining_datanode_never_reports_serving_again") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    let _tmpfs = Tmpfs::mount(&mnt, "16m");
    // More than a client's 2 MiB stream window, so an unread List stays in flight.
    let data = mnt.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut text = String::new();
    for i in 0..4000 {
        let record = registro::datanode::data_file::Record {
            id: format!("id-{i}"),
            stored_at: "2026-01-01T00:00:00.000Z".into(),
            message: format!("{i:0>1000}"),
            request_id: String::new(),
        };
        text.push_str(&serde_json::to_string(&record).unwrap());
        text.push('\n');
    }
    std::fs::write(data.join("messages.jsonl"), text).unwrap();
    let data_arg = data.to_string_lossy().to_string();
    let mut node = Proc::spawn(
        "datanode",
        &[
            "--listen",
            "127.0.0.1:0",
            "--name",
            "draining",
            "--data-dir",
            &data_arg,
            "--shutdown-grace",
            "3s",
        ],
        dir.path(),
        "draining.err",
    );

    // Fill the disk to the last byte, then a Store fails and health turns NOT_SERVING.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let mut size = chunk.len();
        while size > 0 {
            match f.write_all(&chunk[..size]) {
                Ok(()) => {}
                Err(_) => size /= 2,
            }
        }
    }
    // Larger than the slack in the data file's last page.
    let refused = store(&node.url(), &"x".repeat(60 * 1024), "")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    let url = node.url();
    eventually("NOT_SERVING on a full disk", || {
        let url = url.clone();
        async move {
            let channel = registro::config::endpoint(&url, Duration::from_secs(1))
                .ok()?
                .connect()
                .await
                .ok()?;
            let status = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: registro::STORE_SERVICE.into(),
                })
                .await
                .ok()?
                .into_inner()
                .status();
            (status == ServingStatus::NotServing).then_some(())
        }
    })
    .await;

    let mut unread = store_client(&url)
        .await
        .list(registro::pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    unread.message().await.unwrap().expect("a first message");
    node.signal("TERM");
    node.wait_for_log("shutting down");
    std::fs::remove_file(&filler).unwrap();
    node.wait_for_log("takes writes again");
    let (status, node) = tokio::task::spawn_blocking(move || {
        let status = node.wait_exit();
        (status, node)
    })
    .await
    .unwrap();
    let log = node.log_text();
    assert!(status.success(), "exit {status}: {log}");
    let drain = &log[log.find("shutting down").unwrap()..];
    assert!(
        drain.contains("takes writes again"),
        "the disk recovered during the drain:\n{log}"
    );
    assert!(
        !drain.contains("Store SERVING"),
        "a draining datanode turned SERVING again:\n{log}"
    );
    drop(unread);
}
