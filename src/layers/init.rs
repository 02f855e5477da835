//! Fresh tables drawn on the GPU, as PyTorch's constructors initialise them:
//! `N(mean, std²)` (`torch.nn.Embedding`, `EmbeddingBag`: `normal_()`) or `U(-b, b)`
//! (bitsandbytes' `StableEmbedding`: `xavier_uniform_`), with the padding row zeroed.
//! Shader family: `init.wgsl`. The draw is a counter-based hash of (seed, element), so
//! a table is the same on every device and however it is split into segments; it is
//! seeded, not bit-compatible with `torch.manual_seed`.

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::kernel::{common, Kernel, Role, ShaderFamily, Slot};
use crate::gpu::tensor::{DType, GpuTensor};

pub(crate) static FAMILY: ShaderFamily = ShaderFamily { name: "init", parts: &[common::GRID, include_str!("../../shaders/init.wgsl")] };

const FILL_RANDOM: Kernel = Kernel::new(&FAMILY, "fill_random", &[(0, Slot::Uniform, Role::Params), (1, Slot::ReadWrite, Role::Out)]);

/// `InitParams` of `init.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct InitParams {
    count: u32,
    first_lo: u32,
    first_hi: u32,
    seed_lo: u32,
    seed_hi: u32,
    kind: u32,
    dim: u32,
    padding_row: u32,
    scale: f32,
    mean: f32,
    pad: [u32; 2],
}

const NO_ROW: u32 = u32::MAX;

/// The distribution of a fresh table's elements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Draw {
    /// `N(mean, std²)`.
    Normal { mean: f32, std: f32 },
    /// `U(-bound, bound)`.
    Uniform { bound: f32 },
}

impl Draw {
    /// `xavier_uniform_` of a `[rows, dim]` table: `bound = sqrt(6 / (rows + dim))`.
    pub(crate) fn xavier_uniform(rows: usize, dim: usize) -> Draw {
        Draw::Uniform { bound: (6.0 / (rows + dim) as f64).sqrt() as f32 }
    }
}

/// A `[rows, dim]` F32 table drawn on the GPU from `draw`, row `padding` zeroed.
///
/// # Errors
/// [`Error::InvalidArgument`] for `embedding_dim` 0; an allocation error when the table
/// does not fit the device.
pub(crate) fn random_table(ctx: &Context, rows: usize, dim: usize, draw: Draw, padding: Option<u32>, seed: u64) -> Result<GpuTensor> {
    if dim == 0 {
        return Err(Error::arg("embedding_dim", "expected a positive embedding_dim, got 0"));
    }
    let table = GpuTensor::zeros(ctx, &[rows, dim], DType::F32, dim)?;
    let (kind, scale, mean) = match draw {
        Draw::Normal { mean, std } => (0, std, mean),
        Draw::Uniform { bound } => (1, bound, 0.0),
    };
    ctx.run_now(|run| {
        for seg in table.segments() {
            let first = seg.first_row * dim as u64;
            let count = seg.rows * dim as u64;
            let padding_row = padding.map(u64::from).filter(|p| seg.row_range().contains(p)).map_or(NO_ROW, |p| (p - seg.first_row) as u32);
            let params = ctx.uniform(&InitParams {
                // A segment spans one binding: fewer than 2^32 f32 elements.
                count: count as u32,
                first_lo: first as u32,
                first_hi: (first >> 32) as u32,
                seed_lo: seed as u32,
                seed_hi: (seed >> 32) as u32,
                kind,
                dim: dim as u32,
                padding_row,
                scale,
                mean,
                pad: [0; 2],
            });
            ctx.dispatch(run, &FILL_RANDOM, &[], &[params.as_entire_binding(), seg.binding()], count);
        }
        Ok(())
    })?;
    Ok(table)
}
