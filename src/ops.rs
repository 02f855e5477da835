//! Conformance ops: each case's op name mapped to the public API call that runs it.

use crate::context::Context;
use crate::embedding::Embedding;
use crate::embedding_bag::{BagMode, EmbeddingBag};
use crate::error::{Error, Result};
use crate::runner::{CaseInputs, HostTensor};

/// Named outputs of one case.
pub type Outputs = Vec<(String, HostTensor)>;

/// The ops this build runs.
pub const SUPPORTED_OPS: &[&str] = &["embedding", "embedding_bag"];

/// Runs op `op` on the case's inputs.
pub fn run_op(ctx: &Context, op: &str, inputs: &CaseInputs<'_>) -> Result<Outputs> {
    match op {
        "embedding" => embedding(ctx, inputs),
        "embedding_bag" => embedding_bag(ctx, inputs),
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
