use bytes::Bytes;
use proptest::prelude::*;

use super::*;

fn record(offset: u64, publish_time_ms: u64, payload: &[u8]) -> Record {
    Record {
        offset,
        publish_time_ms,
        producer_id: 7,
        producer_name: "producer-a".into(),
        key: Some("key".to_owned()),
        attributes: vec![("trace".to_owned(), "00-abc".to_owned())],
        schema_id: Some(3),
        schema_version: Some(2),
        payload: Bytes::copy_from_slice(payload),
    }
}

fn encode(records: &[Record]) -> Bytes {
    let mut out = Vec::new();
    encode_batch(records, &mut out).expect("test records are valid");
    Bytes::from(out)
}

#[test]
fn a_batch_round_trips_with_every_field() {
    let records = vec![
        record(10, 100, b"one"),
        record(11, 100, b""),
        record(12, 105, b"x"),
    ];
    let bytes = encode(&records);

    let (header, decoded) = decode_batch(&bytes).expect("valid batch");

    assert_eq!(decoded, records);
    assert_eq!(header.base_offset, 10);
    assert_eq!(header.record_count, 3);
    assert_eq!(header.next_offset(), 13);
    assert_eq!(
        (header.first_publish_time_ms, header.last_publish_time_ms),
        (100, 105)
    );
    assert_eq!(header.len(), bytes.len());
    assert_eq!(encoded_batch_len(&records), bytes.len() as u64);
}

#[test]
fn records_of_one_producer_in_a_batch_share_its_name() {
    let mut records: Vec<Record> = (0..6).map(|i| record(i, 100, b"p")).collect();
    for record in &mut records[3..] {
        record.producer_name = "producer-b".into();
    }

    let (_, decoded) = decode_batch(&encode(&records)).expect("valid batch");

    assert_eq!(decoded, records);
    let shared = |a: &Record, b: &Record| Arc::ptr_eq(&a.producer_name, &b.producer_name);
    assert!(shared(&decoded[0], &decoded[2]) && shared(&decoded[3], &decoded[5]));
    assert!(!shared(&decoded[2], &decoded[3]));
}

#[test]
fn a_bare_record_round_trips() {
    let bare = Record {
        offset: 0,
        ..Record::default()
    };
    let bytes = encode(std::slice::from_ref(&bare));

    assert_eq!(bytes.len(), BATCH_HEADER_LEN + MIN_RECORD_LEN);
    assert_eq!(decode_batch(&bytes).expect("valid batch").1, vec![bare]);
}

#[test]
fn a_huge_payload_round_trips() {
    let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let records = vec![record(0, 1, &payload)];

    let (_, decoded) = decode_batch(&encode(&records)).expect("valid batch");

    assert_eq!(decoded[0].payload.len(), payload.len());
    assert_eq!(decoded, records);
}

#[test]
fn decoded_payloads_share_the_read_buffer() {
    let bytes = encode(&[record(0, 1, b"payload bytes")]);
    let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();

    let (_, decoded) = decode_batch(&bytes).expect("valid batch");

    assert!(range.contains(&(decoded[0].payload.as_ptr() as usize)));
}

#[test]
fn encoding_reuses_the_buffer() {
    let mut out = Vec::new();
    encode_batch(&[record(0, 1, &[0; 4096])], &mut out).expect("valid");
    let capacity = out.capacity();
    let pointer = out.as_ptr();

    encode_batch(&[record(1, 1, b"small")], &mut out).expect("valid");

    assert_eq!((out.capacity(), out.as_ptr()), (capacity, pointer));
    assert_eq!(
        decode_batch(&Bytes::from(out)).expect("valid").1[0].offset,
        1
    );
}

#[test]
fn encoding_rejects_an_empty_batch() {
    assert!(matches!(
        encode_batch(&[], &mut Vec::new()),
        Err(Error::EmptyBatch)
    ));
}

#[test]
fn encoding_rejects_offsets_with_a_hole() {
    let records = [record(5, 1, b""), record(7, 1, b"")];

    let error = encode_batch(&records, &mut Vec::new()).expect_err("offsets are not dense");

    assert!(
        matches!(
            error,
            Error::OffsetMismatch {
                expected: 6,
                got: 7
            }
        ),
        "{error:?}"
    );
}

#[test]
fn encoding_rejects_publish_times_going_backwards() {
    let records = [record(0, 10, b""), record(1, 9, b"")];

    let error = encode_batch(&records, &mut Vec::new()).expect_err("time went back");

    assert!(matches!(
        error,
        Error::PublishTimeRegression {
            last_ms: 10,
            got_ms: 9
        }
    ));
}

#[test]
fn decoding_a_cut_batch_reports_truncation() {
    let bytes = encode(&[record(0, 1, b"abcdef")]);

    for cut in [0, 10, BATCH_HEADER_LEN, bytes.len() - 1] {
        let error = decode_batch(&bytes.slice(..cut)).expect_err("cut batch");
        assert!(
            matches!(error, FormatError::Truncated { .. }),
            "cut {cut}: {error:?}"
        );
    }
}

#[test]
fn decoding_rejects_every_flipped_bit() {
    let bytes = encode(&[record(0, 1, b"abc"), record(1, 2, b"defg")]);

    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.to_vec();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let result = decode_batch(&Bytes::from(flipped));
        assert!(result.is_err(), "bit {bit} flipped went unnoticed");
    }
}

#[test]
fn decoding_names_the_magic_and_the_checksum() {
    let bytes = encode(&[record(0, 1, b"abc")]);

    let mut bad_magic = bytes.to_vec();
    bad_magic[0] = b'X';
    let mut bad_crc = bytes.to_vec();
    *bad_crc.last_mut().expect("non-empty") ^= 0xff;

    assert!(matches!(
        decode_batch(&Bytes::from(bad_magic)),
        Err(FormatError::BadMagic { .. })
    ));
    assert!(matches!(
        decode_batch(&Bytes::from(bad_crc)),
        Err(FormatError::ChecksumMismatch { .. })
    ));
}

/// Rewrites the checksum so the record decoder, not the CRC, meets the bytes.
fn with_valid_crc(mut batch: Vec<u8>) -> Bytes {
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[12..16].copy_from_slice(&crc.to_le_bytes());
    Bytes::from(batch)
}

#[test]
fn decoding_rejects_a_checksummed_record_with_bad_utf8() {
    let mut batch = encode(&[record(0, 1, b"")]).to_vec();
    let name_at = BATCH_HEADER_LEN + 4 + 8 + 8 + 1 + 4;
    batch[name_at] = 0xff;

    let error = decode_batch(&with_valid_crc(batch)).expect_err("bad utf-8");

    assert!(
        matches!(error, FormatError::BadRecord { index: 0, .. }),
        "{error:?}"
    );
}

#[test]
fn decoding_rejects_a_checksummed_batch_with_a_wrong_count() {
    let mut batch = encode(&[record(0, 1, b"")]).to_vec();
    batch[24..28].copy_from_slice(&2u32.to_le_bytes());

    let error = decode_batch(&with_valid_crc(batch)).expect_err("count too high");

    assert!(
        matches!(error, FormatError::BadRecord { index: 1, .. }),
        "{error:?}"
    );
}

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..12).prop_map(String::from_iter)
}

fn arbitrary_record() -> impl Strategy<Value = Record> {
    (
        (any::<u64>(), text(), prop::option::of(text())),
        prop::collection::vec((text(), text()), 0..4),
        (
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u32>()),
        ),
        prop::collection::vec(any::<u8>(), 0..256),
    )
        .prop_map(
            |(
                (producer_id, producer_name, key),
                attributes,
                (schema_id, schema_version),
                payload,
            )| {
                Record {
                    offset: 0,
                    publish_time_ms: 0,
                    producer_id,
                    producer_name: producer_name.into(),
                    key,
                    attributes,
                    schema_id,
                    schema_version,
                    payload: Bytes::from(payload),
                }
            },
        )
}

proptest! {
    #[test]
    fn arbitrary_records_decode_to_what_was_encoded(
        base in 0..u64::MAX / 2,
        start_ms in 0..u64::MAX / 2,
        steps in prop::collection::vec(0..1_000u64, 1..20),
        templates in prop::collection::vec(arbitrary_record(), 1..20),
    ) {
        let mut publish_time_ms = start_ms;
        let records: Vec<Record> = templates
            .into_iter()
            .zip(steps.iter().cycle())
            .enumerate()
            .map(|(i, (template, step))| {
                publish_time_ms += step;
                Record { offset: base + i as u64, publish_time_ms, ..template }
            })
            .collect();

        let (header, decoded) = decode_batch(&encode(&records)).expect("valid batch");

        prop_assert_eq!(header.record_count as usize, records.len());
        prop_assert_eq!(decoded, records);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_batch(&Bytes::from(bytes));
    }

    #[test]
    fn decoding_arbitrary_checksummed_bodies_never_panics(
        count in 0..8u32,
        first in any::<u64>(),
        last in any::<u64>(),
        body in prop::collection::vec(any::<u8>(), MIN_RECORD_LEN..512),
    ) {
        let mut batch = Vec::new();
        batch.extend_from_slice(&BATCH_MAGIC);
        batch.extend_from_slice(&[FORMAT_VERSION, 0, 0, 0]);
        batch.extend_from_slice(&((BATCH_HEADER_LEN + body.len()) as u32).to_le_bytes());
        batch.extend_from_slice(&[0; 4]);
        batch.extend_from_slice(&0u64.to_le_bytes());
        batch.extend_from_slice(&count.to_le_bytes());
        batch.extend_from_slice(&first.to_le_bytes());
        batch.extend_from_slice(&last.to_le_bytes());
        batch.extend_from_slice(&body);

        let _ = decode_batch(&with_valid_crc(batch));
    }

    #[test]
    fn a_cut_or_flipped_batch_never_decodes(
        template in arbitrary_record(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let bytes = encode(&[template]);

        let cut_at = cut.index(bytes.len());
        prop_assert!(decode_batch(&bytes.slice(..cut_at)).is_err());

        let mut flipped = bytes.to_vec();
        let bit = flip.index(bytes.len() * 8);
        flipped[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(decode_batch(&Bytes::from(flipped)).is_err());
    }
}
