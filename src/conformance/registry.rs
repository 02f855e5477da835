//! The op registry: every conformance op this build runs, with the input roles it
//! reads, its parameters, how its results are compared, and the public API call that
//! runs it. `run-cases`, `check`, `supported-ops`, the web crate and the fuzzer all read
//! this list: adding an op is one entry here.

#[cfg(not(target_arch = "wasm32"))]
use crate::{
    block::Block,
    conformance::cases::{CaseInputs, HostTensor},
    error::{Error, Result},
    gpu::context::Context,
    gpu::tensor::{DType, GpuTensor},
    layers::embedding::Embedding,
    layers::embedding_bag::{BagMode, EmbeddingBag, PerSampleWeights},
    layers::indices::Indices,
};
#[cfg(not(target_arch = "wasm32"))]
use std::str::FromStr;

/// Named outputs of one case.
#[cfg(not(target_arch = "wasm32"))]
pub type Outputs = Vec<(String, HostTensor)>;

/// What an input role holds, so tools can pick suitable tensors for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// A 2-D f32 table (or any f32 tensor for `x`).
    Table,
    /// Integer indices of any shape.
    Indices,
    /// 1-D bag offsets.
    Offsets,
    /// A 1-D f32 vector (gamma, beta, per-sample weights, absmax).
    Vector,
    /// U8 codes.
    Codes,
}

pub use crate::conformance::cases::Tolerance;

/// One op of the registry.
pub struct Op {
    pub name: &'static str,
    pub inputs: &'static [(&'static str, InputKind)],
    pub params: &'static [&'static str],
    pub tolerance: Tolerance,
    /// Runs the op on a case's inputs (blocking read-backs: native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub run: fn(&Context, &CaseInputs<'_>) -> Result<Outputs>,
}

macro_rules! op {
    ($name:literal, $run:ident, $inputs:expr, $params:expr, $tol:ident) => {
        Op {
            name: $name,
            inputs: $inputs,
            params: $params,
            tolerance: Tolerance::$tol,
            #[cfg(not(target_arch = "wasm32"))]
            run: $run,
        }
    };
}

use InputKind::{Codes, Indices as Idx, Offsets, Table, Vector};

/// What the bag ops read, dense or quantized.
const BAG_INPUTS: &[(&str, InputKind)] = &[("weight", Table), ("indices", Idx), ("offsets", Offsets), ("per_sample_weights", Vector)];

/// The optimizers' hyper-parameters, as torch.optim names them.
const OPTIMIZER_PARAMS: &[&str] = &[
    "optimizer",
    "lr",
    "momentum",
    "dampening",
    "nesterov",
    "weight_decay",
    "betas",
    "eps",
    "initial_accumulator_value",
    "lr_decay",
    "blocksize",
    "min_8bit_size",
    "optim_bits",
    "percentile_clipping",
    "max_unorm",
    "amsgrad",
];

/// What `layer_optimizer_steps` reads: the layer, and the optimizer's parameters.
const LAYER_OPTIMIZER_PARAMS: &[&str] = &[
    "module",
    "overrides",
    "optimizer",
    "lr",
    "betas",
    "eps",
    "weight_decay",
    "min_8bit_size",
    "optim_bits",
    "percentile_clipping",
    "max_unorm",
];

/// Every op this build runs.
pub static OPS: &[Op] = &[
    op!("embedding", embedding, &[("weight", Table), ("indices", Idx)], &["padding_idx", "max_norm", "norm_type"], Values),
    op!("embedding_bag", embedding_bag, BAG_INPUTS, &["mode", "padding_idx", "include_last_offset", "max_norm", "norm_type"], Values),
    op!("layer_norm", layer_norm, &[("x", Table), ("gamma", Vector), ("beta", Vector)], &["eps"], Values),
    op!(
        "stable_embedding",
        stable_embedding,
        &[("weight", Table), ("indices", Idx), ("gamma", Vector), ("beta", Vector)],
        &["padding_idx", "eps"],
        Values
    ),
    op!(
        "embedding_sum_layer_norm",
        embedding_sum_layer_norm,
        &[("weight0", Table), ("weight1", Table), ("indices0", Idx), ("indices1", Idx), ("gamma", Vector), ("beta", Vector)],
        &["eps"],
        Values
    ),
    op!(
        "axial_position_embedding",
        axial_position_embedding,
        &[("weight0", Table), ("weight1", Table), ("position_ids", Idx)],
        &["axial_pos_shape"],
        Values
    ),
    op!(
        "embedding_backward",
        embedding_backward,
        &[("indices", Idx), ("grad_out", Table)],
        &["num_weights", "padding_idx", "scale_grad_by_freq", "sparse"],
        Values
    ),
    op!(
        "embedding_bag_backward",
        embedding_bag_backward,
        &[("weight", Table), ("indices", Idx), ("offsets", Offsets), ("per_sample_weights", Vector), ("grad_out", Table)],
        &["mode", "include_last_offset", "padding_idx", "scale_grad_by_freq", "sparse"],
        Values
    ),
    op!(
        "layer_norm_backward",
        layer_norm_backward,
        &[("x", Table), ("gamma", Vector), ("beta", Vector), ("grad_out", Table)],
        &["eps"],
        Values
    ),
    op!(
        "stable_embedding_backward",
        stable_embedding_backward,
        &[("weight", Table), ("indices", Idx), ("gamma", Vector), ("beta", Vector), ("grad_out", Table)],
        &["padding_idx", "eps"],
        Values
    ),
    op!(
        "embedding_sum_layer_norm_backward",
        embedding_sum_layer_norm_backward,
        &[
            ("weight0", Table),
            ("weight1", Table),
            ("indices0", Idx),
            ("indices1", Idx),
            ("gamma", Vector),
            ("beta", Vector),
            ("grad_out", Table)
        ],
        &["eps"],
        Values
    ),
    op!(
        "axial_position_embedding_backward",
        axial_position_embedding_backward,
        &[("weight0", Table), ("weight1", Table), ("position_ids", Idx), ("grad_out", Table)],
        &["axial_pos_shape"],
        Values
    ),
    op!(
        "layer_optimizer_steps",
        layer_optimizer_steps,
        &[
            ("weight", Table),
            ("ids", Idx),
            ("grad_out", Table),
            ("weight_grads", Table),
            ("gamma", Vector),
            ("beta", Vector),
            ("gamma_grads", Table),
            ("beta_grads", Table)
        ],
        LAYER_OPTIMIZER_PARAMS,
        Values
    ),
    op!("optimizer_step", optimizer_step, &[("weight", Table), ("grads", Table)], OPTIMIZER_PARAMS, Values),
    op!(
        "sparse_optimizer_step",
        sparse_optimizer_step,
        &[("weight", Table), ("grad_indices", Idx), ("grad_values", Table)],
        OPTIMIZER_PARAMS,
        Values
    ),
    op!(
        "inner_product_topk",
        inner_product_topk,
        &[("table", Table), ("queries", Table)],
        &["k", "metric", "scheme", "blocksize"],
        Ranking
    ),
    op!(
        "tbe_backward",
        tbe_backward,
        &[("weights", Vector), ("indices", Idx), ("offsets", Offsets), ("per_sample_weights", Vector), ("grad_out", Table)],
        &["embedding_specs", "feature_table_map", "pooling_mode"],
        Values
    ),
    op!(
        "tbe_step",
        tbe_step,
        &[("weights", Vector), ("indices", Idx), ("offsets", Offsets), ("per_sample_weights", Vector), ("grad_out", Table)],
        &["embedding_specs", "feature_table_map", "pooling_mode", "optimizer", "learning_rate", "eps", "beta1", "beta2", "weight_decay"],
        Values
    ),
    op!(
        "tbe_forward",
        tbe_forward,
        &[("weights", Vector), ("indices", Idx), ("offsets", Offsets), ("per_sample_weights", Vector)],
        &["embedding_specs", "feature_table_map", "pooling_mode"],
        Values
    ),
    op!("quantize_blockwise", quantize_blockwise, &[("x", Table)], &["blocksize", "code"], Codes),
    op!("dequantize_blockwise", dequantize_blockwise, &[("codes", Codes), ("absmax", Vector)], &["blocksize", "code"], Values),
    op!("quantized_embedding", quantized_embedding, &[("weight", Table), ("indices", Idx)], &["scheme", "blocksize"], Codes),
    op!(
        "quantized_embedding_bag",
        quantized_embedding_bag,
        BAG_INPUTS,
        &["scheme", "blocksize", "mode", "padding_idx", "include_last_offset"],
        Codes
    ),
];

/// The op called `name`, if this build runs it.
pub fn op(name: &str) -> Option<&'static Op> {
    OPS.iter().find(|o| o.name == name)
}

/// The names of every op, in registry order.
pub fn supported_ops() -> Vec<&'static str> {
    OPS.iter().map(|o| o.name).collect()
}

/// Runs op `name` on a case's inputs.
#[cfg(not(target_arch = "wasm32"))]
pub fn run_op(ctx: &Context, name: &str, inputs: &CaseInputs<'_>) -> Result<Outputs> {
    let op = op(name).ok_or_else(|| Error::Unsupported(format!("op {name:?} is not implemented by this build")))?;
    (op.run)(ctx, inputs)
}

#[cfg(not(target_arch = "wasm32"))]
use runs::*;

/// The API call behind each op.
#[cfg(not(target_arch = "wasm32"))]
mod runs {
    use super::*;
    use crate::layers::table_batched::{Pooling, TableBatchedEmbeddingBags};

    /// A 2-D f32 table input: values, rows, columns.
    pub(super) fn table<'a>(inputs: &CaseInputs<'a>, role: &'static str) -> Result<(&'a [f32], usize, usize)> {
        let t = inputs.require(role)?;
        match t.shape[..] {
            [v, d] => Ok((t.as_f32(role)?, v, d)),
            _ => Err(Error::arg(role, format!("expected a 2-D table, got shape {:?}", t.shape))),
        }
    }

    pub(super) fn max_norm(inputs: &CaseInputs<'_>) -> Result<(Option<f32>, f32)> {
        let p = inputs.params();
        Ok((p.opt_f64("max_norm")?.map(|m| m as f32), p.f64_or("norm_type", 2.0)? as f32))
    }

    pub(super) fn embedding(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let (w, v, d) = table(inputs, "weight")?;
        let indices = inputs.require("indices")?.as_indices("indices")?;
        let (mn, p) = max_norm(inputs)?;
        let layer =
            Embedding::from_pretrained(ctx, w, v, d)?.with_padding_idx(inputs.params().opt_i64("padding_idx")?)?.with_max_norm(mn, p)?;
        let out = layer.forward(ctx, indices)?;
        // With max_norm the table was renormalised in place: it is an output too.
        f32_outputs(ctx, &[("out", Some(&out)), ("weight", mn.map(|_| layer.weight()))])
    }

    /// A bag op's `indices`, `offsets` and `per_sample_weights`.
    pub(super) type BagInputs<'a> = (Indices<'a>, Option<Indices<'a>>, PerSampleWeights<'a>);

    pub(super) fn bag_inputs<'a>(inputs: &CaseInputs<'a>) -> Result<BagInputs<'a>> {
        let input = inputs.require("indices")?.as_indices("indices")?;
        let offsets = inputs.get("offsets")?.map(|t| t.as_indices("offsets")).transpose()?;
        let psw = inputs.get("per_sample_weights")?.map(|t| t.as_f32("per_sample_weights").map(|x| (x, &t.shape[..]))).transpose()?;
        Ok((input, offsets, psw))
    }

    pub(super) fn embedding_bag(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let p = inputs.params();
        let (w, v, d) = table(inputs, "weight")?;
        let (input, offsets, psw) = bag_inputs(inputs)?;
        let mode = BagMode::from_str(p.opt_str("mode")?.unwrap_or("mean"))?;
        let (mn, norm_type) = max_norm(inputs)?;
        let layer = EmbeddingBag::from_pretrained(ctx, w, v, d, mode)?
            .with_padding_idx(p.opt_i64("padding_idx")?)?
            .with_max_norm(mn, norm_type)?
            .with_include_last_offset(p.bool_or("include_last_offset", false)?);
        let out = layer.forward(ctx, input, offsets, psw)?;
        f32_outputs(ctx, &[("out", Some(&out)), ("weight", mn.map(|_| layer.weight()))])
    }

    /// The named f32 tensors that are present, read back with their shapes.
    pub(super) fn f32_outputs(ctx: &Context, named: &[(&str, Option<&GpuTensor>)]) -> Result<Outputs> {
        let mut outputs = Vec::new();
        for (name, t) in named {
            if let Some(t) = t {
                outputs.push((name.to_string(), HostTensor::f32(t.read_f32(ctx).block()?, t.shape().to_vec())));
            }
        }
        Ok(outputs)
    }

    pub(super) fn f32_output(ctx: &Context, out: &GpuTensor) -> Result<Outputs> {
        f32_outputs(ctx, &[("out", Some(out))])
    }

    /// An optional 1-D f32 input (LayerNorm's gamma / beta).
    pub(super) fn opt_vector<'a>(inputs: &CaseInputs<'a>, role: &'static str) -> Result<Option<&'a [f32]>> {
        inputs.get(role)?.map(|t| t.as_f32(role)).transpose()
    }

    /// Table-batched bags (tests/reference/OPS.md): the tables packed in `weights` as
    /// `embedding_specs` gives their shapes.
    /// The table-batched layer a case gives: `embedding_specs`, `feature_table_map`,
    /// `pooling_mode` and the tables packed in `weights`.
    pub(super) fn tbe_layer(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<TableBatchedEmbeddingBags> {
        let p = inputs.params();
        let specs = p.usize_pairs("embedding_specs")?;
        let map = p.opt_usize_list("feature_table_map")?.ok_or_else(|| Error::arg("feature_table_map", "missing"))?;
        let mode = Pooling::from_str(p.opt_str("pooling_mode")?.unwrap_or("sum"))?;
        if let Some(precisions) = p.opt_str_list("weights_precision")? {
            return tbe_rows_layer(ctx, inputs, &specs, &map, mode, &precisions);
        }
        let weights = inputs.require("weights")?.as_f32("weights")?;
        let mut tables = Vec::with_capacity(specs.len());
        let mut start = 0usize;
        for &(rows, dim) in &specs {
            let end = rows.checked_mul(dim).and_then(|n| n.checked_add(start)).filter(|&e| e <= weights.len());
            let end = end
                .ok_or_else(|| Error::arg("weights", format!("{} values are fewer than embedding_specs {specs:?} need", weights.len())))?;
            tables.push((&weights[start..end], rows, dim));
            start = end;
        }
        if start != weights.len() {
            return Err(Error::arg("weights", format!("{} values, but embedding_specs {specs:?} hold {start}", weights.len())));
        }
        TableBatchedEmbeddingBags::from_pretrained(ctx, &tables, &map, mode)
    }

    /// A table-batched layer over FBGEMM's inference rows: `weights` (U8) every table's
    /// rows in its `weights_precision`, one table after another.
    fn tbe_rows_layer(
        ctx: &Context,
        inputs: &CaseInputs<'_>,
        specs: &[(usize, usize)],
        map: &[usize],
        mode: Pooling,
        precisions: &[String],
    ) -> Result<TableBatchedEmbeddingBags> {
        use crate::layers::table_batched::{TablePrecision, TableRows};
        if precisions.len() != specs.len() {
            return Err(Error::arg("weights_precision", format!("{} precisions for {} tables", precisions.len(), specs.len())));
        }
        let bytes = inputs.require("weights")?.as_u8("weights")?;
        let mut tables = Vec::with_capacity(specs.len());
        let mut start = 0usize;
        for (&(rows, dim), name) in specs.iter().zip(precisions) {
            let precision = TablePrecision::from_str(name)?;
            let end = start + rows * precision.row_bytes(dim);
            let table = bytes
                .get(start..end)
                .ok_or_else(|| Error::arg("weights", format!("{} bytes are fewer than the tables' rows need", bytes.len())))?;
            tables.push(TableRows { rows, dim, precision, bytes: table });
            start = end;
        }
        if start != bytes.len() {
            return Err(Error::arg("weights", format!("{} bytes, but the tables' rows hold {start}", bytes.len())));
        }
        TableBatchedEmbeddingBags::from_rows(ctx, &tables, map, mode)
    }

    pub(super) fn tbe_forward(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let layer = tbe_layer(ctx, inputs)?;
        let (indices, offsets) = (inputs.require("indices")?.as_indices("indices")?, inputs.require("offsets")?.as_indices("offsets")?);
        let weights = opt_vector(inputs, "per_sample_weights")?;
        let out = match inputs.params().opt_usize_lists("batch_size_per_feature_per_rank")? {
            Some(sizes) => layer.forward_vbe(ctx, indices, offsets, weights, &sizes)?,
            None => layer.forward(ctx, indices, offsets, weights)?,
        };
        f32_output(ctx, &out)
    }

    /// FBGEMM's dense TBE gradient: every table's, flat (`weights.grad`).
    pub(super) fn tbe_backward(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        use crate::layers::embedding_backward::Gradient;
        let layer = tbe_layer(ctx, inputs)?;
        let (indices, offsets) = (inputs.require("indices")?.as_indices("indices")?, inputs.require("offsets")?.as_indices("offsets")?);
        let grad = gpu_f32(ctx, inputs, "grad_out")?;
        let psw = opt_vector(inputs, "per_sample_weights")?;
        let gradient = match inputs.params().opt_usize_lists("batch_size_per_feature_per_rank")? {
            Some(sizes) => layer.variable_batch(&sizes).backward(ctx, indices, offsets, psw, &grad, Default::default()).block()?,
            None => layer.backward(ctx, indices, offsets, psw, &grad, Default::default()).block()?,
        };
        let Gradient::Dense(g) = gradient else {
            return Err(Error::Unsupported("a dense TBE backward gave a sparse gradient".into()));
        };
        let values = g.read_f32(ctx).block()?;
        let n = values.len();
        Ok(vec![("grad_weights".to_string(), HostTensor::f32(values, vec![n]))])
    }

    /// FBGEMM's training TBE: `T` steps of its fused optimizer (FBGEMM's names:
    /// `exact_sgd`, `exact_adagrad`, `exact_rowwise_adagrad`, `adam`,
    /// `partial_rowwise_adam`) on one batch, one output gradient per step; the tables
    /// and the optimizer's states (`momentum1`, `momentum2`) after them.
    pub(super) fn tbe_step(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        use crate::optim::{Optimizer, OptimizerKind};
        let p = inputs.params();
        let layer = tbe_layer(ctx, inputs)?;
        let lr = p.f64_or("learning_rate", 0.01)?;
        let (eps, weight_decay) = (p.f64_or("eps", 1e-8)?, p.f64_or("weight_decay", 0.0)?);
        let betas = (p.f64_or("beta1", 0.9)?, p.f64_or("beta2", 0.999)?);
        let kind = match p.opt_str("optimizer")?.unwrap_or("exact_sgd") {
            "exact_sgd" => OptimizerKind::Sgd { lr, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
            "exact_adagrad" => OptimizerKind::Adagrad { lr, lr_decay: 0.0, eps, weight_decay: 0.0, initial_accumulator_value: 0.0 },
            "exact_rowwise_adagrad" => OptimizerKind::RowwiseAdagrad { lr, eps, weight_decay },
            "adam" => OptimizerKind::TbeAdam { lr, betas, eps, weight_decay },
            "partial_rowwise_adam" => OptimizerKind::PartialRowwiseAdam { lr, betas, eps, weight_decay },
            other => return Err(Error::Unsupported(format!("TBE optimizer {other:?} is not implemented by this build"))),
        };
        let weights = layer.weights()?;
        let mut opt = Optimizer::new(ctx, kind, &weights)?;
        let (indices, offsets) = (inputs.require("indices")?.as_indices("indices")?, inputs.require("offsets")?.as_indices("offsets")?);
        let psw = opt_vector(inputs, "per_sample_weights")?;
        let grads = inputs.require("grad_out")?;
        let (steps, per) = match grads.shape.split_first() {
            Some((&t, rest)) if t > 0 => (t, rest.iter().product::<usize>()),
            _ => return Err(Error::arg("grad_out", format!("expected [T, B, width] gradients, got shape {:?}", grads.shape))),
        };
        let values = grads.as_f32("grad_out")?;
        let sizes = p.opt_usize_lists("batch_size_per_feature_per_rank")?;
        for t in 0..steps {
            let g = GpuTensor::from_f32(ctx, &values[t * per..(t + 1) * per], &grads.shape[1..])?;
            match &sizes {
                Some(sizes) => layer.variable_batch(sizes).step(ctx, &mut opt, indices, offsets, psw, &g).block()?,
                None => layer.step(ctx, &mut opt, indices, offsets, psw, &g).block()?,
            }
        }
        let flat = |t: &GpuTensor| -> Result<HostTensor> {
            let v = t.read_f32(ctx).block()?;
            let n = v.len();
            Ok(HostTensor::f32(v, vec![n]))
        };
        let mut out = vec![("weights".to_string(), flat(&weights)?)];
        // FBGEMM's names for the states: momentum1 (and momentum2 for its Adams).
        for (k, name) in opt.state_names().into_iter().enumerate() {
            if let Some(state) = opt.state(name) {
                out.push((format!("momentum{}", k + 1), flat(state)?));
            }
        }
        Ok(out)
    }

    pub(super) fn layer_norm(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let x = inputs.require("x")?;
        let dim = *x.shape.last().ok_or_else(|| Error::arg("x", "expected at least one dimension, got a scalar"))?;
        let eps = inputs.params().f64_or("eps", 1e-5)? as f32;
        let layer =
            crate::layers::layer_norm::LayerNorm::from_params(ctx, dim, eps, opt_vector(inputs, "gamma")?, opt_vector(inputs, "beta")?)?;
        f32_output(ctx, &layer.forward(ctx, x.as_f32("x")?, &x.shape)?)
    }

    /// The layer and indices of a `stable_embedding` case (forward or backward).
    pub(super) fn stable_layer<'a>(
        ctx: &Context,
        inputs: &CaseInputs<'a>,
    ) -> Result<(crate::layers::stable_embedding::StableEmbedding, Indices<'a>)> {
        let p = inputs.params();
        let (w, v, d) = table(inputs, "weight")?;
        let indices = inputs.require("indices")?.as_indices("indices")?;
        let layer = crate::layers::stable_embedding::StableEmbedding::from_pretrained(
            ctx,
            crate::checkpoint::HostTable::f32(w, v, d)?,
            p.opt_i64("padding_idx")?,
            opt_vector(inputs, "gamma")?,
            opt_vector(inputs, "beta")?,
            p.f64_or("eps", crate::layers::stable_embedding::STABLE_EMBEDDING_EPS as f64)? as f32,
        )?;
        Ok((layer, indices))
    }

    pub(super) fn stable_embedding(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let (layer, indices) = stable_layer(ctx, inputs)?;
        f32_output(ctx, &layer.forward(ctx, indices)?)
    }

    pub(super) fn layer_norm_backward(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let x = gpu_f32(ctx, inputs, "x")?;
        let dim = *x.shape().last().unwrap_or(&0);
        let eps = inputs.params().f64_or("eps", 1e-5)? as f32;
        let layer =
            crate::layers::layer_norm::LayerNorm::from_params(ctx, dim, eps, opt_vector(inputs, "gamma")?, opt_vector(inputs, "beta")?)?;
        let g = layer.backward(ctx, &x, &gpu_f32(ctx, inputs, "grad_out")?)?;
        f32_outputs(ctx, &[("grad_x", Some(&g.x)), ("grad_gamma", g.gamma.as_ref()), ("grad_beta", g.beta.as_ref())])
    }

    pub(super) fn stable_embedding_backward(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let (layer, indices) = stable_layer(ctx, inputs)?;
        let g = layer.backward(ctx, indices, &gpu_f32(ctx, inputs, "grad_out")?)?;
        f32_outputs(ctx, &[("grad_weight", g.tables.first()), ("grad_gamma", g.gamma.as_ref()), ("grad_beta", g.beta.as_ref())])
    }

    pub(super) fn embedding_sum_layer_norm_backward(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let (block, indices) = sum_layer_norm_block(ctx, inputs)?;
        let g = block.backward(ctx, &indices, &gpu_f32(ctx, inputs, "grad_out")?)?;
        let names: Vec<String> = (0..g.tables.len()).map(|k| format!("grad_weight{k}")).collect();
        let mut named: Vec<(&str, Option<&GpuTensor>)> = names.iter().map(|n| n.as_str()).zip(g.tables.iter().map(Some)).collect();
        named.push(("grad_gamma", g.gamma.as_ref()));
        named.push(("grad_beta", g.beta.as_ref()));
        f32_outputs(ctx, &named)
    }

    /// The block and index tensors of an `embedding_sum_layer_norm` case (weight0..,
    /// indices0.. until one is missing).
    pub(super) fn sum_layer_norm_block<'a>(
        ctx: &Context,
        inputs: &CaseInputs<'a>,
    ) -> Result<(crate::layers::sum_layer_norm::EmbeddingSumLayerNorm, Vec<Indices<'a>>)> {
        let mut tables = Vec::new();
        let mut indices = Vec::new();
        for k in 0.. {
            let (Some(w), Some(i)) = (inputs.get(&format!("weight{k}"))?, inputs.get(&format!("indices{k}"))?) else {
                break;
            };
            let [v, d] = w.shape[..] else {
                return Err(Error::arg("weight", format!("expected weight{k} to be a 2-D table, got shape {:?}", w.shape)));
            };
            tables.push(crate::checkpoint::HostTable::f32(w.as_f32("weight")?, v, d)?);
            indices.push(i.as_indices("indices")?);
        }
        let eps = inputs.params().f64_or("eps", 1e-12)? as f32;
        let block = crate::layers::sum_layer_norm::EmbeddingSumLayerNorm::new(
            ctx,
            &tables,
            opt_vector(inputs, "gamma")?,
            opt_vector(inputs, "beta")?,
            eps,
        )?;
        Ok((block, indices))
    }

    pub(super) fn embedding_sum_layer_norm(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let (block, indices) = sum_layer_norm_block(ctx, inputs)?;
        f32_output(ctx, &block.forward(ctx, &indices)?)
    }

    /// The axial layer a case gives: `axial_pos_shape` and the two weights (transformers
    /// stores them as `[n1, 1, d1]` and `[1, n2, d2]`: the last dimension is the width).
    pub(super) fn axial_layer(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<crate::layers::axial::AxialPositionEmbedding> {
        let shape = inputs
            .params()
            .opt_usize_list("axial_pos_shape")?
            .ok_or_else(|| Error::arg("axial_pos_shape", "the case gives no axial_pos_shape"))?;
        let [n1, n2] = shape[..] else {
            return Err(Error::arg("axial_pos_shape", format!("expected two factors, got {shape:?}")));
        };
        let w0 = inputs.require("weight0")?;
        let w1 = inputs.require("weight1")?;
        let d0 = *w0.shape.last().unwrap_or(&0);
        let d1 = *w1.shape.last().unwrap_or(&0);
        crate::layers::axial::AxialPositionEmbedding::from_pretrained(ctx, w0.as_f32("weight0")?, w1.as_f32("weight1")?, [n1, n2], [d0, d1])
    }

    pub(super) fn axial_position_embedding_backward(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let layer = axial_layer(ctx, inputs)?;
        let grad = gpu_f32(ctx, inputs, "grad_out")?;
        let grads = layer.backward(ctx, inputs.require("position_ids")?.as_indices("position_ids")?, &grad).block()?;
        f32_outputs(ctx, &[("grad_weight0", Some(&grads.weight0)), ("grad_weight1", Some(&grads.weight1))])
    }

    /// A layer's parameters stepped by bitsandbytes' optimizer with its rules
    /// (tests/reference/OPS.md): `module` is `stable_embedding`, `bnb_embedding` or
    /// `embedding`; `overrides` one parameter's `override_config` for the weight (a
    /// module's own registration wins over it, as in bitsandbytes). Steps with the
    /// given gradients; every parameter and its two states after each step.
    pub(super) fn layer_optimizer_steps(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        use crate::layers::embedding_backward::Gradient;
        use crate::optim::{Optimizer, ParamConfig, TrainableLayer};
        let p = inputs.params();
        let (w, v, d) = table(inputs, "weight")?;
        let kind = optimizer_kind(inputs)?;
        let module = p.opt_str("module")?.unwrap_or("embedding");
        let layer: Box<dyn TrainableLayer> = match module {
            "stable_embedding" => {
                let (gamma, beta) = (opt_vector(inputs, "gamma")?, opt_vector(inputs, "beta")?);
                Box::new(crate::layers::stable_embedding::StableEmbedding::from_pretrained(
                    ctx,
                    crate::checkpoint::HostTable::f32(w, v, d)?,
                    None,
                    gamma,
                    beta,
                    1e-5,
                )?)
            }
            "bnb_embedding" => Box::new(Embedding::from_pretrained(ctx, w, v, d)?.into_bitsandbytes()),
            "embedding" => Box::new(Embedding::from_pretrained(ctx, w, v, d)?),
            other => return Err(Error::arg("module", format!("expected stable_embedding, bnb_embedding or embedding, got {other:?}"))),
        };
        let overrides = match inputs.case.params.get("overrides") {
            None | Some(serde_json::Value::Null) => ParamConfig::default(),
            Some(serde_json::Value::Object(o)) => ParamConfig::from_json(o)?,
            Some(other) => return Err(Error::arg("overrides", format!("expected an object, got {other}"))),
        };
        let registered = layer.optim_config();
        let config = if registered != ParamConfig::default() { registered } else { overrides };
        let table = layer.trained_table();
        // (name, tensor, optimizer, gradients [T, numel])
        let mut params = vec![("weight", table.clone(), Optimizer::with_config(ctx, kind, table, &config)?, "weight_grads")];
        for (name, grads) in [("gamma", "gamma_grads"), ("beta", "beta_grads")] {
            if let Some(values) = opt_vector(inputs, name)? {
                let t = GpuTensor::from_f32(ctx, values, &[values.len()])?;
                let opt = Optimizer::new(ctx, kind, &t)?;
                params.push((name, t, opt, grads));
            }
        }
        let steps = inputs.require("weight_grads")?.shape.first().copied().unwrap_or(0);
        let mut after: Vec<(String, Vec<f32>, Vec<usize>)> = Vec::new();
        for t in 0..steps {
            for (k, (name, tensor, opt, grads_role)) in params.iter_mut().enumerate() {
                let grads = inputs.require(grads_role)?;
                let numel = tensor.numel();
                if grads.shape.first() != Some(&steps) || grads.shape.iter().skip(1).product::<usize>() != numel {
                    return Err(Error::arg(
                        grads_role,
                        format!("expected {steps} gradients of {:?}, got shape {:?}", tensor.shape(), grads.shape),
                    ));
                }
                let g = GpuTensor::from_f32(ctx, &grads.as_f32(grads_role)?[t * numel..(t + 1) * numel], tensor.shape())?;
                opt.step(ctx, tensor, &Gradient::Dense(g)).block()?;
                let mut named = vec![(name.to_string(), tensor.clone())];
                for state in ["state1", "state2"] {
                    let s = opt
                        .state(state)
                        .ok_or_else(|| Error::Unsupported(format!("{name}: {} keeps no 32-bit {state}", opt.kind().name())))?;
                    if s.dtype() != DType::F32 {
                        return Err(Error::Unsupported(format!(
                            "{name}: this op reads 32-bit states; {} keeps {:?}",
                            opt.kind().name(),
                            s.dtype()
                        )));
                    }
                    named.push((format!("{name}_{state}"), s.clone()));
                }
                for (j, (out_name, value)) in named.into_iter().enumerate() {
                    let values = value.read_f32(ctx).block()?;
                    let slot = k * 3 + j;
                    if t == 0 {
                        // The states have the parameter's elements (a 1-D one's are kept as one row).
                        let shape = [&[steps][..], tensor.shape()].concat();
                        after.push((out_name, Vec::with_capacity(steps * values.len()), shape));
                    }
                    after[slot].1.extend(values);
                }
            }
        }
        Ok(after.into_iter().map(|(name, data, shape)| (name, HostTensor::f32(data, shape))).collect())
    }

    pub(super) fn axial_position_embedding(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let layer = axial_layer(ctx, inputs)?;
        f32_output(ctx, &layer.forward(ctx, inputs.require("position_ids")?.as_indices("position_ids")?)?)
    }

    /// An f32 input of any shape, on the GPU with rows of its last dimension.
    pub(super) fn gpu_f32(ctx: &Context, inputs: &CaseInputs<'_>, role: &'static str) -> Result<GpuTensor> {
        let t = inputs.require(role)?;
        let values = t.as_f32(role)?;
        if t.shape.is_empty() {
            return Err(Error::arg(role, "expected at least one dimension, got a scalar"));
        }
        GpuTensor::from_f32(ctx, values, &t.shape)
    }

    pub(super) fn grad_options(inputs: &CaseInputs<'_>) -> Result<crate::layers::embedding_backward::GradOptions> {
        let p = inputs.params();
        Ok(crate::layers::embedding_backward::GradOptions {
            scale_grad_by_freq: p.bool_or("scale_grad_by_freq", false)?,
            sparse: p.bool_or("sparse", false)?,
        })
    }

    /// A table gradient's outputs: `grad_weight`, or `grad_indices` (I64) and `grad_values`.
    pub(super) fn gradient_outputs(ctx: &Context, g: &crate::layers::embedding_backward::Gradient) -> Result<Outputs> {
        use crate::layers::embedding_backward::Gradient;
        match g {
            Gradient::Dense(w) => f32_outputs(ctx, &[("grad_weight", Some(w))]),
            Gradient::Sparse { indices, values, .. } => {
                let rows: Vec<i32> = bytemuck::pod_collect_to_vec(&indices.read_bytes(ctx).block()?);
                let mut out =
                    vec![("grad_indices".to_string(), HostTensor::i64(rows.iter().map(|&r| r as i64).collect(), vec![rows.len()]))];
                out.extend(f32_outputs(ctx, &[("grad_values", Some(values))])?);
                Ok(out)
            }
        }
    }

    pub(super) fn embedding_backward(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let p = inputs.params();
        let indices = inputs.require("indices")?.as_indices("indices")?;
        let grad = gpu_f32(ctx, inputs, "grad_out")?;
        let v = p.opt_i64("num_weights")?.ok_or_else(|| Error::arg("num_weights", "the case gives no num_weights"))?;
        let v = usize::try_from(v).map_err(|_| Error::arg("num_weights", format!("expected a size, got {v}")))?;
        let d = *grad.shape().last().unwrap_or(&0);
        // The table's values do not enter the gradient: a zero table of the right shape.
        let layer = Embedding::from_tensor(GpuTensor::zeros(ctx, &[v, d], DType::F32, d)?)?.with_padding_idx(p.opt_i64("padding_idx")?)?;
        gradient_outputs(ctx, &layer.backward(ctx, indices, &grad, grad_options(inputs)?).block()?)
    }

    pub(super) fn embedding_bag_backward(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let p = inputs.params();
        let (w, v, d) = table(inputs, "weight")?;
        let (input, offsets, psw) = bag_inputs(inputs)?;
        let mode = BagMode::from_str(p.opt_str("mode")?.unwrap_or("mean"))?;
        let layer = EmbeddingBag::from_pretrained(ctx, w, v, d, mode)?
            .with_padding_idx(p.opt_i64("padding_idx")?)?
            .with_include_last_offset(p.bool_or("include_last_offset", false)?);
        let grad = gpu_f32(ctx, inputs, "grad_out")?;
        let g = layer.backward(ctx, input, offsets, psw, &grad, grad_options(inputs)?).block()?;
        let mut out = gradient_outputs(ctx, &g.weight)?;
        out.extend(f32_outputs(ctx, &[("grad_per_sample_weights", g.per_sample_weights.as_ref())])?);
        Ok(out)
    }

    /// The optimizer a case names, with torch.optim's defaults.
    pub(super) fn optimizer_kind(inputs: &CaseInputs<'_>) -> Result<crate::optim::OptimizerKind> {
        crate::optim::OptimizerKind::from_json(&inputs.case.params)
    }

    /// The table and the optimizer's states after the steps, named as the case's outputs.
    pub(super) fn optimizer_outputs(ctx: &Context, table: &GpuTensor, opt: &crate::optim::Optimizer) -> Result<Outputs> {
        let mut outputs = f32_outputs(ctx, &[("weight", Some(table))])?;
        for name in opt.state_names() {
            let Some(t) = opt.state(name) else { continue };
            outputs.push(match t.dtype() {
                DType::U8 => (name.to_string(), HostTensor::u8(t.read_bytes(ctx).block()?, t.shape().to_vec())),
                _ => (name.to_string(), HostTensor::f32(t.read_f32(ctx).block()?, t.shape().to_vec())),
            });
        }
        Ok(outputs)
    }

    pub(super) fn optimizer_step(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let (w, v, d) = table(inputs, "weight")?;
        let grads = inputs.require("grads")?;
        let [steps, gv, gd] = grads.shape[..] else {
            return Err(Error::arg("grads", format!("expected [T, V, D] gradients, got shape {:?}", grads.shape)));
        };
        if (gv, gd) != (v, d) {
            return Err(Error::arg("grads", format!("gradients of shape {:?} for a [{v}, {d}] table", grads.shape)));
        }
        let table = GpuTensor::from_f32(ctx, w, &[v, d])?;
        let mut opt = crate::optim::Optimizer::new(ctx, optimizer_kind(inputs)?, &table)?;
        let values = grads.as_f32("grads")?;
        for t in 0..steps {
            let g = GpuTensor::from_f32(ctx, &values[t * v * d..(t + 1) * v * d], &[v, d])?;
            opt.step(ctx, &table, &crate::layers::embedding_backward::Gradient::Dense(g)).block()?;
        }
        optimizer_outputs(ctx, &table, &opt)
    }

    pub(super) fn sparse_optimizer_step(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let (w, v, d) = table(inputs, "weight")?;
        let rows = inputs.require("grad_indices")?;
        let values = inputs.require("grad_values")?;
        let [steps, n] = rows.shape[..] else {
            return Err(Error::arg("grad_indices", format!("expected [T, n] rows, got shape {:?}", rows.shape)));
        };
        if values.shape != [steps, n, d] {
            return Err(Error::arg("grad_values", format!("expected shape [{steps}, {n}, {d}], got {:?}", values.shape)));
        }
        let table = GpuTensor::from_f32(ctx, w, &[v, d])?;
        let mut opt = crate::optim::Optimizer::new(ctx, optimizer_kind(inputs)?, &table)?;
        let all_rows = rows.as_indices("grad_indices")?;
        let all_values = values.as_f32("grad_values")?;
        for t in 0..steps {
            let step_rows: Vec<i64> = (t * n..(t + 1) * n).map(|i| all_rows.data.get(i)).collect();
            let shape = [n];
            let checked = Indices::i64(&step_rows, &shape).to_rows("grad_indices", v as u64)?;
            let grad = crate::layers::embedding_backward::Gradient::Sparse {
                indices: GpuTensor::flat(ctx, &checked, DType::I32)?,
                values: GpuTensor::from_f32(ctx, &all_values[t * n * d..(t + 1) * n * d], &[n, d])?,
                num_embeddings: v,
            };
            opt.step(ctx, &table, &grad).block()?;
        }
        optimizer_outputs(ctx, &table, &opt)
    }

    /// REALM's retriever: the best `k` rows of the table for each query, the table
    /// stored as `scheme` says (f32, f16, or quantized on the GPU).
    pub(super) fn inner_product_topk(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        use crate::layers::retriever::{Metric, Retriever};
        let p = inputs.params();
        let (w, n, d) = table(inputs, "table")?;
        let queries = inputs.require("queries")?;
        let q = match queries.shape[..] {
            [q, qd] if qd == d => q,
            _ => {
                return Err(Error::arg(
                    "queries",
                    format!("expected queries of shape [Q, {d}] (the table's columns), got {:?}", queries.shape),
                ))
            }
        };
        let k = p.opt_i64("k")?.ok_or_else(|| Error::arg("k", "the case gives no k"))?;
        let k = usize::try_from(k).map_err(|_| Error::arg("k", format!("k = {k} is negative")))?;
        let metric = Metric::from_str(p.opt_str("metric")?.unwrap_or("dot"))?;
        let retriever = match p.opt_str("scheme")?.unwrap_or("f32") {
            "f32" => Retriever::new(GpuTensor::from_f32(ctx, w, &[n, d])?, metric)?,
            "f16" => {
                let halves: Vec<half::f16> = w.iter().map(|&x| half::f16::from_f32(x)).collect();
                Retriever::new(GpuTensor::from_f16(ctx, &halves, &[n, d])?, metric)?
            }
            scheme => {
                let scheme = crate::quant::table::Scheme::from_str(scheme)?;
                let t = crate::quant::table::QuantizedTable::from_pretrained(ctx, w, n, d, scheme, blocksize_param(inputs, None)?)?;
                Retriever::quantized(t, metric)
            }
        };
        let top = retriever.search(ctx, queries.as_f32("queries")?, k)?;
        debug_assert_eq!(top.scores.shape(), [q, k]);
        let rows: Vec<i32> = bytemuck::pod_collect_to_vec(&top.indices.read_bytes(ctx).block()?);
        let mut out = f32_outputs(ctx, &[("scores", Some(&top.scores))])?;
        out.push(("indices".to_string(), HostTensor::i64(rows.iter().map(|&r| r as i64).collect(), vec![q, k])));
        Ok(out)
    }

    /// `blocksize` as a size (absent or null: `default`), refusing negatives by value.
    pub(super) fn blocksize_param(inputs: &CaseInputs<'_>, default: Option<usize>) -> Result<Option<usize>> {
        match inputs.params().opt_i64("blocksize")? {
            None => Ok(default),
            Some(b) if b >= 0 => Ok(Some(b as usize)),
            Some(b) => Err(Error::arg("blocksize", format!("blocksize {b} is not supported"))),
        }
    }

    pub(super) fn code_map(inputs: &CaseInputs<'_>) -> Result<crate::quant::codes::CodeMap> {
        crate::quant::codes::CodeMap::from_str(inputs.params().opt_str("code")?.unwrap_or("dynamic"))
    }

    pub(super) fn quantize_blockwise(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let x = inputs.require("x")?;
        let values = x.as_f32("x")?;
        let blocksize = blocksize_param(inputs, Some(4096))?.unwrap_or(4096);
        let code = code_map(inputs)?;
        crate::quant::blockwise::check_blocksize(blocksize)?;
        // Uploaded flat (rows of one element): the kernels take the tensor as a flat run.
        let t = GpuTensor::flat(ctx, values, DType::F32)?;
        let q = crate::quant::blockwise::quantize_blockwise(ctx, &t, blocksize, code)?;
        Ok(vec![
            ("codes".to_string(), HostTensor::u8(q.codes.read_bytes(ctx).block()?, vec![values.len()])),
            ("absmax".to_string(), HostTensor::f32(q.absmax.read_f32(ctx).block()?, q.absmax.shape().to_vec())),
        ])
    }

    pub(super) fn dequantize_blockwise(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let codes = inputs.require("codes")?.as_u8("codes")?;
        let absmax = inputs.require("absmax")?.as_f32("absmax")?;
        let blocksize = blocksize_param(inputs, Some(4096))?.unwrap_or(4096);
        let code = code_map(inputs)?;
        crate::quant::blockwise::check_blocksize(blocksize)?;
        let (c, a) = (GpuTensor::flat(ctx, codes, DType::U8)?, GpuTensor::flat(ctx, absmax, DType::F32)?);
        f32_output(ctx, &crate::quant::blockwise::dequantize_blockwise(ctx, &c, &a, blocksize, code)?)
    }

    pub(super) fn quantized_embedding(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let (w, v, d) = table(inputs, "weight")?;
        let scheme = crate::quant::table::Scheme::from_str(inputs.params().opt_str("scheme")?.unwrap_or("int8_blockwise"))?;
        let layer = crate::quant::table::QuantizedTable::from_pretrained(ctx, w, v, d, scheme, blocksize_param(inputs, None)?)
            .map(crate::layers::quantized::QuantizedEmbedding::from_table)?;
        f32_output(ctx, &layer.forward(ctx, inputs.require("indices")?.as_indices("indices")?)?)
    }

    pub(super) fn quantized_embedding_bag(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
        let p = inputs.params();
        let (w, v, d) = table(inputs, "weight")?;
        let scheme = crate::quant::table::Scheme::from_str(p.opt_str("scheme")?.unwrap_or("int8_blockwise"))?;
        let mode = BagMode::from_str(p.opt_str("mode")?.unwrap_or("mean"))?;
        let (input, offsets, psw) = bag_inputs(inputs)?;
        let layer = crate::quant::table::QuantizedTable::from_pretrained(ctx, w, v, d, scheme, blocksize_param(inputs, None)?)
            .map(|t| crate::layers::quantized::QuantizedEmbeddingBag::from_table(t, mode))?
            .with_padding_idx(p.opt_i64("padding_idx")?)?
            .with_include_last_offset(p.bool_or("include_last_offset", false)?);
        f32_output(ctx, &layer.forward(ctx, input, offsets, psw)?)
    }
}
