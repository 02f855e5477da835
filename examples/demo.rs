//! The main job: every layer of wgpu-embed on the default adapter, with small inputs
//! whose results a person can check by eye.
//!
//! `cargo run --release --example demo` (or `bash .ci/demo`, which installs lavapipe first).

use std::time::Instant;

use wgpu_embed::{BagMode, Context, Embedding, EmbeddingBag, Indices};

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
    let ctx = Context::new()?;
    let info = ctx.adapter_info();
    println!("adapter: {} ({:?}, {:?})", info.name, info.backend, info.device_type);
    println!("  max storage binding: {} MiB, max workgroups per dimension: {}", ctx.max_binding_size() >> 20, ctx.limits().max_compute_workgroups_per_dimension);

    // A 6 x 4 table whose row r is r, r+0.1, r+0.2, r+0.3: easy to read back.
    let (v, d) = (6usize, 4usize);
    let table: Vec<f32> = (0..v * d).map(|i| (i / d) as f32 + (i % d) as f32 * 0.1).collect();

    println!("\nEmbedding: rows 5, 0, 3 of a 6 x 4 table (padding_idx = 0 returns its stored row, as PyTorch)");
    let emb = Embedding::from_pretrained(&ctx, &table, v, d)?.with_padding_idx(Some(0))?;
    let out = emb.forward(&ctx, Indices::i64(&[5, 0, 3], &[3]))?;
    show("out", out.shape(), &out.to_vec_f32(&ctx)?);

    println!("\nEmbedding with max_norm = 1 (L2): referenced rows renormalised in place on the GPU");
    let emb = Embedding::from_pretrained(&ctx, &table, v, d)?.with_max_norm(Some(1.0), 2.0)?;
    let out = emb.forward(&ctx, Indices::i32(&[[2, 4], [2, 1]].concat(), &[2, 2]))?;
    show("out", out.shape(), &out.to_vec_f32(&ctx)?);
    show("weight after", emb.weight().shape(), &emb.weight().to_vec_f32(&ctx)?);

    for mode in [BagMode::Sum, BagMode::Mean, BagMode::Max] {
        println!("\nEmbeddingBag {}: bags [1, 2, 3] [] [4, 0(padding), 5]", mode.name());
        let bag = EmbeddingBag::from_pretrained(&ctx, &table, v, d, mode)?.with_padding_idx(Some(0))?;
        let out = bag.forward(&ctx, Indices::i64(&[1, 2, 3, 4, 0, 5], &[6]), Some(Indices::i64(&[0, 3, 3], &[3])), None)?;
        show("out", out.shape(), &out.to_vec_f32(&ctx)?);
    }

    println!("\nEmbeddingBag sum with 2-D input [[1, 2], [3, 3]] with per_sample_weights [[1, 0.5], [2, 0]]");
    let bag = EmbeddingBag::from_pretrained(&ctx, &table, v, d, BagMode::Sum)?;
    let out = bag.forward(&ctx, Indices::i64(&[1, 2, 3, 3], &[2, 2]), None, Some((&[1.0, 0.5, 2.0, 0.0], &[2, 2])))?;
    show("out", out.shape(), &out.to_vec_f32(&ctx)?);

    println!("\nA refusal, before any GPU work:");
    match emb.forward(&ctx, Indices::i64(&[1, 6], &[2])) {
        Err(e) => println!("  {e}"),
        Ok(_) => println!("  (accepted?!)"),
    }

    println!("\ndone in {:.0} ms", started.elapsed().as_secs_f64() * 1e3);
    Ok(())
}
