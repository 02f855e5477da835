//! bitsandbytes' `StableEmbedding`: a lookup followed by LayerNorm (eps 1e-5), run as
//! one fused kernel (the K = 1 case of [`EmbeddingSumLayerNorm`]).

use crate::checkpoint::HostTable;
use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::tensor::{DType, GpuTensor};
use crate::layers::indices::{normalize_padding_idx, Indices};
use crate::layers::init::{random_table, Draw};
use crate::layers::sum_layer_norm::EmbeddingSumLayerNorm;
use crate::layers::table::EmbeddingOptions;

/// LayerNorm's eps in bitsandbytes' StableEmbedding (`torch.nn.LayerNorm`'s default).
pub const STABLE_EMBEDDING_EPS: f32 = 1e-5;

/// `bnb.nn.StableEmbedding` forward: `LayerNorm(weight[indices])`.
#[derive(Debug, Clone)]
pub struct StableEmbedding {
    block: EmbeddingSumLayerNorm,
    num_embeddings: usize,
    embedding_dim: usize,
    padding_idx: Option<u32>,
}

impl StableEmbedding {
    /// A fresh layer as `bnb.nn.StableEmbedding(num_embeddings, embedding_dim,
    /// padding_idx)` makes it: the table drawn from xavier-uniform (`bound = sqrt(6 /
    /// (num_embeddings + embedding_dim))`) on the GPU, seeded by `options.seed`, with the
    /// padding row zeroed; gamma = 1, beta = 0.
    ///
    /// ```
    /// use wgpu_embed::{Block, Context, EmbeddingOptions, Indices, StableEmbedding};
    /// let ctx = Context::new().block()?;
    /// let layer = StableEmbedding::new(&ctx, 1000, 32, EmbeddingOptions::default().seed(3))?;
    /// let out = layer.forward(&ctx, Indices::i64(&[4, 8], &[2]))?.read_f32(&ctx).block()?;
    /// let mean = out[..32].iter().sum::<f32>() / 32.0;
    /// assert!(mean.abs() < 1e-5); // each row comes out normalised
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `embedding_dim` 0 or a `padding_idx` outside the
    /// table; [`Error::Unsupported`] for `max_norm` (this layer does not renormalise).
    pub fn new(ctx: &Context, num_embeddings: usize, embedding_dim: usize, options: EmbeddingOptions) -> Result<Self> {
        if let Some(max_norm) = options.max_norm {
            return Err(Error::Unsupported(format!("StableEmbedding with max_norm={max_norm}: this layer does not renormalise rows")));
        }
        let draw = Draw::xavier_uniform(num_embeddings, embedding_dim);
        let padding = normalize_padding_idx(options.padding_idx, num_embeddings)?;
        let weight = random_table(ctx, num_embeddings, embedding_dim, draw, padding, options.seed)?;
        let gamma = vec![1.0f32; embedding_dim];
        let beta = vec![0.0f32; embedding_dim];
        let block = EmbeddingSumLayerNorm::from_tensor(ctx, weight, Some(&gamma), Some(&beta), STABLE_EMBEDDING_EPS)?;
        Ok(StableEmbedding { block, num_embeddings, embedding_dim, padding_idx: padding })
    }

    /// A layer over a trained table (F32, or F16/BF16 kept packed) and LayerNorm
    /// parameters (either may be `None`: no affine part), with LayerNorm's `eps`.
    pub fn from_pretrained(
        ctx: &Context,
        weight: HostTable<'_>,
        padding_idx: Option<i64>,
        gamma: Option<&[f32]>,
        beta: Option<&[f32]>,
        eps: f32,
    ) -> Result<Self> {
        let (num_embeddings, embedding_dim) = (weight.rows(), weight.dim());
        let padding_idx = normalize_padding_idx(padding_idx, num_embeddings)?;
        let block = EmbeddingSumLayerNorm::new(ctx, &[weight], gamma, beta, eps)?;
        Ok(StableEmbedding { block, num_embeddings, embedding_dim, padding_idx })
    }

    /// Rows in the table.
    pub fn num_embeddings(&self) -> usize {
        self.num_embeddings
    }

    /// Columns of the table.
    pub fn embedding_dim(&self) -> usize {
        self.embedding_dim
    }

    /// The normalised padding index. As in bitsandbytes, the forward returns the
    /// normalised stored row for it; it only zeroes the row at initialisation.
    pub fn padding_idx(&self) -> Option<u32> {
        self.padding_idx
    }

    /// The table on the GPU.
    pub fn weight(&self) -> &GpuTensor {
        self.block.table()
    }

    /// Storage format of the table on the GPU.
    pub(crate) fn block(&self) -> &EmbeddingSumLayerNorm {
        &self.block
    }

    /// The table's element type as stored (F32, F16 or BF16).
    pub fn table_dtype(&self) -> DType {
        self.block.table_dtype()
    }

    /// `LayerNorm(weight[indices])`, shape `[*indices, embedding_dim]`.
    pub fn forward(&self, ctx: &Context, indices: Indices<'_>) -> Result<GpuTensor> {
        indices.check_shape("indices")?;
        // Name the argument as the single-table layer knows it.
        self.block.forward(ctx, &[indices]).map_err(|e| match e {
            Error::IndexOutOfRange { position, value, num_embeddings, .. } => {
                Error::IndexOutOfRange { name: "indices", position, value, num_embeddings }
            }
            other => other,
        })
    }
}
