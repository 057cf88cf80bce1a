//! The error type of the storage crate.
//!
//! Variants are shaped around what the caller (the broker) can do next:
//! retry later or surface a clear producer error (`DiskFull`), fix its own
//! bookkeeping (`OffsetMismatch`, `PublishTimeRegression`), refuse the input
//! (`RecordTooLarge`, `EmptyBatch`), report damaged data (`Corrupt`), or reopen
//! the partition (`Poisoned`). Byte-level format problems are [`FormatError`]s,
//! kept as the reason of `Corrupt`.

use std::io;
use std::path::{Path, PathBuf};

use crate::record::FormatError;

/// The result type of every fallible storage operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in a storage operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call on the named file or directory failed.
    #[error("i/o error on `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Stored bytes that do not decode. Only the named range is unreadable;
    /// the rest of the partition keeps working.
    #[error("segment `{segment}` is corrupt at byte {position}: {reason}")]
    Corrupt {
        segment: PathBuf,
        position: u64,
        #[source]
        reason: FormatError,
    },

    /// The file system is full (or over quota). Appends fail until space is
    /// freed; reads keep working.
    #[error("disk full writing `{path}`")]
    DiskFull {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The records handed to an append do not start at the log's next offset,
    /// or are not dense.
    #[error("offset mismatch: expected {expected}, got {got}")]
    OffsetMismatch { expected: u64, got: u64 },

    /// A read or lookup outside the offsets the log holds: below its start
    /// offset (deleted by retention) or above its next offset.
    #[error("offset {offset} is outside the log, which holds [{start_offset}, {next_offset})")]
    OffsetOutOfRange {
        offset: u64,
        start_offset: u64,
        next_offset: u64,
    },

    /// A record's publish time is below the one before it.
    #[error("publish time went backwards: {got_ms} ms after {last_ms} ms")]
    PublishTimeRegression { last_ms: u64, got_ms: u64 },

    /// The encoded batch is above `max_batch_bytes`.
    #[error("batch of {bytes} bytes is above the limit of {max} bytes (max_batch_bytes)")]
    RecordTooLarge { bytes: u64, max: u64 },

    /// An append or encode was given no records.
    #[error("batch has no records")]
    EmptyBatch,

    /// An earlier write or fsync of this partition failed, so what is on disk
    /// is unknown. The partition refuses appends until it is reopened, and
    /// recovery then tells what survived.
    #[error("partition `{path}` is unusable after a failed write or sync; reopen it")]
    Poisoned { path: PathBuf },

    /// The group committer was shut down; nothing more is made durable.
    #[error("group committer is closed")]
    Closed,

    /// A read thread's job ended without a result: it panicked (on data it
    /// could not handle), or the read pool was gone.
    #[error("a catch-up read stopped before it finished")]
    ReadAborted,

    /// A Parquet object that cannot be written or read back.
    #[error("parquet object `{object}`: {source}")]
    Parquet {
        object: String,
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// An object store request failed (after its retries).
    #[error("object store {operation} of `{key}` failed: {source}")]
    ObjectStore {
        operation: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },

    /// The segment catalog could not be read or written.
    #[error(transparent)]
    Metadata(#[from] sava_metadata::MetadataError),

    /// An object store location that cannot be used.
    #[error("invalid object store location `{url}`: {reason}")]
    InvalidLocation { url: String, reason: String },

    /// A configuration value outside its allowed range.
    #[error("invalid config `{key}` = {value}: {allowed}")]
    InvalidConfig {
        key: &'static str,
        value: String,
        allowed: &'static str,
    },
}

impl Error {
    /// Wraps an I/O error on `path`, turning "no space left" and "quota
    /// exceeded" into [`Error::DiskFull`].
    pub fn io(path: &Path, source: io::Error) -> Error {
        match source.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Error::DiskFull {
                path: path.to_path_buf(),
                source,
            },
            _ => Error::Io {
                path: path.to_path_buf(),
                source,
            },
        }
    }

    /// Whether this is a full disk, which the broker reports to producers as
    /// a retryable backpressure error rather than a broken partition.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::DiskFull { .. })
    }

    /// A copy for the second and later waiters of a failed fsync, which all
    /// need their own error value (`io::Error` is not `Clone`).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Io { path, source } | Error::DiskFull { path, source } => {
                Error::io(path, io::Error::new(source.kind(), source.to_string()))
            }
            Error::Poisoned { path } => Error::Poisoned { path: path.clone() },
            _ => Error::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;

    use super::*;

    #[test]
    fn no_space_left_maps_to_disk_full() {
        let enospc = io::Error::from_raw_os_error(28);
        let error = Error::io(Path::new("/data/p0"), enospc);

        assert!(error.is_disk_full(), "{error:?}");
        assert_eq!(error.to_string(), "disk full writing `/data/p0`");
    }

    #[test]
    fn writing_to_dev_full_is_reported_as_disk_full() {
        let path = Path::new("/dev/full");
        let Ok(mut file) = OpenOptions::new().write(true).open(path) else {
            return; // not every sandbox has /dev/full
        };

        let error = file
            .write_all(&[0u8; 4096])
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io(path, e))
            .expect_err("/dev/full accepts no bytes");
        assert!(error.is_disk_full(), "{error:?}");
    }

    #[test]
    fn other_io_errors_stay_io_and_name_the_path() {
        let error = Error::io(
            Path::new("/x/y.wal"),
            io::ErrorKind::PermissionDenied.into(),
        );

        assert!(matches!(error, Error::Io { .. }));
        assert!(error.to_string().contains("`/x/y.wal`"));
    }

    #[test]
    fn duplicated_errors_keep_kind_and_path() {
        let error = Error::io(Path::new("/a"), io::Error::from_raw_os_error(28));
        let copy = error.duplicate();

        assert!(copy.is_disk_full());
        assert_eq!(copy.to_string(), error.to_string());
    }
}
