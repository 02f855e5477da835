//! The crate's one sync/async rule: a call that must wait for the GPU (to read values
//! back, or to learn whether GPU-resident indices were in range) is `async` and has one
//! name; every other call records or submits and returns at once. Native code that
//! wants to wait runs the future to completion with [`Block::block`]; browsers await it.

/// Runs a future to completion on the calling thread (native only: a browser's main
/// thread cannot block).
///
/// ```
/// use wgpu_embed::{Block, Context, Embedding, Indices};
/// let ctx = Context::new().block()?;
/// let emb = Embedding::from_pretrained(&ctx, &[0.0, 1.0, 2.0, 3.0], 2, 2)?;
/// let rows = emb.forward(&ctx, Indices::i64(&[1], &[1]))?.read_f32(&ctx).block()?;
/// assert_eq!(rows, [2.0, 3.0]);
/// # Ok::<(), wgpu_embed::Error>(())
/// ```
#[cfg(not(target_arch = "wasm32"))]
pub trait Block: std::future::Future + Sized {
    /// Blocks until the future is ready and returns its output.
    fn block(self) -> Self::Output {
        pollster::block_on(self)
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl<F: std::future::Future> Block for F {}
