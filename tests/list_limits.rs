//! List cannot starve Stores: streams left unread on the headnode hold no forward connection,
//! are bounded in number (RESOURCE_EXHAUSTED beyond `--max-lists`) and end once idle past
//! `--list-idle-timeout`.

mod common;

use std::time::Duration;

use common::*;
use registro::headnode::store::ListLimits;
use registro::pb::store_client::StoreClient;
use registro::pb::{ListRequest, StoredMessage};
use tonic::{Code, Streaming};

/// Messages stored before the Lists: together far more than the flow-control windows and the
/// headnode's buffer hold, so an unread List really stalls.
const STORED: usize = 200;
const MESSAGE_BYTES: usize = 60 * 1024;
const MAX_LISTS: usize = 6;
const IDLE: Duration = Duration::from_secs(8);

/// A List on a connection of its own, with its first message read (so it is surely open).
async fn open_list(url: &str) -> Result<Streaming<StoredMessage>, tonic::Status> {
    let mut client = StoreClient::connect(url.to_string())
        .await
        .unwrap()
        .max_decoding_message_size(4 * 1024 * 1024);
    let mut stream = client
        .list(ListRequest {
            datanode: String::new(),
            limit: 0,
        })
        .await?
        .into_inner();
    stream.message().await?.expect("a first message");
    Ok(stream)
}

/// `MAX_LISTS` Lists opened on the headnode and left unread: one more is RESOURCE_EXHAUSTED at
/// once, honest Stores keep succeeding with every datanode SERVING, and once idle past the
/// timeout the unread streams end with DEADLINE_EXCEEDED, freeing room for a List that is read
/// to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_lists_do_not_starve_stores_are_bounded_and_end_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let mut datanodes = Vec::new();
    for name in ["datanode1", "datanode2"] {
        datanodes.push(datanode_on("127.0.0.1:0", datanode_config(dir.path(), name)).await);
    }
    let mut config = headnode_config(
        dir.path(),
        datanodes.iter().map(|d| d.addr.to_string()).collect(),
    );
    config.lists = ListLimits {
        max_open: MAX_LISTS,
        idle_timeout: IDLE,
    };
    let head = headnode(config).await;
    let url = head.url();
    let all_serving = || async {
        let s = status(&url).await;
        (s.len() == 2 && s.iter().all(|d| d.status == "SERVING")).then_some(())
    };
    eventually("both datanodes SERVING", all_serving).await;

    // Stored by 8 clients at once, so group commit keeps the set-up short.
    let text = "x".repeat(MESSAGE_BYTES);
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (url, text) = (url.clone(), text.clone());
            tokio::spawn(async move {
                let mut client = store_client(&url).await;
                for i in (w..STORED).step_by(8) {
                    client
                        .store(registro::pb::StoreRequest {
                            message: format!("{i} {text}"),
                            request_id: format!("big-{i}"),
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }

    let mut unread = Vec::new();
    for _ in 0..MAX_LISTS {
        unread.push(open_list(&url).await.unwrap());
    }
    let refused = open_list(&url).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("--max-lists"), "{refused:?}");

    for i in 0..50 {
        store(&url, "honest", &format!("honest-{i}")).await.unwrap();
    }
    eventually("both datanodes still SERVING", all_serving).await;

    // Once every unread List has ended, all their room is free again: MAX_LISTS new Lists open
    // together (the ones still unread would take a place each).
    let total = STORED + 50;
    let mut fresh = eventually("room for MAX_LISTS new Lists", || {
        let url = url.clone();
        async move {
            let mut opened = Vec::new();
            for _ in 0..MAX_LISTS {
                match open_list(&url).await {
                    Ok(stream) => opened.push(stream),
                    Err(s) if s.code() == Code::ResourceExhausted => return None,
                    Err(s) => panic!("{s:?}"),
                }
            }
            Some(opened)
        }
    })
    .await;
    let mut whole = fresh.pop().unwrap();
    drop(fresh);
    let mut read = 1;
    while whole.message().await.unwrap().is_some() {
        read += 1;
    }
    assert_eq!(read, total, "a List read to the end has every message");

    for mut stream in unread {
        let mut read = 1;
        let end = loop {
            match stream.message().await {
                Ok(Some(_)) => read += 1,
                Ok(None) => break None,
                Err(s) => break Some(s),
            }
        };
        let end = end.expect("an idle List ends with an error, not as if complete");
        assert_eq!(end.code(), Code::DeadlineExceeded, "{end:?}");
        assert!(end.message().contains("--list-idle-timeout"), "{end:?}");
        assert!(
            read < total,
            "the idle List stopped early ({read} of {total})"
        );
    }
}
