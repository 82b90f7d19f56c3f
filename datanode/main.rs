//! `datanode`: stores messages durably; see `datanode --help`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use registro::datanode::{self, data_file::Fsync};

/// A registro datanode: appends every message to `<data-dir>/messages.jsonl`, synced before it
/// replies, and serves registro.v1.Store, the gRPC health protocol and reflection.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "REGISTRO_LISTEN", default_value = "0.0.0.0:6000")]
    listen: String,
    /// Name in receipts and in the headnode's pool [default: the host name].
    #[arg(long, env = "REGISTRO_NAME")]
    name: Option<String>,
    /// Folder of the data file messages.jsonl (created if missing); `{name}` in it is replaced by the datanode's name.
    #[arg(long, env = "REGISTRO_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Headnodes to register with, comma-separated, e.g. http://headnode:5000; a host name means
    /// every address it resolves to, resolved again every heartbeat (Swarm's tasks.headnode, a
    /// Kubernetes headless Service); without it, no registration.
    #[arg(long, env = "REGISTRO_HEADNODE")]
    headnode: Option<String>,
    /// host:port the headnode should dial [default: the listen address, or host name:port when listening on 0.0.0.0].
    #[arg(long, env = "REGISTRO_ADVERTISE")]
    advertise: Option<String>,
    /// always: reply only after the record is synced to disk (group commit); never: faster, and a machine crash can lose replies already sent.
    #[arg(long, env = "REGISTRO_FSYNC", value_enum, default_value = "always")]
    fsync: Fsync,
    /// List streams open at once; one more is answered RESOURCE_EXHAUSTED.
    #[arg(long, env = "REGISTRO_MAX_LISTS", default_value_t = datanode::store::DEFAULT_MAX_LISTS)]
    max_lists: usize,
    /// A List stream whose reader takes no message for this long ends with DEADLINE_EXCEEDED.
    #[arg(long, env = "REGISTRO_LIST_IDLE_TIMEOUT", default_value = "30s", value_parser = registro::config::parse_duration)]
    list_idle_timeout: std::time::Duration,
    /// Serve Prometheus metrics (GET /metrics) over HTTP on this address, e.g. 0.0.0.0:9600
    /// [default: off].
    #[arg(long, env = "REGISTRO_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Threads that run the datanode's gRPC work (the data file has a writer thread of its own
    /// besides). 1 runs it on one thread (tokio's current-thread scheduler: no hand-offs between
    /// threads, the most Stores/s on a 2-core machine shared with other nodes: see
    /// BENCHMARKS.md); N > 1 uses the multi-thread scheduler with N workers, 0 one worker per
    /// CPU, for a datanode with cores of its own.
    #[arg(long, env = "REGISTRO_WORKER_THREADS", default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1024))]
    worker_threads: usize,
    #[command(flatten)]
    common: registro::server::CommonArgs,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    registro::config::runtime(args.worker_threads)?.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    registro::config::init_tracing();
    let name = match args.name {
        Some(n) if !n.trim().is_empty() => n,
        _ => registro::config::host_name()
            .context("no --name given and the host name cannot be read")?,
    };
    let tls = args.common.tls.load()?;
    let listener = registro::server::bind(&args.listen).await?;
    let health_listener =
        registro::server::bind_health(args.common.health_listen.as_deref()).await?;
    let config = datanode::Config {
        data_dir: PathBuf::from(args.data_dir.to_string_lossy().replace("{name}", &name)),
        name,
        fsync: args.fsync,
        headnode: args.headnode,
        advertise: args.advertise,
        max_message_bytes: args.common.max_message_bytes,
        dedupe: args.common.dedupe_limits(),
        limits: args.common.limits.limits(),
        shutdown_grace: args.common.shutdown_grace,
        max_lists: args.max_lists,
        list_idle_timeout: args.list_idle_timeout,
        tls,
        health_listener,
        metrics_listen: args.metrics_listen.filter(|a| !a.trim().is_empty()),
    };
    let grace = config.shutdown_grace;
    registro::server::run_until_signal(
        |shutdown| datanode::serve(listener, config, shutdown.wait()),
        grace,
    )
    .await?;
    Ok(())
}
