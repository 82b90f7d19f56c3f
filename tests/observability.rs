//! `--metrics-listen`: the real binaries scraped by a real Prometheus, the status page in a real
//! browser (headless Chromium), the exposition read by the official Python parsers, and the
//! listener's manners with clients that misbehave.
//!
//! Prometheus and Chromium come from Debian; `make test` installs them (as root). Where one is
//! missing, its test says why on stderr and skips.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A program on the PATH, or the reason it cannot be used.
fn program(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!("{name} is not installed (Debian package {name}; `make test` installs it with apt-get when run as root)")
        })
}

/// Prints why a test does not run, so a skip is never silent.
fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
}

/// The answer to one HTTP request: status, headers (lower-cased names), body.
struct HttpResponse {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// A plain HTTP/1.0 request (so no server answers chunked) with a deadline.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut request = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {raw:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(addr: &str, path: &str) -> HttpResponse {
    http(addr, "GET", path, &[])
}

/// `text` percent-encoded for a URL query.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Polls a blocking check every 50 ms until `DEADLINE`.
fn eventually_blocking<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A headnode and three datanodes (`datanode1`…`datanode3`, registered by name) as real
/// processes, each with `--metrics-listen 127.0.0.1:0`.
struct ObservedCluster {
    dir: tempfile::TempDir,
    headnode: Proc,
    /// The headnode's metrics address.
    headnode_metrics: String,
    datanodes: Vec<(Proc, String)>,
}

/// The address a process logged as its metrics listener.
fn metrics_addr(proc: &mut Proc) -> String {
    proc.wait_for_log("serving metrics on http://")
        .trim_end_matches("/metrics")
        .to_string()
}

impl ObservedCluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut headnode = Proc::spawn(
            "headnode",
            &[
                "--listen",
                "127.0.0.1:0",
                "--heartbeat-interval",
                "100ms",
                "--metrics-listen",
                "127.0.0.1:0",
            ],
            dir.path(),
            "headnode.err",
        );
        let headnode_metrics = metrics_addr(&mut headnode);
        let datanodes = (1..=3)
            .map(|i| {
                let name = format!("datanode{i}");
                let mut proc = Proc::spawn(
                    "datanode",
                    &[
                        "--listen",
                        "127.0.0.1:0",
                        "--name",
                        &name,
                        "--data-dir",
                        &name,
                        "--headnode",
                        &headnode.url(),
                        "--metrics-listen",
                        "127.0.0.1:0",
                    ],
                    dir.path(),
                    &format!("{name}.err"),
                );
                let addr = metrics_addr(&mut proc);
                (proc, addr)
            })
            .collect();
        let cluster = Self {
            dir,
            headnode,
            headnode_metrics,
            datanodes,
        };
        cluster.wait_status("every datanode SERVING", |rows| {
            rows.len() == 3 && rows.iter().all(|(_, s)| s == "SERVING")
        });
        // Past the headnode's warm-up, so the first Store is not UNAVAILABLE.
        let url = cluster.headnode.url();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(wait_ready(&url));
        cluster
    }

    /// Waits until the headnode's Status (name → status) satisfies `check`.
    fn wait_status(&self, what: &str, check: impl Fn(&[(String, String)]) -> bool) {
        let url = self.headnode.url();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        eventually_blocking(what, || {
            let rows: Vec<(String, String)> = runtime
                .block_on(status(&url))
                .into_iter()
                .map(|d| (d.name, d.status))
                .collect();
            check(&rows).then_some(())
        });
    }

    /// Stores `n` messages through the headnode; every one must succeed.
    fn store(&self, n: usize) {
        let url = self.headnode.url();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut client = store_client(&url).await;
            for i in 0..n {
                client
                    .store(registro::pb::StoreRequest {
                        message: format!("observed {i}"),
                        request_id: format!("obs-{i}"),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("Store {i} failed: {e}"));
            }
        });
    }
}

/// A Prometheus server on 127.0.0.1, with its storage in a temporary folder; killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `binary` with `config` (prometheus.yml) and waits until it is ready.
    fn start(binary: &Path, config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        // Prometheus cannot report a port it picked itself: take a free one and hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let mut prometheus = Self {
            child,
            addr,
            _dir: dir,
        };
        eventually_blocking("Prometheus ready", || {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                let log = std::fs::read_to_string(prometheus._dir.path().join("prometheus.log"))
                    .unwrap_or_default();
                panic!("prometheus exited with {status}:\n{log}");
            }
            TcpStream::connect(&prometheus.addr).ok()?;
            (get(&prometheus.addr, "/-/ready").status == 200).then_some(())
        });
        prometheus
    }

    /// The values of an instant PromQL query, by the labels of each series.
    fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let response = get(
            &self.addr,
            &format!("/api/v1/query?query={}", url_encode(promql)),
        );
        assert_eq!(response.status, 200, "{promql}: {}", response.body);
        let json: serde_json::Value = serde_json::from_str(&response.body).expect("JSON");
        json["data"]["result"]
            .as_array()
            .expect("a vector result")
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = series["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .expect("a numeric value");
                (labels, value)
            })
            .collect()
    }

    /// Waits until `promql` returns exactly one series with the value `expected`.
    fn wait_value(&self, promql: &str, expected: f64) {
        let start = Instant::now();
        loop {
            let last = self.query(promql);
            if last.len() == 1 && last[0].1 == expected {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{promql} never returned {expected}; last: {last:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The scrape config the README gives (the block after `<!-- prometheus.yml -->`), for the
/// cluster's real addresses and scraped every 200 ms.
fn readme_scrape_config(headnode: &str, datanodes: &[String]) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let block = readme
        .split("<!-- prometheus.yml -->\n```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README.md has a prometheus.yml block");
    let mut config = block
        .replace(
            "scrape_interval: 5s",
            "scrape_interval: 200ms\n  scrape_timeout: 200ms",
        )
        .replace("localhost:9500", headnode);
    for (i, addr) in datanodes.iter().enumerate() {
        config = config.replace(&format!("localhost:960{}", i + 1), addr);
    }
    assert!(!config.contains("localhost"), "{config}");
    config
}

/// The README's two PromQL queries.
const ANY_DATANODE_DOWN: &str = "registro_datanode_up == 0";
const STORES_PER_SECOND_BY_RESULT: &str = r#"sum by (grpc_code) (rate(grpc_server_handled_total{job="headnode",grpc_service="registro.v1.Store",grpc_method="Store"}[1m]))"#;

/// A real Prometheus, configured with the README's scrape config, scraping the headnode and
/// three datanodes counts exactly the Stores that were made (the headnode's OK Stores, the sum
/// of the datanodes' stored messages), answers the README's queries, and sees a SIGKILLed
/// datanode as down.
#[test]
fn prometheus_counts_every_store_and_sees_a_killed_datanode_down() {
    let binary = match program("prometheus") {
        Ok(p) => p,
        Err(why) => {
            return skip(
                "prometheus_counts_every_store_and_sees_a_killed_datanode_down",
                &why,
            );
        }
    };
    const N: usize = 40;
    let mut cluster = ObservedCluster::start();
    let datanode_targets: Vec<String> = cluster.datanodes.iter().map(|(_, a)| a.clone()).collect();
    let prometheus = Prometheus::start(
        &binary,
        &readme_scrape_config(&cluster.headnode_metrics, &datanode_targets),
    );
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for query in [ANY_DATANODE_DOWN, STORES_PER_SECOND_BY_RESULT] {
        assert!(readme.contains(query), "README.md lacks {query}");
    }
    assert!(prometheus.query(ANY_DATANODE_DOWN).is_empty());
    prometheus.wait_value("count(up == 1)", 4.0);
    cluster.store(N);

    prometheus.wait_value(
        r#"sum(grpc_server_handled_total{job="headnode",grpc_service="registro.v1.Store",grpc_method="Store",grpc_code="OK"})"#,
        N as f64,
    );
    prometheus.wait_value(r#"sum(registro_stored_total{job="datanode"})"#, N as f64);
    prometheus.wait_value(r#"sum(registro_routed_total{job="headnode"})"#, N as f64);
    prometheus.wait_value("count(registro_datanode_up == 1)", 3.0);
    let rates = prometheus.query(STORES_PER_SECOND_BY_RESULT);
    let ok: Vec<_> = rates.iter().filter(|(_, rate)| *rate > 0.0).collect();
    assert!(
        ok.len() == 1 && ok[0].0["grpc_code"] == "OK",
        "only OK Stores happened: {rates:?}"
    );

    cluster.datanodes[1].0.signal("KILL");
    cluster.datanodes[1].0.wait_exit();
    prometheus.wait_value(r#"registro_datanode_up{datanode="datanode2"}"#, 0.0);
    let down = prometheus.query(ANY_DATANODE_DOWN);
    assert_eq!(down.len(), 1, "{down:?}");
    assert_eq!(down[0].0["datanode"], "datanode2");
    prometheus.wait_value(
        &format!(
            r#"up{{job="datanode",instance="{}"}}"#,
            cluster.datanodes[1].1
        ),
        0.0,
    );
    prometheus.wait_value(
        r#"sum(registro_heartbeat_transitions_total{datanode="datanode2",to="UNREACHABLE"})"#,
        1.0,
    );
    drop(prometheus);
    drop(cluster.dir);
}

/// The status page, loaded in headless Chromium, names every datanode and shows a SIGKILLed
/// one as UNREACHABLE.
#[test]
fn the_status_page_in_a_browser_shows_every_datanode_and_a_dead_one_unreachable() {
    let chromium = match program("chromium") {
        Ok(p) => p,
        Err(why) => {
            return skip(
                "the_status_page_in_a_browser_shows_every_datanode_and_a_dead_one_unreachable",
                &why,
            );
        }
    };
    let mut cluster = ObservedCluster::start();
    cluster.store(5);
    cluster.datanodes[2].0.signal("KILL");
    cluster.datanodes[2].0.wait_exit();
    cluster.wait_status("datanode3 UNREACHABLE", |rows| {
        rows.iter()
            .any(|(n, s)| n == "datanode3" && s == "UNREACHABLE")
    });

    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", cluster.headnode_metrics);
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.path().display()),
            "--dump-dom",
            &url,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn chromium");
    let mut dom = String::new();
    let mut stdout = child.stdout.take().unwrap();
    // A browser that hangs must not hang the test: it is killed past the deadline.
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    dom.push_str(&reader.join().unwrap());
    assert!(
        dom.contains("registro headnode"),
        "not the status page:\n{dom}"
    );

    // The datanodes table comes first: each name's first row is its line in it.
    let row_of = |name: &str| -> String {
        dom.split("<tr")
            .find(|row| row.contains(&format!(">{name}<")))
            .unwrap_or_else(|| panic!("no row for {name} in:\n{dom}"))
            .to_string()
    };
    for name in ["datanode1", "datanode2"] {
        assert!(
            row_of(name).contains(">SERVING<"),
            "{name}: {}",
            row_of(name)
        );
    }
    let dead = row_of("datanode3");
    assert!(dead.contains(">UNREACHABLE<"), "datanode3: {dead}");
    assert!(dom.contains("2 of 3 datanodes down") || dom.contains("1 of 3 datanodes down"));
}

/// `/metrics` parses with the official Python client's parsers: the classic text format by
/// default and strict OpenMetrics when asked for, with the same families and types, on the
/// headnode and on a datanode.
#[test]
fn metrics_parse_with_the_python_prometheus_parsers() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} not found: run `make tools` (make test does), which installs prometheus_client from PyPI",
        python.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/parse_metrics.py");
    let cluster = ObservedCluster::start();
    cluster.store(3);

    let parse = |mode: &str, text: &str| -> BTreeMap<String, String> {
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{mode} parser rejected:\n{}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    };
    let families = |addr: &str| {
        let text = get(addr, "/metrics");
        assert_eq!(text.status, 200);
        assert!(text.headers["content-type"].starts_with("text/plain; version=0.0.4"));
        let open = http(
            addr,
            "GET",
            "/metrics",
            &[(
                "Accept",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            )],
        );
        assert!(open.headers["content-type"].starts_with("application/openmetrics-text"));
        let classic = parse("text", &text.body);
        let strict = parse("openmetrics", &open.body);
        assert_eq!(classic, strict, "both formats carry the same families");
        classic
    };

    let head = families(&cluster.headnode_metrics);
    for (name, kind) in [
        ("grpc_server_started", "counter"),
        ("grpc_server_handled", "counter"),
        ("grpc_server_handling_seconds", "histogram"),
        ("registro_datanode_up", "gauge"),
        ("registro_routed", "counter"),
        ("registro_heartbeat_transitions", "counter"),
    ] {
        assert_eq!(
            head.get(name).map(String::as_str),
            Some(kind),
            "{name}: {head:?}"
        );
    }
    let data = families(&cluster.datanodes[0].1);
    for (name, kind) in [
        ("grpc_server_handled", "counter"),
        ("grpc_server_handling_seconds", "histogram"),
        ("registro_stored", "counter"),
        ("registro_fsync_seconds", "histogram"),
        ("registro_batch_messages", "histogram"),
        ("registro_data_file_bytes", "gauge"),
    ] {
        assert_eq!(
            data.get(name).map(String::as_str),
            Some(kind),
            "{name}: {data:?}"
        );
    }
}

/// A failed Store (INVALID_ARGUMENT, whose status tonic sends in the response headers) and a
/// List stream (status in the trailers) are both counted with their codes.
#[tokio::test]
async fn failed_calls_and_streams_are_counted_with_their_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut headnode = Proc::spawn(
        "headnode",
        &["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"],
        dir.path(),
        "headnode.err",
    );
    let metrics = metrics_addr(&mut headnode);
    let error = store(&headnode.url(), "", "").await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    let error = store(&headnode.url(), "no datanode", "").await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unavailable);
    let mut list = store_client(&headnode.url())
        .await
        .list(registro::pb::ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    while list.message().await.unwrap().is_some() {}

    let text = tokio::task::spawn_blocking(move || get(&metrics, "/metrics").body)
        .await
        .unwrap();
    for line in [
        r#"grpc_server_handled_total{grpc_type="unary",grpc_service="registro.v1.Store",grpc_method="Store",grpc_code="InvalidArgument"} 1"#,
        r#"grpc_server_handled_total{grpc_type="unary",grpc_service="registro.v1.Store",grpc_method="Store",grpc_code="Unavailable"} 1"#,
        r#"grpc_server_handled_total{grpc_type="server_stream",grpc_service="registro.v1.Store",grpc_method="List",grpc_code="OK"} 1"#,
        r#"grpc_server_started_total{grpc_type="unary",grpc_service="registro.v1.Store",grpc_method="Store"} 2"#,
    ] {
        assert!(text.contains(line), "no {line} in:\n{text}");
    }
}

/// The metrics listener answers only GET and HEAD, only on its paths, survives garbage, cuts
/// off a client that never finishes its request, and closes when the node stops.
#[test]
fn the_metrics_listener_is_strict_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut datanode = Proc::spawn(
        "datanode",
        &[
            "--listen",
            "127.0.0.1:0",
            "--name",
            "d",
            "--data-dir",
            "d",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        dir.path(),
        "datanode.err",
    );
    let addr = metrics_addr(&mut datanode);

    let post = http(&addr, "POST", "/metrics", &[]);
    assert_eq!(post.status, 405);
    assert_eq!(post.headers["allow"], "GET, HEAD");
    assert_eq!(get(&addr, "/nope").status, 404);
    assert_eq!(get(&addr, "/").status, 404, "a datanode has no status page");
    let head = http(&addr, "HEAD", "/metrics", &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(get(&addr, "/metrics?x=1").status, 200);

    // Garbage, and a request head over the size limit: an error answer or a closed
    // connection, never a crash.
    for junk in [
        b"\x00\x01\x02 garbage\r\n\r\n".to_vec(),
        format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(64 * 1024)).into_bytes(),
    ] {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let _ = s.write_all(&junk);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
            "{answer}"
        );
    }

    // A client that sends half a request and then nothing is closed after the header timeout.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.set_read_timeout(Some(DEADLINE)).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let start = Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(4) && waited < DEADLINE,
        "closed after {waited:?}"
    );

    assert_eq!(get(&addr, "/metrics").status, 200, "still serving");

    // It stops with the node.
    datanode.signal("TERM");
    assert!(datanode.wait_exit().success(), "{}", datanode.log_text());
    assert!(
        TcpStream::connect(&addr).is_err(),
        "metrics port still open"
    );
}
