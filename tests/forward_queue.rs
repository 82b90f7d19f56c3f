//! The headnode's forward queue, against a datanode whose calls the test holds and releases: a
//! Store whose caller gave up while queued is never sent; a Store already sent is not sent
//! elsewhere because its caller gave up; a full queue answers RESOURCE_EXHAUSTED at once; and
//! none of this marks the datanode down. And every call on a connection gets its own forward
//! timeout, whatever the calls before it did.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use registro::pb::datanode_server::{Datanode, DatanodeServer};
use registro::pb::store_client::StoreClient;
use registro::pb::{StoreBatchReply, StoreBatchRequest, StoreReply, StoreRequest, StoreResult};
use tokio::sync::watch;
use tonic::{Code, Request, Response, Status};

/// A datanode that records every request id it is sent and answers each call only while the
/// test has it open.
#[derive(Clone)]
struct HeldDatanode {
    name: String,
    /// Request ids in the order they arrived, each call's as it arrives.
    received: Arc<Mutex<Vec<String>>>,
    /// Calls wait while this is false.
    open: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl Datanode for HeldDatanode {
    async fn store_batch(
        &self,
        request: Request<StoreBatchRequest>,
    ) -> Result<Response<StoreBatchReply>, Status> {
        let requests = request.into_inner().records;
        self.received
            .lock()
            .unwrap()
            .extend(requests.iter().map(|r| r.request_id.clone()));
        let mut open = self.open.clone();
        let _ = open.wait_for(|open| *open).await;
        let results = requests
            .into_iter()
            .map(|r| StoreResult {
                reply: Some(StoreReply {
                    id: format!("id-{}", r.request_id),
                    datanode: self.name.clone(),
                    receipt: format!("stored {}", r.request_id),
                    ..Default::default()
                }),
                code: 0,
                error: String::new(),
            })
            .collect();
        Ok(Response::new(StoreBatchReply { results }))
    }
}

/// A held datanode serving on any free port, SERVING for the health protocol.
struct Held {
    addr: String,
    received: Arc<Mutex<Vec<String>>>,
    open: watch::Sender<bool>,
}

impl Held {
    async fn start(name: &str) -> Self {
        let (open, open_rx) = watch::channel(false);
        let received = Arc::new(Mutex::new(Vec::new()));
        let service = HeldDatanode {
            name: name.into(),
            received: received.clone(),
            open: open_rx,
        };
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<DatanodeServer<HeldDatanode>>().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .add_service(DatanodeServer::new(service))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        Self {
            addr,
            received,
            open,
        }
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }

    async fn wait_received(&self, request_id: &str) {
        eventually(&format!("{request_id} sent to {}", self.addr), || async {
            self.received()
                .iter()
                .any(|r| r == request_id)
                .then_some(())
        })
        .await;
    }
}

/// A headnode forwarding to `datanodes`, with a forward timeout long enough that only the test
/// decides when a call ends, and no probe round after the first to put a datanode back.
async fn headnode_for(dir: &std::path::Path, datanodes: &[&Held], max_message: usize) -> Node {
    let mut config = headnode_config(dir, datanodes.iter().map(|d| d.addr.clone()).collect());
    config.forward_timeout = Duration::from_secs(30);
    config.heartbeat_interval = Duration::from_secs(3600);
    config.max_message_bytes = max_message;
    let head = headnode(config).await;
    wait_serving_at(&head.url(), datanodes.len()).await;
    head
}

/// A Store with a deadline of its own (`grpc-timeout`).
async fn store_within(
    url: &str,
    message: &str,
    request_id: &str,
    timeout: Duration,
) -> Result<StoreReply, Status> {
    let mut request = Request::new(StoreRequest {
        message: message.into(),
        request_id: request_id.into(),
    });
    request.set_timeout(timeout);
    StoreClient::connect(url.to_string())
        .await
        .unwrap()
        .max_encoding_message_size(8 * 1024 * 1024)
        .store(request)
        .await
        .map(Response::into_inner)
}

async fn all_serving(url: &str) -> bool {
    status(url).await.iter().all(|d| d.status == "SERVING")
}

/// A Store whose caller's deadline passes while it waits in the queue (behind a call the
/// datanode has not answered) is never sent, and the datanode is not marked down; the same
/// request id later stores normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_whose_caller_gave_up_while_queued_is_never_sent() {
    let dir = tempfile::tempdir().unwrap();
    let datanode = Held::start("held").await;
    let head = headnode_for(dir.path(), &[&datanode], 64 * 1024).await;
    let url = head.url();

    let first = tokio::spawn({
        let url = url.clone();
        async move { store(&url, "first", "first").await }
    });
    datanode.wait_received("first").await;
    let err = store_within(&url, "impatient", "impatient", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{err:?}"
    );
    // Its deadline has passed in the headnode too; the datanode now answers, and the next call
    // carries what is still wanted.
    datanode.open.send_replace(true);
    first.await.unwrap().unwrap();
    store(&url, "later", "later").await.unwrap();
    assert_eq!(datanode.received(), ["first", "later"]);
    assert!(all_serving(&url).await, "{:?}", status(&url).await);

    let reply = store(&url, "impatient", "impatient").await.unwrap();
    assert_eq!(reply.id, "id-impatient");
    assert_eq!(datanode.received(), ["first", "later", "impatient"]);
}

/// A Store already sent when its caller gives up is not sent to another datanode: the headnode
/// waits for the call, and the caller's retry with the same request id gets that first reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_already_sent_is_not_sent_elsewhere_when_its_caller_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Held::start("a").await, Held::start("b").await);
    let head = headnode_for(dir.path(), &[&a, &b], 64 * 1024).await;
    let url = head.url();

    let err = store_within(&url, "patience", "patience", Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::Cancelled | Code::DeadlineExceeded),
        "{err:?}"
    );
    eventually("the Store reached a datanode", || async {
        (a.received().len() + b.received().len() == 1).then_some(())
    })
    .await;
    a.open.send_replace(true);
    b.open.send_replace(true);
    let reply = store(&url, "patience", "patience").await.unwrap();
    assert_eq!(reply.id, "id-patience");
    let sent: Vec<String> = a.received().into_iter().chain(b.received()).collect();
    assert_eq!(sent, ["patience"], "sent once, to one datanode");
    assert!(all_serving(&url).await, "{:?}", status(&url).await);
}

/// With the call out and the datanode's queue full (in bytes here: four 1 MiB messages), the
/// next Store is refused with RESOURCE_EXHAUSTED at once, the datanode stays SERVING, and the
/// queued Stores are stored when the datanode answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_forward_queue_answers_resource_exhausted_at_once() {
    const MIB: usize = 1024 * 1024;
    let dir = tempfile::tempdir().unwrap();
    let datanode = Held::start("held").await;
    let head = headnode_for(dir.path(), &[&datanode], 2 * MIB).await;
    let url = head.url();
    let big = |i: usize| format!("{i}{}", "m".repeat(MIB - 16));

    let mut queued = Vec::new();
    let spawn_store = |i: usize| {
        let (url, message) = (url.clone(), big(i));
        tokio::spawn(async move {
            store_within(&url, &message, &format!("big-{i}"), Duration::from_secs(60)).await
        })
    };
    queued.push(spawn_store(0));
    datanode.wait_received("big-0").await;
    for i in 1..=4 {
        queued.push(spawn_store(i));
    }
    // Each try either finds the queue full or, when the four before it have not all arrived
    // yet, waits in it until its own short deadline; either way the queue fills.
    let mut tries = 0;
    let refusal = eventually("a Store refused for a full queue", || {
        tries += 1;
        let (url, message) = (url.clone(), big(100 + tries));
        async move {
            match store_within(
                &url,
                &message,
                &format!("extra-{tries}"),
                Duration::from_millis(500),
            )
            .await
            {
                Err(s) if s.code() == Code::ResourceExhausted => Some(s),
                Err(s) if matches!(s.code(), Code::Cancelled | Code::DeadlineExceeded) => None,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(refusal.message().contains("busy"), "{}", refusal.message());
    assert!(all_serving(&url).await, "{:?}", status(&url).await);

    datanode.open.send_replace(true);
    // The four queued behind the call raced the tries above into the queue: each is stored, or
    // was refused the same way.
    let mut stored = Vec::new();
    for (i, store) in queued.into_iter().enumerate() {
        match store.await.unwrap() {
            Ok(reply) => {
                assert_eq!(reply.id, format!("id-big-{i}"));
                stored.push(format!("big-{i}"));
            }
            Err(s) => assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}"),
        }
    }
    assert_eq!(stored[0], "big-0");
    let mut received = datanode.received();
    received.sort();
    assert_eq!(
        received, stored,
        "exactly the Stores acknowledged were sent, none refused or given up"
    );
}

/// Every call on a forward connection gets the forward timeout from when it is sent, whatever the
/// calls before it did: the connection's one timer is moved later for a call right after an
/// answered one, and set again after it fired. A held call fails over (UNAVAILABLE here, the only
/// datanode being down) within the timeout, not when the datanode answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_on_a_connection_times_out_after_the_calls_before_it() {
    const FORWARD_TIMEOUT: Duration = Duration::from_millis(300);
    let dir = tempfile::tempdir().unwrap();
    let datanode = Held::start("held").await;
    let mut config = headnode_config(dir.path(), vec![datanode.addr.clone()]);
    config.forward_timeout = FORWARD_TIMEOUT;
    let head = headnode(config).await;
    let url = head.url();
    wait_serving_at(&url, 1).await;
    // A held Store that is never timed out would wait for the datanode forever: bound the wait.
    let held_store = |message: &'static str| {
        let url = url.clone();
        async move {
            let sent = tokio::time::Instant::now();
            let answer = tokio::time::timeout(
                Duration::from_secs(20),
                store(&url, message, message),
            )
            .await
            .unwrap_or_else(|_| {
                panic!("{message}: no answer in 20 s, the forward timeout is {FORWARD_TIMEOUT:?}")
            });
            (answer, sent.elapsed())
        }
    };

    datanode.open.send_replace(true);
    store(&url, "answered", "answered").await.unwrap();
    datanode.open.send_replace(false);
    // Right after an answered call: its timer is still set, and moved later for this one.
    let (answer, waited) = held_store("after-an-answer").await;
    let err = answer.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(waited >= FORWARD_TIMEOUT, "answered after {waited:?}");
    println!("a held call after an answered one failed over after {waited:?}");

    eventually("the datanode SERVING again", || async {
        all_serving(&url).await.then_some(())
    })
    .await;
    // The timer fired for the call before: it is set again for this one.
    let (answer, waited) = held_store("after-a-timeout").await;
    let err = answer.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(waited >= FORWARD_TIMEOUT, "answered after {waited:?}");
    println!("a held call after a timed-out one failed over after {waited:?}");

    datanode.open.send_replace(true);
    eventually("the datanode SERVING again", || async {
        all_serving(&url).await.then_some(())
    })
    .await;
    store(&url, "answered-again", "answered-again")
        .await
        .unwrap();
    assert_eq!(
        datanode.received(),
        [
            "answered",
            "after-an-answer",
            "after-a-timeout",
            "answered-again"
        ]
    );
}
