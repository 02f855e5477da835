//! One context shared by several threads running layers at once: every result is
//! right, and one thread's refused call does not leak its error into another's.

mod common;

use common::Rng;
use wgpu_embed::Block;
use wgpu_embed::{BagMode, Context, Embedding, EmbeddingBag, Error, GpuTensor, Indices};

// Compile-time: the types a server shares between threads are Send + Sync.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Context>();
    send_sync::<Embedding>();
    send_sync::<EmbeddingBag>();
    send_sync::<GpuTensor>();
    send_sync::<Error>();
};

const THREADS: u64 = 6;
const ROUNDS: usize = 6;

/// What one thread does each round, with its own data; `bad` threads also make a
/// refused call in between.
fn worker(ctx: &Context, shared: &Embedding, shared_table: &[f32], seed: u64) {
    let mut rng = Rng(seed * 7919 + 17);
    let (v, d) = (50 + rng.below(80) as usize, 1 + rng.below(40) as usize);
    let table = rng.vec_f32(v * d);
    let emb = Embedding::from_pretrained(ctx, &table, v, d).unwrap();
    let bag = EmbeddingBag::from_pretrained(ctx, &table, v, d, BagMode::Mean).unwrap();
    let sd = shared.embedding_dim();
    for round in 0..ROUNDS {
        let n = 1 + rng.below(300) as usize;
        let idx: Vec<i64> = (0..n).map(|_| rng.below(v as u64) as i64).collect();

        let out = emb.forward(ctx, Indices::i64(&idx, &[n])).unwrap().read_f32(ctx).block().unwrap();
        assert_eq!(out, common::lookup(&table, d, &idx), "thread {seed} round {round}: host indices");

        let gpu_idx: Vec<i32> = idx.iter().map(|&i| i as i32).collect();
        let t = GpuTensor::from_i32(ctx, &gpu_idx, &[n]).unwrap();
        let out = emb.forward_gpu(ctx, &t).block().unwrap().read_f32(ctx).block().unwrap();
        assert_eq!(out, common::lookup(&table, d, &idx), "thread {seed} round {round}: GPU indices");

        let mut offsets = vec![0i64];
        while (*offsets.last().unwrap() as usize) < n {
            let next = (*offsets.last().unwrap() + 1 + rng.below(9) as i64).min(n as i64);
            offsets.push(next);
        }
        let bounds: Vec<usize> = offsets.iter().map(|&o| o as usize).collect();
        offsets.pop();
        let out = bag.forward(ctx, Indices::i64(&idx, &[n]), Some(Indices::i64(&offsets, &[offsets.len()])), None).unwrap();
        let want = common::bag(&table, d, &idx, &bounds, "mean", None, None);
        common::assert_close(&out.read_f32(ctx).block().unwrap(), &want, 1e-5, 1e-5, &format!("thread {seed} round {round}: bags"));

        // The layer all threads share.
        let sidx: Vec<i64> = (0..7).map(|_| rng.below(shared.num_embeddings() as u64) as i64).collect();
        let out = shared.forward(ctx, Indices::i64(&sidx, &[7])).unwrap().read_f32(ctx).block().unwrap();
        assert_eq!(out, common::lookup(shared_table, sd, &sidx), "thread {seed} round {round}: shared layer");

        if seed % 2 == 1 {
            // A refused call (GPU-resident index out of range) in the middle of the others.
            let bad = GpuTensor::from_i32(ctx, &[0, v as i32 + round as i32], &[2]).unwrap();
            match emb.forward_gpu(ctx, &bad).block() {
                Err(Error::IndexOutOfRange { position: 1, value, .. }) => assert_eq!(value, v as i64 + round as i64),
                other => panic!("thread {seed}: expected IndexOutOfRange, got {other:?}.block()"),
            }
        }
    }
}

#[test]
fn layers_run_from_several_threads_at_once_with_right_results() {
    // A small binding limit, so that calls also split tables and outputs into segments.
    let ctx = common::context(Some(4096));
    let (v, d) = (200, 12);
    let shared_table: Vec<f32> = (0..v * d).map(|i| (i as f32).sin()).collect();
    let shared = Embedding::from_pretrained(&ctx, &shared_table, v, d).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|seed| {
                let (ctx, shared, shared_table) = (&ctx, &shared, &shared_table);
                s.spawn(move || worker(ctx, shared, shared_table, seed))
            })
            .collect();
        for h in handles {
            h.join().expect("a worker thread failed");
        }
    });
    assert!(ctx.check_alive().is_ok());
    assert_eq!(ctx.take_uncaptured_error(), None);
}

#[test]
fn max_norm_layer_shared_by_threads_renormalizes_each_row_once() {
    let ctx = common::context(None);
    let (v, d) = (64, 8);
    let table: Vec<f32> = (0..v * d).map(|i| ((i * 37 % 101) as f32 - 50.0) / 10.0).collect();
    let emb = Embedding::from_pretrained(&ctx, &table, v, d).unwrap().with_max_norm(Some(1.5), 2.0).unwrap();
    let per_thread: Vec<Vec<i64>> = (0..4).map(|t| (0..32).map(|i| ((i * 5 + t * 11) % v) as i64).collect()).collect();
    std::thread::scope(|s| {
        for idx in &per_thread {
            let (ctx, emb, table) = (&ctx, &emb, &table);
            s.spawn(move || {
                let out = emb.forward(ctx, Indices::i64(idx, &[idx.len()])).unwrap().read_f32(ctx).block().unwrap();
                // Whatever order the calls ran in, each referenced row is scaled once.
                let mut want_table = table.clone();
                common::renorm(&mut want_table, d, idx, 1.5, 2.0);
                common::assert_close(&out, &common::lookup(&want_table, d, idx), 1e-5, 1e-5, "renormalised rows");
            });
        }
    });
    let all: Vec<i64> = per_thread.concat();
    let mut want = table.clone();
    common::renorm(&mut want, d, &all, 1.5, 2.0);
    common::assert_close(&emb.weight().read_f32(&ctx).block().unwrap(), &want, 1e-5, 1e-5, "table after all threads");
}

#[test]
fn every_layer_gives_the_same_answer_from_many_threads_as_from_one() {
    use wgpu_embed::{
        AxialPositionEmbedding, EmbeddingSumLayerNorm, HostTable, LayerNorm, QuantizedEmbedding, QuantizedEmbeddingBag, QuantizedTable,
        Scheme, StableEmbedding,
    };

    let ctx = common::context(Some(8192));
    let (v, d) = (96, 16);
    let w: Vec<f32> = (0..v * d).map(|i| ((i * 29 % 97) as f32 - 48.0) / 13.0).collect();
    let idx: Vec<i64> = (0..40).map(|i| (i * 7 % v) as i64).collect();
    let offsets = [0i64, 5, 5, 17, 30];
    let ln = LayerNorm::new(&ctx, d, 1e-5, true).unwrap();
    let se = StableEmbedding::from_pretrained(&ctx, HostTable::f32(&w, v, d).unwrap(), Some(0), None, None, 1e-5).unwrap();
    let bert = EmbeddingSumLayerNorm::new(
        &ctx,
        &[HostTable::f32(&w, v, d).unwrap(), HostTable::f32(&w[..8 * d], 8, d).unwrap()],
        None,
        None,
        1e-12,
    )
    .unwrap();
    let axial = AxialPositionEmbedding::from_pretrained(&ctx, &w[..8 * d], &w[..12 * 4], [8, 12], [d, 4]).unwrap();
    let q = QuantizedTable::from_pretrained(&ctx, &w, v, d, Scheme::Nf4, Some(64)).map(QuantizedEmbedding::from_table).unwrap();
    let qb = QuantizedTable::from_pretrained(&ctx, &w, v, d, Scheme::Int8Blockwise, Some(64))
        .map(|t| QuantizedEmbeddingBag::from_table(t, BagMode::Mean))
        .unwrap();
    let small: Vec<i64> = idx.iter().map(|i| i % 8).collect();

    let run_all = || -> Vec<Vec<f32>> {
        let read = |t: GpuTensor| t.read_f32(&ctx).block().unwrap();
        vec![
            read(ln.forward(&ctx, &w[..40 * d], &[40, d]).unwrap()),
            read(se.forward(&ctx, Indices::i64(&idx, &[40])).unwrap()),
            read(bert.forward(&ctx, &[Indices::i64(&idx, &[40]), Indices::i64(&small, &[40])]).unwrap()),
            read(axial.forward(&ctx, Indices::i64(&idx, &[40])).unwrap()),
            read(q.forward(&ctx, Indices::i64(&idx, &[40])).unwrap()),
            read(qb.forward(&ctx, Indices::i64(&idx, &[40]), Some(Indices::i64(&offsets, &[5])), None).unwrap()),
        ]
    };
    let alone = run_all();
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..3 {
                    assert_eq!(run_all(), alone, "a layer's result changed when run from several threads");
                }
            });
        }
    });
}
