//! bitsandbytes' `StableEmbedding`: a lookup followed by LayerNorm (eps 1e-5), run as
//! one fused kernel (the K = 1 case of [`EmbeddingSumLayerNorm`]).

use crate::checkpoint::HostTable;
use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::tensor::{DType, GpuTensor};
use crate::layers::indices::{normalize_padding_idx, Indices};
use crate::layers::sum_layer_norm::EmbeddingSumLayerNorm;

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
    /// A freshly initialised layer as bitsandbytes makes it: the table drawn from
    /// xavier-uniform (`bound = sqrt(6 / (num_embeddings + embedding_dim))`) with the
    /// padding row zeroed, gamma = 1, beta = 0. The draw is deterministic in `seed`
    /// (it is not torch's generator). Initialisation is done on the host.
    pub fn new(ctx: &Context, num_embeddings: usize, embedding_dim: usize, padding_idx: Option<i64>, seed: u64) -> Result<Self> {
        if embedding_dim == 0 {
            return Err(Error::arg("embedding_dim", "expected a positive embedding_dim, got 0"));
        }
        let padding = normalize_padding_idx(padding_idx, num_embeddings)?;
        let weight = xavier_uniform(num_embeddings, embedding_dim, padding, seed);
        let gamma = vec![1.0f32; embedding_dim];
        let beta = vec![0.0f32; embedding_dim];
        Self::from_pretrained(
            ctx,
            HostTable::f32(&weight, num_embeddings, embedding_dim)?,
            padding_idx,
            Some(&gamma),
            Some(&beta),
            STABLE_EMBEDDING_EPS,
        )
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

/// xavier_uniform_ on a `[rows, dim]` table (fan_in = dim, fan_out = rows), padding row zeroed.
fn xavier_uniform(rows: usize, dim: usize, padding: Option<u32>, seed: u64) -> Vec<f32> {
    let bound = (6.0 / (rows + dim) as f64).sqrt();
    let mut state = seed;
    let mut weight: Vec<f32> = (0..rows * dim)
        .map(|_| {
            // splitmix64: a well-mixed, reproducible stream.
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
            ((unit * 2.0 - 1.0) * bound) as f32
        })
        .collect();
    if let Some(p) = padding {
        weight[p as usize * dim..(p as usize + 1) * dim].fill(0.0);
    }
    weight
}
