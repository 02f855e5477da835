//! `Embedding8bit` / `Embedding4bit`-style lookups and `F.embedding_bag` over a
//! quantized table (`quant/table.rs`), dequantizing each element in the kernel.
//! Shader family: `quantized_embedding.wgsl`.

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::context::WORKGROUP_SIZE;
use crate::gpu::kernel::binding::{COUNTS, INPUT, OFFSETS, OUT, PARAMS, TABLE, TEXTURE};
use crate::gpu::kernel::{common, Kernel, Role, ShaderFamily, Slot};
use crate::gpu::plan::{BagPlan, Call, Grid, PassParams, RowPlan};
use crate::gpu::recording::Recording;
use crate::gpu::table::TableAccess;
use crate::gpu::tensor::{DType, GpuTensor};
use crate::layers::embedding::out_shape;
use crate::layers::embedding_bag::{bag_forward, plan_bags, BagMode, BagSpec, HostBags, PerSampleWeights};
use crate::layers::indices::{normalize_padding_idx, upload_rows, Indices};
use crate::layers::init::{random_table, Draw};
use crate::layers::table::EmbeddingOptions;
use crate::quant::table::{QuantizedTable, Scheme};

pub(crate) static FAMILY: ShaderFamily = ShaderFamily {
    name: "quantized_embedding",
    parts: &[
        common::GRID,
        common::PASS,
        common::TABLE,
        common::BAG,
        common::BAG_SCALAR,
        common::CODES,
        common::QUANTIZED_TABLE,
        include_str!("../../shaders/quantized_embedding.wgsl"),
    ],
};

/// The constants buffer (code maps) and the scales planes; plane 0, the codes, is TABLE.
const CONSTS: (u32, Slot, Role) = (9, Slot::Read, Role::Extra(0));
const SCALES: (u32, Slot, Role) = (10, Slot::Read, Role::Table(1));
const SCALES2: (u32, Slot, Role) = (11, Slot::Read, Role::Table(2));

const LOOKUP: Kernel = Kernel::new(&FAMILY, "lookup", &[PARAMS, TABLE, INPUT, OUT, CONSTS, SCALES, SCALES2]);
const BAG: Kernel = Kernel::new(&FAMILY, "bag", &[PARAMS, TABLE, INPUT, OUT, OFFSETS, COUNTS, CONSTS, SCALES, SCALES2]);
const BAG_WORDS: Kernel = Kernel::new(
    &FAMILY,
    "bag_words",
    &[
        PARAMS,
        TABLE,
        INPUT,
        OUT,
        TEXTURE,
        OFFSETS,
        COUNTS,
        (13, Slot::Uniform, Role::Extra(0)),
        (10, Slot::Read, Role::Extra(1)),
        (11, Slot::Read, Role::Extra(2)),
    ],
);

/// The codes plane seen as a dense table of byte rows, for `bag_words`: when rows are
/// whole 16-byte words, the codes and each scales plane fit one binding and blocks hold
/// whole words (then each word has one scale).
fn code_rows(t: &QuantizedTable) -> Option<GpuTensor> {
    let d = t.embedding_dim();
    let four_bit = t.scheme().four_bit().is_some();
    let codes_per_word = if four_bit { 32 } else { 16 };
    let single = |p: Option<&GpuTensor>| p.is_none_or(|p| p.segments().len() == 1);
    let fits = d.is_multiple_of(codes_per_word)
        && (t.group() as usize).is_multiple_of(codes_per_word)
        && single(Some(t.scales()))
        && single(t.scales2());
    // A row's code bytes: D, or D / 2 for 4-bit.
    fits.then(|| t.codes().rows_view(if four_bit { d / 2 } else { d })).flatten()
}

/// The pass fields a quantized table's kernels read, with `stride` words per index entry.
fn table_params(t: &QuantizedTable, stride: u32) -> PassParams {
    PassParams {
        dim: t.embedding_dim() as u32,
        num_embeddings: t.num_embeddings() as u32,
        group: t.group(),
        arg0: stride,
        ..Default::default()
    }
}

/// An `Embedding8bit` / `Embedding4bit`-style lookup over a quantized table.
#[derive(Debug, Clone)]
pub struct QuantizedEmbedding {
    table: QuantizedTable,
}

impl QuantizedEmbedding {
    /// Looks up in a table quantized before.
    pub fn from_table(table: QuantizedTable) -> Self {
        Self { table }
    }

    /// A fresh layer as `bnb.nn.Embedding8bit(num_embeddings, embedding_dim)` (scheme
    /// `int8_rowwise`) or `Embedding4bit(..., quant_type="nf4" | "fp4")` makes it: an
    /// N(0, 1) table drawn on the GPU (seeded by `options.seed`), then quantized there
    /// with the scheme's default block size.
    ///
    /// ```
    /// use wgpu_embed::{Block, Context, EmbeddingOptions, Indices, QuantizedEmbedding, Scheme};
    /// let ctx = Context::new().block()?;
    /// let emb = QuantizedEmbedding::new(&ctx, 1000, 64, Scheme::Nf4, EmbeddingOptions::default())?;
    /// let out = emb.forward(&ctx, Indices::i64(&[3, 999], &[2]))?;
    /// assert_eq!(out.shape(), &[2, 64]);
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Unsupported`] for `padding_idx` or `max_norm`
    /// (bitsandbytes' quantized embeddings take neither); as
    /// [`QuantizedTable::from_tensor`] for the table's shape.
    pub fn new(ctx: &Context, num_embeddings: usize, embedding_dim: usize, scheme: Scheme, options: EmbeddingOptions) -> Result<Self> {
        Ok(Self::from_table(fresh_quantized(ctx, num_embeddings, embedding_dim, scheme, &options)?))
    }

    /// The quantized table.
    pub fn table(&self) -> &QuantizedTable {
        &self.table
    }

    /// Bytes of the table on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        self.table.gpu_bytes()
    }

    /// Looks up host indices of any shape; the result (f32) has shape `[*indices, D]`.
    ///
    /// # Errors
    /// An index outside the table, before any GPU work.
    pub fn forward(&self, ctx: &Context, indices: Indices<'_>) -> Result<GpuTensor> {
        let rows = indices.to_rows("indices", self.table.num_embeddings() as u64)?;
        let idx = upload_rows(ctx, &rows, self.batch_rows(ctx)?)?;
        ctx.run_now(|run| self.record_rows(run, &idx, indices.shape))
    }

    /// Looks up indices already on the GPU (a flat-rowed I32 tensor of any shape). A check
    /// kernel bounds-checks them in the same submission: the first bad one is reported
    /// and its rows read as zeros. Resolves once the check is read
    /// ([`QuantizedEmbedding::record_gpu`] does not wait).
    ///
    /// # Errors
    /// [`Error::IndexOutOfRange`] with the first bad
    /// position and its value.
    pub async fn forward_gpu(&self, ctx: &Context, indices: &GpuTensor) -> Result<GpuTensor> {
        ctx.run_checked(|run| self.record_gpu(run, indices)).await
    }

    /// [`QuantizedEmbedding::forward_gpu`] recorded into `run`, without waiting.
    ///
    /// # Errors
    /// A tensor that is not a flat I32 one, at once; a bad index from the submission's
    /// [`Submitted::finish`](crate::Submitted::finish).
    pub fn record_gpu(&self, run: &mut Recording<'_>, indices: &GpuTensor) -> Result<GpuTensor> {
        let indices = &indices.flat_rows();
        run.check_indices("indices", indices, self.table.num_embeddings() as u64)?;
        self.record_rows(run, indices, indices.shape())
    }

    fn batch_rows(&self, ctx: &Context) -> Result<u64> {
        GpuTensor::rows_per_segment(ctx, self.table.embedding_dim(), DType::F32)
    }

    /// Looks up checked indices.
    fn record_rows(&self, run: &mut Recording<'_>, indices: &GpuTensor, index_shape: &[usize]) -> Result<GpuTensor> {
        let ctx = run.context();
        let t = &self.table;
        let d = t.embedding_dim();
        let per = self.batch_rows(ctx)?;
        let out = GpuTensor::zeros_with(ctx, &out_shape(index_shape, d), DType::F32, d, per)?;
        let access = t.access();
        let scheme = [("SCHEME", t.scheme().kernel_scheme() as f64)];
        let call =
            Call { extra: std::slice::from_ref(&t.consts), ..Call::new(&LOOKUP, &scheme, Grid::Elements(d as u64), table_params(t, 1)) };
        run.scoped(|encoder| {
            // Index segments pair with output segments.
            let idx = indices.resegment(ctx, encoder, per)?;
            RowPlan { input: Some(&idx), aux: None, out: Some(&out), table: Some(&access), status: None }.record(ctx, encoder, &call, None);
            Ok(())
        })?;
        Ok(out)
    }
}

/// `F.embedding_bag` (sum, mean, max) over a quantized table.
#[derive(Debug, Clone)]
pub struct QuantizedEmbeddingBag {
    table: QuantizedTable,
    /// The codes as byte rows for `bag_words` (its texture copy, on CPU adapters, is
    /// made once and kept with it), where the table suits it.
    code_rows: Option<GpuTensor>,
    mode: BagMode,
    padding_idx: Option<u32>,
    include_last_offset: bool,
}

impl QuantizedEmbeddingBag {
    /// Reduces bags over a table quantized before.
    pub fn from_table(table: QuantizedTable, mode: BagMode) -> Self {
        Self { code_rows: code_rows(&table), table, mode, padding_idx: None, include_last_offset: false }
    }

    /// A fresh layer: an N(0, 1) table drawn on the GPU (seeded by `options.seed`),
    /// quantized there with `scheme`'s default block size, reduced with `mode`.
    ///
    /// ```
    /// use wgpu_embed::{BagMode, Context, Block, EmbeddingOptions, Indices, QuantizedEmbeddingBag, Scheme};
    /// let ctx = Context::new().block()?;
    /// let bag = QuantizedEmbeddingBag::new(&ctx, 500, 64, Scheme::Int8Rowwise, BagMode::Sum, EmbeddingOptions::default())?;
    /// let out = bag.forward(&ctx, Indices::i64(&[1, 2, 3], &[3]), Some(Indices::i64(&[0, 1], &[2])), None)?;
    /// assert_eq!(out.shape(), &[2, 64]);
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`QuantizedEmbedding::new`].
    pub fn new(
        ctx: &Context,
        num_embeddings: usize,
        embedding_dim: usize,
        scheme: Scheme,
        mode: BagMode,
        options: EmbeddingOptions,
    ) -> Result<Self> {
        Ok(Self::from_table(fresh_quantized(ctx, num_embeddings, embedding_dim, scheme, &options)?, mode))
    }

    /// Rows equal to `padding_idx` are left out of sums, means (and their counts) and maxima.
    pub fn with_padding_idx(mut self, padding_idx: Option<i64>) -> Result<Self> {
        self.padding_idx = normalize_padding_idx(padding_idx, self.table.num_embeddings())?;
        Ok(self)
    }

    /// With `true`, `offsets` has one more entry than there are bags: the end of the last.
    pub fn with_include_last_offset(mut self, include_last_offset: bool) -> Self {
        self.include_last_offset = include_last_offset;
        self
    }

    /// The quantized table.
    pub fn table(&self) -> &QuantizedTable {
        &self.table
    }

    /// Bytes of the table on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        self.table.gpu_bytes()
    }

    /// Rows in the table.
    pub fn num_embeddings(&self) -> usize {
        self.table.num_embeddings()
    }

    bag_forward!();

    /// Uploads bags checked on the host and reduces them.
    fn reduce(&self, ctx: &Context, bags: HostBags) -> Result<GpuTensor> {
        let t = &self.table;
        let d = t.embedding_dim();
        let n = bags.rows.len();
        // Index entries: the row, then (with weights) the weight's bits, so one binding holds both.
        let (entries, stride) = match &bags.weights {
            Some(w) => {
                let pairs: Vec<i32> = bags.rows.iter().zip(w).flat_map(|(&r, &w)| [r, w.to_bits() as i32]).collect();
                (GpuTensor::from_bytes(ctx, bytemuck::cast_slice(&pairs), &[n, 2], DType::I32, 2)?, 2u32)
            }
            None => (GpuTensor::flat(ctx, &bags.rows, DType::I32)?, 1u32),
        };
        let out = BagPlan::output(ctx, bags.bounds.len() - 1, d)?;
        let spec = BagSpec { mode: self.mode, padding_idx: self.padding_idx, num_embeddings: t.num_embeddings() };
        let params = PassParams { group: t.group(), arg0: stride, ..spec.params(d) };
        let scheme = ("SCHEME", t.scheme().kernel_scheme() as f64);
        let record = |access: &TableAccess<'_>, call: &Call<'_>| {
            ctx.scoped(|| {
                let mut encoder = ctx.encoder();
                let plan = BagPlan { table: access, entries: &entries, weights: None, bounds: &bags.bounds, out: &out, status: None };
                plan.record(ctx, &mut encoder, call);
                ctx.submit(encoder)
            })
        };
        match &self.code_rows {
            Some(rows) => {
                let access = TableAccess::rows_or_texture_now(ctx, rows)?;
                let four_bit = t.scheme().four_bit().is_some();
                let words = d / if four_bit { 32 } else { 16 };
                let per_sweep = if four_bit { 2 } else { 4 };
                // An invocation takes a sweep of adjacent words: 64 values, one block's
                // scale fetched once per index, and its index loads amortised.
                let lanes = (words.div_ceil(per_sweep).next_power_of_two() as u32).min(WORKGROUP_SIZE);
                let constants =
                    [scheme, ("TABLE_FORMAT", 0.0), ("TABLE_TEXTURE", access.texture().is_some() as u32 as f64), ("LANES", lanes as f64)];
                let scales2 = t.scales2().unwrap_or(t.scales());
                let extra = [t.consts_uniform.clone(), t.scales().segments()[0].buffer.clone(), scales2.segments()[0].buffer.clone()];
                let grid = Grid::RowsPerGroup((WORKGROUP_SIZE / lanes) as u64);
                record(&access, &Call { extra: &extra, ..Call::new(&BAG_WORDS, &constants, grid, params) })?;
            }
            None => {
                let access = t.access();
                let constants = [scheme];
                let call = Call { extra: std::slice::from_ref(&t.consts), ..Call::new(&BAG, &constants, Grid::Elements(d as u64), params) };
                record(&access, &call)?;
            }
        }
        Ok(out)
    }
}

/// An N(0, 1) table drawn and quantized on the GPU (the fresh quantized layers).
fn fresh_quantized(
    ctx: &Context,
    num_embeddings: usize,
    embedding_dim: usize,
    scheme: Scheme,
    options: &EmbeddingOptions,
) -> Result<QuantizedTable> {
    if let Some(p) = options.padding_idx {
        return Err(Error::Unsupported(format!(
            "a quantized embedding with padding_idx={p}: bitsandbytes' quantized embeddings take no padding_idx"
        )));
    }
    if let Some(m) = options.max_norm {
        return Err(Error::Unsupported(format!("a quantized embedding with max_norm={m}: its rows cannot be renormalised in place")));
    }
    let table = random_table(ctx, num_embeddings, embedding_dim, Draw::Normal { mean: 0.0, std: 1.0 }, None, options.seed)?;
    let quantized = QuantizedTable::from_tensor(ctx, &table, scheme, None);
    table.release();
    quantized
}
