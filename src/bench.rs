//! Hooks for the benchmark (`examples/bench.rs`): record a layer's kernels on tensors
//! already on the GPU (no host upload or readback in the timed region) and time
//! command buffers with timestamp queries where the device has them, else by wall
//! clock around submit + wait. Not a stable API.

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::kernel::binding::PARAMS;
use crate::gpu::kernel::{Kernel, Role, Slot};
use crate::gpu::plan::BagPlan;
use crate::gpu::recording::Recording;
use crate::gpu::status::Status;
use crate::gpu::table::table_texture;
use crate::gpu::tensor::{DType, GpuTensor};
use crate::gpu::COPY_FAMILY;
use crate::layers::embedding::record_lookup;
use crate::layers::embedding_bag::{record_bags, BagMode, BagSpec};

const COPY: Kernel = Kernel::new(&COPY_FAMILY, "copy", &[PARAMS, (1, Slot::Read, Role::Extra(0)), DESTINATION]);

const COPY_TEXTURE: Kernel = Kernel::new(&COPY_FAMILY, "copy_texture", &[PARAMS, (1, Slot::Texture, Role::Extra(0)), DESTINATION]);
const DESTINATION: (u32, Slot, Role) = (2, Slot::ReadWrite, Role::Extra(1));

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CopyParams {
    count: u32,
    width_shift: u32,
    layer_shift: u32,
    first: u32,
}

/// Records kernels for timing; holds the status buffer the kernels report bad indices to.
pub struct Recorder {
    status: Status,
}

impl Recorder {
    pub fn new(ctx: &Context) -> Self {
        Self { status: Status::new(ctx) }
    }

    /// A plain vec4 copy of `src` into `dst` (same segmentation, word counts multiple of 4).
    pub fn copy(&self, ctx: &Context, encoder: &mut Recording<'_>, src: &GpuTensor, dst: &GpuTensor) -> Result<()> {
        for (s, d) in src.segments().iter().zip(dst.segments()) {
            let bytes = s.rows * (src.row_len() * src.dtype().size()) as u64;
            if !bytes.is_multiple_of(16) {
                return Err(Error::arg("src", format!("copy needs whole vec4 segments, got {bytes} bytes")));
            }
            let uniform = ctx.uniform(&CopyParams { count: (bytes / 16) as u32, width_shift: 0, layer_shift: 0, first: 0 });
            ctx.dispatch(encoder, &COPY, &[], &[uniform.as_entire_binding(), s.binding(), d.binding()], bytes / 16);
        }
        Ok(())
    }

    /// The same copy reading `src`'s texture copy (made on first use), on contexts that
    /// read tables from textures.
    pub fn copy_from_texture(&self, ctx: &Context, encoder: &mut Recording<'_>, src: &GpuTensor, dst: &GpuTensor) -> Result<()> {
        let tex = table_texture(encoder, src).ok_or_else(|| Error::arg("src", "this context reads no texture copies"))?;
        let words_per_row = (src.row_len() * src.dtype().size() / 16) as u64;
        for d in dst.segments() {
            let count = d.rows * words_per_row;
            let params = CopyParams {
                count: count as u32,
                width_shift: tex.width_shift,
                layer_shift: tex.layer_shift,
                first: (d.first_row * words_per_row) as u32,
            };
            let uniform = ctx.uniform(&params);
            ctx.dispatch(encoder, &COPY_TEXTURE, &[], &[uniform.as_entire_binding(), tex.binding(), d.binding()], count);
        }
        Ok(())
    }

    /// `Embedding` lookup of GPU indices (segmented as [`lookup_output`] is) into `out`.
    pub fn lookup(&self, ctx: &Context, encoder: &mut Recording<'_>, table: &GpuTensor, idx: &GpuTensor, out: &GpuTensor) -> Result<()> {
        record_lookup(ctx, encoder, table, idx, out, &self.status, None)
    }

    /// `EmbeddingBag` reduction of the bags `bounds` (`bags + 1` positions into `idx`).
    #[allow(clippy::too_many_arguments)]
    pub fn bags(
        &self,
        ctx: &Context,
        encoder: &mut Recording<'_>,
        table: &GpuTensor,
        idx: &GpuTensor,
        bounds: &[u32],
        out: &GpuTensor,
        mode: BagMode,
    ) -> Result<()> {
        let spec = BagSpec { mode, padding_idx: None, num_embeddings: table.shape()[0] };
        record_bags(ctx, encoder, table, idx, None, bounds, out, &self.status, spec)
    }
}

/// Output tensor of a lookup of `n` indices into a `dim`-wide table, and the index
/// tensor segmented to match.
pub fn lookup_tensors(ctx: &Context, indices: &[i32], dim: usize) -> Result<(GpuTensor, GpuTensor)> {
    let per = GpuTensor::rows_per_segment(ctx, dim, DType::F32)?;
    let idx = GpuTensor::from_bytes_with(ctx, bytemuck::cast_slice(indices), &[indices.len()], DType::I32, 1, per)?;
    let out = GpuTensor::zeros_with(ctx, &[indices.len(), dim], DType::F32, dim, per)?;
    Ok((idx, out))
}

/// Index tensor and output tensor of `bags` bags over a `dim`-wide table.
pub fn bag_tensors(ctx: &Context, indices: &[i32], bags: usize, dim: usize) -> Result<(GpuTensor, GpuTensor)> {
    let idx = GpuTensor::flat(ctx, indices, DType::I32)?;
    let out = GpuTensor::zeros_with(ctx, &[bags, dim], DType::F32, dim, BagPlan::bags_per_segment(ctx, dim)?)?;
    Ok((idx, out))
}

/// Times recorded GPU work.
pub struct GpuTimer {
    queries: Option<(wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer)>,
}

impl GpuTimer {
    pub fn new(ctx: &Context) -> Self {
        let queries = ctx.features().contains(wgpu::Features::TIMESTAMP_QUERY).then(|| {
            let set =
                ctx.device.create_query_set(&wgpu::QuerySetDescriptor { label: Some("bench"), ty: wgpu::QueryType::Timestamp, count: 2 });
            let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bench-resolve"),
                size: 16,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            let readback = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("bench-readback"),
                size: 16,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            (set, resolve, readback)
        });
        Self { queries }
    }

    /// Whether times come from GPU timestamps (else wall clock).
    pub fn uses_timestamps(&self) -> bool {
        self.queries.is_some()
    }

    /// Records `work` into one command buffer, runs it and returns (GPU seconds by
    /// timestamps if available, wall-clock seconds around submit + wait).
    pub fn time(&self, ctx: &Context, work: impl FnOnce(&mut Recording<'_>) -> Result<()>) -> Result<(Option<f64>, f64)> {
        let mut encoder = ctx.encoder();
        if let Some((set, _, _)) = &self.queries {
            // Empty passes whose start / end timestamps bracket the work.
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("bench-start"),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: set,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: None,
                }),
            });
        }
        work(&mut encoder)?;
        if let Some((set, resolve, readback)) = &self.queries {
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("bench-end"),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: set,
                    beginning_of_pass_write_index: None,
                    end_of_pass_write_index: Some(1),
                }),
            });
            encoder.resolve_query_set(set, 0..2, resolve, 0);
            encoder.copy_buffer_to_buffer(resolve, 0, readback, 0, 16);
        }
        let start = std::time::Instant::now();
        ctx.submit(encoder)?;
        ctx.wait_idle()?;
        let wall = start.elapsed().as_secs_f64();
        let gpu = match &self.queries {
            None => None,
            Some((_, _, readback)) => {
                readback.slice(..).map_async(wgpu::MapMode::Read, |_| {});
                ctx.wait_idle()?;
                let view = readback.slice(..).get_mapped_range().map_err(|e| Error::Device(e.to_string()))?;
                let t: [u64; 2] = bytemuck::pod_read_unaligned(&view[..16]);
                drop(view);
                readback.unmap();
                Some(t[1].saturating_sub(t[0]) as f64 * ctx.queue.get_timestamp_period() as f64 * 1e-9)
            }
        };
        Ok((gpu, wall))
    }
}
