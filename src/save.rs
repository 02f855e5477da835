//! Tables go back out: layers, tensors and an optimizer's state written to safetensors,
//! named as PyTorch's `state_dict()` names them, read from the GPU in one submission;
//! and an optimizer resumed from what was saved, bit for bit.
//!
//! ```
//! use wgpu_embed::{Block, Checkpoint, Context, Embedding, EmbeddingOptions, Optimizer, OptimizerKind, StateDict};
//! let ctx = Context::new().block()?;
//! let emb = Embedding::new(&ctx, 100, 8, EmbeddingOptions::default())?;
//! let kind = OptimizerKind::SparseAdam { lr: 0.01, betas: (0.9, 0.999), eps: 1e-8 };
//! let opt = Optimizer::new(&ctx, kind, emb.weight())?;
//! let bytes = StateDict::new().embedding("", &emb).optimizer("optimizer.", &opt).to_bytes(&ctx).block()?;
//! // ... later, or in another process:
//! let saved = Checkpoint::from_bytes(bytes)?;
//! let emb = Embedding::from_tensor(saved.upload_table(&ctx, "weight", &mut |_, _| {})?)?;
//! let mut opt = Optimizer::new(&ctx, kind, emb.weight())?;
//! opt.load_state(&ctx, &saved, "optimizer.")?;
//! # Ok::<(), wgpu_embed::Error>(())
//! ```
//!
//! Names: an `Embedding` / `EmbeddingBag` is `{prefix}weight` (what
//! `torch.nn.Embedding.load_state_dict` takes); a `StableEmbedding` adds
//! `{prefix}norm.weight` and `{prefix}norm.bias` (bitsandbytes' names); an optimizer's
//! state is `{prefix}state.0.{name}` with torch.optim's / bitsandbytes' state names
//! (`exp_avg`, `exp_avg_sq`, `sum`, `momentum_buffer`, `state1`, `absmax1`, ...) and its
//! step count as the F32 scalar `{prefix}state.0.step`, as torch keeps it; its
//! hyper-parameters are in the metadata under `{prefix}param_groups` (JSON).

use std::collections::BTreeMap;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::tensor::{DType, GpuTensor};
use crate::layers::embedding::Embedding;
use crate::layers::embedding_bag::EmbeddingBag;
use crate::layers::stable_embedding::StableEmbedding;
use crate::optim::{Optimizer, OptimizerKind};
use crate::quant::bitsandbytes::{quant_state_json, quant_state_name};
use crate::quant::codes::{CodeMap, FourBit, CONSTS_WORDS, C_OFFSET};
use crate::quant::table::{QuantizedTable, Scheme};

/// Where one saved tensor's bytes come from.
#[derive(Debug, Clone)]
enum Source {
    /// Tensor `tensor` of the set's GPU tensors, or the byte range `range` of it, saved
    /// with `shape` (two entries may share a tensor: it is read back once), as its own
    /// dtype or as `as_dtype` (the same bytes: bitsandbytes' int8 rows).
    Gpu { tensor: usize, range: Option<std::ops::Range<usize>>, shape: Vec<usize>, as_dtype: Option<safetensors::Dtype> },
    /// Host bytes (the step count).
    Host { dtype: DType, bytes: Vec<u8>, shape: Vec<usize> },
    /// A 4-bit table's packed `QuantState` JSON, whose nested offset is read from its
    /// constants (GPU tensor `consts`).
    QuantState { consts: usize, table: Box<QuantizedTable>, four_bit: FourBit },
}

fn gpu(tensor: usize, shape: &[usize]) -> Source {
    Source::Gpu { tensor, range: None, shape: shape.to_vec(), as_dtype: None }
}

/// A set of named tensors to save (sharing the GPU tensors, not copying them), built
/// with its methods and written with [`StateDict::to_bytes`] (one submission, one
/// read-back for all of them).
#[derive(Debug, Clone, Default)]
pub struct StateDict {
    tensors: Vec<GpuTensor>,
    entries: Vec<(String, Source)>,
    metadata: BTreeMap<String, String>,
    /// What an added item cannot be saved as, returned by `to_bytes`.
    refusal: Option<Error>,
}

impl StateDict {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `tensor` (any shape and dtype) as `name`.
    pub fn tensor(mut self, name: impl Into<String>, tensor: &GpuTensor) -> Self {
        let index = self.gpu_tensor(tensor);
        self.entries.push((name.into(), gpu(index, tensor.shape())));
        self
    }

    fn gpu_tensor(&mut self, tensor: &GpuTensor) -> usize {
        self.tensors.push(tensor.clone());
        self.tensors.len() - 1
    }

    /// Adds a metadata entry (kept in the file's `__metadata__`).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Adds an `Embedding`'s table as `{prefix}weight`.
    pub fn embedding(self, prefix: &str, layer: &Embedding) -> Self {
        self.tensor(format!("{prefix}weight"), layer.weight())
    }

    /// Adds an `EmbeddingBag`'s table as `{prefix}weight`.
    pub fn embedding_bag(self, prefix: &str, layer: &EmbeddingBag) -> Self {
        self.tensor(format!("{prefix}weight"), layer.weight())
    }

    /// Adds a `StableEmbedding`'s table and LayerNorm parameters as `{prefix}weight`,
    /// `{prefix}norm.weight` and `{prefix}norm.bias`.
    pub fn stable_embedding(mut self, prefix: &str, layer: &StableEmbedding) -> Self {
        let d = layer.embedding_dim();
        // gamma and beta share one [2 * d] tensor: read once, saved as two.
        let params = self.gpu_tensor(layer.block().affine().values());
        self.entries
            .push((format!("{prefix}norm.weight"), Source::Gpu { tensor: params, range: Some(0..4 * d), shape: vec![d], as_dtype: None }));
        self.entries.push((
            format!("{prefix}norm.bias"),
            Source::Gpu { tensor: params, range: Some(4 * d..8 * d), shape: vec![d], as_dtype: None },
        ));
        self.tensor(format!("{prefix}weight"), layer.weight())
    }

    /// Adds an optimizer's state as `{prefix}state.0.{name}`, its step count as
    /// `{prefix}state.0.step` and its hyper-parameters as metadata
    /// `{prefix}param_groups`.
    pub fn optimizer(mut self, prefix: &str, optimizer: &Optimizer) -> Self {
        for name in optimizer.state_names() {
            if let Some(t) = optimizer.state(name) {
                self = self.tensor(format!("{prefix}state.0.{name}"), t);
            }
        }
        let step = (optimizer.steps() as f32).to_le_bytes().to_vec();
        self.entries.push((format!("{prefix}state.0.step"), Source::Host { dtype: DType::F32, bytes: step, shape: vec![] }));
        self.metadata.insert(format!("{prefix}param_groups"), param_groups(optimizer.kind()));
        self
    }

    /// Adds a quantized table in bitsandbytes' own layout under `prefix` (see
    /// [`crate::quant::bitsandbytes`]): int8 row-wise as `Int8Params` (`{prefix}weight`
    /// I8 `[V, D]`, `{prefix}SCB`, `{prefix}weight_format`), NF4 / FP4 as `Params4bit`
    /// (`{prefix}weight` and its `weight.*` quant state), which bitsandbytes loads with
    /// `Int8Params(..)` / `Params4bit.from_prequantized(..)` and
    /// [`QuantizedTable::from_bitsandbytes`] reads back. Int8 block-wise tables have no
    /// such layout: `to_bytes` then refuses.
    pub fn quantized_table(mut self, prefix: &str, table: &QuantizedTable) -> Self {
        let (v, d) = (table.num_embeddings(), table.embedding_dim());
        match (table.scheme(), table.scheme().four_bit(), table.row_absmax()) {
            (Scheme::Int8Rowwise, _, Some(absmax)) => {
                let codes = self.gpu_tensor(table.codes());
                let codes = Source::Gpu { tensor: codes, range: None, shape: vec![v, d], as_dtype: Some(safetensors::Dtype::I8) };
                self.entries.push((format!("{prefix}weight"), codes));
                self = self.tensor(format!("{prefix}SCB"), absmax);
                self.entries.push((format!("{prefix}weight_format"), Source::Host { dtype: DType::U8, bytes: vec![0], shape: vec![] }));
            }
            (_, Some(four_bit), _) => {
                let numel = v * d;
                let blocks = numel.div_ceil(table.blocksize());
                let nested = table.scales2().expect("4-bit tables keep nested statistics");
                let codes = self.gpu_tensor(table.codes());
                self.entries.push((format!("{prefix}weight"), gpu(codes, &[numel.div_ceil(2), 1])));
                let absmax = self.gpu_tensor(table.scales());
                self.entries.push((format!("{prefix}weight.absmax"), gpu(absmax, &[blocks])));
                self = self.tensor(format!("{prefix}weight.nested_absmax"), nested);
                for (key, map) in [("quant_map", four_bit.values().to_vec()), ("nested_quant_map", CodeMap::Dynamic.values().to_vec())] {
                    let bytes = bytemuck::cast_slice(&map).to_vec();
                    self.entries.push((format!("{prefix}weight.{key}"), Source::Host { dtype: DType::F32, bytes, shape: vec![map.len()] }));
                }
                let consts = self.gpu_tensor(&GpuTensor::from_buffer(table.consts.clone(), &[CONSTS_WORDS], DType::U32));
                let state = Source::QuantState { consts, table: Box::new(table.clone()), four_bit };
                self.entries.push((quant_state_name(prefix, four_bit), state));
            }
            (scheme, _, _) => {
                self.refusal.get_or_insert(Error::Unsupported(format!(
                    "{prefix}: bitsandbytes keeps {scheme} tables in no module's state dict (save int8_rowwise, nf4 or fp4)"
                )));
            }
        }
        self
    }

    /// The safetensors bytes of every tensor added, read back in one submission.
    ///
    /// # Errors
    /// A device error while reading back; [`Error::InvalidArgument`] for a name given
    /// twice.
    pub async fn to_bytes(&self, ctx: &Context) -> Result<Vec<u8>> {
        if let Some(refusal) = &self.refusal {
            return Err(refusal.clone());
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some((name, _)) = self.entries.iter().find(|(n, _)| !seen.insert(n.as_str())) {
            return Err(Error::arg("name", format!("{name:?} is given twice")));
        }
        let mut run = ctx.record();
        let reads: Vec<_> = self.tensors.iter().map(|t| run.read(t)).collect();
        let outputs = run.submit()?.finish().await?;
        let mut data: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, source) in &self.entries {
            match source {
                Source::Gpu { tensor, range, shape, as_dtype } => {
                    let bytes = outputs.bytes(reads[*tensor]);
                    let bytes = range.clone().map_or(bytes, |r| &bytes[r]);
                    let dtype = as_dtype.unwrap_or(safetensors_dtype(self.tensors[*tensor].dtype()));
                    data.push((name.clone(), dtype, shape.clone(), bytes.to_vec()));
                }
                Source::Host { dtype, bytes, shape } => data.push((name.clone(), safetensors_dtype(*dtype), shape.clone(), bytes.clone())),
                Source::QuantState { consts, table, four_bit } => {
                    let word = &outputs.bytes(reads[*consts])[4 * C_OFFSET..4 * C_OFFSET + 4];
                    let offset = f32::from_le_bytes([word[0], word[1], word[2], word[3]]);
                    let json = quant_state_json(table, *four_bit, offset);
                    data.push((name.clone(), safetensors::Dtype::U8, vec![json.len()], json));
                }
            }
        }
        let views = data
            .iter()
            .map(|(name, dtype, shape, bytes)| {
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| Error::Format(format!("tensor {name}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = (!self.metadata.is_empty()).then(|| self.metadata.clone().into_iter().collect());
        safetensors::serialize(views, metadata).map_err(|e| Error::Format(e.to_string()))
    }

    /// Writes [`StateDict::to_bytes`] to `path`.
    ///
    /// # Errors
    /// As [`StateDict::to_bytes`], and [`Error::Format`] when the file cannot be written.
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn save(&self, ctx: &Context, path: impl AsRef<std::path::Path>) -> Result<()> {
        let bytes = self.to_bytes(ctx).await?;
        let path = path.as_ref();
        std::fs::write(path, bytes).map_err(|e| Error::Format(format!("cannot write {}: {e}", path.display())))
    }
}

fn safetensors_dtype(dtype: DType) -> safetensors::Dtype {
    match dtype {
        DType::F32 => safetensors::Dtype::F32,
        DType::F16 => safetensors::Dtype::F16,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::U8 => safetensors::Dtype::U8,
        DType::I32 => safetensors::Dtype::I32,
        DType::U32 => safetensors::Dtype::U32,
    }
}

/// torch.optim's `param_groups[0]` of `kind`, as JSON (names as torch gives them).
fn param_groups(kind: &OptimizerKind) -> String {
    use serde_json::json;
    let group = match *kind {
        OptimizerKind::Sgd { lr, momentum, dampening, nesterov, weight_decay } => {
            json!({"optimizer": "sgd", "lr": lr, "momentum": momentum, "dampening": dampening, "nesterov": nesterov, "weight_decay": weight_decay})
        }
        OptimizerKind::Adam { lr, betas, eps, weight_decay, decoupled } => {
            json!({"optimizer": if decoupled { "adamw" } else { "adam" }, "lr": lr, "betas": [betas.0, betas.1], "eps": eps, "weight_decay": weight_decay})
        }
        OptimizerKind::Adagrad { lr, lr_decay, eps, weight_decay, initial_accumulator_value } => json!({
            "optimizer": "adagrad", "lr": lr, "lr_decay": lr_decay, "eps": eps, "weight_decay": weight_decay,
            "initial_accumulator_value": initial_accumulator_value
        }),
        OptimizerKind::SparseAdam { lr, betas, eps } => {
            json!({"optimizer": "sparse_adam", "lr": lr, "betas": [betas.0, betas.1], "eps": eps})
        }
        OptimizerKind::RowwiseAdagrad { lr, eps, weight_decay } => {
            json!({"optimizer": "rowwise_adagrad", "lr": lr, "eps": eps, "weight_decay": weight_decay})
        }
        OptimizerKind::TbeAdam { lr, betas, eps, weight_decay } | OptimizerKind::PartialRowwiseAdam { lr, betas, eps, weight_decay } => {
            json!({"optimizer": kind.name(), "lr": lr, "betas": [betas.0, betas.1], "eps": eps, "weight_decay": weight_decay})
        }
        OptimizerKind::Adam8bit { lr, betas, eps, weight_decay, blocksize, min_8bit_size } => json!({
            "optimizer": "adam8bit", "lr": lr, "betas": [betas.0, betas.1], "eps": eps, "weight_decay": weight_decay,
            "blocksize": blocksize, "min_8bit_size": min_8bit_size
        }),
        OptimizerKind::Adam32bit { lr, betas, eps, weight_decay } => {
            json!({"optimizer": "adam32bit", "lr": lr, "betas": [betas.0, betas.1], "eps": eps, "weight_decay": weight_decay})
        }
    };
    json!([group]).to_string()
}

impl Optimizer {
    /// Restores the state [`StateDict::optimizer`] saved under `prefix` into this
    /// optimizer (made with the same kind, for a table of the same shape): every state
    /// tensor and the step count, so the next step is the one the saved optimizer
    /// would have taken.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when a state is missing or the saved hyper-parameters
    /// differ from this optimizer's; [`Error::ShapeMismatch`] for a state of another
    /// shape or dtype.
    pub fn load_state(&mut self, ctx: &Context, saved: &Checkpoint, prefix: &str) -> Result<()> {
        let key = format!("{prefix}param_groups");
        if let Some(groups) = saved.metadata().get(&key) {
            let want = param_groups(self.kind());
            if *groups != want {
                return Err(Error::arg("optimizer", format!("the file's {key} is {groups}, this optimizer's {want}")));
            }
        }
        let mut states = Vec::new();
        for name in self.state_names() {
            let (dtype, shape, bytes) = saved.raw(&format!("{prefix}state.0.{name}"))?;
            let t = self.state(name).expect("a name of state_names");
            if dtype != t.dtype() || shape != t.shape() {
                return Err(Error::ShapeMismatch(format!(
                    "saved state {name} is {dtype:?} {shape:?}; this optimizer's is {:?} {:?}",
                    t.dtype(),
                    t.shape()
                )));
            }
            states.push((t.clone(), bytes));
        }
        let (dtype, shape, bytes) = saved.raw(&format!("{prefix}state.0.step"))?;
        if dtype != DType::F32 || !shape.is_empty() {
            return Err(Error::ShapeMismatch(format!("saved step is {dtype:?} {shape:?}; expected an F32 scalar")));
        }
        let step = f32::from_le_bytes(bytes.try_into().map_err(|_| Error::Format("a 4-byte step".into()))?);
        if !(step >= 0.0 && step.fract() == 0.0) {
            return Err(Error::arg("step", format!("expected a whole number of steps, got {step}")));
        }
        for (t, bytes) in states {
            t.overwrite(ctx, bytes)?;
        }
        self.set_steps(step as u64);
        Ok(())
    }
}
