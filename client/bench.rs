//! `client bench`: a load generator for `registro.v1.Store/Store`. Keeps `--concurrency` Stores in
//! flight over `--connections` HTTP/2 connections until `--requests` are sent or `--duration` has
//! passed, then reports successes, errors by gRPC code, throughput and latency percentiles.
//! Given several addresses (`--addr A,B`), the connections are spread over them in turn.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use registro::config::parse_duration;
use registro::pb::StoreRequest;
use registro::pb::store_client::StoreClient;
use tonic::transport::Channel;

/// How long a run may last when only `--requests` is given: a count alone never runs forever.
const REQUESTS_TIME_CAP: Duration = Duration::from_secs(300);
/// How long a run lasts when neither `--requests` nor `--duration` is given.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Highest latency the histogram tracks, in microseconds; slower replies are clamped to it.
const MAX_LATENCY_US: u64 = 60_000_000;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Requests in flight at any moment.
    #[arg(long, env = "REGISTRO_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    concurrency: u64,
    /// Stop after this many requests (bounded in time too: by --duration, or 5 minutes).
    #[arg(long, env = "REGISTRO_REQUESTS", value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Stop after this long [default: 10s, or 5m with --requests]; no request starts after it.
    #[arg(long, env = "REGISTRO_DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Message size in bytes (every message is that many `x`).
    #[arg(long, env = "REGISTRO_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=4_000_000))]
    size: u64,
    /// HTTP/2 connections to spread the requests over (one tonic Channel each).
    #[arg(long, env = "REGISTRO_CONNECTIONS", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    connections: u64,
    /// Print one JSON object on stdout instead of the human report.
    #[arg(long, env = "REGISTRO_JSON")]
    json: bool,
    /// No progress bar on stderr (it is also hidden with --json or when stderr is not a terminal).
    #[arg(long, env = "REGISTRO_NO_PROGRESS")]
    no_progress: bool,
}

/// When a run stops: a request count, a deadline, or Ctrl-C, whichever comes first.
struct Limits {
    /// Request slots handed out so far; a worker that takes one past `requests` stops.
    issued: AtomicU64,
    requests: Option<u64>,
    deadline: Instant,
    /// Set by Ctrl-C: finish what is in flight and report.
    interrupted: AtomicBool,
}

impl Limits {
    /// Takes one request slot, or says the run is over.
    fn take(&self) -> bool {
        if self.interrupted.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            return false;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        self.requests.is_none_or(|limit| n < limit)
    }
}

/// What one worker (or, merged, the whole run) saw.
struct Tally {
    /// Latency of every successful Store, in microseconds.
    latency: Histogram<u64>,
    /// Failed Stores by gRPC code.
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latency: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .context("cannot create the latency histogram")?,
            errors: BTreeMap::new(),
        })
    }

    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.latency
            .add(&other.latency)
            .context("cannot merge latency histograms")?;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        Ok(())
    }
}

/// One in-flight slot: sends Stores back to back until the run is over.
async fn worker(
    mut client: StoreClient<Channel>,
    message: Arc<str>,
    limits: Arc<Limits>,
    done: Arc<AtomicU64>,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    while limits.take() {
        // No request_id: the idempotency maps stay out of the measurement.
        let request = StoreRequest {
            message: message.to_string(),
            request_id: String::new(),
        };
        let start = Instant::now();
        match client.store(request).await {
            Ok(_) => {
                let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                tally.latency.saturating_record(us.clamp(1, MAX_LATENCY_US));
            }
            Err(status) => {
                *tally
                    .errors
                    .entry(format!("{:?}", status.code()))
                    .or_default() += 1
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(tally)
}

/// A progress bar on stderr, or a hidden one when it would only get in the way.
fn progress(args: &Args, duration: Duration) -> ProgressBar {
    if args.json || args.no_progress || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let len = match args.requests {
        Some(n) => n,
        None => u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {msg}") {
        bar.set_style(style);
    }
    bar
}

/// The run's figures, printed as a report or as JSON.
struct Report<'a> {
    args: &'a Args,
    addr: &'a str,
    elapsed: Duration,
    tally: Tally,
}

impl Report<'_> {
    fn ok(&self) -> u64 {
        self.tally.latency.len()
    }

    fn failed(&self) -> u64 {
        self.tally.errors.values().sum()
    }

    fn throughput(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at quantile `q` in microseconds; 0 when nothing succeeded.
    fn percentile_us(&self, q: f64) -> u64 {
        if self.ok() == 0 {
            0
        } else {
            self.tally.latency.value_at_quantile(q)
        }
    }

    fn json(&self) -> serde_json::Value {
        let h = &self.tally.latency;
        serde_json::json!({
            "addr": self.addr,
            "concurrency": self.args.concurrency,
            "connections": self.args.connections,
            "size": self.args.size,
            "requests": self.ok() + self.failed(),
            "ok": self.ok(),
            "errors": self.failed(),
            "errors_by_code": self.tally.errors,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "throughput_rps": self.throughput(),
            "latency_us": {
                "p50": self.percentile_us(0.50),
                "p90": self.percentile_us(0.90),
                "p99": self.percentile_us(0.99),
                "max": if self.ok() == 0 { 0 } else { h.max() },
                "mean": if self.ok() == 0 { 0.0 } else { h.mean() },
            },
        })
    }

    fn print_human(&self) {
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "{} Stores of {} bytes to {}, {} in flight over {} connection(s), in {:.2} s",
            self.ok() + self.failed(),
            self.args.size,
            self.addr,
            self.args.concurrency,
            self.args.connections,
            self.elapsed.as_secs_f64()
        );
        println!("  ok          {}", self.ok());
        if self.tally.errors.is_empty() {
            println!("  errors      0");
        }
        for (code, n) in &self.tally.errors {
            println!("  errors      {n} {code}");
        }
        println!("  throughput  {:.0} req/s", self.throughput());
        if self.ok() > 0 {
            println!(
                "  latency     p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                ms(self.percentile_us(0.50)),
                ms(self.percentile_us(0.90)),
                ms(self.percentile_us(0.99)),
                ms(self.tally.latency.max())
            );
        }
    }
}

pub async fn run(addrs: &[String], timeout: Duration, args: Args) -> anyhow::Result<i32> {
    let addr = &addrs.join(",");
    let duration = args.duration.unwrap_or(if args.requests.is_some() {
        REQUESTS_TIME_CAP
    } else {
        DEFAULT_DURATION
    });
    let mut channels = Vec::new();
    // Several addresses: the connections take them in turn.
    for target in addrs
        .iter()
        .cycle()
        .take(usize::try_from(args.connections)?)
    {
        channels.push(crate::connect(target, timeout).await?);
    }
    let size = usize::try_from(args.size).context("--size is too large")?;
    let message: Arc<str> = "x".repeat(size).into();
    let bar = progress(&args, duration);
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let limits = Arc::new(Limits {
        issued: AtomicU64::new(0),
        requests: args.requests,
        deadline: start + duration,
        interrupted: AtomicBool::new(false),
    });

    let mut workers = tokio::task::JoinSet::new();
    let slots = usize::try_from(args.concurrency).context("--concurrency is too large")?;
    for channel in channels.iter().cycle().take(slots) {
        workers.spawn(worker(
            StoreClient::new(channel.clone()),
            message.clone(),
            limits.clone(),
            done.clone(),
        ));
    }
    let interrupt = {
        let limits = limits.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                limits.interrupted.store(true, Ordering::Relaxed);
            }
        })
    };
    let ticker = {
        let (bar, done) = (bar.clone(), done.clone());
        let (by_count, total) = (args.requests.is_some(), duration.as_secs_f64());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let n = done.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64();
                let rate = n as f64 / secs.max(1e-9);
                if by_count {
                    bar.set_position(n);
                    bar.set_message(format!("{n} requests, {secs:.1} s, {rate:.0} req/s"));
                } else {
                    bar.set_position(u64::try_from(start.elapsed().as_millis()).unwrap_or(0));
                    bar.set_message(format!(
                        "{secs:.1}/{total:.0} s, {n} requests, {rate:.0} req/s"
                    ));
                }
            }
        })
    };

    let mut tally = Tally::new()?;
    while let Some(joined) = workers.join_next().await {
        tally.merge(joined.context("a bench worker panicked")??)?;
    }
    let elapsed = start.elapsed();
    ticker.abort();
    interrupt.abort();
    bar.finish_and_clear();

    let report = Report {
        args: &args,
        addr,
        elapsed,
        tally,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        report.print_human();
    }
    Ok(0)
}
