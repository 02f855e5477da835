//! Conformance ops: each case's op name mapped to the public API call that runs it.

use crate::context::Context;
use crate::embedding::Embedding;
use crate::embedding_bag::{BagMode, EmbeddingBag};
use crate::error::{Error, Result};
use crate::runner::{CaseInputs, HostTensor};

/// Named outputs of one case.
pub type Outputs = Vec<(String, HostTensor)>;

/// The ops this build runs.
pub const SUPPORTED_OPS: &[&str] = &["embedding", "embedding_bag", "layer_norm", "stable_embedding", "embedding_sum_layer_norm", "axial_position_embedding", "quantize_blockwise", "dequantize_blockwise", "quantized_embedding", "quantized_embedding_bag"];

/// Runs op `op` on the case's inputs.
pub fn run_op(ctx: &Context, op: &str, inputs: &CaseInputs<'_>) -> Result<Outputs> {
    match op {
        "embedding" => embedding(ctx, inputs),
        "embedding_bag" => embedding_bag(ctx, inputs),
        "layer_norm" => layer_norm(ctx, inputs),
        "stable_embedding" => stable_embedding(ctx, inputs),
        "embedding_sum_layer_norm" => embedding_sum_layer_norm(ctx, inputs),
        "axial_position_embedding" => axial_position_embedding(ctx, inputs),
        "quantize_blockwise" => quantize_blockwise(ctx, inputs),
        "dequantize_blockwise" => dequantize_blockwise(ctx, inputs),
        "quantized_embedding" => quantized_embedding(ctx, inputs),
        "quantized_embedding_bag" => quantized_embedding_bag(ctx, inputs),
        other => Err(Error::Unsupported(format!("op {other:?} is not implemented by this build"))),
    }
}

/// A 2-D f32 table input: values, rows, columns.
pub(crate) fn table<'a>(inputs: &CaseInputs<'a>, role: &'static str) -> Result<(&'a [f32], usize, usize)> {
    let t = inputs.require(role)?;
    match t.shape[..] {
        [v, d] => Ok((t.as_f32(role)?, v, d)),
        _ => Err(Error::arg(role, format!("expected a 2-D table, got shape {:?}", t.shape))),
    }
}

fn max_norm(inputs: &CaseInputs<'_>) -> Result<(Option<f32>, f32)> {
    let p = inputs.params();
    Ok((p.opt_f64("max_norm")?.map(|m| m as f32), p.f64_or("norm_type", 2.0)? as f32))
}

fn embedding(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
    let (w, v, d) = table(inputs, "weight")?;
    let indices = inputs.require("indices")?.as_indices("indices")?;
    let (mn, p) = max_norm(inputs)?;
    let layer = Embedding::from_pretrained(ctx, w, v, d)?
        .with_padding_idx(inputs.params().opt_i64("padding_idx")?)?
        .with_max_norm(mn, p)?;
    let out = layer.forward(ctx, indices)?;
    let mut outputs = vec![("out".to_string(), HostTensor::f32(out.to_vec_f32(ctx)?, out.shape().to_vec()))];
    if mn.is_some() {
        outputs.push(("weight".to_string(), HostTensor::f32(layer.weight().to_vec_f32(ctx)?, vec![v, d])));
    }
    Ok(outputs)
}

fn embedding_bag(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
    let p = inputs.params();
    let (w, v, d) = table(inputs, "weight")?;
    let input = inputs.require("indices")?.as_indices("indices")?;
    let offsets = inputs.get("offsets")?.map(|t| t.as_indices("offsets")).transpose()?;
    let psw = inputs.get("per_sample_weights")?.map(|t| t.as_f32("per_sample_weights").map(|x| (x, &t.shape[..]))).transpose()?;
    let mode = BagMode::parse(p.opt_str("mode")?.unwrap_or("mean"))?;
    let (mn, norm_type) = max_norm(inputs)?;
    let layer = EmbeddingBag::from_pretrained(ctx, w, v, d, mode)?
        .with_padding_idx(p.opt_i64("padding_idx")?)?
        .with_max_norm(mn, norm_type)?
        .with_include_last_offset(p.bool_or("include_last_offset", false)?);
    let out = layer.forward(ctx, input, offsets, psw)?;
    let mut outputs = vec![("out".to_string(), HostTensor::f32(out.to_vec_f32(ctx)?, out.shape().to_vec()))];
    if mn.is_some() {
        outputs.push(("weight".to_string(), HostTensor::f32(layer.weight().to_vec_f32(ctx)?, vec![v, d])));
    }
    Ok(outputs)
}

fn f32_output(ctx: &Context, out: &crate::tensor::GpuTensor) -> Result<Outputs> {
    Ok(vec![("out".to_string(), HostTensor::f32(out.to_vec_f32(ctx)?, out.shape().to_vec()))])
}

/// An optional 1-D f32 input (LayerNorm's gamma / beta).
fn opt_vector<'a>(inputs: &CaseInputs<'a>, role: &'static str) -> Result<Option<&'a [f32]>> {
    inputs.get(role)?.map(|t| t.as_f32(role)).transpose()
}

fn layer_norm(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
    let x = inputs.require("x")?;
    let dim = *x.shape.last().ok_or_else(|| Error::arg("x", "expected at least one dimension, got a scalar"))?;
    let eps = inputs.params().f64_or("eps", 1e-5)? as f32;
    let layer = crate::layer_norm::LayerNorm::from_params(ctx, dim, eps, opt_vector(inputs, "gamma")?, opt_vector(inputs, "beta")?)?;
    f32_output(ctx, &layer.forward(ctx, x.as_f32("x")?, &x.shape)?)
}

fn stable_embedding(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
    let p = inputs.params();
    let (w, v, d) = table(inputs, "weight")?;
    let indices = inputs.require("indices")?.as_indices("indices")?;
    let layer = crate::stable_embedding::StableEmbedding::from_pretrained(
        ctx,
        crate::checkpoint::HostTable::f32(w, v, d)?,
        p.opt_i64("padding_idx")?,
        opt_vector(inputs, "gamma")?,
        opt_vector(inputs, "beta")?,
        p.f64_or("eps", crate::stable_embedding::STABLE_EMBEDDING_EPS as f64)? as f32,
    )?;
    f32_output(ctx, &layer.forward(ctx, indices)?)
}

fn embedding_sum_layer_norm(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
    let mut tables = Vec::new();
    let mut indices = Vec::new();
    for k in 0.. {
        let (Some(w), Some(i)) = (inputs.get(&format!("weight{k}"))?, inputs.get(&format!("indices{k}"))?) else { break };
        let [v, d] = w.shape[..] else {
            return Err(Error::arg("weight", format!("expected weight{k} to be a 2-D table, got shape {:?}", w.shape)));
        };
        tables.push(crate::checkpoint::HostTable::f32(w.as_f32("weight")?, v, d)?);
        indices.push(i.as_indices("indices")?);
    }
    let eps = inputs.params().f64_or("eps", 1e-12)? as f32;
    let block = crate::bert::EmbeddingSumLayerNorm::new(ctx, &tables, opt_vector(inputs, "gamma")?, opt_vector(inputs, "beta")?, eps)?;
    f32_output(ctx, &block.forward(ctx, &indices)?)
}

fn axial_position_embedding(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
    let shape = inputs.params().opt_usize_list("axial_pos_shape")?.ok_or_else(|| Error::arg("axial_pos_shape", "the case gives no axial_pos_shape"))?;
    let [n1, n2] = shape[..] else {
        return Err(Error::arg("axial_pos_shape", format!("expected two factors, got {shape:?}")));
    };
    // transformers stores the weights as [n1, 1, d1] and [1, n2, d2]: the last dimension is the width.
    let w0 = inputs.require("weight0")?;
    let w1 = inputs.require("weight1")?;
    let d0 = *w0.shape.last().unwrap_or(&0);
    let d1 = *w1.shape.last().unwrap_or(&0);
    let layer = crate::axial::AxialPositionEmbedding::from_pretrained(ctx, w0.as_f32("weight0")?, w1.as_f32("weight1")?, [n1, n2], [d0, d1])?;
    f32_output(ctx, &layer.forward(ctx, inputs.require("position_ids")?.as_indices("position_ids")?)?)
}

/// `blocksize` as a size (absent or null: `default`), refusing negatives by value.
fn blocksize_param(inputs: &CaseInputs<'_>, default: Option<usize>) -> Result<Option<usize>> {
    match inputs.params().opt_i64("blocksize")? {
        None => Ok(default),
        Some(b) if b >= 0 => Ok(Some(b as usize)),
        Some(b) => Err(Error::arg("blocksize", format!("blocksize {b} is not supported"))),
    }
}

fn code_map(inputs: &CaseInputs<'_>) -> Result<crate::quantize::CodeMap> {
    crate::quantize::CodeMap::parse(inputs.params().opt_str("code")?.unwrap_or("dynamic"))
}

fn quantize_blockwise(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
    let x = inputs.require("x")?;
    let values = x.as_f32("x")?;
    let blocksize = blocksize_param(inputs, Some(4096))?.unwrap_or(4096);
    let code = code_map(inputs)?;
    crate::quantize::check_blocksize(blocksize)?;
    // Uploaded flat (rows of one element): the kernels take the tensor as a flat run.
    let t = crate::tensor::GpuTensor::from_bytes(ctx, bytemuck::cast_slice(values), &[values.len()], crate::tensor::DType::F32, 1)?;
    let q = crate::quantize::quantize_blockwise(ctx, &t, blocksize, code)?;
    Ok(vec![
        ("codes".to_string(), HostTensor::u8(q.codes.to_bytes(ctx)?, vec![values.len()])),
        ("absmax".to_string(), HostTensor::f32(q.absmax.to_vec_f32(ctx)?, q.absmax.shape().to_vec())),
    ])
}

fn dequantize_blockwise(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
    let codes = inputs.require("codes")?.as_u8("codes")?;
    let absmax = inputs.require("absmax")?.as_f32("absmax")?;
    let blocksize = blocksize_param(inputs, Some(4096))?.unwrap_or(4096);
    let code = code_map(inputs)?;
    crate::quantize::check_blocksize(blocksize)?;
    let c = crate::tensor::GpuTensor::from_bytes(ctx, codes, &[codes.len()], crate::tensor::DType::U8, 1)?;
    let a = crate::tensor::GpuTensor::from_bytes(ctx, bytemuck::cast_slice(absmax), &[absmax.len()], crate::tensor::DType::F32, 1)?;
    let out = crate::quantize::dequantize_blockwise(ctx, &c, &a, blocksize, code)?;
    Ok(vec![("out".to_string(), HostTensor::f32(out.to_vec_f32(ctx)?, vec![codes.len()]))])
}

fn quantized_embedding(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
    let (w, v, d) = table(inputs, "weight")?;
    let scheme = crate::quantized::Scheme::parse(inputs.params().opt_str("scheme")?.unwrap_or("int8_blockwise"))?;
    let layer = crate::quantized::QuantizedEmbedding::from_pretrained(ctx, w, v, d, scheme, blocksize_param(inputs, None)?)?;
    let out = layer.forward(ctx, inputs.require("indices")?.as_indices("indices")?)?;
    Ok(vec![("out".to_string(), HostTensor::f32(out.to_vec_f32(ctx)?, out.shape().to_vec()))])
}

fn quantized_embedding_bag(ctx: &Context, inputs: &CaseInputs<'_>) -> Result<Outputs> {
    let p = inputs.params();
    let (w, v, d) = table(inputs, "weight")?;
    let scheme = crate::quantized::Scheme::parse(p.opt_str("scheme")?.unwrap_or("int8_blockwise"))?;
    let mode = BagMode::parse(p.opt_str("mode")?.unwrap_or("mean"))?;
    let input = inputs.require("indices")?.as_indices("indices")?;
    let offsets = inputs.get("offsets")?.map(|t| t.as_indices("offsets")).transpose()?;
    let psw = inputs.get("per_sample_weights")?.map(|t| t.as_f32("per_sample_weights").map(|x| (x, &t.shape[..]))).transpose()?;
    let layer = crate::quantized::QuantizedEmbeddingBag::from_pretrained(ctx, w, v, d, scheme, blocksize_param(inputs, None)?, mode)?
        .with_padding_idx(p.opt_i64("padding_idx")?)?
        .with_include_last_offset(p.bool_or("include_last_offset", false)?);
    let out = layer.forward(ctx, input, offsets, psw)?;
    Ok(vec![("out".to_string(), HostTensor::f32(out.to_vec_f32(ctx)?, out.shape().to_vec()))])
}
