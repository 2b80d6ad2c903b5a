//! Record-batch codec speed: encode, validate and decode a batch of 1000 records of
//! 100-byte values (16-byte keys, no headers). Criterion reports time per batch;
//! divide by 1000 for ns/record (throughput is shown as records/s).
//!
//! `cargo bench -p raftmq-proto --bench batch`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use raftmq_proto::batch::{decode_records, records, validate, BatchBuilder};

const RECORDS: usize = 1000;
const VALUE_BYTES: usize = 100;

fn build(builder: &mut BatchBuilder, keys: &[[u8; 16]], value: &[u8]) -> bytes::Bytes {
    builder.set_producer(1, 0, 0);
    for (i, key) in keys.iter().enumerate() {
        builder.push(Some(key), value, &[], 1_700_000_000_000 + i as i64);
    }
    builder.finish()
}

fn bench_batch(c: &mut Criterion) {
    let value = vec![b'x'; VALUE_BYTES];
    let keys: Vec<[u8; 16]> = (0..RECORDS as u128).map(|i| i.to_le_bytes()).collect();
    let mut builder = BatchBuilder::with_capacity(RECORDS * (VALUE_BYTES + 32));
    let batch = build(&mut builder, &keys, &value);

    let mut group = c.benchmark_group("batch_1000x100B");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("encode", |b| {
        b.iter(|| black_box(build(&mut builder, &keys, black_box(&value))))
    });
    group.bench_function("validate", |b| {
        b.iter(|| validate(black_box(&batch)).expect("valid"))
    });
    group.bench_function("decode_borrowed", |b| {
        b.iter(|| {
            let mut total = 0usize;
            for r in records(black_box(&batch)) {
                total += r.expect("valid").value.len();
            }
            total
        })
    });
    group.bench_function("decode_bytes", |b| {
        b.iter(|| {
            let mut total = 0usize;
            for m in decode_records(black_box(&batch), 0) {
                total += m.expect("valid").value.len();
            }
            total
        })
    });
    group.bench_function("validate_and_decode_bytes", |b| {
        b.iter(|| {
            validate(black_box(&batch)).expect("valid");
            decode_records(&batch, 0)
                .map(|m| m.expect("valid").value.len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_batch);
criterion_main!(benches);
