//! Table-batched embedding bags: FBGEMM's TBE (`SplitTableBatchedEmbeddingBagsCodegen`),
//! its forward (pooling SUM, MEAN or NONE) over many tables in one dispatch, its
//! backward and its fused optimizer steps (EXACT_SGD, EXACT_ADAGRAD,
//! EXACT_ROWWISE_ADAGRAD, ADAM, PARTIAL_ROWWISE_ADAM) over
//! tables of one dim. Shader family: `table_batched.wgsl`.
//!
//! A layer holds T tables of their own rows and dims (any dims), and a
//! `feature_table_map` from F features to tables (several features may share one). Input
//! in FBGEMM's layout: one flat `indices` list and `offsets` of length F·B + 1,
//! feature-major: feature f's bag b is `indices[offsets[f·B + b] .. offsets[f·B + b + 1]]`.
//! The output is `[B, Σ_f dim_f]`, feature f's columns at the sum of the dims before it;
//! with [`Pooling::None`] (FBGEMM's sequence embeddings) each index's row, in index order:
//! `[N, D]` when every feature has dim D, else the rows one after another, flat (unlike
//! FBGEMM, features of different dims are allowed there too).
//! Variable batch sizes per feature (FBGEMM's VBE) come out in FBGEMM's rank-major layout
//! ([`TableBatchedEmbeddingBags::forward_vbe`]; its backward and steps through
//! [`TableBatchedEmbeddingBags::variable_batch`]). Tables may be stored as FBGEMM's inference
//! TBE stores them, fp16, int8 or int4 rows beside f32 ones in one layer
//! ([`TableBatchedEmbeddingBags::from_rows`]).
//! Unlike FBGEMM's default bounds-check mode, which replaces a bad index by 0, a bad
//! index or offset is refused with a typed error before anything runs.

use crate::error::{Error, Result};
use crate::gpu::context::{upload, Context};
use crate::gpu::kernel::binding::{INPUT, OUT, PARAMS};
use crate::gpu::kernel::{common, Kernel, Role, ShaderFamily, Slot};
use crate::gpu::plan::{record_flat, Call, Grid, PassParams, HAS_WEIGHTS, MODE_MEAN, MODE_SUM};
use crate::gpu::recording::Recording;
use crate::gpu::tensor::{DType, GpuTensor, Segment};
use crate::layers::embedding_backward::{check_grad, table_gradient, Flat, GradOptions, Gradient, Scatter, Sources};
use crate::layers::embedding_bag::BagMode;
use crate::layers::indices::Indices;
use crate::optim::Optimizer;
#[cfg(doc)]
use crate::optim::OptimizerKind;

pub(crate) static FAMILY: ShaderFamily =
    ShaderFamily { name: "table_batched", parts: &[common::GRID, common::PASS, include_str!("../../shaders/table_batched.wgsl")] };

/// The kernels' bindings: the packed tables, the indices, the output, the bag offsets,
/// the per-sample weights, the features, and the columns' features (per-element
/// kernel) or the output row's chunks (vec4 kernel), and the features' row formats
/// (tables of several precisions).
const POOLED_BINDINGS: &[(u32, Slot, Role)] = &[
    PARAMS,
    (1, Slot::Read, Role::Extra(0)),
    INPUT,
    OUT,
    (5, Slot::Read, Role::Extra(3)),
    (7, Slot::Read, Role::Extra(4)),
    (9, Slot::Read, Role::Extra(1)),
    (10, Slot::Read, Role::Extra(2)),
    (11, Slot::Read, Role::Extra(5)),
    (13, Slot::Read, Role::Extra(6)),
];
const TBE_POOLED: Kernel = Kernel::new(&FAMILY, "tbe_pooled", POOLED_BINDINGS);
/// Every dim a multiple of 4: an invocation per CHUNK vec4 words of a feature's bag.
const TBE_POOLED4: Kernel = Kernel::new(&FAMILY, "tbe_pooled4", POOLED_BINDINGS);
/// No pooling: an invocation per output element (position features at 10, row firsts at 11).
const TBE_SEQUENCE: Kernel = Kernel::new(&FAMILY, "tbe_sequence", POOLED_BINDINGS);
/// Variable batch sizes (VBE): an invocation per output element in the bags' order
/// (feature firsts, then each bag's first output element, at 11).
const TBE_VBE: Kernel = Kernel::new(&FAMILY, "tbe_vbe", POOLED_BINDINGS);
/// Backward: the output gradient in the bags' (feature-major) order.
const TBE_BAG_GRADS: Kernel = Kernel::new(&FAMILY, "tbe_bag_grads", &[PARAMS, OUT, (12, Slot::Read, Role::Extra(0))]);
/// The same from a variable-batch output (its layout at 11).
const TBE_VBE_BAG_GRADS: Kernel =
    Kernel::new(&FAMILY, "tbe_vbe_bag_grads", &[PARAMS, OUT, (12, Slot::Read, Role::Extra(0)), (11, Slot::Read, Role::Extra(1))]);

/// Output words one `tbe_pooled4` invocation sums (`CHUNK` in the shader): on CPU
/// adapters a whole row of the widest feature, up to 16 (each lane's index load is
/// emulated and costs as much as several words); on GPUs one, leaving a row to
/// consecutive invocations.
fn chunk_words(ctx: &Context, widest_words: usize) -> usize {
    if ctx.adapter_info().device_type == wgpu::DeviceType::Cpu {
        widest_words.next_power_of_two().clamp(1, 16)
    } else {
        1
    }
}

/// How a table-batched layer pools each bag (FBGEMM's `PoolingMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pooling {
    /// The (weighted) sum of the bag's rows.
    Sum,
    /// Their mean (an empty bag gives zeros).
    Mean,
    /// No pooling: each index's row (FBGEMM's sequence embeddings).
    None,
}

crate::names::spelled_enum!(Pooling, "pooling_mode", { Sum => "sum", Mean => "mean", None => "none" });

/// How a table's rows are stored: FBGEMM's `SparseType` of its inference TBE tables
/// (`IntNBitTableBatchedEmbeddingBagsCodegen`), each row laid out as FBGEMM lays it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TablePrecision {
    /// `dim` f32 values (4·dim bytes).
    F32,
    /// `dim` IEEE halves (2·dim bytes).
    F16,
    /// The row's f16 scale and f16 bias, then `dim` u8 codes: value = scale · code + bias
    /// (4 + dim bytes).
    Int8,
    /// The row's f16 scale and f16 bias, then `dim` 4-bit codes two to a byte, the low
    /// nibble first (4 + dim / 2 bytes; dim even).
    Int4,
}

crate::names::spelled_enum!(TablePrecision, "weights_precision", { F32 => "fp32", F16 => "fp16", Int8 => "int8", Int4 => "int4" });

impl TablePrecision {
    /// Bytes of one row of `dim` values.
    pub fn row_bytes(self, dim: usize) -> usize {
        match self {
            Self::F32 => 4 * dim,
            Self::F16 => 2 * dim,
            Self::Int8 => 4 + dim,
            Self::Int4 => 4 + dim.div_ceil(2),
        }
    }

    /// The shader's code for it (`table_value` in table_batched.wgsl).
    fn code(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Int8 => 2,
            Self::Int4 => 3,
        }
    }
}

/// One table of a [`TableBatchedEmbeddingBags::from_rows`] layer: `rows` rows of `dim`
/// values stored as `precision` says, one after another (`rows · precision.row_bytes(dim)`
/// bytes), as FBGEMM's inference TBE keeps them (its `split_embedding_weights(split_scale_shifts=False)`).
#[derive(Debug, Clone, Copy)]
pub struct TableRows<'a> {
    /// The table's rows.
    pub rows: usize,
    /// Values per row.
    pub dim: usize,
    /// How each row is stored.
    pub precision: TablePrecision,
    /// The rows' bytes.
    pub bytes: &'a [u8],
}

/// F32 tables, bags of several features over them, pooled by sum or mean (or not at
/// all), as FBGEMM's table-batched embedding bags.
#[derive(Debug, Clone)]
pub struct TableBatchedEmbeddingBags {
    /// Every table's rows, one table after another (one binding).
    tables: GpuTensor,
    /// (rows, dim) per table.
    specs: Vec<(usize, usize)>,
    feature_table_map: Vec<usize>,
    mode: Pooling,
    /// Per feature: (first word of its table, dim, rows, first output column).
    features: wgpu::Buffer,
    /// How an output row is cut into invocations, fixed by the tables (made once).
    layout: RowLayout,
    width: usize,
    /// Per feature (precision code, words per row) when a table is stored other than as
    /// f32 (inference only): the kernels then decode each row.
    formats: Option<wgpu::Buffer>,
}

/// A backward's inputs: the bags' rows in the packed tables, and the output gradient
/// in the bags' order.
struct PreparedBackward {
    rows: Vec<i32>,
    bag_offsets: Vec<u32>,
    mode: Pooling,
    weights: Option<Vec<f32>>,
    grad: GpuTensor,
}

impl PreparedBackward {
    /// What the embedding backward scatters into `weights` (`[Σ rows, D]`).
    fn scatter<'a>(&'a self, weights: &GpuTensor, options: GradOptions) -> Scatter<'a> {
        let sources = match self.mode {
            Pooling::None => Sources::Positions { group: 1 },
            Pooling::Sum | Pooling::Mean => Sources::Bags {
                bounds: &self.bag_offsets,
                mode: if self.mode == Pooling::Mean { BagMode::Mean } else { BagMode::Sum },
                weights: self.weights.as_deref().map(Flat::Host),
            },
        };
        Scatter {
            rows: Flat::Host(&self.rows),
            sources,
            padding_idx: None,
            num_embeddings: weights.shape()[0],
            dim: weights.shape()[1],
            options,
        }
    }
}

/// Bags checked on the host: each index (a row of its feature's table), the offsets, B
/// (0 for variable batch sizes), and each feature's first bag (F + 1 entries, the last
/// one the bags in all).
struct Bags {
    rows: Vec<i32>,
    bag_offsets: Vec<u32>,
    b: usize,
    feature_bags: Vec<usize>,
}

/// Where variable-batch (VBE) bags go, as one list of words: per feature its first
/// element in the bags' (feature-major) order and its first bag (F + 1 pairs), then each
/// bag's first element in FBGEMM's output, which is rank-major (rank r's block holds
/// every feature's bags of that rank, feature after feature).
struct VbeLayout {
    words: Vec<u32>,
    total: usize,
}

impl VbeLayout {
    fn new(dims: &[usize], batch_size_per_feature_per_rank: &[Vec<usize>], feature_bags: &[usize]) -> Self {
        let f = dims.len();
        let mut words = Vec::with_capacity(2 * (f + 1) + feature_bags[f]);
        let mut total = 0usize;
        for t in 0..f {
            words.extend([total as u32, feature_bags[t] as u32]);
            total += (feature_bags[t + 1] - feature_bags[t]) * dims[t];
        }
        words.extend([total as u32, feature_bags[f] as u32]);
        let ranks = batch_size_per_feature_per_rank.first().map_or(0, Vec::len);
        let mut bag_out_firsts = vec![0u32; feature_bags[f]];
        let mut next = 0usize;
        for r in 0..ranks {
            for (t, sizes) in batch_size_per_feature_per_rank.iter().enumerate() {
                let first = feature_bags[t] + sizes[..r].iter().sum::<usize>();
                for slot in &mut bag_out_firsts[first..first + sizes[r]] {
                    *slot = next as u32;
                    next += dims[t];
                }
            }
        }
        words.extend(bag_out_firsts);
        Self { words, total }
    }
}

/// The pooled kernel an output row runs and what it reads to find each invocation's
/// feature: the feature of every column (per-element kernel), or every chunk of `chunk`
/// vec4 words as (feature, first word) (vec4 kernel, every dim a multiple of 4).
#[derive(Debug, Clone)]
enum RowLayout {
    Columns { column_features: wgpu::Buffer },
    Chunks { chunks: wgpu::Buffer, count: usize, chunk: usize },
}

impl TableBatchedEmbeddingBags {
    /// The layer over `tables` (each row-major `[rows, dim]` f32 values with its
    /// `(rows, dim)`), feature f reading table `feature_table_map[f]`, bags pooled by
    /// `mode` (FBGEMM's `PoolingMode.SUM` / `MEAN` / `NONE`).
    ///
    /// ```
    /// use wgpu_embed::{Block, Context, Indices, Pooling, TableBatchedEmbeddingBags};
    /// let ctx = Context::new().block()?;
    /// let (a, b): (Vec<f32>, Vec<f32>) = ((0..4 * 2).map(|i| i as f32).collect(), (0..3 * 3).map(|i| 100.0 + i as f32).collect());
    /// // Features 0 and 2 share table 0 ([4, 2]); feature 1 reads table 1 ([3, 3]).
    /// let tbe = TableBatchedEmbeddingBags::from_pretrained(&ctx, &[(&a, 4, 2), (&b, 3, 3)], &[0, 1, 0], Pooling::Sum)?;
    /// // B = 2: feature 0's bags [1, 3], [0]; feature 1's [2], []; feature 2's [], [3].
    /// let indices = [1i64, 3, 0, 2, 3];
    /// let offsets = [0i64, 2, 3, 4, 4, 4, 5];
    /// let out = tbe.forward(&ctx, Indices::i64(&indices, &[5]), Indices::i64(&offsets, &[7]), None)?; // [2, 2 + 3 + 2]
    /// let rows = out.read_f32(&ctx).block()?;
    /// assert_eq!(rows[..7], [8.0, 10.0, 106.0, 107.0, 108.0, 0.0, 0.0]);
    /// assert_eq!(rows[7..], [0.0, 1.0, 0.0, 0.0, 0.0, 6.0, 7.0]);
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a table whose values are not `rows · dim`, a dim of
    /// 0, a feature mapped to no table, and [`Error::Unsupported`] when the tables together or one output row do not fit
    /// one binding.
    pub fn from_pretrained(ctx: &Context, tables: &[(&[f32], usize, usize)], feature_table_map: &[usize], mode: Pooling) -> Result<Self> {
        let mut packed = Vec::with_capacity(tables.iter().map(|t| t.0.len()).sum());
        let mut table_first = Vec::with_capacity(tables.len());
        for (t, &(values, rows, dim)) in tables.iter().enumerate() {
            if dim == 0 || rows.checked_mul(dim) != Some(values.len()) {
                return Err(Error::arg(
                    "tables",
                    format!("table {t}: {} values do not make [{rows}, {dim}] (dims must be positive)", values.len()),
                ));
            }
            table_first.push(packed.len());
            packed.extend_from_slice(values);
        }
        let specs: Vec<(usize, usize)> = tables.iter().map(|&(_, rows, dim)| (rows, dim)).collect();
        Self::build(ctx, &specs, feature_table_map, mode, (&packed, DType::F32), &table_first, None)
    }

    /// The layer over tables stored as FBGEMM's inference TBE stores them, each in its own
    /// [`TablePrecision`] (f32, f16, int8 or int4 rows with their scale and bias), mixed
    /// in one layer: every bag is pooled in f32 from the decoded rows, as FBGEMM's
    /// `IntNBitTableBatchedEmbeddingBagsCodegen` does with `output_dtype=FP32`. Such a
    /// layer is for inference: it has no [`TableBatchedEmbeddingBags::weights`] to train
    /// (unless every table is f32).
    ///
    /// ```
    /// use wgpu_embed::{Block, Context, Indices, Pooling, TableBatchedEmbeddingBags, TablePrecision, TableRows};
    /// let ctx = Context::new().block()?;
    /// // A 2 x 4 int8 table: each row its f16 scale and bias, then 4 codes.
    /// let (scale, bias) = (half::f16::from_f32(0.5).to_le_bytes(), half::f16::from_f32(-1.0).to_le_bytes());
    /// let mut int8 = Vec::new();
    /// for codes in [[0u8, 2, 4, 6], [10, 20, 30, 40]] {
    ///     int8.extend(scale.iter().chain(&bias).chain(&codes));
    /// }
    /// let halves: Vec<u8> = [1.5f32, 2.5].iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    /// let tables = [
    ///     TableRows { rows: 2, dim: 4, precision: TablePrecision::Int8, bytes: &int8 },
    ///     TableRows { rows: 1, dim: 2, precision: TablePrecision::F16, bytes: &halves },
    /// ];
    /// let tbe = TableBatchedEmbeddingBags::from_rows(&ctx, &tables, &[0, 1], Pooling::Sum)?;
    /// // B = 1: feature 0's bag [0, 1], feature 1's [0].
    /// let out = tbe.forward(&ctx, Indices::i64(&[0, 1, 0], &[3]), Indices::i64(&[0, 2, 3], &[3]), None)?;
    /// assert_eq!(out.read_f32(&ctx).block()?, [3.0, 9.0, 15.0, 21.0, 1.5, 2.5]);
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    ///
    /// # Errors
    /// What [`TableBatchedEmbeddingBags::from_pretrained`] refuses, and
    /// [`Error::InvalidArgument`] for a table whose bytes are not `rows ·
    /// precision.row_bytes(dim)`, or an int4 table of odd dim.
    pub fn from_rows(ctx: &Context, tables: &[TableRows<'_>], feature_table_map: &[usize], mode: Pooling) -> Result<Self> {
        for (t, table) in tables.iter().enumerate() {
            let row_bytes = table.precision.row_bytes(table.dim);
            if table.dim == 0 || (table.precision == TablePrecision::Int4 && table.dim % 2 == 1) {
                return Err(Error::arg("tables", format!("table {t}: dim {} of an {} table", table.dim, table.precision.name())));
            }
            if table.rows.checked_mul(row_bytes) != Some(table.bytes.len()) {
                return Err(Error::arg(
                    "tables",
                    format!(
                        "table {t}: {} bytes do not make {} {} rows of dim {} ({row_bytes} bytes each)",
                        table.bytes.len(),
                        table.rows,
                        table.precision.name(),
                        table.dim
                    ),
                ));
            }
        }
        if tables.iter().all(|t| t.precision == TablePrecision::F32) {
            let values: Vec<Vec<f32>> = tables.iter().map(|t| bytemuck::pod_collect_to_vec(t.bytes)).collect();
            let specs: Vec<(&[f32], usize, usize)> = values.iter().zip(tables).map(|(v, t)| (&v[..], t.rows, t.dim)).collect();
            return Self::from_pretrained(ctx, &specs, feature_table_map, mode);
        }
        // Each row padded to whole words, so that every row starts on a word.
        let mut words: Vec<u32> = Vec::new();
        let mut table_first = Vec::with_capacity(tables.len());
        for table in tables {
            table_first.push(words.len());
            for row in table.bytes.chunks_exact(table.precision.row_bytes(table.dim)) {
                words.extend(row.chunks(4).map(|w| {
                    let mut word = [0u8; 4];
                    word[..w.len()].copy_from_slice(w);
                    u32::from_le_bytes(word)
                }));
            }
        }
        let specs: Vec<(usize, usize)> = tables.iter().map(|t| (t.rows, t.dim)).collect();
        let formats: Vec<[u32; 2]> = tables.iter().map(|t| [t.precision.code(), t.precision.row_bytes(t.dim).div_ceil(4) as u32]).collect();
        Self::build(ctx, &specs, feature_table_map, mode, (&words, DType::U32), &table_first, Some(&formats))
    }

    /// The layer over `packed` tables (table t's first word at `table_first[t]`), of
    /// `(rows, dim)` `specs`, with per table its (precision code, words per row) when
    /// rows are decoded.
    fn build<T: bytemuck::Pod>(
        ctx: &Context,
        specs: &[(usize, usize)],
        feature_table_map: &[usize],
        mode: Pooling,
        (packed, dtype): (&[T], DType),
        table_first: &[usize],
        formats: Option<&[[u32; 2]]>,
    ) -> Result<Self> {
        if specs.is_empty() || feature_table_map.is_empty() {
            return Err(Error::arg("tables", "expected at least one table and one feature"));
        }
        let bytes = std::mem::size_of_val(packed) as u64;
        if bytes > ctx.max_binding_size() || packed.len() >= u32::MAX as usize {
            return Err(Error::Unsupported(format!(
                "table-batched tables of {bytes} bytes in all: one binding holds {} bytes on this device",
                ctx.max_binding_size()
            )));
        }
        let mut features = Vec::with_capacity(feature_table_map.len());
        let mut column_features = Vec::new();
        for (f, &t) in feature_table_map.iter().enumerate() {
            let Some(&(rows, dim)) = specs.get(t) else {
                return Err(Error::arg(
                    "feature_table_map",
                    format!("feature_table_map[{f}] = {t} names no table: there are {} tables", specs.len()),
                ));
            };
            features.push([table_first[t] as u32, dim as u32, rows as u32, column_features.len() as u32]);
            column_features.extend(std::iter::repeat_n(f as u32, dim));
        }
        let width = column_features.len();
        if width as u64 * 4 > ctx.max_binding_size() {
            return Err(Error::Unsupported(format!("an output row of {width} columns does not fit one binding")));
        }
        let dims: Vec<usize> = feature_table_map.iter().map(|&t| specs[t].1).collect();
        // Decoded rows take the per-element kernel.
        let layout = if formats.is_none() && dims.iter().all(|d| d.is_multiple_of(4)) {
            let chunk = chunk_words(ctx, dims.iter().map(|d| d / 4).max().unwrap_or(1));
            let chunks: Vec<[u32; 2]> =
                dims.iter().enumerate().flat_map(|(f, d)| (0..d / 4).step_by(chunk).map(move |w| [f as u32, w as u32])).collect();
            RowLayout::Chunks { chunks: upload(ctx, "tbe-chunks", &chunks), count: chunks.len(), chunk }
        } else {
            RowLayout::Columns { column_features: upload(ctx, "tbe-column-features", &column_features) }
        };
        let formats = formats.map(|per_table| {
            let per_feature: Vec<[u32; 2]> = feature_table_map.iter().map(|&t| per_table[t]).collect();
            upload(ctx, "tbe-formats", &per_feature)
        });
        Ok(Self {
            tables: GpuTensor::flat(ctx, packed, dtype)?,
            specs: specs.to_vec(),
            feature_table_map: feature_table_map.to_vec(),
            mode,
            features: upload(ctx, "tbe-features", &features),
            layout,
            width,
            formats,
        })
    }

    /// The row formats binding, and the shader's constant saying whether rows are decoded.
    fn format_binding(&self, ctx: &Context) -> (wgpu::Buffer, Vec<(&'static str, f64)>) {
        match &self.formats {
            Some(f) => (f.clone(), vec![("MIXED", 1.0)]),
            None => (ctx.placeholder_buffer().clone(), Vec::new()),
        }
    }

    /// Number of features (F).
    pub fn features(&self) -> usize {
        self.feature_table_map.len()
    }

    /// `(rows, dim)` of each table.
    pub fn table_specs(&self) -> &[(usize, usize)] {
        &self.specs
    }

    /// The output's width: the sum of the features' dims.
    pub fn output_dim(&self) -> usize {
        self.width
    }

    /// Pools the bags of every feature (see the module's page for the layout): a
    /// `[B, output_dim]` tensor on the GPU, where `offsets` has F·B + 1 entries (with
    /// [`Pooling::None`]: each index's row). `per_sample_weights` (one per index, sum
    /// only) scale the rows they go with.
    ///
    /// # Errors
    /// As [`TableBatchedEmbeddingBags::record`].
    pub fn forward(
        &self,
        ctx: &Context,
        indices: Indices<'_>,
        offsets: Indices<'_>,
        per_sample_weights: Option<&[f32]>,
    ) -> Result<GpuTensor> {
        ctx.run_now(|run| self.record(run, indices, offsets, per_sample_weights))
    }

    /// [`TableBatchedEmbeddingBags::forward`] recorded into `run`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] before any GPU work for `offsets` whose length is not
    /// F·B + 1, that do not start at 0, decrease, or end elsewhere than at the number of
    /// indices; per-sample weights of another length or with mean pooling (PyTorch
    /// refuses them, FBGEMM's CPU and GPU kernels disagree on them);
    /// [`Error::IndexOutOfRange`] naming the position and value of the first index
    /// outside its feature's table.
    pub fn record(
        &self,
        run: &mut Recording<'_>,
        indices: Indices<'_>,
        offsets: Indices<'_>,
        per_sample_weights: Option<&[f32]>,
    ) -> Result<GpuTensor> {
        let ctx = run.context();
        let Bags { rows, bag_offsets, b, .. } = self.checked_bags(ctx, indices, offsets, per_sample_weights, None)?;
        let n = rows.len();
        if self.mode == Pooling::None {
            return self.record_sequence(run, &rows, &bag_offsets, b);
        }
        let out = GpuTensor::zeros(ctx, &[b, self.width], DType::F32, self.width)?;
        if out.segments().len() > 1 {
            return Err(Error::Unsupported(format!("an output of [{b}, {}] does not fit one binding", self.width)));
        }
        if b == 0 {
            return Ok(out);
        }
        run.scoped(|run| {
            let indices = Segment { buffer: upload(ctx, "tbe-indices", &rows), first_row: 0, rows: n as u64, lease: None };
            let weights = per_sample_weights.map_or_else(|| ctx.placeholder_buffer().clone(), |w| upload(ctx, "tbe-weights", w));
            let mut params = PassParams {
                rows: b as u32,
                dim: self.width as u32,
                mode: if self.mode == Pooling::Mean { MODE_MEAN } else { MODE_SUM },
                flags: if per_sample_weights.is_some() { HAS_WEIGHTS } else { 0 },
                ..Default::default()
            };
            let placeholder = ctx.placeholder_buffer();
            let (kernel, constants, items, columns, chunks) = match &self.layout {
                RowLayout::Chunks { chunks, count, chunk } => {
                    params.dim = (self.width / 4) as u32;
                    params.arg0 = *count as u32;
                    (&TBE_POOLED4, vec![("CHUNK", *chunk as f64)], *count, placeholder, chunks)
                }
                RowLayout::Columns { column_features } => (&TBE_POOLED, Vec::new(), self.width, column_features, placeholder),
            };
            let (formats, decode) = self.format_binding(ctx);
            let constants = if decode.is_empty() { constants } else { decode };
            let extra = [
                self.tables.segments()[0].buffer.clone(),
                self.features.clone(),
                columns.clone(),
                upload(ctx, "tbe-offsets", &bag_offsets),
                weights,
                chunks.clone(),
                formats,
            ];
            let call = Call { extra: &extra, ..Call::new(kernel, &constants, Grid::Elements(items as u64), params) };
            record_flat(ctx, run, &call, Some(&indices), Some(&out.segments()[0]), b as u64);
            Ok(())
        })?;
        Ok(out)
    }

    /// Each feature's dim.
    fn feature_dims(&self) -> Vec<usize> {
        self.feature_table_map.iter().map(|&t| self.specs[t].1).collect()
    }

    /// Pools bags whose batch size differs from feature to feature (FBGEMM's variable
    /// batch size, VBE): feature f has `batch_size_per_feature_per_rank[f][r]` bags from
    /// each of R ranks (R ≥ 1, the same for every feature), its Σ_r B_f,r bags one after
    /// another in `offsets` (Σ_f Σ_r B_f,r + 1 entries, feature-major as ever, ranks in
    /// order within a feature). The output is FBGEMM's, flat: rank after rank, and within
    /// rank r each feature's B_f,r pooled rows of dim_f, feature after feature
    /// (`[Σ_f Σ_r B_f,r · dim_f]`).
    ///
    /// ```
    /// use wgpu_embed::{Block, Context, Indices, Pooling, TableBatchedEmbeddingBags};
    /// let ctx = Context::new().block()?;
    /// let (a, b): (Vec<f32>, Vec<f32>) = ((0..4 * 2).map(|i| i as f32).collect(), (0..3 * 2).map(|i| 10.0 + i as f32).collect());
    /// let tbe = TableBatchedEmbeddingBags::from_pretrained(&ctx, &[(&a, 4, 2), (&b, 3, 2)], &[0, 1], Pooling::Sum)?;
    /// // Feature 0 has 1 bag from rank 0 and 2 from rank 1; feature 1 has 1 from each.
    /// let sizes = [vec![1, 2], vec![1, 1]];
    /// let (indices, offsets) = ([0i64, 1, 2, 0, 2], [0i64, 1, 2, 3, 4, 5]);
    /// let out = tbe.forward_vbe(&ctx, Indices::i64(&indices, &[5]), Indices::i64(&offsets, &[6]), None, &sizes)?;
    /// // Rank 0: feature 0's bag [0], feature 1's [0]; rank 1: feature 0's [1], [2], feature 1's [2].
    /// assert_eq!(out.read_f32(&ctx).block()?, [0.0, 1.0, 10.0, 11.0, 2.0, 3.0, 4.0, 5.0, 14.0, 15.0]);
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`TableBatchedEmbeddingBags::record_vbe`].
    pub fn forward_vbe(
        &self,
        ctx: &Context,
        indices: Indices<'_>,
        offsets: Indices<'_>,
        per_sample_weights: Option<&[f32]>,
        batch_size_per_feature_per_rank: &[Vec<usize>],
    ) -> Result<GpuTensor> {
        ctx.run_now(|run| self.record_vbe(run, indices, offsets, per_sample_weights, batch_size_per_feature_per_rank))
    }

    /// The layer's training with variable batch sizes (FBGEMM's VBE):
    /// `batch_size_per_feature_per_rank` as [`TableBatchedEmbeddingBags::forward_vbe`]
    /// takes it, for [`VariableBatch::backward`] and [`VariableBatch::step`] on the
    /// gradient of that forward's output.
    pub fn variable_batch<'a>(&'a self, batch_size_per_feature_per_rank: &'a [Vec<usize>]) -> VariableBatch<'a> {
        VariableBatch { layer: self, batch_size_per_feature_per_rank }
    }

    /// [`TableBatchedEmbeddingBags::forward_vbe`] recorded into `run`.
    ///
    /// # Errors
    /// What [`TableBatchedEmbeddingBags::record`] refuses, with `offsets` of Σ batch
    /// sizes + 1 entries; [`Error::InvalidArgument`] for `batch_size_per_feature_per_rank`
    /// with other than one list per feature, no ranks or features of different ranks,
    /// or a layer without pooling (FBGEMM's VBE pools); [`Error::Unsupported`] for an
    /// output that does not fit one binding.
    pub fn record_vbe(
        &self,
        run: &mut Recording<'_>,
        indices: Indices<'_>,
        offsets: Indices<'_>,
        per_sample_weights: Option<&[f32]>,
        batch_size_per_feature_per_rank: &[Vec<usize>],
    ) -> Result<GpuTensor> {
        if self.mode == Pooling::None {
            return Err(Error::arg(
                "batch_size_per_feature_per_rank",
                "variable batch sizes need pooling_mode 'sum' or 'mean' (this layer's is 'none')",
            ));
        }
        let ctx = run.context();
        let Bags { rows, bag_offsets, feature_bags, .. } =
            self.checked_bags(ctx, indices, offsets, per_sample_weights, Some(batch_size_per_feature_per_rank))?;
        let layout = VbeLayout::new(&self.feature_dims(), batch_size_per_feature_per_rank, &feature_bags);
        let out = GpuTensor::zeros(ctx, &[layout.total], DType::F32, 1)?;
        if out.segments().len() > 1 || layout.total >= u32::MAX as usize {
            return Err(Error::Unsupported(format!("a variable-batch output of {} values does not fit one binding", layout.total)));
        }
        if layout.total == 0 {
            return Ok(out);
        }
        run.scoped(|run| {
            let indices = Segment { buffer: upload(ctx, "tbe-indices", &rows), first_row: 0, rows: rows.len() as u64, lease: None };
            let weights = per_sample_weights.map_or_else(|| ctx.placeholder_buffer().clone(), |w| upload(ctx, "tbe-weights", w));
            let params = PassParams {
                rows: 1,
                dim: layout.total as u32,
                mode: if self.mode == Pooling::Mean { MODE_MEAN } else { MODE_SUM },
                flags: if per_sample_weights.is_some() { HAS_WEIGHTS } else { 0 },
                arg0: self.features() as u32,
                ..Default::default()
            };
            let (formats, constants) = self.format_binding(ctx);
            let extra = [
                self.tables.segments()[0].buffer.clone(),
                self.features.clone(),
                ctx.placeholder_buffer().clone(),
                upload(ctx, "tbe-offsets", &bag_offsets),
                weights,
                upload(ctx, "tbe-vbe-layout", &layout.words),
                formats,
            ];
            let call = Call { extra: &extra, ..Call::new(&TBE_VBE, &constants, Grid::Elements(layout.total as u64), params) };
            record_flat(ctx, run, &call, Some(&indices), Some(&out.segments()[0]), 1);
            Ok(())
        })?;
        Ok(out)
    }

    /// The bags checked as [`TableBatchedEmbeddingBags::record`] checks them (with
    /// `batch`, as [`TableBatchedEmbeddingBags::record_vbe`] does): each index (in its
    /// feature's table), the offsets as u32, B and each feature's first bag.
    fn checked_bags(
        &self,
        ctx: &Context,
        indices: Indices<'_>,
        offsets: Indices<'_>,
        per_sample_weights: Option<&[f32]>,
        batch: Option<&[Vec<usize>]>,
    ) -> Result<Bags> {
        indices.check_shape("indices")?;
        offsets.check_shape("offsets")?;
        let (n, f) = (indices.data.len(), self.features());
        let (b, feature_bags) = match batch {
            None => {
                let bounds = offsets.data.len().checked_sub(1).filter(|len| len.is_multiple_of(f)).ok_or_else(|| {
                    Error::arg("offsets", format!("expected F·B + 1 entries (F = {f} features), got {}", offsets.data.len()))
                })?;
                (bounds / f, (0..=f).map(|t| t * (bounds / f)).collect::<Vec<_>>())
            }
            Some(sizes) => (0, variable_feature_bags(sizes, f, offsets.data.len())?),
        };
        let bounds = feature_bags[f];
        let mut bag_offsets = Vec::with_capacity(bounds + 1);
        for (i, o) in offsets.data.iter().enumerate() {
            let prev = bag_offsets.last().copied().unwrap_or(0u32);
            if (i == 0 && o != 0) || o < prev as i64 || o > n as i64 || (i == bounds && o != n as i64) {
                return Err(Error::arg(
                    "offsets",
                    format!("offsets[{i}] = {o}: offsets start at 0, never decrease and end at the {n} indices"),
                ));
            }
            bag_offsets.push(o as u32);
        }
        // lavapipe stops an invocation's loops after 65 535 iterations, and an invocation
        // walks its bag once: longer bags would be cut short there.
        let longest = bag_offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        if longest >= 65_535 && ctx.adapter_info().device_type == wgpu::DeviceType::Cpu {
            return Err(Error::Unsupported(format!(
                "a bag of {longest} indices on a CPU adapter, which ends shader loops at 65 535 iterations"
            )));
        }
        let mut rows = Vec::with_capacity(n);
        for (t, bags) in feature_bags.windows(2).enumerate() {
            let num_rows = self.specs[self.feature_table_map[t]].0 as u64;
            for position in bag_offsets[bags[0]] as usize..bag_offsets[bags[1]] as usize {
                let value = indices.data.get(position);
                if value < 0 || value as u64 >= num_rows {
                    return Err(Error::IndexOutOfRange { name: "indices", position: position as u64, value, num_embeddings: num_rows });
                }
                rows.push(value as i32);
            }
        }
        if let Some(w) = per_sample_weights {
            if self.mode != Pooling::Sum {
                return Err(Error::arg("per_sample_weights", "per_sample_weights are only supported for mode='sum'"));
            }
            if w.len() != n {
                return Err(Error::arg("per_sample_weights", format!("expected one weight per index ({n}), got {}", w.len())));
            }
        }
        Ok(Bags { rows, bag_offsets, b, feature_bags })
    }

    /// Every table as rows of one `[Σ rows, D]` tensor over the packed tables (the same
    /// buffer), when every table has dim D: what one [`Optimizer`] steps for all of them,
    /// as FBGEMM keeps one optimizer state over all its tables (table t's rows follow
    /// those of tables 0 .. t-1).
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the tables' dims differ, or for tables of
    /// [`TableBatchedEmbeddingBags::from_rows`] other than f32.
    pub fn weights(&self) -> Result<GpuTensor> {
        if self.formats.is_some() {
            return Err(Error::Unsupported(
                "tables stored as fp16, int8 or int4 rows are for inference: training takes f32 tables (from_pretrained)".into(),
            ));
        }
        let d = self.specs[0].1;
        if self.specs.iter().any(|&(_, dim)| dim != d) {
            return Err(Error::Unsupported(format!(
                "the tables have dims {:?}: training them together takes one dim for all",
                self.specs.iter().map(|s| s.1).collect::<Vec<_>>()
            )));
        }
        self.tables.as_rows(d).ok_or_else(|| Error::Unsupported("the packed tables span several bindings".into()))
    }

    /// The gradient of `sum(forward(...) * grad_out)` with respect to every table, as
    /// FBGEMM's dense TBE gives it (`DenseTableBatchedEmbeddingBagsCodegen`'s
    /// `weights.grad`): dense `[Σ rows, D]`, rows as in [`TableBatchedEmbeddingBags::weights`]
    /// (features sharing a table add into it; mean bags scale by 1 / size, weighted ones
    /// by the weight); with `options.sparse`, the touched rows only (what a
    /// sparse-gradient [`Optimizer`] steps). `grad_out` has the forward's shape. Every
    /// table must have one dim.
    ///
    /// # Errors
    /// What the forward refuses, a `grad_out` of another shape, or tables of several
    /// dims ([`Error::Unsupported`]), before any GPU work.
    pub async fn backward(
        &self,
        ctx: &Context,
        indices: Indices<'_>,
        offsets: Indices<'_>,
        per_sample_weights: Option<&[f32]>,
        grad_out: &GpuTensor,
        options: GradOptions,
    ) -> Result<Gradient> {
        self.backward_with(ctx, indices, offsets, per_sample_weights, grad_out, options, None).await
    }

    #[allow(clippy::too_many_arguments)] // backward's arguments and the batch sizes (VariableBatch::backward)
    async fn backward_with(
        &self,
        ctx: &Context,
        indices: Indices<'_>,
        offsets: Indices<'_>,
        per_sample_weights: Option<&[f32]>,
        grad_out: &GpuTensor,
        options: GradOptions,
        batch: Option<&[Vec<usize>]>,
    ) -> Result<Gradient> {
        let weights = self.weights()?;
        let prepared = self.prepare_backward(ctx, indices, offsets, per_sample_weights, grad_out, batch)?;
        table_gradient(ctx, &prepared.scatter(&weights, options), &prepared.grad, None).await
    }

    /// The backward and one step of `optimizer` (made for [`TableBatchedEmbeddingBags::weights`]):
    /// fused into the backward, as FBGEMM's training TBE does, for optimizers that take
    /// sparse gradients (SGD: FBGEMM's `EXACT_SGD`; Adagrad: `EXACT_ADAGRAD`; row-wise
    /// Adagrad: `EXACT_ROWWISE_ADAGRAD`; [`OptimizerKind::TbeAdam`]: `ADAM`;
    /// [`OptimizerKind::PartialRowwiseAdam`]; SparseAdam) when D is a multiple of 4: each
    /// touched row's gradient, summed over every feature of its table, updates the row
    /// at once. Other optimizers or dims take [`TableBatchedEmbeddingBags::backward`] and
    /// [`Optimizer::step`]; the result is the same.
    ///
    /// # Errors
    /// As [`TableBatchedEmbeddingBags::backward`] and [`Optimizer::step`].
    pub async fn step(
        &self,
        ctx: &Context,
        optimizer: &mut Optimizer,
        indices: Indices<'_>,
        offsets: Indices<'_>,
        per_sample_weights: Option<&[f32]>,
        grad_out: &GpuTensor,
    ) -> Result<()> {
        self.step_with(ctx, optimizer, indices, offsets, per_sample_weights, grad_out, None).await
    }

    #[allow(clippy::too_many_arguments)] // step's arguments and the batch sizes (VariableBatch::step)
    async fn step_with(
        &self,
        ctx: &Context,
        optimizer: &mut Optimizer,
        indices: Indices<'_>,
        offsets: Indices<'_>,
        per_sample_weights: Option<&[f32]>,
        grad_out: &GpuTensor,
        batch: Option<&[Vec<usize>]>,
    ) -> Result<()> {
        let weights = self.weights()?;
        let prepared = self.prepare_backward(ctx, indices, offsets, per_sample_weights, grad_out, batch)?;
        if optimizer.fuses(&weights, &prepared.grad) {
            let scatter = prepared.scatter(&weights, GradOptions::default().sparse(true));
            return ctx.run_now(|run| optimizer.record_fused_scatter(run, &weights, &scatter, &prepared.grad));
        }
        let options = GradOptions::default().sparse(optimizer.takes_sparse());
        let grad = table_gradient(ctx, &prepared.scatter(&weights, options), &prepared.grad, None).await?;
        optimizer.step(ctx, &weights, &grad).await
    }

    /// The checked bags as rows of the packed tables, and the output gradient in the
    /// bags' order (a pass over it; unpooled, it is already in index order).
    fn prepare_backward(
        &self,
        ctx: &Context,
        indices: Indices<'_>,
        offsets: Indices<'_>,
        per_sample_weights: Option<&[f32]>,
        grad_out: &GpuTensor,
        batch: Option<&[Vec<usize>]>,
    ) -> Result<PreparedBackward> {
        let d = self.specs[0].1;
        if batch.is_some() && self.mode == Pooling::None {
            return Err(Error::arg(
                "batch_size_per_feature_per_rank",
                "variable batch sizes need pooling_mode 'sum' or 'mean' (this layer's is 'none')",
            ));
        }
        let Bags { mut rows, bag_offsets, b, feature_bags } = self.checked_bags(ctx, indices, offsets, per_sample_weights, batch)?;
        let f = self.features();
        let vbe = batch.map(|sizes| VbeLayout::new(&self.feature_dims(), sizes, &feature_bags));
        let out_shape = match &vbe {
            Some(layout) => vec![layout.total],
            None if self.mode == Pooling::None => vec![rows.len(), d],
            None => vec![b, self.width],
        };
        check_grad(grad_out, &out_shape)?;
        // Table t's rows follow those of the tables before it.
        let mut first_rows = Vec::with_capacity(self.specs.len());
        let mut total = 0usize;
        for &(r, _) in &self.specs {
            first_rows.push(total);
            total += r;
        }
        for (t, bags) in feature_bags.windows(2).enumerate() {
            let first = first_rows[self.feature_table_map[t]] as i32;
            for row in &mut rows[bag_offsets[bags[0]] as usize..bag_offsets[bags[1]] as usize] {
                *row += first;
            }
        }
        let bags = feature_bags[f];
        let grad = if self.mode == Pooling::None {
            grad_out.clone()
        } else {
            let [seg] = grad_out.segments() else {
                return Err(Error::Unsupported(format!("a TBE output gradient of shape {:?} over several bindings", grad_out.shape())));
            };
            let bag_grads = GpuTensor::zeros_with(ctx, &[bags, d], DType::F32, d, bags.max(1) as u64)?;
            if bags > 0 {
                ctx.run_now(|run| {
                    let (kernel, params, extra) = match &vbe {
                        // Each bag's row from where FBGEMM's rank-major output holds it.
                        Some(layout) => {
                            let params = PassParams { rows: bags as u32, dim: d as u32, arg0: f as u32, ..Default::default() };
                            (&TBE_VBE_BAG_GRADS, params, vec![seg.buffer.clone(), upload(ctx, "tbe-vbe-layout", &layout.words)])
                        }
                        None => {
                            let params = PassParams { rows: b as u32, dim: d as u32, arg0: f as u32, ..Default::default() };
                            (&TBE_BAG_GRADS, params, vec![seg.buffer.clone()])
                        }
                    };
                    let call = Call { extra: &extra, ..Call::new(kernel, &[], Grid::Elements(1), params) };
                    record_flat(ctx, run, &call, None, Some(&bag_grads.segments()[0]), (bags * d) as u64);
                    Ok(())
                })?;
            }
            bag_grads
        };
        Ok(PreparedBackward { rows, bag_offsets, mode: self.mode, weights: per_sample_weights.map(<[f32]>::to_vec), grad })
    }

    /// Each index's row (no pooling): position p of bag `f·B + b` reads feature f's
    /// table; rows go out in index order.
    fn record_sequence(&self, run: &mut Recording<'_>, rows: &[i32], bag_offsets: &[u32], b: usize) -> Result<GpuTensor> {
        let ctx = run.context();
        let dims = self.feature_dims();
        // Per position: its feature, and its row's first element in the output.
        let (mut position_features, mut firsts) = (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len() + 1));
        let mut total = 0usize;
        for (bag, w) in bag_offsets.windows(2).enumerate() {
            for _ in w[0]..w[1] {
                position_features.push((bag / b) as u32);
                firsts.push(total as u32);
                total += dims[bag / b];
            }
        }
        firsts.push(total as u32);
        let same = dims.iter().all(|&d| d == dims[0]);
        let shape = if same { vec![rows.len(), dims[0]] } else { vec![total] };
        let out = GpuTensor::zeros(ctx, &shape, DType::F32, if same { dims[0] } else { 1 })?;
        if out.segments().len() > 1 || total >= u32::MAX as usize {
            return Err(Error::Unsupported(format!("an unpooled output of {total} values does not fit one binding")));
        }
        if total == 0 {
            return Ok(out);
        }
        run.scoped(|run| {
            let indices = Segment { buffer: upload(ctx, "tbe-indices", rows), first_row: 0, rows: rows.len() as u64, lease: None };
            // arg0: the common dim (0: rows of several dims, found by binary search).
            let params = PassParams {
                rows: 1,
                dim: total as u32,
                index_count: rows.len() as u32,
                arg0: if same { dims[0] as u32 } else { 0 },
                ..Default::default()
            };
            let (formats, constants) = self.format_binding(ctx);
            let extra = [
                self.tables.segments()[0].buffer.clone(),
                self.features.clone(),
                upload(ctx, "tbe-position-features", &position_features),
                ctx.placeholder_buffer().clone(),
                ctx.placeholder_buffer().clone(),
                upload(ctx, "tbe-row-firsts", &firsts),
                formats,
            ];
            let call = Call { extra: &extra, ..Call::new(&TBE_SEQUENCE, &constants, Grid::Elements(total as u64), params) };
            record_flat(ctx, run, &call, Some(&indices), Some(&out.segments()[0]), 1);
            Ok(())
        })?;
        Ok(out)
    }
}

/// Each feature's first bag (F + 1 entries) under variable batch sizes, checked against
/// `offsets_len`.
fn variable_feature_bags(batch_size_per_feature_per_rank: &[Vec<usize>], f: usize, offsets_len: usize) -> Result<Vec<usize>> {
    const NAME: &str = "batch_size_per_feature_per_rank";
    if batch_size_per_feature_per_rank.len() != f {
        return Err(Error::arg(NAME, format!("expected one list per feature ({f}), got {}", batch_size_per_feature_per_rank.len())));
    }
    let ranks = batch_size_per_feature_per_rank[0].len();
    if let Some((t, sizes)) = batch_size_per_feature_per_rank.iter().enumerate().find(|(_, s)| s.len() != ranks || s.is_empty()) {
        return Err(Error::arg(
            NAME,
            format!("feature {t} has {} ranks, feature 0 has {ranks}: every feature needs the same ranks, at least one", sizes.len()),
        ));
    }
    let mut feature_bags = Vec::with_capacity(f + 1);
    let mut total = 0usize;
    for sizes in batch_size_per_feature_per_rank {
        feature_bags.push(total);
        total = sizes
            .iter()
            .try_fold(total, |a, &s| a.checked_add(s))
            .filter(|&t| t < u32::MAX as usize)
            .ok_or_else(|| Error::arg(NAME, format!("batch sizes {sizes:?} overflow the bag count")))?;
    }
    feature_bags.push(total);
    if offsets_len != total + 1 {
        return Err(Error::arg("offsets", format!("expected Σ batch sizes + 1 = {} entries, got {offsets_len}", total + 1)));
    }
    Ok(feature_bags)
}

/// A [`TableBatchedEmbeddingBags`] with batch sizes per feature and rank (FBGEMM's VBE),
/// from [`TableBatchedEmbeddingBags::variable_batch`]: the backward and fused step of
/// [`TableBatchedEmbeddingBags::forward_vbe`].
///
/// ```
/// use wgpu_embed::{Block, Context, GpuTensor, Indices, Optimizer, OptimizerKind, Pooling, TableBatchedEmbeddingBags};
/// let ctx = Context::new().block()?;
/// let (a, b) = (vec![1.0f32; 4 * 4], vec![2.0f32; 3 * 4]);
/// let tbe = TableBatchedEmbeddingBags::from_pretrained(&ctx, &[(&a, 4, 4), (&b, 3, 4)], &[0, 1], Pooling::Sum)?;
/// // Feature 0: 1 bag from rank 0, 2 from rank 1; feature 1: 1 from each.
/// let sizes = [vec![1, 2], vec![1, 1]];
/// let (indices, offsets) = ([0i64, 1, 2, 0, 2], [0i64, 1, 2, 3, 4, 5]);
/// let (idx, off) = (Indices::i64(&indices, &[5]), Indices::i64(&offsets, &[6]));
/// let sgd = OptimizerKind::Sgd { lr: 0.5, momentum: 0.0, dampening: 0.0, nesterov: false, weight_decay: 0.0 };
/// let mut opt = Optimizer::new(&ctx, sgd, &tbe.weights()?)?;
/// let grad = GpuTensor::from_f32(&ctx, &[1.0; 20], &[20])?; // the forward's [Σ B_f,r · dim_f]
/// tbe.variable_batch(&sizes).step(&ctx, &mut opt, idx, off, None, &grad).block()?;
/// let w = tbe.weights()?.read_f32(&ctx).block()?;
/// assert_eq!(w[..4], [0.5; 4]); // table 0's row 0: 1 - 0.5 · 1
/// assert_eq!(w[12..16], [1.0; 4]); // its row 3 is in no bag
/// # Ok::<(), wgpu_embed::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct VariableBatch<'a> {
    layer: &'a TableBatchedEmbeddingBags,
    batch_size_per_feature_per_rank: &'a [Vec<usize>],
}

impl VariableBatch<'_> {
    /// [`TableBatchedEmbeddingBags::backward`] of the variable-batch forward: `grad_out`
    /// has its flat shape `[Σ_f Σ_r B_f,r · dim_f]`.
    ///
    /// # Errors
    /// What [`TableBatchedEmbeddingBags::forward_vbe`] and
    /// [`TableBatchedEmbeddingBags::backward`] refuse.
    pub async fn backward(
        &self,
        ctx: &Context,
        indices: Indices<'_>,
        offsets: Indices<'_>,
        per_sample_weights: Option<&[f32]>,
        grad_out: &GpuTensor,
        options: GradOptions,
    ) -> Result<Gradient> {
        let batch = Some(self.batch_size_per_feature_per_rank);
        self.layer.backward_with(ctx, indices, offsets, per_sample_weights, grad_out, options, batch).await
    }

    /// [`TableBatchedEmbeddingBags::step`] of the variable-batch forward (fused where
    /// the optimizer fuses).
    ///
    /// # Errors
    /// What [`VariableBatch::backward`] and [`Optimizer::step`] refuse.
    pub async fn step(
        &self,
        ctx: &Context,
        optimizer: &mut Optimizer,
        indices: Indices<'_>,
        offsets: Indices<'_>,
        per_sample_weights: Option<&[f32]>,
        grad_out: &GpuTensor,
    ) -> Result<()> {
        let batch = Some(self.batch_size_per_feature_per_rank);
        self.layer.step_with(ctx, optimizer, indices, offsets, per_sample_weights, grad_out, batch).await
    }
}
