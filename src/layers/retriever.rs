//! Top-k retrieval by inner product (REALM's retriever: `topk(queries @ table.T)`), or
//! by cosine, over a dense (F32, F16, BF16) or quantized table, with the selection on
//! the GPU: radix select of each query's k-th score, then only the k selected sorted.
//! Quantized tables are scored from their codes. Shader family: `retrieval.wgsl`.

use crate::error::{Error, Result};
use crate::gpu::context::{upload, words, Context};
use crate::gpu::kernel::binding::{OUT, PARAMS, TABLE, TEXTURE};
use crate::gpu::kernel::{common, Kernel, Role, ShaderFamily, Slot};
use crate::gpu::plan::{record_flat, Call, Grid, PassParams, SlicePlan};
use crate::gpu::recording::Recording;
use crate::gpu::sort::record_exclusive_scan;
use crate::gpu::sort::{check_list_len, record_sort};
use crate::gpu::table::TableAccess;
use crate::gpu::tensor::{DType, GpuTensor, Segment};
use crate::layers::table::{table_format, table_shape};
use crate::quant::table::{QuantizedTable, Scheme};

pub(crate) static FAMILY: ShaderFamily = ShaderFamily {
    name: "retrieval",
    parts: &[
        common::GRID,
        common::PASS,
        common::TABLE,
        common::CODES,
        common::QUANTIZED_TABLE,
        include_str!("../../shaders/retrieval.wgsl"),
    ],
};

const fn read(binding: u32, k: usize) -> (u32, Slot, Role) {
    (binding, Slot::Read, Role::Extra(k))
}
const fn write(binding: u32, k: usize) -> (u32, Slot, Role) {
    (binding, Slot::ReadWrite, Role::Extra(k))
}

const NORMALIZE_QUERIES: Kernel = Kernel::new(&FAMILY, "normalize_queries", &[PARAMS, OUT, read(14, 0)]);
// The scoring kernels: the table, the scores (`out`), the rows' sums of squares, the
// query block; quantized tables also their constants and scale planes.
const QUERY_BLOCK: (u32, Slot, Role) = (24, Slot::Uniform, Role::Extra(1));
const SCORE_DENSE: Kernel = Kernel::new(&FAMILY, "score_dense", &[PARAMS, TABLE, OUT, write(13, 0), QUERY_BLOCK]);
const SCORE_DENSE_WORDS: Kernel = Kernel::new(&FAMILY, "score_dense_words", &[PARAMS, TABLE, TEXTURE, OUT, write(13, 0), QUERY_BLOCK]);
const QUANTIZED_SCORING: &[(u32, Slot, Role)] =
    &[PARAMS, TABLE, OUT, write(13, 0), QUERY_BLOCK, read(9, 2), (10, Slot::Read, Role::Table(1)), (11, Slot::Read, Role::Table(2))];
const SCORE_QUANTIZED: Kernel = Kernel::new(&FAMILY, "score_quantized", QUANTIZED_SCORING);
const SCORE_INT8_WORDS: Kernel =
    Kernel::new(&FAMILY, "score_int8_words", &[PARAMS, TABLE, TEXTURE, OUT, write(13, 0), QUERY_BLOCK, read(9, 2), read(10, 3)]);
/// Words of the query block (`BLOCK_WORDS` of the shader): 16 KiB.
const BLOCK_WORDS: u64 = 1024;
const SCORE_KEYS: Kernel = Kernel::new(&FAMILY, "score_keys", &[PARAMS, OUT, read(13, 0), write(15, 1)]);
const RADIX_HISTOGRAM: Kernel = Kernel::new(&FAMILY, "radix_histogram", &[PARAMS, read(15, 0), write(16, 1), read(17, 2)]);
const RADIX_PICK: Kernel = Kernel::new(&FAMILY, "radix_pick", &[PARAMS, read(16, 0), write(17, 1)]);
const TILE_COUNTS: Kernel = Kernel::new(&FAMILY, "tile_counts", &[PARAMS, read(15, 0), read(17, 1), write(18, 2), write(19, 3)]);
const COMPACT_SELECTED: Kernel =
    Kernel::new(&FAMILY, "compact_selected", &[PARAMS, read(15, 0), read(17, 1), read(18, 2), read(19, 3), write(20, 4), write(21, 5)]);
const QUERY_OF_ENTRIES: Kernel = Kernel::new(&FAMILY, "query_of_entries", &[PARAMS, read(22, 0), write(23, 1)]);
/// Steps 2-5 in one workgroup per query, for small tables and k (`select_small`).
const SELECT_SMALL: Kernel =
    Kernel::new(&FAMILY, "select_small", &[PARAMS, OUT, read(13, 0), read(14, 1), write(15, 2), read(25, 3), write(23, 4)]);
/// `SMALL_K` of the shader: the most rows `select_small` keeps per query.
const SMALL_K: usize = 256;
/// Tables of at most this many rows are selected by `select_small`: one workgroup
/// reads a query's keys five times, which costs less than the dozen passes of the
/// grid-wide selection below this size (on GPUs and CPU adapters alike).
const SMALL_N: u64 = 32_768;
const WRITE_TOPK: Kernel = Kernel::new(&FAMILY, "write_topk", &[PARAMS, OUT, read(20, 0), read(21, 1), read(22, 2), write(23, 3)]);

/// Keys a selection workgroup covers (`TILE` of the shader).
const TILE: u64 = 256;

/// How queries and rows are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// The inner product.
    Dot,
    /// The inner product of L2-normalised rows and queries (`F.normalize`, eps 1e-12).
    Cosine,
}

crate::names::spelled_enum!(Metric, "metric", { Dot => "dot", Cosine => "cosine" });

impl Metric {
    fn code(self) -> u32 {
        match self {
            Metric::Dot => 0,
            Metric::Cosine => 1,
        }
    }
}

/// The table a [`Retriever`] scores.
#[derive(Debug, Clone)]
// One per retriever, made once: a box would only add an indirection to every match.
#[allow(clippy::large_enum_variant)]
pub enum RetrievalTable {
    /// F32, F16 or BF16 `[N, D]`.
    Dense(GpuTensor),
    /// Scored from its codes, never dequantized in memory.
    Quantized(QuantizedTable),
}

/// The `k` best rows of each query: `scores` F32 `[Q, k]`, descending, and their rows
/// `indices` I32 `[Q, k]` (equal scores in row order).
#[derive(Debug, Clone)]
pub struct TopK {
    /// F32 `[Q, k]`, descending per query.
    pub scores: GpuTensor,
    /// I32 `[Q, k]`: the rows of those scores.
    pub indices: GpuTensor,
}

/// Scores queries against every row of a table and keeps the best `k` per query.
#[derive(Debug, Clone)]
pub struct Retriever {
    table: RetrievalTable,
    metric: Metric,
    rows: usize,
    dim: usize,
    /// int8 codes seen as a dense `[N, D]` U8 table (see `quantized`).
    int8_rows: Option<GpuTensor>,
}

impl Retriever {
    /// A retriever over a dense `[N, D]` table (F32, F16 or BF16): REALM's
    /// `topk(queries @ table.T)`.
    ///
    /// ```
    /// use wgpu_embed::{Block, Context, GpuTensor, Metric, Retriever};
    /// let ctx = Context::new().block()?;
    /// let table = GpuTensor::from_f32(&ctx, &[1.0, 0.0, 0.0, 1.0, 0.7, 0.7], &[3, 2])?;
    /// let top = Retriever::new(table, Metric::Dot)?.search(&ctx, &[0.0, 2.0], 2)?;
    /// let rows: Vec<i32> = bytemuck::pod_collect_to_vec(&top.indices.read_bytes(&ctx).block()?);
    /// assert_eq!(rows, [1, 2]); // scores 2.0, 1.4
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a table that is not
    /// a 2-D float table.
    pub fn new(table: GpuTensor, metric: Metric) -> Result<Self> {
        let (rows, dim) = table_shape(&table)?;
        table_format(table.dtype())?;
        Ok(Retriever { table: RetrievalTable::Dense(table), metric, rows, dim, int8_rows: None })
    }

    /// A retriever over a quantized table.
    pub fn quantized(table: QuantizedTable, metric: Metric) -> Self {
        let (rows, dim) = (table.num_embeddings(), table.embedding_dim());
        // int8 codes in one buffer, rows of whole 16-code words, scales in one binding:
        // read as a dense table of byte rows, 16 codes a word.
        let int8 = matches!(table.scheme(), Scheme::Int8Rowwise | Scheme::Int8Blockwise);
        let int8_rows =
            if int8 && dim.is_multiple_of(16) && table.scales().segments().len() == 1 { table.codes().rows_view(dim) } else { None };
        Retriever { table: RetrievalTable::Quantized(table), metric, rows, dim, int8_rows }
    }

    /// Rows of the table.
    pub fn num_rows(&self) -> usize {
        self.rows
    }

    /// Columns of the table (and of each query).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The table.
    pub fn table(&self) -> &RetrievalTable {
        &self.table
    }

    /// The best `k` rows for each of the `Q` host queries (`queries`: `Q × D` values,
    /// row-major).
    pub fn search(&self, ctx: &Context, queries: &[f32], k: usize) -> Result<TopK> {
        if self.dim == 0 || !queries.len().is_multiple_of(self.dim) {
            return Err(Error::arg(
                "queries",
                format!("expected a multiple of the table's {} columns, got {} values", self.dim, queries.len()),
            ));
        }
        let q = queries.len() / self.dim;
        self.check_k(k)?;
        let queries = if q == 0 {
            GpuTensor::zeros(ctx, &[0, self.dim], DType::F32, self.dim)?
        } else {
            GpuTensor::from_f32(ctx, queries, &[q, self.dim])?
        };
        self.search_gpu(ctx, &queries, k)
    }

    /// The best `k` rows for queries already on the GPU (F32 `[Q, D]`), for example an
    /// `EmbeddingBag` mean: nothing is read back.
    ///
    /// # Errors
    /// Queries of another shape or type, `k` over the table's rows, or a table whose one
    /// query's scores do not fit a binding, before any GPU work.
    pub fn search_gpu(&self, ctx: &Context, queries: &GpuTensor, k: usize) -> Result<TopK> {
        ctx.run_now(|run| self.record(run, queries, k))
    }

    /// [`Retriever::search_gpu`] recorded into `run`: the top-k tensors are usable by
    /// later calls of the recording (e.g. an `Embedding` lookup of the rows) at once.
    ///
    /// # Errors
    /// As [`Retriever::search_gpu`].
    pub fn record(&self, run: &mut Recording<'_>, queries: &GpuTensor, k: usize) -> Result<TopK> {
        let ctx = run.context();
        let d = self.dim;
        if queries.dtype() != DType::F32 || queries.shape().len() != 2 || queries.shape()[1] != d {
            return Err(Error::arg(
                "queries",
                format!(
                    "expected F32 queries of shape [Q, {d}] (the table's columns), got {:?} of shape {:?}",
                    queries.dtype(),
                    queries.shape()
                ),
            ));
        }
        self.check_k(k)?;
        let (q, n) = (queries.shape()[0], self.rows);
        // A batch of queries: its scores and keys fit a binding, its selected entries
        // one sort, its queries and outputs one segment each.
        let bind = ctx.max_binding_size();
        let batch = (bind / (4 * n as u64)).min(bind / (8 * k.max(1) as u64)).min(bind / (4 * d as u64)).min(q.max(1) as u64);
        if batch == 0 {
            return Err(Error::Unsupported(format!(
                "a table of {n} rows: one query's scores ({} bytes) do not fit a binding of {bind} bytes",
                4 * n
            )));
        }
        check_list_len(ctx, "k", batch * k as u64, 8)?;
        let scores = GpuTensor::zeros_with(ctx, &[q, k], DType::F32, k, batch)?;
        let indices = GpuTensor::zeros_with(ctx, &[q, k], DType::I32, k, batch)?;
        if q == 0 || k == 0 {
            return Ok(TopK { scores, indices });
        }
        run.scoped(|run| {
            let queries = queries.resegment(ctx, run, batch)?;
            for (b, seg) in queries.segments().iter().enumerate() {
                let out = [&scores.segments()[b], &indices.segments()[b]];
                self.record_batch(ctx, run, seg, k, out)?;
            }
            Ok(())
        })?;
        Ok(TopK { scores, indices })
    }

    fn check_k(&self, k: usize) -> Result<()> {
        if k > self.rows {
            return Err(Error::arg("k", format!("selected index k out of range: k = {k} is larger than the table's {} rows", self.rows)));
        }
        Ok(())
    }

    /// Records the search of one batch of queries (`queries`: its rows) into the output
    /// segments `out` (scores, indices) holding the same rows.
    fn record_batch(&self, ctx: &Context, encoder: &mut Recording<'_>, queries: &Segment, k: usize, out: [&Segment; 2]) -> Result<()> {
        let (qb, n, d) = (queries.rows, self.rows as u64, self.dim as u64);
        let base = PassParams {
            dim: d as u32,
            num_embeddings: n as u32,
            mode: self.metric.code(),
            arg0: qb as u32,
            arg1: n as u32,
            arg2: k as u32,
            ..Default::default()
        };
        let small = n <= SMALL_N && k <= SMALL_K;
        let raw_queries = queries.buffer.clone();
        // 1. Scores (cosine: from normalised queries, divided by the row norms below;
        // small selections divide by the query norm themselves).
        let queries = match self.metric {
            Metric::Cosine if !small => {
                let unit = words(ctx, "unit-queries", qb * d);
                let call =
                    Call { extra: std::slice::from_ref(&queries.buffer), ..Call::new(&NORMALIZE_QUERIES, &[], Grid::Elements(1), base) };
                record_flat(ctx, encoder, &call, None, Some(&flat(&unit, qb * d)), qb);
                unit
            }
            _ => queries.buffer.clone(),
        };
        let scores = words(ctx, "scores", qb * n);
        let row_sq = words(ctx, "row-squares", n);
        let scores_out = flat(&scores, qb * n);
        // The kernel and the table's slices.
        let (kernel, access, constants, units_per_row) = match &self.table {
            RetrievalTable::Dense(table) => {
                let per_word = if table.dtype() == DType::F32 { 4 } else { 8 };
                let whole_words = self.dim.is_multiple_of(per_word);
                // Texture copies (CPU adapters) hold rows of whole words only.
                let access = if whole_words { TableAccess::rows_or_texture(encoder, table) } else { TableAccess::rows(table) };
                let constants =
                    vec![("TABLE_FORMAT", table_format(table.dtype())?), ("TABLE_TEXTURE", access.texture().is_some() as u32 as f64)];
                (if whole_words { &SCORE_DENSE_WORDS } else { &SCORE_DENSE }, access, constants, 1)
            }
            RetrievalTable::Quantized(t) => {
                let scheme = ("SCHEME", t.scheme().kernel_scheme() as f64);
                match &self.int8_rows {
                    Some(rows) => {
                        let access = TableAccess::rows_or_texture(encoder, rows);
                        let constants = vec![scheme, ("TABLE_FORMAT", 0.0), ("TABLE_TEXTURE", access.texture().is_some() as u32 as f64)];
                        (&SCORE_INT8_WORDS, access, constants, 1)
                    }
                    None => (&SCORE_QUANTIZED, t.access(), vec![scheme], d),
                }
            }
        };
        let (group, consts, scales) = match &self.table {
            RetrievalTable::Quantized(t) => (t.group(), t.consts.clone(), t.scales().segments()[0].buffer.clone()),
            RetrievalTable::Dense(_) => (0, words(ctx, "unused", 1), words(ctx, "unused", 1)),
        };
        // Query blocks: `count` queries' columns [col0, col0 + cols), copied into the
        // uniform block before their passes.
        let cols = d.min(4 * BLOCK_WORDS);
        let count = (4 * BLOCK_WORDS / cols).min(qb);
        let block = ctx.device().create_buffer(&wgpu::BufferDescriptor {
            label: Some("query-block"),
            size: BLOCK_WORDS * 16,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let extra = [row_sq.clone(), block.clone(), consts, scales];
        for q0 in (0..qb).step_by(count as usize) {
            let in_block = count.min(qb - q0);
            for col0 in (0..d).step_by(cols as usize) {
                if cols == d {
                    encoder.copy_buffer_to_buffer(&queries, q0 * d * 4, &block, 0, in_block * d * 4);
                } else {
                    encoder.copy_buffer_to_buffer(&queries, (q0 * d + col0) * 4, &block, 0, cols.min(d - col0) * 4);
                }
                let p = PassParams { group, arg3: q0 as u32, index_first: col0 as u32, index_count: in_block as u32, ..base };
                let call = Call { extra: &extra, ..Call::new(kernel, &constants, Grid::Elements(1), p) };
                SlicePlan { table: &access, input: None, out: Some(&scores_out) }.record_rows(ctx, encoder, &call, units_per_row);
            }
        }
        let keys = words(ctx, "keys", qb * n);
        if small {
            let extra = [row_sq, raw_queries, keys, scores, out[1].buffer.clone()];
            let call = Call { extra: &extra, ..Call::new(&SELECT_SMALL, &[], Grid::RowsPerGroup(1), PassParams { arg3: 0, ..base }) };
            record_flat(ctx, encoder, &call, None, Some(out[0]), qb);
            return Ok(());
        }
        // 2. Keys.
        let call = Call { extra: &[row_sq, keys.clone()], ..Call::new(&SCORE_KEYS, &[], Grid::Elements(1), base) };
        record_flat(ctx, encoder, &call, None, Some(&scores_out), qb * n);
        // 3. Radix select of the k-th key: (prefix, still needed) per query.
        let state = upload(ctx, "select-state", &vec![[0u32, k as u32]; qb as usize]);
        let tiles = qb * n.div_ceil(TILE);
        for round in 0..4 {
            let counts = words(ctx, "digit-counts", qb * 256);
            let p = PassParams { arg3: round, ..base };
            let extra = [keys.clone(), counts.clone(), state.clone()];
            record_flat(
                ctx,
                encoder,
                &Call { extra: &extra, ..Call::new(&RADIX_HISTOGRAM, &[], Grid::RowsPerGroup(1), p) },
                None,
                None,
                tiles,
            );
            let extra = [counts, state.clone()];
            record_flat(ctx, encoder, &Call { extra: &extra, ..Call::new(&RADIX_PICK, &[], Grid::Elements(1), p) }, None, None, qb);
        }
        // 4. The selected keys and rows, in row order.
        let (lt, eq) = (words(ctx, "tile-below", tiles), words(ctx, "tile-equal", tiles));
        let extra = [keys.clone(), state.clone(), lt.clone(), eq.clone()];
        record_flat(ctx, encoder, &Call { extra: &extra, ..Call::new(&TILE_COUNTS, &[], Grid::RowsPerGroup(1), base) }, None, None, tiles);
        let (lt, eq) = (record_exclusive_scan(ctx, encoder, &lt, tiles), record_exclusive_scan(ctx, encoder, &eq, tiles));
        let m = qb * k as u64;
        let (selected_keys, selected_rows) = (words(ctx, "selected-keys", m), words(ctx, "selected-rows", m));
        let extra = [keys, state, lt, eq, selected_keys.clone(), selected_rows.clone()];
        record_flat(
            ctx,
            encoder,
            &Call { extra: &extra, ..Call::new(&COMPACT_SELECTED, &[], Grid::RowsPerGroup(1), base) },
            None,
            None,
            tiles,
        );
        // 5. Sorted by key, then (stably) by query; written out.
        let entries = upload(ctx, "entries", &(0..m as u32).collect::<Vec<u32>>());
        let (_, mut order) = record_sort(ctx, encoder, &selected_keys, &entries, m);
        if qb > 1 {
            let query_keys = words(ctx, "entry-queries", m);
            let call = Call { extra: &[order.clone(), query_keys.clone()], ..Call::new(&QUERY_OF_ENTRIES, &[], Grid::Elements(1), base) };
            record_flat(ctx, encoder, &call, None, None, m);
            order = record_sort(ctx, encoder, &query_keys, &order, m).1;
        }
        let extra = [selected_keys, selected_rows, order, out[1].buffer.clone()];
        let p = PassParams { arg3: 0, ..base };
        record_flat(ctx, encoder, &Call { extra: &extra, ..Call::new(&WRITE_TOPK, &[], Grid::Elements(1), p) }, None, Some(out[0]), m);
        Ok(())
    }
}

fn flat(buffer: &wgpu::Buffer, rows: u64) -> Segment {
    Segment { buffer: buffer.clone(), first_row: 0, rows, lease: None }
}
