//! # wgpu-embed
//!
//! Embedding layers with PyTorch / bitsandbytes semantics, run as WGSL compute
//! shaders through wgpu on any GPU (Vulkan, Metal, DX12, GL) and in the browser.
//!
//! ```no_run
//! use wgpu_embed::{Context, Embedding, Indices};
//! let ctx = Context::new()?;
//! let table: Vec<f32> = (0..10 * 4).map(|i| i as f32).collect();
//! let emb = Embedding::from_pretrained(&ctx, &table, 10, 4)?;
//! let out = emb.forward(&ctx, Indices::i64(&[1, 2, 9], &[3]))?;
//! assert_eq!(out.to_vec_f32(&ctx)?[..4], [4.0, 5.0, 6.0, 7.0]);
//! # Ok::<(), wgpu_embed::Error>(())
//! ```

pub mod bench;
pub mod axial;
pub mod bert;
pub mod checkpoint;
pub mod context;
pub mod embedding;
pub mod embedding_bag;
pub mod error;
pub mod indices;
pub mod layer_norm;
#[cfg(not(target_arch = "wasm32"))] // blocking read-backs: the CLI's, not the browser's
pub mod ops;
pub mod quantize;
pub mod quantized;
#[cfg(not(target_arch = "wasm32"))] // blocking read-backs: the CLI's, not the browser's
pub mod runner;
pub mod stable_embedding;
pub(crate) mod status;
pub(crate) mod table_texture;
pub mod tensor;

pub use axial::AxialPositionEmbedding;
pub use bert::{EmbeddingSumLayerNorm, WordPiece};
pub use checkpoint::{Checkpoint, HostTable};
pub use context::{Context, ContextOptions, TableReads};
pub use embedding::{Embedding, MaxNorm};
pub use embedding_bag::{BagMode, EmbeddingBag};
pub use error::{Error, Result};
pub use indices::{IndexData, Indices};
pub use layer_norm::LayerNorm;
pub use quantize::{dequantize_blockwise, quantize_blockwise, Blockwise, CodeMap, FourBit};
pub use quantized::{QuantizedEmbedding, QuantizedEmbeddingBag, QuantizedTable, Scheme};
pub use stable_embedding::{StableEmbedding, STABLE_EMBEDDING_EPS};
pub use tensor::{DType, GpuTensor};

/// Every shader family, by file name, for tools that validate them.
pub const SHADERS: &[(&str, &str)] = &[
    ("embedding.wgsl", include_str!("../shaders/embedding.wgsl")),
    ("embedding_bag.wgsl", include_str!("../shaders/embedding_bag.wgsl")),
    ("layer_norm.wgsl", include_str!("../shaders/layer_norm.wgsl")),
    ("axial.wgsl", include_str!("../shaders/axial.wgsl")),
    ("copy.wgsl", include_str!("../shaders/copy.wgsl")),
    ("index_check.wgsl", include_str!("../shaders/index_check.wgsl")),
    ("quantize.wgsl", include_str!("../shaders/quantize.wgsl")),
    ("quantized_embedding.wgsl", include_str!("../shaders/quantized_embedding.wgsl")),
];
