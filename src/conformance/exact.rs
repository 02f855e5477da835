//! The exact (float64) result of a LayerNorm-family case, computed from its inputs as
//! `check.py` computes it. FORMAT.md ("Checking the LayerNorm family"): a value passes
//! within the case's tolerance of PyTorch's result *or* of this one, since on
//! ill-conditioned rows PyTorch's own float32 result is far from the exact value.

use crate::conformance::cases::{Case, CaseFile, CaseInputs};
use crate::layers::sum_layer_norm::{broadcast, broadcast_strides, source_position};

/// The exact result of `case` when its op is of the LayerNorm family and its inputs are
/// well formed; `None` otherwise.
pub fn exact_norm(file: &CaseFile, case: &Case) -> Option<Vec<f64>> {
    let inputs = CaseInputs { case, file };
    let f64s = |role: &'static str| -> Option<Vec<f64>> {
        let t = inputs.get(role).ok()??;
        Some(t.as_f32(role).ok()?.iter().map(|&v| v as f64).collect())
    };
    let eps = inputs.params().opt_f64("eps").ok()??;
    let (rows, dim) = match case.op.as_str() {
        "layer_norm" => (f64s("x")?, *inputs.require("x").ok()?.shape.last()?),
        "stable_embedding" => gathered_sum(&inputs, &[("weight", "indices")])?,
        "embedding_sum_layer_norm" => {
            const ROLES: [(&str, &str); 8] = [
                ("weight0", "indices0"),
                ("weight1", "indices1"),
                ("weight2", "indices2"),
                ("weight3", "indices3"),
                ("weight4", "indices4"),
                ("weight5", "indices5"),
                ("weight6", "indices6"),
                ("weight7", "indices7"),
            ];
            let k = ROLES.iter().take_while(|(w, _)| inputs.get(w).ok().flatten().is_some()).count();
            gathered_sum(&inputs, &ROLES[..k])?
        }
        _ => return None,
    };
    if dim == 0 || rows.len() % dim != 0 {
        return None;
    }
    let (gamma, beta) = (f64s("gamma"), f64s("beta"));
    let mut out = Vec::with_capacity(rows.len());
    for row in rows.chunks(dim) {
        let mean = row.iter().sum::<f64>() / dim as f64;
        let var = row.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / dim as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for (c, x) in row.iter().enumerate() {
            let y = (x - mean) * rstd * gamma.as_ref().map_or(1.0, |g| g[c]);
            out.push(y + beta.as_ref().map_or(0.0, |b| b[c]));
        }
    }
    Some(out)
}

/// `Σ_k weight_k[indices_k]` over the broadcast shape of the index tensors, and the width.
fn gathered_sum(inputs: &CaseInputs<'_>, roles: &[(&'static str, &'static str)]) -> Option<(Vec<f64>, usize)> {
    let mut tables = Vec::new();
    let mut full: Vec<usize> = Vec::new();
    for &(w, i) in roles {
        let (weight, indices) = (inputs.get(w).ok()??, inputs.get(i).ok()??.as_indices(i).ok()?);
        let [_, dim] = weight.shape[..] else { return None };
        full = broadcast(&full, indices.shape).ok()?;
        tables.push((weight.as_f32(w).ok()?, dim, indices));
    }
    let dim = tables.first()?.1;
    let positions: usize = full.iter().product();
    let mut rows = vec![0.0f64; positions * dim];
    for (weight, d, indices) in &tables {
        if *d != dim {
            return None;
        }
        let strides = broadcast_strides(indices.shape, &full);
        for p in 0..positions {
            let r = usize::try_from(indices.data.get(source_position(p, &full, &strides))).ok()?;
            let src = weight.get(r * dim..(r + 1) * dim)?;
            for (acc, &v) in rows[p * dim..(p + 1) * dim].iter_mut().zip(src) {
                *acc += v as f64;
            }
        }
    }
    Some((rows, dim))
}
