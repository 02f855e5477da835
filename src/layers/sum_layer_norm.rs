//! BERT's embedding block: `LayerNorm(Σ_k table_k[indices_k])` (word + position +
//! token type), in one fused kernel. The K tables are copied into one concatenated
//! table at construction (each index is offset by its table's first row), so the
//! kernel binds one table buffer. When that table is larger than one storage binding
//! the block falls back to accumulating each table segment into the output and
//! normalising it in place afterwards.

use crate::checkpoint::{Checkpoint, HostTable};
use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::plan::{rows_per_segment, Call, Grid, PassParams, RowPlan};
use crate::gpu::recording::Recording;
use crate::gpu::table::{TableAccess, TableSlice};
use crate::gpu::tensor::{DType, GpuTensor, Segment};
use crate::layers::indices::Indices;
use crate::layers::layer_norm::{
    check_eps, norm_constants, normalize_in_place, Affine, ACCUMULATE, LOOKUP_SUM_LAYER_NORM, WORDS_MAX_TABLES,
};
use crate::layers::table::table_format;

/// Names of the index arguments in errors.
const INDEX_NAMES: [&str; 8] = ["indices0", "indices1", "indices2", "indices3", "indices4", "indices5", "indices6", "indices7"];

fn index_name(k: usize) -> &'static str {
    INDEX_NAMES.get(k).copied().unwrap_or("indices")
}

/// `LayerNorm(Σ_k table_k[indices_k])` on the GPU.
#[derive(Debug, Clone)]
pub struct EmbeddingSumLayerNorm {
    /// All tables, one after another: `[Σ rows_k, dim]`.
    table: GpuTensor,
    first_rows: Vec<u64>,
    table_rows: Vec<usize>,
    dim: usize,
    eps: f32,
    affine: Affine,
}

impl EmbeddingSumLayerNorm {
    /// Builds the block from K tables of the same width (any of F32, F16, BF16; mixed
    /// formats are widened to f32, else the format is kept packed) and LayerNorm's
    /// parameters (either may be `None`): transformers' `BertEmbeddings` with K = 3
    /// (word, position, token type).
    ///
    /// ```
    /// use wgpu_embed::{Block, Context, EmbeddingSumLayerNorm, HostTable, Indices};
    /// let ctx = Context::new().block()?;
    /// let (word, pos) = (vec![0.5f32; 100 * 8], vec![0.25f32; 16 * 8]);
    /// let tables = [HostTable::f32(&word, 100, 8)?, HostTable::f32(&pos, 16, 8)?];
    /// let block = EmbeddingSumLayerNorm::new(&ctx, &tables, None, None, 1e-12)?;
    /// // ids [1, 3] and positions [1, 3] (positions may broadcast: [1, S] with ids [B, S]).
    /// let out = block.forward(&ctx, &[Indices::i64(&[7, 8, 9], &[1, 3]), Indices::i64(&[0, 1, 2], &[1, 3])])?;
    /// assert_eq!(out.shape(), &[1, 3, 8]);
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] for tables of different widths; [`Error::InvalidArgument`]
    /// for no tables, a bad `eps`, or gamma / beta of the wrong length.
    pub fn new(ctx: &Context, tables: &[HostTable<'_>], gamma: Option<&[f32]>, beta: Option<&[f32]>, eps: f32) -> Result<Self> {
        let Some(first) = tables.first() else {
            return Err(Error::arg("tables", "expected at least one table, got none"));
        };
        let dim = first.dim();
        for (k, t) in tables.iter().enumerate() {
            if t.dim() != dim {
                return Err(Error::ShapeMismatch(format!(
                    "table {k} has {} columns but table 0 has {dim}; all tables must have the same width",
                    t.dim()
                )));
            }
        }
        check_eps(eps)?;
        let total_rows: u64 = tables.iter().map(|t| t.rows() as u64).sum();
        if total_rows >= i32::MAX as u64 {
            return Err(Error::arg("tables", format!("{total_rows} rows in all is more than i32 indices can address")));
        }
        let affine = Affine::new(ctx, gamma, beta, dim)?;
        let same = tables.iter().all(|t| t.dtype() == first.dtype());
        let dtype = if same { first.dtype() } else { DType::F32 };
        let mut bytes = Vec::with_capacity(total_rows as usize * dim * dtype.size());
        let mut first_rows = Vec::with_capacity(tables.len());
        let mut row = 0u64;
        for t in tables {
            first_rows.push(row);
            row += t.rows() as u64;
            if same {
                bytes.extend_from_slice(t.bytes());
            } else {
                bytes.extend_from_slice(&t.f32_bytes());
            }
        }
        let table = GpuTensor::from_bytes(ctx, &bytes, &[total_rows as usize, dim], dtype, dim)?;
        Ok(EmbeddingSumLayerNorm { table, first_rows, table_rows: tables.iter().map(|t| t.rows()).collect(), dim, eps, affine })
    }

    /// The block over one table already on the GPU (`[V, D]`: K = 1, as
    /// `StableEmbedding` uses it).
    pub(crate) fn from_tensor(ctx: &Context, table: GpuTensor, gamma: Option<&[f32]>, beta: Option<&[f32]>, eps: f32) -> Result<Self> {
        let [rows, dim] = table.shape()[..] else {
            return Err(Error::arg("weight", format!("expected a [num_embeddings, embedding_dim] table, got shape {:?}", table.shape())));
        };
        check_eps(eps)?;
        if rows as u64 >= i32::MAX as u64 {
            return Err(Error::arg("weight", format!("{rows} rows is more than i32 indices can address")));
        }
        let affine = Affine::new(ctx, gamma, beta, dim)?;
        Ok(EmbeddingSumLayerNorm { table, first_rows: vec![0], table_rows: vec![rows], dim, eps, affine })
    }

    /// BERT's embedding block from a Hugging Face checkpoint: `{prefix}.word_embeddings.weight`,
    /// `{prefix}.position_embeddings.weight`, `{prefix}.token_type_embeddings.weight` and
    /// `{prefix}.LayerNorm.weight` / `.bias` (prefix `"embeddings"` for `BertModel`,
    /// `"bert.embeddings"` for its task heads). `eps` is `config.layer_norm_eps` (1e-12 for BERT).
    /// The forward takes indices in that order: input ids, position ids, token type ids.
    pub fn from_bert_checkpoint(ctx: &Context, checkpoint: &Checkpoint, prefix: &str, eps: f32) -> Result<Self> {
        let word = checkpoint.table(&format!("{prefix}.word_embeddings.weight"))?;
        let dim = word.dim();
        let position = checkpoint.table_with_dim(&format!("{prefix}.position_embeddings.weight"), None, dim)?;
        let token_type = checkpoint.table_with_dim(&format!("{prefix}.token_type_embeddings.weight"), None, dim)?;
        let gamma = checkpoint.vector(&format!("{prefix}.LayerNorm.weight"), dim)?;
        let beta = checkpoint.vector(&format!("{prefix}.LayerNorm.bias"), dim)?;
        Self::new(ctx, &[word, position, token_type], Some(&gamma), Some(&beta), eps)
    }

    /// Number of tables (K).
    pub fn num_tables(&self) -> usize {
        self.first_rows.len()
    }

    /// Rows of each table.
    pub fn table_rows(&self) -> &[usize] {
        &self.table_rows
    }

    /// Width of every table and of the output.
    pub fn embedding_dim(&self) -> usize {
        self.dim
    }

    /// The epsilon of the LayerNorm.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// The K tables, concatenated, on the GPU (`[Σ rows_k, dim]`).
    pub fn table(&self) -> &GpuTensor {
        &self.table
    }

    /// The first row of each table in the concatenated one.
    pub(crate) fn first_rows(&self) -> &[u64] {
        &self.first_rows
    }

    pub(crate) fn affine(&self) -> &Affine {
        &self.affine
    }

    /// Storage format of the (concatenated) table on the GPU.
    pub fn table_dtype(&self) -> DType {
        self.table.dtype()
    }

    /// `LayerNorm(Σ_k table_k[indices[k]])`. The index tensors broadcast against each
    /// other as PyTorch's `+` does (e.g. position ids `[1, S]` with input ids `[B, S]`);
    /// the result has shape `[*broadcast shape, dim]`.
    ///
    /// # Errors
    /// A wrong number of index tensors, shapes that do not broadcast, or an index outside
    /// its table ([`Error::IndexOutOfRange`] naming it), before any GPU work.
    pub fn forward(&self, ctx: &Context, indices: &[Indices<'_>]) -> Result<GpuTensor> {
        ctx.run_now(|run| self.record(run, indices))
    }

    /// [`EmbeddingSumLayerNorm::forward`] recorded into `run`: the output is usable by
    /// later calls of the recording at once.
    ///
    /// # Errors
    /// As [`EmbeddingSumLayerNorm::forward`].
    pub fn record(&self, run: &mut Recording<'_>, indices: &[Indices<'_>]) -> Result<GpuTensor> {
        let (rows, mut out_shape) = self.interleave(indices)?;
        out_shape.push(self.dim);
        self.record_rows(run, &rows, &out_shape)
    }

    /// The K index tensors checked, broadcast and interleaved (`rows[p * K + k]`, offset
    /// into the concatenated table), and their broadcast shape.
    pub(crate) fn interleave(&self, indices: &[Indices<'_>]) -> Result<(Vec<i32>, Vec<usize>)> {
        let k_count = self.num_tables();
        if indices.len() != k_count {
            return Err(Error::arg("indices", format!("expected {k_count} index tensors (one per table), got {}", indices.len())));
        }
        let mut shape: Vec<usize> = Vec::new();
        for (k, idx) in indices.iter().enumerate() {
            idx.check_shape(index_name(k))?;
            shape = broadcast(&shape, idx.shape)?;
        }
        // Broadcasting can multiply sizes: refuse what one call cannot address before allocating.
        let n = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .filter(|&n| n.checked_mul(k_count).is_some_and(|nk| (nk as u64) < u32::MAX as u64))
            .ok_or_else(|| {
                Error::arg(
                    "indices",
                    format!(
                        "the broadcast shape {shape:?} of {k_count} index tensors has more positions than one call can address (limit {})",
                        u32::MAX - 1
                    ),
                )
            })?;
        // Interleave the K indices of each output row, offset into the concatenated table.
        let mut rows = vec![0i32; n * k_count];
        for (k, idx) in indices.iter().enumerate() {
            let strides = broadcast_strides(idx.shape, &shape);
            let limit = self.table_rows[k] as u64;
            for (pos, out_row) in (0..n).map(|p| (source_position(p, &shape, &strides), p)) {
                let value = idx.data.get(pos);
                if value < 0 || value as u64 >= limit {
                    return Err(Error::IndexOutOfRange { name: index_name(k), position: pos as u64, value, num_embeddings: limit });
                }
                rows[out_row * k_count + k] = (self.first_rows[k] + value as u64) as i32;
            }
        }
        Ok((rows, shape))
    }

    fn record_rows(&self, run: &mut Recording<'_>, rows: &[i32], out_shape: &[usize]) -> Result<GpuTensor> {
        let ctx = run.context();
        let k_count = self.num_tables();
        let n = rows.len() / k_count;
        // Output and index segments pair up: both hold `per` rows.
        let format = table_format(self.table.dtype())?;
        let fused = self.table.segments().len() == 1;
        // The words form (CPU adapters) takes each row's indices as one vec4 word: padded to 4.
        let words = fused && format == 0.0 && k_count <= WORDS_MAX_TABLES && self.affine.words_form();
        let stride = if words { WORDS_MAX_TABLES } else { k_count };
        let per = rows_per_segment(ctx, &[(self.dim, DType::F32), (stride, DType::I32)])?;
        let idx = if words {
            let padded: Vec<i32> = rows.chunks(k_count).flat_map(|r| (0..stride).map(|k| r.get(k).copied().unwrap_or(0))).collect();
            GpuTensor::from_bytes_with(ctx, bytemuck::cast_slice(&padded), &[n, stride], DType::I32, stride, per)?
        } else {
            GpuTensor::from_bytes_with(ctx, bytemuck::cast_slice(rows), &[n, k_count], DType::I32, k_count, per)?
        };
        // The fused kernels write every row whole; the split path adds into zeros.
        let out = if fused {
            GpuTensor::for_overwrite_with(ctx, out_shape, DType::F32, self.dim, per)?
        } else {
            GpuTensor::zeros_with(ctx, out_shape, DType::F32, self.dim, per)?
        };
        let access = if words { TableAccess::rows_or_texture(run, &self.table) } else { TableAccess::rows(&self.table) };
        let params = PassParams { arg2: k_count as u32, ..self.affine.params(self.dim, self.eps) };
        let plan = RowPlan { input: Some(&idx), aux: None, out: Some(&out), table: Some(&access), status: None };
        run.scoped(|encoder| {
            if fused {
                let textured = access.texture().is_some() as u32 as f64;
                let [threads, row_words] = norm_constants(self.dim);
                let constants = [("TABLE_FORMAT", format), threads, row_words, ("TABLE_TEXTURE", textured)];
                let call = self.affine.norm_call(ctx, &LOOKUP_SUM_LAYER_NORM, &constants, params, words);
                plan.record(ctx, encoder, &call, None);
            } else {
                // Table split over several bindings: add table k's rows slice by slice, in
                // k order, then normalise in place.
                let constants = [("TABLE_FORMAT", format)];
                for k in 0..k_count {
                    let (lo, hi) = (self.first_rows[k], self.first_rows[k] + self.table_rows[k] as u64);
                    let call = Call {
                        grid: Grid::Elements(self.dim as u64),
                        ..self.affine.call(&ACCUMULATE, &constants, PassParams { arg3: k as u32, ..params })
                    };
                    let of_table_k = |_: &Segment, slices: &[TableSlice<'_>]| slices.iter().map(|s| s.lo < hi && s.hi > lo).collect();
                    plan.record(ctx, encoder, &call, Some(&of_table_k));
                }
                normalize_in_place(ctx, encoder, &out, self.dim, self.eps, &self.affine);
            }
            Ok(())
        })?;
        Ok(out)
    }
}

/// PyTorch's broadcast of two shapes, with its error message.
pub(crate) fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let len = a.len().max(b.len());
    let mut out = vec![0; len];
    for i in 0..len {
        let da = if i + a.len() >= len { a[i + a.len() - len] } else { 1 };
        let db = if i + b.len() >= len { b[i + b.len() - len] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            (x, y) => {
                return Err(Error::ShapeMismatch(format!(
                    "The size of tensor a ({x}) must match the size of tensor b ({y}) at non-singleton dimension {i}"
                )))
            }
        };
    }
    Ok(out)
}

/// Strides (in elements) of a row-major tensor of `shape` read as the broadcast `full` shape.
pub(crate) fn broadcast_strides(shape: &[usize], full: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; full.len()];
    let mut stride = 1;
    for i in (0..shape.len()).rev() {
        let j = i + full.len() - shape.len();
        strides[j] = if shape[i] == 1 { 0 } else { stride };
        stride *= shape[i];
    }
    strides
}

pub(crate) fn source_position(mut p: usize, full: &[usize], strides: &[usize]) -> usize {
    let mut pos = 0;
    for i in (0..full.len()).rev() {
        pos += (p % full[i]) * strides[i];
        p /= full[i];
    }
    pos
}
