//! `client`: sends messages to a registro cluster and inspects it; see `client --help`.

mod bench;
mod health;
mod list;
mod send;
mod status;

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use registro::config::parse_duration;
use tonic::transport::Channel;

/// The registro client: send messages, read them back, and look at the cluster.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The server to talk to: the headnode, or a datanode directly.
    #[arg(
        long,
        global = true,
        env = "REGISTRO_ADDR",
        default_value = "http://127.0.0.1:5000"
    )]
    addr: String,
    /// How long to wait for a connection and for each reply.
    #[arg(long, global = true, env = "REGISTRO_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send messages: a script's lines in order, or picked at random until `exit` is drawn.
    Send(send::Args),
    /// Show the headnode's view of every datanode.
    Status,
    /// Print stored messages, oldest first.
    List(list::Args),
    /// Check a server's health, as a container health check: exit 0 SERVING, 2 cannot connect, 3 RPC failed, 4 NOT_SERVING.
    Health(health::Args),
    /// Load Store with concurrent requests and report throughput, errors and latency percentiles.
    Bench(bench::Args),
}

/// Connects to `addr` now, so a dead server is one clear error instead of one per request.
async fn connect(addr: &str, timeout: Duration) -> anyhow::Result<Channel> {
    registro::config::endpoint(addr, timeout)
        .with_context(|| format!("invalid address {addr:?}"))?
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    registro::config::init_tracing();
    let code = match args.command {
        Command::Health(h) => health::run(&args.addr, args.timeout, h).await,
        command => {
            let result = match command {
                Command::Send(s) => send::run(&args.addr, args.timeout, s).await,
                Command::Status => status::run(&args.addr, args.timeout).await,
                Command::List(l) => list::run(&args.addr, args.timeout, l).await,
                Command::Bench(b) => bench::run(&args.addr, args.timeout, b).await,
                Command::Health(_) => unreachable!("handled above"),
            };
            match result {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            }
        }
    };
    std::process::exit(code);
}
