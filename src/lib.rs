//! registro — a small distributed message store.
//!
//! A client sends text messages over gRPC to the **headnode**, which forwards each one to the
//! first healthy datanode of its request id's placement order (rendezvous hashing: uniform over
//! random ids, the same on every headnode for a repeated one). The **datanode** appends it to its
//! data file, syncs it and answers; only then does the client get its receipt. The headnode
//! probes every datanode with the standard gRPC health protocol and writes a heartbeat log.
//!
//! Where things live:
//!
//! | path | what it owns |
//! |---|---|
//! | `proto/registro.proto` | the wire protocol, compiled by `build.rs` into [`pb`] |
//! | `headnode/` | [`headnode`]: the pool of datanodes, routing and failover, probes, the logs |
//! | `datanode/` | [`datanode`]: the data file with group commit, the Store service, registration |
//! | `client/` | the `client` binary: send, status, list, health, bench |
//! | `src/` | what the roles share: [`config`], [`dedupe`], [`limits`], [`logfile`], [`metrics`], [`retry`], [`server`], [`time`] |
//! | `src/tls.rs`, `src/certs.rs`, `src/auth.rs` | mutual TLS: [`tls`] loads the certificates, [`certs`] makes them, [`auth`] is who may call what |
//!
//! Each role exposes `serve(listener, config, shutdown)` so that tests can start real nodes
//! in-process on `127.0.0.1:0`; the binaries only parse flags, set up logging and call it.

pub mod auth;
pub mod certs;
pub mod config;
pub mod dedupe;
pub mod direct;
pub mod hpack;
pub mod limits;
pub mod logfile;
pub mod metrics;
pub mod retry;
pub mod server;
pub mod time;
pub mod tls;
pub mod unary;

#[path = "../datanode/mod.rs"]
pub mod datanode;
#[path = "../headnode/mod.rs"]
pub mod headnode;

/// The generated protocol: messages, clients and servers of package `registro.v1`.
pub mod pb {
    #![allow(missing_docs)]
    tonic::include_proto!("registro.v1");

    /// The encoded descriptors of `registro.proto`, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("registro_descriptor");
}

/// The gRPC name of the Store service, as health checks and reflection know it.
pub const STORE_SERVICE: &str = "registro.v1.Store";
/// The gRPC name of the Heartbeat service.
pub const HEARTBEAT_SERVICE: &str = "registro.v1.Heartbeat";
/// The gRPC name of the Datanode service (batched Stores from the headnode).
pub const DATANODE_SERVICE: &str = "registro.v1.Datanode";

/// A short, single-line rendering of a message for receipts and log lines meant for people:
/// control characters are escaped so a line never breaks, and long messages are cut.
pub fn preview(message: &str) -> String {
    let mut out = String::with_capacity(preview_bytes(message));
    push_preview(&mut out, message);
    out
}

/// The characters of a message a [`preview`] keeps.
const PREVIEW_CHARS: usize = 40;

/// Room for [`preview`]`(message)` in the usual case (the kept characters and the ellipsis; an
/// escaped control character may need more).
fn preview_bytes(message: &str) -> usize {
    message.len().min(PREVIEW_CHARS * 4) + '…'.len_utf8()
}

/// Appends [`preview`]`(message)` to `out`.
fn push_preview(out: &mut String, message: &str) {
    // The usual message starts with printable ASCII; then its first bytes are the characters
    // kept, as they are, and a byte test (no decoding) tells.
    let head = &message.as_bytes()[..message.len().min(PREVIEW_CHARS)];
    if head
        .iter()
        .fold(true, |plain, &b| plain & (b' '..0x7f).contains(&b))
    {
        // All ASCII, so `head.len()` is a character boundary.
        out.push_str(&message[..head.len()]);
        if message.len() > PREVIEW_CHARS {
            out.push('…');
        }
        return;
    }
    push_preview_by_chars(out, message);
}

/// [`push_preview`] a character at a time, as the rule says: the first [`PREVIEW_CHARS`]
/// characters, control characters escaped, an ellipsis when more follow.
fn push_preview_by_chars(out: &mut String, message: &str) {
    for (i, c) in message.chars().enumerate() {
        if i == PREVIEW_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
}

/// `text` on one line: every run of whitespace (newlines included) becomes one space, for
/// errors printed or logged a line each.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The human sentence of a [`pb::StoreReply`].
pub fn receipt(message: &str, datanode: &str) -> String {
    // Built in one allocation: it is written for every Store.
    let mut out = String::with_capacity(
        preview_bytes(message) + datanode.len() + "Message '' stored on .".len(),
    );
    out.push_str("Message '");
    push_preview(&mut out, message);
    out.push_str("' stored on ");
    out.push_str(datanode);
    out.push('.');
    out
}

/// A fresh UUIDv7 (RFC 9562: the time in milliseconds, then 74 random bits), as text: the id
/// of a message stored without a request id. The random bits come from the thread's CSPRNG
/// (seeded from the OS), not from `Uuid::now_v7`, which reads the OS's random source twice per
/// id: two `getrandom` system calls on every keyless Store.
pub fn uuid_v7() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let random: [u8; 10] = rand::random();
    uuid::Builder::from_unix_timestamp_millis(millis, &random)
        .into_uuid()
        .to_string()
}

/// Names for a sentence: `a`, `a and b`, `a, b and c`.
pub fn names(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Checks a message against the rules every Store enforces, headnode and datanode alike.
pub fn validate_message(message: &str, max_bytes: usize) -> Result<(), tonic::Status> {
    if message.is_empty() {
        return Err(tonic::Status::invalid_argument("message is empty"));
    }
    if message.len() > max_bytes {
        return Err(tonic::Status::invalid_argument(format!(
            "message is {} bytes, over the limit of {max_bytes} bytes",
            message.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuid_v7_ids_are_version_7_and_distinct() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| super::uuid_v7()).collect();
        assert_eq!(ids.len(), 1000);
        for id in &ids {
            assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
        }
    }

    #[test]
    fn receipts_preview_the_message_on_one_line() {
        assert_eq!(
            super::receipt("Hola", "datanode2"),
            "Message 'Hola' stored on datanode2."
        );
        let long = "ñ".repeat(45);
        assert_eq!(
            super::receipt(&long, "d"),
            format!("Message '{}…' stored on d.", "ñ".repeat(40))
        );
        assert_eq!(
            super::receipt("a\nb\u{7}", "d"),
            "Message 'a\\nb\\u{7}' stored on d."
        );
        assert_eq!(super::preview(&long), format!("{}…", "ñ".repeat(40)));
    }

    #[test]
    fn the_ascii_preview_agrees_with_the_character_rule() {
        let mut messages: Vec<String> = (0u8..=0x7f)
            .map(|b| format!("a{}b", char::from(b)))
            .collect();
        for n in [0, 1, 39, 40, 41, 100] {
            messages.push("x".repeat(n));
            messages.push(format!("{}é", "x".repeat(n)));
            messages.push(format!("{}\n", "x".repeat(n)));
        }
        for message in messages {
            let mut by_chars = String::new();
            super::push_preview_by_chars(&mut by_chars, &message);
            assert_eq!(super::preview(&message), by_chars, "{message:?}");
        }
    }

    #[test]
    fn names_read_as_a_sentence() {
        let n = |v: &[&str]| super::names(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(n(&[]), "");
        assert_eq!(n(&["a"]), "a");
        assert_eq!(n(&["a", "b"]), "a and b");
        assert_eq!(n(&["a", "b", "c"]), "a, b and c");
    }
}
