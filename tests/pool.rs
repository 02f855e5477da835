//! Buffer reuse across calls: a loop of 10 000 like calls allocates nothing after its
//! first iterations and keeps the context's GPU bytes and the process's resident memory
//! flat; a reused buffer reads as a new one.

mod common;

use wgpu_embed::Block;
use wgpu_embed::{BagMode, ContextOptions, Embedding, EmbeddingBag, GpuTensor, Indices};

/// Resident memory of this process, from /proc/self/statm (pages of 4 KiB).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<u64>().ok()).expect("resident pages") * 4096
}

#[test]
fn ten_thousand_calls_keep_memory_flat() {
    let ctx = common::context(None);
    let (v, d) = (1000, 64);
    let table = common::Rng(7).vec_f32(v * d);
    let emb = Embedding::from_pretrained(&ctx, &table, v, d).unwrap();
    let bag = EmbeddingBag::from_pretrained(&ctx, &table, v, d, BagMode::Mean).unwrap();
    let table_bytes = ctx.memory().live_bytes;
    assert!(table_bytes >= (v * d * 4) as u64, "the table's {} bytes are not counted: {:?}", v * d * 4, ctx.memory());

    // One lookup of 3 indices and one mean bag of them, read back and checked each time.
    let call = |i: usize| {
        let ids = [(i % v) as i32, ((i * 7 + 1) % v) as i32, ((i * 13 + 2) % v) as i32];
        let rows = emb.forward(&ctx, Indices::i32(&ids, &[3])).unwrap().read_f32(&ctx).block().unwrap();
        let mean =
            bag.forward(&ctx, Indices::i32(&ids, &[3]), Some(Indices::i32(&[0], &[1])), None).unwrap().read_f32(&ctx).block().unwrap();
        for (k, &id) in ids.iter().enumerate() {
            assert_eq!(rows[k * d..(k + 1) * d], table[id as usize * d..(id as usize + 1) * d], "call {i}: row {k}");
        }
        let want = (0..d).map(|j| ids.iter().map(|&id| table[id as usize * d + j]).sum::<f32>() / 3.0);
        for (j, w) in want.enumerate() {
            assert!((mean[j] - w).abs() <= 1e-6, "call {i}: bag column {j}: {} vs {w}", mean[j]);
        }
    };
    for i in 0..100 {
        call(i);
    }
    let (before, rss_before) = (ctx.memory(), rss_bytes());
    for i in 100..10_100 {
        call(i);
    }
    let (after, rss_after) = (ctx.memory(), rss_bytes());
    eprintln!("before: {before:?}, RSS {rss_before}; after 10 000 calls: {after:?}, RSS {rss_after}");
    assert_eq!(after.live_bytes, table_bytes, "only the table stays alive between calls");
    assert_eq!(after.live_bytes, before.live_bytes);
    assert_eq!(after.pooled_bytes, before.pooled_bytes, "the pool does not grow");
    assert_eq!(after.buffers_created, before.buffers_created, "no buffer created after the warm-up");
    // Each call uploads its indices and writes an output, twice (lookup and bag).
    assert!(after.buffers_reused - before.buffers_reused >= 4 * 10_000, "{} reuses", after.buffers_reused - before.buffers_reused);
    assert!(rss_after < rss_before + (16 << 20), "resident memory grew from {rss_before} to {rss_after} bytes");
}

#[test]
fn a_reused_buffer_reads_as_a_new_one() {
    let ctx = common::context(None);
    let ones = GpuTensor::from_f32(&ctx, &[1.0; 24], &[4, 6]).unwrap();
    assert_eq!(ones.read_f32(&ctx).block().unwrap(), vec![1.0; 24]);
    drop(ones);
    // Held back until the next submission (an encoder might still use it), then offered.
    GpuTensor::from_f32(&ctx, &[2.0; 3], &[3]).unwrap().read_f32(&ctx).block().unwrap();
    let reused = ctx.memory().buffers_reused;
    let zeros = GpuTensor::zeros(&ctx, &[4, 6], wgpu_embed::DType::F32, 6).unwrap();
    assert_eq!(ctx.memory().buffers_reused, reused + 1, "the zeros took the dropped buffer");
    assert_eq!(zeros.read_f32(&ctx).block().unwrap(), vec![0.0; 24]);
    // An upload shorter than its buffer (16-byte minimum) pads with zeros again.
    drop(zeros);
    GpuTensor::from_f32(&ctx, &[2.0; 3], &[3]).unwrap().read_f32(&ctx).block().unwrap();
    let bytes = GpuTensor::from_bytes(&ctx, &[5, 6, 7], &[3], wgpu_embed::DType::U8, 1).unwrap();
    assert_eq!(bytes.read_bytes(&ctx).block().unwrap(), vec![5, 6, 7]);
}

#[test]
fn a_pool_of_zero_bytes_reuses_nothing() {
    let ctx = wgpu_embed::Context::with_options(ContextOptions::default().pool_bytes(0)).block().unwrap();
    for _ in 0..3 {
        let t = GpuTensor::from_f32(&ctx, &[3.0; 8], &[8]).unwrap();
        assert_eq!(t.read_f32(&ctx).block().unwrap(), vec![3.0; 8]);
    }
    let m = ctx.memory();
    assert_eq!((m.buffers_reused, m.pooled_bytes, m.live_bytes), (0, 0, 0), "{m:?}");
    assert_eq!(m.buffers_created, 3);
}
