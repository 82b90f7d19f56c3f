//! [`LogFile`]: an append-only text log (the headnode's registro and heartbeat logs, the client's
//! log) written by a thread of its own, so the async runtime never blocks on the disk.
//!
//! Lines are buffered and written in batches: the writer flushes whenever its queue is empty, then
//! lingers a moment before looking again, so under load it is not woken once per line (a futex
//! wake and a context switch each). A line reaches the file within about [`LINGER`] of being
//! logged, and [`LogFile::sync`] waits until everything logged before it is written and synced.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// How long the writer waits after a flush before it takes the next batch.
pub const LINGER: Duration = Duration::from_millis(2);

enum Command {
    Line(String),
    Sync(oneshot::Sender<io::Result<()>>),
}

/// A handle to an append-only log file. Cheap to clone; the writer thread ends, after flushing,
/// when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct LogFile {
    tx: mpsc::UnboundedSender<Command>,
    path: PathBuf,
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
        Ok(Self { tx, path })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line; `line` must not contain a newline (callers format fields so it cannot).
    pub fn line(&self, line: String) {
        // The writer only stops when every handle is gone, so this cannot fail while `self` lives.
        let _ = self.tx.send(Command::Line(line));
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
}

fn write_loop(file: File, path: &Path, mut rx: mpsc::UnboundedReceiver<Command>) {
    let mut out = BufWriter::new(file);
    let mut failed = false;
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(command) = next {
            match command {
                Command::Line(mut line) => {
                    line.push('\n');
                    if let Err(e) = out.write_all(line.as_bytes()) {
                        report(path, &e, &mut failed);
                    }
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
}
