//! The record and batch format of WAL segments: the one encoder and decoder.
//!
//! Stateless functions; the partition log calls [`encode_batch`] under its lock
//! with a reused buffer, readers call [`decode_batch`] on bytes read with
//! `pread`, and the payloads they get back are slices of that read buffer.
//! Every integer is little-endian. Nothing here panics on bad bytes: malformed
//! input is a [`FormatError`].
//!
//! A segment file is a sequence of batches. A batch:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | magic, the ASCII bytes `SAVB` |
//! | 4 | format version, `1` |
//! | 5 | flags, `0` (reserved; readers reject other values) |
//! | 6..8 | reserved, `0` |
//! | 8..12 | `u32` batch length: every byte of the batch, header included |
//! | 12..16 | `u32` CRC32C (Castagnoli) of bytes `16..length` |
//! | 16..24 | `u64` base offset: the offset of the first record |
//! | 24..28 | `u32` record count, at least 1 |
//! | 28..36 | `u64` publish time of the first record (ms since the Unix epoch) |
//! | 36..44 | `u64` publish time of the last record |
//! | 44.. | the records, `record count` times |
//!
//! Offsets inside a batch are dense: record `i` has offset `base offset + i`,
//! so records do not store it. A record:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0..4 | `u32` record length: bytes after this field |
//! | 4..12 | `u64` publish time (ms) |
//! | 12..20 | `u64` producer id |
//! | 20 | presence flags: bit 0 key, bit 1 schema id, bit 2 schema version |
//! | 21..25 | `u32` producer name length `n`, then `n` bytes of UTF-8 |
//! | | if bit 0: `u32` key length `k`, then `k` bytes of UTF-8 |
//! | | if bit 1: `u64` schema id |
//! | | if bit 2: `u32` schema version |
//! | | `u32` attribute count; per attribute `u32` name length, name, `u32` value length, value (UTF-8) |
//! | | `u32` payload length `p`, then `p` payload bytes; the record ends there exactly |
//!
//! The magic, version, flags and length are checked by value; everything after
//! the CRC is covered by it, so a torn or flipped batch fails to decode.

use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};

/// The first four bytes of every batch.
pub const BATCH_MAGIC: [u8; 4] = *b"SAVB";
/// The batch format this code writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Bytes of the batch header, before the first record.
pub const BATCH_HEADER_LEN: usize = 44;
/// Bytes of the smallest record: every field present but empty.
pub const MIN_RECORD_LEN: usize = 4 + 8 + 8 + 1 + 4 + 4 + 4;

const CRC_START: usize = 16;
const FLAG_KEY: u8 = 1;
const FLAG_SCHEMA_ID: u8 = 1 << 1;
const FLAG_SCHEMA_VERSION: u8 = 1 << 2;
const KNOWN_FLAGS: u8 = FLAG_KEY | FLAG_SCHEMA_ID | FLAG_SCHEMA_VERSION;

/// One message of a partition, as the log stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    pub publish_time_ms: u64,
    pub producer_id: u64,
    /// Shared by the records of one producer, so copies of a record do not
    /// copy it.
    pub producer_name: Arc<str>,
    pub key: Option<String>,
    pub attributes: Vec<(String, String)>,
    pub schema_id: Option<u64>,
    pub schema_version: Option<u32>,
    pub payload: Bytes,
}

impl Record {
    /// Bytes this record takes inside a batch, its length field included.
    pub fn encoded_len(&self) -> usize {
        let key = self.key.as_ref().map_or(0, |key| 4 + key.len());
        let schema_id = if self.schema_id.is_some() { 8 } else { 0 };
        let schema_version = if self.schema_version.is_some() { 4 } else { 0 };
        let attributes: usize = self
            .attributes
            .iter()
            .map(|(name, value)| 8 + name.len() + value.len())
            .sum();

        MIN_RECORD_LEN
            + self.producer_name.len()
            + key
            + schema_id
            + schema_version
            + attributes
            + self.payload.len()
    }
}

/// What a byte-level check of a batch or index found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Fewer bytes than the batch says it has: a torn write at the tail.
    #[error("batch is cut short: {needed} bytes needed, {available} available")]
    Truncated { needed: u64, available: u64 },

    #[error("bad batch magic {found:02x?}")]
    BadMagic { found: [u8; 4] },

    #[error("unsupported batch format version {version}")]
    UnsupportedVersion { version: u8 },

    #[error("bad batch header: {what}")]
    BadHeader { what: &'static str },

    #[error("batch checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },

    #[error("malformed record {index} of the batch: {what}")]
    BadRecord { index: u32, what: &'static str },

    /// A whole, checksummed batch that does not continue the offsets before it.
    #[error("batch starts at offset {found} where {expected} was expected")]
    OffsetGap { expected: u64, found: u64 },

    /// A whole, checksummed batch whose publish time is below the one before.
    #[error("publish time {got_ms} ms follows {last_ms} ms")]
    PublishTimeRegression { last_ms: u64, got_ms: u64 },

    #[error("bad index file: {what}")]
    BadIndex { what: &'static str },
}

impl FormatError {
    /// True for a whole batch that passed its checksum but does not fit the
    /// log around it: a writer bug, not a torn or flipped write.
    pub fn is_inconsistent(&self) -> bool {
        matches!(
            self,
            FormatError::OffsetGap { .. } | FormatError::PublishTimeRegression { .. }
        )
    }
}

/// The fixed-size head of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub length: u32,
    pub crc: u32,
    pub base_offset: u64,
    pub record_count: u32,
    pub first_publish_time_ms: u64,
    pub last_publish_time_ms: u64,
}

impl BatchHeader {
    /// Parses and structurally checks the first [`BATCH_HEADER_LEN`] bytes of
    /// `bytes`. The checksum and the header's own values are checked by
    /// [`verify_batch`], once the whole batch is at hand.
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, FormatError> {
        let Some(head) = bytes.get(..BATCH_HEADER_LEN) else {
            return Err(FormatError::Truncated {
                needed: BATCH_HEADER_LEN as u64,
                available: bytes.len() as u64,
            });
        };

        let magic = [head[0], head[1], head[2], head[3]];
        if magic != BATCH_MAGIC {
            return Err(FormatError::BadMagic { found: magic });
        }
        if head[4] != FORMAT_VERSION {
            return Err(FormatError::UnsupportedVersion { version: head[4] });
        }
        if head[5] != 0 || head[6] != 0 || head[7] != 0 {
            return Err(FormatError::BadHeader {
                what: "reserved bytes are not zero",
            });
        }

        let header = BatchHeader {
            length: le_u32(head, 8),
            crc: le_u32(head, 12),
            base_offset: le_u64(head, 16),
            record_count: le_u32(head, 24),
            first_publish_time_ms: le_u64(head, 28),
            last_publish_time_ms: le_u64(head, 36),
        };
        if (header.length as usize) < BATCH_HEADER_LEN + MIN_RECORD_LEN {
            return Err(FormatError::BadHeader {
                what: "length is below the smallest batch",
            });
        }
        Ok(header)
    }

    /// Bytes of the whole batch.
    pub fn len(&self) -> usize {
        self.length as usize
    }

    /// Always false: a batch holds at least one record.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The offset after the batch's last record.
    pub fn next_offset(&self) -> u64 {
        self.base_offset + u64::from(self.record_count)
    }
}

/// The encoded size of a batch of `records`.
pub fn encoded_batch_len(records: &[Record]) -> u64 {
    let records: usize = records.iter().map(Record::encoded_len).sum();
    (BATCH_HEADER_LEN + records) as u64
}

/// Encodes `records` as one batch into `out`, which is cleared first and
/// reused across calls so encoding allocates only when a batch outgrows it.
///
/// The records must have dense offsets and non-decreasing publish times.
pub fn encode_batch(records: &[Record], out: &mut Vec<u8>) -> Result<BatchHeader> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Err(Error::EmptyBatch);
    };

    // Check everything before copying a byte.
    let length = encoded_batch_len(records);
    let (Ok(length), Ok(record_count)) = (u32::try_from(length), u32::try_from(records.len()))
    else {
        return Err(Error::RecordTooLarge {
            bytes: length,
            max: u64::from(u32::MAX),
        });
    };
    check_order(records)?;

    let header = BatchHeader {
        length,
        crc: 0,
        base_offset: first.offset,
        record_count,
        first_publish_time_ms: first.publish_time_ms,
        last_publish_time_ms: last.publish_time_ms,
    };
    out.clear();
    out.reserve(header.len());
    out.extend_from_slice(&BATCH_MAGIC);
    out.extend_from_slice(&[FORMAT_VERSION, 0, 0, 0]);
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&header.base_offset.to_le_bytes());
    out.extend_from_slice(&record_count.to_le_bytes());
    out.extend_from_slice(&header.first_publish_time_ms.to_le_bytes());
    out.extend_from_slice(&header.last_publish_time_ms.to_le_bytes());

    for record in records {
        encode_record(record, out);
    }
    debug_assert_eq!(
        out.len(),
        header.len(),
        "encoded_len disagrees with the encoder"
    );

    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    Ok(BatchHeader { crc, ..header })
}

fn check_order(records: &[Record]) -> Result<()> {
    let base = records[0].offset;
    let mut last_ms = records[0].publish_time_ms;
    for (i, record) in records.iter().enumerate() {
        let expected = base + i as u64;
        if record.offset != expected {
            return Err(Error::OffsetMismatch {
                expected,
                got: record.offset,
            });
        }
        if record.publish_time_ms < last_ms {
            return Err(Error::PublishTimeRegression {
                last_ms,
                got_ms: record.publish_time_ms,
            });
        }
        last_ms = record.publish_time_ms;
    }
    Ok(())
}

fn encode_record(record: &Record, out: &mut Vec<u8>) {
    // Every length fits in u32: encode_batch checked the whole batch does.
    let put_str = |out: &mut Vec<u8>, text: &str| {
        out.extend_from_slice(&(text.len() as u32).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    };
    let mut flags = 0;
    if record.key.is_some() {
        flags |= FLAG_KEY;
    }
    if record.schema_id.is_some() {
        flags |= FLAG_SCHEMA_ID;
    }
    if record.schema_version.is_some() {
        flags |= FLAG_SCHEMA_VERSION;
    }

    let body_len = (record.encoded_len() - 4) as u32;
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&record.publish_time_ms.to_le_bytes());
    out.extend_from_slice(&record.producer_id.to_le_bytes());
    out.push(flags);
    put_str(out, &record.producer_name);

    if let Some(key) = &record.key {
        put_str(out, key);
    }
    if let Some(schema_id) = record.schema_id {
        out.extend_from_slice(&schema_id.to_le_bytes());
    }
    if let Some(schema_version) = record.schema_version {
        out.extend_from_slice(&schema_version.to_le_bytes());
    }

    out.extend_from_slice(&(record.attributes.len() as u32).to_le_bytes());
    for (name, value) in &record.attributes {
        put_str(out, name);
        put_str(out, value);
    }
    out.extend_from_slice(&(record.payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&record.payload);
}

/// Checks the batch at the start of `bytes` (its header, length and
/// checksum) without decoding its records. `bytes` may run past the batch.
pub fn verify_batch(bytes: &[u8]) -> Result<BatchHeader, FormatError> {
    let header = BatchHeader::parse(bytes)?;
    let Some(batch) = bytes.get(..header.len()) else {
        return Err(FormatError::Truncated {
            needed: u64::from(header.length),
            available: bytes.len() as u64,
        });
    };

    let computed = crc32c::crc32c(&batch[CRC_START..]);
    if computed != header.crc {
        return Err(FormatError::ChecksumMismatch {
            stored: header.crc,
            computed,
        });
    }

    // Values the checksum vouches for, but a buggy writer could still get wrong.
    if header.record_count == 0 {
        return Err(FormatError::BadHeader { what: "no records" });
    }
    if header.first_publish_time_ms > header.last_publish_time_ms {
        return Err(FormatError::BadHeader {
            what: "first publish time is after the last",
        });
    }
    if header
        .base_offset
        .checked_add(u64::from(header.record_count))
        .is_none()
    {
        return Err(FormatError::BadHeader {
            what: "offsets overflow u64",
        });
    }
    Ok(header)
}

/// Decodes the batch at the start of `bytes` (which may run past it).
///
/// Payloads are slices of `bytes`: no payload is copied, and the records keep
/// the buffer alive.
pub fn decode_batch(bytes: &Bytes) -> Result<(BatchHeader, Vec<Record>), FormatError> {
    let header = verify_batch(bytes)?;
    let records = decode_verified(&header, &bytes.slice(..header.len()))?;
    Ok((header, records))
}

/// Decodes the records of `batch`, whose header and checksum
/// [`verify_batch`] has checked already.
pub(crate) fn decode_verified(
    header: &BatchHeader,
    batch: &Bytes,
) -> Result<Vec<Record>, FormatError> {
    debug_assert_eq!(batch.len(), header.len());

    // A bogus count must not reserve more than the bytes could hold.
    let most_records = (header.len() - BATCH_HEADER_LEN) / MIN_RECORD_LEN;
    let mut records = Vec::with_capacity((header.record_count as usize).min(most_records));
    let mut reader = Reader::new(batch, BATCH_HEADER_LEN, header.len());
    let mut last_ms = header.first_publish_time_ms;
    let mut producer: Option<Arc<str>> = None;

    for index in 0..header.record_count {
        let offset = header.base_offset + u64::from(index);
        let record = decode_record(&mut reader, offset, &mut producer)
            .map_err(|what| FormatError::BadRecord { index, what })?;
        if record.publish_time_ms < last_ms {
            return Err(FormatError::BadRecord {
                index,
                what: "publish time is below the one before",
            });
        }
        last_ms = record.publish_time_ms;
        records.push(record);
    }

    if reader.position != header.len() {
        return Err(FormatError::BadHeader {
            what: "bytes left after the last record",
        });
    }
    let first_ms = records.first().map(|record| record.publish_time_ms);
    if first_ms != Some(header.first_publish_time_ms) || last_ms != header.last_publish_time_ms {
        return Err(FormatError::BadHeader {
            what: "publish times disagree with the records",
        });
    }
    Ok(records)
}

/// Decodes the record at `reader`, whose producer name is `producer`'s
/// when they are equal (a batch usually holds one producer's records), and
/// becomes `producer` otherwise.
fn decode_record(
    reader: &mut Reader<'_>,
    offset: u64,
    producer: &mut Option<Arc<str>>,
) -> Result<Record, &'static str> {
    let length = reader.u32()? as usize;
    let end = reader
        .position
        .checked_add(length)
        .filter(|end| *end <= reader.end)
        .ok_or("length runs past the end of the batch")?;
    let mut fields = Reader::new(reader.bytes, reader.position, end);
    reader.position = end;

    let publish_time_ms = fields.u64()?;
    let producer_id = fields.u64()?;
    let flags = fields.u8()?;
    if flags & !KNOWN_FLAGS != 0 {
        return Err("unknown presence flags");
    }
    let name = fields.str("producer name is not utf-8")?;
    let producer_name = match producer {
        Some(shared) if **shared == *name => Arc::clone(shared),
        _ => Arc::clone(producer.insert(Arc::from(name))),
    };

    let key = if flags & FLAG_KEY != 0 {
        Some(fields.string("key is not utf-8")?)
    } else {
        None
    };
    let schema_id = if flags & FLAG_SCHEMA_ID != 0 {
        Some(fields.u64()?)
    } else {
        None
    };
    let schema_version = if flags & FLAG_SCHEMA_VERSION != 0 {
        Some(fields.u32()?)
    } else {
        None
    };

    let attribute_count = fields.u32()? as usize;
    let mut attributes = Vec::with_capacity(attribute_count.min(fields.remaining() / 8));
    for _ in 0..attribute_count {
        let name = fields.string("attribute name is not utf-8")?;
        let value = fields.string("attribute value is not utf-8")?;
        attributes.push((name, value));
    }

    let payload_len = fields.u32()? as usize;
    let payload = fields.slice(payload_len)?;
    if fields.remaining() != 0 {
        return Err("bytes left after the payload");
    }

    Ok(Record {
        offset,
        publish_time_ms,
        producer_id,
        producer_name,
        key,
        attributes,
        schema_id,
        schema_version,
        payload,
    })
}

/// A bounds-checked cursor over `bytes[position..end]`.
struct Reader<'a> {
    bytes: &'a Bytes,
    position: usize,
    end: usize,
}

const SHORT: &str = "field runs past the end of the record";

impl<'a> Reader<'a> {
    fn new(bytes: &'a Bytes, position: usize, end: usize) -> Reader<'a> {
        debug_assert!(position <= end && end <= bytes.len());
        Reader {
            bytes,
            position,
            end,
        }
    }

    fn remaining(&self) -> usize {
        self.end - self.position
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], &'static str> {
        if len > self.remaining() {
            return Err(SHORT);
        }
        let bytes: &'a [u8] = self.bytes;
        let taken = &bytes[self.position..self.position + len];
        self.position += len;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(le_u32(self.take(4)?, 0))
    }

    fn u64(&mut self) -> Result<u64, &'static str> {
        Ok(le_u64(self.take(8)?, 0))
    }

    fn str(&mut self, not_utf8: &'static str) -> Result<&'a str, &'static str> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map_err(|_| not_utf8)
    }

    fn string(&mut self, not_utf8: &'static str) -> Result<String, &'static str> {
        self.str(not_utf8).map(str::to_owned)
    }

    fn slice(&mut self, len: usize) -> Result<Bytes, &'static str> {
        if len > self.remaining() {
            return Err(SHORT);
        }
        let slice = self.bytes.slice(self.position..self.position + len);
        self.position += len;
        Ok(slice)
    }
}

/// Reads a little-endian `u32` at `at`; the caller has checked the bounds.
pub(crate) fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// Reads a little-endian `u64` at `at`; the caller has checked the bounds.
pub(crate) fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests;
