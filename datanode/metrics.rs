//! The datanode's own metrics, recorded by the data file's writer thread once per write (not per
//! message), so they cost nothing a Store would notice:
//!
//! - `registro_stored_total`: records written (and, with `--fsync always`, synced);
//! - `registro_fsync_seconds`: how long each `fdatasync` took;
//! - `registro_batch_messages`: records per write, i.e. per group commit;
//! - `registro_data_file_bytes`: the data file's length in complete records.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of `registro_fsync_seconds`: a fast SSD syncs in well under a
/// millisecond, a busy disk in tens, a failing one in seconds.
const FSYNC_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Upper bounds of `registro_batch_messages`: 1, 2, 4, … up to the writer's largest batch.
const BATCH_BUCKETS: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0,
];

/// The data file's metrics. Cheap to clone: every clone records into the same series.
#[derive(Clone, Debug)]
pub struct DataFileMetrics {
    stored: Counter,
    fsync_seconds: Histogram,
    batch_messages: Histogram,
    file_bytes: Gauge,
}

impl Default for DataFileMetrics {
    fn default() -> Self {
        Self {
            stored: Counter::default(),
            fsync_seconds: Histogram::new(FSYNC_BUCKETS),
            batch_messages: Histogram::new(BATCH_BUCKETS),
            file_bytes: Gauge::default(),
        }
    }
}

impl DataFileMetrics {
    /// Adds these series to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "registro_stored",
            "Messages written to the data file (and synced, with --fsync always)",
            self.stored.clone(),
        );
        registry.register(
            "registro_fsync_seconds",
            "Time one fdatasync of the data file took",
            self.fsync_seconds.clone(),
        );
        registry.register(
            "registro_batch_messages",
            "Messages per write of the data file: how many one group commit carried",
            self.batch_messages.clone(),
        );
        registry.register(
            "registro_data_file_bytes",
            "Length of the data file in complete records",
            self.file_bytes.clone(),
        );
    }

    /// Runs `sync` (one fdatasync) and records how long it took.
    pub fn time_fsync<T>(&self, sync: impl FnOnce() -> T) -> T {
        let start = std::time::Instant::now();
        let result = sync();
        self.fsync_seconds.observe(start.elapsed().as_secs_f64());
        result
    }

    /// Records one successful write of `messages` records that left the file `file_bytes` long.
    pub fn written(&self, messages: usize, file_bytes: u64) {
        self.stored.inc_by(messages as u64);
        self.batch_messages.observe(messages as f64);
        self.file_length(file_bytes);
    }

    /// Records the file's length (at open, after a write).
    pub fn file_length(&self, file_bytes: u64) {
        self.file_bytes
            .set(i64::try_from(file_bytes).unwrap_or(i64::MAX));
    }
}
