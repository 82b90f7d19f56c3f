//! `client status`: the headnode's view of every datanode, as a table.

use std::time::Duration;

use registro::pb::heartbeat_client::HeartbeatClient;
use registro::pb::{DatanodeStatus, StatusRequest};

pub async fn run(addrs: &[String], timeout: Duration) -> anyhow::Result<i32> {
    let reply = crate::first_answer(addrs, timeout, |channel| async move {
        HeartbeatClient::new(channel)
            .status(StatusRequest {})
            .await
            .map(tonic::Response::into_inner)
    })
    .await?;
    print!("{}", table(&reply.datanodes));
    Ok(0)
}

/// Renders the Status reply with aligned columns.
pub fn table(datanodes: &[DatanodeStatus]) -> String {
    let header = [
        "DATANODE",
        "ADDRESS",
        "STATUS",
        "LAST CHECKED",
        "LATENCY",
        "ROUTED",
        "DETAIL",
    ]
    .map(String::from);
    let rows: Vec<[String; 7]> = datanodes
        .iter()
        .map(|d| {
            [
                d.name.clone(),
                d.address.clone(),
                d.status.clone(),
                d.last_checked
                    .as_ref()
                    .and_then(registro::time::from_proto)
                    .map_or_else(|| "-".into(), registro::time::format),
                if d.last_checked.is_some() {
                    format!("{:.2}ms", d.latency_ms)
                } else {
                    "-".into()
                },
                d.routed.to_string(),
                d.detail.clone(),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no datanodes)\n");
    }
    out
}
