//! `Embedding8bit` / `Embedding4bit`-style lookups and `F.embedding_bag` over a
//! quantized table (`quant/table.rs`), dequantizing each element in the kernel.
//! Shader family: `quantized_embedding.wgsl`.

use crate::error::Result;
use crate::gpu::context::Context;
use crate::gpu::kernel::binding::{COUNTS, INPUT, OFFSETS, OUT, PARAMS, TABLE};
use crate::gpu::kernel::{common, Kernel, Role, ShaderFamily, Slot};
use crate::gpu::plan::{BagPlan, Call, Grid, PassParams, RowPlan};
use crate::gpu::tensor::{DType, GpuTensor};
use crate::layers::embedding::out_shape;
use crate::layers::embedding_bag::{bag_forward, plan_bags, BagMode, BagSpec, HostBags, PerSampleWeights};
use crate::layers::indices::{normalize_padding_idx, upload_rows, Indices};
use crate::quant::table::QuantizedTable;

pub static FAMILY: ShaderFamily = ShaderFamily {
    name: "quantized_embedding",
    parts: &[
        common::GRID,
        common::PASS,
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
    pub fn new(table: QuantizedTable) -> Self {
        Self { table }
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
    pub fn forward(&self, ctx: &Context, indices: Indices<'_>) -> Result<GpuTensor> {
        let rows = indices.to_rows("indices", self.table.num_embeddings() as u64)?;
        let idx = upload_rows(ctx, &rows, self.batch_rows(ctx)?)?;
        self.run(ctx, &idx, indices.shape)
    }

    /// Looks up indices already on the GPU (a flat-rowed I32 tensor of any shape). A check
    /// kernel bounds-checks them first: the first bad one is reported as
    /// [`Error::IndexOutOfRange`](crate::Error::IndexOutOfRange) and nothing is looked up.
    pub fn forward_gpu(&self, ctx: &Context, indices: &GpuTensor) -> Result<GpuTensor> {
        crate::gpu::index_check::check_gpu_indices(ctx, "indices", indices, self.table.num_embeddings() as u64)?;
        self.run(ctx, indices, indices.shape())
    }

    fn batch_rows(&self, ctx: &Context) -> Result<u64> {
        GpuTensor::rows_per_segment(ctx, self.table.embedding_dim(), DType::F32)
    }

    /// Looks up checked indices.
    fn run(&self, ctx: &Context, indices: &GpuTensor, index_shape: &[usize]) -> Result<GpuTensor> {
        let t = &self.table;
        let d = t.embedding_dim();
        let per = self.batch_rows(ctx)?;
        let out = GpuTensor::zeros_with(ctx, &out_shape(index_shape, d), DType::F32, d, per)?;
        let access = t.access();
        let scheme = [("SCHEME", t.scheme().kernel_scheme() as f64)];
        let call =
            Call { extra: std::slice::from_ref(&t.consts), ..Call::new(&LOOKUP, &scheme, Grid::Elements(d as u64), table_params(t, 1)) };
        ctx.scoped(|| {
            let mut encoder = ctx.encoder();
            // Index segments pair with output segments.
            let idx = indices.resegment(ctx, &mut encoder, per)?;
            RowPlan { input: Some(&idx), aux: None, out: Some(&out), table: Some(&access), status: None }.record(
                ctx,
                &mut encoder,
                &call,
                None,
            );
            ctx.submit(encoder)
        })?;
        Ok(out)
    }
}

/// `F.embedding_bag` (sum, mean, max) over a quantized table.
#[derive(Debug, Clone)]
pub struct QuantizedEmbeddingBag {
    table: QuantizedTable,
    mode: BagMode,
    padding_idx: Option<u32>,
    include_last_offset: bool,
}

impl QuantizedEmbeddingBag {
    /// Reduces bags over a table quantized before.
    pub fn new(table: QuantizedTable, mode: BagMode) -> Self {
        Self { table, mode, padding_idx: None, include_last_offset: false }
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
        let access = t.access();
        let spec = BagSpec { mode: self.mode, padding_idx: self.padding_idx, num_embeddings: t.num_embeddings() };
        let params = PassParams { group: t.group(), arg0: stride, ..spec.params(d) };
        let scheme = [("SCHEME", t.scheme().kernel_scheme() as f64)];
        let call = Call { extra: std::slice::from_ref(&t.consts), ..Call::new(&BAG, &scheme, Grid::Elements(d as u64), params) };
        ctx.scoped(|| {
            let mut encoder = ctx.encoder();
            let plan = BagPlan { table: &access, entries: &entries, weights: None, bounds: &bags.bounds, out: &out, status: None };
            plan.record(ctx, &mut encoder, &call);
            ctx.submit(encoder)
        })?;
        Ok(out)
    }
}
