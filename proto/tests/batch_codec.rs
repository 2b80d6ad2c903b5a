//! The record-batch codec: arbitrary records round-trip; every corruption of the
//! CRC-covered bytes is caught by `validate`; no input makes it panic.

use bytes::Bytes;
use proptest::prelude::*;
use raftmq_proto::batch::{
    self, decode_records, records, validate, BatchBuilder, BatchError, BatchHeader, HEADER_BYTES,
};

#[derive(Debug, Clone)]
struct TestRecord {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp_ms: i64,
}

fn test_record() -> impl Strategy<Value = TestRecord> {
    (
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(
            (
                "[a-z\u{e9}]{0,8}",
                proptest::collection::vec(any::<u8>(), 0..20),
            ),
            0..4,
        ),
        prop_oneof![any::<i64>(), 1_600_000_000_000i64..1_800_000_000_000],
    )
        .prop_map(|(key, value, headers, timestamp_ms)| TestRecord {
            key,
            value,
            headers,
            timestamp_ms,
        })
}

fn build(records: &[TestRecord], producer: Option<(u64, u16, u32)>) -> Bytes {
    build_with(records, producer, batch::Compression::None)
}

fn build_with(
    records: &[TestRecord],
    producer: Option<(u64, u16, u32)>,
    compression: batch::Compression,
) -> Bytes {
    let mut builder = BatchBuilder::with_capacity(1024);
    if let Some((id, epoch, seq)) = producer {
        builder.set_producer(id, epoch, seq);
    }
    for r in records {
        let headers: Vec<(&str, &[u8])> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        builder.push(r.key.as_deref(), &r.value, &headers, r.timestamp_ms);
    }
    builder.finish_with(compression)
}

fn small_batch() -> Bytes {
    build(
        &[
            TestRecord {
                key: Some(b"k1".to_vec()),
                value: b"hello".to_vec(),
                headers: vec![("h".into(), b"v".to_vec())],
                timestamp_ms: 1_000,
            },
            TestRecord {
                key: None,
                value: b"world".to_vec(),
                headers: vec![],
                timestamp_ms: 990,
            },
        ],
        Some((7, 2, 40)),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_records_round_trip(
        recs in proptest::collection::vec(test_record(), 1..20),
        producer in proptest::option::of((1u64.., any::<u16>(), any::<u32>())),
        base_offset in 0u64..(1 << 60),
    ) {
        let batch = build(&recs, producer);
        let header = validate(&batch).expect("a built batch is valid");
        prop_assert_eq!(header.length as usize, batch.len());
        prop_assert_eq!(header.record_count as usize, recs.len());
        prop_assert_eq!(header.base_offset, 0);
        prop_assert_eq!(header.first_timestamp, recs[0].timestamp_ms);
        prop_assert_eq!(header.max_timestamp, recs.iter().map(|r| r.timestamp_ms).max().unwrap());
        let (id, epoch, seq) = producer.unwrap_or((0, 0, 0));
        prop_assert_eq!((header.producer_id, header.producer_epoch, header.base_sequence), (id, epoch, seq));
        prop_assert_eq!(BatchHeader::parse(&batch[..HEADER_BYTES]).expect("header"), header);

        let decoded: Vec<_> = decode_records(&batch, base_offset)
            .collect::<Result<_, _>>()
            .expect("decodes");
        prop_assert_eq!(decoded.len(), recs.len());
        for (i, (m, r)) in decoded.iter().zip(&recs).enumerate() {
            prop_assert_eq!(m.offset, base_offset + i as u64);
            prop_assert_eq!(m.timestamp_ms, r.timestamp_ms);
            prop_assert_eq!(m.key.as_deref(), r.key.as_deref());
            prop_assert_eq!(&m.value[..], &r.value[..]);
            let headers: Vec<(String, Vec<u8>)> =
                m.headers.iter().map(|(k, v)| (k.clone(), v.to_vec())).collect();
            prop_assert_eq!(&headers, &r.headers);
        }
        let borrowed: Vec<_> = records(&batch).collect::<Result<_, _>>().expect("decodes");
        for (i, (rec, r)) in borrowed.iter().zip(&recs).enumerate() {
            prop_assert_eq!(rec.index as usize, i);
            prop_assert_eq!(rec.key, r.key.as_deref());
            prop_assert_eq!(rec.value, &r.value[..]);
            prop_assert_eq!(rec.headers.len(), r.headers.len());
        }
    }

    #[test]
    fn every_bit_flip_in_the_crc_covered_area_is_rejected(
        recs in proptest::collection::vec(test_record(), 1..4),
    ) {
        let batch = build(&recs, Some((3, 1, 0)));
        let mut copy = batch.to_vec();
        // The length and CRC fields themselves too.
        for byte in 8..batch.len() {
            for bit in 0..8 {
                copy[byte] ^= 1 << bit;
                prop_assert!(validate(&copy).is_err(), "flip of byte {} bit {} accepted", byte, bit);
                copy[byte] ^= 1 << bit;
            }
        }
        prop_assert!(validate(&copy).is_ok());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = validate(&bytes);
        let _ = BatchHeader::parse(&bytes);
        let _ = records(&bytes).take(1000).count();
        let _ = decode_records(&Bytes::from(bytes), 0).take(1000).count();
    }

    #[test]
    fn corrupted_valid_batches_never_panic_the_decoders(
        recs in proptest::collection::vec(test_record(), 1..4),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        // Corrupt structure but keep the header sane so the decoders walk the records.
        let mut bytes = build(&recs, None).to_vec();
        let body = bytes.len() - HEADER_BYTES;
        for (at, value) in edits {
            bytes[HEADER_BYTES + at.index(body)] = value;
        }
        let _ = validate(&bytes);
        let n = records(&bytes).take(1000).count();
        prop_assert!(n <= recs.len() + 1);
        let _ = decode_records(&Bytes::from(bytes), 0).take(1000).count();
    }

    #[test]
    fn every_truncation_is_rejected(recs in proptest::collection::vec(test_record(), 1..4)) {
        let batch = build(&recs, None);
        for cut in 0..batch.len() {
            prop_assert!(validate(&batch[..cut]).is_err());
        }
    }
}

/// Rewrites a batch's CRC so that a structural defect is the only thing wrong.
fn recrc(bytes: &mut [u8]) {
    let crc = crc32fast::hash(&bytes[batch::CRC_START..]);
    bytes[12..16].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn base_offset_is_not_covered_by_the_crc() {
    let mut bytes = small_batch().to_vec();
    bytes[..8].copy_from_slice(&123u64.to_le_bytes());
    assert_eq!(validate(&bytes).expect("valid").base_offset, 123);
}

#[test]
fn header_fields_sit_where_the_table_says() {
    let b = small_batch();
    assert_eq!(u64::from_le_bytes(b[0..8].try_into().unwrap()), 0);
    assert_eq!(
        u32::from_le_bytes(b[8..12].try_into().unwrap()) as usize,
        b.len()
    );
    assert_eq!(
        u32::from_le_bytes(b[12..16].try_into().unwrap()),
        crc32fast::hash(&b[16..])
    );
    assert_eq!(b[16], 1);
    assert_eq!(b[17], 0);
    assert_eq!(u32::from_le_bytes(b[20..24].try_into().unwrap()), 2);
    assert_eq!(i64::from_le_bytes(b[24..32].try_into().unwrap()), 1_000);
    assert_eq!(i64::from_le_bytes(b[32..40].try_into().unwrap()), 1_000);
    assert_eq!(u64::from_le_bytes(b[40..48].try_into().unwrap()), 7);
    assert_eq!(u16::from_le_bytes(b[48..50].try_into().unwrap()), 2);
    assert_eq!(u32::from_le_bytes(b[52..56].try_into().unwrap()), 40);
    // First record: length 15, delta 0, key len 2 (zigzag 4), "k1", value len 5
    // (zigzag 10), "hello", 1 header, key len 1, "h", value len 1 (zigzag 2), "v";
    // then the second: length 9, delta -10 (zigzag 19), no key (zigzag 1), value len 5.
    assert_eq!(
        &b[56..76],
        &[
            15, 0, 4, b'k', b'1', 10, b'h', b'e', b'l', b'l', b'o', 1, 1, b'h', 2, b'v', 9, 19, 1,
            10
        ][..]
    );
    let header = BatchHeader::parse(&b).expect("header");
    assert_eq!(header.last_sequence(), 41);
    assert_eq!(header.last_offset(100), 101);
}

#[test]
fn compression_and_reserved_bits_are_refused() {
    let mut b = small_batch().to_vec();
    b[17] = 1;
    recrc(&mut b);
    assert_eq!(validate(&b), Err(BatchError::UnsupportedCompression(1)));
    let mut b = small_batch().to_vec();
    b[17] = 0x10;
    recrc(&mut b);
    assert_eq!(validate(&b), Err(BatchError::ReservedBitsSet));
    let mut b = small_batch().to_vec();
    b[50] = 1;
    recrc(&mut b);
    assert_eq!(validate(&b), Err(BatchError::ReservedBitsSet));
}

#[test]
fn wrong_magic_and_lengths_are_refused() {
    let mut b = small_batch().to_vec();
    b[16] = 2;
    recrc(&mut b);
    assert_eq!(validate(&b), Err(BatchError::BadMagic(2)));
    let b = small_batch();
    let mut longer = b.to_vec();
    longer.push(0);
    assert!(matches!(
        validate(&longer),
        Err(BatchError::LengthMismatch { .. })
    ));
    assert_eq!(validate(&b[..10]), Err(BatchError::TooShort { len: 10 }));
    let mut small = b.to_vec();
    small[8..12].copy_from_slice(&20u32.to_le_bytes());
    assert_eq!(
        validate(&small),
        Err(BatchError::LengthTooSmall { declared: 20 })
    );
}

#[test]
fn record_count_must_match_the_records() {
    let mut b = small_batch().to_vec();
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    recrc(&mut b);
    assert!(matches!(
        validate(&b),
        Err(BatchError::TrailingBytes {
            record_count: 1,
            ..
        })
    ));
    let mut b = small_batch().to_vec();
    b[20..24].copy_from_slice(&3u32.to_le_bytes());
    recrc(&mut b);
    assert!(matches!(
        validate(&b),
        Err(BatchError::Truncated { index: 2, .. })
    ));
    let mut b = small_batch().to_vec();
    b[20..24].copy_from_slice(&0u32.to_le_bytes());
    recrc(&mut b);
    assert_eq!(validate(&b), Err(BatchError::Empty));
}

#[test]
fn wrong_max_timestamp_is_refused() {
    let mut b = small_batch().to_vec();
    b[32..40].copy_from_slice(&5_000i64.to_le_bytes());
    recrc(&mut b);
    assert_eq!(
        validate(&b),
        Err(BatchError::MaxTimestampMismatch {
            declared: 5_000,
            found: 1_000
        })
    );
}

#[test]
fn negative_value_length_is_refused() {
    // Single record with no key and value length -1 (zigzag 1).
    let mut b = build(
        &[TestRecord {
            key: None,
            value: vec![],
            headers: vec![],
            timestamp_ms: 5,
        }],
        None,
    )
    .to_vec();
    // length, delta, key -1, value 0, headers 0
    assert_eq!(&b[56..], &[4, 0, 1, 0, 0][..]);
    b[59] = 1;
    recrc(&mut b);
    assert!(matches!(
        validate(&b),
        Err(BatchError::InvalidLength { len: -1, .. })
    ));
}

#[test]
fn non_utf8_header_key_is_refused() {
    let mut b = small_batch().to_vec();
    // The first record's header key "h" is at byte 56 + 13.
    assert_eq!(b[69], b'h');
    b[69] = 0xff;
    recrc(&mut b);
    assert!(matches!(
        validate(&b),
        Err(BatchError::HeaderKeyNotUtf8 { index: 0, .. })
    ));
}

#[test]
fn builder_is_reusable_and_resets_its_producer_stamp() {
    let mut builder = BatchBuilder::with_capacity(256);
    builder.set_producer(9, 1, 100);
    builder.push(None, b"a", &[], 1);
    assert_eq!(builder.record_count(), 1);
    let first = builder.finish();
    assert!(builder.is_empty());
    assert_eq!(builder.len_bytes(), HEADER_BYTES);
    builder.push(Some(b"k"), b"b", &[], 2);
    builder.push(Some(b"k"), b"c", &[], 3);
    let expected_len = HEADER_BYTES
        + BatchBuilder::record_bytes(Some(b"k"), b"b", &[], 0)
        + BatchBuilder::record_bytes(Some(b"k"), b"c", &[], 1);
    assert_eq!(builder.len_bytes(), expected_len);
    let second = builder.finish();
    assert_eq!(second.len(), expected_len);
    let h1 = validate(&first).expect("valid");
    let h2 = validate(&second).expect("valid");
    assert_eq!((h1.producer_id, h1.base_sequence), (9, 100));
    assert_eq!((h2.producer_id, h2.record_count), (0, 2));
    builder.push(None, b"x", &[], 1);
    builder.clear();
    assert!(builder.is_empty());
    assert_eq!(builder.len_bytes(), HEADER_BYTES);
}

#[test]
fn decoded_values_are_slices_of_the_batch() {
    let b = small_batch();
    let range = b.as_ptr_range();
    for m in decode_records(&b, 0) {
        let m = m.expect("valid");
        assert!(range.contains(&m.value.as_ptr()));
    }
}

#[test]
fn set_producer_renumbers_a_batch_and_keeps_it_valid() {
    let original = small_batch();
    let mut b = original.to_vec();
    batch::set_producer(&mut b, 8, 3, 17).expect("rewrite");
    let h = validate(&b).expect("still valid");
    assert_eq!(
        (h.producer_id, h.producer_epoch, h.base_sequence),
        (8, 3, 17)
    );
    assert_eq!(
        &b[HEADER_BYTES..],
        &original[HEADER_BYTES..],
        "records untouched"
    );
    assert_eq!(
        batch::set_producer(&mut b[..40], 1, 1, 1),
        Err(BatchError::TooShort { len: 40 })
    );
}

fn build_compressed(records: &[TestRecord], compression: batch::Compression) -> Bytes {
    build_with(records, None, compression)
}

/// Records that compress: repeated JSON-ish values.
fn compressible(n: usize) -> Vec<TestRecord> {
    (0..n)
        .map(|i| TestRecord {
            key: Some(format!("user-{}", i % 7).into_bytes()),
            value: format!(
                r#"{{"level":"INFO","service":"checkout","order":{i},"status":"paid"}}"#
            )
            .into_bytes(),
            headers: vec![("trace".into(), b"abc".to_vec())],
            timestamp_ms: 1_700_000_000_000 + i as i64,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn compressed_batches_round_trip_and_validate_without_decompressing(
        recs in proptest::collection::vec(test_record(), 1..20),
        zstd in any::<bool>(),
    ) {
        let compression = if zstd { batch::Compression::Zstd } else { batch::Compression::Lz4 };
        let batch = build_compressed(&recs, compression);
        let plain = build(&recs, None);
        let header = validate(&batch).expect("valid");
        prop_assert_eq!(header.record_count as usize, recs.len());
        prop_assert_eq!(header.max_timestamp, recs.iter().map(|r| r.timestamp_ms).max().unwrap());
        let a: Vec<_> = decode_records(&batch, 5).collect::<Result<_, _>>().expect("decodes");
        let b: Vec<_> = decode_records(&plain, 5).collect::<Result<_, _>>().expect("decodes");
        prop_assert_eq!(a, b);
    }
}

#[test]
fn compression_shrinks_repetitive_batches_and_corruption_is_reported_not_panicked() {
    for compression in [batch::Compression::Lz4, batch::Compression::Zstd] {
        let recs = compressible(500);
        let batch = build_compressed(&recs, compression);
        let plain = build(&recs, None);
        assert!(
            batch.len() * 3 < plain.len(),
            "{compression:?}: {} of {} bytes",
            batch.len(),
            plain.len()
        );
        assert_eq!(
            batch[17], compression as u8,
            "the codec is in the attributes"
        );
        assert_eq!(
            decode_records(&batch, 0).count(),
            500,
            "every record decodes"
        );
        // A flipped bit anywhere after the magic fails the CRC.
        let mut bad = batch.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(validate(&bad).is_err());
        // A corrupt payload with a matching CRC (a buggy producer) is valid to the
        // broker but reported to the consumer as an error, never a panic.
        let mut forged = batch.to_vec();
        for b in &mut forged[HEADER_BYTES + 4..] {
            *b = 0xff;
        }
        let crc = crc32fast::hash(&forged[16..]);
        forged[12..16].copy_from_slice(&crc.to_le_bytes());
        let forged = Bytes::from(forged);
        validate(&forged).expect("the broker does not decompress");
        let results: Vec<_> = decode_records(&forged, 0).collect();
        assert!(
            matches!(results.as_slice(), [Err(BatchError::CorruptCompression(_))]),
            "{results:?}"
        );
        // A declared size beyond the limit is refused by the broker.
        let mut huge = batch.to_vec();
        huge[HEADER_BYTES..HEADER_BYTES + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = crc32fast::hash(&huge[16..]);
        huge[12..16].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            validate(&huge),
            Err(BatchError::CorruptCompression(_))
        ));
        // The producer's own record iterator refuses compressed batches.
        assert!(records(&batch).next().expect("an item").is_err());
    }
    // Incompressible data stays uncompressed.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut noise_byte = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 32) as u8
    };
    let noise: Vec<TestRecord> = (0..4)
        .map(|_| TestRecord {
            key: None,
            value: (0..200).map(|_| noise_byte()).collect(),
            headers: vec![],
            timestamp_ms: 0,
        })
        .collect();
    let batch = build_compressed(&noise, batch::Compression::Lz4);
    assert_eq!(batch[17], 0, "no gain, no compression");
}

#[test]
fn a_sealed_batch_compressed_later_equals_one_compressed_when_sealed() {
    for compression in [batch::Compression::Lz4, batch::Compression::Zstd] {
        let recs = compressible(300);
        let sealed = build_with(&recs, Some((42, 3, 1000)), batch::Compression::None);
        let later = batch::compress(&sealed, compression);
        let at_once = build_with(&recs, Some((42, 3, 1000)), compression);
        assert_eq!(later, at_once, "{compression:?}: the same bytes either way");
        let header = validate(&later).expect("valid");
        assert_eq!(
            (
                header.producer_id,
                header.producer_epoch,
                header.base_sequence
            ),
            (42, 3, 1000),
            "the producer stamp survives"
        );
        assert_eq!(
            batch::compress(&later, compression),
            later,
            "a compressed batch is left alone"
        );
    }
    // Nothing to gain: the batch comes back as it was.
    let tiny = small_batch();
    assert_eq!(batch::compress(&tiny, batch::Compression::Lz4), tiny);
    assert_eq!(batch::compress(&tiny, batch::Compression::None), tiny);
}
