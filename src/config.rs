//! Helpers the command lines share: durations, addresses, datanode names, logging set-up.

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::tls::Tls;

/// Parses `500ms`, `2s`, `1m` (anything `humantime` reads) for clap.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 2s, 1m)"))
}

/// Parses a byte size for clap: `1048576`, `512KiB`, `64MiB`, `1GiB` (also `KB`, `MB`, `GB` as
/// powers of 1000).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 1048576, 512KiB, 64MiB)"))?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB or GiB)"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Adds `http://` to `host:port` so both spellings work wherever a URL is asked for.
pub fn with_scheme(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// A plaintext endpoint for one of our gRPC servers, with the transport settings every role
/// uses; [`dial`] is the same under mutual TLS.
pub fn endpoint(
    addr: &str,
    connect_timeout: Duration,
) -> Result<Endpoint, tonic::transport::Error> {
    Ok(settings(
        Endpoint::from_shared(with_scheme(addr))?,
        connect_timeout,
    ))
}

fn settings(endpoint: Endpoint, connect_timeout: Duration) -> Endpoint {
    endpoint
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(crate::direct::KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(crate::direct::KEEP_ALIVE_TIMEOUT)
}

/// Why an address cannot be dialled.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0} is plaintext (http://) but mutual TLS is configured: write https:// or host:port")]
    PlaintextWithTls(String),
    #[error(
        "{0} is https:// but no --tls-ca/--tls-cert/--tls-key (REGISTRO_TLS_*) is given: write http:// or give them"
    )]
    TlsWithoutCertificates(String),
    #[error("invalid address {0:?}: {1}")]
    Invalid(String, tonic::transport::Error),
}

/// The URL for `addr` (a URL or host:port): `https://` when this process has TLS, `http://`
/// otherwise. A scheme that contradicts the TLS setting is an error rather than a surprise:
/// with certificates configured nothing is ever dialled in plaintext.
pub fn url(addr: &str, tls: bool) -> Result<String, DialError> {
    match (addr.split_once("://").map(|(scheme, _)| scheme), tls) {
        (None, true) => Ok(format!("https://{addr}")),
        (None, false) => Ok(format!("http://{addr}")),
        (Some("http"), true) => Err(DialError::PlaintextWithTls(addr.to_string())),
        (Some("https"), false) => Err(DialError::TlsWithoutCertificates(addr.to_string())),
        _ => Ok(addr.to_string()),
    }
}

/// An endpoint for `addr` with the shared transport settings, dialled with mutual TLS when
/// `tls` is given (the server must present a certificate of the cluster's CA for the host in
/// `addr`).
pub fn dial(
    addr: &str,
    connect_timeout: Duration,
    tls: Option<&Tls>,
) -> Result<Endpoint, DialError> {
    let invalid = |e| DialError::Invalid(addr.to_string(), e);
    let endpoint = settings(
        Endpoint::from_shared(url(addr, tls.is_some())?).map_err(invalid)?,
        connect_timeout,
    );
    match tls {
        Some(tls) => endpoint.tls_config(tls.client_config()).map_err(invalid),
        None => Ok(endpoint),
    }
}

/// A lazily connecting channel to `addr`: creating it never blocks or fails on an absent peer.
pub fn lazy_channel(
    addr: &str,
    connect_timeout: Duration,
    tls: Option<&Tls>,
) -> Result<Channel, DialError> {
    Ok(dial(addr, connect_timeout, tls)?.connect_lazy())
}

/// Checks that `addr` is `host:port` with a non-empty host and a valid port.
pub fn check_host_port(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr:?} is not host:port"))?;
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(format!("{addr:?} has no valid host"));
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{addr:?} has no valid port"))?;
    Ok(())
}

/// The name a statically configured datanode goes by until it registers: the host when it is a
/// host name (`datanode1:6000` → `datanode1`), the whole `host:port` when it is an IP address.
pub fn static_datanode_name(addr: &str) -> String {
    if addr.parse::<SocketAddr>().is_ok() {
        return addr.to_string();
    }
    match addr.rsplit_once(':') {
        Some((host, _)) => host.to_string(),
        None => addr.to_string(),
    }
}

/// This machine's host name (`/proc/sys/kernel/hostname`), or `None` when it cannot be read.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The tokio runtime for `--worker-threads N`: `1` runs everything on the calling thread
/// (tokio's current-thread scheduler: no hand-offs between threads), `N > 1` the multi-thread
/// scheduler with N workers, `0` one worker per CPU. I/O and timers are enabled.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(n);
            builder
        }
    };
    builder.enable_all().build()
}

/// Logging for every binary: `tracing` to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_names_follow_the_spec() {
        assert_eq!(static_datanode_name("datanode1:6000"), "datanode1");
        assert_eq!(static_datanode_name("127.0.0.1:6001"), "127.0.0.1:6001");
        assert_eq!(static_datanode_name("[::1]:6001"), "[::1]:6001");
    }

    #[test]
    fn host_port_checks() {
        assert!(check_host_port("datanode1:6000").is_ok());
        assert!(check_host_port("127.0.0.1:6001").is_ok());
        assert!(check_host_port("nohost").is_err());
        assert!(check_host_port(":6000").is_err());
        assert!(check_host_port("a:99999").is_err());
        assert!(check_host_port("a b:1").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("2MB"), Ok(2_000_000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
    }

    #[test]
    fn the_scheme_follows_the_tls_setting() {
        assert_eq!(url("h:1", true).unwrap(), "https://h:1");
        assert_eq!(url("h:1", false).unwrap(), "http://h:1");
        assert_eq!(url("https://h:1", true).unwrap(), "https://h:1");
        assert!(matches!(
            url("http://h:1", true),
            Err(DialError::PlaintextWithTls(_))
        ));
        assert!(matches!(
            url("https://h:1", false),
            Err(DialError::TlsWithoutCertificates(_))
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
    }
}
