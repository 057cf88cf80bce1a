//! Sava's tiered storage: the write-ahead log of reliable topic partitions
//! on local disk, and the object storage tier their sealed segments move to
//! as Parquet.
//!
//! One [`PartitionLog`] per partition owns a directory of segment files
//! ([`record`] documents the batch format byte by byte); one
//! [`GroupCommitter`] per broker fsyncs them all, so a producer's ack means
//! its batch is on disk while many producers share each fsync. Opening a log
//! recovers it: a torn tail from a killed process is cut at the last whole
//! batch, and offsets continue, dense, from there. Retired segment files are
//! reused by later rolls rather than deleted ([`spare`]), which keeps the
//! file system's block allocation and trimming off the fsync path.
//!
//! The [`tier`] offloads sealed segments ([`columnar`] documents the
//! Parquet schema, [`objects`] the key layout), records them in the segment
//! catalog of `sava-metadata`, reads them back for catch-up and replay,
//! compacts small objects and applies retention.
//!
//! Every type here is `Send + Sync`. Appends are cheap and non-blocking
//! (one buffered write); reads and opens block on disk, so the broker runs
//! them on `spawn_blocking`.

pub mod columnar;
pub mod error;
pub mod group_commit;
mod index;
pub mod log;
pub mod metrics;
pub mod objects;
mod read_pool;
pub mod record;
pub mod recovery;
mod seal;
pub mod segment;
mod spare;
pub mod tier;

pub use error::{Error, Result};
pub use group_commit::{
    AppendAck, CommitConfig, CommitStats, FlushObserver, FlushReport, FsyncMode, GroupCommitter,
};
pub use log::{LogConfig, PartitionLog, ReadPlan};
pub use objects::{ObjectStoreConfig, ObjectTier};
pub use read_pool::{Lane, ReadPool};
pub use record::{BatchHeader, FormatError, Record};
pub use recovery::RecoveryReport;
pub use segment::{SegmentDamage, SegmentInfo};
pub use spare::SpareBudget;
pub use tier::{EncodedForUpload, Tier, TierConfig, TierStats};

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn public_types_are_send_and_sync() {
        assert_send_sync::<PartitionLog>();
        assert_send_sync::<GroupCommitter>();
        assert_send_sync::<AppendAck>();
        assert_send_sync::<Error>();
        assert_send_sync::<RecoveryReport>();
    }
}
