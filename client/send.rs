//! `client send`: the exercise's client. Sends a script's lines in order (or picks them at random
//! until it draws `exit`), prints each receipt and writes it to the client log.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use rand::seq::IndexedRandom;
use registro::logfile::LogFile;
use registro::one_line;
use registro::pb::StoreRequest;
use registro::pb::store_client::StoreClient;
use registro::retry::Retry;
use tonic::transport::Channel;

/// The exercise's own messages, in its order, used when no script is given.
const BUILT_IN: &[&str] = &[
    "Hola",
    "Sistemas",
    "Mensaje de prueba",
    "Funciona!",
    "Saludos",
    "Distribuidos",
    "Bienvenido",
    "Mensaje hacia el servidor",
    "Mensaje de prueba",
    "Enviado",
    "Adiós",
    "INF343",
    "Sockets",
    "Enviando mensaje al headnode",
    "Funciona?",
    "exit",
];

/// The word that ends a session, as in the exercise.
const EXIT: &str = "exit";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A text file with one message per line [default: a built-in list of the exercise's messages].
    #[arg(long, env = "REGISTRO_SCRIPT")]
    script: Option<PathBuf>,
    /// Pick lines at random until `exit` is drawn, instead of sending them in order.
    #[arg(long, env = "REGISTRO_RANDOM")]
    random: bool,
    /// Send at most this many messages (a script is repeated to reach it).
    #[arg(long, env = "REGISTRO_COUNT")]
    count: Option<usize>,
    /// The client log: one line per reply.
    #[arg(long, env = "REGISTRO_LOG", default_value = "client.log")]
    log: PathBuf,
    /// Retries of a Store that got UNAVAILABLE (no datanode could take it right now, or the
    /// server is gone), RESOURCE_EXHAUSTED (the headnode is busy) or a broken connection, with the
    /// same request id: on the next --addr at once, and after every address failed in a row
    /// after 100 ms, 200 ms, 400 ms, … (at most 2 s apart); 0 never retries.
    #[arg(long, env = "REGISTRO_RETRIES", default_value_t = Retry::default().retries)]
    retries: u32,
}

/// The messages to send, in order: the script up to its first `exit`, repeated to `count`; or
/// random picks until `exit` comes up (or `count` is reached).
fn plan(lines: &[String], random: bool, count: Option<usize>) -> Vec<String> {
    let limit = count.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    if random {
        let mut rng = rand::rng();
        while out.len() < limit {
            let Some(line) = lines.choose(&mut rng) else {
                break;
            };
            if line == EXIT {
                break;
            }
            out.push(line.clone());
        }
        return out;
    }
    let script: Vec<&String> = lines.iter().take_while(|l| *l != EXIT).collect();
    if script.is_empty() {
        return out;
    }
    let rounds = if count.is_some() { usize::MAX } else { 1 };
    'outer: for _ in 0..rounds {
        for line in &script {
            if out.len() >= limit {
                break 'outer;
            }
            out.push((*line).clone());
        }
    }
    out
}

fn read_script(args: &Args) -> anyhow::Result<Vec<String>> {
    let lines: Vec<String> = match &args.script {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read script {}", path.display()))?
            .lines()
            .map(str::to_string)
            .collect(),
        None => BUILT_IN.iter().map(|s| s.to_string()).collect(),
    };
    // Empty lines would only be refused by the server.
    Ok(lines.into_iter().filter(|l| !l.is_empty()).collect())
}

/// Connects to the first of `addrs` that accepts a connection (the others connect when a Store
/// fails over to them): one client per address, and the index of the connected one.
async fn clients(
    addrs: &[String],
    timeout: Duration,
) -> anyhow::Result<(Vec<StoreClient<Channel>>, usize)> {
    let mut clients = Vec::with_capacity(addrs.len());
    let mut connected = None;
    let mut failures = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let channel = if connected.is_none() {
            match crate::connect(addr, timeout).await {
                Ok(c) => {
                    connected = Some(i);
                    c
                }
                Err(e) => {
                    failures.push(format!("{e:#}"));
                    crate::lazy(addr, timeout)?
                }
            }
        } else {
            crate::lazy(addr, timeout)?
        };
        clients.push(StoreClient::new(channel));
    }
    match connected {
        Some(i) => Ok((clients, i)),
        None => anyhow::bail!("{}", failures.join("; ")),
    }
}

pub async fn run(addrs: &[String], timeout: Duration, args: Args) -> anyhow::Result<i32> {
    let messages = plan(&read_script(&args)?, args.random, args.count);
    let log = LogFile::open(&args.log)
        .with_context(|| format!("cannot open client log {}", args.log.display()))?;
    let (mut clients, mut current) = clients(addrs, timeout).await?;
    let (mut stored, mut failed) = (0usize, 0usize);
    let policy = Retry {
        retries: args.retries,
        ..Retry::default()
    };
    let on_retry = |status: &tonic::Status, wait: Duration, next: usize| {
        let whom = if addrs.len() > 1 {
            format!(" on {}", addrs[next])
        } else {
            String::new()
        };
        eprintln!(
            "{:?}: {}; retrying{whom} in {} with the same request id",
            status.code(),
            one_line(status.message()),
            humantime::format_duration(wait)
        );
    };
    for message in messages {
        let request = StoreRequest {
            message,
            request_id: registro::uuid_v7(),
        };
        match registro::retry::store_failover(&mut clients, &mut current, request, policy, on_retry)
            .await
        {
            Ok(reply) => {
                let receipt = reply.receipt;
                println!("{receipt}");
                log.append(format!("{} {receipt}", registro::time::now()))
                    .await;
                stored += 1;
            }
            Err(status) => {
                let message = one_line(status.message());
                eprintln!("error: {}", crate::describe_status(&status));
                log.append(format!(
                    "{} ERROR {:?} {message}",
                    registro::time::now(),
                    status.code()
                ))
                .await;
                failed += 1;
            }
        }
    }
    log.sync().await.context("cannot write the client log")?;
    eprintln!(
        "{stored} stored, {failed} failed; log: {}",
        args.log.display()
    );
    Ok(if failed == 0 { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_script_is_sent_in_order_up_to_exit() {
        assert_eq!(
            plan(&lines(&["a", "b", "exit", "c"]), false, None),
            lines(&["a", "b"])
        );
        assert_eq!(
            plan(&lines(&["a", "b"]), false, Some(5)),
            lines(&["a", "b", "a", "b", "a"])
        );
        assert!(plan(&lines(&["exit"]), false, Some(3)).is_empty());
    }

    #[test]
    fn the_built_in_list_is_the_exercises_in_its_order() {
        let built_in = lines(BUILT_IN);
        assert_eq!(
            plan(&built_in, false, None),
            lines(&[
                "Hola",
                "Sistemas",
                "Mensaje de prueba",
                "Funciona!",
                "Saludos",
                "Distribuidos",
                "Bienvenido",
                "Mensaje hacia el servidor",
                "Mensaje de prueba",
                "Enviado",
                "Adiós",
                "INF343",
                "Sockets",
                "Enviando mensaje al headnode",
                "Funciona?",
            ])
        );
        assert_eq!(BUILT_IN.last(), Some(&EXIT));
        for _ in 0..20 {
            let picked = plan(&built_in, true, None);
            assert!(
                picked
                    .iter()
                    .all(|m| m != EXIT && BUILT_IN.contains(&m.as_str()))
            );
        }
    }

    #[test]
    fn random_picks_stop_at_exit_or_count() {
        let picked = plan(&lines(&["a", "b", "exit"]), true, None);
        assert!(picked.iter().all(|m| m == "a" || m == "b"));
        assert_eq!(
            plan(&lines(&["a"]), true, Some(4)),
            lines(&["a", "a", "a", "a"])
        );
    }
}
