//! Mutual TLS and roles: only the cluster's certificates get in, and each only where its role
//! may go. Certificates are made here with the library's own `certs` module; a second, foreign
//! CA plays the outsider.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{DEADLINE, Proc, datanode_on, eventually, grpcurl, headnode, records_in};
use registro::certs::{self, Pem, Validity};
use registro::pb::datanode_client::DatanodeClient;
use registro::pb::heartbeat_client::HeartbeatClient;
use registro::pb::store_client::StoreClient;
use registro::pb::{
    DatanodeStatus, ListRequest, RegisterRequest, StatusRequest, StoreBatchRequest, StoreRequest,
};
use registro::tls::{Identity, Role, Tls};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A CA of its own and the certificates it signs, as files and as loaded [`Tls`].
struct Pki {
    dir: tempfile::TempDir,
    ca: Pem,
}

impl Pki {
    fn new() -> Self {
        let ca = certs::new_ca(Validity::from_now(certs::CA_VALIDITY)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &ca.cert).unwrap();
        Self { dir, ca }
    }

    /// A certificate for `role`/`name`, for `localhost` and `127.0.0.1` too, valid for `validity`.
    fn issue_for(&self, role: Role, name: &str, validity: Validity) -> Pem {
        let identity = Identity {
            role,
            name: name.into(),
        };
        let hosts = ["localhost".to_string(), "127.0.0.1".to_string()];
        let pem = certs::issue(&self.ca, &identity, &hosts, validity).unwrap();
        std::fs::write(self.dir.path().join(format!("{name}.pem")), &pem.cert).unwrap();
        std::fs::write(self.dir.path().join(format!("{name}-key.pem")), &pem.key).unwrap();
        pem
    }

    fn issue(&self, role: Role, name: &str) -> Pem {
        self.issue_for(role, name, Validity::from_now(Duration::from_secs(3600)))
    }

    /// The loaded TLS material of a new certificate for `role`/`name`.
    fn tls(&self, role: Role, name: &str) -> Tls {
        let pem = self.issue(role, name);
        Tls::from_pem(
            self.ca.cert.as_bytes(),
            pem.cert.as_bytes(),
            pem.key.as_bytes(),
        )
        .unwrap()
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `(cert, key)` files of a certificate issued earlier.
    fn files(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join(format!("{name}.pem")),
            self.dir.path().join(format!("{name}-key.pem")),
        )
    }

    /// The `REGISTRO_TLS_*` environment for the certificate `name`, trusting `ca`.
    fn env(&self, ca: &Path, name: &str) -> Vec<(String, PathBuf)> {
        let (cert, key) = self.files(name);
        vec![
            ("REGISTRO_TLS_CA".into(), ca.to_path_buf()),
            ("REGISTRO_TLS_CERT".into(), cert),
            ("REGISTRO_TLS_KEY".into(), key),
        ]
    }
}

async fn channel(addr: &str, tls: Option<&Tls>) -> Result<Channel, String> {
    registro::config::dial(addr, Duration::from_secs(2), tls)
        .map_err(|e| e.to_string())?
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

/// The headnode's Status as the holder of `tls` sees it.
async fn status(addr: &str, tls: &Tls) -> Vec<DatanodeStatus> {
    let Ok(channel) = channel(addr, Some(tls)).await else {
        return Vec::new();
    };
    match HeartbeatClient::new(channel).status(StatusRequest {}).await {
        Ok(reply) => reply.into_inner().datanodes,
        Err(_) => Vec::new(),
    }
}

/// A headnode and datanode1, both under mutual TLS, datanode1 registered and SERVING.
struct TlsCluster {
    pki: Pki,
    dir: tempfile::TempDir,
    headnode: common::Node,
    datanode1: common::Node,
    client: Tls,
}

impl TlsCluster {
    async fn start() -> Self {
        let pki = Pki::new();
        let dir = tempfile::tempdir().unwrap();
        let mut config = common::headnode_config(dir.path(), Vec::new());
        config.tls = Some(pki.tls(Role::Headnode, "headnode"));
        let headnode = headnode(config).await;
        let datanode1 = datanode_on(
            "127.0.0.1:0",
            registro::datanode::Config {
                headnode: Some(headnode.addr.to_string()),
                tls: Some(pki.tls(Role::Datanode, "datanode1")),
                ..common::datanode_config(dir.path(), "datanode1")
            },
        )
        .await;
        let client = pki.tls(Role::Client, "client");
        let cluster = Self {
            pki,
            dir,
            headnode,
            datanode1,
            client,
        };
        let expected = cluster.datanode1.addr.to_string();
        let addr = cluster.addr();
        eventually("datanode1 registered and SERVING", || async {
            let s = status(&addr, &cluster.client).await;
            (s.len() == 1 && s[0].address == expected && s[0].status == "SERVING").then_some(())
        })
        .await;
        eventually("the headnode ready (warm-up over)", || async {
            let channel = channel(&addr, Some(&cluster.client)).await.ok()?;
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: "registro.v1.Store".into(),
                })
                .await
                .ok()?;
            (reply.into_inner().status() == ServingStatus::Serving).then_some(())
        })
        .await;
        cluster
    }

    fn addr(&self) -> String {
        self.headnode.addr.to_string()
    }

    async fn store(&self, message: &str) -> Result<String, tonic::Status> {
        let channel = channel(&self.addr(), Some(&self.client)).await.unwrap();
        StoreClient::new(channel)
            .store(StoreRequest {
                message: message.into(),
                request_id: String::new(),
            })
            .await
            .map(|r| r.into_inner().datanode)
    }

    /// Asserts the pool is datanode1 alone at its own address, and that `count` Stores all land
    /// on it.
    async fn assert_only_datanode1_gets_traffic(&self, count: usize) {
        let pool = status(&self.addr(), &self.client).await;
        assert_eq!(pool.len(), 1, "pool: {pool:?}");
        assert_eq!(pool[0].name, "datanode1");
        assert_eq!(pool[0].address, self.datanode1.addr.to_string());
        for i in 0..count {
            let datanode = self.store(&format!("after the rogue {i}")).await.unwrap();
            assert_eq!(datanode, "datanode1");
        }
    }
}

/// Starts a rogue datanode that claims `name` and keeps registering with the cluster's headnode
/// with `tls` (plaintext when `None`), makes one Register call of its own with the same
/// credentials, and checks it gets nothing: not in the pool, no message, datanode1 untouched.
/// Returns what that Register call got, for the test to judge.
async fn rogue(cluster: &TlsCluster, name: &str, tls: Option<Tls>) -> String {
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue = datanode_on(
        "127.0.0.1:0",
        registro::datanode::Config {
            headnode: Some(match tls {
                Some(_) => cluster.addr(),
                None => format!("http://{}", cluster.addr()),
            }),
            tls: tls.clone(),
            ..common::datanode_config(rogue_dir.path(), name)
        },
    )
    .await;
    let got = match channel(&cluster.addr(), tls.as_ref()).await {
        Err(e) => format!("no connection: {e}"),
        Ok(channel) => match HeartbeatClient::new(channel)
            .register(RegisterRequest {
                name: name.into(),
                address: rogue.addr.to_string(),
            })
            .await
        {
            Ok(reply) => panic!("the rogue registered: {reply:?}"),
            Err(status) => format!(
                "{:?}: {} [{}]",
                status.code(),
                status.message(),
                registro::tls::explain(&status, tls.is_some()).unwrap_or_default()
            ),
        },
    };
    eprintln!("rogue {name} with {tls:?} got: {got}");
    cluster.assert_only_datanode1_gets_traffic(30).await;
    assert!(
        records_in(&rogue_dir.path().join(name)).is_empty(),
        "the rogue stored messages"
    );
    assert_eq!(
        records_in(&cluster.dir.path().join("datanode1")).len(),
        30,
        "datanode1 holds every message"
    );
    got
}

/// A rogue datanode without certificates cannot even connect to register: the headnode only
/// speaks TLS.
#[tokio::test]
async fn a_rogue_datanode_without_certificates_is_kept_out() {
    let cluster = TlsCluster::start().await;
    let got = rogue(&cluster, "datanode1", None).await;
    assert!(!got.contains("Ok"), "{got}");
}

/// A rogue datanode with a client's certificate is refused Register: it needs the datanode role.
#[tokio::test]
async fn a_rogue_datanode_with_a_client_certificate_is_kept_out() {
    let cluster = TlsCluster::start().await;
    let tls = cluster.pki.tls(Role::Client, "mallory");
    let got = rogue(&cluster, "datanode1", Some(tls)).await;
    assert!(got.starts_with("PermissionDenied"), "{got}");
    assert!(got.contains("needs the datanode role"), "{got}");
}

/// datanode4's genuine certificate cannot register as datanode1: the name must be its own.
#[tokio::test]
async fn a_datanode_certificate_cannot_register_another_datanodes_name() {
    let cluster = TlsCluster::start().await;
    let tls = cluster.pki.tls(Role::Datanode, "datanode4");
    let got = rogue(&cluster, "datanode1", Some(tls)).await;
    assert!(got.starts_with("PermissionDenied"), "{got}");
    assert!(
        got.contains("may only register the name \"datanode4\""),
        "{got}"
    );
}

/// A datanode certificate signed by another CA fails the handshake: it never reaches Register.
#[tokio::test]
async fn a_rogue_datanode_with_a_foreign_cas_certificate_is_kept_out() {
    let cluster = TlsCluster::start().await;
    let foreign = Pki::new();
    // It trusts the cluster's CA, so only its own certificate gives it away.
    let pem = foreign.issue(Role::Datanode, "datanode1");
    let tls = Tls::from_pem(
        cluster.pki.ca.cert.as_bytes(),
        pem.cert.as_bytes(),
        pem.key.as_bytes(),
    )
    .unwrap();
    let got = rogue(&cluster, "datanode1", Some(tls)).await;
    assert!(!got.starts_with("PermissionDenied"), "{got}");
}

/// A client certificate calling a datanode's StoreBatch directly is PERMISSION_DENIED, naming
/// the headnode role, and nothing is stored.
#[tokio::test]
async fn a_client_certificate_cannot_call_storebatch() {
    let cluster = TlsCluster::start().await;
    let channel = channel(&cluster.datanode1.addr.to_string(), Some(&cluster.client))
        .await
        .unwrap();
    let err = DatanodeClient::new(channel)
        .store_batch(StoreBatchRequest {
            records: vec![registro::headnode::record::new("straight to the disk", "r1").record],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("needs the headnode role"), "{err:?}");
    assert!(records_in(&cluster.dir.path().join("datanode1")).is_empty());
}

/// Health checks take any certificate of the cluster, whatever its role, while the calls of
/// another role stay closed to it.
#[tokio::test]
async fn any_cluster_certificate_may_check_health() {
    let cluster = TlsCluster::start().await;
    let datanode2 = cluster.pki.tls(Role::Datanode, "datanode2");
    let channel = channel(&cluster.addr(), Some(&datanode2)).await.unwrap();
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(health, ServingStatus::Serving);
    let status = HeartbeatClient::new(channel)
        .status(StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
}

/// The headnode's own certificate may call StoreBatch (the forwarding path works under TLS), and
/// a client may Store and List through the headnode.
#[tokio::test]
async fn clients_store_and_list_through_the_headnode_under_tls() {
    let cluster = TlsCluster::start().await;
    assert_eq!(cluster.store("Hola").await.unwrap(), "datanode1");
    let channel = channel(&cluster.addr(), Some(&cluster.client))
        .await
        .unwrap();
    let mut stream = StoreClient::new(channel)
        .list(ListRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("one message");
    assert_eq!(first.message, "Hola");
}

/// `--health-listen` answers Health/Check in plaintext with the same statuses as the TLS port,
/// and serves nothing else.
#[tokio::test]
async fn the_health_port_answers_health_checks_in_plaintext_and_nothing_else() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let health = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let health_addr = health.local_addr().unwrap().to_string();
    let mut config = common::headnode_config(dir.path(), Vec::new());
    config.tls = Some(pki.tls(Role::Headnode, "headnode"));
    config.health_listener = Some(std::sync::Arc::new(health));
    let node = headnode(config).await;

    let plain = eventually("the health port answers", || async {
        channel(&health_addr, None).await.ok()
    })
    .await;
    let check = |service: &str| {
        let mut client = HealthClient::new(plain.clone());
        let request = HealthCheckRequest {
            service: service.into(),
        };
        async move { client.check(request).await.map(|r| r.into_inner().status()) }
    };
    assert_eq!(check("").await.unwrap(), ServingStatus::Serving);
    // No datanode yet: the same readiness as on the main port.
    assert_eq!(
        check(registro::STORE_SERVICE).await.unwrap(),
        ServingStatus::NotServing
    );
    let client = pki.tls(Role::Client, "client");
    let tls_channel = channel(&node.addr.to_string(), Some(&client))
        .await
        .unwrap();
    let on_main = HealthClient::new(tls_channel)
        .check(HealthCheckRequest {
            service: registro::STORE_SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(on_main, ServingStatus::NotServing);

    let store = StoreClient::new(plain.clone())
        .store(StoreRequest {
            message: "not here".into(),
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(store.code(), Code::Unimplemented, "{store:?}");
    let status = HeartbeatClient::new(plain)
        .status(StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

/// With certificates configured, an `http://` headnode address is an error at start-up rather
/// than a plaintext dial.
#[tokio::test]
async fn a_datanode_with_tls_refuses_an_http_headnode_address() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = registro::datanode::Config {
        headnode: Some("http://127.0.0.1:5000".into()),
        tls: Some(pki.tls(Role::Datanode, "datanode1")),
        ..common::datanode_config(dir.path(), "datanode1")
    };
    let err = tokio::time::timeout(
        DEADLINE,
        registro::datanode::serve(listener, config, std::future::pending()),
    )
    .await
    .expect("serve returns at once")
    .unwrap_err();
    assert!(err.to_string().contains("plaintext (http://)"), "{err}");
}

// ---- the real binaries and grpcurl ----

fn run(command: &mut Command) -> Output {
    command.output().expect("run")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `client` binary with `env` (REGISTRO_TLS_* or none) against `addr`.
fn client(addr: &str, env: &[(String, PathBuf)], args: &[&str]) -> Output {
    run(Command::new(common::bin("client"))
        .env_remove("REGISTRO_TLS_CA")
        .env_remove("REGISTRO_TLS_CERT")
        .env_remove("REGISTRO_TLS_KEY")
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .args(["--addr", addr, "--timeout", "5s"])
        .args(args))
}

/// A headnode and datanode1 as real processes under mutual TLS, with `make certs`' names.
struct Binaries {
    pki: Pki,
    work: tempfile::TempDir,
    headnode: Proc,
    _datanode1: Proc,
}

impl Binaries {
    fn start() -> Self {
        let pki = Pki::new();
        for (role, name) in [
            (Role::Headnode, "headnode"),
            (Role::Datanode, "datanode1"),
            (Role::Client, "client"),
            (Role::Datanode, "datanode2"),
        ] {
            pki.issue(role, name);
        }
        let work = tempfile::tempdir().unwrap();
        let ca = pki.ca_file();
        let tls = |name: &str| {
            let (cert, key) = pki.files(name);
            vec![
                "--tls-ca".to_string(),
                ca.display().to_string(),
                "--tls-cert".to_string(),
                cert.display().to_string(),
                "--tls-key".to_string(),
                key.display().to_string(),
            ]
        };
        let mut args = vec!["--listen", "127.0.0.1:0", "--heartbeat-interval", "200ms"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.extend(tls("headnode"));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let headnode = Proc::spawn("headnode", &refs, work.path(), "headnode.log");
        let mut args = vec![
            "--listen".to_string(),
            "127.0.0.1:0".into(),
            "--name".into(),
            "datanode1".into(),
            "--data-dir".into(),
            "datanode1".into(),
            "--headnode".into(),
            headnode.addr.clone(),
        ];
        args.extend(tls("datanode1"));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let datanode1 = Proc::spawn("datanode", &refs, work.path(), "datanode1.log");
        let cluster = Self {
            pki,
            work,
            headnode,
            _datanode1: datanode1,
        };
        let env = cluster.client_env();
        let start = std::time::Instant::now();
        // Ready: datanode1 SERVING and the headnode's warm-up over (Store health SERVING).
        loop {
            let out = client(
                &cluster.headnode.addr,
                &env,
                &["health", "--service", "registro.v1.Store"],
            );
            if out.status.success() {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "the headnode never ready with datanode1: {}{}\n{}",
                text(&out.stdout),
                text(&out.stderr),
                cluster.headnode.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    fn client_env(&self) -> Vec<(String, PathBuf)> {
        self.pki.env(&self.pki.ca_file(), "client")
    }

    /// grpcurl against the headnode with `flags` before the address.
    fn grpcurl(&self, flags: &[&str], args: &[&str]) -> Output {
        run(Command::new(grpcurl())
            .args(flags)
            .arg(&self.headnode.addr)
            .args(args))
    }

    fn tls_flags(&self) -> Vec<String> {
        let (cert, key) = self.pki.files("client");
        vec![
            "-cacert".into(),
            self.pki.ca_file().display().to_string(),
            "-cert".into(),
            cert.display().to_string(),
            "-key".into(),
            key.display().to_string(),
            "-servername".into(),
            "headnode".into(),
        ]
    }
}

/// Store, List and Status work through the real binaries with REGISTRO_TLS_* set, and the
/// datanode registered over TLS.
#[test]
fn the_binaries_store_list_and_show_status_under_mutual_tls() {
    let cluster = Binaries::start();
    let env = cluster.client_env();
    let addr = cluster.headnode.addr.as_str();
    let log = cluster.work.path().join("client.log");
    let log = log.display().to_string();
    let sent = client(addr, &env, &["send", "--count", "3", "--log", &log]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    assert_eq!(
        text(&sent.stdout)
            .lines()
            .filter(|l| l.ends_with("stored on datanode1."))
            .count(),
        3,
        "{}",
        text(&sent.stdout)
    );
    let listed = client(addr, &env, &["list"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert_eq!(text(&listed.stdout).lines().count(), 3);
    let status = client(addr, &env, &["status"]);
    assert!(text(&status.stdout).contains("datanode1"));
    let health = client(addr, &env, &["health"]);
    assert!(health.status.success(), "{}", text(&health.stderr));
}

/// grpcurl with the client certificate lists, stores, lists messages and shows status;
/// `-plaintext` and TLS without a client certificate are refused.
#[test]
fn grpcurl_needs_the_client_certificate() {
    let cluster = Binaries::start();
    let flags = cluster.tls_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let ok = |extra: &[&str], args: &[&str]| {
        let all: Vec<&str> = flags.iter().chain(extra).copied().collect();
        let out = cluster.grpcurl(&all, args);
        assert!(
            out.status.success(),
            "grpcurl {args:?}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    };
    assert!(ok(&[], &["list"]).lines().any(|l| l == "registro.v1.Store"));
    let reply = ok(
        &["-d", r#"{"message":"Hola desde grpcurl"}"#],
        &["registro.v1.Store/Store"],
    );
    assert!(reply.contains("stored on datanode1"), "{reply}");
    assert!(ok(&[], &["registro.v1.Store/List"]).contains("Hola desde grpcurl"));
    assert!(ok(&[], &["registro.v1.Heartbeat/Status"]).contains("datanode1"));

    let plaintext = cluster.grpcurl(&["-plaintext", "-connect-timeout", "2"], &["list"]);
    assert!(!plaintext.status.success(), "-plaintext was served");
    let no_cert = cluster.grpcurl(
        &[
            "-connect-timeout",
            "2",
            "-cacert",
            &cluster.pki.ca_file().display().to_string(),
            "-servername",
            "headnode",
        ],
        &["list"],
    );
    assert!(
        !no_cert.status.success(),
        "TLS without a client certificate was served"
    );
    eprintln!(
        "grpcurl -plaintext: {}\ngrpcurl without -cert: {}",
        text(&plaintext.stderr).trim(),
        text(&no_cert.stderr).trim()
    );
}

/// The client's error for `env`, asserted to be one line.
fn one_line_error(cluster: &Binaries, env: &[(String, PathBuf)]) -> String {
    let out = client(&cluster.headnode.addr, env, &["status"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    eprintln!("{}", err.trim_end());
    err
}

/// A client without certificates against the TLS headnode is told the server wants mutual TLS.
#[test]
fn the_client_explains_a_plaintext_dial_to_a_tls_server() {
    let cluster = Binaries::start();
    let err = one_line_error(&cluster, &[]);
    assert!(
        err.contains("if it runs mutual TLS, give --tls-ca"),
        "{err}"
    );
}

/// A client trusting another CA is told the server's certificate is not signed by its --tls-ca.
#[test]
fn the_client_explains_a_wrong_ca() {
    let cluster = Binaries::start();
    let foreign = Pki::new();
    let env = cluster.pki.env(&foreign.ca_file(), "client");
    let err = one_line_error(&cluster, &env);
    assert!(err.contains("not signed by the CA in --tls-ca"), "{err}");
}

/// A certificate without the right role is told which role the call needs.
#[test]
fn the_client_explains_a_missing_role() {
    let cluster = Binaries::start();
    let env = cluster.pki.env(&cluster.pki.ca_file(), "datanode2");
    let err = one_line_error(&cluster, &env);
    assert!(
        err.contains(
            "permission denied: registro.v1.Heartbeat/Status needs the client or headnode role"
        ),
        "{err}"
    );
}

/// An expired certificate is named as such before anything is dialled.
#[test]
fn the_client_explains_an_expired_certificate() {
    let cluster = Binaries::start();
    let now = time::OffsetDateTime::now_utc();
    cluster.pki.issue_for(
        Role::Client,
        "old",
        Validity {
            not_before: now - Duration::from_secs(7200),
            not_after: now - Duration::from_secs(3600),
        },
    );
    let env = cluster.pki.env(&cluster.pki.ca_file(), "old");
    let err = one_line_error(&cluster, &env);
    assert!(err.contains("has expired"), "{err}");
}
