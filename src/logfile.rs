//! [`LogFile`]: an append-only text log (the headnode's registro and heartbeat logs, the client's
//! log) written by a thread of its own, so the async runtime never blocks on the disk.
//!
//! Lines are buffered and written in batches: the writer flushes whenever its queue is empty, then
//! lingers a moment before looking again, so under load it is not woken once per line (a futex
//! wake and a context switch each). A line reaches the file within about [`LINGER`] of being
//! logged, and [`LogFile::sync`] waits until everything logged before it is written and synced.
//!
//! The queue in front of the writer is bounded in bytes ([`QUEUE_BYTES`]; each line is charged
//! its length plus [`LINE_OVERHEAD`]), so a disk that stalls cannot make it grow without bound.
//! When it is full a caller chooses:
//! - [`LogFile::append`] waits for room (asynchronously: the runtime is not blocked). For a log
//!   that is a record, such as the registro log, where a missing line would be a lie.
//! - [`LogFile::line`] drops the line, counts it ([`LogFile::dropped`]) and warns at most once per
//!   [`DROP_WARNING_EVERY`]. For a log of samples, such as the heartbeat log, whose writer (the
//!   probe loop) must never wait on a disk.
//!
//! Each call writes exactly one line: a newline or carriage return inside it is escaped, so
//! nothing logged can forge a line. [`field`] escapes a single space-separated field further.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// How long the writer waits after a flush before it takes the next batch.
pub const LINGER: Duration = Duration::from_millis(2);
/// Bytes of lines that may wait for the writer.
pub const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// What each queued line is charged besides its text: its allocation and queue slot.
pub const LINE_OVERHEAD: usize = 64;
/// The shortest time between two warnings about dropped lines.
pub const DROP_WARNING_EVERY: Duration = Duration::from_secs(10);

enum Command {
    /// A line and the queue room it holds until written.
    Line(String, OwnedSemaphorePermit),
    Sync(oneshot::Sender<io::Result<()>>),
}

/// A handle to an append-only log file. Cheap to clone; the writer thread ends, after flushing,
/// when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct LogFile {
    /// Unbounded as a channel; bounded by `room`, whose permits every queued line holds.
    tx: mpsc::UnboundedSender<Command>,
    room: Arc<Semaphore>,
    drops: Arc<Drops>,
    path: PathBuf,
}

/// Lines dropped because the queue was full, and when that was last said.
#[derive(Debug, Default)]
struct Drops {
    count: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

impl LogFile {
    /// Opens (creating it and its folder if needed) `path` for appending.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let name = format!("log {}", path.display());
        std::thread::Builder::new().name(name).spawn({
            let path = path.clone();
            move || write_loop(file, &path, rx)
        })?;
        Ok(Self {
            tx,
            room: Arc::new(Semaphore::new(QUEUE_BYTES)),
            drops: Arc::default(),
            path,
        })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line, waiting for room in the queue if the writer is behind.
    pub async fn append(&self, line: String) {
        let charge = charge(&line);
        // The semaphore is never closed, so this cannot fail.
        if let Ok(permit) = self.room.clone().acquire_many_owned(charge).await {
            self.send(line, permit);
        }
    }

    /// Appends one line, or drops it (counted, with a rate-limited warning) when the queue is
    /// full. Never waits.
    pub fn line(&self, line: String) {
        match self.room.clone().try_acquire_many_owned(charge(&line)) {
            Ok(permit) => self.send(line, permit),
            Err(_) => self.dropped_one(),
        }
    }

    /// How many lines [`Self::line`] has dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.drops.count.load(Ordering::Relaxed)
    }

    /// Waits until every line logged so far is written and synced to disk.
    pub async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Sync(tx))
            .map_err(|_| io::Error::other("log writer stopped"))?;
        rx.await
            .map_err(|_| io::Error::other("log writer stopped"))?
    }

    fn send(&self, line: String, permit: OwnedSemaphorePermit) {
        // The writer only stops when every handle is gone, so this cannot fail while `self` lives.
        let _ = self.tx.send(Command::Line(one_line(line), permit));
    }

    fn dropped_one(&self) {
        let total = self.drops.count.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self
            .drops
            .last_warning
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() >= DROP_WARNING_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(path = %self.path.display(), dropped = total, "log writer is behind: its queue is full and lines are being dropped");
        }
    }
}

/// The queue room a line takes (the whole queue at most, so any line fits an empty queue).
fn charge(line: &str) -> u32 {
    let bytes = (line.len() + LINE_OVERHEAD).min(QUEUE_BYTES);
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// `line` with its newlines and carriage returns escaped, so it is one line in the file.
fn one_line(line: String) -> String {
    // A byte scan (SIMD, `memchr2`): '\n' and '\r' are ASCII, so no UTF-8 decoding is needed
    // to find them. This runs for every line, a Store's registro line among them.
    if memchr::memchr2(b'\n', b'\r', line.as_bytes()).is_some() {
        line.replace('\n', "\\n").replace('\r', "\\r")
    } else {
        line
    }
}

/// Appends `text` to `out` as a JSON string (quoted and escaped exactly as `serde_json` writes
/// it), without a buffer of its own.
pub fn push_json_string(out: &mut String, text: &str) {
    out.reserve(text.len() + 2);
    out.push('"');
    // Most messages need no escape: one pass tells (a fold without an early exit, which the
    // compiler turns into a test of many bytes at once), and the text goes in whole.
    if !text.bytes().fold(false, |escape, b| {
        escape | (b < 0x20) | (b == b'"') | (b == b'\\')
    }) {
        out.push_str(text);
        out.push('"');
        return;
    }
    let mut plain = 0;
    for (i, b) in text.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&text[plain..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        plain = i + 1;
    }
    out.push_str(&text[plain..]);
    out.push('"');
}

/// `text` as one field of a space-separated log line: backslashes, control characters and
/// whitespace are escaped (`\n`, `\u{20}`), so a name or an id from the network can neither break
/// the line nor shift its fields.
pub fn field(text: &str) -> Cow<'_, str> {
    // The usual field (an id, a datanode's name) is printable ASCII: a byte scan tells, without
    // decoding characters. Anything else takes the character test below.
    // (A fold without an early exit, so the compiler can test many bytes at once.)
    if text.bytes().fold(true, |plain, b| {
        plain & (b > b' ') & (b < 0x7f) & (b != b'\\')
    }) {
        return Cow::Borrowed(text);
    }
    let needs = |c: char| c == '\\' || c.is_control() || c.is_whitespace();
    if !text.contains(needs) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c == '\\' || c.is_control() {
            out.extend(c.escape_default());
        } else if c.is_whitespace() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn write_loop(file: File, path: &Path, mut rx: mpsc::UnboundedReceiver<Command>) {
    let mut out = BufWriter::new(file);
    let mut failed = false;
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(command) = next {
            match command {
                Command::Line(line, room) => {
                    if let Err(e) = out
                        .write_all(line.as_bytes())
                        .and_then(|()| out.write_all(b"\n"))
                    {
                        report(path, &e, &mut failed);
                    }
                    // Room in the queue is given back once the line is in the buffer.
                    drop(room);
                }
                Command::Sync(done) => {
                    let result = out.flush().and_then(|()| out.get_ref().sync_data());
                    let _ = done.send(result);
                }
            }
            next = rx.try_recv().ok();
        }
        match out.flush() {
            Ok(()) => failed = false,
            Err(e) => report(path, &e, &mut failed),
        }
        // Batching by time, not synchronisation: lines logged meanwhile wait in the queue
        // without waking this thread.
        std::thread::sleep(LINGER);
    }
}

/// Logs a write error once per failure streak, not once per line.
fn report(path: &Path, e: &io::Error, failed: &mut bool) {
    if !*failed {
        tracing::error!(path = %path.display(), error = %e, "cannot write log file");
        *failed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_appended_and_synced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.log");
        let log = LogFile::open(&path).unwrap();
        log.line("one".into());
        log.line("two \"quoted\"".into());
        log.sync().await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "one\ntwo \"quoted\"\n"
        );
        let again = LogFile::open(&path).unwrap();
        again.line("three".into());
        again.sync().await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "one\ntwo \"quoted\"\nthree\n"
        );
    }

    #[tokio::test]
    async fn each_call_is_one_line_whatever_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        let log = LogFile::open(&path).unwrap();
        log.line("a\n2026-01-01T00:00:00.000Z forged\r".into());
        log.append("b".into()).await;
        log.sync().await.unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "a\\n2026-01-01T00:00:00.000Z forged\\r\nb\n"
        );
    }

    #[test]
    fn json_strings_are_written_as_serde_json_writes_them() {
        let mut texts: Vec<String> = (0u8..=0x7f)
            .map(|b| format!("a{}b", char::from(b)))
            .collect();
        texts.extend(
            [
                "",
                "Hola \"mundo\"\n",
                "ünïcödé ✓ \u{1F600}",
                "\\\u{7f}\u{80}\u{2028}",
            ]
            .map(String::from),
        );
        for text in texts {
            let mut out = String::from("x");
            push_json_string(&mut out, &text);
            assert_eq!(
                out,
                format!("x{}", serde_json::to_string(&text).unwrap()),
                "{text:?}"
            );
        }
    }

    #[test]
    fn fields_escape_what_would_break_a_line_or_shift_its_fields() {
        assert_eq!(field("datanode1"), "datanode1");
        assert!(matches!(field("datanode1"), Cow::Borrowed(_)));
        assert_eq!(field("a b\nc\\d\u{1b}"), "a\\u{20}b\\nc\\\\d\\u{1b}");
    }

    #[test]
    fn a_field_is_kept_as_it_is_exactly_when_no_character_needs_an_escape() {
        let chars = (0u8..=0x7f).map(char::from).chain([
            'é',
            '✓',
            '\u{85}',
            '\u{a0}',
            '\u{2028}',
            '\u{3000}',
            '\u{1F600}',
        ]);
        for c in chars {
            let text = format!("a{c}b");
            let needs = c == '\\' || c.is_control() || c.is_whitespace();
            let got = field(&text);
            assert_eq!(matches!(got, Cow::Borrowed(_)), !needs, "{c:?}");
            if !needs {
                assert_eq!(got, text);
            }
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_lines_and_counts_them_but_append_waits() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(dir.path().join("x.log")).unwrap();
        // Take all the room, as a stalled writer would.
        let held = log
            .room
            .clone()
            .acquire_many_owned(QUEUE_BYTES as u32)
            .await
            .unwrap();
        log.line("lost".into());
        log.line("lost too".into());
        assert_eq!(log.dropped(), 2);
        let waiting = tokio::spawn({
            let log = log.clone();
            async move { log.append("kept".into()).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(held);
        waiting.await.unwrap();
        log.sync().await.unwrap();
        assert_eq!(std::fs::read_to_string(log.path()).unwrap(), "kept\n");
    }
}
