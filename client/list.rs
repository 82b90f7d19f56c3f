//! `client list`: stored messages, oldest first, one per line:
//! `<stored_at> <id> <datanode> <message as a JSON string>`.

use std::time::Duration;

use registro::pb::ListRequest;
use registro::pb::store_client::StoreClient;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only this datanode's messages.
    #[arg(long, env = "REGISTRO_DATANODE", default_value = "")]
    datanode: String,
    /// At most this many messages (0: all).
    #[arg(long, env = "REGISTRO_LIMIT", default_value_t = 0)]
    limit: u32,
}

/// Opens the List on the first address that answers; once messages flow, a broken stream is an
/// error (going on elsewhere would print some messages twice).
pub async fn run(addrs: &[String], timeout: Duration, args: Args) -> anyhow::Result<i32> {
    let request = ListRequest {
        datanode: args.datanode,
        limit: args.limit,
    };
    let mut stream = crate::first_answer(addrs, timeout, |channel| {
        let request = request.clone();
        async move {
            StoreClient::new(channel)
                .list(request)
                .await
                .map(tonic::Response::into_inner)
        }
    })
    .await?;
    while let Some(m) = stream.message().await? {
        let stored_at = m
            .stored_at
            .as_ref()
            .and_then(registro::time::from_proto)
            .map_or_else(|| "-".into(), registro::time::format);
        println!(
            "{stored_at} {} {} {}",
            m.id,
            m.datanode,
            serde_json::to_string(&m.message)?
        );
    }
    Ok(0)
}
