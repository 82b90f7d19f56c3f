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

pub async fn run(addr: &str, timeout: Duration, args: Args) -> anyhow::Result<i32> {
    let mut client = StoreClient::new(crate::connect(addr, timeout).await?);
    let mut stream = client
        .list(ListRequest {
            datanode: args.datanode,
            limit: args.limit,
        })
        .await?
        .into_inner();
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
