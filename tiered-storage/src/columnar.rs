//! Offloaded segments as Parquet: one row per message.
//!
//! The schema, in Parquet's message syntax:
//!
//! ```text
//! message sava_segment {
//!   required int64 offset;
//!   required int64 publish_time (TIMESTAMP(MILLIS,true));
//!   required int64 producer_id;
//!   required binary producer_name (STRING);
//!   optional binary routing_key (STRING);
//!   required group attributes (MAP) {
//!     repeated group key_value {
//!       required binary key (STRING);
//!       required binary value (STRING);
//!     }
//!   }
//!   optional int64 schema_id;
//!   optional int32 schema_version;
//!   required binary payload;
//! }
//! ```
//!
//! The message columns (routing key, attributes, payload) are
//! zstd-compressed; offsets and publish times are delta-encoded, and the
//! producer and schema columns dictionary-encoded, neither compressed.
//! Pages carry statistics, and the file the page index, so lakehouse tools
//! can prune by offset or time. The encoder cuts row
//! groups at a byte budget of messages, and reports where each one sits in
//! the file, so a reader fetches exactly the row groups it needs with one
//! ranged GET each, plus the footer.

use std::sync::Arc;

use bytes::{Buf, Bytes};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::column::reader::{ColumnReader, get_typed_column_reader};
use parquet::data_type::{ByteArray, ByteArrayType, DataType, Int32Type, Int64Type};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{ChunkReader, FileReader, Length, RowGroupReader};
use parquet::file::serialized_reader::{ReadOptionsBuilder, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::ColumnPath;

use crate::error::{Error, Result};
use crate::record::Record;

const SCHEMA: &str = "
message sava_segment {
  required int64 offset;
  required int64 publish_time (TIMESTAMP(MILLIS,true));
  required int64 producer_id;
  required binary producer_name (STRING);
  optional binary routing_key (STRING);
  required group attributes (MAP) {
    repeated group key_value {
      required binary key (STRING);
      required binary value (STRING);
    }
  }
  optional int64 schema_id;
  optional int32 schema_version;
  required binary payload;
}";

/// Bytes at the end of an object fetched to find its footer in one GET.
pub const FOOTER_FETCH_BYTES: u64 = 64 * 1024;

/// A segment encoded as a Parquet file.
#[derive(Debug, Clone)]
pub struct EncodedSegment {
    pub bytes: Bytes,
    pub base_offset: u64,
    pub next_offset: u64,
    pub first_publish_time_ms: u64,
    pub last_publish_time_ms: u64,
    /// Bytes of the messages as produced: payloads, keys and attributes.
    pub message_bytes: u64,
    pub row_groups: Vec<RowGroupSpan>,
}

/// Where one row group of an encoded segment sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowGroupSpan {
    pub first_offset: u64,
    pub records: u64,
    pub byte_start: u64,
    pub byte_len: u64,
}

/// Encodes dense, offset-ordered records as Parquet, cutting a row group
/// whenever the messages in it reach `row_group_bytes`.
///
/// # Errors
///
/// `EmptyBatch` for no records, `OffsetMismatch` when they are not dense,
/// `Parquet` when the writer fails.
pub fn encode_segment(records: &[Record], row_group_bytes: usize) -> Result<EncodedSegment> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Err(Error::EmptyBatch);
    };
    for (expected, record) in (first.offset..).zip(records) {
        if record.offset != expected {
            return Err(Error::OffsetMismatch {
                expected,
                got: record.offset,
            });
        }
    }
    let object = format!("segment {}..{}", first.offset, last.offset + 1);
    let wrap = |source| Error::Parquet {
        object: object.clone(),
        source,
    };

    let schema = Arc::new(parse_message_type(SCHEMA).map_err(wrap)?);
    let mut properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_column_dictionary_enabled(ColumnPath::from("payload"), false)
        .set_max_row_group_row_count(None);
    // Offsets count up by one and times barely move: delta encoding makes
    // them about a byte a row. Those, and the columns dictionary encoding
    // leaves a few bits a row, are not compressed, so a reader creates no
    // zstd context for them (one per column per row group).
    for column in ["offset", "publish_time"] {
        properties = properties
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
    }
    for column in [
        "offset",
        "publish_time",
        "producer_id",
        "producer_name",
        "schema_id",
        "schema_version",
    ] {
        properties =
            properties.set_column_compression(ColumnPath::from(column), Compression::UNCOMPRESSED);
    }
    let properties = properties.build();
    let mut writer =
        SerializedFileWriter::new(Vec::new(), schema, Arc::new(properties)).map_err(wrap)?;

    let mut row_groups = Vec::new();
    let mut message_bytes = 0u64;
    for group in row_group_chunks(records, row_group_bytes.max(1)) {
        message_bytes += group.iter().map(message_size).sum::<u64>();
        let metadata = write_row_group(&mut writer, group).map_err(wrap)?;
        let (byte_start, byte_end) = metadata
            .columns()
            .iter()
            .map(|column| {
                let (start, len) = column.byte_range();
                (start, start + len)
            })
            .fold((u64::MAX, 0), |(lo, hi), (s, e)| (lo.min(s), hi.max(e)));
        row_groups.push(RowGroupSpan {
            first_offset: group[0].offset,
            records: group.len() as u64,
            byte_start,
            byte_len: byte_end - byte_start,
        });
    }
    let bytes = writer.into_inner().map_err(wrap)?;

    Ok(EncodedSegment {
        bytes: Bytes::from(bytes),
        base_offset: first.offset,
        next_offset: last.offset + 1,
        first_publish_time_ms: first.publish_time_ms,
        last_publish_time_ms: last.publish_time_ms,
        message_bytes,
        row_groups,
    })
}

/// The bytes a message accounts for: payload, key and attributes.
fn message_size(record: &Record) -> u64 {
    let attributes: usize = record
        .attributes
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    (record.payload.len() + record.key.as_ref().map_or(0, String::len) + attributes) as u64
}

fn row_group_chunks(records: &[Record], budget: usize) -> Vec<&[Record]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0usize;
    for (index, record) in records.iter().enumerate() {
        bytes += record.encoded_len();
        if bytes >= budget {
            chunks.push(&records[start..=index]);
            start = index + 1;
            bytes = 0;
        }
    }
    if start < records.len() {
        chunks.push(&records[start..]);
    }
    chunks
}

fn write_row_group(
    writer: &mut SerializedFileWriter<Vec<u8>>,
    records: &[Record],
) -> Result<Arc<parquet::file::metadata::RowGroupMetaData>, ParquetError> {
    let mut group = writer.next_row_group()?;
    let int64 = |f: fn(&Record) -> i64| records.iter().map(f).collect::<Vec<i64>>();
    let text = |s: &str| ByteArray::from(s.as_bytes().to_vec());

    // Columns come in schema order; attributes are two leaf columns.
    let offsets = int64(|r| r.offset as i64);
    let times = int64(|r| r.publish_time_ms as i64);
    let producer_ids = int64(|r| r.producer_id as i64);
    let producer_names: Vec<ByteArray> = records.iter().map(|r| text(&r.producer_name)).collect();
    let (keys, key_levels) = optional(records, |r| r.key.as_deref().map(text));
    let (names, values, rep, def) = attribute_columns(records);
    let (schema_ids, id_levels) = optional(records, |r| r.schema_id.map(|id| id as i64));
    let (versions, version_levels) = optional(records, |r| r.schema_version.map(|v| v as i32));
    let payloads: Vec<ByteArray> = records
        .iter()
        .map(|r| ByteArray::from(r.payload.clone()))
        .collect();

    write_column::<Int64Type>(&mut group, &offsets, None, None)?;
    write_column::<Int64Type>(&mut group, &times, None, None)?;
    write_column::<Int64Type>(&mut group, &producer_ids, None, None)?;
    write_column::<ByteArrayType>(&mut group, &producer_names, None, None)?;
    write_column::<ByteArrayType>(&mut group, &keys, Some(&key_levels), None)?;
    write_column::<ByteArrayType>(&mut group, &names, Some(&def), Some(&rep))?;
    write_column::<ByteArrayType>(&mut group, &values, Some(&def), Some(&rep))?;
    write_column::<Int64Type>(&mut group, &schema_ids, Some(&id_levels), None)?;
    write_column::<Int32Type>(&mut group, &versions, Some(&version_levels), None)?;
    write_column::<ByteArrayType>(&mut group, &payloads, None, None)?;
    group.close()
}

/// Values and definition levels of an optional column.
fn optional<T>(records: &[Record], get: impl Fn(&Record) -> Option<T>) -> (Vec<T>, Vec<i16>) {
    let mut values = Vec::new();
    let mut levels = Vec::with_capacity(records.len());
    for record in records {
        match get(record) {
            Some(value) => {
                values.push(value);
                levels.push(1);
            }
            None => levels.push(0),
        }
    }
    (values, levels)
}

/// The key and value columns of the attributes map, with their shared
/// repetition and definition levels: an empty map is one level of 0, each
/// entry a level of 1, repeated (1) after the first entry of its row.
fn attribute_columns(records: &[Record]) -> (Vec<ByteArray>, Vec<ByteArray>, Vec<i16>, Vec<i16>) {
    let (mut names, mut values, mut rep, mut def) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for record in records {
        if record.attributes.is_empty() {
            rep.push(0);
            def.push(0);
            continue;
        }
        for (index, (name, value)) in record.attributes.iter().enumerate() {
            names.push(ByteArray::from(name.as_bytes().to_vec()));
            values.push(ByteArray::from(value.as_bytes().to_vec()));
            rep.push(i16::from(index > 0));
            def.push(1);
        }
    }
    (names, values, rep, def)
}

fn write_column<T: DataType>(
    group: &mut parquet::file::writer::SerializedRowGroupWriter<'_, Vec<u8>>,
    values: &[T::T],
    def: Option<&[i16]>,
    rep: Option<&[i16]>,
) -> Result<(), ParquetError> {
    let mut column = group
        .next_column()?
        .ok_or_else(|| ParquetError::General("the schema has fewer columns than written".into()))?;
    column.typed::<T>().write_batch(values, def, rep)?;
    column.close()
}

/// Some byte ranges of an object, as fetched: its footer and the row groups
/// a reader wants. Parquet's reader asks for ranges inside these only.
#[derive(Debug, Clone)]
pub struct PartialObject {
    len: u64,
    parts: Vec<(u64, Bytes)>,
}

impl PartialObject {
    /// An object of `len` bytes of which nothing is fetched yet.
    pub fn new(len: u64) -> PartialObject {
        PartialObject {
            len,
            parts: Vec::new(),
        }
    }

    /// Adds the bytes fetched from `start` on.
    pub fn add(&mut self, start: u64, bytes: Bytes) {
        self.parts.push((start, bytes));
    }

    fn slice(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let end = start + length as u64;
        self.parts
            .iter()
            .find(|(at, bytes)| *at <= start && end <= at + bytes.len() as u64)
            .map(|(at, bytes)| bytes.slice((start - at) as usize..(end - at) as usize))
            .ok_or_else(|| {
                ParquetError::General(format!(
                    "bytes {start}..{end} of the object were not fetched"
                ))
            })
    }
}

impl Length for PartialObject {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for PartialObject {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        // Page readers ask for a reader at a column chunk's start; hand out
        // the rest of the part that holds it.
        let (at, bytes) = self
            .parts
            .iter()
            .find(|(at, bytes)| *at <= start && start < at + bytes.len() as u64)
            .ok_or_else(|| {
                ParquetError::General(format!("byte {start} of the object was not fetched"))
            })?;
        Ok(bytes.slice((start - at) as usize..).reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.slice(start, length)
    }
}

/// The byte range holding the footer of an object of `len` bytes, once its
/// last [`FOOTER_FETCH_BYTES`] (or fewer) are known: `None` when they hold
/// it all already.
pub fn footer_range(len: u64, tail: &[u8]) -> Option<(u64, u64)> {
    if tail.len() < 8 {
        return Some((len.saturating_sub(8), len));
    }
    let length_field = &tail[tail.len() - 8..tail.len() - 4];
    let metadata_len = u32::from_le_bytes(length_field.try_into().expect("4 bytes")) as u64;
    let needed = metadata_len + 8;
    (needed > tail.len() as u64).then(|| (len.saturating_sub(needed), len))
}

/// Decodes row group `index` of `object`, whose footer and that row
/// group's bytes must have been fetched.
pub fn decode_row_group(object: PartialObject, index: usize, name: &str) -> Result<Vec<Record>> {
    let mut groups = decode_row_groups(object, index..=index, name)?;
    Ok(groups.pop().unwrap_or_default())
}

/// Decodes row groups `range` of `object`, whose footer and those row
/// groups' bytes must have been fetched; one list of records per group.
pub fn decode_row_groups(
    object: PartialObject,
    range: std::ops::RangeInclusive<usize>,
    name: &str,
) -> Result<Vec<Vec<Record>>> {
    let wrap = |source| Error::Parquet {
        object: name.to_owned(),
        source,
    };
    let wanted = range.clone();
    let options = ReadOptionsBuilder::new()
        .with_predicate(Box::new(move |_, at| wanted.contains(&at)))
        .build();
    let reader = SerializedFileReader::new_with_options(object, options).map_err(wrap)?;
    if reader.num_row_groups() != range.clone().count() {
        return Err(wrap(ParquetError::General(format!(
            "the object has no row groups {range:?}"
        ))));
    }
    (0..reader.num_row_groups())
        .map(|index| {
            let group = reader.get_row_group(index).map_err(wrap)?;
            decode_group(group.as_ref()).map_err(wrap)
        })
        .collect()
}

/// Decodes every row group of a whole object held in memory.
pub fn decode_object(bytes: Bytes, name: &str) -> Result<Vec<Record>> {
    let wrap = |source| Error::Parquet {
        object: name.to_owned(),
        source,
    };
    let reader = SerializedFileReader::new(bytes).map_err(wrap)?;
    let mut records = Vec::new();
    for index in 0..reader.num_row_groups() {
        let group = reader.get_row_group(index).map_err(wrap)?;
        records.extend(decode_group(group.as_ref()).map_err(wrap)?);
    }
    Ok(records)
}

fn decode_group(group: &dyn RowGroupReader) -> Result<Vec<Record>, ParquetError> {
    let rows = group.metadata().num_rows() as usize;
    if group.num_columns() != 10 {
        return Err(ParquetError::General(format!(
            "expected the 10 columns of a Sava segment, found {}",
            group.num_columns()
        )));
    }

    let offsets = read_required::<Int64Type>(group.get_column_reader(0)?, rows)?;
    let times = read_required::<Int64Type>(group.get_column_reader(1)?, rows)?;
    let producer_ids = read_required::<Int64Type>(group.get_column_reader(2)?, rows)?;
    let producer_names = read_required::<ByteArrayType>(group.get_column_reader(3)?, rows)?;
    let keys = read_optional::<ByteArrayType>(group.get_column_reader(4)?, rows)?;
    let names = read_repeated(group.get_column_reader(5)?, rows)?;
    let values = read_repeated(group.get_column_reader(6)?, rows)?;
    let schema_ids = read_optional::<Int64Type>(group.get_column_reader(7)?, rows)?;
    let versions = read_optional::<Int32Type>(group.get_column_reader(8)?, rows)?;
    let payloads = read_required::<ByteArrayType>(group.get_column_reader(9)?, rows)?;

    // One buffer holds the row group's payloads, and each record a slice
    // of it: one allocation where there would be one per record.
    let mut payload_bytes = Vec::with_capacity(payloads.iter().map(ByteArray::len).sum());
    for payload in &payloads {
        payload_bytes.extend_from_slice(payload.data());
    }
    let payload_bytes = Bytes::from(payload_bytes);

    let mut records = Vec::with_capacity(rows);
    let (mut producer, mut payload_start): (Option<Arc<str>>, usize) = (None, 0);
    for row in 0..rows {
        let attributes = names[row]
            .iter()
            .zip(&values[row])
            .map(|(name, value)| Ok((utf8(name)?, utf8(value)?)))
            .collect::<Result<Vec<_>, ParquetError>>()?;
        let name = utf8_str(&producer_names[row])?;
        let producer_name = match &producer {
            Some(shared) if **shared == *name => Arc::clone(shared),
            _ => Arc::clone(producer.insert(Arc::from(name))),
        };
        let payload_end = payload_start + payloads[row].len();
        records.push(Record {
            offset: offsets[row] as u64,
            publish_time_ms: times[row] as u64,
            producer_id: producer_ids[row] as u64,
            producer_name,
            key: keys[row].as_ref().map(utf8).transpose()?,
            attributes,
            schema_id: schema_ids[row].map(|id| id as u64),
            schema_version: versions[row].map(|v| v as u32),
            payload: payload_bytes.slice(payload_start..payload_end),
        });
        payload_start = payload_end;
    }
    Ok(records)
}

fn utf8(bytes: &ByteArray) -> Result<String, ParquetError> {
    utf8_str(bytes).map(str::to_owned)
}

fn utf8_str(bytes: &ByteArray) -> Result<&str, ParquetError> {
    std::str::from_utf8(bytes.data())
        .map_err(|_| ParquetError::General("a string column holds bytes that are not UTF-8".into()))
}

fn read_required<T: DataType>(
    column: ColumnReader,
    rows: usize,
) -> Result<Vec<T::T>, ParquetError> {
    let mut reader = get_typed_column_reader::<T>(column);
    let mut values = Vec::with_capacity(rows);
    while values.len() < rows {
        let (read, _, _) = reader.read_records(rows - values.len(), None, None, &mut values)?;
        if read == 0 {
            return Err(short_column(values.len(), rows));
        }
    }
    Ok(values)
}

fn read_optional<T: DataType>(
    column: ColumnReader,
    rows: usize,
) -> Result<Vec<Option<T::T>>, ParquetError> {
    let mut reader = get_typed_column_reader::<T>(column);
    let (mut values, mut levels) = (Vec::new(), Vec::with_capacity(rows));
    while levels.len() < rows {
        let wanted = rows - levels.len();
        let (read, _, _) = reader.read_records(wanted, Some(&mut levels), None, &mut values)?;
        if read == 0 {
            return Err(short_column(levels.len(), rows));
        }
    }
    let mut values = values.into_iter();
    Ok(levels
        .iter()
        .map(|level| if *level > 0 { values.next() } else { None })
        .collect())
}

/// A leaf of the attributes map: one list of strings per row.
fn read_repeated(column: ColumnReader, rows: usize) -> Result<Vec<Vec<ByteArray>>, ParquetError> {
    let mut reader = get_typed_column_reader::<ByteArrayType>(column);
    let (mut values, mut def, mut rep) = (Vec::new(), Vec::new(), Vec::new());
    let mut read_rows = 0;
    while read_rows < rows {
        let wanted = rows - read_rows;
        let (read, _, _) =
            reader.read_records(wanted, Some(&mut def), Some(&mut rep), &mut values)?;
        if read == 0 {
            return Err(short_column(read_rows, rows));
        }
        read_rows += read;
    }
    let mut lists: Vec<Vec<ByteArray>> = Vec::with_capacity(rows);
    let mut values = values.into_iter();
    for (rep, def) in rep.iter().zip(&def) {
        if *rep == 0 {
            lists.push(Vec::new());
        }
        if *def > 0 {
            let value = values
                .next()
                .ok_or_else(|| short_column(lists.len(), rows))?;
            lists
                .last_mut()
                .expect("a row starts at level 0")
                .push(value);
        }
    }
    Ok(lists)
}

fn short_column(got: usize, rows: usize) -> ParquetError {
    ParquetError::General(format!("a column ends after {got} of {rows} rows"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(base: u64, count: u64) -> Vec<Record> {
        (base..base + count)
            .map(|offset| Record {
                offset,
                publish_time_ms: 1_700_000_000_000 + offset,
                producer_id: 7,
                producer_name: "producer-a".into(),
                key: (offset % 3 == 0).then(|| format!("key-{offset}")),
                attributes: (0..offset % 3)
                    .map(|i| (format!("name-{i}"), format!("value-{offset}")))
                    .collect(),
                schema_id: (offset % 2 == 0).then_some(4),
                schema_version: (offset % 2 == 0).then_some(2),
                payload: Bytes::from(format!("payload number {offset} {}", "x".repeat(100))),
            })
            .collect()
    }

    /// The footer and one row group, as a reader fetches them; the footer
    /// exactly, so no other row group's bytes come along.
    fn fetch(encoded: &EncodedSegment, group: &RowGroupSpan) -> PartialObject {
        let len = encoded.bytes.len() as u64;
        let mut object = PartialObject::new(len);
        let last8 = encoded.bytes.slice(encoded.bytes.len() - 8..);
        let (start, end) = footer_range(len, &last8).expect("8 bytes are not the footer");
        object.add(start, encoded.bytes.slice(start as usize..end as usize));
        let start = group.byte_start as usize;
        let end = start + group.byte_len as usize;
        object.add(group.byte_start, encoded.bytes.slice(start..end));
        object
    }

    #[test]
    fn a_row_groups_records_share_their_producers_name_and_one_payload_buffer() {
        let mut input = records(0, 40);
        for record in &mut input[20..] {
            record.producer_name = "producer-b".into();
        }
        let encoded = encode_segment(&input, 1 << 20).unwrap();
        assert_eq!(encoded.row_groups.len(), 1);

        let decoded = decode_object(encoded.bytes, "test").unwrap();

        assert_eq!(decoded, input);
        for run in [&decoded[..20], &decoded[20..]] {
            assert!(
                run.windows(2)
                    .all(|pair| Arc::ptr_eq(&pair[0].producer_name, &pair[1].producer_name))
            );
        }
        assert!(decoded.windows(2).all(|pair| {
            let end = pair[0].payload.as_ptr() as usize + pair[0].payload.len();
            end == pair[1].payload.as_ptr() as usize
        }));
    }

    #[test]
    fn a_segment_round_trips_through_parquet() {
        let input = records(100, 500);
        let encoded = encode_segment(&input, 16 * 1024).unwrap();

        assert_eq!((encoded.base_offset, encoded.next_offset), (100, 600));
        assert!(encoded.row_groups.len() > 1, "{:?}", encoded.row_groups);
        assert_eq!(decode_object(encoded.bytes.clone(), "t").unwrap(), input);
    }

    #[test]
    fn each_row_group_decodes_from_its_own_range_and_the_footer() {
        let input = records(0, 300);
        let encoded = encode_segment(&input, 8 * 1024).unwrap();

        let mut decoded = Vec::new();
        for (index, group) in encoded.row_groups.iter().enumerate() {
            let rows = decode_row_group(fetch(&encoded, group), index, "t").unwrap();
            assert_eq!(rows.first().map(|r| r.offset), Some(group.first_offset));
            assert_eq!(rows.len() as u64, group.records);
            decoded.extend(rows);
        }
        assert_eq!(decoded, input);
    }

    #[test]
    fn a_row_group_whose_bytes_were_not_fetched_is_an_error() {
        let encoded = encode_segment(&records(0, 300), 8 * 1024).unwrap();
        let object = fetch(&encoded, &encoded.row_groups[0]);
        let error = decode_row_group(object, 1, "t").unwrap_err();
        assert!(error.to_string().contains("not fetched"), "{error}");
    }

    #[test]
    fn text_payloads_compress_well() {
        let encoded = encode_segment(&records(0, 2000), 1024 * 1024).unwrap();
        assert!(
            (encoded.bytes.len() as u64) < encoded.message_bytes / 4,
            "{} bytes for {} message bytes",
            encoded.bytes.len(),
            encoded.message_bytes
        );
    }

    #[test]
    fn records_with_a_gap_are_refused() {
        let mut input = records(0, 3);
        input[2].offset = 5;
        let error = encode_segment(&input, 1024).unwrap_err();
        assert!(matches!(
            error,
            Error::OffsetMismatch {
                expected: 2,
                got: 5
            }
        ));
        assert!(matches!(encode_segment(&[], 1024), Err(Error::EmptyBatch)));
    }

    #[test]
    fn footer_range_asks_for_more_only_when_the_tail_is_short() {
        let encoded = encode_segment(&records(0, 10), 1024).unwrap();
        let len = encoded.bytes.len() as u64;
        let tail = encoded.bytes.slice(encoded.bytes.len() - 8..);
        let (start, end) = footer_range(len, &tail).unwrap();
        assert_eq!(end, len);
        assert!(start < len - 8);
    }
}
