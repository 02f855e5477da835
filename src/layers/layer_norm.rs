//! `torch.nn.LayerNorm` over the last dimension on the GPU: any leading shape,
//! optional affine, any `eps`, mean and biased variance of the row shifted by its first
//! value, merged stably (Welford/Chan) in f32, each row read once (see
//! `shaders/layer_norm.wgsl`).
//! Also the kernel family shared by StableEmbedding and the BERT embedding block.

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::kernel::binding::{INPUT, OUT, PARAMS, TABLE, TEXTURE};
use crate::gpu::kernel::{common, Kernel, Role, ShaderFamily, Slot};
use crate::gpu::plan::{Call, Grid, PassParams, RowPlan};
use crate::gpu::recording::Recording;
use crate::gpu::tensor::{DType, GpuTensor};

pub(crate) static FAMILY: ShaderFamily =
    ShaderFamily { name: "layer_norm", parts: &[common::GRID, common::PASS, common::TABLE, include_str!("../../shaders/layer_norm.wgsl")] };

/// Every LayerNorm kernel's bindings: the plan's table, input and output, and gamma
/// then beta in one buffer, so that no entry point binds more than 4 storage buffers
/// (the downlevel / GLES 3.1 minimum).
const BINDINGS: &[(u32, Slot, Role)] = &[PARAMS, TABLE, INPUT, OUT, (5, Slot::Read, Role::Extra(0))];

/// The per-invocation forms over vec4 words (`*_words`): gamma and beta from a uniform
/// block (binding 12), lookups' rows from the table's texture copy where there is one.
const WORDS_BINDINGS: &[(u32, Slot, Role)] = &[PARAMS, TABLE, INPUT, OUT, TEXTURE, (12, Slot::Uniform, Role::Extra(1))];

const LAYER_NORM: NormKernel = NormKernel::new("layer_norm", "layer_norm_alone", Some("layer_norm_words"));
pub(crate) const LOOKUP_SUM_LAYER_NORM: NormKernel =
    NormKernel::new("lookup_sum_layer_norm", "lookup_sum_layer_norm_alone", Some("lookup_sum_layer_norm_words"));
pub(crate) const ACCUMULATE: Kernel = Kernel::new(&FAMILY, "accumulate", BINDINGS);
const NORMALIZE_IN_PLACE: NormKernel = NormKernel::new("normalize_in_place", "normalize_in_place_alone", None);

/// Lookups a `*_words` row sums at most: their row indices are one vec4 word.
pub(crate) const WORDS_MAX_TABLES: usize = 4;

/// gamma and beta as `ln_affine_words` holds them: `array<vec4<f32>, 4096>`.
const WORDS_AFFINE_BYTES: usize = 4096 * 16;

/// Widest rows an invocation normalises alone on CPU adapters.
const ALONE_MAX_DIM: usize = 1024;

/// A LayerNorm kernel in its two forms: a workgroup per row (GPUs, and long rows), or an
/// invocation per row. On CPU adapters (lavapipe, SwiftShader) a workgroup barrier switches
/// every invocation out and in, which costs more than reading a short row twice; a GPU
/// rather spreads a row over lanes that load it together.
pub(crate) struct NormKernel {
    per_workgroup: Kernel,
    per_invocation: Kernel,
    /// The per-invocation form over vec4 words, where the kernel has one.
    per_invocation_words: Option<Kernel>,
}

impl NormKernel {
    const fn new(per_workgroup: &'static str, per_invocation: &'static str, words: Option<&'static str>) -> Self {
        NormKernel {
            per_workgroup: Kernel::new(&FAMILY, per_workgroup, BINDINGS),
            per_invocation: Kernel::new(&FAMILY, per_invocation, BINDINGS),
            per_invocation_words: match words {
                Some(name) => Some(Kernel::new(&FAMILY, name, WORDS_BINDINGS)),
                None => None,
            },
        }
    }

    /// The form for rows of `dim` on this context's adapter, and its grid; `words` when
    /// the caller's data allow the words form (see [`Affine::words_form`]).
    fn pick(&self, ctx: &Context, dim: usize, words: bool) -> (&Kernel, Grid) {
        if dim <= ALONE_MAX_DIM && ctx.adapter_info().device_type == wgpu::DeviceType::Cpu {
            match (&self.per_invocation_words, words) {
                (Some(kernel), true) => (kernel, Grid::Elements(1)),
                _ => (&self.per_invocation, Grid::Elements(1)),
            }
        } else {
            (&self.per_workgroup, Grid::RowsPerGroup(1))
        }
    }
}

/// The pipeline constants of a LayerNorm kernel over rows of `dim`.
pub(crate) fn norm_constants(dim: usize) -> [(&'static str, f64); 2] {
    // The words form's row length is fixed per pipeline so that its loops unroll.
    let words = if dim.is_multiple_of(4) && dim <= ALONE_MAX_DIM { dim / 4 } else { 0 };
    [("ROW_THREADS", row_threads(dim) as f64), ("ROW_WORDS", words as f64)]
}

/// Invocations per row: enough to cover short rows without idling most of them.
fn row_threads(dim: usize) -> u32 {
    (dim.div_ceil(4).next_power_of_two() as u32).clamp(32, 256)
}

pub(crate) fn check_eps(eps: f32) -> Result<()> {
    if !eps.is_finite() || eps < 0.0 {
        return Err(Error::arg("eps", format!("expected a finite eps >= 0, got {eps}")));
    }
    Ok(())
}

/// LayerNorm's affine parameters on the GPU (either may be absent): one buffer holding
/// gamma then beta, so that the kernels bind few storage buffers.
#[derive(Debug, Clone)]
pub(crate) struct Affine {
    params: GpuTensor,
    /// What the kernels bind: the buffer of `params`, then (CPU adapters, D % 4 == 0)
    /// both again as the uniform block of the words forms.
    extra: Vec<wgpu::Buffer>,
    has_gamma: bool,
    has_beta: bool,
}

impl Affine {
    /// `[2 * dim]` F32: gamma, then beta (zeros where absent).
    pub(crate) fn values(&self) -> &GpuTensor {
        &self.params
    }

    pub(crate) fn new(ctx: &Context, gamma: Option<&[f32]>, beta: Option<&[f32]>, dim: usize) -> Result<Self> {
        for (name, v) in [("gamma", gamma), ("beta", beta)] {
            if let Some(v) = v {
                if v.len() != dim {
                    return Err(Error::arg(name, format!("expected {dim} values (the normalized dimension), got {}", v.len())));
                }
            }
        }
        // The parameters are bound whole, against the device's own binding limit: a
        // lower `max_binding_size` splits tables, not a LayerNorm's two vectors.
        let device_binding = ctx.limits().max_storage_buffer_binding_size;
        if (dim as u64).saturating_mul(8) > device_binding {
            return Err(Error::arg(
                "normalized_shape",
                format!("gamma and beta of {dim} f32 values each exceed the device's storage binding size of {device_binding} bytes"),
            ));
        }
        let mut both = vec![0.0f32; 2 * dim];
        if let Some(g) = gamma {
            both[..dim].copy_from_slice(g);
        }
        if let Some(b) = beta {
            both[dim..].copy_from_slice(b);
        }
        // Uploaded as one row so it stays in one buffer.
        let params = GpuTensor::from_bytes_with(ctx, bytemuck::cast_slice(&both), &[2 * dim], DType::F32, 2 * dim, 1)?;
        let mut extra = vec![params.segments()[0].buffer.clone()];
        if ctx.adapter_info().device_type == wgpu::DeviceType::Cpu && dim.is_multiple_of(4) && dim <= ALONE_MAX_DIM {
            let mut block = vec![0u8; WORDS_AFFINE_BYTES];
            block[..8 * dim].copy_from_slice(bytemuck::cast_slice(&both));
            extra.push(ctx.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("layer-norm-affine"),
                contents: &block,
                usage: wgpu::BufferUsages::UNIFORM,
            }));
        }
        Ok(Affine { params, extra, has_gamma: gamma.is_some(), has_beta: beta.is_some() })
    }

    /// The buffer of gamma then beta.
    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.params.segments()[0].buffer
    }

    /// Whether gamma and beta are given.
    pub(crate) fn has(&self) -> (bool, bool) {
        (self.has_gamma, self.has_beta)
    }

    pub(crate) fn flags(&self) -> u32 {
        self.has_gamma as u32 | (self.has_beta as u32) << 1
    }

    /// The pass fields of a LayerNorm over rows of `dim` with this affine part.
    pub(crate) fn params(&self, dim: usize, eps: f32) -> PassParams {
        PassParams { dim: dim as u32, arg0: eps.to_bits(), arg1: self.flags(), ..Default::default() }
    }

    /// Whether the kernels' per-invocation words form applies to these rows (the caller
    /// adds its own conditions: f32 tables, few lookups).
    pub(crate) fn words_form(&self) -> bool {
        self.extra.len() == 2
    }

    /// A LayerNorm kernel's call on rows of `params.dim`, in the form that suits the
    /// adapter (`words`: the caller's data allow the words form, see [`Self::words_form`]).
    pub(crate) fn norm_call<'a>(
        &'a self,
        ctx: &Context,
        kernel: &'a NormKernel,
        constants: &'a [(&'static str, f64)],
        params: PassParams,
        words: bool,
    ) -> Call<'a> {
        let (kernel, grid) = kernel.pick(ctx, params.dim as usize, words && self.words_form());
        Call { grid, ..self.call(kernel, constants, params) }
    }

    /// A call of `kernel` that binds gamma and beta: a workgroup per row unless changed.
    pub(crate) fn call<'a>(&'a self, kernel: &'a Kernel, constants: &'a [(&'static str, f64)], params: PassParams) -> Call<'a> {
        Call { extra: &self.extra, ..Call::new(kernel, constants, Grid::RowsPerGroup(1), params) }
    }
}

/// LayerNorm over the last dimension, as `torch.nn.LayerNorm(normalized_shape=[dim])`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    dim: usize,
    eps: f32,
    affine: Affine,
}

impl LayerNorm {
    /// A fresh layer as `torch.nn.LayerNorm(dim, eps, elementwise_affine)` initialises
    /// it: with `elementwise_affine`, gamma = 1 and beta = 0.
    ///
    /// ```
    /// use wgpu_embed::{Block, Context, LayerNorm};
    /// let ctx = Context::new().block()?;
    /// let ln = LayerNorm::new(&ctx, 4, 1e-5, true)?;
    /// let out = ln.forward(&ctx, &[1.0, 2.0, 3.0, 4.0], &[1, 4])?.read_f32(&ctx).block()?;
    /// assert!((out[0] + 1.3416).abs() < 1e-3 && (out[3] - 1.3416).abs() < 1e-3);
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `dim` 0 or an `eps` that is not positive and finite.
    pub fn new(ctx: &Context, dim: usize, eps: f32, elementwise_affine: bool) -> Result<Self> {
        if elementwise_affine {
            let ones = vec![1.0f32; dim];
            let zeros = vec![0.0f32; dim];
            Self::from_params(ctx, dim, eps, Some(&ones), Some(&zeros))
        } else {
            Self::from_params(ctx, dim, eps, None, None)
        }
    }

    /// A layer with given parameters, as `F.layer_norm(x, [dim], gamma, beta, eps)`;
    /// either may be `None`.
    pub fn from_params(ctx: &Context, dim: usize, eps: f32, gamma: Option<&[f32]>, beta: Option<&[f32]>) -> Result<Self> {
        if dim == 0 {
            return Err(Error::arg("normalized_shape", "expected a normalized dimension of at least 1, got 0"));
        }
        check_eps(eps)?;
        Ok(LayerNorm { dim, eps, affine: Affine::new(ctx, gamma, beta, dim)? })
    }

    pub(crate) fn affine(&self) -> &Affine {
        &self.affine
    }

    /// The normalized dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The epsilon added to the variance.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// Whether the layer scales by gamma and shifts by beta.
    pub fn has_affine(&self) -> (bool, bool) {
        (self.affine.has_gamma, self.affine.has_beta)
    }

    /// Normalises host data of shape `shape` (last dimension = `dim`).
    pub fn forward(&self, ctx: &Context, x: &[f32], shape: &[usize]) -> Result<GpuTensor> {
        self.check_shape(shape)?;
        let n: usize = shape.iter().product();
        if n != x.len() {
            return Err(Error::arg("input", format!("shape {shape:?} holds {n} values but {} were given", x.len())));
        }
        let x = GpuTensor::from_f32(ctx, x, shape)?;
        self.forward_gpu(ctx, &x)
    }

    /// Normalises an f32 tensor already on the GPU (rows = last dimension).
    pub fn forward_gpu(&self, ctx: &Context, x: &GpuTensor) -> Result<GpuTensor> {
        self.check_shape(x.shape())?;
        if x.dtype() != DType::F32 || x.row_len() != self.dim {
            return Err(Error::arg(
                "input",
                format!("expected an F32 tensor with rows of {}, got {:?} with rows of {}", self.dim, x.dtype(), x.row_len()),
            ));
        }
        // Input and output are segmented alike, so each dispatch pairs one of each.
        let per = GpuTensor::rows_per_segment(ctx, self.dim, DType::F32)?;
        // Every row is written whole.
        let out = GpuTensor::for_overwrite_with(ctx, x.shape(), DType::F32, self.dim, per)?;
        let constants = norm_constants(self.dim);
        let call = self.affine.norm_call(ctx, &LAYER_NORM, &constants, self.affine.params(self.dim, self.eps), true);
        ctx.scoped(|| {
            let mut encoder = ctx.encoder();
            let x = x.resegment(ctx, &mut encoder, per)?;
            RowPlan { input: Some(&x), aux: None, out: Some(&out), table: None, status: None }.record(ctx, &mut encoder, &call, None);
            ctx.submit(encoder)
        })?;
        Ok(out)
    }

    fn check_shape(&self, shape: &[usize]) -> Result<()> {
        if shape.last() != Some(&self.dim) {
            return Err(Error::arg(
                "input",
                format!(
                    "Given normalized_shape=[{}], expected input with shape [*, {}], but got input of size {shape:?}",
                    self.dim, self.dim
                ),
            ));
        }
        Ok(())
    }
}

/// Records `out = LayerNorm(out)` over every segment of `out` (rows of `dim`).
pub(crate) fn normalize_in_place(ctx: &Context, encoder: &mut Recording<'_>, out: &GpuTensor, dim: usize, eps: f32, affine: &Affine) {
    let constants = norm_constants(dim);
    let call = affine.norm_call(ctx, &NORMALIZE_IN_PLACE, &constants, affine.params(dim, eps), false);
    RowPlan { input: None, aux: None, out: Some(out), table: None, status: None }.record(ctx, encoder, &call, None);
}
