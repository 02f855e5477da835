//! Property tests: Embedding and EmbeddingBag on random shapes, index patterns (repeats,
//! padding, empty bags, include_last_offset, per_sample_weights, max_norm, i32/i64) and
//! binding limits (the device's, and 4 KiB so tables and outputs span many bindings),
//! against the CPU reference below, written from PyTorch's definitions:
//! `F.embedding` / `embedding_renorm_` and `F.embedding_bag`.

use std::sync::OnceLock;
use wgpu_embed::Block;

use proptest::prelude::*;
use wgpu_embed::{BagMode, Context, ContextOptions, Embedding, EmbeddingBag, Indices};

/// A binding small enough that every drawn table spans several segments.
const SMALL_BINDING: u64 = 4096;

fn context(small_binding: bool) -> &'static Context {
    static DEVICE: OnceLock<Context> = OnceLock::new();
    static SMALL: OnceLock<Context> = OnceLock::new();
    let make = |max_binding_size| {
        Context::with_options(ContextOptions::default().max_binding_size(max_binding_size)).block().expect("a GPU adapter (lavapipe on CI)")
    };
    if small_binding {
        SMALL.get_or_init(|| make(Some(SMALL_BINDING)))
    } else {
        DEVICE.get_or_init(|| make(None))
    }
}

// ---- CPU reference -------------------------------------------------------------------

/// Table values in [-2, 2) from a seed (drawing thousands of floats through proptest
/// would make shrinking slow; the seed shrinks instead).
fn table_values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// `embedding_renorm_`: every distinct referenced row whose p-norm exceeds `max_norm`
/// is scaled by `max_norm / (norm + 1e-7)`.
fn renorm_reference(table: &mut [f32], d: usize, rows: &[usize], max_norm: f32, p: f32) {
    let mut rows = rows.to_vec();
    rows.sort_unstable();
    rows.dedup();
    for r in rows {
        let row = &mut table[r * d..(r + 1) * d];
        let norm = if p.is_infinite() {
            row.iter().map(|x| (*x as f64).abs()).fold(0.0, f64::max)
        } else {
            row.iter().map(|x| (*x as f64).abs().powf(p as f64)).sum::<f64>().powf(1.0 / p as f64)
        };
        if norm > max_norm as f64 {
            let scale = (max_norm as f64 / (norm + 1e-7)) as f32;
            row.iter_mut().for_each(|x| *x *= scale);
        }
    }
}

/// `F.embedding_bag` over bags `[bounds[b], bounds[b+1])`: padding entries are skipped
/// (and not counted by mean); an empty bag gives zeros.
fn bag_reference(
    table: &[f32],
    d: usize,
    rows: &[usize],
    bounds: &[usize],
    mode: BagMode,
    padding: Option<usize>,
    weights: Option<&[f32]>,
) -> Vec<f32> {
    let mut out = Vec::new();
    for b in 0..bounds.len() - 1 {
        let mut acc = vec![if mode == BagMode::Max { f64::NEG_INFINITY } else { 0.0 }; d];
        let mut n = 0;
        for pos in bounds[b]..bounds[b + 1] {
            if Some(rows[pos]) == padding {
                continue;
            }
            n += 1;
            let w = weights.map_or(1.0, |w| w[pos] as f64);
            for (c, a) in acc.iter_mut().enumerate() {
                let v = table[rows[pos] * d + c] as f64 * w;
                *a = if mode == BagMode::Max { a.max(v) } else { *a + v };
            }
        }
        out.extend(acc.iter().map(|&a| match mode {
            _ if n == 0 => 0.0,
            BagMode::Mean => (a / n as f64) as f32,
            _ => a as f32,
        }));
    }
    out
}

fn assert_close(got: &[f32], want: &[f32], what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(got.len(), want.len(), "{}: length", what);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        prop_assert!((g - w).abs() <= 1e-4 + 1e-4 * w.abs(), "{}: at {} got {}, expected {}", what, i, g, w);
    }
    Ok(())
}

// ---- strategies ----------------------------------------------------------------------

/// Row indices of length `n` into `v` rows: uniform, from a pool of three rows (many
/// repeats), or all one row.
fn index_pattern(v: usize, n: usize) -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        prop::collection::vec(0..v, n),
        prop::collection::vec(0..v, 3).prop_flat_map(move |pool| prop::collection::vec(prop::sample::select(pool), n)),
        (0..v).prop_map(move |r| vec![r; n]),
    ]
}

/// `max_norm` and `norm_type`, or none.
fn max_norm() -> impl Strategy<Value = Option<(f32, f32)>> {
    prop::option::weighted(0.4, (0.2f32..4.0, prop::sample::select(vec![1.0f32, 2.0, 3.0, f32::INFINITY])))
}

/// `padding_idx` as the caller gives it (negative counts from the end), or none.
fn padding(v: usize) -> impl Strategy<Value = Option<i64>> {
    prop::option::weighted(0.5, (0..v, any::<bool>()).prop_map(move |(p, negative)| Some(p as i64 - if negative { v as i64 } else { 0 })))
        .prop_map(Option::flatten)
}

#[derive(Debug, Clone)]
struct LookupCase {
    v: usize,
    d: usize,
    shape: Vec<usize>,
    rows: Vec<usize>,
    i32_indices: bool,
    padding: Option<i64>,
    max_norm: Option<(f32, f32)>,
    seed: u64,
    small_binding: bool,
}

fn lookup_case() -> impl Strategy<Value = LookupCase> {
    (1usize..160, 1usize..40, prop::collection::vec(0usize..6, 0..3))
        .prop_flat_map(|(v, d, shape)| {
            let n = shape.iter().product::<usize>();
            (Just((v, d, shape)), index_pattern(v, n), any::<bool>(), padding(v), max_norm(), any::<u64>(), any::<bool>())
        })
        .prop_map(|((v, d, shape), rows, i32_indices, padding, max_norm, seed, small_binding)| LookupCase {
            v,
            d,
            shape,
            rows,
            i32_indices,
            padding,
            max_norm,
            seed,
            small_binding,
        })
}

#[derive(Debug, Clone)]
struct BagCase {
    v: usize,
    d: usize,
    mode: BagMode,
    /// Bag sizes; zeros are empty bags. With `two_d` all bags have the first size.
    sizes: Vec<usize>,
    two_d: bool,
    include_last_offset: bool,
    rows: Vec<usize>,
    i32_indices: bool,
    padding: Option<i64>,
    max_norm: Option<(f32, f32)>,
    weights: bool,
    seed: u64,
    small_binding: bool,
}

fn bag_case() -> impl Strategy<Value = BagCase> {
    let mode = prop::sample::select(vec![BagMode::Sum, BagMode::Mean, BagMode::Max]);
    (1usize..120, 1usize..40, mode, prop::collection::vec(0usize..7, 1..9), any::<bool>(), any::<bool>())
        .prop_flat_map(|(v, d, mode, mut sizes, two_d, include_last_offset)| {
            if two_d {
                // [B, N] input: every bag has N >= 1 entries.
                let n = sizes[0].max(1);
                sizes.iter_mut().for_each(|s| *s = n);
            }
            let total = sizes.iter().sum();
            (
                Just((v, d, mode, sizes, two_d, include_last_offset && !two_d)),
                index_pattern(v, total),
                any::<bool>(),
                padding(v),
                max_norm(),
                any::<bool>().prop_map(move |w| w && mode == BagMode::Sum),
                any::<u64>(),
                any::<bool>(),
            )
        })
        .prop_map(
            |((v, d, mode, sizes, two_d, include_last_offset), rows, i32_indices, padding, max_norm, weights, seed, small_binding)| {
                BagCase {
                    v,
                    d,
                    mode,
                    sizes,
                    two_d,
                    include_last_offset,
                    rows,
                    i32_indices,
                    padding,
                    max_norm,
                    weights,
                    seed,
                    small_binding,
                }
            },
        )
}

fn to_i64(rows: &[usize]) -> Vec<i64> {
    rows.iter().map(|&r| r as i64).collect()
}

fn to_i32(rows: &[usize]) -> Vec<i32> {
    rows.iter().map(|&r| r as i32).collect()
}

// ---- properties ----------------------------------------------------------------------

proptest! {
    // Modest counts: lavapipe is slow. A failure prints the shrunk case; nothing is
    // written to the tree.
    #![proptest_config(ProptestConfig {
        cases: 96,
        max_shrink_iters: 200,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn embedding_matches_reference(c in lookup_case()) {
        let ctx = context(c.small_binding);
        let table = table_values(c.seed, c.v * c.d);
        let (mn, p) = c.max_norm.map_or((None, 2.0), |(m, p)| (Some(m), p));
        let layer = Embedding::from_pretrained(ctx, &table, c.v, c.d).unwrap()
            .with_padding_idx(c.padding).unwrap()
            .with_max_norm(mn, p).unwrap();
        let (i64s, i32s) = (to_i64(&c.rows), to_i32(&c.rows));
        let indices = if c.i32_indices { Indices::i32(&i32s, &c.shape) } else { Indices::i64(&i64s, &c.shape) };
        let out = layer.forward(ctx, indices).unwrap();

        let mut want_table = table.clone();
        if let Some((m, p)) = c.max_norm {
            renorm_reference(&mut want_table, c.d, &c.rows, m, p);
        }
        let want: Vec<f32> = c.rows.iter().flat_map(|&r| want_table[r * c.d..(r + 1) * c.d].to_vec()).collect();
        let mut shape = c.shape.clone();
        shape.push(c.d);
        prop_assert_eq!(out.shape(), &shape[..]);
        assert_close(&out.read_f32(ctx).block().unwrap(), &want, "out")?;
        assert_close(&layer.weight().read_f32(ctx).block().unwrap(), &want_table, "weight")?;
    }

    #[test]
    fn embedding_bag_matches_reference(c in bag_case()) {
        let ctx = context(c.small_binding);
        let table = table_values(c.seed, c.v * c.d);
        let (mn, p) = c.max_norm.map_or((None, 2.0), |(m, p)| (Some(m), p));
        let layer = EmbeddingBag::from_pretrained(ctx, &table, c.v, c.d, c.mode).unwrap()
            .with_padding_idx(c.padding).unwrap()
            .with_max_norm(mn, p).unwrap()
            .with_include_last_offset(c.include_last_offset);

        let mut bounds = vec![0];
        for s in &c.sizes {
            bounds.push(bounds.last().unwrap() + s);
        }
        let n = *bounds.last().unwrap();
        let weights: Vec<f32> = table_values(c.seed ^ 0x9e37_79b9, n);
        let (i64s, i32s) = (to_i64(&c.rows), to_i32(&c.rows));
        // Offsets: bag starts, plus the end when include_last_offset says the last is one.
        let offsets: Vec<i64> = if c.include_last_offset { to_i64(&bounds) } else { to_i64(&bounds[..bounds.len() - 1]) };
        let offsets_shape = [offsets.len()];
        let offsets_i32 = offsets.iter().map(|&o| o as i32).collect::<Vec<_>>();
        let input_shape = if c.two_d { vec![c.sizes.len(), c.sizes[0]] } else { vec![n] };
        let indices = if c.i32_indices { Indices::i32(&i32s, &input_shape) } else { Indices::i64(&i64s, &input_shape) };
        let offsets = (!c.two_d).then(|| if c.i32_indices { Indices::i32(&offsets_i32, &offsets_shape) } else { Indices::i64(&offsets, &offsets_shape) });
        let psw = c.weights.then_some((&weights[..], &input_shape[..]));
        let out = layer.forward(ctx, indices, offsets, psw).unwrap();

        let mut want_table = table.clone();
        if let Some((m, p)) = c.max_norm {
            renorm_reference(&mut want_table, c.d, &c.rows, m, p);
        }
        let pad = c.padding.map(|p| if p < 0 { (p + c.v as i64) as usize } else { p as usize });
        let want = bag_reference(&want_table, c.d, &c.rows, &bounds, c.mode, pad, c.weights.then_some(&weights[..]));
        prop_assert_eq!(out.shape(), &[c.sizes.len(), c.d][..]);
        assert_close(&out.read_f32(ctx).block().unwrap(), &want, "out")?;
        assert_close(&layer.weight().read_f32(ctx).block().unwrap(), &want_table, "weight")?;
    }
}
