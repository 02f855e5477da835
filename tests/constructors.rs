//! PyTorch-shaped constructors: fresh tables drawn on the GPU as `torch.nn.Embedding`
//! (N(0, 1)) and bitsandbytes' `StableEmbedding` (xavier-uniform) initialise them, with
//! the padding row zeroed; and the enums' names, parsed and printed as PyTorch spells
//! them.

mod common;

use std::str::FromStr;

use wgpu_embed::{
    BagMode, Block, CodeMap, Embedding, EmbeddingBag, EmbeddingOptions, Error, Indices, Metric, QuantizedEmbedding, Scheme,
    StableEmbedding, TableReads,
};

fn mean_std(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[test]
fn embedding_new_draws_standard_normal_rows_with_the_padding_row_zeroed() {
    let ctx = common::context(None);
    let (v, d) = (5000, 64); // 1.28 MB: two segments under 1 MiB bindings
    let emb = Embedding::new(&ctx, v, d, EmbeddingOptions::default().padding_idx(-2).seed(5)).unwrap();
    assert_eq!((emb.num_embeddings(), emb.embedding_dim(), emb.padding_idx()), (v, d, Some(v as u32 - 2)));
    let w = emb.weight().read_f32(&ctx).block().unwrap();
    let pad = (v - 2) * d;
    assert!(w[pad..pad + d].iter().all(|&x| x == 0.0), "padding row not zeroed");
    let others: Vec<f32> = w[..pad].iter().chain(&w[pad + d..]).copied().collect();
    let (mean, std) = mean_std(&others);
    // 319 936 draws: the sample mean and std lie well within 0.01 of N(0, 1)'s.
    assert!(mean.abs() < 0.01 && (std - 1.0).abs() < 0.01, "mean {mean}, std {std}");
    let beyond_3 = others.iter().filter(|x| x.abs() > 3.0).count() as f64 / others.len() as f64;
    assert!((beyond_3 - 0.0027).abs() < 0.001, "{beyond_3} of the draws beyond 3 sigma (normal: 0.0027)");
    // Seeded: the same seed, the same table (also split over 1 MiB bindings); another
    // seed, another table.
    let again = Embedding::new(&ctx, v, d, EmbeddingOptions::default().padding_idx(-2).seed(5)).unwrap();
    assert_eq!(again.weight().read_f32(&ctx).block().unwrap(), w);
    let split_ctx = common::context(Some(1 << 20));
    let split = Embedding::new(&split_ctx, v, d, EmbeddingOptions::default().padding_idx(-2).seed(5)).unwrap();
    assert!(split.weight().segments().len() > 1);
    assert_eq!(split.weight().read_f32(&split_ctx).block().unwrap(), w);
    let other = Embedding::new(&ctx, v, d, EmbeddingOptions::default().seed(6)).unwrap();
    let differ = other.weight().read_f32(&ctx).block().unwrap().iter().zip(&w).filter(|(a, b)| a != b).count();
    assert!(differ > w.len() - 2 * d, "{differ} of {} values differ", w.len());
}

#[test]
fn fresh_layers_take_pytorch_keyword_arguments() {
    let ctx = common::context(None);
    // max_norm is applied at lookup, as torch does: looked-up rows come out at norm 1.
    let emb = Embedding::new(&ctx, 50, 16, EmbeddingOptions::default().max_norm(1.0)).unwrap();
    let out = emb.forward(&ctx, Indices::i64(&[3, 7], &[2])).unwrap().read_f32(&ctx).block().unwrap();
    for row in out.chunks(16) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
    }
    let bag = EmbeddingBag::new(&ctx, 50, 16, BagMode::Sum, EmbeddingOptions::default().padding_idx(0).seed(2)).unwrap();
    let table = bag.weight().read_f32(&ctx).block().unwrap();
    let sum = bag.forward(&ctx, Indices::i64(&[0, 4, 9], &[3]), Some(Indices::i64(&[0], &[1])), None).unwrap();
    let want: Vec<f32> = (0..16).map(|c| table[4 * 16 + c] + table[9 * 16 + c]).collect();
    common::assert_close(&sum.read_f32(&ctx).block().unwrap(), &want, 1e-6, 1e-6, "bag over a fresh table");
    let q = QuantizedEmbedding::new(&ctx, 300, 64, Scheme::Int8Rowwise, EmbeddingOptions::default().seed(1)).unwrap();
    let rows = q.forward(&ctx, Indices::i64(&[0, 299], &[2])).unwrap().read_f32(&ctx).block().unwrap();
    let (_, std) = mean_std(&rows);
    assert!((0.7..1.3).contains(&std), "std of quantized N(0, 1) rows: {std}");
    // Refusals name the argument and the value.
    for (r, name, value) in [
        (Embedding::new(&ctx, 10, 0, EmbeddingOptions::default()).map(|_| ()), "embedding_dim", "0"),
        (Embedding::new(&ctx, 10, 4, EmbeddingOptions::default().padding_idx(10)).map(|_| ()), "padding_idx", "10"),
        (Embedding::new(&ctx, 10, 4, EmbeddingOptions::default().max_norm(-1.0)).map(|_| ()), "max_norm", "-1"),
    ] {
        match r {
            Err(Error::InvalidArgument { name: got, message }) => {
                assert_eq!(got, name);
                assert!(message.contains(value), "{message}");
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(matches!(StableEmbedding::new(&ctx, 10, 4, EmbeddingOptions::default().max_norm(1.0)), Err(Error::Unsupported(_))));
    assert!(matches!(
        QuantizedEmbedding::new(&ctx, 10, 64, Scheme::Nf4, EmbeddingOptions::default().padding_idx(0)),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn stable_embedding_new_draws_xavier_uniform() {
    let ctx = common::context(None);
    let (v, d) = (2000, 48);
    let layer = StableEmbedding::new(&ctx, v, d, EmbeddingOptions::default().padding_idx(0).seed(9)).unwrap();
    let w = layer.weight().read_f32(&ctx).block().unwrap();
    assert!(w[..d].iter().all(|&x| x == 0.0), "padding row not zeroed");
    let bound = (6.0f64 / (v + d) as f64).sqrt();
    let rest = &w[d..];
    assert!(rest.iter().all(|&x| (x as f64).abs() <= bound * (1.0 + 1e-6)), "a value beyond the bound {bound}");
    let (mean, std) = mean_std(rest);
    let want_std = bound / 3f64.sqrt();
    assert!(mean.abs() < 0.01 * bound && (std / want_std - 1.0).abs() < 0.01, "mean {mean}, std {std}, want {want_std}");
}

#[test]
fn enums_parse_and_print_pytorch_spellings() {
    fn round_trip<T: FromStr<Err = Error> + std::fmt::Display + PartialEq + std::fmt::Debug + Copy>(all: &[T], spellings: &[&str]) {
        for (v, s) in all.iter().zip(spellings) {
            assert_eq!(v.to_string(), *s);
            assert_eq!(s.parse::<T>().unwrap(), *v);
        }
    }
    round_trip(&[BagMode::Sum, BagMode::Mean, BagMode::Max], &["sum", "mean", "max"]);
    round_trip(&[Scheme::Int8Blockwise, Scheme::Int8Rowwise, Scheme::Nf4, Scheme::Fp4], &["int8_blockwise", "int8_rowwise", "nf4", "fp4"]);
    round_trip(&[Metric::Dot, Metric::Cosine], &["dot", "cosine"]);
    round_trip(&[CodeMap::Dynamic, CodeMap::Linear, CodeMap::DynamicUnsigned], &["dynamic", "linear", "dynamic_unsigned"]);
    round_trip(&[TableReads::Auto, TableReads::Buffer, TableReads::Texture], &["auto", "buffer", "texture"]);
    match "median".parse::<BagMode>() {
        Err(Error::InvalidArgument { name, message }) => {
            assert_eq!(name, "mode");
            assert!(message.contains("\"median\"") && message.contains("'mean'"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}
