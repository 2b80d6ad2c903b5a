//! Converting stored batches for a reader of the other protocol. A batch is stored
//! in the format its producer sent (raftmq's, magic 1, or Kafka's RecordBatch v2,
//! magic 2; `docs/protocol.md`); a reader of the same protocol gets the stored
//! bytes, a reader of the other protocol gets a converted copy. Conversion keeps
//! keys, values, timestamps and headers; offsets line up because both formats
//! hold one record per offset.

use bytes::{Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use raftmq_proto::batch::{self, BatchBuilder, BatchFormat};
use raftmq_proto::kafka_batch;

/// Why a stored batch could not be converted (it passed validation when it was
/// produced, so this means corruption, or a codec whose data does not decode).
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// Neither raftmq's nor Kafka's format.
    #[error("stored batch of unknown format")]
    UnknownFormat,
    /// raftmq's own format did not decode.
    #[error("stored batch does not decode: {0}")]
    Native(#[from] batch::BatchError),
    /// Kafka's format did not decode (or decompress).
    #[error("stored Kafka batch does not decode: {0}")]
    Kafka(String),
}

/// Appends `stored` (whose first record has offset `base_offset`) to `out` as Kafka
/// RecordBatch v2: a Kafka batch is copied with its base offset written in, a
/// raftmq batch is re-encoded (uncompressed).
pub fn append_as_kafka(
    stored: &Bytes,
    base_offset: u64,
    out: &mut BytesMut,
) -> Result<(), ConvertError> {
    match batch::format_of(stored) {
        Some(BatchFormat::Kafka) => {
            let start = out.len();
            out.extend_from_slice(stored);
            kafka_batch::set_base_offset(&mut out[start..], base_offset);
            Ok(())
        }
        Some(BatchFormat::Native) => {
            let mut records = Vec::new();
            for message in batch::decode_records(stored, base_offset) {
                let message = message?;
                let mut headers = IndexMap::new();
                for (key, value) in message.headers {
                    headers.insert(StrBytes::from_string(key), Some(value));
                }
                records.push(Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: -1,
                    producer_id: -1,
                    producer_epoch: -1,
                    timestamp_type: TimestampType::Creation,
                    offset: message.offset as i64,
                    // No producer: base sequence −1 (the encoder groups records
                    // whose sequence follows their offset into one batch).
                    sequence: (message.offset - base_offset) as i32 - 1,
                    timestamp: message.timestamp_ms,
                    key: message.key,
                    value: Some(message.value),
                    headers,
                });
            }
            let options = RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            };
            RecordBatchEncoder::encode(out, records.iter(), &options)
                .map_err(|e| ConvertError::Kafka(e.to_string()))
        }
        None => Err(ConvertError::UnknownFormat),
    }
}

/// Most bytes a compressed Kafka batch may decompress to for a native reader (what
/// raftmq's own compressed batches may declare): a small batch that inflates past
/// it (a decompression bomb) is refused instead of exhausting memory.
const MAX_DECOMPRESSED_BYTES: usize = raftmq_proto::batch::MAX_UNCOMPRESSED_BYTES as usize;

/// The xerial framing Kafka's Java clients put around snappy blocks.
const XERIAL_SNAPPY_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";

fn read_bounded(reader: impl std::io::Read) -> anyhow::Result<Bytes> {
    use std::io::Read;
    let mut out = Vec::new();
    reader
        .take(MAX_DECOMPRESSED_BYTES as u64 + 1)
        .read_to_end(&mut out)?;
    anyhow::ensure!(
        out.len() <= MAX_DECOMPRESSED_BYTES,
        "records decompress to more than {MAX_DECOMPRESSED_BYTES} bytes"
    );
    Ok(out.into())
}

fn snappy_bounded(input: &[u8]) -> anyhow::Result<Bytes> {
    use snap::raw::{decompress_len, Decoder};
    let block = |block: &[u8], out: &mut Vec<u8>| -> anyhow::Result<()> {
        let n = decompress_len(block)?;
        anyhow::ensure!(
            out.len() + n <= MAX_DECOMPRESSED_BYTES,
            "records decompress to more than {MAX_DECOMPRESSED_BYTES} bytes"
        );
        let start = out.len();
        out.resize(start + n, 0);
        Decoder::new().decompress(block, &mut out[start..])?;
        Ok(())
    };
    let mut out = Vec::new();
    let Some(mut rest) = input.strip_prefix(&XERIAL_SNAPPY_HEADER[..]) else {
        block(input, &mut out)?;
        return Ok(out.into());
    };
    while !rest.is_empty() {
        anyhow::ensure!(rest.len() >= 4, "truncated snappy block length");
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        anyhow::ensure!(len <= rest.len(), "truncated snappy block");
        block(&rest[..len], &mut out)?;
        rest = &rest[len..];
    }
    Ok(out.into())
}

/// Decompresses a Kafka batch's records with a bound on the output.
fn bounded_decompress(data: &mut Bytes, compression: Compression) -> anyhow::Result<Bytes> {
    let input = data.split_to(data.len());
    match compression {
        Compression::None => Ok(input),
        Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(&input[..])),
        Compression::Lz4 => read_bounded(lz4_flex::frame::FrameDecoder::new(&input[..])),
        Compression::Zstd => read_bounded(zstd::stream::read::Decoder::new(&input[..])?),
        Compression::Snappy => snappy_bounded(&input),
    }
}

/// A stored Kafka batch as a raftmq batch (decompressed), for a native consumer. A
/// null value becomes an empty one; a null header value an empty one.
pub fn kafka_to_native(stored: &Bytes) -> Result<Bytes, ConvertError> {
    let mut buf = stored.clone();
    let set =
        RecordBatchDecoder::decode_with_custom_compression(&mut buf, Some(bounded_decompress))
            .map_err(|e| ConvertError::Kafka(e.to_string()))?;
    let mut builder = BatchBuilder::with_capacity(stored.len() + 64);
    for record in &set.records {
        let headers: Vec<(&str, &[u8])> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref().unwrap_or(&[])))
            .collect();
        builder.push(
            record.key.as_deref(),
            record.value.as_deref().unwrap_or(&[]),
            &headers,
            record.timestamp,
        );
    }
    if builder.is_empty() {
        return Err(ConvertError::Kafka("batch holds no records".into()));
    }
    Ok(builder.finish())
}

/// Rewrites, in place, every Kafka batch of a native fetch answer into raftmq's
/// format (what a native consumer decodes). A batch that cannot be converted turns
/// the answer into a `CORRUPT_BATCH` error naming its offset.
pub fn fetch_for_native(response: &mut raftmq_proto::pb::Response) {
    use raftmq_proto::pb;
    let Some(pb::response::Body::Fetch(fetch)) = &mut response.body else {
        return;
    };
    if let Err(error) = batches_for_native(fetch) {
        response.body = None;
        response.error = Some(error);
    }
}

/// Rewrites, in place, every Kafka batch of one queue's fetch answer into raftmq's
/// format; the `CORRUPT_BATCH` error naming the offset of a batch that cannot be.
pub fn batches_for_native(
    fetch: &mut raftmq_proto::pb::FetchResponse,
) -> Result<(), raftmq_proto::pb::Error> {
    use raftmq_proto::pb;
    for fetched in &mut fetch.batches {
        if batch::format_of(&fetched.batch) != Some(BatchFormat::Kafka) {
            continue;
        }
        match kafka_to_native(&fetched.batch) {
            Ok(native) => fetched.batch = native,
            Err(e) => {
                return Err(pb::Error::new(
                    pb::ErrorCode::CorruptBatch,
                    format!(
                        "the batch at offset {} cannot be read: {e}",
                        fetched.base_offset
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka_batch(values: &[&str], compression: Compression) -> Bytes {
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32 - 1,
                timestamp: 1_700_000_000_000 + i as i64,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(v.to_string())),
                headers: IndexMap::from([(StrBytes::from_static_str("h"), Some(Bytes::from("x")))]),
            })
            .collect();
        let mut out = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut out, records.iter(), &options).expect("encode");
        out.freeze()
    }

    #[test]
    fn kafka_batches_validate_and_convert_both_ways() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let stored = kafka_batch(&["a", "bb", "ccc"], compression);
            let header = kafka_batch::validate(&stored).expect("a valid Kafka batch");
            assert_eq!(header.record_count, 3);
            assert_eq!(header.max_timestamp, 1_700_000_000_002);
            let native = kafka_to_native(&stored).expect("converts");
            let messages: Vec<_> = batch::decode_records(&native, 10)
                .collect::<Result<_, _>>()
                .expect("decodes");
            assert_eq!(messages.len(), 3);
            assert_eq!(messages[2].offset, 12);
            assert_eq!(&messages[1].value[..], b"bb");
            assert_eq!(messages[1].key.as_deref(), Some(&b"k1"[..]));
            assert_eq!(messages[0].headers, vec![("h".into(), Bytes::from("x"))]);
            assert_eq!(messages[2].timestamp_ms, 1_700_000_000_002);
            // Served to a Kafka reader: the same bytes with the offset written in.
            let mut out = BytesMut::new();
            append_as_kafka(&stored, 42, &mut out).expect("appends");
            let set = RecordBatchDecoder::decode(&mut out.freeze()).expect("decodes");
            assert_eq!(set.records[0].offset, 42);
            assert_eq!(set.records[2].offset, 44);
            // And a native batch served to a Kafka reader.
            let mut out = BytesMut::new();
            append_as_kafka(&native, 7, &mut out).expect("re-encodes");
            let set = RecordBatchDecoder::decode(&mut out.freeze()).expect("decodes");
            assert_eq!(set.records.len(), 3);
            assert_eq!(set.records[1].offset, 8);
            assert_eq!(set.records[1].value.as_deref(), Some(&b"bb"[..]));
        }
    }

    #[test]
    fn compressed_native_batches_are_served_to_kafka_readers() {
        let mut builder = BatchBuilder::with_capacity(4096);
        for i in 0..200 {
            let value = format!("{{\"order\":{i},\"status\":\"paid\"}}");
            builder.push(None, value.as_bytes(), &[], 1_700_000_000_000);
        }
        let stored = builder.finish_with(batch::Compression::Lz4);
        assert_eq!(stored[17], batch::Compression::Lz4 as u8);
        let mut out = BytesMut::new();
        append_as_kafka(&stored, 1000, &mut out).expect("converts");
        let set = RecordBatchDecoder::decode(&mut out.freeze()).expect("decodes");
        assert_eq!(set.records.len(), 200);
        assert_eq!(set.records[199].offset, 1199);
        assert_eq!(
            set.records[7].value.as_deref(),
            Some(&br#"{"order":7,"status":"paid"}"#[..])
        );
    }

    #[test]
    fn a_decompression_bomb_is_refused_for_native_readers() {
        for compression in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let big = Bytes::from(vec![0u8; MAX_DECOMPRESSED_BYTES + 1024]);
            let record = Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: 0,
                sequence: -1,
                timestamp: 0,
                key: None,
                value: Some(big),
                headers: IndexMap::new(),
            };
            let mut out = BytesMut::new();
            let options = RecordEncodeOptions {
                version: 2,
                compression,
            };
            RecordBatchEncoder::encode(&mut out, std::iter::once(&record), &options)
                .expect("encode");
            let stored = out.freeze();
            assert!(
                stored.len() < 8 << 20,
                "{compression:?}: {} bytes",
                stored.len()
            );
            kafka_batch::validate(&stored).expect("valid to the broker");
            let refused = kafka_to_native(&stored).expect_err("a bomb");
            assert!(
                refused.to_string().contains("decompress"),
                "{compression:?}: {refused}"
            );
        }
    }

    #[test]
    fn corrupt_kafka_batches_are_refused() {
        let stored = kafka_batch(&["a", "b"], Compression::None);
        for i in 16..stored.len() {
            let mut bad = stored.to_vec();
            bad[i] ^= 0x40;
            assert!(kafka_batch::validate(&bad).is_err(), "flip at {i} passed");
        }
        assert!(kafka_batch::validate(&stored[..stored.len() - 1]).is_err());
        let mut two = stored.to_vec();
        two.extend_from_slice(&stored);
        assert!(kafka_batch::validate(&two).is_err(), "two batches in one");
    }
}
