//! Recorded execution: pipelines of calls in one submission, their cost from the
//! context's counters, and GPU-resident indices checked in the same submission. Each
//! recorded pipeline must give, bit for bit, what the one-call paths give.

mod common;

use wgpu_embed::Block as _;
use wgpu_embed::{
    BagMode, Context, Embedding, EmbeddingBag, EmbeddingSumLayerNorm, Error, GpuTensor, HostTable, Indices, Metric, Optimizer,
    OptimizerKind, QuantizedTable, Retriever, Scheme,
};

const D: usize = 64;
const TOKENS: usize = 16;

struct Block {
    block: EmbeddingSumLayerNorm,
    ids: Vec<i64>,
    positions: Vec<i64>,
    types: Vec<i64>,
    /// Positions of the tokens the attention mask keeps.
    kept: Vec<i64>,
}

fn bert_block(ctx: &Context, rng: &mut common::Rng) -> Block {
    let (v, p) = (500, 32);
    let (word, pos, typ) = (rng.vec_f32(v * D), rng.vec_f32(p * D), rng.vec_f32(2 * D));
    let (gamma, beta) = (rng.vec_f32(D), rng.vec_f32(D));
    let tables = [HostTable::f32(&word, v, D).unwrap(), HostTable::f32(&pos, p, D).unwrap(), HostTable::f32(&typ, 2, D).unwrap()];
    let block = EmbeddingSumLayerNorm::new(ctx, &tables, Some(&gamma), Some(&beta), 1e-12).unwrap();
    Block {
        block,
        ids: (0..TOKENS).map(|_| rng.below(v as u64) as i64).collect(),
        positions: (0..TOKENS as i64).collect(),
        types: (0..TOKENS).map(|t| (t >= 10) as i64).collect(),
        kept: (0..13).collect(),
    }
}

impl Block {
    fn indices(&self) -> [Indices<'_>; 3] {
        const SHAPE: &[usize] = &[1, TOKENS];
        [Indices::i64(&self.ids, SHAPE), Indices::i64(&self.positions, SHAPE), Indices::i64(&self.types, SHAPE)]
    }
}

fn search_index(ctx: &Context, rng: &mut common::Rng, rows: usize) -> Retriever {
    let table = rng.vec_f32(rows * D);
    Retriever::quantized(QuantizedTable::from_pretrained(ctx, &table, rows, D, Scheme::Int8Rowwise, None).unwrap(), Metric::Cosine)
}

#[test]
fn embed_pool_and_search_is_one_submission_and_one_readback() {
    let ctx = common::context(None);
    let mut rng = common::Rng(0x5eed);
    let b = bert_block(&ctx, &mut rng);
    let retriever = search_index(&ctx, &mut rng, 2_518);
    let offsets = [0i64];

    // The one-call paths, each its own submission.
    let hidden = b.block.forward(&ctx, &b.indices()).unwrap().reshape(&[TOKENS, D]).unwrap();
    let bag = EmbeddingBag::from_tensor(hidden, BagMode::Mean).unwrap();
    let pooled = bag.forward(&ctx, Indices::i64(&b.kept, &[b.kept.len()]), Some(Indices::i64(&offsets, &[1])), None).unwrap();
    let want = retriever.search_gpu(&ctx, &pooled, 10).unwrap();
    let (want_rows, want_scores) = (want.indices.read_bytes(&ctx).block().unwrap(), want.scores.read_bytes(&ctx).block().unwrap());

    let before = ctx.stats();
    let mut run = ctx.record();
    let hidden = b.block.record(&mut run, &b.indices()).unwrap().reshape(&[TOKENS, D]).unwrap();
    let bag = EmbeddingBag::from_tensor(hidden, BagMode::Mean).unwrap();
    let pooled = bag.record(&mut run, Indices::i64(&b.kept, &[b.kept.len()]), Some(Indices::i64(&offsets, &[1])), None).unwrap();
    let top = retriever.record(&mut run, &pooled, 10).unwrap();
    let (rows, scores) = (run.read(&top.indices), run.read(&top.scores));
    let out = run.submit().unwrap().finish().block().unwrap();
    let after = ctx.stats();

    assert_eq!(after.submissions - before.submissions, 1, "{before:?} -> {after:?}");
    assert_eq!(after.readbacks - before.readbacks, 1, "{before:?} -> {after:?}");
    assert_eq!(after.waits - before.waits, 1, "{before:?} -> {after:?}");
    assert_eq!(after.bytes_read_back - before.bytes_read_back, 10 * 8, "the k rows and scores alone");
    // The block, the bag, the scores and the selection (one workgroup per query).
    assert_eq!(after.dispatches - before.dispatches, 4, "{before:?} -> {after:?}");
    assert_eq!(out.bytes(rows), &want_rows[..]);
    assert_eq!(out.bytes(scores), &want_scores[..]);
    // Distinct rows of the index, best first.
    let got = out.i32(rows);
    assert!(got.iter().all(|&r| (0..2_518).contains(&r)), "{got:?}");
    assert!(out.f32(scores).windows(2).all(|w| w[0] >= w[1]));
}

/// The user's own loss kernel, recorded between the layers' commands: `grad = out - target`.
fn record_loss(ctx: &Context, run: &mut wgpu_embed::Recording<'_>, out: &GpuTensor, target: &GpuTensor, grad: &GpuTensor) {
    let module = ctx.device().create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("loss"),
        source: wgpu::ShaderSource::Wgsl(
            "@group(0) @binding(0) var<storage, read> out: array<f32>;
             @group(0) @binding(1) var<storage, read> goal: array<f32>;
             @group(0) @binding(2) var<storage, read_write> grad: array<f32>;
             @compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3<u32>) {
                 grad[id.x] = out[id.x] - goal[id.x];
             }"
            .into(),
        ),
    });
    let pipeline = ctx.device().create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("loss"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: Default::default(),
        cache: None,
    });
    let entries: Vec<wgpu::BindGroupEntry<'_>> = [out, target, grad]
        .iter()
        .enumerate()
        .map(|(i, t)| wgpu::BindGroupEntry { binding: i as u32, resource: t.segments()[0].buffer().as_entire_binding() })
        .collect();
    let bind_group = ctx.device().create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("loss"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    });
    let mut pass = run.encoder().begin_compute_pass(&Default::default());
    pass.set_pipeline(&pipeline);
    pass.set_bind_group(0, &bind_group, &[]);
    pass.dispatch_workgroups((grad.numel() / 64) as u32, 1, 1);
}

fn sparse_adam() -> OptimizerKind {
    OptimizerKind::SparseAdam { lr: 0.01, betas: (0.9, 0.999), eps: 1e-8 }
}

#[test]
fn a_training_step_is_one_submission_and_no_wait() {
    let ctx = common::context(None);
    let mut rng = common::Rng(0x7ea);
    let v = 1_000;
    let table = rng.vec_f32(v * D);
    let ids: Vec<i64> = (0..TOKENS).map(|_| rng.below(v as u64) as i64).collect();
    let target = rng.vec_f32(TOKENS * D);
    let idx = || Indices::i64(&ids, &[TOKENS]);

    // One-call path: lookup, read back, the loss's gradient on the host, fused step.
    let emb_a = Embedding::from_pretrained(&ctx, &table, v, D).unwrap();
    let mut opt_a = Optimizer::new(&ctx, sparse_adam(), emb_a.weight()).unwrap();
    for _ in 0..2 {
        let out = emb_a.forward(&ctx, idx()).unwrap().read_f32(&ctx).block().unwrap();
        let grad: Vec<f32> = out.iter().zip(&target).map(|(o, t)| o - t).collect();
        let grad = GpuTensor::from_f32(&ctx, &grad, &[TOKENS, D]).unwrap();
        opt_a.step_embedding(&ctx, &emb_a, idx(), &grad).block().unwrap();
    }

    // Recorded: lookup, the user's loss kernel, fused backward + step: one submission.
    let emb_b = Embedding::from_pretrained(&ctx, &table, v, D).unwrap();
    let mut opt_b = Optimizer::new(&ctx, sparse_adam(), emb_b.weight()).unwrap();
    let target = GpuTensor::from_f32(&ctx, &target, &[TOKENS, D]).unwrap();
    for _ in 0..2 {
        let before = ctx.stats();
        let mut run = ctx.record();
        let out = emb_b.record(&mut run, idx()).unwrap();
        let grad = GpuTensor::zeros(&ctx, &[TOKENS, D], wgpu_embed::DType::F32, D).unwrap();
        record_loss(&ctx, &mut run, &out, &target, &grad);
        opt_b.record_step_embedding(&mut run, &emb_b, idx(), &grad).unwrap();
        drop(run.submit().unwrap());
        let after = ctx.stats();
        assert_eq!(after.submissions - before.submissions, 1, "{before:?} -> {after:?}");
        assert_eq!(after.waits - before.waits, 0, "{before:?} -> {after:?}");
        assert_eq!(after.readbacks - before.readbacks, 0, "{before:?} -> {after:?}");
        // The library's: the lookup, the index list sorted into runs (one workgroup), the
        // table segments' run ranges, the step (the loss kernel is the test's own).
        assert_eq!(after.dispatches - before.dispatches, 4, "{before:?} -> {after:?}");
    }
    assert_eq!(opt_b.steps(), 2);
    assert_eq!(ctx.take_uncaptured_error(), None);
    let (a, b) = (emb_a.weight().read_f32(&ctx).block().unwrap(), emb_b.weight().read_f32(&ctx).block().unwrap());
    let differ: Vec<usize> = (0..a.len()).filter(|&i| a[i].to_bits() != b[i].to_bits()).collect();
    assert!(
        differ.is_empty(),
        "{} values differ, first at {:?}: {:?}",
        differ.len(),
        differ.first(),
        differ.first().map(|&i| (a[i], b[i], table[i]))
    );
    assert_ne!(emb_b.weight().read_f32(&ctx).block().unwrap(), table, "the steps changed the table");
}

#[test]
fn retrieved_rows_feed_a_lookup_and_a_fused_step_without_readback() {
    for max_binding in [None, Some(4096)] {
        let ctx = common::context(max_binding);
        let mut rng = common::Rng(0xf00d);
        let v = 300;
        let table = rng.vec_f32(v * D);
        let emb = Embedding::from_pretrained(&ctx, &table, v, D).unwrap();
        let retriever = Retriever::new(emb.weight().clone(), Metric::Dot).unwrap();
        let query = GpuTensor::from_f32(&ctx, &rng.vec_f32(D), &[1, D]).unwrap();
        let mut opt = Optimizer::new(&ctx, sparse_adam(), emb.weight()).unwrap();
        let grad = GpuTensor::from_f32(&ctx, &rng.vec_f32(5 * D), &[1, 5, D]).unwrap();

        let before = ctx.stats();
        let mut run = ctx.record();
        let top = retriever.record(&mut run, &query, 5).unwrap();
        let rows = emb.record_gpu(&mut run, &top.indices).unwrap();
        let (row_ids, row_values) = (run.read(&top.indices), run.read(&rows));
        opt.record_step_embedding_gpu(&mut run, &emb, &top.indices, &grad).unwrap();
        let done = run.submit().unwrap();
        assert_eq!(ctx.stats().waits, before.waits, "nothing waited before the kernels ran");
        let out = done.finish().block().unwrap();
        assert_eq!(ctx.stats().submissions - before.submissions, 1);

        // The lookup gave the retrieved rows of the table as it was before the step.
        let ids = out.i32(row_ids);
        let want: Vec<f32> = ids.iter().flat_map(|&r| table[r as usize * D..(r as usize + 1) * D].to_vec()).collect();
        assert_eq!(out.f32(row_values), want, "binding limit {max_binding:?}");
        // The step changed those rows, and only those.
        let stepped = emb.weight().read_f32(&ctx).block().unwrap();
        for r in 0..v {
            let changed = stepped[r * D..(r + 1) * D] != table[r * D..(r + 1) * D];
            assert_eq!(changed, ids.contains(&(r as i32)), "row {r}");
        }
    }
}

#[test]
fn a_bad_gpu_resident_index_is_reported_when_awaited_and_writes_nothing() {
    // At 16 KiB bindings the table spans five segments.
    for max_binding in [None, Some(16384)] {
        let ctx = common::context(max_binding);
        let mut rng = common::Rng(0xbad);
        let v = 300;
        let table = rng.vec_f32(v * D);
        let emb = Embedding::from_pretrained(&ctx, &table, v, D).unwrap().with_max_norm(Some(0.5), 2.0).unwrap();
        let mut opt = Optimizer::new(&ctx, sparse_adam(), emb.weight()).unwrap();
        // The bad value is at position 37.
        let mut ids: Vec<i32> = (0..40).map(|i| (i * 7) % v as i32).collect();
        ids[37] = 5_000;
        let ids = GpuTensor::from_i32(&ctx, &ids, &[40]).unwrap();
        let grad = GpuTensor::from_f32(&ctx, &rng.vec_f32(40 * D), &[40, D]).unwrap();

        let waits = ctx.stats().waits;
        let mut run = ctx.record();
        let rows = emb.record_gpu(&mut run, &ids).unwrap();
        let read = run.read(&rows);
        opt.record_step_embedding_gpu(&mut run, &emb, &ids, &grad).unwrap();
        let done = run.submit().unwrap();
        assert_eq!(ctx.stats().waits, waits, "recording and submitting did not wait");
        match done.finish().block() {
            Err(Error::IndexOutOfRange { name, position, value, num_embeddings }) => {
                assert_eq!((name, position, value, num_embeddings), ("indices", 37, 5_000, v as u64), "{max_binding:?}")
            }
            other => panic!("expected the bad index at position 37, got {other:?}"),
        }
        let _ = read;
        // Neither the max-norm rewrite nor the step wrote a row.
        assert_eq!(emb.weight().read_f32(&ctx).block().unwrap(), table, "binding limit {max_binding:?}");
        for name in opt.state_names() {
            let state = opt.state(name).unwrap().read_f32(&ctx).block().unwrap();
            assert!(state.iter().all(|&x| x == 0.0), "state {name} untouched");
        }

        // A submission dropped unawaited still reports its bad index, at the next await.
        let mut run = ctx.record();
        emb.record_gpu(&mut run, &ids).unwrap();
        drop(run.submit().unwrap());
        let err = pollster::block_on(ctx.deferred_errors()).unwrap_err();
        assert!(matches!(err, Error::IndexOutOfRange { position: 37, value: 5_000, .. }), "{err:?}");
        pollster::block_on(ctx.deferred_errors()).unwrap();
    }
}

#[test]
fn prepared_pipelines_make_the_first_call_create_none() {
    let ctx = common::context(None);
    let mut rng = common::Rng(0x9a1e);
    let b = bert_block(&ctx, &mut rng);
    let retriever = search_index(&ctx, &mut rng, 700);
    let search = |run: &mut wgpu_embed::Recording<'_>| -> wgpu_embed::Result<wgpu_embed::TopK> {
        let hidden = b.block.record(run, &b.indices())?.reshape(&[TOKENS, D])?;
        let bag = EmbeddingBag::from_tensor(hidden, BagMode::Mean)?;
        let pooled = bag.record(run, Indices::i64(&b.kept, &[b.kept.len()]), Some(Indices::i64(&[0], &[1])), None)?;
        retriever.record(run, &pooled, 10)
    };
    let before = ctx.stats();
    ctx.prepare(|run| search(run).map(drop)).unwrap();
    let prepared = ctx.stats();
    assert!(prepared.pipelines_created > before.pipelines_created, "prepare made the pipelines");
    assert_eq!(prepared.submissions, before.submissions, "prepare ran nothing");
    let mut run = ctx.record();
    let top = search(&mut run).unwrap();
    let rows = run.read(&top.indices);
    let out = run.submit().unwrap().finish().block().unwrap();
    assert_eq!(ctx.stats().pipelines_created, prepared.pipelines_created, "the first real call found every pipeline");
    assert_eq!(out.i32(rows).len(), 10);
}
