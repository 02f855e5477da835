//! The main job: every layer of wgpu-embed on the default adapter, with small inputs
//! whose results a person can check by eye.
//!
//! `cargo run --release --example demo` (or `bash .ci/demo`, which installs lavapipe first).

use std::time::Instant;
use wgpu_embed::Block;
use wgpu_embed::EmbeddingOptions;

use wgpu_embed::{
    AxialPositionEmbedding, BagMode, Context, Embedding, EmbeddingBag, EmbeddingSumLayerNorm, GpuTensor, GradOptions, HostTable, Indices,
    LayerNorm, Metric, Optimizer, OptimizerKind, QuantizedEmbedding, QuantizedEmbeddingBag, QuantizedTable, Retriever, Scheme,
    StableEmbedding,
};

fn show(name: &str, shape: &[usize], values: &[f32]) {
    let d = *shape.last().unwrap_or(&1);
    println!("  {name} {shape:?}");
    for row in values.chunks(d.max(1)).take(6) {
        let cells: Vec<String> = row.iter().take(8).map(|v| format!("{v:8.4}")).collect();
        println!("    [{}{}]", cells.join(" "), if row.len() > 8 { " …" } else { "" });
    }
}

fn main() -> Result<(), wgpu_embed::Error> {
    let started = Instant::now();
    let ctx = Context::new().block()?;
    let info = ctx.adapter_info();
    println!("adapter: {} ({:?}, {:?})", info.name, info.backend, info.device_type);
    println!(
        "  max storage binding: {} MiB, max workgroups per dimension: {}",
        ctx.max_binding_size() >> 20,
        ctx.limits().max_compute_workgroups_per_dimension
    );
    // CPU adapters read lookup tables from texture copies (see README, Runtime).
    println!("  lookups read tables from {}", if ctx.reads_tables_from_textures() { "texture copies" } else { "buffers" });

    // A 6 x 4 table whose row r is r, r+0.1, r+0.2, r+0.3: easy to read back.
    let (v, d) = (6usize, 4usize);
    let table: Vec<f32> = (0..v * d).map(|i| (i / d) as f32 + (i % d) as f32 * 0.1).collect();

    println!("\nEmbedding: rows 5, 0, 3 of a 6 x 4 table (padding_idx = 0 returns its stored row, as PyTorch)");
    let emb = Embedding::from_pretrained(&ctx, &table, v, d)?.with_padding_idx(Some(0))?;
    let out = emb.forward(&ctx, Indices::i64(&[5, 0, 3], &[3]))?;
    show("out", out.shape(), &out.read_f32(&ctx).block()?);

    println!("\nEmbedding with max_norm = 1 (L2): referenced rows renormalised in place on the GPU");
    let emb = Embedding::from_pretrained(&ctx, &table, v, d)?.with_max_norm(Some(1.0), 2.0)?;
    let out = emb.forward(&ctx, Indices::i32(&[[2, 4], [2, 1]].concat(), &[2, 2]))?;
    show("out", out.shape(), &out.read_f32(&ctx).block()?);
    show("weight after", emb.weight().shape(), &emb.weight().read_f32(&ctx).block()?);

    for mode in [BagMode::Sum, BagMode::Mean, BagMode::Max] {
        println!("\nEmbeddingBag {}: bags [1, 2, 3] [] [4, 0(padding), 5]", mode.name());
        let bag = EmbeddingBag::from_pretrained(&ctx, &table, v, d, mode)?.with_padding_idx(Some(0))?;
        let out = bag.forward(&ctx, Indices::i64(&[1, 2, 3, 4, 0, 5], &[6]), Some(Indices::i64(&[0, 3, 3], &[3])), None)?;
        show("out", out.shape(), &out.read_f32(&ctx).block()?);
    }

    println!("\nEmbeddingBag sum with 2-D input [[1, 2], [3, 3]] with per_sample_weights [[1, 0.5], [2, 0]]");
    let bag = EmbeddingBag::from_pretrained(&ctx, &table, v, d, BagMode::Sum)?;
    let out = bag.forward(&ctx, Indices::i64(&[1, 2, 3, 3], &[2, 2]), None, Some((&[1.0, 0.5, 2.0, 0.0], &[2, 2])))?;
    show("out", out.shape(), &out.read_f32(&ctx).block()?);

    println!("\nLayerNorm over D = 4 (eps 1e-5, gamma 1, beta 0): each row has mean 0 and variance 1");
    let ln = LayerNorm::new(&ctx, d, 1e-5, true)?;
    let out = ln.forward(&ctx, &table[..2 * d], &[2, d])?;
    show("out", out.shape(), &out.read_f32(&ctx).block()?);
    println!("  LayerNorm of a lookup, without leaving the GPU:");
    let looked_up = Embedding::from_pretrained(&ctx, &table, v, d)?.forward(&ctx, Indices::i32(&[5, 1], &[2]))?;
    let out = ln.forward_gpu(&ctx, &looked_up)?;
    show("out", out.shape(), &out.read_f32(&ctx).block()?);

    println!("\nStableEmbedding (bitsandbytes): xavier-uniform table, lookup + LayerNorm in one kernel");
    let stable = StableEmbedding::new(&ctx, 1000, 8, EmbeddingOptions::default().padding_idx(0).seed(7))?;
    let out = stable.forward(&ctx, Indices::i64(&[0, 1, 999], &[3]))?;
    show("out (row 0 is the zeroed padding row, so LayerNorm gives beta = 0)", out.shape(), &out.read_f32(&ctx).block()?);

    println!("\nBERT embedding block: LayerNorm(word[t] + position[p] + token_type[s]) in one kernel");
    let word: Vec<f32> = (0..10 * d).map(|i| ((i * 7) % 11) as f32 * 0.1).collect();
    let position: Vec<f32> = (0..4 * d).map(|i| (i % 5) as f32 * 0.01).collect();
    let token_type: Vec<f32> = vec![0.0; 2 * d];
    let tables = [HostTable::f32(&word, 10, d)?, HostTable::f32(&position, 4, d)?, HostTable::f32(&token_type, 2, d)?];
    let bert = EmbeddingSumLayerNorm::new(&ctx, &tables, None, None, 1e-12)?;
    let shape = [1, 4];
    let out = bert
        .forward(&ctx, &[Indices::i64(&[2, 7, 7, 3], &shape), Indices::i64(&[0, 1, 2, 3], &shape), Indices::i64(&[0, 0, 1, 1], &shape)])?;
    show("out", out.shape(), &out.read_f32(&ctx).block()?);

    println!("\nAxial position embeddings (Reformer): row p = weight0[p / 3] ++ weight1[p % 3], 2 x 3 positions");
    let axial = AxialPositionEmbedding::from_pretrained(&ctx, &[1.0, 2.0], &[0.1, 0.2, 0.3], [2, 3], [1, 1])?;
    let out = axial.forward(&ctx, Indices::i64(&[0, 1, 2, 3, 4, 5], &[6]))?;
    show("out", out.shape(), &out.read_f32(&ctx).block()?);
    match axial.forward(&ctx, Indices::i64(&[6], &[1])) {
        Err(e) => println!("  position 6: {e}"),
        Ok(_) => println!("  position 6: (accepted?!)"),
    }

    println!("\nQuantized tables: 5000 x 64, quantized on the GPU, dequantized inside the lookup and bag kernels");
    let (qv, qd) = (5000usize, 64usize);
    let big: Vec<f32> = (0..qv * qd).map(|i| ((i * 2654435761usize) % 1000) as f32 / 500.0 - 1.0).collect();
    for scheme in [Scheme::Int8Blockwise, Scheme::Int8Rowwise, Scheme::Nf4, Scheme::Fp4] {
        let q = QuantizedTable::from_pretrained(&ctx, &big, qv, qd, scheme, None)?;
        let (gpu, f32_bytes) = (q.gpu_bytes(), q.f32_bytes());
        let lookup = QuantizedEmbedding::from_table(q).forward(&ctx, Indices::i64(&[42], &[1]))?.read_f32(&ctx).block()?;
        let worst = lookup.iter().zip(&big[42 * qd..43 * qd]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        println!(
            "  {:<14} {:>7} bytes on the GPU ({:.3} of f32's {}); row 42 [{:.4} {:.4} {:.4} …] vs f32 [{:.4} {:.4} {:.4} …], max |error| {worst:.4}",
            scheme.name(), gpu, gpu as f64 / f32_bytes as f64, f32_bytes, lookup[0], lookup[1], lookup[2], big[42 * qd], big[42 * qd + 1], big[42 * qd + 2]
        );
    }
    let qbag = QuantizedEmbeddingBag::from_table(QuantizedTable::from_pretrained(&ctx, &big, qv, qd, Scheme::Nf4, None)?, BagMode::Mean);
    let out = qbag.forward(&ctx, Indices::i64(&[1, 2, 3, 4999], &[4]), Some(Indices::i64(&[0, 3], &[2])), None)?;
    show("NF4 bag mean of [1, 2, 3] [4999]", out.shape(), &out.read_f32(&ctx).block()?);

    println!("\nTraining: one fused backward + SparseAdam step on the 6 x 4 table (rows 2 and 5 touched)");
    let trained = Embedding::from_pretrained(&ctx, &table, v, d)?;
    let mut opt = Optimizer::new(&ctx, OptimizerKind::SparseAdam { lr: 0.1, betas: (0.9, 0.999), eps: 1e-8 }, trained.weight())?;
    let grad_out = GpuTensor::from_f32(&ctx, &[1.0; 12], &[3, 4])?;
    opt.step_embedding(&ctx, &trained, Indices::i64(&[2, 5, 2], &[3]), &grad_out).block()?;
    show(
        "table after the step (Adam's first step moves each touched entry by -lr)",
        trained.weight().shape(),
        &trained.weight().read_f32(&ctx).block()?,
    );
    let sparse = trained.backward(&ctx, Indices::i64(&[2, 5, 2], &[3]), &grad_out, GradOptions::default().sparse(true)).block()?;
    if let wgpu_embed::Gradient::Sparse { values, .. } = &sparse {
        show("its sparse gradient (rows 2, 5; row 2 read twice)", values.shape(), &values.read_f32(&ctx).block()?);
    }

    println!("\nRetrieval: the 3 rows of the 5000 x 64 table (int8 row-wise, scored from its codes) nearest row 42 by cosine");
    let retriever = Retriever::quantized(QuantizedTable::from_pretrained(&ctx, &big, qv, qd, Scheme::Int8Rowwise, None)?, Metric::Cosine);
    let top = retriever.search(&ctx, &big[42 * qd..43 * qd], 3)?;
    let rows: Vec<i32> = bytemuck::pod_collect_to_vec(&top.indices.read_bytes(&ctx).block()?);
    println!(
        "  rows {rows:?}, scores {:?} (the table repeats every 125 rows: equal scores come in row order)",
        top.scores.read_f32(&ctx).block()?
    );

    println!("\nA refusal, before any GPU work:");
    match emb.forward(&ctx, Indices::i64(&[1, 6], &[2])) {
        Err(e) => println!("  {e}"),
        Ok(_) => println!("  (accepted?!)"),
    }

    println!("\ndone in {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
    Ok(())
}
