//! The heartbeat: health probes, the heartbeat log, Status, readiness and registration.

mod common;

use std::time::Duration;

use common::*;
use registro::datanode;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The heartbeat log's lines for `name`, split into their five fields.
fn lines_for(cluster_dir: &std::path::Path, name: &str) -> Vec<Vec<String>> {
    std::fs::read_to_string(cluster_dir.join("heartbeat.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.splitn(5, ' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|f| f.get(1).map(String::as_str) == Some(name))
        .collect()
}

async fn health(url: &str, service: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

/// Every heartbeat-log line is `<ts> <datanode> <address> <STATUS> <detail>` with an RFC 3339
/// UTC millisecond time stamp and a latency such as `0.42ms`.
#[tokio::test]
async fn heartbeat_log_lines_follow_the_format() {
    let cluster = Cluster::start(2).await;
    let name = cluster.datanodes[0].addr.to_string();
    let lines = eventually("three probes logged", || async {
        let lines = lines_for(cluster.path(), &name);
        (lines.len() >= 3).then_some(lines)
    })
    .await;
    for fields in lines {
        assert_eq!(fields.len(), 5, "{fields:?}");
        let ts = &fields[0];
        assert!(
            registro::time::parse(ts).is_some() && ts.ends_with('Z') && ts.len() == 24,
            "{ts}"
        );
        assert_eq!(fields[2], name, "address");
        assert_eq!(fields[3], "SERVING");
        let ms = fields[4].strip_suffix("ms").expect("latency in ms");
        assert!(
            ms.parse::<f64>().is_ok_and(|v| v >= 0.0)
                && ms.split('.').nth(1).map(str::len) == Some(2),
            "{ms}"
        );
    }
}

/// A stopped datanode's lines turn UNREACHABLE, and SERVING again when it returns on the same
/// address; Status agrees each time.
#[tokio::test]
async fn a_stopped_datanode_turns_unreachable_then_serving_again() {
    let mut cluster = Cluster::start(3).await;
    let url = cluster.headnode.url();
    let victim = cluster.datanodes.remove(1);
    let addr = victim.addr.to_string();
    victim.stop().await;

    let wait_for = |word: &'static str| {
        let (dir, addr, url) = (cluster.path().to_path_buf(), addr.clone(), url.clone());
        async move {
            eventually(
                &format!("{addr} {word} in the log and in Status"),
                || async {
                    let logged = lines_for(&dir, &addr).last().is_some_and(|f| f[3] == word);
                    let status = status(&url).await;
                    let reported = status.iter().any(|d| d.name == addr && d.status == word);
                    (logged && reported).then_some(())
                },
            )
            .await
        }
    };
    wait_for("UNREACHABLE").await;
    let last = lines_for(cluster.path(), &addr).pop().unwrap();
    // The error is the detail: the refused probe's, or the broken health Watch stream's,
    // whichever the headnode logged last; never a latency.
    let detail = &last[4];
    assert!(
        ["refused", "Unavailable", "stream broke"]
            .iter()
            .any(|e| detail.contains(e)),
        "the error is the detail: {last:?}"
    );

    let _back = datanode_on(&addr, datanode_config(cluster.path(), "datanode2")).await;
    wait_for("SERVING").await;
}

/// The headnode reports `registro.v1.Store` NOT_SERVING while no datanode is healthy and
/// SERVING once one is, while `""` (liveness) stays SERVING throughout.
#[tokio::test]
async fn headnode_readiness_follows_the_datanodes() {
    let dir = tempfile::tempdir().unwrap();
    let head = headnode(headnode_config(dir.path(), vec![])).await;
    let url = head.url();
    assert_eq!(health(&url, "").await, ServingStatus::Serving);
    assert_eq!(
        health(&url, registro::STORE_SERVICE).await,
        ServingStatus::NotServing
    );
    assert_eq!(
        health(&url, registro::HEARTBEAT_SERVICE).await,
        ServingStatus::Serving
    );

    let mut config = datanode_config(dir.path(), "d1");
    config.headnode = Some(url.clone());
    let node = datanode_on("127.0.0.1:0", config).await;
    eventually("Store SERVING", || async {
        (health(&url, registro::STORE_SERVICE).await == ServingStatus::Serving).then_some(())
    })
    .await;

    node.stop().await;
    eventually("Store NOT_SERVING again", || async {
        (health(&url, registro::STORE_SERVICE).await == ServingStatus::NotServing).then_some(())
    })
    .await;
    assert_eq!(health(&url, "").await, ServingStatus::Serving);
}

/// A datanode started with a headnode address registers under its own name and takes traffic;
/// after the headnode restarts with an empty pool, the datanode is back without a restart.
#[tokio::test]
async fn datanodes_register_and_come_back_after_a_headnode_restart() {
    let dir = tempfile::tempdir().unwrap();
    let head = headnode(headnode_config(dir.path(), vec![])).await;
    let head_addr = head.addr.to_string();
    let mut config = datanode_config(dir.path(), "datanode7");
    config.headnode = Some(head.url());
    let _node = datanode_on("127.0.0.1:0", config).await;
    eventually("datanode7 SERVING", || async {
        status(&head.url())
            .await
            .iter()
            .any(|d| d.name == "datanode7" && d.status == "SERVING" && d.registered)
            .then_some(())
    })
    .await;
    wait_ready(&head.url()).await;
    assert_eq!(
        store(&head.url(), "hi", "").await.unwrap().datanode,
        "datanode7"
    );

    head.stop().await;
    let again = headnode_on(&head_addr, headnode_config(dir.path(), vec![])).await;
    // The datanode re-registers every heartbeat interval it was told: 100 ms here.
    eventually(
        "datanode7 back in the restarted headnode's pool",
        || async {
            status(&again.url())
                .await
                .iter()
                .any(|d| d.name == "datanode7" && d.status == "SERVING")
                .then_some(())
        },
    )
    .await;
    wait_ready(&again.url()).await;
    assert_eq!(
        store(&again.url(), "again", "").await.unwrap().datanode,
        "datanode7"
    );
}

/// The datanode's own health: SERVING for "" and for the Store service.
#[tokio::test]
async fn a_datanode_serves_the_health_protocol() {
    let dir = tempfile::tempdir().unwrap();
    let node = datanode_on(
        "127.0.0.1:0",
        datanode::Config::new("d", dir.path().join("d")),
    )
    .await;
    assert_eq!(health(&node.url(), "").await, ServingStatus::Serving);
    assert_eq!(
        health(&node.url(), registro::STORE_SERVICE).await,
        ServingStatus::Serving
    );
}

/// A server that answers health checks for `registro.v1.Store` but does not offer
/// `registro.v1.Datanode` (a datanode of an older version, or any other Store server) is never
/// routed to: its probes say why, and the headnode stays not ready.
#[tokio::test]
async fn a_server_without_the_datanode_service_gets_no_traffic() {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(
            registro::STORE_SERVICE,
            tonic_health::ServingStatus::Serving,
        )
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let dir = tempfile::tempdir().unwrap();
    let head = headnode(headnode_config(dir.path(), vec![addr.clone()])).await;
    let probes = eventually("two probes of the old server logged", || async {
        let lines = lines_for(dir.path(), &addr);
        (lines.len() >= 2).then_some(lines)
    })
    .await;
    for fields in &probes {
        assert_eq!(fields[3], "UNREACHABLE", "{fields:?}");
        assert!(
            fields[4].contains("does not serve registro.v1.Datanode"),
            "{fields:?}"
        );
    }
    assert_eq!(
        health(&head.url(), registro::STORE_SERVICE).await,
        ServingStatus::NotServing
    );
    let refused = store(&head.url(), "hola", "").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    server.abort();
}

/// While no datanode is SERVING the headnode probes sooner than its interval, on a back-off that
/// doubles up to the interval: a datanode that comes up is found quickly, and one that stays
/// down costs a handful of extra probes, never a busy loop.
#[tokio::test]
async fn with_no_datanode_serving_probes_back_off_up_to_the_interval() {
    let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = gone.local_addr().unwrap().to_string();
    drop(gone);
    let dir = tempfile::tempdir().unwrap();
    let mut config = headnode_config(dir.path(), vec![addr.clone()]);
    config.heartbeat_interval = Duration::from_secs(2);
    let _head = headnode(config).await;
    let lines = eventually("seven probes of the missing datanode", || async {
        let lines = lines_for(dir.path(), &addr);
        (lines.len() >= 7).then_some(lines)
    })
    .await;
    let times: Vec<_> = lines
        .iter()
        .map(|f| registro::time::parse(&f[0]).unwrap())
        .collect();
    let gaps: Vec<i64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds())
        .collect();
    assert!(lines.iter().all(|f| f[3] == "UNREACHABLE"), "{lines:?}");
    assert!(gaps[0] < 500, "the first recheck comes soon: {gaps:?}");
    assert!(
        gaps.windows(2).all(|g| g[1] + 50 >= g[0]),
        "the gaps never shrink: {gaps:?}"
    );
    assert!(
        gaps[5] >= 1900,
        "the back-off reaches the 2 s interval: {gaps:?}"
    );
}
