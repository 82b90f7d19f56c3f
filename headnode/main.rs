//! `headnode`: the cluster's front door; see `headnode --help`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use registro::config::parse_duration;
use registro::headnode::{self, DEFAULT_DATANODE_CONNECTIONS, store};

/// The registro headnode: forwards each Store to the healthy datanode its request id is placed on
/// (the same on every headnode), probes every datanode with the gRPC health protocol, and writes
/// the registro and heartbeat logs.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "REGISTRO_LISTEN", default_value = "0.0.0.0:5000")]
    listen: String,
    /// Datanodes known from the start, comma-separated host:port; others join by registering.
    #[arg(long, env = "REGISTRO_DATANODES", value_delimiter = ',')]
    datanodes: Vec<String>,
    /// Datanodes that hold each message: a Store goes to the first this many healthy datanodes of
    /// its placement order in parallel and is acknowledged once all of them have it durably.
    #[arg(long, env = "REGISTRO_REPLICAS", default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16))]
    replicas: usize,
    /// How often every datanode is probed (sooner, backing off from 100 ms, while none is SERVING).
    #[arg(long, env = "REGISTRO_HEARTBEAT_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    heartbeat_interval: Duration,
    /// How long a probe may take before the datanode counts as UNREACHABLE.
    #[arg(long, env = "REGISTRO_HEARTBEAT_TIMEOUT", default_value = "500ms", value_parser = parse_duration)]
    heartbeat_timeout: Duration,
    /// The heartbeat log: one line per datanode per probe round.
    #[arg(long, env = "REGISTRO_HEARTBEAT_LOG", default_value = "heartbeat.log")]
    heartbeat_log: PathBuf,
    /// The registro log: one line per stored message.
    #[arg(long, env = "REGISTRO_REGISTRO_LOG", default_value = "registro.log")]
    registro_log: PathBuf,
    /// How long one forward call to a datanode may take, from when it is sent, before the
    /// datanode is marked down and its messages go to another (time queued in the headnode
    /// before the call does not count: that is load, not the datanode's failure).
    #[arg(long, env = "REGISTRO_FORWARD_TIMEOUT", default_value = "500ms", value_parser = parse_duration)]
    forward_timeout: Duration,
    /// List streams open at once; more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "REGISTRO_MAX_LISTS", default_value_t = store::DEFAULT_MAX_LISTS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_lists: usize,
    /// A List stream whose reader takes nothing (or whose datanodes send nothing) for this long
    /// ends with DEADLINE_EXCEEDED.
    #[arg(long, env = "REGISTRO_LIST_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    list_idle_timeout: Duration,
    /// Ids one pass of `Repair` keeps in memory at most (about 60 bytes each at worst); a cluster
    /// with more messages is repaired in several passes, each reading every datanode again.
    #[arg(long, env = "REGISTRO_REPAIR_IDS_PER_PASS", default_value_t = headnode::repair::DEFAULT_IDS_PER_PASS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(headnode::repair::MIN_IDS_PER_PASS as u64..))]
    repair_ids_per_pass: usize,
    /// HTTP/2 connections opened to each datanode for forwards, each carrying one batch of
    /// Stores at a time (probes use one more).
    #[arg(long, env = "REGISTRO_DATANODE_CONNECTIONS", default_value_t = DEFAULT_DATANODE_CONNECTIONS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    datanode_connections: usize,
    /// Threads that run the headnode's work. 1 runs everything on one thread (tokio's
    /// current-thread scheduler: no hand-offs between threads, the least CPU per Store, the most
    /// Stores/s on a 2-core machine shared with datanodes: see BENCHMARKS.md); N > 1 uses the
    /// multi-thread scheduler with N workers, 0 one worker per CPU. More than 1 helps only with
    /// cores to spare (one thread forwards about 30 000 Stores/s, see BENCHMARKS.md).
    #[arg(long, env = "REGISTRO_WORKER_THREADS", default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1024))]
    worker_threads: usize,
    /// Serve Prometheus metrics (GET /metrics) and the status page (GET /) over HTTP on this
    /// address, e.g. 0.0.0.0:9500 [default: off].
    #[arg(long, env = "REGISTRO_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    #[command(flatten)]
    common: registro::server::CommonArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    registro::config::runtime(args.worker_threads)?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    registro::config::init_tracing();
    let tls = args.common.tls.load()?;
    let listener = registro::server::bind(&args.listen).await?;
    let health_listener =
        registro::server::bind_health(args.common.health_listen.as_deref()).await?;
    let config = headnode::Config {
        datanodes: args
            .datanodes
            .into_iter()
            .filter(|d| !d.trim().is_empty())
            .collect(),
        replicas: args.replicas,
        heartbeat_interval: args.heartbeat_interval,
        heartbeat_timeout: args.heartbeat_timeout,
        heartbeat_log: args.heartbeat_log,
        registro_log: args.registro_log,
        forward_timeout: args.forward_timeout,
        datanode_connections: args.datanode_connections,
        max_message_bytes: args.common.max_message_bytes,
        dedupe: args.common.dedupe_limits(),
        limits: args.common.limits.limits(),
        lists: store::ListLimits {
            max_open: args.max_lists,
            idle_timeout: args.list_idle_timeout,
        },
        repair_ids_per_pass: args.repair_ids_per_pass,
        shutdown_grace: args.common.shutdown_grace,
        tls,
        health_listener,
        metrics_listen: args.metrics_listen.filter(|a| !a.trim().is_empty()),
    };
    let grace = config.shutdown_grace;
    registro::server::run_until_signal(
        |shutdown| headnode::serve(listener, config, shutdown.wait()),
        grace,
    )
    .await?;
    Ok(())
}
