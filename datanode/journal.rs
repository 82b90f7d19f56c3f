//! The write-ahead journal `<data-dir>/messages.journal` of `--fsync always`.
//!
//! Syncing an append to `messages.jsonl` makes the filesystem commit the file's new size with
//! every flush; syncing an overwrite inside a file whose size never changes does not, and costs
//! about a third less wall time and kernel time (`scripts/fsync-cost.py`, docs/bench-notes.md).
//! So with `--fsync always` the writer appends a batch to `messages.jsonl` *without* syncing it,
//! puts the same bytes in a record of this fixed-size journal, and syncs the journal: an
//! acknowledged record is on disk in the journal, and `messages.jsonl` reaches the disk a little
//! later (a background thread syncs it). The data file stays exactly what the SPEC says; the
//! journal only ever holds copies of its recent bytes. Where the filesystem allows, the journal
//! is opened `O_DIRECT | O_DSYNC` (`Direct`): a write rewrites the 4 KiB pages it touches from
//! an aligned buffer and is durable when it returns, with no page cache and no `fdatasync`,
//! cheaper again (`fsync-cost.py`'s layout `direct`).
//!
//! **Layout.** [`SEGMENTS`] segments of [`SEGMENT_BYTES`], written with zeros when the file is
//! made, so later writes only overwrite. A record is a [`HEADER`]-byte header (magic, CRC-32 of
//! the rest, sequence number, offset in `messages.jsonl`, payload length, kind) and its payload:
//! the bytes of `messages.jsonl` at that offset (a *data* record), or nothing (a *mark*: the data
//! file is synced up to that offset). Records follow each other inside a segment and never
//! straddle two; when one does not fit, the writer moves to the start of the next segment, after
//! the last back to the first. A write too big for a segment is synced in the data file itself,
//! then marked.
//!
//! **Reuse.** Overwriting a record loses its copy, so before a segment is written again the data
//! file must be synced past every record the segment held. The writer asks the background thread
//! for that sync each time it enters a segment, a whole journal lap before it needs it, and syncs
//! the data file itself only if that sync has not finished yet.
//!
//! **Recovery** (at opening, whatever `--fsync` says now). The valid records (magic and CRC) whose
//! sequence numbers run on without a gap up to the highest are the journal's tail: each data
//! record is written back at its offset where the data file differs (a machine crash loses
//! unsynced pages; a process crash loses nothing and nothing is rewritten), and the data file is
//! synced. Bytes of the data file past the tail's end were never acknowledged. Each opening then
//! starts the journal over with a mark two sequence numbers past the highest, so records of an
//! earlier run can never join a later tail. With `--fsync never` the journal is removed.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;

use super::data_file::sync_dir;

/// The journal's name inside `--data-dir`.
pub const FILE_NAME: &str = "messages.journal";

/// Bytes a segment holds; a write bigger than this less [`HEADER`] bypasses the journal.
pub const SEGMENT_BYTES: u64 = 1 << 20;

/// Segments in the journal: the file is `SEGMENTS × SEGMENT_BYTES` (4 MiB).
pub const SEGMENTS: u64 = 4;

/// The whole file's length.
const JOURNAL_BYTES: u64 = SEGMENTS * SEGMENT_BYTES;

/// Bytes of a record's header: magic (4), CRC-32 (4) of the rest of the header and the payload,
/// sequence number (8), offset in the data file (8), payload length (4), kind (4).
pub const HEADER: usize = 32;

const MAGIC: [u8; 4] = *b"RGJ1";
const KIND_DATA: u32 = 1;
const KIND_MARK: u32 = 2;

/// The unit of a write to a journal opened `O_DIRECT`.
const PAGE: usize = 4096;

/// The file operations the journal uses: a `File` written through the page cache and synced, or
/// a [`Direct`] one. A trait also so that unit tests can make one of them fail the way a disk
/// does.
pub(crate) trait JournalFile: Send + 'static {
    fn write_at(&mut self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Makes the writes so far durable.
    fn sync_data(&mut self) -> io::Result<()>;
    /// Whether a write must be whole [`PAGE`]s from an aligned buffer (and is durable once done).
    fn pages(&self) -> bool {
        false
    }
}

impl JournalFile for File {
    fn write_at(&mut self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.write_all_at(buf, pos)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }
}

/// The journal opened `O_DIRECT | O_DSYNC`: a write goes to the disk from the caller's buffer and
/// returns once durable, with no page cache and no `fdatasync` (how databases write their logs;
/// `scripts/fsync-cost.py`'s layout `direct`).
pub(crate) struct Direct(File);

impl JournalFile for Direct {
    fn write_at(&mut self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn pages(&self) -> bool {
        true
    }
}

/// Opens the journal at `path` [`Direct`] if the filesystem takes aligned page writes that way
/// (tried on its first page, which [`Journal::start`] writes next anyway), else through the page
/// cache (tmpfs refuses `O_DIRECT`).
pub(crate) fn open_file(path: &Path) -> io::Result<Box<dyn JournalFile>> {
    use std::os::unix::fs::OpenOptionsExt;
    let direct = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(path)
        .and_then(|file| {
            let zeros = vec![0u8; 2 * PAGE];
            let at = zeros.as_ptr().align_offset(PAGE);
            file.write_all_at(&zeros[at..at + PAGE], 0)?;
            Ok(file)
        });
    match direct {
        Ok(file) => Ok(Box::new(Direct(file))),
        Err(e) => {
            tracing::info!(path = %path.display(), error = %e, "the journal is written through the page cache and synced: this filesystem does not take O_DIRECT writes");
            Ok(Box::new(OpenOptions::new().write(true).open(path)?))
        }
    }
}

/// A record found in the journal.
struct Found {
    seq: u64,
    offset: u64,
    kind: u32,
    payload: std::ops::Range<usize>,
}

impl Found {
    /// Where the data file ends once this record is in it.
    fn end(&self) -> u64 {
        self.offset + self.payload.len() as u64
    }
}

/// What [`recover`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// The highest sequence number of any valid record (the next run starts past it).
    pub max_seq: Option<u64>,
    /// Where the journal's tail says the acknowledged part of the data file ends, if it has one.
    pub end: Option<u64>,
    /// Records in the tail.
    pub records: u64,
    /// Bytes the data file had lost and the journal wrote back.
    pub restored_bytes: u64,
}

/// Replays `<dir>/messages.journal`, if there is one, into `data` (the data file, opened for
/// reading and writing), then syncs `data`. Blocking.
pub fn recover(dir: &Path, data: &File) -> io::Result<Recovered> {
    let mut image = Vec::new();
    match File::open(dir.join(FILE_NAME)) {
        Ok(mut f) => {
            Read::by_ref(&mut f)
                .take(JOURNAL_BYTES)
                .read_to_end(&mut image)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Recovered::default()),
        Err(e) => return Err(e),
    }
    let mut found = Vec::new();
    for start in (0..image.len()).step_by(SEGMENT_BYTES as usize) {
        let end = (start + SEGMENT_BYTES as usize).min(image.len());
        let mut pos = start;
        // Records of a segment are contiguous from its start: the first invalid one ends it
        // (what follows is padding or an older lap, already synced in the data file).
        while let Some(record) = parse(&image[..end], pos) {
            pos = record.payload.end;
            found.push(record);
        }
    }
    let mut recovered = Recovered {
        max_seq: found.iter().map(|r| r.seq).max(),
        ..Recovered::default()
    };
    found.sort_unstable_by_key(|r| r.seq);
    // The tail: from the highest sequence number down, as long as none is missing.
    let mut first = found.len();
    while first > 0 && (first == found.len() || found[first - 1].seq + 1 == found[first].seq) {
        first -= 1;
    }
    let tail = &found[first..];
    let mut existing = Vec::new();
    for record in tail.iter().filter(|r| r.kind == KIND_DATA) {
        let bytes = &image[record.payload.clone()];
        existing.clear();
        existing.resize(bytes.len(), 0);
        let got = read_at_most(data, &mut existing, record.offset)?;
        if got < bytes.len() || existing != bytes {
            data.write_all_at(bytes, record.offset)?;
            recovered.restored_bytes += bytes.len() as u64;
        }
    }
    recovered.end = tail.last().map(Found::end);
    recovered.records = tail.len() as u64;
    data.sync_data()?;
    Ok(recovered)
}

/// Reads into `buf` from `pos` until it is full or the file ends; returns the bytes read.
fn read_at_most(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], pos + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// The record at `pos` of `image`, if a whole valid one is there.
fn parse(image: &[u8], pos: usize) -> Option<Found> {
    let header = image.get(pos..pos.checked_add(HEADER)?)?;
    if header[..4] != MAGIC {
        return None;
    }
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let len = u32_at(24) as usize;
    let payload = pos + HEADER..(pos + HEADER).checked_add(len)?;
    let body = image.get(payload.clone())?;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&header[8..]);
    crc.update(body);
    let kind = u32_at(28);
    let valid =
        crc.finalize() == u32_at(4) && (kind == KIND_DATA || (kind == KIND_MARK && len == 0));
    valid.then(|| Found {
        seq: u64_at(8),
        offset: u64_at(16),
        kind,
        payload,
    })
}

/// The header of a record.
fn header(seq: u64, offset: u64, kind: u32, payload: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..4].copy_from_slice(&MAGIC);
    h[8..16].copy_from_slice(&seq.to_le_bytes());
    h[16..24].copy_from_slice(&offset.to_le_bytes());
    let len = u32::try_from(payload.len()).expect("a record fits a segment");
    h[24..28].copy_from_slice(&len.to_le_bytes());
    h[28..32].copy_from_slice(&kind.to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h[8..]);
    crc.update(payload);
    h[4..8].copy_from_slice(&crc.finalize().to_le_bytes());
    h
}

/// Removes `<dir>/messages.journal` if it is there (the writer no longer uses it), durably.
pub fn remove(dir: &Path) -> io::Result<bool> {
    match std::fs::remove_file(dir.join(FILE_NAME)) {
        Ok(()) => {
            sync_dir(dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// A record written but not synced yet.
struct Pending {
    pos: u64,
    /// Where the next record goes once this one is synced.
    next: u64,
    /// Where the data file ends with this record.
    data_end: u64,
}

/// The writer's journal: where the next record goes and what each segment needs synced before
/// it is reused.
pub(crate) struct Journal {
    file: Box<dyn JournalFile>,
    /// Where the next record goes.
    pos: u64,
    /// The next record's sequence number.
    seq: u64,
    /// Per segment: how far the data file must be synced before the segment is written again
    /// (the end of the last record written in it).
    needs: [u64; SEGMENTS as usize],
    /// How far the background thread has synced the data file.
    synced: Arc<AtomicU64>,
    /// Asks the background thread to sync the data file up to (at least) a length.
    syncer: std_mpsc::Sender<u64>,
    pending: Option<Pending>,
    /// Reused record buffer: header and payload go out in one write.
    record: Vec<u8>,
    /// For a file that takes whole pages: the committed bytes of the page `pos` is in (from its
    /// start to `pos`), written again in front of the next record.
    tail: Vec<u8>,
    /// For a file that takes whole pages: room for a segment and a page on each side, used from
    /// `staging_at` on, which is page-aligned in memory.
    staging: Vec<u8>,
    staging_at: usize,
}

impl Journal {
    /// Makes `<dir>/messages.journal` if it is missing or not the right size (zeros, synced,
    /// then renamed into place), opens it with `open` ([`open_file`]) and starts it over with a
    /// mark past `recovered`'s records. `data` is a handle on the data file for the background
    /// sync thread; the data file must be synced up to `data_len` already. Blocking.
    pub fn start(
        dir: &Path,
        recovered: &Recovered,
        data: File,
        data_len: u64,
        open: impl FnOnce(&Path) -> io::Result<Box<dyn JournalFile>>,
    ) -> io::Result<Self> {
        let path = dir.join(FILE_NAME);
        let fits = std::fs::metadata(&path).is_ok_and(|m| m.len() == JOURNAL_BYTES);
        if !fits {
            let fresh = dir.join(format!("{FILE_NAME}.new"));
            let result = (|| {
                let mut f = File::create(&fresh)?;
                let zeros = vec![0u8; SEGMENT_BYTES as usize];
                for _ in 0..SEGMENTS {
                    f.write_all(&zeros)?;
                }
                f.sync_all()?;
                std::fs::rename(&fresh, &path)?;
                sync_dir(dir)
            })();
            if let Err(e) = result {
                let _ = std::fs::remove_file(&fresh);
                return Err(e);
            }
        }
        let file = open(&path)?;
        let staging = if file.pages() {
            vec![0u8; SEGMENT_BYTES as usize + 3 * PAGE]
        } else {
            Vec::new()
        };
        let staging_at = staging.as_ptr().align_offset(PAGE);
        let synced = Arc::new(AtomicU64::new(data_len));
        let (syncer, asks) = std_mpsc::channel::<u64>();
        let done = synced.clone();
        std::thread::Builder::new()
            .name("data file sync".into())
            .spawn(move || {
                // Ends when the journal (the sender) is dropped.
                while let Ok(mut upto) = asks.recv() {
                    while let Ok(later) = asks.try_recv() {
                        upto = later;
                    }
                    match data.sync_data() {
                        Ok(()) => {
                            done.fetch_max(upto, Ordering::AcqRel);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "background sync of the data file failed; the writer syncs it itself when it must")
                        }
                    }
                }
            })?;
        let mut journal = Self {
            file,
            pos: 0,
            // Two past the highest: the sequence number in between is never written, so no
            // record of an earlier run continues this run's tail.
            seq: recovered.max_seq.map_or(0, |max| max + 2),
            needs: [0; SEGMENTS as usize],
            synced,
            syncer,
            pending: None,
            record: Vec::new(),
            tail: Vec::new(),
            staging,
            staging_at,
        };
        journal.mark(data_len)?;
        Ok(journal)
    }

    /// Whether a write of `len` bytes goes through the journal (else: [`Self::mark`]).
    pub fn fits(len: usize) -> bool {
        (HEADER + len) as u64 <= SEGMENT_BYTES
    }

    /// Writes a data record of `bytes`, which the data file holds from `offset` (written, not
    /// synced). `data` is the data file, synced here only if a segment must be reused before
    /// the background thread got to it. Durable after [`Self::sync`].
    pub fn write(
        &mut self,
        offset: u64,
        bytes: &[u8],
        data: &mut dyn FnMut() -> io::Result<()>,
    ) -> io::Result<()> {
        debug_assert!(Self::fits(bytes.len()));
        self.put(offset, KIND_DATA, bytes, data)
    }

    /// Syncs the journal: the record written last is durable.
    pub fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()?;
        if let Some(p) = self.pending.take() {
            self.needs[(p.pos / SEGMENT_BYTES) as usize] = p.data_end;
            if self.file.pages() {
                // The new last page's committed bytes, from what was just written.
                let span = p.pos - self.tail.len() as u64;
                let from = self.staging_at + (p.next - p.next % PAGE as u64 - span) as usize;
                let to = self.staging_at + (p.next - span) as usize;
                self.tail.clear();
                self.tail.extend_from_slice(&self.staging[from..to]);
            }
            self.pos = p.next;
            self.seq += 1;
        }
        Ok(())
    }

    /// Records, durably, that the data file is synced up to `data_len` (after a write too big
    /// for the journal was synced in the data file itself).
    pub fn mark(&mut self, data_len: u64) -> io::Result<()> {
        self.synced.fetch_max(data_len, Ordering::AcqRel);
        let mut already = || Ok(());
        self.put(data_len, KIND_MARK, &[], &mut already)?;
        self.sync()
    }

    /// Undoes a record written but not synced (its write or sync failed): its header is zeroed
    /// and synced, so it cannot be replayed over whatever the data file holds there next.
    pub fn discard(&mut self) -> io::Result<()> {
        if let Some(p) = &self.pending {
            self.write_span(p.pos, &[&[0u8; HEADER]])?;
            self.file.sync_data()?;
            self.pending = None;
        }
        Ok(())
    }

    /// Writes `parts` at `pos`, the end of the committed records: as they are, or, for a file
    /// that takes whole pages, after the committed bytes of `pos`'s page and padded with zeros
    /// to the page's end. (Those bytes are written again as they were, so a write torn by a
    /// crash leaves them whole either way.)
    fn write_span(&mut self, pos: u64, parts: &[&[u8]]) -> io::Result<()> {
        if !self.file.pages() {
            self.record.clear();
            for part in parts {
                self.record.extend_from_slice(part);
            }
            return self.file.write_at(&self.record, pos);
        }
        let start = pos - self.tail.len() as u64;
        debug_assert_eq!(start % PAGE as u64, 0, "the tail starts a page");
        let len = self.tail.len() + parts.iter().map(|p| p.len()).sum::<usize>();
        let buf = &mut self.staging[self.staging_at..self.staging_at + len.div_ceil(PAGE) * PAGE];
        let mut at = 0;
        for part in std::iter::once(&self.tail[..]).chain(parts.iter().copied()) {
            buf[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        buf[at..].fill(0);
        self.file.write_at(buf, start)
    }

    fn put(
        &mut self,
        offset: u64,
        kind: u32,
        payload: &[u8],
        sync_data: &mut dyn FnMut() -> io::Result<()>,
    ) -> io::Result<()> {
        // A failed record not discarded yet would be overwritten with the same sequence number:
        // discarding it first keeps its bytes from ever being taken for this one.
        self.discard()?;
        let len = (HEADER + payload.len()) as u64;
        let mut pos = self.pos % JOURNAL_BYTES;
        let data_end = offset + payload.len() as u64;
        if pos % SEGMENT_BYTES == 0 || pos / SEGMENT_BYTES != (pos + len - 1) / SEGMENT_BYTES {
            // Entering a segment: what it held from the last lap must be in the data file.
            if pos % SEGMENT_BYTES != 0 {
                pos = (pos / SEGMENT_BYTES + 1) * SEGMENT_BYTES % JOURNAL_BYTES;
            }
            let need = self.needs[(pos / SEGMENT_BYTES) as usize];
            if self.synced.load(Ordering::Acquire) < need {
                sync_data()?;
                self.synced.fetch_max(data_end, Ordering::AcqRel);
            }
            self.needs[(pos / SEGMENT_BYTES) as usize] = 0;
            // Ask now for the sync this segment's records will need a lap from now.
            let _ = self.syncer.send(data_end);
            self.pos = pos;
            self.tail.clear();
        }
        let head = header(self.seq, offset, kind, payload);
        self.pending = Some(Pending {
            pos,
            next: pos + len,
            data_end,
        });
        self.write_span(pos, &[&head, payload])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data file and a journal of `lines` written at its end, one record a line.
    fn run(dir: &Path, data: &File, recovered: &Recovered, lines: &[&str]) -> u64 {
        let mut len = data.metadata().unwrap().len();
        let mut journal =
            Journal::start(dir, recovered, data.try_clone().unwrap(), len, open_file).unwrap();
        for line in lines {
            data.write_all_at(line.as_bytes(), len).unwrap();
            journal
                .write(len, line.as_bytes(), &mut || {
                    unreachable!("no segment reused")
                })
                .unwrap();
            journal.sync().unwrap();
            len += line.len() as u64;
        }
        len
    }

    fn data_file(dir: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("data"))
            .unwrap()
    }

    /// Each run starts two sequence numbers past the last: the records an earlier run left in
    /// the journal are never part of a later run's tail.
    #[test]
    fn records_of_an_earlier_run_never_join_a_later_tail() {
        let dir = tempfile::tempdir().unwrap();
        let data = data_file(dir.path());
        let end = run(
            dir.path(),
            &data,
            &Recovered::default(),
            &["a\n", "bb\n", "ccc\n"],
        );
        let first = recover(dir.path(), &data).unwrap();
        assert_eq!(
            (first.records, first.end, first.max_seq),
            (4, Some(end), Some(3))
        );

        let end = run(dir.path(), &data, &first, &["dd\n"]);
        let second = recover(dir.path(), &data).unwrap();
        assert_eq!(
            (second.records, second.end, second.max_seq),
            (2, Some(end), Some(6)),
            "the mark (5) and dd (6); 4 was never written"
        );
        assert_eq!(
            std::fs::read(dir.path().join("data")).unwrap(),
            b"a\nbb\nccc\ndd\n"
        );
    }

    /// A record whose bytes do not match its CRC (a write torn by a crash) ends the tail, and
    /// is not replayed.
    #[test]
    fn a_torn_record_ends_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let data = data_file(dir.path());
        run(
            dir.path(),
            &data,
            &Recovered::default(),
            &["one\n", "two\n"],
        );
        let journal = OpenOptions::new()
            .write(true)
            .open(dir.path().join(FILE_NAME))
            .unwrap();
        // The second data record's payload starts after the mark and the first record.
        let second = (HEADER + HEADER + "one\n".len() + HEADER) as u64;
        journal.write_all_at(b"X", second).unwrap();
        data.set_len(0).unwrap();
        let recovered = recover(dir.path(), &data).unwrap();
        assert_eq!((recovered.records, recovered.end), (2, Some(4)));
        assert_eq!(std::fs::read(dir.path().join("data")).unwrap(), b"one\n");
    }

    /// Where the filesystem takes `O_DIRECT` (ext4 and xfs do, tmpfs does not), the journal
    /// is written that way, and records of every size, each rewriting the page the last one
    /// ended in, all come back.
    #[test]
    fn records_written_direct_page_by_page_all_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let probe = dir.path().join("probe");
        std::fs::write(&probe, [0u8; PAGE]).unwrap();
        let file = open_file(&probe).unwrap();
        if !file.pages() {
            eprintln!("skipped: {} does not take O_DIRECT", dir.path().display());
            return;
        }
        let data = data_file(dir.path());
        let lines: Vec<String> = (0..300)
            .map(|i| format!("{}\n", "y".repeat(i * 37 % 5000)))
            .collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let end = run(dir.path(), &data, &Recovered::default(), &lines);
        let written = std::fs::read(dir.path().join("data")).unwrap();
        data.set_len(0).unwrap();
        let recovered = recover(dir.path(), &data).unwrap();
        assert_eq!((recovered.records, recovered.end), (301, Some(end)));
        assert!(std::fs::read(dir.path().join("data")).unwrap() == written);
    }

    /// Random bytes never parse as a record, and no header can make the parser read past the
    /// image or overflow.
    #[test]
    fn garbage_is_never_a_record() {
        let mut image = vec![0u8; 4096];
        for (i, b) in image.iter_mut().enumerate() {
            *b = (i * 7919 % 251) as u8;
        }
        image[..4].copy_from_slice(&MAGIC);
        image[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!((0..image.len()).all(|pos| parse(&image, pos).is_none()));
    }
}
