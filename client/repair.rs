//! `client repair`: asks the headnode to copy every under-replicated message onto the next
//! datanodes of its placement order, shows its progress, and prints the final counts. Exit 0
//! when no copy failed, 5 when some did (run it again), 1 when the repair could not run or was
//! cut short.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use registro::pb::heartbeat_client::HeartbeatClient;
use registro::pb::{RepairReply, RepairRequest};

/// The exit code when the repair ran to the end but some copies failed.
pub const SOME_FAILED: i32 = 5;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// No progress bar (it is also left out when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

pub async fn run(addrs: &[String], timeout: Duration, args: Args) -> anyhow::Result<i32> {
    // A repair reads every datanode: the client's --timeout bounds connecting and the start,
    // not the whole repair (the headnode gives up on a datanode that stops sending).
    let mut stream = crate::first_answer(addrs, timeout, |channel| async move {
        HeartbeatClient::new(channel)
            .repair(RepairRequest {})
            .await
            .map(tonic::Response::into_inner)
    })
    .await?;
    let bar = progress_bar(args.no_progress);
    let mut last: Option<RepairReply> = None;
    let ended = loop {
        match stream.message().await {
            Ok(Some(reply)) => {
                show(&bar, &reply);
                let done = reply.done;
                last = Some(reply);
                if done {
                    break Ok(());
                }
            }
            Ok(None) => {
                break Err(anyhow::anyhow!(
                    "the headnode ended the repair without its final counts"
                ));
            }
            Err(status) => break Err(anyhow::Error::from(status)),
        }
    };
    bar.finish_and_clear();
    if let Some(reply) = &last {
        if !reply.skipped.is_empty() {
            println!(
                "not SERVING, left out: {} (repair again once they are back)",
                reply.skipped.join(", ")
            );
        }
        println!("{}", summary(reply));
    }
    ended?;
    Ok(match last {
        Some(r) if r.failed == 0 => 0,
        _ => SOME_FAILED,
    })
}

/// The final counts, one line.
pub fn summary(r: &RepairReply) -> String {
    format!(
        "{}: scanned {} messages on {} datanodes in {} pass{} ({} records read): {} under-replicated, {} copied, {} failed",
        if r.done {
            "repair done"
        } else {
            "repair stopped"
        },
        r.scanned,
        r.datanodes.len(),
        r.passes,
        if r.passes == 1 { "" } else { "es" },
        r.records_read,
        r.under_replicated,
        r.copied,
        r.failed
    )
}

fn progress_bar(hidden: bool) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} steps {msg}") {
        bar.set_style(style);
    }
    bar
}

/// The bar's total is the steps known now (a datanode read in one phase of one pass), which grows
/// when a pass is split; the message says where the repair is.
fn show(bar: &ProgressBar, r: &RepairReply) {
    bar.set_length(r.steps_total.max(1));
    bar.set_position(r.steps_done.min(r.steps_total));
    bar.set_message(format!(
        "pass {}/{} {} {} · {} read · {} under-replicated · {} copied · {} failed",
        r.pass,
        r.passes,
        r.phase,
        r.datanode,
        r.records_read,
        r.under_replicated,
        r.copied,
        r.failed
    ));
}
