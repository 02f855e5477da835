//! Optimizers that update embedding tables in place on the GPU, from dense gradients or
//! from the sparse (coalesced) ones the backward passes give: torch.optim's SGD
//! (momentum, Nesterov, weight decay), Adam / AdamW, Adagrad and SparseAdam, and
//! FBGEMM's row-wise Adagrad, and bitsandbytes' Adam with 8-bit block-wise or 32-bit
//! states, with its per-parameter rules (`min_8bit_size`, the `optim_bits = 32` its
//! embedding layers register, `GlobalOptimManager.override_config`'s keys). Their state
//! lives on the GPU beside the table, segmented like it. Shader family: `optimizer.wgsl`.

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::kernel::binding::{INPUT, OUT, PARAMS};
use crate::gpu::kernel::{common, Kernel, Role, ShaderFamily, Slot};
use crate::gpu::plan::{Call, Grid, PassParams, UpdatePlan};
use crate::gpu::recording::Recording;
use crate::gpu::table::mark_stepped;
use crate::gpu::tensor::{DType, GpuTensor};
use crate::layers::embedding::Embedding;
use crate::layers::embedding_backward::{record_fused_table_step, FusedStep, GradOptions, Gradient, Scatter};
use crate::layers::embedding_bag::{EmbeddingBag, PerSampleWeights};
use crate::layers::indices::Indices;
use crate::layers::stable_embedding::StableEmbedding;
use crate::quant::blockwise::{check_blocksize, dequantize_blockwise, quantize_blockwise};
use crate::quant::codes::{constants, constants_buffer, CodeMap};

pub(crate) static FAMILY: ShaderFamily = ShaderFamily {
    name: "optimizer",
    parts: &[common::GRID, common::PASS, common::RUNS, common::CODES, common::ENCODE, include_str!("../shaders/optimizer.wgsl")],
};

const STATE_A: (u32, Slot, Role) = (9, Slot::ReadWrite, Role::Aux(0));
const STATE_B: (u32, Slot, Role) = (24, Slot::ReadWrite, Role::Aux(1));
const HYPER: (u32, Slot, Role) = (25, Slot::Uniform, Role::Extra(0));
const ROWS: (u32, Slot, Role) = (26, Slot::Read, Role::Extra(1));
const DENSE_STEP: Kernel = Kernel::new(&FAMILY, "dense_step", &[PARAMS, INPUT, OUT, STATE_A, STATE_B, HYPER]);
const SPARSE_STEP: Kernel = Kernel::new(&FAMILY, "sparse_step", &[PARAMS, INPUT, OUT, STATE_A, STATE_B, HYPER, ROWS]);
const ROWWISE_STEP: Kernel = Kernel::new(&FAMILY, "rowwise_step", &[PARAMS, INPUT, OUT, STATE_A, STATE_B, HYPER, ROWS]);
// 8-bit Adam in one kernel: the states' codes beside the table, their absmax and the
// two code maps' constants whole.
const ADAM8BIT_STEP: Kernel = Kernel::new(
    &FAMILY,
    "adam8bit_step",
    &[
        PARAMS,
        INPUT,
        OUT,
        STATE_A,
        STATE_B,
        HYPER,
        (27, Slot::ReadWrite, Role::Extra(1)),
        (28, Slot::ReadWrite, Role::Extra(2)),
        (29, Slot::Read, Role::Extra(3)),
    ],
);
// The fused steps read the output gradient and the backward's runs (common/runs.wgsl).
const OUT_GRAD: (u32, Slot, Role) = (2, Slot::Read, Role::Input);
const RUN_BINDINGS: [(u32, Slot, Role); 4] = [
    (17, Slot::Read, Role::Extra(0)),
    (16, Slot::Read, Role::Extra(1)),
    (18, Slot::Read, Role::Extra(2)),
    (23, Slot::Read, Role::Extra(3)),
];
const FUSED_HYPER: (u32, Slot, Role) = (25, Slot::Uniform, Role::Extra(4));
const FUSED_STEP: Kernel = Kernel::new(
    &FAMILY,
    "fused_sparse_step",
    &[PARAMS, OUT_GRAD, OUT, STATE_A, STATE_B, RUN_BINDINGS[0], RUN_BINDINGS[1], RUN_BINDINGS[2], RUN_BINDINGS[3], FUSED_HYPER],
);
const FUSED_ROWWISE_STEP: Kernel = Kernel::new(
    &FAMILY,
    "fused_rowwise_step",
    &[PARAMS, OUT_GRAD, OUT, STATE_A, STATE_B, RUN_BINDINGS[0], RUN_BINDINGS[1], RUN_BINDINGS[2], RUN_BINDINGS[3], FUSED_HYPER],
);

/// An optimizer and its hyper-parameters, named as in `torch.optim` (f64, as Python's
/// floats: the bias corrections are computed in f64, the kernels take f32).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerKind {
    /// `torch.optim.SGD`.
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum factor (0: none).
        momentum: f64,
        /// Dampening of the momentum.
        dampening: f64,
        /// Nesterov momentum.
        nesterov: bool,
        /// Weight decay (L2 penalty; decoupled for AdamW and 8-bit Adam).
        weight_decay: f64,
    },
    /// Adam, or AdamW with `decoupled` weight decay.
    Adam {
        /// Learning rate.
        lr: f64,
        /// Coefficients of the running averages of the gradient and its square.
        betas: (f64, f64),
        /// Added to the denominator for numerical stability.
        eps: f64,
        /// Weight decay (L2 penalty; decoupled for AdamW and 8-bit Adam).
        weight_decay: f64,
        /// AdamW: weight decay applied to the weights, not the gradient.
        decoupled: bool,
    },
    /// `torch.optim.Adagrad`.
    Adagrad {
        /// Learning rate.
        lr: f64,
        /// Learning-rate decay.
        lr_decay: f64,
        /// Added to the denominator for numerical stability.
        eps: f64,
        /// Weight decay (L2 penalty; decoupled for AdamW and 8-bit Adam).
        weight_decay: f64,
        /// Starting value of the accumulator.
        initial_accumulator_value: f64,
    },
    /// `torch.optim.SparseAdam`: only the rows of each (sparse) gradient change.
    SparseAdam {
        /// Learning rate.
        lr: f64,
        /// Coefficients of the running averages of the gradient and its square.
        betas: (f64, f64),
        /// Added to the denominator for numerical stability.
        eps: f64,
    },
    /// FBGEMM's EXACT_ROWWISE_ADAGRAD: one accumulator per row (sparse gradients).
    RowwiseAdagrad {
        /// Learning rate.
        lr: f64,
        /// Added to the denominator for numerical stability.
        eps: f64,
        /// Weight decay (L2 penalty; decoupled for AdamW and 8-bit Adam).
        weight_decay: f64,
    },
    /// FBGEMM's ADAM for table-batched embeddings (`EmbOptimType.ADAM`; sparse
    /// gradients): Adam on the rows a gradient names, the other rows and their states
    /// untouched; bias corrections from the optimizer's step count (FBGEMM's global
    /// `iter`), weight decay added to the update:
    /// `w -= lr · (m / (1 − β₁ᵗ) / (√(v / (1 − β₂ᵗ)) + eps) + weight_decay · w)`.
    /// States `momentum1`, `momentum2` (`[V, D]`).
    TbeAdam {
        /// Learning rate.
        lr: f64,
        /// Coefficients of the running averages of the gradient and its square.
        betas: (f64, f64),
        /// Added to the denominator for numerical stability.
        eps: f64,
        /// Weight decay, added to the update (as FBGEMM adds it).
        weight_decay: f64,
    },
    /// FBGEMM's PARTIAL_ROWWISE_ADAM (sparse gradients): [`OptimizerKind::TbeAdam`] with
    /// one second moment per row, the running average of the row's mean g²
    /// (`momentum1` `[V, D]`, `momentum2` `[V]`).
    PartialRowwiseAdam {
        /// Learning rate.
        lr: f64,
        /// Coefficients of the running averages of the gradient and of its row's mean square.
        betas: (f64, f64),
        /// Added to the denominator for numerical stability.
        eps: f64,
        /// Weight decay, added to the update (as FBGEMM adds it).
        weight_decay: f64,
    },
    /// bitsandbytes' 8-bit Adam with block-wise states (`bnb.optim.Adam8bit`;
    /// `AdamW8bit` is it with `weight_decay`): `state1` in the signed dynamic map,
    /// `state2` in the unsigned one, an absmax per `blocksize` elements; decoupled weight
    /// decay, as bitsandbytes applies it. A tensor of fewer than `min_8bit_size` elements
    /// keeps 32-bit states and steps as [`OptimizerKind::Adam32bit`], as bitsandbytes does
    /// (its default is 4 096).
    Adam8bit {
        /// Learning rate.
        lr: f64,
        /// Coefficients of the running averages of the gradient and its square.
        betas: (f64, f64),
        /// Added to the denominator for numerical stability.
        eps: f64,
        /// Weight decay (L2 penalty; decoupled for AdamW and 8-bit Adam).
        weight_decay: f64,
        /// Elements per absmax block of the 8-bit states.
        blocksize: usize,
        /// Tensors with fewer elements keep 32-bit states (bitsandbytes: 4 096).
        min_8bit_size: usize,
    },
    /// bitsandbytes' Adam with 32-bit states (`bnb.optim.Adam32bit`, and what
    /// `Adam8bit` keeps for a tensor under `min_8bit_size` or overridden to
    /// `optim_bits = 32`): f32 `state1` / `state2` and bitsandbytes' operation order,
    /// `w ← w·(1 − lr·wd) − lr·√(1−β₂ᵗ)/(1−β₁ᵗ) · m / (√v + eps·√(1−β₂ᵗ))`.
    Adam32bit {
        /// Learning rate.
        lr: f64,
        /// Coefficients of the running averages of the gradient and its square.
        betas: (f64, f64),
        /// Added to the denominator for numerical stability.
        eps: f64,
        /// Decoupled weight decay.
        weight_decay: f64,
    },
}

/// One parameter's overrides, as bitsandbytes' `GlobalOptimManager.override_config`
/// takes them (`optim_bits`, `lr`, `betas`, `eps`, `weight_decay`); unset fields keep
/// the optimizer's. `optim_bits = 32` is what `bnb.nn.StableEmbedding` and
/// `bnb.nn.Embedding` register for their weight ([`TrainableLayer::optim_config`]).
///
/// ```
/// use wgpu_embed::ParamConfig;
/// let config = ParamConfig { optim_bits: Some(32), lr: Some(1e-3), ..ParamConfig::default() };
/// assert_eq!(config.betas, None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ParamConfig {
    /// 8 or 32: the states' width for bitsandbytes' optimizers (torch.optim's keep f32
    /// states: 32 is a no-op for them, 8 is refused).
    pub optim_bits: Option<u32>,
    /// Learning rate.
    pub lr: Option<f64>,
    /// Coefficients of the running averages.
    pub betas: Option<(f64, f64)>,
    /// Added to the denominator.
    pub eps: Option<f64>,
    /// Weight decay.
    pub weight_decay: Option<f64>,
}

impl ParamConfig {
    /// The overrides as JSON gives them (`{"optim_bits": 32, "lr": 0.001, "betas":
    /// [0.9, 0.95]}`: `GlobalOptimManager.override_config`'s `key_value_dict`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a key other than `optim_bits`, `lr`, `betas`,
    /// `eps`, `weight_decay`, or a value of the wrong type.
    pub fn from_json(o: &serde_json::Map<String, serde_json::Value>) -> Result<Self> {
        for key in o.keys() {
            if !["optim_bits", "lr", "betas", "eps", "weight_decay"].contains(&key.as_str()) {
                return Err(Error::arg(
                    "overrides",
                    format!("{key:?} is not an override this build takes (optim_bits, lr, betas, eps, weight_decay)"),
                ));
            }
        }
        let number = |key: &'static str| -> Result<Option<f64>> {
            o.get(key).map(|v| v.as_f64().ok_or_else(|| Error::arg(key, format!("expected a number, got {v}")))).transpose()
        };
        let betas = match o.get("betas") {
            None => None,
            Some(serde_json::Value::Array(a)) if a.len() == 2 && a.iter().all(|x| x.is_number()) => {
                Some((a[0].as_f64().unwrap_or(0.0), a[1].as_f64().unwrap_or(0.0)))
            }
            Some(v) => return Err(Error::arg("betas", format!("expected two numbers, got {v}"))),
        };
        let optim_bits = match number("optim_bits")? {
            None => None,
            Some(b) if b.fract() == 0.0 && (0.0..=64.0).contains(&b) => Some(b as u32),
            Some(b) => return Err(Error::arg("optim_bits", format!("Amount of optimizer bits not supported: {b}"))),
        };
        Ok(ParamConfig { optim_bits, lr: number("lr")?, betas, eps: number("eps")?, weight_decay: number("weight_decay")? })
    }
}

/// A layer whose table an [`Optimizer`] trains, with the per-parameter configuration
/// its bitsandbytes counterpart registers for it ([`Optimizer::for_layer`]).
pub trait TrainableLayer {
    /// The `[V, D]` F32 table the optimizer updates.
    fn trained_table(&self) -> &GpuTensor;
    /// What the layer registers for its table: `optim_bits = 32` for
    /// `bnb.nn.StableEmbedding` and `bnb.nn.Embedding` (bitsandbytes'
    /// `register_module_override(self, "weight", {"optim_bits": 32})`), nothing else.
    fn optim_config(&self) -> ParamConfig {
        ParamConfig::default()
    }
}

impl TrainableLayer for Embedding {
    fn trained_table(&self) -> &GpuTensor {
        self.weight()
    }
    fn optim_config(&self) -> ParamConfig {
        if self.is_bitsandbytes() {
            ParamConfig { optim_bits: Some(32), ..ParamConfig::default() }
        } else {
            ParamConfig::default()
        }
    }
}

impl TrainableLayer for EmbeddingBag {
    fn trained_table(&self) -> &GpuTensor {
        self.weight()
    }
}

impl TrainableLayer for StableEmbedding {
    fn trained_table(&self) -> &GpuTensor {
        self.weight()
    }
    fn optim_config(&self) -> ParamConfig {
        ParamConfig { optim_bits: Some(32), ..ParamConfig::default() }
    }
}

/// bitsandbytes' optimizer arguments this build does not implement: refused by name
/// ([`OptimizerKind::from_json`]) rather than ignored.
const UNIMPLEMENTED_BNB_ARGS: &[(&str, &str)] = &[
    ("percentile_clipping", "bitsandbytes 0.50 removed percentile_clipping: its optimizers step with gnorm_scale = 1"),
    ("max_unorm", "max_unorm is not implemented (bitsandbytes' Adam8bit / Adam32bit no longer take it)"),
    ("amsgrad", "Adam8bit does not support amsgrad=True"),
    ("block_wise", "only block-wise 8-bit states are implemented (bitsandbytes 0.50 has no other)"),
    ("is_paged", "paged optimizers are a CUDA unified-memory feature; not implemented"),
];

impl OptimizerKind {
    /// Its learning rate, which every optimizer has.
    fn lr_mut(&mut self) -> &mut f64 {
        match self {
            OptimizerKind::Sgd { lr, .. }
            | OptimizerKind::Adam { lr, .. }
            | OptimizerKind::Adagrad { lr, .. }
            | OptimizerKind::SparseAdam { lr, .. }
            | OptimizerKind::RowwiseAdagrad { lr, .. }
            | OptimizerKind::TbeAdam { lr, .. }
            | OptimizerKind::PartialRowwiseAdam { lr, .. }
            | OptimizerKind::Adam8bit { lr, .. }
            | OptimizerKind::Adam32bit { lr, .. } => lr,
        }
    }

    /// This kind with `config`'s overrides, for a tensor of `numel` elements:
    /// `optim_bits` 32 turns 8-bit Adam into [`OptimizerKind::Adam32bit`] (and 8 the
    /// reverse, with bitsandbytes' block of 256 and `min_8bit_size` of 4 096), then a
    /// tensor under `min_8bit_size` keeps 32-bit states, as bitsandbytes' `init_state`
    /// decides.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming an override this kind has no field for, or
    /// `optim_bits` other than 8 or 32 (8 for torch.optim's kinds).
    pub fn configured(self, config: &ParamConfig, numel: usize) -> Result<Self> {
        let mut kind = self;
        let name = kind.name();
        let missing = |arg: &'static str| Error::arg(arg, format!("{name} has no {arg} to override"));
        if let Some(v) = config.lr {
            *kind.lr_mut() = v;
        }
        if let Some(v) = config.betas {
            match &mut kind {
                OptimizerKind::Adam { betas, .. }
                | OptimizerKind::SparseAdam { betas, .. }
                | OptimizerKind::TbeAdam { betas, .. }
                | OptimizerKind::PartialRowwiseAdam { betas, .. }
                | OptimizerKind::Adam8bit { betas, .. }
                | OptimizerKind::Adam32bit { betas, .. } => *betas = v,
                _ => return Err(missing("betas")),
            }
        }
        if let Some(v) = config.eps {
            match &mut kind {
                OptimizerKind::Adam { eps, .. }
                | OptimizerKind::Adagrad { eps, .. }
                | OptimizerKind::SparseAdam { eps, .. }
                | OptimizerKind::RowwiseAdagrad { eps, .. }
                | OptimizerKind::TbeAdam { eps, .. }
                | OptimizerKind::PartialRowwiseAdam { eps, .. }
                | OptimizerKind::Adam8bit { eps, .. }
                | OptimizerKind::Adam32bit { eps, .. } => *eps = v,
                _ => return Err(missing("eps")),
            }
        }
        if let Some(v) = config.weight_decay {
            match &mut kind {
                OptimizerKind::Sgd { weight_decay, .. }
                | OptimizerKind::Adam { weight_decay, .. }
                | OptimizerKind::Adagrad { weight_decay, .. }
                | OptimizerKind::RowwiseAdagrad { weight_decay, .. }
                | OptimizerKind::TbeAdam { weight_decay, .. }
                | OptimizerKind::PartialRowwiseAdam { weight_decay, .. }
                | OptimizerKind::Adam8bit { weight_decay, .. }
                | OptimizerKind::Adam32bit { weight_decay, .. } => *weight_decay = v,
                OptimizerKind::SparseAdam { .. } => return Err(missing("weight_decay")),
            }
        }
        kind = match (config.optim_bits, kind) {
            (None, k) => k,
            (Some(32), OptimizerKind::Adam8bit { lr, betas, eps, weight_decay, .. }) => {
                OptimizerKind::Adam32bit { lr, betas, eps, weight_decay }
            }
            (Some(8), OptimizerKind::Adam32bit { lr, betas, eps, weight_decay }) => {
                OptimizerKind::Adam8bit { lr, betas, eps, weight_decay, blocksize: 256, min_8bit_size: 4096 }
            }
            (Some(32), k) => k,
            (Some(8), k @ OptimizerKind::Adam8bit { .. }) => k,
            (Some(8), k) => {
                return Err(Error::arg(
                    "optim_bits",
                    format!("{} keeps f32 states; only bitsandbytes' Adam takes optim_bits = 8", k.name()),
                ))
            }
            (Some(bits), _) => return Err(Error::arg("optim_bits", format!("Amount of optimizer bits not supported: {bits}"))),
        };
        if let OptimizerKind::Adam8bit { lr, betas, eps, weight_decay, min_8bit_size, .. } = kind {
            if numel < min_8bit_size {
                kind = OptimizerKind::Adam32bit { lr, betas, eps, weight_decay };
            }
        }
        Ok(kind)
    }

    /// Whether one invocation steps a whole row (a state per row: FBGEMM's row-wise kinds).
    fn per_row(&self) -> bool {
        matches!(self, OptimizerKind::RowwiseAdagrad { .. } | OptimizerKind::PartialRowwiseAdam { .. })
    }

    /// The name [`OptimizerKind::from_json`] takes for this kind.
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerKind::Sgd { .. } => "sgd",
            OptimizerKind::Adam { decoupled: false, .. } => "adam",
            OptimizerKind::Adam { decoupled: true, .. } => "adamw",
            OptimizerKind::Adagrad { .. } => "adagrad",
            OptimizerKind::SparseAdam { .. } => "sparse_adam",
            OptimizerKind::RowwiseAdagrad { .. } => "rowwise_adagrad",
            OptimizerKind::TbeAdam { .. } => "tbe_adam",
            OptimizerKind::PartialRowwiseAdam { .. } => "partial_rowwise_adam",
            OptimizerKind::Adam8bit { .. } => "adam8bit",
            OptimizerKind::Adam32bit { .. } => "adam32bit",
        }
    }

    /// An optimizer from torch.optim's and bitsandbytes' names (`sgd`, `adam`, `adamw`,
    /// `adagrad`, `sparse_adam`, `rowwise_adagrad`; FBGEMM's `tbe_adam` and
    /// `partial_rowwise_adam`; `adam8bit`, `adamw8bit` and
    /// `adam32bit` as `bnb.optim` names them, with its defaults: `min_8bit_size` 4 096,
    /// `weight_decay` 0.01 for AdamW8bit; `adam8bit_blockwise` is the 8-bit update
    /// alone, on any tensor: `min_8bit_size` 0) and hyper-parameters, snake_case as a
    /// case file or JSON gives them.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a missing `lr`, a value of the wrong type, or a
    /// bitsandbytes argument this build does not implement (`percentile_clipping` below
    /// 100, `max_unorm` above 0, `amsgrad`, `block_wise = false`, `is_paged`), named;
    /// [`Error::Unsupported`] for another optimizer (bitsandbytes' `lion8bit`,
    /// `sgd8bit`, ... included).
    pub fn from_json(params: &serde_json::Map<String, serde_json::Value>) -> Result<Self> {
        for (arg, why) in UNIMPLEMENTED_BNB_ARGS {
            let inert = match (*arg, params.get(*arg)) {
                (_, None | Some(serde_json::Value::Null)) => true,
                ("percentile_clipping", Some(v)) => v.as_f64() == Some(100.0),
                ("max_unorm", Some(v)) => v.as_f64() == Some(0.0),
                ("block_wise", Some(v)) => v.as_bool() == Some(true),
                (_, Some(v)) => v.as_bool() == Some(false),
            };
            if !inert {
                return Err(Error::arg(arg, format!("{why}; got {}", params[*arg])));
            }
        }
        let number = |key: &'static str| -> Result<Option<f64>> {
            match params.get(key) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| Error::arg(key, format!("expected a number, got {v}"))),
            }
        };
        let or = |key: &'static str, default: f64| number(key).map(|v| v.unwrap_or(default));
        let betas = || -> Result<(f64, f64)> {
            match params.get("betas") {
                None | Some(serde_json::Value::Null) => Ok((0.9, 0.999)),
                Some(serde_json::Value::Array(a)) if a.len() == 2 && a.iter().all(|x| x.is_number()) => {
                    Ok((a[0].as_f64().unwrap_or(0.0), a[1].as_f64().unwrap_or(0.0)))
                }
                Some(v) => Err(Error::arg("betas", format!("expected two numbers, got {v}"))),
            }
        };
        let name = params.get("optimizer").and_then(|v| v.as_str()).ok_or_else(|| Error::arg("optimizer", "no optimizer named"))?;
        let lr = number("lr")?.ok_or_else(|| Error::arg("lr", "no lr given"))?;
        let wd = or("weight_decay", 0.0)?;
        Ok(match name {
            "sgd" => OptimizerKind::Sgd {
                lr,
                momentum: or("momentum", 0.0)?,
                dampening: or("dampening", 0.0)?,
                nesterov: params.get("nesterov").and_then(|v| v.as_bool()).unwrap_or(false),
                weight_decay: wd,
            },
            "adam" | "adamw" => OptimizerKind::Adam {
                lr,
                betas: betas()?,
                eps: or("eps", 1e-8)?,
                weight_decay: or("weight_decay", if name == "adamw" { 1e-2 } else { 0.0 })?,
                decoupled: name == "adamw",
            },
            "adagrad" => OptimizerKind::Adagrad {
                lr,
                lr_decay: or("lr_decay", 0.0)?,
                eps: or("eps", 1e-10)?,
                weight_decay: wd,
                initial_accumulator_value: or("initial_accumulator_value", 0.0)?,
            },
            "sparse_adam" => OptimizerKind::SparseAdam { lr, betas: betas()?, eps: or("eps", 1e-8)? },
            "rowwise_adagrad" => OptimizerKind::RowwiseAdagrad { lr, eps: or("eps", 1e-10)?, weight_decay: wd },
            "tbe_adam" => OptimizerKind::TbeAdam { lr, betas: betas()?, eps: or("eps", 1e-8)?, weight_decay: wd },
            "partial_rowwise_adam" => OptimizerKind::PartialRowwiseAdam { lr, betas: betas()?, eps: or("eps", 1e-8)?, weight_decay: wd },
            "adam8bit_blockwise" | "adam8bit" | "adamw8bit" => {
                let min_default = if name == "adam8bit_blockwise" { 0.0 } else { 4096.0 };
                if let Some(bits) = number("optim_bits")? {
                    if bits != 32.0 {
                        // bitsandbytes' own refusal: the argument exists for compatibility only.
                        return Err(Error::arg(
                            "optim_bits",
                            format!("Adam8bit only supports optim_bits=32 (default value for compatibility), got {bits}"),
                        ));
                    }
                }
                OptimizerKind::Adam8bit {
                    lr,
                    betas: betas()?,
                    eps: or("eps", 1e-8)?,
                    weight_decay: or("weight_decay", if name == "adamw8bit" { 1e-2 } else { 0.0 })?,
                    blocksize: or("blocksize", 256.0)? as usize,
                    min_8bit_size: or("min_8bit_size", min_default)? as usize,
                }
            }
            "adam32bit" => OptimizerKind::Adam32bit { lr, betas: betas()?, eps: or("eps", 1e-8)?, weight_decay: wd },
            other => return Err(Error::Unsupported(format!("optimizer {other:?} is not implemented by this build"))),
        })
    }
}

/// Whether a fused step can read `grad_out`: one binding, rows of whole vec4 words.
fn fusable(grad_out: &GpuTensor) -> bool {
    grad_out.segments().len() == 1 && grad_out.row_len().is_multiple_of(4)
}

/// `t` as the optimizer's kernels see it: a `[V, D]` F32 table as it is, a 1-D one (one
/// binding) as one row `[1, n]` over the same buffer.
fn rows_of(t: &GpuTensor) -> Result<GpuTensor> {
    let refuse = || {
        Error::arg(
            "table",
            format!("expected an F32 [V, D] table or a 1-D F32 tensor in one binding, got {:?} of shape {:?}", t.dtype(), t.shape()),
        )
    };
    match (t.dtype(), t.shape().len()) {
        (DType::F32, 2) => Ok(t.clone()),
        (DType::F32, 1) => t.as_one_row().ok_or_else(refuse),
        _ => Err(refuse()),
    }
}

/// `OPT_*` of the shader.
fn code(kind: &OptimizerKind) -> u32 {
    match kind {
        OptimizerKind::Sgd { .. } => 0,
        OptimizerKind::Adam { .. } => 1,
        OptimizerKind::Adagrad { .. } => 2,
        OptimizerKind::SparseAdam { .. } => 3,
        OptimizerKind::RowwiseAdagrad { .. } => 4,
        OptimizerKind::Adam8bit { .. } => 5,
        OptimizerKind::Adam32bit { .. } => 6,
        OptimizerKind::TbeAdam { .. } => 7,
        OptimizerKind::PartialRowwiseAdam { .. } => 8,
    }
}

/// An optimizer's state for one f32 parameter, on the GPU: a `[V, D]` table, or a 1-D
/// tensor (LayerNorm's gamma or beta) stepped as one row.
#[derive(Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    /// Named as torch.optim (or bitsandbytes) names them, segmented like the table.
    states: Vec<(&'static str, GpuTensor)>,
    steps: u64,
    /// `[V, D]` of the table it was made for (`[1, n]` for a 1-D parameter).
    table_shape: [usize; 2],
    /// The parameter's own shape.
    param_shape: Vec<usize>,
    /// 8-bit Adam whose blocks never straddle the table's segments: one kernel per step,
    /// reading the two code maps' constants (signed, then unsigned); else three passes.
    one_kernel_8bit: Option<wgpu::Buffer>,
}

impl Optimizer {
    /// The state of `kind` for `table` (F32 `[V, D]`, or 1-D), as a fresh torch.optim
    /// or bitsandbytes optimizer has it: [`Optimizer::with_config`] with no overrides
    /// (so 8-bit Adam keeps 32-bit states for a tensor under its `min_8bit_size`).
    ///
    /// ```
    /// use wgpu_embed::{Block, Context, GpuTensor, Optimizer, OptimizerKind};
    /// let ctx = Context::new().block()?;
    /// let table = GpuTensor::from_f32(&ctx, &vec![0.5; 100 * 64], &[100, 64])?;
    /// let kind = OptimizerKind::Adam8bit { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, blocksize: 256, min_8bit_size: 4096 };
    /// // 6 400 elements: 8-bit states, as bitsandbytes keeps them.
    /// assert_eq!(Optimizer::new(&ctx, kind, &table)?.state_names(), ["state1", "absmax1", "state2", "absmax2"]);
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a table that is not F32 `[V, D]` or one-segment
    /// 1-D, or a bad `blocksize`.
    pub fn new(ctx: &Context, kind: OptimizerKind, table: &GpuTensor) -> Result<Self> {
        Self::with_config(ctx, kind, table, &ParamConfig::default())
    }

    /// The optimizer for `layer`'s table with the configuration its bitsandbytes
    /// counterpart registers: 8-bit Adam over a [`StableEmbedding`] or an
    /// [`Embedding::bitsandbytes`] table keeps 32-bit states and steps as
    /// [`OptimizerKind::Adam32bit`], as `bnb.optim.Adam8bit` does over
    /// `bnb.nn.StableEmbedding`; over a plain table, 8-bit states.
    ///
    /// ```
    /// use wgpu_embed::{Block, Context, EmbeddingOptions, Optimizer, OptimizerKind, StableEmbedding};
    /// let ctx = Context::new().block()?;
    /// let stable = StableEmbedding::new(&ctx, 5000, 64, EmbeddingOptions::default())?;
    /// let kind = OptimizerKind::Adam8bit { lr: 1e-3, betas: (0.9, 0.999), eps: 1e-8, weight_decay: 0.0, blocksize: 256, min_8bit_size: 4096 };
    /// let opt = Optimizer::for_layer(&ctx, kind, &stable)?;
    /// assert_eq!(opt.kind().name(), "adam32bit");
    /// assert_eq!(opt.state_names(), ["state1", "state2"]);
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Optimizer::with_config`].
    pub fn for_layer(ctx: &Context, kind: OptimizerKind, layer: &impl TrainableLayer) -> Result<Self> {
        Self::with_config(ctx, kind, layer.trained_table(), &layer.optim_config())
    }

    /// The state of `kind`, with one parameter's `config` overrides
    /// ([`OptimizerKind::configured`]: `optim_bits`, `lr`, `betas`, `eps`,
    /// `weight_decay`, then `min_8bit_size`), for `table`. [`Optimizer::kind`] gives the
    /// kind that results.
    ///
    /// # Errors
    /// As [`Optimizer::new`], and what [`OptimizerKind::configured`] refuses.
    pub fn with_config(ctx: &Context, kind: OptimizerKind, table: &GpuTensor, config: &ParamConfig) -> Result<Self> {
        let param_shape = table.shape().to_vec();
        let table = &rows_of(table)?;
        let kind = kind.configured(config, table.numel())?;
        let per = table.segments().iter().map(|s| s.rows).max().unwrap_or(1).max(1);
        let (v, d) = (table.shape()[0], table.shape()[1]);
        let like_table = |fill: f64| -> Result<GpuTensor> {
            if fill == 0.0 {
                GpuTensor::zeros_with(ctx, &[v, d], DType::F32, d, per)
            } else {
                GpuTensor::from_bytes_with(ctx, bytemuck::cast_slice(&vec![fill as f32; v * d]), &[v, d], DType::F32, d, per)
            }
        };
        let mut one_kernel_8bit = None;
        let states = match kind {
            OptimizerKind::Sgd { momentum, .. } if momentum != 0.0 => vec![("momentum_buffer", like_table(0.0)?)],
            OptimizerKind::Sgd { .. } => vec![],
            OptimizerKind::Adam { .. } | OptimizerKind::SparseAdam { .. } => {
                vec![("exp_avg", like_table(0.0)?), ("exp_avg_sq", like_table(0.0)?)]
            }
            OptimizerKind::Adam32bit { .. } => vec![("state1", like_table(0.0)?), ("state2", like_table(0.0)?)],
            OptimizerKind::Adagrad { initial_accumulator_value, .. } => vec![("sum", like_table(initial_accumulator_value)?)],
            OptimizerKind::RowwiseAdagrad { .. } => vec![("momentum", GpuTensor::zeros_with(ctx, &[v], DType::F32, 1, per)?)],
            OptimizerKind::TbeAdam { .. } => vec![("momentum1", like_table(0.0)?), ("momentum2", like_table(0.0)?)],
            OptimizerKind::PartialRowwiseAdam { .. } => {
                vec![("momentum1", like_table(0.0)?), ("momentum2", GpuTensor::zeros_with(ctx, &[v], DType::F32, 1, per)?)]
            }
            OptimizerKind::Adam8bit { blocksize, .. } => {
                check_blocksize(blocksize)?;
                let blocks = (v * d).div_ceil(blocksize);
                let absmax = || GpuTensor::zeros(ctx, &[blocks], DType::F32, 1);
                let (a1, a2) = (absmax()?, absmax()?);
                let segs = table.segments();
                let aligned = segs[..segs.len() - 1].iter().all(|s| (s.rows as usize * d).is_multiple_of(blocksize));
                let codes = || {
                    if aligned {
                        // Segmented like the table: the kernel reads each block's codes beside its rows.
                        GpuTensor::zeros_with(ctx, &[v, d], DType::U8, d, per)
                    } else {
                        GpuTensor::zeros(ctx, &[v * d], DType::U8, 1).and_then(|t| t.reshape(&[v, d]))
                    }
                };
                if aligned && a1.segments().len() == 1 {
                    let words = [constants(&CodeMap::Dynamic.values(), None), constants(&CodeMap::DynamicUnsigned.values(), None)].concat();
                    one_kernel_8bit = Some(constants_buffer(ctx, &words));
                }
                vec![("state1", codes()?), ("absmax1", a1), ("state2", codes()?), ("absmax2", a2)]
            }
        };
        Ok(Optimizer { kind, states, steps: 0, table_shape: [v, d], param_shape, one_kernel_8bit })
    }

    /// The state tensor called `name` (`momentum_buffer`, `exp_avg`, `exp_avg_sq`, `sum`,
    /// `momentum`, `momentum1`, `momentum2`, ...; [`Optimizer::state_names`] lists them).
    pub fn state(&self, name: &str) -> Option<&GpuTensor> {
        self.states.iter().find(|(n, _)| *n == name).map(|(_, t)| t)
    }

    /// The names of this optimizer's states.
    pub fn state_names(&self) -> Vec<&'static str> {
        self.states.iter().map(|(n, _)| *n).collect()
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The optimizer and its hyper-parameters.
    pub fn kind(&self) -> &OptimizerKind {
        &self.kind
    }

    /// Sets the learning rate the next steps take, as a PyTorch scheduler sets
    /// `param_groups[0]["lr"]`; the states and step count stay.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a negative or non-finite `lr` (PyTorch's
    /// "Invalid learning rate"); the optimizer is then unchanged.
    pub fn set_lr(&mut self, lr: f64) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::arg("lr", format!("Invalid learning rate: {lr}")));
        }
        *self.kind.lr_mut() = lr;
        Ok(())
    }

    /// Sets the step count (a resumed optimizer's).
    pub(crate) fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }

    /// One step: updates `table` in place (and its texture copy, if it has one) from
    /// `grad`, dense or sparse (coalesced: distinct rows), refusing what torch.optim
    /// refuses (sparse gradients with momentum or weight decay, dense ones for SparseAdam).
    /// A sparse gradient's rows are bounds-checked in the same submission; natively the
    /// call resolves once that check is read, and a bad row writes nothing.
    ///
    /// # Errors
    /// The refusals above, a gradient of another table's shape, or a sparse row outside
    /// the table ([`Error::IndexOutOfRange`] naming `grad.indices`).
    pub async fn step(&mut self, ctx: &Context, table: &GpuTensor, grad: &Gradient) -> Result<()> {
        match self.one_row(table, grad)? {
            Some((table, grad)) => self.step_rows(ctx, &table, &grad).await,
            None => self.step_rows(ctx, table, grad).await,
        }
    }

    /// A 1-D parameter and its (dense) gradient as one row each, checked against the
    /// parameter's shape; `None` for a `[V, D]` table, which the steps take as it is.
    fn one_row(&self, table: &GpuTensor, grad: &Gradient) -> Result<Option<(GpuTensor, Gradient)>> {
        if self.param_shape.len() != 1 {
            return Ok(None);
        }
        let want = &self.param_shape;
        if table.dtype() != DType::F32 || table.shape() != want.as_slice() {
            return Err(Error::arg(
                "table",
                format!(
                    "this optimizer was made for an F32 tensor of shape {want:?}, got {:?} of shape {:?}",
                    table.dtype(),
                    table.shape()
                ),
            ));
        }
        let Gradient::Dense(g) = grad else {
            return Err(Error::arg("grad", format!("a 1-D parameter of shape {want:?} takes a dense gradient, got a sparse one")));
        };
        if g.dtype() != DType::F32 || g.shape() != want.as_slice() {
            return Err(Error::arg(
                "grad",
                format!("expected an F32 gradient of shape {want:?}, got {:?} of shape {:?}", g.dtype(), g.shape()),
            ));
        }
        Ok(Some((rows_of(table)?, Gradient::Dense(rows_of(g)?))))
    }

    async fn step_rows(&mut self, ctx: &Context, table: &GpuTensor, grad: &Gradient) -> Result<()> {
        if let OptimizerKind::Adam8bit { .. } = self.kind {
            return self.step_dense_8bit(ctx, table, grad);
        }
        if let Gradient::Sparse { .. } = grad {
            return ctx.run_checked(|run| self.record_step_rows(run, table, grad)).await;
        }
        ctx.run_now(|run| self.record_step_rows(run, table, grad))
    }

    fn step_dense_8bit(&mut self, ctx: &Context, table: &GpuTensor, grad: &Gradient) -> Result<()> {
        self.check_table(table)?;
        self.check(matches!(grad, Gradient::Sparse { .. }))?;
        let OptimizerKind::Adam8bit { blocksize, .. } = self.kind else { unreachable!("8-bit Adam only") };
        let Gradient::Dense(g) = grad else { unreachable!("checked: 8-bit Adam takes dense gradients") };
        let t = self.steps + 1;
        let hyper = ctx.uniform(&self.hyper(t));
        self.step_8bit(ctx, table, g, &hyper, blocksize)?;
        self.steps = t;
        Ok(())
    }

    /// [`Optimizer::step`] recorded into `run`, without waiting (8-bit Adam, which
    /// re-quantizes its states in passes of its own, is not recorded). The step count
    /// advances when it is recorded.
    ///
    /// # Errors
    /// As [`Optimizer::step`], at once; a bad sparse row from the submission's
    /// [`Submitted::finish`](crate::Submitted::finish).
    pub fn record_step(&mut self, run: &mut Recording<'_>, table: &GpuTensor, grad: &Gradient) -> Result<()> {
        match self.one_row(table, grad)? {
            Some((table, grad)) => self.record_step_rows(run, &table, &grad),
            None => self.record_step_rows(run, table, grad),
        }
    }

    fn record_step_rows(&mut self, run: &mut Recording<'_>, table: &GpuTensor, grad: &Gradient) -> Result<()> {
        let ctx = run.context();
        self.check_table(table)?;
        let (v, d) = (table.shape()[0], table.shape()[1]);
        let sparse = matches!(grad, Gradient::Sparse { .. });
        self.check(sparse)?;
        if let OptimizerKind::Adam8bit { .. } = self.kind {
            return Err(Error::Unsupported("8-bit Adam steps are not recorded: call `step`".into()));
        }
        if let Gradient::Sparse { indices, .. } = grad {
            run.check_indices("grad.indices", indices, v as u64)?;
        }
        let t = self.steps + 1;
        let hyper = ctx.uniform(&self.hyper(t));
        let params = PassParams { dim: d as u32, mode: code(&self.kind), ..Default::default() };
        let states = [self.states.first().map(|(_, s)| s), self.states.get(1).map(|(_, s)| s)];
        run.scoped(|run| {
            run.guarded(|encoder| match grad {
                Gradient::Dense(g) => {
                    if g.shape() != [v, d] || g.dtype() != DType::F32 {
                        return Err(Error::arg(
                            "grad",
                            format!("expected an F32 gradient of shape [{v}, {d}], got {:?} of {:?}", g.dtype(), g.shape()),
                        ));
                    }
                    // The gradient's rows in segments like the table's.
                    let per = table.segments().iter().map(|s| s.rows).max().unwrap_or(1).max(1);
                    let g = g.resegment(ctx, encoder, per)?;
                    let call =
                        Call { extra: std::slice::from_ref(&hyper), ..Call::new(&DENSE_STEP, &[], Grid::Elements(d as u64), params) };
                    UpdatePlan { target: table, states, source: &g }.record_dense(ctx, encoder, &call);
                    Ok(())
                }
                Gradient::Sparse { indices, values, num_embeddings } => {
                    if *num_embeddings != v || values.row_len() != d || values.dtype() != DType::F32 {
                        return Err(Error::arg(
                            "grad",
                            format!(
                                "expected a sparse gradient of a [{v}, {d}] table, got one of {num_embeddings} rows with values {:?}",
                                values.shape()
                            ),
                        ));
                    }
                    // Rows outside the table are never written (no table segment holds
                    // them); natively they are reported before anything runs.
                    let rows = indices.resegment(ctx, encoder, indices.numel().max(1) as u64)?;
                    let extra = [hyper.clone(), rows.segments()[0].buffer.clone()];
                    let row_at_once = ctx.adapter_info().device_type == wgpu::DeviceType::Cpu;
                    let constants = [("ROW_AT_ONCE", row_at_once as u32 as f64)];
                    let (kernel, constants, grid) = match self.kind {
                        _ if self.kind.per_row() => (&ROWWISE_STEP, &constants[..0], Grid::Elements(1)),
                        _ if row_at_once => (&SPARSE_STEP, &constants[..], Grid::Elements(1)),
                        _ => (&SPARSE_STEP, &constants[..], Grid::Elements(d as u64)),
                    };
                    let call = Call { extra: &extra, ..Call::new(kernel, constants, grid, params) };
                    UpdatePlan { target: table, states, source: values }.record_sparse(ctx, encoder, &call);
                    Ok(())
                }
            })?;
            mark_stepped(table);
            Ok(())
        })?;
        self.steps = t;
        Ok(())
    }

    /// One 8-bit Adam step: the states dequantized, updated with the table, re-quantized
    /// (bitsandbytes' maps and rounding, `quantize_blockwise`): in one kernel, or in
    /// three passes with f32 temporaries when blocks straddle the table's segments.
    fn step_8bit(&mut self, ctx: &Context, table: &GpuTensor, g: &GpuTensor, hyper: &wgpu::Buffer, blocksize: usize) -> Result<()> {
        let (v, d) = (table.shape()[0], table.shape()[1]);
        if g.shape() != [v, d] || g.dtype() != DType::F32 {
            return Err(Error::arg(
                "grad",
                format!("expected an F32 gradient of shape [{v}, {d}], got {:?} of {:?}", g.dtype(), g.shape()),
            ));
        }
        let state = |name: &str| self.state(name).cloned().expect("8-bit Adam has its four states");
        let (c1, a1, c2, a2) = (state("state1"), state("absmax1"), state("state2"), state("absmax2"));
        let params = PassParams { dim: d as u32, mode: code(&self.kind), group: blocksize as u32, ..Default::default() };
        let per = table.segments().iter().map(|s| s.rows).max().unwrap_or(1).max(1);
        if let Some(consts) = &self.one_kernel_8bit {
            return ctx.scoped(|| {
                let mut encoder = ctx.encoder();
                let g = g.resegment(ctx, &mut encoder, per)?;
                let extra = [hyper.clone(), a1.segments()[0].buffer.clone(), a2.segments()[0].buffer.clone(), consts.clone()];
                let grid = Grid::Blocks { width: d as u64, block: blocksize as u64 };
                let call = Call { extra: &extra, ..Call::new(&ADAM8BIT_STEP, &[], grid, params) };
                UpdatePlan { target: table, states: [Some(&c1), Some(&c2)], source: &g }.record_dense(ctx, &mut encoder, &call);
                mark_stepped(table);
                ctx.submit(encoder)
            });
        }
        let flat = |t: &GpuTensor| t.reshape(&[v * d]);
        let s1 = dequantize_blockwise(ctx, &flat(&c1)?, &a1, blocksize, CodeMap::Dynamic)?;
        let s2 = dequantize_blockwise(ctx, &flat(&c2)?, &a2, blocksize, CodeMap::DynamicUnsigned)?;
        let (s1, s2) = ctx.scoped(|| {
            let mut encoder = ctx.encoder();
            // The states and the gradient laid out like the table, element for element.
            let s1 = s1.relayout(ctx, &mut encoder, &[v, d], d, per)?;
            let s2 = s2.relayout(ctx, &mut encoder, &[v, d], d, per)?;
            let g = g.resegment(ctx, &mut encoder, per)?;
            let call = Call { extra: std::slice::from_ref(hyper), ..Call::new(&DENSE_STEP, &[], Grid::Elements(d as u64), params) };
            UpdatePlan { target: table, states: [Some(&s1), Some(&s2)], source: &g }.record_dense(ctx, &mut encoder, &call);
            mark_stepped(table);
            ctx.submit(encoder)?;
            Ok((s1, s2))
        })?;
        let q1 = quantize_blockwise(ctx, &flat(&s1)?, blocksize, CodeMap::Dynamic)?;
        let q2 = quantize_blockwise(ctx, &flat(&s2)?, blocksize, CodeMap::DynamicUnsigned)?;
        self.states = vec![
            ("state1", q1.codes.reshape(&[v, d])?),
            ("absmax1", q1.absmax),
            ("state2", q2.codes.reshape(&[v, d])?),
            ("absmax2", q2.absmax),
        ];
        Ok(())
    }

    /// Backward of `layer` and this step in one pass, for optimizers that take sparse
    /// gradients: each touched row's gradient is summed in registers, in the order
    /// [`Embedding::backward`] sums it, and the row updated at once, so no gradient is
    /// ever written (FBGEMM's fused backward + optimizer). Gives what `backward`
    /// (sparse) then [`Optimizer::step`] give, bit for bit. An output gradient over
    /// several bindings, or rows of D not a multiple of 4, take that unfused path (it
    /// awaits the gradient's row count); the fused one resolves at once.
    ///
    /// # Errors
    /// What [`Embedding::backward`] and [`Optimizer::step`] refuse, before any GPU work.
    pub async fn step_embedding(&mut self, ctx: &Context, layer: &Embedding, indices: Indices<'_>, grad_out: &GpuTensor) -> Result<()> {
        let table = layer.weight();
        self.check_table(table)?;
        self.check(true)?;
        if !fusable(grad_out) {
            let options = GradOptions { sparse: true, scale_grad_by_freq: false };
            let grad = layer.backward(ctx, indices, grad_out, options).await?;
            return self.step(ctx, table, &grad).await;
        }
        ctx.run_now(|run| self.record_fused(run, table, |run, step| layer.record_fused_step(run, indices, grad_out, step)))
    }

    /// [`Optimizer::step_embedding`] for an `EmbeddingBag` (sum or mean): returns the
    /// gradient of `per_sample_weights`, if given, as `backward` does.
    ///
    /// # Errors
    /// What [`EmbeddingBag::backward`] and [`Optimizer::step`] refuse, before any GPU work.
    pub async fn step_embedding_bag(
        &mut self,
        ctx: &Context,
        layer: &EmbeddingBag,
        input: Indices<'_>,
        offsets: Option<Indices<'_>>,
        per_sample_weights: PerSampleWeights<'_>,
        grad_out: &GpuTensor,
    ) -> Result<Option<GpuTensor>> {
        let table = layer.weight();
        self.check_table(table)?;
        self.check(true)?;
        if !fusable(grad_out) {
            let options = GradOptions { sparse: true, scale_grad_by_freq: false };
            let grads = layer.backward(ctx, input, offsets, per_sample_weights, grad_out, options).await?;
            self.step(ctx, table, &grads.weight).await?;
            return Ok(grads.per_sample_weights);
        }
        ctx.run_now(|run| {
            self.record_fused(run, table, |run, step| layer.record_fused_step(run, input, offsets, per_sample_weights, grad_out, step))
        })
    }

    /// [`Optimizer::step_embedding`] recorded into `run`, without waiting: the fused
    /// backward and step (the output gradient must be one binding, its rows a multiple
    /// of 4 wide). The step count advances when it is recorded.
    ///
    /// # Errors
    /// The refusals of [`Optimizer::step_embedding`], or [`Error::Unsupported`] for an
    /// output gradient only the unfused path takes (it reads back its row count).
    pub fn record_step_embedding(
        &mut self,
        run: &mut Recording<'_>,
        layer: &Embedding,
        indices: Indices<'_>,
        grad_out: &GpuTensor,
    ) -> Result<()> {
        self.check_fusable(layer.weight(), grad_out)?;
        self.record_fused(run, layer.weight(), |run, step| layer.record_fused_step(run, indices, grad_out, step))
    }

    /// [`Optimizer::record_step_embedding`] for indices already on the GPU (a flat I32
    /// tensor of any shape, e.g. a [`Retriever`](crate::Retriever)'s top-k rows). They
    /// are bounds-checked in the same submission and the step is guarded by the check:
    /// with a bad index the table and the states are left as they were and the
    /// submission's [`Submitted::finish`](crate::Submitted::finish) reports it. No wait.
    ///
    /// # Errors
    /// As [`Optimizer::record_step_embedding`], at once; a bad index when awaited.
    pub fn record_step_embedding_gpu(
        &mut self,
        run: &mut Recording<'_>,
        layer: &Embedding,
        indices: &GpuTensor,
        grad_out: &GpuTensor,
    ) -> Result<()> {
        self.check_fusable(layer.weight(), grad_out)?;
        self.record_fused(run, layer.weight(), |run, step| layer.record_fused_step_gpu(run, indices, grad_out, step))
    }

    /// Whether this optimizer takes sparse gradients (its refusals aside).
    pub(crate) fn takes_sparse(&self) -> bool {
        self.check(true).is_ok()
    }

    /// Whether this optimizer steps `table` fused into a backward whose rows come from
    /// `grad` (sparse-gradient optimizers; one binding, rows of whole vec4 words).
    pub(crate) fn fuses(&self, table: &GpuTensor, grad: &GpuTensor) -> bool {
        self.check_table(table).is_ok() && self.check(true).is_ok() && fusable(grad)
    }

    /// The backward `s` scatters from `grad` with this optimizer's step fused into it,
    /// recorded into `run` (what [`Optimizer::fuses`] accepts).
    pub(crate) fn record_fused_scatter(
        &mut self,
        run: &mut Recording<'_>,
        table: &GpuTensor,
        s: &Scatter<'_>,
        grad: &GpuTensor,
    ) -> Result<()> {
        self.check_fusable(table, grad)?;
        self.record_fused(run, table, |run, step| record_fused_table_step(run, s, grad, step))
    }

    fn check_fusable(&self, table: &GpuTensor, grad_out: &GpuTensor) -> Result<()> {
        self.check_table(table)?;
        self.check(true)?;
        if !fusable(grad_out) {
            return Err(Error::Unsupported(format!(
                "a recorded step fuses the backward: an output gradient of shape {:?} in {} bindings takes `step_embedding`",
                grad_out.shape(),
                grad_out.segments().len()
            )));
        }
        Ok(())
    }

    /// Records `backward` with this optimizer's fused step on `table`, then the refresh
    /// of the table's texture copy, and counts the step.
    fn record_fused<T>(
        &mut self,
        run: &mut Recording<'_>,
        table: &GpuTensor,
        backward: impl FnOnce(&mut Recording<'_>, &FusedStep<'_>) -> Result<T>,
    ) -> Result<T> {
        let ctx = run.context();
        let t = self.steps + 1;
        let hyper = ctx.uniform(&self.hyper(t));
        let kernel = if self.kind.per_row() { &FUSED_ROWWISE_STEP } else { &FUSED_STEP };
        let step = FusedStep {
            table,
            states: [self.states.first().map(|(_, s)| s), self.states.get(1).map(|(_, s)| s)],
            kernel,
            mode: code(&self.kind),
            per_row: self.kind.per_row(),
            extra: std::slice::from_ref(&hyper),
        };
        let out = backward(run, &step)?;
        mark_stepped(table);
        self.steps = t;
        Ok(out)
    }

    /// Refuses a table other than the `[V, D]` F32 one this optimizer was made for.
    fn check_table(&self, table: &GpuTensor) -> Result<()> {
        if table.dtype() != DType::F32 || table.shape() != self.table_shape {
            return Err(Error::arg(
                "table",
                format!(
                    "this optimizer was made for an F32 table of shape {:?}, got {:?} of shape {:?}",
                    self.table_shape,
                    table.dtype(),
                    table.shape()
                ),
            ));
        }
        Ok(())
    }

    fn check(&self, sparse: bool) -> Result<()> {
        let refuse = |what: &str| Err(Error::arg("grad", what.to_string()));
        match self.kind {
            OptimizerKind::Sgd { momentum, weight_decay, .. } if sparse && (momentum != 0.0 || weight_decay != 0.0) => {
                refuse("SGD with momentum or weight_decay does not support sparse gradients")
            }
            OptimizerKind::Adam { .. } if sparse => refuse("Adam does not support sparse gradients, please consider SparseAdam instead"),
            OptimizerKind::Adagrad { weight_decay, .. } if sparse && weight_decay != 0.0 => {
                refuse("weight_decay option is not compatible with sparse gradients")
            }
            OptimizerKind::SparseAdam { .. } if !sparse => {
                refuse("SparseAdam does not support dense gradients, please consider Adam instead")
            }
            OptimizerKind::RowwiseAdagrad { .. } if !sparse => refuse("row-wise Adagrad takes sparse gradients"),
            OptimizerKind::TbeAdam { .. } | OptimizerKind::PartialRowwiseAdam { .. } if !sparse => {
                refuse("FBGEMM's ADAM and PARTIAL_ROWWISE_ADAM take sparse gradients")
            }
            OptimizerKind::Adam8bit { .. } if sparse => refuse("8-bit Adam takes dense gradients"),
            OptimizerKind::Adam32bit { .. } if sparse => refuse("bitsandbytes' Adam takes dense gradients"),
            _ => Ok(()),
        }
    }

    /// The shader's `hyper[]` for step `t` (bias corrections in f64, as Python computes them).
    fn hyper(&self, t: u64) -> [f32; 12] {
        let mut h = [0f64; 12];
        let corrections = |b1: f64, b2: f64| (1.0 - b1.powi(t as i32), 1.0 - b2.powi(t as i32));
        h[5] = if t == 1 { 1.0 } else { 0.0 };
        match self.kind {
            OptimizerKind::Sgd { lr, momentum, dampening, nesterov, weight_decay } => {
                (h[0], h[1], h[2], h[3], h[4]) = (lr, weight_decay, momentum, dampening, nesterov as u32 as f64);
            }
            OptimizerKind::Adam { lr, betas, eps, weight_decay, decoupled } => {
                let (c1, c2) = corrections(betas.0, betas.1);
                (h[0], h[1], h[6], h[7], h[8]) = (lr, weight_decay, betas.0, betas.1, eps);
                (h[9], h[10], h[11]) = (lr / c1, c2.sqrt(), decoupled as u32 as f64);
            }
            OptimizerKind::Adagrad { lr, lr_decay, eps, weight_decay, .. } => {
                (h[0], h[1], h[8]) = (lr, weight_decay, eps);
                h[9] = lr / (1.0 + (t - 1) as f64 * lr_decay);
            }
            OptimizerKind::SparseAdam { lr, betas, eps } => {
                let (c1, c2) = corrections(betas.0, betas.1);
                (h[0], h[6], h[7], h[8]) = (lr, betas.0, betas.1, eps);
                h[9] = lr * c2.sqrt() / c1;
            }
            OptimizerKind::RowwiseAdagrad { lr, eps, weight_decay } => {
                (h[0], h[1], h[8]) = (lr, weight_decay, eps);
            }
            OptimizerKind::TbeAdam { lr, betas, eps, weight_decay }
            | OptimizerKind::PartialRowwiseAdam { lr, betas, eps, weight_decay } => {
                // FBGEMM divides by both bias corrections (H_STEP_SIZE and H_BC2 here).
                let (c1, c2) = corrections(betas.0, betas.1);
                (h[0], h[1], h[6], h[7], h[8], h[9], h[10]) = (lr, weight_decay, betas.0, betas.1, eps, c1, c2);
            }
            OptimizerKind::Adam8bit { lr, betas, eps, weight_decay, .. } => {
                let (c1, c2) = corrections(betas.0, betas.1);
                (h[0], h[1], h[6], h[7], h[8]) = (lr, weight_decay, betas.0, betas.1, eps);
                (h[9], h[10]) = (lr / c1, c2.sqrt());
            }
            OptimizerKind::Adam32bit { lr, betas, eps, weight_decay } => {
                // bitsandbytes' scalars as Python computes them (f64, then f32): the
                // averages' weights, eps·√(1−β₂ᵗ), the step size and the decay factor.
                let (c1, c2) = corrections(betas.0, betas.1);
                (h[0], h[1], h[6], h[7]) = (lr, weight_decay, betas.0, betas.1);
                (h[2], h[3], h[4]) = (1.0 - betas.0, 1.0 - betas.1, if weight_decay > 0.0 { 1.0 - lr * weight_decay } else { 1.0 });
                (h[8], h[9], h[10]) = (eps * c2.sqrt(), lr * c2.sqrt() / c1, c2.sqrt());
            }
        }
        h.map(|x| x as f32)
    }
}
