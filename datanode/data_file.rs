//! The data file `<data-dir>/messages.jsonl`: its format, its reader and its writer, side by side.
//!
//! One JSON object per line: `{"id":…,"stored_at":…,"message":…,"request_id":…}`. JSON strings
//! escape newlines and control characters, so any UTF-8 message is one line and round-trips byte
//! for byte.
//!
//! **Writing** happens on one thread that owns the file (the async runtime never blocks on the
//! disk). A caller hands over a whole batch ([`DataFile::append_many`]) as one command and awaits
//! one answer. The writer takes every command that is waiting, writes them with one `write`,
//! syncs once (group commit: one sync covers many callers' batches) and only then answers each
//! caller: an acknowledged record is on disk. With `--fsync always` the sync is the write-ahead
//! journal's ([`super::journal`]): the same bytes go to `messages.journal`, whose size never
//! changes, and that file is synced instead of the data file, which a flush then costs less. A
//! failed write is rolled back by truncating to the last good length, so the file never keeps a
//! partial record; if that truncation fails too, it is retried before anything else is written,
//! and every batch fails until it succeeds, so no record is ever appended after a torn one. The
//! file is *unhealthy* after a failed write until a probe write in the same folder succeeds
//! again, and for good once the writer thread stops.
//!
//! **Opening** first replays the journal's tail, if there is one, into the data file (what a
//! machine crash took from it), and moves aside, like a torn tail, whatever the data file holds
//! past that tail's end if it is not whole records. Then it reads the whole file: every
//! complete line is kept; a torn tail (a last line with no newline, or that is not valid JSON)
//! left by a crash is moved to a side file `messages.jsonl.corrupt-<time>` with a warning, so
//! nothing is destroyed. An invalid line
//! *followed by* valid ones is not a torn write, so opening refuses rather than guess.
//!
//! **Reading** ([`DataFile::cursor`]) sees the records that were durable when it started, a
//! chunk at a time, so a slow reader holds a small buffer and no thread.

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

use super::journal::{self, Journal, JournalFile};
use super::metrics::DataFileMetrics;

/// The data file's name inside `--data-dir`.
pub const FILE_NAME: &str = "messages.jsonl";

/// Most records written together; a bound on one write's memory, not a tuning knob. A single
/// batch larger than this is still written whole, alone.
const MAX_WRITE_RECORDS: usize = 1024;

/// How often an unhealthy writer tries a probe write to see whether the disk took writes again.
const RECOVERY_PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// One stored message: a line of the data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Unique across the cluster: derived from the request id by the headnode that forwarded
    /// it, or a UUIDv7 (time-ordered, random in its low bits) stamped here for a Store sent to
    /// this datanode directly.
    pub id: String,
    /// RFC 3339 UTC with milliseconds. The stamps this datanode sets never decrease along the
    /// file; a record a headnode stamped carries that headnode's time.
    pub stored_at: String,
    /// The text, exactly as the client sent it.
    pub message: String,
    /// The client's idempotency key, or empty.
    #[serde(default)]
    pub request_id: String,
}

/// A message to append: what the writer turns into a [`Record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    /// The text, exactly as the client sent it.
    pub message: String,
    /// The client's idempotency key, or empty.
    pub request_id: String,
    /// The id and time a headnode gave the record, kept as given; `None` for a Store sent to
    /// this datanode directly, which the writer stamps itself.
    pub stamp: Option<Stamp>,
}

/// A record's identity as a headnode set it (see `registro.v1.Record`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub id: String,
    /// RFC 3339 UTC with milliseconds, as [`crate::time::format`] writes it.
    pub stored_at: String,
}

impl Append {
    /// A message this datanode stamps itself.
    pub fn new(message: String, request_id: String) -> Self {
        Self {
            message,
            request_id,
            stamp: None,
        }
    }
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
    #[error("cannot move the torn tail of {path} to {side}: {source}")]
    SideFile {
        path: PathBuf,
        side: PathBuf,
        source: io::Error,
    },
    #[error("cannot replay the journal {path} into the data file: {source}")]
    Journal { path: PathBuf, source: io::Error },
    #[error(
        "data file {path} is damaged at line {line}: an invalid record is followed by valid ones, which no crash leaves behind; inspect the file before starting again"
    )]
    Corrupt { path: PathBuf, line: u64 },
}

/// Why a batch did not become durable. Nothing of it is left in the file.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("cannot write the data file: {0}")]
    Io(#[from] io::Error),
    #[error(
        "cannot write the data file: an earlier failed write could not be rolled back yet ({0}); nothing is written until it is"
    )]
    RollbackPending(io::Error),
    #[error("the data file writer has stopped; this datanode cannot store messages")]
    Closed,
}

/// What opening found in the file.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Complete records in the file.
    pub count: u64,
    /// Bytes of a torn tail that were moved out of the file.
    pub truncated_bytes: u64,
    /// Where those bytes went (`messages.jsonl.corrupt-<time>`), if there were any.
    pub side_file: Option<PathBuf>,
    /// What replaying the journal did.
    pub journal: journal::Recovered,
}

/// One caller's batch: written whole in one write, answered with one result.
struct Batch {
    appends: Vec<Append>,
    done: oneshot::Sender<Result<Vec<Record>, AppendError>>,
}

enum Command {
    Append(Batch),
    Sync(oneshot::Sender<io::Result<()>>),
}

/// The handle the Store service uses: batches go to the writer thread; reads see every durable
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
    /// Opens (creating if needed) `<dir>/messages.jsonl`, moves a torn tail aside, and starts
    /// the writer thread. `each` sees every complete record, oldest first, as the file is read
    /// (the datanode rebuilds its idempotency map from them, within its own bounds, so opening
    /// holds no more than one record at a time). Blocking: call it off the async runtime.
    pub fn open(
        dir: &Path,
        fsync: Fsync,
        each: impl FnMut(Record),
    ) -> Result<(Self, Loaded), OpenError> {
        Self::open_with(dir, fsync, each, |file| file, journal::open_file)
    }

    /// [`Self::open`], with the writer's file wrapped by `storage` and its journal opened by
    /// `open_journal` (tests make them fail).
    fn open_with<S: Storage>(
        dir: &Path,
        fsync: Fsync,
        each: impl FnMut(Record),
        storage: impl FnOnce(File) -> S,
        open_journal: impl FnOnce(&Path) -> io::Result<Box<dyn JournalFile>>,
    ) -> Result<(Self, Loaded), OpenError> {
        let dir_err = |source| OpenError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        create_dir_durably(dir).map_err(dir_err)?;
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
            sync_dir(dir).map_err(dir_err)?;
        }
        let recovered = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .and_then(|data| journal::recover(dir, &data))
            .map_err(|source| OpenError::Journal {
                path: dir.join(journal::FILE_NAME),
                source,
            })?;
        let set_aside = |file: &mut File, from: u64, bytes: u64, why: &str| {
            let side =
                move_tail_aside(file, dir, from).map_err(|(side, source)| OpenError::SideFile {
                    path: path.clone(),
                    side,
                    source,
                })?;
            tracing::warn!(path = %path.display(), bytes, side_file = %side.display(), "moved {why} (it was never acknowledged) to a side file");
            Ok(side)
        };
        let mut journal_tail = None;
        if let Some(end) = recovered.end {
            // Past the journal's tail is only what was never acknowledged: kept if it is whole
            // records (a process crash after the write), moved aside if not (a machine crash
            // can leave a hole of zeros, which would stop the scan below).
            if !whole_records_from(&mut file, end).map_err(file_err)? {
                let bytes = file.metadata().map_err(file_err)?.len() - end;
                let why = "a torn last record left by a crash, past the journal's last record,";
                journal_tail = Some((set_aside(&mut file, end, bytes, why)?, bytes));
            }
        }
        let (mut loaded, good_len) = scan(&mut file, &path, each)?;
        loaded.journal = recovered;
        if loaded.truncated_bytes > 0 {
            let why = "a torn last record left by a crash";
            loaded.side_file = Some(set_aside(&mut file, good_len, loaded.truncated_bytes, why)?);
        } else if let Some((side, bytes)) = journal_tail {
            loaded.side_file = Some(side);
            loaded.truncated_bytes = bytes;
        }
        // Probe once at start: a data directory that cannot take a write is a start-up error,
        // not something to discover on the first Store.
        probe_write(dir).map_err(dir_err)?;
        let journal = match fsync {
            Fsync::Always => start_journal(dir, &file, &recovered, good_len, open_journal),
            Fsync::Never => {
                // Every write syncs nothing: a journal would be replayed over what a later
                // opening moved aside. The data file is synced (recover did), so it can go.
                journal::remove(dir).map_err(dir_err)?;
                None
            }
        };

        let durable_len = Arc::new(AtomicU64::new(good_len));
        let metrics = DataFileMetrics::default();
        metrics.file_length(good_len);
        let (healthy_tx, healthy) = watch::channel(true);
        let (tx, rx) = std_mpsc::channel();
        let writer = Writer {
            file: storage(file),
            dir: dir.to_path_buf(),
            fsync,
            len: good_len,
            rollback_pending: false,
            durable_len: durable_len.clone(),
            healthy: healthy_tx,
            last_stamp: last_stamp_of(&path, good_len),
            buf: Vec::new(),
            metrics: metrics.clone(),
            journal,
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

    /// Appends a batch and waits until it is durable (per [`Fsync`]): one command to the writer,
    /// one answer. The batch is written whole in one write (with whatever other batches are
    /// waiting), so it succeeds or fails as a whole; on success the records come back in the
    /// batch's order, with their ids and one time stamp.
    pub async fn append_many(&self, appends: Vec<Append>) -> Result<Vec<Record>, AppendError> {
        if appends.is_empty() {
            return Ok(Vec::new());
        }
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Append(Batch { appends, done }))
            .map_err(|_| AppendError::Closed)?;
        // A dropped answer means the writer thread died with the batch in hand.
        rx.await.map_err(|_| AppendError::Closed)?
    }

    /// Appends one message: a batch of one.
    pub async fn append(&self, message: String, request_id: String) -> Result<Record, AppendError> {
        let mut records = self
            .append_many(vec![Append::new(message, request_id)])
            .await?;
        records.pop().ok_or(AppendError::Closed)
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
    /// probe write succeeds; false for good (and then closed) once the writer thread stopped.
    pub fn healthy(&self) -> watch::Receiver<bool> {
        self.healthy.clone()
    }

    /// A reader of the records durable now, oldest first. Blocking (it opens the file): call it
    /// from `spawn_blocking`, like [`Cursor::next_chunk`].
    pub fn cursor(&self) -> io::Result<Cursor> {
        let len = self.durable_len.load(Ordering::Acquire);
        Ok(Cursor {
            reader: BufReader::new(File::open(&self.path)?.take(len)),
            line: Vec::new(),
        })
    }
}

/// A position in the data file's durable records; see [`DataFile::cursor`].
pub struct Cursor {
    reader: BufReader<io::Take<File>>,
    /// Reused line buffer.
    line: Vec<u8>,
}

impl Cursor {
    /// The next records: at most `max_records`, and no more once their lines reach `max_bytes`
    /// (a single record may exceed it). Empty at the end. Blocking: call it from
    /// `spawn_blocking`.
    pub fn next_chunk(&mut self, max_records: usize, max_bytes: usize) -> io::Result<Vec<Record>> {
        let mut records = Vec::new();
        let mut bytes = 0;
        while records.len() < max_records && bytes < max_bytes {
            self.line.clear();
            let n = self.reader.read_until(b'\n', &mut self.line)?;
            if n == 0 {
                break;
            }
            bytes += n;
            let text = self.line.strip_suffix(b"\n").unwrap_or(&self.line);
            // Opening validated every line below the durable length and the writer only adds
            // valid ones, so this means someone edited the file underneath us.
            let record = serde_json::from_slice(text)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            records.push(record);
        }
        Ok(records)
    }
}

/// Creates `dir` and any missing parents, syncing each parent whose new entry it made, so the
/// folders survive a crash with the file in them.
fn create_dir_durably(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    std::fs::create_dir_all(dir)?;
    for created in missing {
        if let Some(parent) = created.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Starts the journal of `--fsync always` once the data file is synced up to `data_len`. Without
/// one (it cannot be made: a disk too small for it, say) every write syncs the data file, as
/// with no journal at all, and the log says why.
fn start_journal(
    dir: &Path,
    data: &File,
    recovered: &journal::Recovered,
    data_len: u64,
    open: impl FnOnce(&Path) -> io::Result<Box<dyn JournalFile>>,
) -> Option<Journal> {
    let started = data
        .sync_data()
        .and_then(|()| data.try_clone())
        .and_then(|data| Journal::start(dir, recovered, data, data_len, open));
    match started {
        Ok(journal) => Some(journal),
        Err(e) => {
            tracing::warn!(path = %dir.join(journal::FILE_NAME).display(), error = %e, "cannot use a write-ahead journal; every write syncs the data file instead (slower, as durable)");
            None
        }
    }
}

/// The record a line of the data file holds, if it is a whole one: a valid record and its newline.
fn record_of(line: &[u8]) -> Option<Record> {
    let text = line.strip_suffix(b"\n")?;
    serde_json::from_slice(text).ok()
}

/// Whether everything from `from` to the end of `file` is whole records (or nothing).
fn whole_records_from(file: &mut File, from: u64) -> io::Result<bool> {
    file.seek(SeekFrom::Start(from))?;
    let mut reader = BufReader::new(&*file);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(true);
        }
        if record_of(&line).is_none() {
            return Ok(false);
        }
    }
}

/// Syncs a folder, making the names created in it durable (`""` is the current folder).
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)?.sync_all()
}

/// Copies everything from `good_len` on into a new side file in `dir`, syncs it and its name,
/// then cuts it from `file`. Returns the side file, or it and the error.
fn move_tail_aside(
    file: &mut File,
    dir: &Path,
    good_len: u64,
) -> Result<PathBuf, (PathBuf, io::Error)> {
    let stamp = Utc::now().format("%Y-%m-%dT%H-%M-%S%.3fZ");
    let base = format!("{FILE_NAME}.corrupt-{stamp}");
    let mut side_path = dir.join(&base);
    let mut side = None;
    // Two openings in one millisecond would collide: number the later ones.
    for n in 1..=100 {
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&side_path)
        {
            Ok(f) => {
                side = Some(f);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                side_path = dir.join(format!("{base}-{n}"));
            }
            Err(e) => return Err((side_path, e)),
        }
    }
    let Some(mut side) = side else {
        let e = io::Error::new(io::ErrorKind::AlreadyExists, "too many side files");
        return Err((side_path, e));
    };
    let result = (|| {
        file.seek(SeekFrom::Start(good_len))?;
        io::copy(file, &mut side)?;
        side.sync_all()?;
        sync_dir(dir)?;
        file.set_len(good_len)?;
        file.sync_all()
    })();
    match result {
        Ok(()) => Ok(side_path),
        Err(e) => Err((side_path, e)),
    }
}

/// Reads every line, checks it, and returns what was found and the length of the good prefix.
fn scan(
    file: &mut File,
    path: &Path,
    mut each: impl FnMut(Record),
) -> Result<(Loaded, u64), OpenError> {
    let file_err = |source| OpenError::File {
        path: path.to_path_buf(),
        source,
    };
    file.seek(SeekFrom::Start(0)).map_err(file_err)?;
    let mut reader = BufReader::new(&*file);
    let mut loaded = Loaded::default();
    let mut offset = 0u64;
    let mut good_len = 0u64;
    // The line number of the first bad line, once one is seen.
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
        match (record_of(&line), first_bad) {
            (Some(_), Some(bad_line)) => {
                return Err(OpenError::Corrupt {
                    path: path.to_path_buf(),
                    line: bad_line,
                });
            }
            (Some(record), None) => {
                good_len = offset;
                loaded.count += 1;
                each(record);
            }
            (None, None) => first_bad = Some(line_no),
            (None, Some(_)) => {}
        }
    }
    loaded.truncated_bytes = offset - good_len;
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
        Write::write_all(&mut f, &[0u8; 4096])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// The file operations the writer uses: a `File` opened for appending. A trait only so that
/// unit tests can make one of them fail the way a disk does.
trait Storage: Send + 'static {
    /// Appends `buf` at the end of the file.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    fn sync_data(&mut self) -> io::Result<()>;
    fn sync_all(&mut self) -> io::Result<()>;
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

impl Storage for File {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        Write::write_all(self, buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
    fn sync_all(&mut self) -> io::Result<()> {
        File::sync_all(self)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

/// The writer thread's state.
struct Writer<S: Storage> {
    file: S,
    dir: PathBuf,
    fsync: Fsync,
    /// Length of the file made of complete records.
    len: u64,
    /// A failed write may have left bytes past `len` that could not be cut yet: nothing is
    /// written until they are, or the next record would follow a torn one.
    rollback_pending: bool,
    durable_len: Arc<AtomicU64>,
    healthy: watch::Sender<bool>,
    /// The last stamp given, so stamps never go backwards even if the clock does.
    last_stamp: Option<DateTime<Utc>>,
    /// Reused write buffer.
    buf: Vec<u8>,
    /// The same series as [`DataFile::metrics`]: recorded here, read by the registry.
    metrics: DataFileMetrics,
    /// With `--fsync always`, what is synced instead of the data file; `None` without one.
    journal: Option<Journal>,
}

impl<S: Storage> Drop for Writer<S> {
    /// However the thread ends (its last handle dropped, or a panic), the file no longer takes
    /// writes: say so before the health channel closes.
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(path = %self.dir.display(), "the data file writer thread panicked; no more writes");
        }
        self.healthy.send_replace(false);
    }
}

impl<S: Storage> Writer<S> {
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
            // Group commit: every command already waiting joins this write, up to a bound.
            let mut batches = Vec::new();
            let mut records = 0;
            let mut syncs = Vec::new();
            let mut next = Some(first);
            while let Some(command) = next.take() {
                match command {
                    Command::Append(batch) => {
                        records += batch.appends.len();
                        batches.push(batch);
                    }
                    Command::Sync(done) => syncs.push(done),
                }
                if records >= MAX_WRITE_RECORDS {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if !batches.is_empty() {
                self.write(batches);
            }
            for done in syncs {
                let _ = done.send(self.file.sync_data());
            }
        }
        if self.rollback_pending {
            self.roll_back();
        }
        if let Err(e) = self.file.sync_all() {
            tracing::error!(error = %e, "final sync of the data file failed");
        }
    }

    /// Writes every batch with one write and one sync, then answers each.
    fn write(&mut self, batches: Vec<Batch>) {
        if self.rollback_pending && !self.roll_back() {
            tracing::error!(path = %self.dir.display(), batches = batches.len(), "refusing to write after a failed write that is not rolled back yet");
            for batch in batches {
                let e = io::Error::other("the last failed write is still in the file");
                let _ = batch.done.send(Err(AppendError::RollbackPending(e)));
            }
            return;
        }
        let now = Utc::now();
        let stamp = match self.last_stamp {
            Some(last) if last > now => last,
            _ => now,
        };
        self.last_stamp = Some(stamp);
        let stored_at = crate::time::format(stamp);
        self.buf.clear();
        let mut answers = Vec::with_capacity(batches.len());
        for batch in batches {
            let mut records = Vec::with_capacity(batch.appends.len());
            for a in batch.appends {
                let (id, stored_at) = match a.stamp {
                    Some(given) => (given.id, given.stored_at),
                    None => (crate::uuid_v7(), stored_at.clone()),
                };
                let record = Record {
                    id,
                    stored_at,
                    message: a.message,
                    request_id: a.request_id,
                };
                // Serializing a struct of strings into a Vec cannot fail.
                serde_json::to_writer(&mut self.buf, &record).expect("JSON of strings");
                self.buf.push(b'\n');
                records.push(record);
            }
            answers.push((records, batch.done));
        }
        let result = self.file.write_all(&self.buf).and_then(|()| self.flush());
        match result {
            Ok(()) => {
                self.len += self.buf.len() as u64;
                self.durable_len.store(self.len, Ordering::Release);
                let written: usize = answers.iter().map(|(r, _)| r.len()).sum();
                self.metrics.written(written, self.len);
                self.healthy
                    .send_if_modified(|healthy| !std::mem::replace(healthy, true));
                for (records, done) in answers {
                    let _ = done.send(Ok(records));
                }
            }
            Err(e) => {
                let records: usize = answers.iter().map(|(r, _)| r.len()).sum();
                tracing::error!(path = %self.dir.display(), error = %e, records, "write failed; rolling it back");
                self.rollback_pending = true;
                self.roll_back();
                self.healthy.send_replace(false);
                for (_, done) in answers {
                    let e = io::Error::new(e.kind(), e.to_string());
                    let _ = done.send(Err(AppendError::Io(e)));
                }
            }
        }
    }

    /// Makes the bytes just written (`buf`, from `len` on) durable as `--fsync` says.
    fn flush(&mut self) -> io::Result<()> {
        let Self {
            file,
            journal,
            metrics,
            len,
            buf,
            ..
        } = self;
        match (self.fsync, journal) {
            (Fsync::Never, _) => Ok(()),
            (Fsync::Always, Some(journal)) if Journal::fits(buf.len()) => {
                // Timed whole: opened O_DIRECT, the journal's write is its flush.
                metrics.time_fsync(|| {
                    journal.write(*len, buf, &mut || file.sync_data())?;
                    journal.sync()
                })
            }
            (Fsync::Always, Some(journal)) => {
                // Too big for the journal: synced where it is, and the journal told so.
                metrics.time_fsync(|| file.sync_data())?;
                journal.mark(*len + buf.len() as u64)
            }
            (Fsync::Always, None) => metrics.time_fsync(|| file.sync_data()),
        }
    }

    /// Cuts whatever part of a failed write reached the file, so no partial record stays, after
    /// undoing its journal record (so that a crash in between never replays it).
    /// Returns whether the file now ends with a complete record.
    fn roll_back(&mut self) -> bool {
        let journal = match &mut self.journal {
            Some(journal) => journal.discard(),
            None => Ok(()),
        };
        match journal
            .and_then(|()| self.file.set_len(self.len))
            .and_then(|()| self.file.sync_data())
        {
            Ok(()) => {
                if self.rollback_pending {
                    tracing::info!(path = %self.dir.display(), "failed write rolled back");
                }
                self.rollback_pending = false;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot roll back a failed write; retrying before the next write");
                false
            }
        }
    }

    fn try_recover(&mut self) {
        if self.rollback_pending && !self.roll_back() {
            return;
        }
        if probe_write(&self.dir).is_ok() {
            tracing::info!(path = %self.dir.display(), "data directory takes writes again");
            self.healthy.send_replace(true);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use futures::FutureExt;
    use std::collections::HashSet;
    use std::sync::Mutex;

    /// Faults a [`Faulty`] file injects, and what it counted.
    #[derive(Default)]
    pub(crate) struct Faults {
        /// The next writes this many times write half their bytes, then fail (a disk that
        /// filled up mid-write).
        pub torn_writes: u32,
        /// Truncations that fail, this many times.
        pub set_len_failures: u32,
        /// The next write panics, killing the writer thread.
        pub panic_on_write: bool,
        /// The next write says it started, then waits to be released.
        pub gate: Option<(
            tokio::sync::mpsc::UnboundedSender<()>,
            std_mpsc::Receiver<()>,
        )>,
        /// Writes and syncs that reached the file.
        pub writes: u32,
        pub syncs: u32,
        /// Journal syncs that fail, this many times.
        pub journal_sync_failures: u32,
        /// Journal syncs that reached the journal.
        pub journal_syncs: u32,
    }

    /// A real data file whose operations fail when [`Faults`] says so.
    pub(crate) struct Faulty {
        file: File,
        faults: Arc<Mutex<Faults>>,
    }

    impl Storage for Faulty {
        fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
            let mut faults = self.faults.lock().unwrap();
            if let Some((entered, release)) = faults.gate.take() {
                drop(faults);
                let _ = entered.send(());
                let _ = release.recv();
                faults = self.faults.lock().unwrap();
            }
            if std::mem::take(&mut faults.panic_on_write) {
                drop(faults);
                panic!("injected fault: the writer thread dies");
            }
            if faults.torn_writes > 0 {
                faults.torn_writes -= 1;
                Write::write_all(&mut self.file, &buf[..buf.len() / 2])?;
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "injected fault: disk full mid-write",
                ));
            }
            faults.writes += 1;
            Write::write_all(&mut self.file, buf)
        }
        fn sync_data(&mut self) -> io::Result<()> {
            self.faults.lock().unwrap().syncs += 1;
            self.file.sync_data()
        }
        fn sync_all(&mut self) -> io::Result<()> {
            self.file.sync_all()
        }
        fn set_len(&mut self, len: u64) -> io::Result<()> {
            let mut faults = self.faults.lock().unwrap();
            if faults.set_len_failures > 0 {
                faults.set_len_failures -= 1;
                return Err(io::Error::other("injected fault: truncate failed"));
            }
            self.file.set_len(len)
        }
    }

    /// A real journal whose syncs fail when [`Faults`] says so.
    pub(crate) struct FaultyJournal {
        file: File,
        faults: Arc<Mutex<Faults>>,
    }

    impl JournalFile for FaultyJournal {
        fn write_at(&mut self, buf: &[u8], pos: u64) -> io::Result<()> {
            JournalFile::write_at(&mut self.file, buf, pos)
        }
        fn sync_data(&mut self) -> io::Result<()> {
            let mut faults = self.faults.lock().unwrap();
            if faults.journal_sync_failures > 0 {
                faults.journal_sync_failures -= 1;
                return Err(io::Error::other("injected fault: journal sync failed"));
            }
            faults.journal_syncs += 1;
            self.file.sync_data()
        }
    }

    /// Opens `dir`'s data file with its writer's and its journal's operations under `faults`'
    /// control.
    pub(crate) fn open_faulty(dir: &Path, faults: &Arc<Mutex<Faults>>) -> (DataFile, Loaded) {
        let data_faults = faults.clone();
        let journal_faults = faults.clone();
        DataFile::open_with(
            dir,
            Fsync::Always,
            |_| {},
            |file| Faulty {
                file,
                faults: data_faults,
            },
            |path| {
                let file = OpenOptions::new().write(true).open(path)?;
                Ok(Box::new(FaultyJournal {
                    file,
                    faults: journal_faults,
                }))
            },
        )
        .unwrap()
    }

    fn open(dir: &Path) -> (DataFile, Loaded) {
        DataFile::open(dir, Fsync::Always, |_| {}).unwrap()
    }

    fn read_all(file: &DataFile) -> Vec<Record> {
        let mut cursor = file.cursor().unwrap();
        let mut out = Vec::new();
        loop {
            let chunk = cursor.next_chunk(7, usize::MAX).unwrap();
            if chunk.is_empty() {
                return out;
            }
            out.extend(chunk);
        }
    }

    fn appends(prefix: &str, n: usize) -> Vec<Append> {
        (0..n)
            .map(|i| Append::new(format!("{prefix}{i}"), String::new()))
            .collect()
    }

    fn messages(records: &[Record]) -> Vec<String> {
        records.iter().map(|r| r.message.clone()).collect()
    }

    /// Any UTF-8 text survives the file byte for byte, and a reopened file reloads the recent
    /// request ids.
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
        let mut seen = Vec::new();
        let (again, loaded) = DataFile::open(dir.path(), Fsync::Always, |r| seen.push(r)).unwrap();
        assert_eq!(loaded.count, 2);
        assert_eq!(seen, vec![a.clone(), b.clone()]);
        assert_eq!(read_all(&again)[0].message, odd);
    }

    /// `append_many` answers with the batch's records in its order, written contiguously with
    /// one time stamp, whatever other batches run at the same time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn append_many_keeps_order_and_one_write_has_one_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = open(dir.path());
        let tasks: Vec<_> = (0..20)
            .map(|b| {
                let file = file.clone();
                tokio::spawn(async move { file.append_many(appends(&format!("b{b}-"), 50)).await })
            })
            .collect();
        let mut batches = Vec::new();
        for t in tasks {
            batches.push(t.await.unwrap().unwrap());
        }
        let on_disk = read_all(&file);
        assert_eq!(on_disk.len(), 20 * 50);
        for (b, records) in batches.iter().enumerate() {
            let expected: Vec<String> = (0..50).map(|i| format!("b{b}-{i}")).collect();
            assert_eq!(messages(records), expected);
            let stamps: HashSet<&str> = records.iter().map(|r| r.stored_at.as_str()).collect();
            assert_eq!(
                stamps.len(),
                1,
                "one batch, one write, one stamp: {stamps:?}"
            );
            let start = on_disk.iter().position(|r| r.id == records[0].id).unwrap();
            assert_eq!(
                &on_disk[start..start + 50],
                &records[..],
                "written contiguously"
            );
        }
        assert!(on_disk.windows(2).all(|w| w[0].stored_at <= w[1].stored_at));
        assert!(file.append_many(Vec::new()).await.unwrap().is_empty());
    }

    /// Batches that wait while the writer is busy go out together: one write and one sync for
    /// all of them (group commit across callers).
    #[tokio::test]
    async fn batches_waiting_for_the_writer_share_one_write_and_one_sync() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Mutex::new(Faults::default()));
        let (file, _) = open_faulty(dir.path(), &faults);
        let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
        let (release, gate) = std_mpsc::channel();
        {
            let mut f = faults.lock().unwrap();
            f.gate = Some((entered_tx, gate));
            // Opening started the journal with a synced mark.
            f.journal_syncs = 0;
        }
        // A sync is the journal's (the data file's only past its size).
        let syncs = |f: &Faults| f.syncs + f.journal_syncs;

        let first = tokio::spawn({
            let file = file.clone();
            async move { file.append_many(appends("first", 3)).await }
        });
        entered.recv().await.unwrap();
        // The writer is inside the first write: hand over 19 batches (a first poll sends each).
        let mut waiting: Vec<_> = (0..19)
            .map(|b| Box::pin(file.append_many(appends(&format!("w{b}-"), 5))))
            .collect();
        for batch in &mut waiting {
            assert!(batch.now_or_never().is_none());
        }
        {
            let f = faults.lock().unwrap();
            assert_eq!((f.writes, syncs(&f)), (0, 0));
        }
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        let grouped = futures::future::join_all(waiting).await;
        let stamps: HashSet<String> = grouped
            .into_iter()
            .flat_map(|b| b.unwrap().into_iter().map(|r| r.stored_at))
            .collect();
        assert_eq!(stamps.len(), 1);
        let f = faults.lock().unwrap();
        assert_eq!(
            (f.writes, syncs(&f)),
            (2, 2),
            "the 19 waiting batches took one write and one sync"
        );
    }

    /// A write that fails halfway whose rollback fails too is rolled back before the next write:
    /// the next record never follows a torn one, and the file reopens whole.
    #[tokio::test]
    async fn a_failed_rollback_is_retried_before_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Mutex::new(Faults::default()));
        let (file, _) = open_faulty(dir.path(), &faults);
        file.append("a".into(), String::new()).await.unwrap();
        {
            let mut f = faults.lock().unwrap();
            f.torn_writes = 1;
            f.set_len_failures = 1;
        }
        let failed = file.append("torn".repeat(100), String::new()).await;
        assert!(matches!(failed, Err(AppendError::Io(_))), "{failed:?}");
        let path = dir.path().join(FILE_NAME);
        let torn_len = std::fs::metadata(&path).unwrap().len();

        file.append("c".into(), String::new()).await.unwrap();
        assert_eq!(messages(&read_all(&file)), ["a", "c"]);
        assert!(std::fs::metadata(&path).unwrap().len() < torn_len + 10);
        drop(file);
        let (_, loaded) = open(dir.path());
        assert_eq!(loaded.count, 2);
        assert_eq!(loaded.truncated_bytes, 0);
    }

    /// While the rollback keeps failing every batch fails without writing a byte; once the
    /// truncation works the next batch is written after the last good record.
    #[tokio::test]
    async fn a_rollback_that_keeps_failing_fails_the_next_batches_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Mutex::new(Faults::default()));
        let (file, _) = open_faulty(dir.path(), &faults);
        file.append("a".into(), String::new()).await.unwrap();
        {
            let mut f = faults.lock().unwrap();
            f.torn_writes = 1;
            f.set_len_failures = u32::MAX;
        }
        assert!(file.append("torn".into(), String::new()).await.is_err());
        let path = dir.path().join(FILE_NAME);
        let torn = std::fs::read(&path).unwrap();
        for _ in 0..3 {
            let refused = file.append_many(appends("refused", 4)).await;
            assert!(
                matches!(refused, Err(AppendError::RollbackPending(_))),
                "{refused:?}"
            );
            assert_eq!(std::fs::read(&path).unwrap(), torn, "nothing written");
        }
        faults.lock().unwrap().set_len_failures = 0;
        file.append("d".into(), String::new()).await.unwrap();
        assert_eq!(messages(&read_all(&file)), ["a", "d"]);
        drop(file);
        assert_eq!(open(dir.path()).1.count, 2);
    }

    /// A writer thread that dies (here a panic) fails every later append at once with a clear
    /// error, instead of leaving it waiting, and reports the file unhealthy.
    #[tokio::test]
    async fn a_dead_writer_fails_appends_with_a_clear_error_and_turns_unhealthy() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Mutex::new(Faults::default()));
        let (file, _) = open_faulty(dir.path(), &faults);
        let mut healthy = file.healthy();
        assert!(*healthy.borrow_and_update());
        faults.lock().unwrap().panic_on_write = true;
        for _ in 0..2 {
            let err = tokio::time::timeout(
                Duration::from_secs(10),
                file.append("x".into(), String::new()),
            )
            .await
            .expect("an append to a dead writer answers")
            .unwrap_err();
            assert!(matches!(err, AppendError::Closed));
            assert!(err.to_string().contains("writer has stopped"), "{err}");
        }
        // The thread may still be unwinding: wait for the channel to close, false last.
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            while healthy.changed().await.is_ok() {}
        })
        .await;
        assert!(closed.is_ok(), "the health channel closes");
        assert!(!*healthy.borrow());
    }

    /// A torn tail is moved, byte for byte, to `messages.jsonl.corrupt-<time>` with the complete
    /// lines kept; each opening makes its own side file.
    #[tokio::test]
    async fn a_torn_tail_is_moved_to_a_side_file_with_its_bytes_intact() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = open(dir.path());
        file.append("kept".into(), String::new()).await.unwrap();
        drop(file);
        let path = dir.path().join(FILE_NAME);
        let good = std::fs::read(&path).unwrap();
        let mut sides = HashSet::new();
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
            let side = loaded.side_file.expect("a side file");
            assert_eq!(side.parent(), Some(dir.path()));
            let name = side.file_name().unwrap().to_str().unwrap().to_string();
            assert!(name.starts_with("messages.jsonl.corrupt-20"), "{name}");
            assert!(!name.contains(':'), "{name}");
            assert_eq!(std::fs::read(&side).unwrap(), torn);
            assert!(sides.insert(side));
        }
        let (_, clean) = open(dir.path());
        assert_eq!(clean.side_file, None);
    }

    /// An invalid line followed by valid ones is no crash's doing: opening refuses and names the
    /// line, and the file is left as it was.
    #[tokio::test]
    async fn an_invalid_line_before_valid_ones_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let valid =
            r#"{"id":"a","stored_at":"2026-01-01T00:00:00.000Z","message":"m","request_id":""}"#;
        let text = format!("{valid}\ngarbage\n{valid}\n");
        std::fs::write(&path, &text).unwrap();
        match DataFile::open(dir.path(), Fsync::Always, |_| {}) {
            Err(OpenError::Corrupt { line, .. }) => assert_eq!(line, 2),
            other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    /// A cursor reads in chunks bounded by count and bytes, and sees only the records that were
    /// durable when it was made.
    #[tokio::test]
    async fn a_cursor_reads_bounded_chunks_of_what_was_durable_when_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = open(dir.path());
        file.append_many(appends("m", 10)).await.unwrap();
        let mut cursor = file.cursor().unwrap();
        file.append("later".into(), String::new()).await.unwrap();
        assert_eq!(cursor.next_chunk(4, usize::MAX).unwrap().len(), 4);
        // One line is about 120 bytes: a 1-byte budget still yields one record.
        assert_eq!(messages(&cursor.next_chunk(100, 1).unwrap()), ["m4"]);
        assert_eq!(cursor.next_chunk(100, 250).unwrap().len(), 3);
        assert_eq!(cursor.next_chunk(100, usize::MAX).unwrap().len(), 2);
        assert!(cursor.next_chunk(100, usize::MAX).unwrap().is_empty());
    }

    /// Missing folders on the way to the data directory are created.
    #[tokio::test]
    async fn missing_data_folders_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c");
        let (file, _) = open(&deep);
        file.append("m".into(), String::new()).await.unwrap();
        assert!(deep.join(FILE_NAME).exists());
    }

    /// Opens `dir`, appends `batches` batches of `per` messages of about `size` bytes, closes.
    async fn fill(dir: &Path, batches: usize, per: usize, size: usize) -> Vec<u8> {
        let (file, _) = open(dir);
        for b in 0..batches {
            let batch = (0..per)
                .map(|i| Append::new(format!("{b}.{i}:{}", "x".repeat(size)), format!("r{b}.{i}")))
                .collect();
            file.append_many(batch).await.unwrap();
        }
        drop(file);
        std::fs::read(dir.join(FILE_NAME)).unwrap()
    }

    /// What a machine crash does to the data file, whose pages the journal's writes leave
    /// unsynced: the end lost, or a hole of zeros in its place. Every acknowledged byte comes
    /// back from the journal, and nothing is set aside.
    #[tokio::test]
    async fn acknowledged_records_a_machine_crash_took_from_the_data_file_come_back() {
        type Damage = fn(&mut Vec<u8>);
        let damages: [(&str, Damage); 3] = [
            ("end lost", |bytes| bytes.truncate(bytes.len() * 2 / 3)),
            ("hole", |bytes| {
                let len = bytes.len();
                bytes[len * 2 / 3..len - 10].fill(0);
            }),
            ("all lost", |bytes| bytes.clear()),
        ];
        for (what, damage) in damages {
            let dir = tempfile::tempdir().unwrap();
            let good = fill(dir.path(), 50, 4, 60).await;
            let path = dir.path().join(FILE_NAME);
            let mut damaged = good.clone();
            damage(&mut damaged);
            std::fs::write(&path, &damaged).unwrap();
            let (file, loaded) = open(dir.path());
            assert!(
                std::fs::read(&path).unwrap() == good,
                "{what}: not restored"
            );
            assert!(loaded.journal.restored_bytes > 0, "{what}");
            assert_eq!((loaded.count, loaded.truncated_bytes), (200, 0), "{what}");
            assert_eq!(loaded.side_file, None, "{what}");
            assert_eq!(read_all(&file).len(), 200, "{what}");
            drop(file);
            // The data file was synced at opening: the next opening rewrites nothing.
            let (_, loaded) = open(dir.path());
            assert_eq!(loaded.journal.restored_bytes, 0, "{what}");
        }
    }

    /// Many laps of the journal later its tail still covers the last writes, and the data file
    /// was synced behind it as the segments were reused.
    #[tokio::test]
    async fn the_journal_wraps_and_its_tail_still_restores_the_last_writes() {
        let dir = tempfile::tempdir().unwrap();
        let laps = 2 * journal::SEGMENTS * journal::SEGMENT_BYTES;
        let good = fill(dir.path(), 700, 40, 200).await;
        assert!(good.len() as u64 > laps, "{} bytes", good.len());
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, &good[..good.len() - 300_000]).unwrap();
        let (_, loaded) = open(dir.path());
        assert!(std::fs::read(&path).unwrap() == good, "not restored");
        // Whole records are rewritten: the one the cut went through too.
        let restored = loaded.journal.restored_bytes;
        assert!((300_000..400_000).contains(&restored), "{restored}");
        assert_eq!(loaded.count, 28_000);
    }

    /// A write too big for a journal segment is synced in the data file itself and marked in
    /// the journal, so the journal's tail ends past it and nothing of it is set aside.
    #[tokio::test]
    async fn a_write_bigger_than_a_journal_segment_is_synced_in_place_and_marked() {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = open(dir.path());
        let big = "b".repeat(journal::SEGMENT_BYTES as usize / 2);
        file.append_many(vec![
            Append::new(big.clone(), String::new()),
            Append::new(big.clone(), String::new()),
        ])
        .await
        .unwrap();
        drop(file);
        let path = dir.path().join(FILE_NAME);
        let good = std::fs::read(&path).unwrap();
        let (_, loaded) = open(dir.path());
        assert_eq!(loaded.journal.end, Some(good.len() as u64));
        assert_eq!((loaded.count, loaded.truncated_bytes), (2, 0));
        assert!(std::fs::read(&path).unwrap() == good, "changed");
    }

    /// A batch whose journal sync fails is failed and rolled back in both files: it is not in
    /// the data file and the journal never brings it back.
    #[tokio::test]
    async fn a_batch_whose_journal_sync_failed_never_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let faults = Arc::new(Mutex::new(Faults::default()));
        let (file, _) = open_faulty(dir.path(), &faults);
        file.append("a".into(), String::new()).await.unwrap();
        faults.lock().unwrap().journal_sync_failures = 1;
        let failed = file.append("failed".into(), String::new()).await;
        assert!(matches!(failed, Err(AppendError::Io(_))), "{failed:?}");
        file.append("c".into(), String::new()).await.unwrap();
        assert_eq!(messages(&read_all(&file)), ["a", "c"]);
        drop(file);
        let path = dir.path().join(FILE_NAME);
        let good = std::fs::read(&path).unwrap();
        // Even with the data file lost, only what was acknowledged comes back.
        std::fs::write(&path, b"").unwrap();
        let (file, loaded) = open(dir.path());
        assert!(std::fs::read(&path).unwrap() == good, "not restored");
        assert_eq!(messages(&read_all(&file)), ["a", "c"]);
        assert_eq!(loaded.side_file, None);
    }

    /// Past the journal's tail the data file holds only what was never acknowledged: whole
    /// records are kept (a process crash after the write), anything else is set aside.
    #[tokio::test]
    async fn past_the_journals_tail_whole_records_stay_and_the_rest_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let good = fill(dir.path(), 3, 2, 10).await;
        let path = dir.path().join(FILE_NAME);
        let unacknowledged =
            b"{\"id\":\"u\",\"stored_at\":\"t\",\"message\":\"m\",\"request_id\":\"\"}\n";
        let mut bytes = good.clone();
        bytes.extend_from_slice(unacknowledged);
        std::fs::write(&path, &bytes).unwrap();
        let (_, loaded) = open(dir.path());
        assert_eq!((loaded.count, loaded.side_file), (7, None));
        assert_eq!(std::fs::read(&path).unwrap(), bytes);

        // A hole of zeros then a whole record: all of it set aside, byte for byte.
        let dir = tempfile::tempdir().unwrap();
        let good = fill(dir.path(), 3, 2, 10).await;
        let path = dir.path().join(FILE_NAME);
        let mut tail = vec![0u8; 100];
        tail.extend_from_slice(unacknowledged);
        let mut bytes = good.clone();
        bytes.extend_from_slice(&tail);
        std::fs::write(&path, &bytes).unwrap();
        let (_, loaded) = open(dir.path());
        assert_eq!(loaded.count, 6);
        assert_eq!(loaded.truncated_bytes, tail.len() as u64);
        assert_eq!(std::fs::read(loaded.side_file.unwrap()).unwrap(), tail);
        assert_eq!(std::fs::read(&path).unwrap(), good);
    }

    /// Opening with `--fsync never` still replays the journal, then removes it: a journal left
    /// behind would be replayed over whatever a later opening set aside.
    #[tokio::test]
    async fn fsync_never_replays_the_journal_then_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let good = fill(dir.path(), 5, 2, 10).await;
        let path = dir.path().join(FILE_NAME);
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        let (_, loaded) = DataFile::open(dir.path(), Fsync::Never, |_| {}).unwrap();
        assert_eq!(loaded.count, 10);
        assert!(std::fs::read(&path).unwrap() == good, "not restored");
        assert!(!dir.path().join(journal::FILE_NAME).exists());
    }

    /// A data directory that cannot be made is a clear error naming the path.
    #[test]
    fn an_unusable_data_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, "x").unwrap();
        let err = DataFile::open(&not_a_dir.join("data"), Fsync::Always, |_| {})
            .err()
            .unwrap();
        assert!(
            err.to_string().contains(&*not_a_dir.to_string_lossy()),
            "{err}"
        );
    }
}
