//! Semantic search on the GPU: the 2 518 docstring summaries of `corpus.tsv` (Python's
//! standard library, made by `make_corpus.py`) are embedded by mean-pooling
//! all-MiniLM-L6-v2's word embeddings (an `EmbeddingBag` mean over the checkpoint's own
//! token ids), stored as an int8 row-wise quantized table, and searched by cosine with
//! a `Retriever`; queries are embedded the same way and never leave the GPU until their
//! hits are read.
//!
//!     cargo run --release --example search -- "join two paths"    # one query
//!     cargo run --release --example search                          # queries from stdin
//!
//! Needs the checkpoint in target/models/all-MiniLM-L6-v2 (`bash .ci/setup` fetches it)
//! or MINILM_DIR.

use std::io::BufRead;
use std::path::PathBuf;
use wgpu_embed::Block;

use wgpu_embed::{BagMode, Checkpoint, Context, EmbeddingBag, GpuTensor, Indices, Metric, QuantizedTable, Retriever, Scheme};

const CORPUS: &str = include_str!("corpus.tsv");
const HITS: usize = 5;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Token ids of each text (no [CLS] / [SEP]: the mean is over the words) as one flat
/// list and its bag offsets.
fn bags(tokenizer: &tokenizers::Tokenizer, texts: &[&str]) -> Result<(Vec<i64>, Vec<i64>), BoxError> {
    let (mut ids, mut offsets) = (Vec::new(), Vec::new());
    for text in texts {
        offsets.push(ids.len() as i64);
        ids.extend(tokenizer.encode(*text, false)?.get_ids().iter().map(|&i| i as i64));
    }
    Ok((ids, offsets))
}

/// The mean word embedding of each text, `[texts, 384]` on the GPU.
fn embed(ctx: &Context, words: &EmbeddingBag, tokenizer: &tokenizers::Tokenizer, texts: &[&str]) -> Result<GpuTensor, BoxError> {
    let (ids, offsets) = bags(tokenizer, texts)?;
    let (ids_shape, offsets_shape) = ([ids.len()], [offsets.len()]);
    Ok(words.forward(ctx, Indices::i64(&ids, &ids_shape), Some(Indices::i64(&offsets, &offsets_shape)), None)?)
}

fn main() -> Result<(), BoxError> {
    let dir = std::env::var_os("MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/models/all-MiniLM-L6-v2"));
    if !dir.join("model.safetensors").exists() {
        return Err(format!("{} has no model.safetensors: run `bash .ci/setup` or set MINILM_DIR", dir.display()).into());
    }
    let ctx = Context::new().block()?;
    println!("adapter: {} ({:?})", ctx.adapter_info().name, ctx.adapter_info().backend);

    let checkpoint = Checkpoint::open(dir.join("model.safetensors"))?;
    let table = checkpoint.table("embeddings.word_embeddings.weight")?;
    let (vocab, dim) = (table.rows(), table.dim());
    let weight = GpuTensor::from_bytes(&ctx, table.bytes(), &[vocab, dim], table.dtype(), dim)?;
    let words = EmbeddingBag::from_tensor(weight, BagMode::Mean)?;
    let mut tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))?;
    tokenizer.with_padding(None);

    let started = std::time::Instant::now();
    let corpus: Vec<(&str, &str)> = CORPUS.lines().filter_map(|l| l.split_once('\t')).collect();
    let sentences: Vec<&str> = corpus.iter().map(|(_, s)| *s).collect();
    let embedded = embed(&ctx, &words, &tokenizer, &sentences)?;
    let quantized = QuantizedTable::from_tensor(&ctx, &embedded, Scheme::Int8Rowwise, None)?;
    println!(
        "corpus: {} sentences, embedded and quantized in {:.0} ms: {} bytes on the GPU (f32: {})",
        corpus.len(),
        started.elapsed().as_secs_f64() * 1e3,
        quantized.gpu_bytes(),
        quantized.f32_bytes()
    );
    let retriever = Retriever::quantized(quantized, Metric::Cosine);

    let search = |query: &str| -> Result<(), BoxError> {
        let t = std::time::Instant::now();
        let top = retriever.search_gpu(&ctx, &embed(&ctx, &words, &tokenizer, &[query])?, HITS)?;
        let scores = top.scores.read_f32(&ctx).block()?;
        let rows: Vec<i32> = bytemuck::pod_collect_to_vec(&top.indices.read_bytes(&ctx).block()?);
        println!("\nquery: {query:?} ({:.1} ms)", t.elapsed().as_secs_f64() * 1e3);
        for (score, &row) in scores.iter().zip(&rows) {
            let (name, sentence) = corpus[row as usize];
            println!("  {score:.3}  {name}: {sentence}");
        }
        Ok(())
    };
    let queries: Vec<String> = std::env::args().skip(1).collect();
    if queries.is_empty() {
        println!("type a query per line (end with Ctrl-D)");
        for line in std::io::stdin().lock().lines() {
            let line = line?;
            if !line.trim().is_empty() {
                search(line.trim())?;
            }
        }
    } else {
        for q in &queries {
            search(q)?;
        }
    }
    Ok(())
}
