//! The bounds check of indices that already live on the GPU, run (and read back)
//! before any kernel that writes, so that a bad index changes nothing.

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::kernel::{common, ShaderFamily};
use crate::gpu::tensor::GpuTensor;

pub static FAMILY: ShaderFamily =
    ShaderFamily { name: "index_check", parts: &[common::GRID, common::PASS, include_str!("../../shaders/index_check.wgsl")] };

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use native::check_gpu_indices;

/// The check needs a blocking read-back: native only.
#[cfg(not(target_arch = "wasm32"))]
mod native {
    use super::*;
    use crate::gpu::kernel::{binding, Kernel};
    use crate::gpu::plan::{Call, Grid, PassParams, RowPlan};
    use crate::gpu::status::Status;
    use crate::gpu::tensor::DType;

    const CHECK: Kernel = Kernel::new(&FAMILY, "check", &[binding::PARAMS, binding::INPUT, binding::STATUS]);

    /// Checks that every value of a flat I32 tensor on the GPU is in `[0, limit)`, before
    /// any kernel that writes runs on it: the first bad one (lowest position) becomes
    /// [`Error::IndexOutOfRange`] with its position and value, and nothing has been written.
    pub(crate) async fn check_gpu_indices_async(ctx: &Context, name: &'static str, idx: &GpuTensor, limit: u64) -> Result<()> {
        if idx.dtype() != DType::I32 || idx.row_len() != 1 {
            return Err(Error::arg(
                name,
                format!("expected a flat I32 tensor on the GPU, got {:?} with rows of {}", idx.dtype(), idx.row_len()),
            ));
        }
        if idx.rows() >= u32::MAX as u64 {
            return Err(Error::arg(name, format!("{} indices is more than one call can address (limit {})", idx.rows(), u32::MAX - 1)));
        }
        let status = Status::new(ctx);
        ctx.scoped(|| {
            let mut encoder = ctx.encoder();
            let params = PassParams { num_embeddings: limit.min(u32::MAX as u64) as u32, ..Default::default() };
            let plan = RowPlan { input: Some(idx), aux: None, out: None, table: None, status: Some(&status) };
            plan.record(ctx, &mut encoder, &Call::new(&CHECK, &[], Grid::Elements(1), params), None);
            ctx.submit(encoder)
        })?;
        status.check_async(ctx, name, idx, limit).await
    }

    /// Blocking form of [`check_gpu_indices_async`] (native only).
    pub(crate) fn check_gpu_indices(ctx: &Context, name: &'static str, idx: &GpuTensor, limit: u64) -> Result<()> {
        pollster::block_on(check_gpu_indices_async(ctx, name, idx, limit))
    }
}

/// A browser cannot block on the read-back, so GPU-resident indices are refused there,
/// before any GPU work (host indices are checked on the host).
#[cfg(target_arch = "wasm32")]
pub(crate) fn check_gpu_indices(_ctx: &Context, name: &'static str, _idx: &GpuTensor, _limit: u64) -> Result<()> {
    Err(Error::Unsupported(format!(
        "`{name}` on the GPU: its bounds check needs a blocking read-back, which browsers forbid; pass the indices from the host"
    )))
}
