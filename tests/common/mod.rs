//! CPU references for the tests (the library itself never computes on the CPU).
#![allow(dead_code)]

use wgpu_embed::Block;
use wgpu_embed::{Context, ContextOptions, TableReads};

/// A context on the default adapter, optionally with a smaller binding limit.
pub fn context(max_binding_size: Option<u64>) -> Context {
    Context::with_options(ContextOptions::default().max_binding_size(max_binding_size)).block().expect("a GPU adapter (lavapipe on CI)")
}

/// Like [`context`], reading lookup tables from buffers or from texture copies.
pub fn context_reading(max_binding_size: Option<u64>, table_reads: TableReads) -> Context {
    Context::with_options(ContextOptions::default().max_binding_size(max_binding_size).table_reads(table_reads))
        .block()
        .expect("a GPU adapter (lavapipe on CI)")
}

/// A small deterministic generator (xorshift), so failures reproduce.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    pub fn vec_f32(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

/// `embedding_renorm_` on a copy of the table: each referenced row once.
pub fn renorm(table: &mut [f32], dim: usize, indices: &[i64], max_norm: f32, p: f32) {
    let mut rows: Vec<i64> = indices.to_vec();
    rows.sort_unstable();
    rows.dedup();
    for r in rows {
        let row = &mut table[r as usize * dim..(r as usize + 1) * dim];
        let norm = if p.is_infinite() {
            row.iter().fold(0f64, |m, &x| m.max((x as f64).abs()))
        } else if p == 0.0 {
            row.iter().filter(|&&x| x != 0.0).count() as f64
        } else {
            row.iter().map(|&x| (x as f64).abs().powf(p as f64)).sum::<f64>().powf(1.0 / p as f64)
        };
        if norm > max_norm as f64 {
            let scale = (max_norm as f64 / (norm + 1e-7)) as f32;
            row.iter_mut().for_each(|x| *x *= scale);
        }
    }
}

/// `F.embedding` forward.
pub fn lookup(table: &[f32], dim: usize, indices: &[i64]) -> Vec<f32> {
    indices.iter().flat_map(|&i| table[i as usize * dim..(i as usize + 1) * dim].iter().copied()).collect()
}

/// `F.embedding_bag` forward over bags `bounds[b]..bounds[b+1]`.
pub fn bag(
    table: &[f32],
    dim: usize,
    indices: &[i64],
    bounds: &[usize],
    mode: &str,
    padding: Option<i64>,
    weights: Option<&[f32]>,
) -> Vec<f32> {
    let bags = bounds.len() - 1;
    let mut out = vec![0f32; bags * dim];
    for b in 0..bags {
        let mut acc = vec![if mode == "max" { f64::NEG_INFINITY } else { 0.0 }; dim];
        let mut n = 0usize;
        for pos in bounds[b]..bounds[b + 1] {
            let i = indices[pos];
            if Some(i) == padding {
                continue;
            }
            n += 1;
            let w = weights.map_or(1.0, |w| w[pos]) as f64;
            for c in 0..dim {
                let v = table[i as usize * dim + c] as f64 * w;
                acc[c] = if mode == "max" { acc[c].max(v) } else { acc[c] + v };
            }
        }
        for c in 0..dim {
            out[b * dim + c] = match mode {
                _ if n == 0 => 0.0,
                "mean" => (acc[c] / n as f64) as f32,
                _ => acc[c] as f32,
            };
        }
    }
    out
}

/// Asserts `|got - want| <= atol + rtol * |want|` everywhere.
pub fn assert_close(got: &[f32], want: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= atol + rtol * w.abs(), "{what}: at {i} got {g}, expected {w}");
    }
}
