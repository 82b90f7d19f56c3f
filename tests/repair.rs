//! `Heartbeat/Repair` and `client repair` against real processes: under-replicated messages are
//! copied onto the next datanodes of their placement order until `--replicas` hold them, byte for
//! byte; a second repair copies nothing; too few healthy datanodes is UNAVAILABLE; grpcurl calls
//! it; and a headnode scanning datanodes of a million records keeps its memory bounded.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use registro::certs::{self, Validity};
use registro::datanode::data_file::{FILE_NAME, Record};
use registro::headnode::placement;
use registro::pb::heartbeat_client::HeartbeatClient;
use registro::pb::{RepairReply, RepairRequest};
use registro::tls::{Identity, Role, Tls};

const NAMES: [&str; 3] = ["datanode1", "datanode2", "datanode3"];

/// Headnodes and three datanodes (named `datanode1`…, registering with every headnode), as real
/// processes in `dir`.
struct Cluster {
    headnodes: Vec<Proc>,
    datanodes: Vec<Option<Proc>>,
}

impl Cluster {
    /// One headnode per entry of `replicas` (its `--replicas`), then the datanodes.
    fn start(dir: &Path, replicas: &[usize], headnode_extra: &[&str]) -> Self {
        let headnodes: Vec<Proc> = replicas
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let r = r.to_string();
                let mut args = vec![
                    "--listen",
                    "127.0.0.1:0",
                    "--replicas",
                    &r,
                    "--heartbeat-interval",
                    "200ms",
                ];
                args.extend_from_slice(headnode_extra);
                let log = format!("headnode{i}.err");
                let hb = format!("heartbeat{i}.log");
                let reg = format!("registro{i}.log");
                args.extend_from_slice(&["--heartbeat-log", &hb, "--registro-log", &reg]);
                Proc::spawn("headnode", &args, dir, &log)
            })
            .collect();
        let urls = headnodes
            .iter()
            .map(Proc::url)
            .collect::<Vec<_>>()
            .join(",");
        let datanodes = (1..=3)
            .map(|i| {
                Some(spawn_datanode(
                    dir,
                    i,
                    "127.0.0.1:0",
                    &["--headnode", &urls],
                ))
            })
            .collect();
        let cluster = Self {
            headnodes,
            datanodes,
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        for h in &cluster.headnodes {
            cluster.wait_serving(&h.url(), 3);
            rt.block_on(wait_ready(&h.url()));
        }
        cluster
    }

    fn url(&self, i: usize) -> String {
        self.headnodes[i].url()
    }

    fn datanode_url(&self, i: usize) -> String {
        self.datanodes[i].as_ref().expect("running").url()
    }

    /// Waits until the headnode at `url` sees exactly `n` datanodes SERVING.
    fn wait_serving(&self, url: &str, n: usize) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(wait_serving_at(url, n));
    }

    fn kill(&mut self, i: usize) {
        if let Some(p) = self.datanodes[i].take() {
            p.signal("KILL");
            drop(p);
        }
    }
}

fn client(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("client"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run client")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Calls Repair and collects every reply, or the status it ended with.
async fn repair(url: &str) -> Result<Vec<RepairReply>, tonic::Status> {
    let mut client = HeartbeatClient::connect(url.to_string()).await.unwrap();
    let mut stream = client.repair(RepairRequest {}).await?.into_inner();
    let mut replies = Vec::new();
    while let Some(r) = stream.message().await? {
        replies.push(r);
    }
    Ok(replies)
}

/// Stores `count` messages with request ids and `count` without, straight on `url`.
async fn store_some(url: &str, prefix: &str, count: usize) {
    for i in 0..count {
        store(
            url,
            &format!("{prefix} keyed {i} \"quoted\"\n"),
            &format!("{prefix}-{i}"),
        )
        .await
        .unwrap();
        store(url, &format!("{prefix} keyless {i} 🦀"), "")
            .await
            .unwrap();
    }
}

/// Under-replicated messages (stored straight on one datanode, and through a headnode with
/// `--replicas 1`) are copied by `client repair` on a `--replicas 2` headnode until exactly two
/// data files hold each, with byte-identical lines, the copy on the first datanode of the
/// message's placement order that did not hold it; a second repair copies nothing.
#[test]
fn repair_copies_every_under_replicated_message_once_and_a_second_run_copies_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), &[2, 1], &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        store_some(&cluster.datanode_url(0), "direct", 40).await;
        store_some(&cluster.url(1), "r1", 40).await;
    });
    let before = lines_by_id(dir.path(), 3);
    assert_eq!(before.len(), 160);
    let under = before.values().filter(|l| l.len() < 2).count();
    assert!(under >= 80, "{under} under-replicated before the repair");

    let out = client(dir.path(), &["--addr", &cluster.url(0), "repair"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "client repair: {stdout}{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("scanned 160 messages on 3 datanodes in 1 pass (")
            && stdout.contains(&format!(
                "{under} under-replicated, {under} copied, 0 failed"
            )),
        "{stdout}"
    );

    let after = lines_by_id(dir.path(), 3);
    assert_eq!(after.len(), 160);
    for (id, lines) in &after {
        assert_eq!(lines.len(), 2, "{id}: {lines:?}");
        assert_eq!(lines[0].1, lines[1].1, "{id}: the copies differ");
        let held: Vec<&str> = lines.iter().map(|(d, _)| d.as_str()).collect();
        let was: Vec<&str> = before[id].iter().map(|(d, _)| d.as_str()).collect();
        if was.len() == 1 {
            let record: Record = serde_json::from_str(&lines[0].1).unwrap();
            let key = if record.request_id.is_empty() {
                &record.id
            } else {
                &record.request_id
            };
            let first_other = placement::rank(key, &NAMES)
                .into_iter()
                .map(|i| NAMES[i])
                .find(|n| *n != was[0])
                .unwrap();
            assert!(
                held.contains(&first_other),
                "{id}: {held:?}, order {first_other}"
            );
        }
    }

    let again = client(dir.path(), &["--addr", &cluster.url(0), "repair"]);
    let stdout = text(&again.stdout);
    assert!(again.status.success(), "{stdout}{}", text(&again.stderr));
    assert!(
        stdout.contains("scanned 160 messages")
            && stdout.contains("0 under-replicated, 0 copied, 0 failed"),
        "{stdout}"
    );
    assert_eq!(
        lines_by_id(dir.path(), 3),
        after,
        "a second repair changed a data file"
    );
}

/// With one of three datanodes down a repair runs over the other two and names the one left out;
/// with two down it is UNAVAILABLE at once, saying how many are needed and how many are healthy,
/// and `client repair` exits non-zero.
#[test]
fn repair_skips_a_datanode_that_is_down_and_is_unavailable_below_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(dir.path(), &[2], &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(store_some(&cluster.datanode_url(0), "direct", 20));
    cluster.kill(2);
    cluster.wait_serving(&cluster.url(0), 2);

    let replies = rt
        .block_on(repair(&cluster.url(0)))
        .expect("a repair with 2 of 3");
    let last = replies.last().unwrap();
    assert!(last.done, "{last:?}");
    assert_eq!(last.skipped, ["datanode3"]);
    assert_eq!((last.scanned, last.under_replicated), (40, 40));
    assert_eq!((last.copied, last.failed), (40, 0));
    assert!(replies.len() >= 2, "progress before the end: {replies:?}");
    for (id, lines) in lines_by_id(dir.path(), 3) {
        let held: Vec<&str> = lines.iter().map(|(d, _)| d.as_str()).collect();
        assert_eq!(held, ["datanode1", "datanode2"], "{id}");
    }

    cluster.kill(1);
    cluster.wait_serving(&cluster.url(0), 1);
    let status = rt.block_on(repair(&cluster.url(0))).unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains(
            "not enough healthy datanodes to repair: --replicas 2 needs 2, 1 of 3 healthy"
        ),
        "{}",
        status.message()
    );
    let out = client(dir.path(), &["--addr", &cluster.url(0), "repair"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("1 of 3 healthy"),
        "{}",
        text(&out.stderr)
    );
}

/// grpcurl (through reflection) describes Repair and calls it: every progress message is printed,
/// the last with `done` and the final counts.
#[test]
fn grpcurl_calls_repair_and_prints_every_progress_message() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(dir.path(), &[2], &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(store_some(&cluster.datanode_url(1), "g", 5));
    let addr = cluster.headnodes[0].addr.clone();
    let grpcurl = |args: &[&str]| {
        let out = Command::new(grpcurl())
            .arg("-plaintext")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "grpcurl {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    let described = grpcurl(&[&addr, "describe", "registro.v1.Heartbeat"]);
    assert!(
        described.contains(
            "rpc Repair ( .registro.v1.RepairRequest ) returns ( stream .registro.v1.RepairReply )"
        ),
        "{described}"
    );
    let out = grpcurl(&["-d", "{}", &addr, "registro.v1.Heartbeat/Repair"]);
    let replies: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&out)
        .into_iter()
        .map(|v| v.unwrap())
        .collect();
    assert!(replies.len() >= 2, "{out}");
    let last = replies.last().unwrap();
    assert_eq!(last["done"], true, "{out}");
    assert_eq!(last["phase"], "done");
    // proto3 JSON: uint64 as strings.
    assert_eq!(last["scanned"], "10", "{out}");
    assert_eq!(last["copied"], "10", "{out}");
    assert!(last.get("failed").is_none(), "0 is left out: {out}");
}

/// Records in the test's data files for the memory bound.
const MANY: usize = 1_000_000;
/// The headnode's `--repair-ids-per-pass` in that test.
const BUDGET: usize = 550_000;

/// How long two debug datanodes may take to read a million records each at start.
const STARTUP_DEADLINE: std::time::Duration = std::time::Duration::from_secs(300);

/// Two datanodes hold the same million records (written straight into their data files): a
/// repair reads them in several passes without copying anything, and the headnode's peak
/// resident memory grows by less than what holding every id at once would take. Meanwhile a
/// second repair is ABORTED.
#[test]
fn a_repair_over_a_million_records_keeps_the_headnode_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let d1 = dir.path().join("d1");
    std::fs::create_dir_all(&d1).unwrap();
    {
        use std::io::Write;
        let file = std::fs::File::create(d1.join(FILE_NAME)).unwrap();
        let mut out = std::io::BufWriter::new(file);
        for i in 0..MANY {
            let record = Record {
                id: format!("{:032x}", i as u128 * 0x9e37_79b9_7f4a_7c15),
                stored_at: "2026-11-24T10:00:00.000Z".into(),
                message: format!("message {i}"),
                request_id: if i % 2 == 0 {
                    format!("req-{i}")
                } else {
                    String::new()
                },
            };
            serde_json::to_writer(&mut out, &record).unwrap();
            out.write_all(b"\n").unwrap();
        }
    }
    let d2 = dir.path().join("d2");
    std::fs::create_dir_all(&d2).unwrap();
    std::fs::copy(d1.join(FILE_NAME), d2.join(FILE_NAME)).unwrap();

    let budget = BUDGET.to_string();
    let head = Proc::spawn(
        "headnode",
        &[
            "--listen",
            "127.0.0.1:0",
            "--replicas",
            "2",
            "--heartbeat-interval",
            "200ms",
            "--repair-ids-per-pass",
            &budget,
        ],
        dir.path(),
        "headnode.err",
    );
    let url = head.url();
    // Spawned without waiting for their address (reading a million records at start takes a
    // debug build longer than the usual deadline); they register, and the wait below is on that.
    let _datanodes: Vec<Proc> = (1..=2)
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
                "--headnode",
                &url,
            ];
            Proc::start("datanode", &args, &[], dir.path(), &format!("{name}.err"))
        })
        .collect();
    let started = std::time::Instant::now();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let last = rt.block_on(async {
        eventually_within(
            STARTUP_DEADLINE,
            "the datanodes to read their files and register",
            || async { (serving_count(&url).await == 2).then_some(()) },
        )
        .await;
        wait_ready(&url).await;
        eprintln!("datanodes up after {:?}", started.elapsed());
        let rss_before = rss_kib(head.pid());

        let mut client = HeartbeatClient::connect(url.clone()).await.unwrap();
        let mut stream = client.repair(RepairRequest {}).await.unwrap().into_inner();
        let first = stream
            .message()
            .await
            .unwrap()
            .expect("a first progress reply");
        assert!(!first.done);
        let second = repair(&url).await.unwrap_err();
        assert_eq!(second.code(), tonic::Code::Aborted, "{second:?}");
        assert!(
            second.message().contains("already running"),
            "{}",
            second.message()
        );

        let mut last = first;
        while let Some(r) = stream.message().await.unwrap() {
            last = r;
        }
        let peak = proc_status_kib(head.pid(), "VmHWM");
        (last, rss_before, peak)
    });
    let (last, rss_before, peak) = last;
    eprintln!("repair done after {:?}", started.elapsed());
    assert!(last.done, "{last:?}");
    assert_eq!(last.scanned, MANY as u64);
    assert_eq!((last.under_replicated, last.copied, last.failed), (0, 0, 0));
    assert!(
        last.passes >= 2,
        "{MANY} ids over a budget of {BUDGET}: {last:?}"
    );
    assert!(last.records_read >= 2 * MANY as u64 * u64::from(last.passes));
    // One pass holds at most BUDGET ids: a hash table of 24-byte slots (for 550 000 ids, 2^20
    // buckets: 25 MiB; 13 MiB more while its last resize copies the old one) and 8 bytes of
    // bitset each (4 MiB). All million at once would take 2^21 buckets (50 MiB, 25 MiB more while
    // resizing) and 8 MiB of bitsets in the same form, and as strings a good deal more.
    let growth_mib = peak.saturating_sub(rss_before) / 1024;
    eprintln!(
        "headnode VmRSS before {} MiB, VmHWM after {} MiB (growth {growth_mib} MiB); {} passes, {} records read",
        rss_before / 1024,
        peak / 1024,
        last.passes,
        last.records_read
    );
    assert!(
        growth_mib < 70,
        "the headnode's peak grew by {growth_mib} MiB"
    );
}

/// A certificate for `role`/`name` signed by `ca`, loaded.
fn tls_for(ca: &registro::certs::Pem, role: Role, name: &str) -> Tls {
    let identity = Identity {
        role,
        name: name.into(),
    };
    let hosts = ["localhost".to_string(), "127.0.0.1".to_string()];
    let validity = Validity::from_now(std::time::Duration::from_secs(3600));
    let pem = certs::issue(ca, &identity, &hosts, validity).unwrap();
    Tls::from_pem(ca.cert.as_bytes(), pem.cert.as_bytes(), pem.key.as_bytes()).unwrap()
}

/// Under mutual TLS a client certificate may run Repair, whose copies go out with the headnode's
/// certificate (StoreBatch needs the headnode role); a datanode's certificate may not run it.
#[tokio::test]
async fn under_tls_a_client_repairs_and_the_copies_use_the_headnodes_certificate() {
    let ca = certs::new_ca(Validity::from_now(certs::CA_VALIDITY)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = headnode_config(dir.path(), Vec::new());
    config.replicas = 2;
    config.tls = Some(tls_for(&ca, Role::Headnode, "headnode"));
    let head = headnode(config).await;
    let mut datanodes = Vec::new();
    for name in ["datanode1", "datanode2"] {
        datanodes.push(
            datanode_on(
                "127.0.0.1:0",
                registro::datanode::Config {
                    headnode: Some(head.addr.to_string()),
                    tls: Some(tls_for(&ca, Role::Datanode, name)),
                    ..datanode_config(dir.path(), name)
                },
            )
            .await,
        );
    }
    let client = tls_for(&ca, Role::Client, "client");
    let dial = |addr: String, tls: Tls| async move {
        registro::config::dial(&addr, std::time::Duration::from_secs(2), Some(&tls))
            .unwrap()
            .connect()
            .await
            .unwrap()
    };
    let to_head = dial(head.addr.to_string(), client.clone()).await;
    eventually("2 datanodes SERVING", || {
        let channel = to_head.clone();
        async move {
            let s = HeartbeatClient::new(channel)
                .status(registro::pb::StatusRequest {})
                .await
                .ok()?
                .into_inner()
                .datanodes;
            (s.iter().filter(|d| d.status == "SERVING").count() == 2).then_some(())
        }
    })
    .await;
    let to_datanode1 = dial(datanodes[0].addr.to_string(), client.clone()).await;
    for i in 0..10 {
        registro::pb::store_client::StoreClient::new(to_datanode1.clone())
            .store(store_request(&format!("tls {i}"), &format!("tls-{i}")))
            .await
            .unwrap();
    }
    let replies = eventually("a repair after warm-up", || {
        let channel = to_head.clone();
        async move {
            let mut stream = HeartbeatClient::new(channel)
                .repair(RepairRequest {})
                .await
                .ok()?
                .into_inner();
            let mut replies = Vec::new();
            while let Some(r) = stream.message().await.unwrap() {
                replies.push(r);
            }
            Some(replies)
        }
    })
    .await;
    let last = replies.last().unwrap();
    assert!(last.done);
    assert_eq!(
        (last.under_replicated, last.copied, last.failed),
        (10, 10, 0)
    );
    assert_eq!(
        records_in(&dir.path().join("datanode1")),
        records_in(&dir.path().join("datanode2"))
    );

    let as_datanode = dial(
        head.addr.to_string(),
        tls_for(&ca, Role::Datanode, "datanode1"),
    )
    .await;
    let denied = HeartbeatClient::new(as_datanode)
        .repair(RepairRequest {})
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("client or headnode"),
        "{denied:?}"
    );
}

/// Disk loss at `--replicas 2`: a datanode is SIGKILLed, its data folder deleted, and it starts
/// again empty. List through the headnode still returns every acknowledged message exactly once,
/// Stores keep succeeding, `client repair` restores two identical copies of everything, and a
/// second repair copies nothing.
#[test]
fn after_a_datanode_loses_its_disk_repair_restores_two_copies_of_everything() {
    let dir = tempfile::tempdir().unwrap();
    // Generous deadlines: on a starved machine the 500 ms defaults can time healthy datanodes out.
    let mut cluster = Cluster::start(
        dir.path(),
        &[2],
        &["--heartbeat-timeout", "3s", "--forward-timeout", "3s"],
    );
    let url = cluster.url(0);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    rt.block_on(async {
        for i in 0..150 {
            for (message, key) in [
                (format!("before keyed {i}"), format!("before-{i}")),
                (format!("before keyless {i}"), String::new()),
            ] {
                let reply = store(&url, &message, &key).await.unwrap();
                assert_eq!(reply.replicas.len(), 2, "{reply:?}");
                acked.insert(reply.id, message);
            }
        }
    });
    let before = lines_by_id(dir.path(), 3);
    assert!(before.values().all(|l| l.len() == 2));
    let lost = before
        .values()
        .filter(|l| l.iter().any(|(d, _)| d == "datanode2"))
        .count();
    assert!(lost > 0);

    cluster.kill(1);
    std::fs::remove_dir_all(dir.path().join("d2")).unwrap();
    cluster.datanodes[1] = Some(spawn_datanode(
        dir.path(),
        2,
        "127.0.0.1:0",
        &["--headnode", &url],
    ));
    // Back under its name at its new address, SERVING.
    let address = cluster.datanodes[1].as_ref().unwrap().addr.clone();
    rt.block_on(async {
        eventually("datanode2 SERVING at its new address", || async {
            let s = status(&url).await;
            s.iter()
                .any(|d| d.name == "datanode2" && d.address == address && d.status == "SERVING")
                .then_some(())
        })
        .await;
        // List: every acknowledged message once.
        let mut stream = store_client(&url)
            .await
            .list(registro::pb::ListRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut listed: BTreeMap<String, usize> = BTreeMap::new();
        while let Some(m) = stream.message().await.unwrap() {
            assert_eq!(acked.get(&m.id), Some(&m.message), "{m:?}");
            *listed.entry(m.id).or_default() += 1;
        }
        assert_eq!(listed.len(), acked.len(), "List lost messages");
        assert!(listed.values().all(|&n| n == 1), "List repeated an id");
        // Stores keep succeeding.
        for i in 0..20 {
            let message = format!("after {i}");
            let reply = store(&url, &message, &format!("after-{i}")).await.unwrap();
            assert_eq!(reply.replicas.len(), 2);
            acked.insert(reply.id, message);
        }
    });

    let out = client(dir.path(), &["--addr", &url, "repair"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let expected = format!("{lost} under-replicated, {lost} copied, 0 failed");
    assert!(
        stdout.contains(&expected),
        "expected {expected:?} in {stdout}"
    );

    let after = lines_by_id(dir.path(), 3);
    assert_eq!(after.len(), acked.len());
    for (id, lines) in &after {
        assert!(acked.contains_key(id), "{id} was never acknowledged");
        assert_eq!(lines.len(), 2, "{id}: {lines:?}");
        assert_eq!(lines[0].1, lines[1].1, "{id}: the copies differ");
    }
    // The copies went back where the Stores had placed them: datanode2 holds again exactly the
    // lines it lost.
    for (id, lines) in &before {
        let mut now = after[id].clone();
        now.sort();
        let mut was = lines.clone();
        was.sort();
        assert_eq!(now, was, "{id}");
    }
    let again = client(dir.path(), &["--addr", &url, "repair"]);
    let stdout = text(&again.stdout);
    assert!(again.status.success(), "{stdout}{}", text(&again.stderr));
    assert!(
        stdout.contains("0 under-replicated, 0 copied, 0 failed"),
        "{stdout}"
    );
    assert_eq!(lines_by_id(dir.path(), 3), after);
}
