//! Dense tables (F32, F16, BF16 `[num_embeddings, embedding_dim]`) as the layers take
//! them: shape checks, the shaders' format override, how many invocations share a row,
//! and max-norm settings.

use crate::error::{Error, Result};
use crate::gpu::context::{Context, WORKGROUP_SIZE};
use crate::gpu::table::check_table;
use crate::gpu::tensor::{DType, GpuTensor};
use crate::layers::indices::normalize_padding_idx;
use crate::layers::init::{random_table, Draw};

/// The keyword arguments of `torch.nn.Embedding(num_embeddings, embedding_dim, ...)`
/// that [`Embedding::new`](crate::Embedding::new) and the other fresh-table constructors
/// take, and the seed of the table's draw. Built from `EmbeddingOptions::default()` with
/// its setters:
///
/// ```
/// use wgpu_embed::EmbeddingOptions;
/// let options = EmbeddingOptions::default().padding_idx(0).max_norm(1.0).seed(7);
/// assert_eq!(options.padding_idx, Some(0));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EmbeddingOptions {
    /// The row left out of gradients and bags, zeroed at initialisation; negative
    /// values count from the end. Default `None`.
    pub padding_idx: Option<i64>,
    /// Rows looked up are renormalised in place to this norm at most. Default `None`.
    pub max_norm: Option<f32>,
    /// The p of the p-norm `max_norm` uses. Default 2.
    pub norm_type: f32,
    /// Seed of the initial draw (a counter-based generator: the same table on every
    /// device; not `torch.manual_seed`'s). Default 0.
    pub seed: u64,
}

impl Default for EmbeddingOptions {
    fn default() -> Self {
        EmbeddingOptions { padding_idx: None, max_norm: None, norm_type: 2.0, seed: 0 }
    }
}

impl EmbeddingOptions {
    /// Sets `padding_idx`.
    pub fn padding_idx(mut self, padding_idx: i64) -> Self {
        self.padding_idx = Some(padding_idx);
        self
    }

    /// Sets `max_norm`.
    pub fn max_norm(mut self, max_norm: f32) -> Self {
        self.max_norm = Some(max_norm);
        self
    }

    /// Sets `norm_type`.
    pub fn norm_type(mut self, norm_type: f32) -> Self {
        self.norm_type = norm_type;
        self
    }

    /// Sets the seed of the initial draw.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// A dense table on the GPU and the settings `Embedding` and `EmbeddingBag` share.
#[derive(Debug, Clone)]
pub(crate) struct DenseTable {
    pub weight: GpuTensor,
    pub num_embeddings: usize,
    pub embedding_dim: usize,
    pub padding_idx: Option<u32>,
    pub max_norm: Option<MaxNorm>,
}

impl DenseTable {
    /// A row-major `[num_embeddings, embedding_dim]` f32 table, uploaded.
    pub fn from_host(ctx: &Context, weight: &[f32], num_embeddings: usize, embedding_dim: usize) -> Result<Self> {
        check_table(weight.len(), num_embeddings, embedding_dim)?;
        Self::new(GpuTensor::from_f32(ctx, weight, &[num_embeddings, embedding_dim])?)
    }

    /// A fresh `[num_embeddings, embedding_dim]` table drawn on the GPU from `draw`, with
    /// `options`' padding row zeroed and its max-norm settings.
    pub fn fresh(ctx: &Context, num_embeddings: usize, embedding_dim: usize, draw: Draw, options: &EmbeddingOptions) -> Result<Self> {
        let padding = normalize_padding_idx(options.padding_idx, num_embeddings)?;
        let mut table = Self::new(random_table(ctx, num_embeddings, embedding_dim, draw, padding, options.seed)?)?;
        table.padding_idx = padding;
        table.set_max_norm(options.max_norm, options.norm_type)?;
        Ok(table)
    }

    /// A `[V, D]` table already on the GPU (F32, F16 or BF16).
    pub fn new(weight: GpuTensor) -> Result<Self> {
        let (num_embeddings, embedding_dim) = table_shape(&weight)?;
        Ok(DenseTable { weight, num_embeddings, embedding_dim, padding_idx: None, max_norm: None })
    }

    pub fn set_padding_idx(&mut self, padding_idx: Option<i64>) -> Result<()> {
        self.padding_idx = normalize_padding_idx(padding_idx, self.num_embeddings)?;
        Ok(())
    }

    pub fn set_max_norm(&mut self, max_norm: Option<f32>, norm_type: f32) -> Result<()> {
        self.max_norm = MaxNorm::new(max_norm, norm_type, &self.weight)?;
        Ok(())
    }
}

/// The builder and accessor methods of a layer over a [`DenseTable`] in its field
/// `table`; `$padding_doc` says what `padding_idx` does in that layer.
macro_rules! dense_table_methods {
    ($padding_doc:literal) => {
        /// Sets `padding_idx` (negative counts from the end, as in PyTorch).
        #[doc = $padding_doc]
        pub fn with_padding_idx(mut self, padding_idx: Option<i64>) -> Result<Self> {
            self.table.set_padding_idx(padding_idx)?;
            Ok(self)
        }

        /// Sets `max_norm` and `norm_type`: each forward first renormalises, in place on
        /// the GPU, every table row it references whose norm exceeds `max_norm`.
        pub fn with_max_norm(mut self, max_norm: Option<f32>, norm_type: f32) -> Result<Self> {
            self.table.set_max_norm(max_norm, norm_type)?;
            Ok(self)
        }

        /// The table (after any renormalisation so far).
        pub fn weight(&self) -> &GpuTensor {
            &self.table.weight
        }

        /// Rows in the table.
        pub fn num_embeddings(&self) -> usize {
            self.table.num_embeddings
        }

        /// Columns of the table.
        pub fn embedding_dim(&self) -> usize {
            self.table.embedding_dim
        }

        /// The normalised padding index.
        pub fn padding_idx(&self) -> Option<u32> {
            self.table.padding_idx
        }
    };
}
pub(crate) use dense_table_methods;

/// Max-norm settings shared by `Embedding` and `EmbeddingBag`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaxNorm {
    /// Rows whose norm exceeds this are scaled down to it.
    pub max_norm: f32,
    /// p of the p-norm (2 by default; `f32::INFINITY` for the max norm).
    pub norm_type: f32,
}

impl MaxNorm {
    /// The setting of `with_max_norm(max_norm, norm_type)` for `table`, checked.
    pub(crate) fn new(max_norm: Option<f32>, norm_type: f32, table: &GpuTensor) -> Result<Option<Self>> {
        let Some(max_norm) = max_norm else {
            return Ok(None);
        };
        let mn = MaxNorm { max_norm, norm_type };
        mn.validate()?;
        check_renormalizable(table)?;
        Ok(Some(mn))
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !self.max_norm.is_finite() || self.max_norm < 0.0 {
            return Err(Error::arg("max_norm", format!("expected a finite value >= 0, got {}", self.max_norm)));
        }
        if self.norm_type.is_nan() || self.norm_type < 0.0 {
            return Err(Error::arg("norm_type", format!("expected p >= 0 or inf, got {}", self.norm_type)));
        }
        Ok(())
    }
}

pub(crate) fn table_shape(t: &GpuTensor) -> Result<(usize, usize)> {
    match t.shape() {
        [v, d] if matches!(t.dtype(), DType::F32 | DType::F16 | DType::BF16) && *d > 0 && t.row_len() == *d => Ok((*v, *d)),
        s => Err(Error::arg(
            "weight",
            format!("expected a 2-D F32, F16 or BF16 table [num_embeddings, embedding_dim], got {s:?} of {:?}", t.dtype()),
        )),
    }
}

/// Invocations per row (or bag) of the vectorised kernels, when the table's rows are whole
/// vec4 words; `None`: use the scalar kernels. On GPUs: enough lanes to cover a row's
/// words in one sweep (coalesced loads), a power of two so that a workgroup holds whole
/// rows, at most a workgroup. On CPU adapters (lavapipe, SwiftShader), where each
/// invocation is a SIMD lane and loads are per lane anyway, as few invocations per row
/// as possible move the most bytes per instruction (measured with `examples/bench.rs`):
/// one per row for lookups, and for bags (`words_per_sweep` = Some(CHUNK)) enough that
/// each invocation sweeps its bag's indices once; lavapipe stops any loop after 65 535
/// iterations per invocation, so a bag must not be walked several times.
pub(crate) fn vec4_lanes(ctx: &Context, dtype: DType, dim: usize, words_per_sweep: Option<u32>) -> Option<u32> {
    let words = match dtype {
        DType::F32 if dim.is_multiple_of(4) => dim / 4,
        DType::F16 | DType::BF16 if dim.is_multiple_of(8) => dim / 8,
        _ => return None,
    } as u32;
    if ctx.adapter_info().device_type == wgpu::DeviceType::Cpu {
        return Some(words_per_sweep.map_or(1, |c| words.div_ceil(c).next_power_of_two().min(WORKGROUP_SIZE)));
    }
    Some(words.next_power_of_two().min(WORKGROUP_SIZE))
}

/// The `TABLE_FORMAT` override (shaders/common/table.wgsl) of a table's element type.
pub(crate) fn table_format(dtype: DType) -> Result<f64> {
    match dtype {
        DType::F32 => Ok(0.0),
        DType::F16 => Ok(1.0),
        DType::BF16 => Ok(2.0),
        other => Err(Error::arg("weight", format!("expected an F32, F16 or BF16 table, got {other:?}"))),
    }
}

/// `max_norm` rewrites table rows in place, which the packed half formats do not support.
pub(crate) fn check_renormalizable(table: &GpuTensor) -> Result<()> {
    if table.dtype() != DType::F32 {
        return Err(Error::arg(
            "max_norm",
            format!("max_norm renormalises the table in place and needs an F32 table, got a {:?} table", table.dtype()),
        ));
    }
    Ok(())
}
