//! The soak: about a minute of full load through the headnode, with the idempotency maps
//! filled past their bound, while the resident memory of every process is sampled. Memory must
//! stay flat; the clients retry UNAVAILABLE as `client send` does, and no Store may fail after
//! its retries. Ignored by `cargo test` (it takes a minute); `make soak` runs it, and so does CI.
//! `REGISTRO_SOAK_SECS` changes its length.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use registro::pb::StoreRequest;
use registro::pb::store_client::StoreClient;

/// Headnode and datanode memory stays flat under a minute of full load, with every request
/// carrying a fresh request id so the bounded idempotency maps fill and must evict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute long: run with `make soak`"]
async fn memory_stays_flat_under_a_minute_of_full_load() {
    let secs: u64 = std::env::var("REGISTRO_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let cap = ["--dedupe-capacity", "5000"];
    let datanodes: Vec<Proc> = (1..=3)
        .map(|i| {
            let (name, data) = (format!("datanode{i}"), format!("d{i}"));
            let args = [
                "--listen",
                "127.0.0.1:0",
                "--name",
                &name,
                "--data-dir",
                &data,
                cap[0],
                cap[1],
            ];
            Proc::spawn("datanode", &args, dir.path(), &format!("{name}.err"))
        })
        .collect();
    let list = datanodes
        .iter()
        .map(|d| d.addr.clone())
        .collect::<Vec<_>>()
        .join(",");
    let head = Proc::spawn(
        "headnode",
        &[
            "--listen",
            "127.0.0.1:0",
            "--datanodes",
            &list,
            cap[0],
            cap[1],
        ],
        dir.path(),
        "headnode.err",
    );
    let url = head.url();
    wait_serving_at(&url, 3).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, retried) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Up to about 10 s of retries (100 ms doubling to 2 s).
    let policy = registro::retry::Retry {
        retries: 8,
        ..Default::default()
    };
    // Failures by code and message, with their count.
    let failed = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let mut workers = Vec::new();
    for t in 0..32 {
        let (url, stop, ok, failed) = (url.clone(), stop.clone(), ok.clone(), failed.clone());
        let retried = retried.clone();
        workers.push(tokio::spawn(async move {
            let channel = registro::config::endpoint(&url, Duration::from_secs(2))
                .unwrap()
                .connect_lazy();
            let mut client = StoreClient::new(channel);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let request = StoreRequest {
                    message: format!("soak {t} {i} {}", "x".repeat(100)),
                    request_id: format!("soak-{t}-{i}"),
                };
                // As a client should: UNAVAILABLE (every datanode stalled past the forward
                // deadline, which a busy shared disk can do) is retried with the request id.
                let counted = |_: &tonic::Status, _| {
                    retried.fetch_add(1, Ordering::Relaxed);
                };
                match registro::retry::store(&mut client, request, policy, counted).await {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status) => {
                        let key = format!("{:?}: {}", status.code(), status.message());
                        *failed.lock().unwrap().entry(key).or_default() += 1;
                    }
                }
                i += 1;
            }
        }));
    }

    let pids: Vec<(String, u32)> = std::iter::once(("headnode".to_string(), head.pid()))
        .chain(
            datanodes
                .iter()
                .enumerate()
                .map(|(i, d)| (format!("datanode{}", i + 1), d.pid())),
        )
        .collect();
    let mut samples: Vec<Vec<u64>> = vec![Vec::new(); pids.len()];
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while start.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        for (i, (_, pid)) in pids.iter().enumerate() {
            samples[i].push(rss_kib(*pid));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let ok = ok.load(Ordering::Relaxed);
    let failed = std::mem::take(&mut *failed.lock().unwrap());
    println!(
        "soak: {secs} s, {ok} stored, {} failed, {} retries of UNAVAILABLE, {:.0} req/s",
        failed.values().sum::<u64>(),
        retried.load(Ordering::Relaxed),
        ok as f64 / secs as f64
    );
    let heartbeat = std::fs::read_to_string(dir.path().join("heartbeat.log")).unwrap_or_default();
    assert!(
        failed.is_empty(),
        "clients saw errors: {failed:#?}\nheadnode warnings:\n{}\nheartbeat lines other than SERVING:\n{}",
        warnings(&head.log_text()),
        heartbeat
            .lines()
            .filter(|l| !l.contains(" SERVING "))
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        ok > 5000 * 3,
        "the idempotency maps must fill past their bound ({ok} stores)"
    );

    // Compare the peak of the second quarter (maps already full) with the peak of the last.
    let quarter = samples[0].len() / 4;
    for ((name, _), s) in pids.iter().zip(&samples) {
        let early = *s[quarter..2 * quarter].iter().max().unwrap();
        let late = *s[3 * quarter..].iter().max().unwrap();
        println!(
            "soak: {name:<9} RSS {:>6.1} MB at {}s, {:>6.1} MB at the end (peak {:.1} MB)",
            early as f64 / 1024.0,
            quarter * 2,
            late as f64 / 1024.0,
            *s.iter().max().unwrap() as f64 / 1024.0
        );
        assert!(
            late <= early + early / 5 + 2048,
            "{name} memory grew from {early} KiB to {late} KiB"
        );
    }
}
