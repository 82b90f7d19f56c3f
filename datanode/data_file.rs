//! The data file `<data-dir>/messages.jsonl`: its format, its reader and its writer, side by side.
//!
//! One JSON object per line: `{"id":…,"stored_at":…,"message":…,"request_id":…}`. JSON strings
//! escape newlines and control characters, so any UTF-8 message is one line and round-trips byte
//! for byte.
//!
//! **Writing** happens on one thread that owns the file (the async runtime never blocks on the
//! disk). It takes every append that is waiting, writes them with one `write`, syncs once (group
//! commit) and only then answers each caller: an acknowledged record is on disk. A failed write
//! is rolled back by truncating to the last good length, so the file never keeps a partial record;
//! the file is then *unhealthy* until a probe write in the same folder succeeds again.
//!
//! **Opening** reads the whole file: every complete line is kept; a torn tail (a last line with
//! no newline, or that is not valid JSON) left by a crash is truncated away with a warning. An
//! invalid line *followed by* valid ones is not a torn write, so opening refuses rather than
//! guess.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use super::metrics::DataFileMetrics;

/// The data file's name inside `--data-dir`.
pub const FILE_NAME: &str = "messages.jsonl";

/// Most appends written together; a bound on one batch's memory, not a tuning knob.
const MAX_BATCH: usize = 1024;

/// How often an unhealthy writer tries a probe write to see whether the disk took writes again.
const RECOVERY_PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// While a [`Hold`] is out, the longest the writer waits for the next command before writing
/// what it has (each command that arrives restarts the wait; a write never exceeds `MAX_BATCH`).
pub const HOLD_WAIT: Duration = Duration::from_millis(20);

/// One stored message: a line of the data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Unique across the cluster (a UUIDv7: time-ordered, random in its low bits).
    pub id: String,
    /// RFC 3339 UTC with milliseconds; never decreases along the file.
    pub stored_at: String,
    /// The text, exactly as the client sent it.
    pub message: String,
    /// The client's idempotency key, or empty.
    #[serde(default)]
    pub request_id: String,
}

/// Whether an append waits for its record to be synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fsync {
    /// Sync before replying (group commit: concurrent appends share one sync).
    Always,
    /// Reply once written to the OS; a machine crash may lose recent messages.
    Never,
}

/// Why the data file cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use data directory {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error("cannot open data file {path}: {source}")]
    File { path: PathBuf, source: io::Error },
    #[error(
        "data file {path} is damaged at line {line}: an invalid record is followed by valid ones, which no crash leaves behind; inspect the file before starting again"
    )]
    Corrupt { path: PathBuf, line: u64 },
}

/// Why an append did not become durable. Nothing of it is left in the file.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("cannot write the data file: {0}")]
    Io(#[from] io::Error),
    #[error("the data file is closed")]
    Closed,
}

/// What opening found in the file.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Complete records in the file.
    pub count: u64,
    /// The most recent records that carry a request id, oldest first (at most the `recent`
    /// asked of [`DataFile::open`]), to rebuild the idempotency map.
    pub recent_with_request_id: Vec<Record>,
    /// Bytes of a torn tail that were cut off.
    pub truncated_bytes: u64,
}

struct Append {
    message: String,
    request_id: String,
    done: oneshot::Sender<Result<Record, AppendError>>,
}

enum Command {
    Append(Append),
    Sync(oneshot::Sender<io::Result<()>>),
    /// More appends follow at once (see [`DataFile::hold`]).
    Hold,
    /// The end of a [`Command::Hold`].
    Release,
}

/// While one exists, the writer does not start a write without the appends its holder is about
/// to send: see [`DataFile::hold`]. Dropping it releases the writer.
pub struct Hold {
    tx: std_mpsc::Sender<Command>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        // A closed channel means the writer is gone: nothing left to release.
        let _ = self.tx.send(Command::Release);
    }
}

/// The handle the Store service uses: appends go to the writer thread; reads see every durable
/// record. Cheap to clone.
#[derive(Clone)]
pub struct DataFile {
    tx: std_mpsc::Sender<Command>,
    path: PathBuf,
    /// Length of the file prefix that holds only complete, acknowledged records.
    durable_len: Arc<AtomicU64>,
    healthy: watch::Receiver<bool>,
    /// What the writer records per write (stored, fsync time, batch size, file length).
    metrics: DataFileMetrics,
}

impl DataFile {
    /// Opens (creating if needed) `<dir>/messages.jsonl`, repairs a torn tail, and starts the
    /// writer thread. `recent` bounds [`Loaded::recent_with_request_id`].
    pub fn open(dir: &Path, fsync: Fsync, recent: usize) -> Result<(Self, Loaded), OpenError> {
        let dir_err = |source| OpenError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        let path = dir.join(FILE_NAME);
        let file_err = |source| OpenError::File {
            path: path.clone(),
            source,
        };
        let existed = path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(file_err)?;
        if !existed {
            // Make the new file's name durable too.
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(dir_err)?;
        }
        let (loaded, good_len) = scan(&mut file, &path, recent)?;
        if loaded.truncated_bytes > 0 {
            tracing::warn!(
                path = %path.display(),
                bytes = loaded.truncated_bytes,
                "dropping a torn last record left by a crash (it was never acknowledged)"
            );
            file.set_len(good_len)
                .and_then(|()| file.sync_all())
                .map_err(file_err)?;
        }
        // Probe once at start: a data directory that cannot take a write is a start-up error,
        // not something to discover on the first Store.
        probe_write(dir).map_err(dir_err)?;

        let durable_len = Arc::new(AtomicU64::new(good_len));
        let metrics = DataFileMetrics::default();
        metrics.file_length(good_len);
        let (healthy_tx, healthy) = watch::channel(true);
        let (tx, rx) = std_mpsc::channel();
        let writer = Writer {
            file,
            dir: dir.to_path_buf(),
            fsync,
            len: good_len,
            durable_len: durable_len.clone(),
            healthy: healthy_tx,
            last_stamp: last_stamp_of(&path, good_len),
            buf: Vec::new(),
            holds: 0,
            metrics: metrics.clone(),
        };
        std::thread::Builder::new()
            .name("data file writer".into())
            .spawn(move || writer.run(rx))
            .map_err(file_err)?;
        Ok((
            Self {
                tx,
                path,
                durable_len,
                healthy,
                metrics,
            },
            loaded,
        ))
    }

    /// The file's metrics, for the datanode's registry.
    pub fn metrics(&self) -> &DataFileMetrics {
        &self.metrics
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one message and waits until it is durable (per [`Fsync`]). The record comes back
    /// with its id and time stamp.
    pub async fn append(&self, message: String, request_id: String) -> Result<Record, AppendError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Append(Append {
                message,
                request_id,
                done,
            }))
            .map_err(|_| AppendError::Closed)?;
        rx.await.map_err(|_| AppendError::Closed)?
    }

    /// Tells the writer that several appends are about to come from one caller (a batch), so it
    /// puts them in one write and one sync rather than starting on the first alone. The caller
    /// sends its appends, then drops the [`Hold`]; a hold never released only costs each write
    /// a wait of [`HOLD_WAIT`].
    pub fn hold(&self) -> Hold {
        // A closed channel shows up in the appends that follow.
        let _ = self.tx.send(Command::Hold);
        Hold {
            tx: self.tx.clone(),
        }
    }

    /// Waits until everything written so far is synced (used at shutdown with `--fsync never`).
    pub async fn sync(&self) -> io::Result<()> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Sync(done))
            .map_err(|_| io::Error::other("data file writer stopped"))?;
        rx.await
            .map_err(|_| io::Error::other("data file writer stopped"))?
    }

    /// Follows whether the file takes writes: false after a failed write, true again once a
    /// probe write succeeds.
    pub fn healthy(&self) -> watch::Receiver<bool> {
        self.healthy.clone()
    }

    /// Reads the durable records, oldest first, calling `each` until it returns false. Blocking:
    /// call it from `spawn_blocking`.
    pub fn read(&self, mut each: impl FnMut(Record) -> bool) -> io::Result<()> {
        let len = self.durable_len.load(Ordering::Acquire);
        let reader = BufReader::new(File::open(&self.path)?.take(len));
        for line in reader.lines() {
            let line = line?;
            match serde_json::from_str::<Record>(&line) {
                Ok(record) => {
                    if !each(record) {
                        break;
                    }
                }
                // Opening validated every line below `durable_len` and the writer only adds
                // valid ones, so this means someone edited the file underneath us.
                Err(e) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
        }
        Ok(())
    }
}

/// Reads every line, checks it, and returns what was found and the length of the good prefix.
fn scan(file: &mut File, path: &Path, recent: usize) -> Result<(Loaded, u64), OpenError> {
    let file_err = |source| OpenError::File {
        path: path.to_path_buf(),
        source,
    };
    file.seek(SeekFrom::Start(0)).map_err(file_err)?;
    let mut reader = BufReader::new(&*file);
    let mut loaded = Loaded::default();
    let mut recent_records = VecDeque::new();
    let mut offset = 0u64;
    let mut good_len = 0u64;
    // The line number and offset of the first bad line, once one is seen.
    let mut first_bad: Option<u64> = None;
    let mut line_no = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(file_err)?;
        if n == 0 {
            break;
        }
        line_no += 1;
        offset += n as u64;
        let complete = line.last() == Some(&b'\n');
        let record = complete
            .then(|| serde_json::from_slice::<Record>(&line[..line.len() - 1]).ok())
            .flatten();
        match (record, first_bad) {
            (Some(_), Some(bad_line)) => {
                return Err(OpenError::Corrupt {
                    path: path.to_path_buf(),
                    line: bad_line,
                });
            }
            (Some(record), None) => {
                good_len = offset;
                loaded.count += 1;
                if !record.request_id.is_empty() && recent > 0 {
                    if recent_records.len() == recent {
                        recent_records.pop_front();
                    }
                    recent_records.push_back(record);
                }
            }
            (None, None) => first_bad = Some(line_no),
            (None, Some(_)) => {}
        }
    }
    loaded.truncated_bytes = offset - good_len;
    loaded.recent_with_request_id = recent_records.into();
    Ok((loaded, good_len))
}

/// The time stamp of the last record below `len`, so stamps keep increasing across restarts.
fn last_stamp_of(path: &Path, len: u64) -> Option<DateTime<Utc>> {
    let file = File::open(path).ok()?;
    let last = BufReader::new(file.take(len))
        .lines()
        .map_while(Result::ok)
        .last()?;
    let record: Record = serde_json::from_str(&last).ok()?;
    crate::time::parse(&record.stored_at)
}

/// Writes and syncs a small file in `dir`, then removes it: proof that the folder takes writes.
fn probe_write(dir: &Path) -> io::Result<()> {
    let path = dir.join(".write-probe");
    let result = (|| {
        let mut f = File::create(&path)?;
        f.write_all(&[0u8; 4096])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// The writer thread's state.
struct Writer {
    file: File,
    dir: PathBuf,
    fsync: Fsync,
    /// Length of the file made of complete records.
    len: u64,
    durable_len: Arc<AtomicU64>,
    healthy: watch::Sender<bool>,
    /// The last stamp given, so stamps never go backwards even if the clock does.
    last_stamp: Option<DateTime<Utc>>,
    /// Reused batch buffer.
    buf: Vec<u8>,
    /// Callers between [`DataFile::hold`] and the drop of their [`Hold`].
    holds: usize,
    /// The same series as [`DataFile::metrics`]: recorded here, read by the registry.
    metrics: DataFileMetrics,
}

impl Writer {
    fn run(mut self, rx: std_mpsc::Receiver<Command>) {
        loop {
            let first = if *self.healthy.borrow() {
                match rx.recv() {
                    Ok(c) => c,
                    Err(_) => break,
                }
            } else {
                match rx.recv_timeout(RECOVERY_PROBE_INTERVAL) {
                    Ok(c) => c,
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {
                        self.try_recover();
                        continue;
                    }
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
                }
            };
            let mut batch = Vec::new();
            let mut syncs = Vec::new();
            let mut next = Some(first);
            loop {
                while let Some(command) = next.take() {
                    match command {
                        Command::Append(a) => batch.push(a),
                        Command::Sync(done) => syncs.push(done),
                        Command::Hold => self.holds += 1,
                        Command::Release => self.holds = self.holds.saturating_sub(1),
                    }
                    if batch.len() >= MAX_BATCH {
                        break;
                    }
                    next = rx.try_recv().ok();
                }
                // A holder is still handing over its appends (microseconds): wait for them
                // rather than syncing twice.
                if self.holds == 0 || batch.len() >= MAX_BATCH {
                    break;
                }
                match rx.recv_timeout(HOLD_WAIT) {
                    Ok(command) => next = Some(command),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.write_batch(batch);
            }
            for done in syncs {
                let _ = done.send(self.file.sync_data());
            }
        }
        if let Err(e) = self.file.sync_all() {
            tracing::error!(error = %e, "final sync of the data file failed");
        }
    }

    fn write_batch(&mut self, batch: Vec<Append>) {
        let now = Utc::now();
        let stamp = match self.last_stamp {
            Some(last) if last > now => last,
            _ => now,
        };
        self.last_stamp = Some(stamp);
        let stored_at = crate::time::format(stamp);
        self.buf.clear();
        let mut records = Vec::with_capacity(batch.len());
        let mut waiters = Vec::with_capacity(batch.len());
        for a in batch {
            let record = Record {
                id: uuid::Uuid::now_v7().to_string(),
                stored_at: stored_at.clone(),
                message: a.message,
                request_id: a.request_id,
            };
            // Serializing a struct of strings into a Vec cannot fail.
            serde_json::to_writer(&mut self.buf, &record).expect("JSON of strings");
            self.buf.push(b'\n');
            records.push(record);
            waiters.push(a.done);
        }
        let result = self
            .file
            .write_all(&self.buf)
            .and_then(|()| match self.fsync {
                Fsync::Always => self.metrics.time_fsync(|| self.file.sync_data()),
                Fsync::Never => Ok(()),
            });
        match result {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                self.durable_len.store(self.len, Ordering::Release);
                self.metrics.written(records.len(), self.len);
                self.healthy
                    .send_if_modified(|healthy| !std::mem::replace(healthy, true));
                for (record, done) in records.into_iter().zip(waiters) {
                    let _ = done.send(Ok(record));
                }
            }
            Err(e) => {
                tracing::error!(path = %self.dir.display(), error = %e, records = waiters.len(), "write failed; rolling back the batch");
                self.roll_back();
                self.healthy.send_replace(false);
                for done in waiters {
                    let _ = done.send(Err(AppendError::Io(io::Error::new(
                        e.kind(),
                        e.to_string(),
                    ))));
                }
            }
        }
    }

    /// Cuts whatever part of a failed batch reached the file, so no partial record stays.
    fn roll_back(&mut self) {
        if let Err(e) = self
            .file
            .set_len(self.len)
            .and_then(|()| self.file.sync_data())
        {
            tracing::error!(error = %e, "cannot roll back a failed write; will retry before the next write");
        }
    }

    fn try_recover(&mut self) {
        let rolled_back = self
            .file
            .metadata()
            .map(|m| m.len() == self.len)
            .unwrap_or(false);
        if !rolled_back {
            self.roll_back();
            return;
        }
        if probe_write(&self.dir).is_ok() {
            tracing::info!(path = %self.dir.display(), "data directory takes writes again");
            self.healthy.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (DataFile, Loaded) {
        DataFile::open(dir, Fsync::Always, 100).unwrap()
    }

    fn read_all(file: &DataFile) -> Vec<Record> {
        let mut out = Vec::new();
        file.read(|r| {
            out.push(r);
            true
        })
        .unwrap();
        out
    }

    #[tokio::test]
    async fn records_round_trip_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (file, loaded) = open(dir.path());
        assert_eq!(loaded.count, 0);
        let odd = "line\nbreak \"quotes\" \u{1F600} \u{7} tab\t\r\\";
        let a = file.append(odd.into(), "r1".into()).await.unwrap();
        let b = file.append("plain".into(), String::new()).await.unwrap();
        assert_eq!(read_all(&file), vec![a.clone(), b.clone()]);
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(text.lines().count(), 2);

        drop(file);
        let (again, loaded) = open(dir.path());
        assert_eq!(loaded.count, 2);
        assert_eq!(loaded.recent_with_request_id, vec![a.clone()]);
        assert_eq!(read_all(&again)[0].message, odd);
    }

    #[tokio::test]
    async fn appends_under_one_hold_share_one_write_and_a_lost_hold_only_delays() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = open(dir.path());
        // As the Datanode service hands over a batch: every append in one poll, then release.
        let mut hold = Some(file.hold());
        let appends = (0..50).map(|i| file.append(format!("m{i}"), String::new()));
        let mut all = std::pin::pin!(futures::future::join_all(appends));
        let records = std::future::poll_fn(|cx| {
            let polled = all.as_mut().poll(cx);
            hold.take();
            polled
        })
        .await;
        // One write stamps every record in it with the same time.
        let stamps: std::collections::HashSet<String> =
            records.into_iter().map(|r| r.unwrap().stored_at).collect();
        assert_eq!(stamps.len(), 1, "{stamps:?}");

        // A hold that is never released holds each write back by HOLD_WAIT, no more.
        std::mem::forget(file.hold());
        let late = tokio::time::timeout(
            Duration::from_secs(5),
            file.append("still written".into(), String::new()),
        )
        .await;
        assert!(late.unwrap().is_ok());
        assert_eq!(read_all(&file).len(), 51);
    }

    #[tokio::test]
    async fn concurrent_appends_are_all_durable_and_stamps_never_decrease() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = open(dir.path());
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let file = file.clone();
                tokio::spawn(async move { file.append(format!("m{i}"), String::new()).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let records = read_all(&file);
        assert_eq!(records.len(), 200);
        assert!(records.windows(2).all(|w| w[0].stored_at <= w[1].stored_at));
    }

    #[tokio::test]
    async fn a_torn_tail_is_truncated_and_complete_lines_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = open(dir.path());
        file.append("kept".into(), String::new()).await.unwrap();
        drop(file);
        let path = dir.path().join(FILE_NAME);
        let good = std::fs::read(&path).unwrap();
        for torn in [
            &b"{\"id\":\"x\",\"mess"[..],
            b"not json\n",
            b"{\"id\":1}\n\0\0\0",
        ] {
            let mut bytes = good.clone();
            bytes.extend_from_slice(torn);
            std::fs::write(&path, &bytes).unwrap();
            let (file, loaded) = open(dir.path());
            assert_eq!(loaded.count, 1);
            assert_eq!(loaded.truncated_bytes, torn.len() as u64);
            assert_eq!(std::fs::read(&path).unwrap(), good);
            assert_eq!(read_all(&file)[0].message, "kept");
        }
    }

    #[tokio::test]
    async fn an_invalid_line_before_valid_ones_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let valid =
            r#"{"id":"a","stored_at":"2026-01-01T00:00:00.000Z","message":"m","request_id":""}"#;
        std::fs::write(&path, format!("{valid}\ngarbage\n{valid}\n")).unwrap();
        match DataFile::open(dir.path(), Fsync::Always, 10) {
            Err(OpenError::Corrupt { line, .. }) => assert_eq!(line, 2),
            other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn an_unusable_data_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, "x").unwrap();
        let err = DataFile::open(&not_a_dir.join("data"), Fsync::Always, 10)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains(&*not_a_dir.to_string_lossy()),
            "{err}"
        );
    }
}
