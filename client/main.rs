//! `client`: sends messages to a registro cluster and inspects it; see `client --help`.

mod bench;
mod health;
mod list;
mod repair;
mod send;
mod status;
mod tls;

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use registro::config::parse_duration;
use tonic::transport::Channel;

/// The registro client: send messages, read them back, and look at the cluster.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The server to talk to: the headnode, or a datanode directly. Without a scheme, https://
    /// when --tls-* are given, http:// otherwise. Several headnodes, comma-separated: send, list
    /// and status go to the first and fail over to the next when one is unavailable (send keeps
    /// each message's request id); bench spreads its connections over all; health checks the
    /// first.
    #[arg(
        long,
        global = true,
        env = "REGISTRO_ADDR",
        value_delimiter = ',',
        default_value = "127.0.0.1:5000"
    )]
    addr: Vec<String>,
    /// How long to wait for a connection and for each reply.
    #[arg(long, global = true, env = "REGISTRO_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    tls: registro::tls::TlsArgs,
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
    /// Copy every message held by fewer than --replicas healthy datanodes onto the next ones of
    /// its placement order, with a progress bar; prints scanned / under-replicated / copied /
    /// failed. Exit 0 when nothing failed, 5 when some copies failed (run it again), 1 when the
    /// repair could not run (fewer healthy datanodes than --replicas: UNAVAILABLE; another repair
    /// running on that headnode: ABORTED) or broke off.
    Repair(repair::Args),
    /// Make the cluster's certificates for mutual TLS: a CA, then one certificate per process.
    #[command(subcommand)]
    Tls(tls::Command),
}

/// The TLS material of this run (`--tls-*`), loaded once at start.
static TLS: std::sync::OnceLock<Option<registro::tls::Tls>> = std::sync::OnceLock::new();

fn tls() -> Option<&'static registro::tls::Tls> {
    TLS.get().and_then(Option::as_ref)
}

/// Connects to `addr` now, so a dead server is one clear error instead of one per request.
async fn connect(addr: &str, timeout: Duration) -> anyhow::Result<Channel> {
    registro::config::dial(addr, timeout, tls())?
        .timeout(timeout)
        .connect()
        .await
        .with_context(|| format!("cannot connect to {addr}"))
}

/// A channel to `addr` that connects on first use (and again after a failure).
fn lazy(addr: &str, timeout: Duration) -> anyhow::Result<Channel> {
    Ok(registro::config::dial(addr, timeout, tls())?
        .timeout(timeout)
        .connect_lazy())
}

/// Runs `call` against the first of `addrs` that answers it: an address that cannot be reached,
/// answers UNAVAILABLE or breaks the connection is skipped for the next; any other answer
/// (success or error) is the result. The error, when every address failed, names each.
async fn first_answer<T, F, Fut>(
    addrs: &[String],
    timeout: Duration,
    mut call: F,
) -> anyhow::Result<T>
where
    F: FnMut(Channel) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut failures = Vec::new();
    for addr in addrs {
        let channel = match connect(addr, timeout).await {
            Ok(c) => c,
            Err(e) => {
                failures.push(describe(&e));
                continue;
            }
        };
        match call(channel).await {
            Ok(v) => return Ok(v),
            Err(status)
                if status.code() == tonic::Code::Unavailable
                    || registro::retry::is_broken_connection(&status) =>
            {
                if addrs.len() > 1 {
                    eprintln!(
                        "{addr}: {}; trying the next address",
                        describe_status(&status)
                    );
                }
                failures.push(format!("{addr}: {}", describe_status(&status)));
            }
            Err(status) => return Err(status.into()),
        }
    }
    anyhow::bail!("{}", failures.join("; "))
}

/// The one line printed for a failed command: the usual TLS mistakes in a sentence
/// ([`registro::tls::explain`]), anything else as the whole error chain.
fn describe(error: &anyhow::Error) -> String {
    match registro::tls::explain(error.as_ref(), tls().is_some()) {
        // A Status's own rendering is a debugging dump; the context (which address) is not.
        Some(sentence) if error.downcast_ref::<tonic::Status>().is_some() => sentence,
        Some(sentence) => format!("{sentence} ({})", registro::one_line(&format!("{error}"))),
        None => registro::one_line(&format!("{error:#}")),
    }
}

/// The same for one failed call.
fn describe_status(status: &tonic::Status) -> String {
    match registro::tls::explain(status, tls().is_some()) {
        Some(sentence) => sentence,
        None => format!(
            "{:?}: {}",
            status.code(),
            registro::one_line(status.message())
        ),
    }
}

#[tokio::main]
async fn main() {
    let mut args = Args::parse();
    registro::config::init_tracing();
    args.addr.retain(|a| !a.trim().is_empty());
    if args.addr.is_empty() {
        eprintln!("error: --addr names no server");
        std::process::exit(1);
    }
    let code = match args.command {
        Command::Tls(t) => tls::run(t).unwrap_or_else(|e| {
            eprintln!("error: {e:#}");
            1
        }),
        command => match args.tls.load() {
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
            Ok(tls) => {
                let _ = TLS.set(tls);
                run(&args.addr, args.timeout, command).await
            }
        },
    };
    std::process::exit(code);
}

async fn run(addr: &[String], timeout: Duration, command: Command) -> i32 {
    let result = match command {
        // A health check is of one server: the first address.
        Command::Health(h) => {
            return health::run(addr.first().map_or("", String::as_str), timeout, h).await;
        }
        Command::Send(s) => send::run(addr, timeout, s).await,
        Command::Status => status::run(addr, timeout).await,
        Command::List(l) => list::run(addr, timeout, l).await,
        Command::Bench(b) => bench::run(addr, timeout, b).await,
        Command::Repair(r) => repair::run(addr, timeout, r).await,
        Command::Tls(_) => unreachable!("handled in main"),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            1
        }
    }
}
