//! The real binaries: flags, files, signals, and third-party clients (grpcurl) against them.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn client(dir: &Path, args: &[&str]) -> Output {
    run(Command::new(bin("client"))
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn"))
}

/// A datanode and a headnode that knows it, as real processes.
fn small_cluster(dir: &Path) -> (Proc, Proc) {
    let data = Proc::spawn(
        "datanode",
        &[
            "--listen",
            "127.0.0.1:0",
            "--name",
            "datanode1",
            "--data-dir",
            "d1",
        ],
        dir,
        "datanode1.err",
    );
    let head = Proc::spawn(
        "headnode",
        &[
            "--listen",
            "127.0.0.1:0",
            "--datanodes",
            &data.addr,
            "--heartbeat-interval",
            "100ms",
        ],
        dir,
        "headnode.err",
    );
    let out = eventually_blocking("the datanode SERVING", || {
        let out = client(
            dir,
            &[
                "--addr",
                &head.url(),
                "health",
                "--service",
                "registro.v1.Store",
            ],
        );
        out.status.success().then_some(out)
    });
    assert!(text(&out.stdout).contains("SERVING"));
    (data, head)
}

/// A child process that is killed if the test ends before it does.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls a blocking check every 20 ms until `DEADLINE`.
fn eventually_blocking<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The exercise's one-client/one-server mode: `client send` straight to a datanode stores the
/// messages, prints receipts and writes the client log; the datanode logs every message too.
#[test]
fn a_client_can_talk_straight_to_a_datanode_and_both_sides_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = Proc::spawn(
        "datanode",
        &[
            "--listen",
            "127.0.0.1:0",
            "--name",
            "solo",
            "--data-dir",
            "solo",
        ],
        dir.path(),
        "solo.err",
    );
    std::fs::write(
        dir.path().join("script.txt"),
        "Hola\nSistemas\nexit\nnever sent\n",
    )
    .unwrap();
    let out = client(
        dir.path(),
        &[
            "--addr",
            &data.url(),
            "send",
            "--script",
            "script.txt",
            "--log",
            "c.log",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "Message 'Hola' stored on solo.",
            "Message 'Sistemas' stored on solo."
        ]
    );
    let log = std::fs::read_to_string(dir.path().join("c.log")).unwrap();
    let lines: Vec<_> = log.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0].ends_with(" Message 'Hola' stored on solo."),
        "{log}"
    );
    assert!(registro::time::parse(lines[0].split(' ').next().unwrap()).is_some());
    let records = records_in(&dir.path().join("solo"));
    assert_eq!(
        records
            .iter()
            .map(|r| r.message.as_str())
            .collect::<Vec<_>>(),
        ["Hola", "Sistemas"]
    );
    let server_log = data.log_text();
    for r in &records {
        assert!(server_log.contains(&r.id), "the datanode logs {}", r.id);
    }
}

/// Through the headnode: receipts printed, the client log and the registro log written, Status
/// shows the table, List prints what was stored.
#[test]
fn client_send_status_and_list_through_the_headnode() {
    let dir = tempfile::tempdir().unwrap();
    let (_data, head) = small_cluster(dir.path());
    let url = head.url();
    let out = client(dir.path(), &["--addr", &url, "send", "--count", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).lines().collect::<Vec<_>>(),
        [
            "Message 'Hola' stored on datanode1.",
            "Message 'Sistemas' stored on datanode1.",
            "Message 'Mensaje de prueba' stored on datanode1."
        ]
    );
    // The log's writer thread flushes a moment after the replies: poll for it.
    let registro_log = poll_until("three registro-log lines", || {
        std::fs::read_to_string(dir.path().join("registro.log"))
            .ok()
            .filter(|log| log.lines().count() == 3)
    });
    let records = records_in(&dir.path().join("d1"));
    for (line, record) in registro_log.lines().zip(&records) {
        let fields: Vec<_> = line.splitn(4, ' ').collect();
        assert_eq!(fields[1], record.id);
        assert_eq!(fields[2], "datanode1");
        assert_eq!(fields[3], serde_json::to_string(&record.message).unwrap());
    }

    let status = client(dir.path(), &["--addr", &url, "status"]);
    let table = text(&status.stdout);
    assert!(table.starts_with("DATANODE"), "{table}");
    assert!(table.lines().nth(1).unwrap().contains("SERVING"), "{table}");

    let list = client(dir.path(), &["--addr", &url, "list"]);
    let listed = text(&list.stdout);
    assert_eq!(listed.lines().count(), 3);
    assert!(
        listed
            .lines()
            .next()
            .unwrap()
            .ends_with("datanode1 \"Hola\""),
        "{listed}"
    );
}

/// `client send` retries UNAVAILABLE with the same request id: started against a headnode with
/// no datanode, it waits, and stores every message once a datanode registers.
#[test]
fn client_send_retries_until_a_datanode_is_there() {
    let dir = tempfile::tempdir().unwrap();
    let head = Proc::spawn(
        "headnode",
        &["--listen", "127.0.0.1:0"],
        dir.path(),
        "headnode.err",
    );
    let (stdout, stderr) = (dir.path().join("client.out"), dir.path().join("client.err"));
    let mut send = KillOnDrop(
        Command::new(bin("client"))
            .args([
                "--addr",
                &head.url(),
                "send",
                "--count",
                "3",
                "--retries",
                "30",
            ])
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    let first = eventually_blocking("the client retrying", || {
        let text = std::fs::read_to_string(&stderr).unwrap_or_default();
        // A whole line: eprintln! may write one in pieces.
        let line = text.split_inclusive('\n').next()?;
        line.ends_with('\n').then(|| line.to_string())
    });
    // No datanode yet (or a headnode still in warm-up, which says so): both UNAVAILABLE.
    assert!(
        first.starts_with("Unavailable: ")
            && first.contains("retrying in 100ms with the same request id"),
        "{first}"
    );
    let _data = Proc::spawn(
        "datanode",
        &[
            "--listen",
            "127.0.0.1:0",
            "--name",
            "late1",
            "--data-dir",
            "d1",
            "--headnode",
            &head.url(),
        ],
        dir.path(),
        "late1.err",
    );
    let status = send.0.wait().unwrap();
    let errors = std::fs::read_to_string(&stderr).unwrap();
    assert!(status.success(), "{errors}");
    let receipts = std::fs::read_to_string(&stdout).unwrap();
    assert_eq!(receipts.lines().count(), 3, "{receipts}");
    assert!(
        errors.ends_with("3 stored, 0 failed; log: client.log\n"),
        "{errors}"
    );
    let records = records_in(&dir.path().join("d1"));
    assert_eq!(records.len(), 3, "each message stored once: {records:?}");
}

/// grpcurl 1.8.6 (the PyPI build) lists, describes and calls every service through reflection.
#[test]
fn grpcurl_lists_describes_and_calls_every_service() {
    let dir = tempfile::tempdir().unwrap();
    let (data, head) = small_cluster(dir.path());
    let grpcurl = |args: &[&str]| {
        let out = run(Command::new(grpcurl()).arg("-plaintext").args(args));
        assert!(
            out.status.success(),
            "grpcurl {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    let addr = head.addr.as_str();
    let services = grpcurl(&[addr, "list"]);
    for s in [
        "grpc.health.v1.Health",
        "registro.v1.Heartbeat",
        "registro.v1.Store",
    ] {
        assert!(
            services.lines().any(|l| l == s),
            "{s} missing from:\n{services}"
        );
    }
    assert!(
        grpcurl(&[addr, "describe", "registro.v1.Store"]).contains(
            "rpc Store ( .registro.v1.StoreRequest ) returns ( .registro.v1.StoreReply );"
        )
    );
    assert!(grpcurl(&[addr, "describe", "grpc.health.v1.Health"]).contains("rpc Check"));
    let reply: serde_json::Value = serde_json::from_str(&grpcurl(&[
        "-d",
        r#"{"message":"Hola"}"#,
        addr,
        "registro.v1.Store/Store",
    ]))
    .unwrap();
    assert_eq!(reply["datanode"], "datanode1");
    assert_eq!(reply["receipt"], "Message 'Hola' stored on datanode1.");
    let status: serde_json::Value =
        serde_json::from_str(&grpcurl(&[addr, "registro.v1.Heartbeat/Status"])).unwrap();
    assert_eq!(status["datanodes"][0]["status"], "SERVING");
    let health = grpcurl(&[
        "-d",
        r#"{"service":""}"#,
        addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(health.contains("\"SERVING\""), "{health}");
    let listed = grpcurl(&[addr, "registro.v1.Store/List"]);
    assert!(listed.contains("\"Hola\""), "{listed}");
    // The datanode serves reflection too, and the batch call the headnode forwards through, as
    // the README shows it.
    let data_services = grpcurl(&[&data.addr, "list"]);
    assert!(data_services.lines().any(|l| l == "registro.v1.Store"));
    assert!(data_services.lines().any(|l| l == "registro.v1.Datanode"));
    let batch: serde_json::Value = serde_json::from_str(&grpcurl(&[
        "-d",
        r#"{"records":[{"id":"i-1","stored_at":"2026-11-24T10:00:00.000Z","message":"uno","request_id":"r-1"},{"id":"i-0","stored_at":"2026-11-24T10:00:00.000Z","message":""},{"id":"i-2","stored_at":"2026-11-24T10:00:00.001Z","message":"dos","request_id":"r-2"}]}"#,
        &data.addr,
        "registro.v1.Datanode/StoreBatch",
    ]))
    .unwrap();
    let results = batch["results"].as_array().expect("results");
    assert_eq!(results.len(), 3, "{batch}");
    assert_eq!(
        results[0]["reply"]["receipt"],
        "Message 'uno' stored on datanode1."
    );
    assert_eq!(results[1]["code"], 3, "{batch}");
    assert_eq!(results[2]["reply"]["datanode"], "datanode1");
    // Stored as given: the id and time the (here: hand-written) headnode record carried.
    assert_eq!(results[2]["reply"]["id"], "i-2", "{batch}");
    assert_eq!(
        results[2]["reply"]["storedAt"], "2026-11-24T10:00:00.001Z",
        "{batch}"
    );
}

/// SIGTERM stops both servers cleanly with exit code 0.
#[test]
fn sigterm_stops_servers_with_exit_code_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (mut data, mut head) = small_cluster(dir.path());
    for proc in [&mut head, &mut data] {
        proc.signal("TERM");
        let status = proc.wait_exit();
        assert!(status.success(), "{status}: {}", proc.log_text());
        assert!(proc.log_text().contains("stopped"));
    }
}

/// `client health` exit codes follow grpc_health_probe: 0 SERVING, 2 cannot connect, 3 RPC
/// failed, 4 NOT_SERVING.
#[test]
fn client_health_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let head = Proc::spawn(
        "headnode",
        &["--listen", "127.0.0.1:0"],
        dir.path(),
        "h.err",
    );
    let url = head.url();
    let code = |args: &[&str]| client(dir.path(), args).status.code();
    assert_eq!(code(&["--addr", &url, "health"]), Some(0));
    assert_eq!(
        code(&["--addr", &url, "health", "--service", "registro.v1.Store"]),
        Some(4)
    );
    assert_eq!(
        code(&["--addr", &url, "health", "--service", "no.such.Service"]),
        Some(3)
    );
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    assert_eq!(
        code(&["--addr", &dead, "--timeout", "1s", "health"]),
        Some(2)
    );
}

/// Start-up errors are clear and exit non-zero: a port in use, an unusable data directory, a
/// client pointed at a dead headnode, bad flags.
#[test]
fn start_up_errors_are_clear_and_exit_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let out = run(Command::new(bin("headnode"))
        .args(["--listen", &taken_addr])
        .current_dir(dir.path()));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&format!("cannot listen on {taken_addr}")),
        "{}",
        text(&out.stderr)
    );

    std::fs::write(dir.path().join("a-file"), "").unwrap();
    let out = run(Command::new(bin("datanode"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--name",
            "d",
            "--data-dir",
            "a-file/data",
        ])
        .current_dir(dir.path()));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("a-file/data"),
        "names the path: {}",
        text(&out.stderr)
    );

    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let out = client(dir.path(), &["--addr", &dead, "--timeout", "1s", "send"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("cannot connect to {dead}")),
        "{}",
        text(&out.stderr)
    );

    let out = run(Command::new(bin("headnode")).args(["--heartbeat-interval", "soon"]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("500ms"), "{}", text(&out.stderr));
}

/// Every flag can come from its REGISTRO_* environment variable.
#[test]
fn flags_read_registro_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = Proc::spawn_with_env(
        "datanode",
        &[
            ("REGISTRO_LISTEN", "127.0.0.1:0"),
            ("REGISTRO_NAME", "envnode"),
            ("REGISTRO_DATA_DIR", "envdata"),
        ],
        dir.path(),
        "env.err",
    );
    let out = client(
        dir.path(),
        &[
            "--addr",
            &data.url(),
            "send",
            "--count",
            "1",
            "--log",
            "c.log",
        ],
    );
    assert_eq!(
        text(&out.stdout).trim(),
        "Message 'Hola' stored on envnode."
    );
    assert_eq!(records_in(&dir.path().join("envdata")).len(), 1);
    data.signal("TERM");
    assert!(data.wait_exit().success());
}

/// Every binary answers --help.
#[test]
fn every_binary_has_help() {
    for name in ["headnode", "datanode", "client"] {
        let out = run(Command::new(bin(name)).arg("--help"));
        assert!(out.status.success());
        assert!(text(&out.stdout).contains("Usage:"));
    }
}
