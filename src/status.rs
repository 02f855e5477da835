//! Where kernels report out-of-range indices that only the GPU saw.

use crate::context::{Context, Kernel, Slot};
use crate::error::{Error, Result};
use crate::tensor::{DType, GpuTensor};

const INDEX_CHECK: Kernel = Kernel {
    family: "index_check",
    source: include_str!("../shaders/index_check.wgsl"),
    entry: "check",
    slots: &[Slot::Uniform, Slot::Read, Slot::ReadWrite],
};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CheckParams {
    count: u32,
    index_base: u32,
    limit: u32,
    _pad: u32,
}

/// A one-word buffer: the smallest position of a bad index, or `u32::MAX`.
pub(crate) struct Status {
    buffer: wgpu::Buffer,
}

impl Status {
    pub(crate) fn new(ctx: &Context) -> Self {
        use wgpu::util::DeviceExt;
        let buffer = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("status"),
            contents: bytemuck::cast_slice(&[u32::MAX, 0, 0, 0]),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        });
        Status { buffer }
    }

    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }

    /// Reads the report back; a bad index becomes [`Error::IndexOutOfRange`] naming
    /// its position and value.
    pub(crate) async fn check_async(&self, ctx: &Context, name: &'static str, idx: &GpuTensor, num_rows: u64) -> Result<()> {
        let t = GpuTensor::from_buffer(self.buffer.clone(), &[4], DType::U32);
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&t.read_bytes(ctx).await?);
        let position = words[0];
        if position == u32::MAX {
            return Ok(());
        }
        let value = read_index(ctx, idx, position as u64).await?;
        Err(Error::IndexOutOfRange { name, position: position as u64, value, num_embeddings: num_rows })
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn check(&self, ctx: &Context, name: &'static str, idx: &GpuTensor, num_rows: u64) -> Result<()> {
        pollster::block_on(self.check_async(ctx, name, idx, num_rows))
    }

    /// A browser cannot block on the read-back, so GPU-resident indices (which only the
    /// GPU checks) are refused there; host indices are checked before upload.
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn check(&self, _ctx: &Context, name: &'static str, _idx: &GpuTensor, _num_rows: u64) -> Result<()> {
        Err(Error::Unsupported(format!(
            "`{name}` on the GPU: its bounds check needs a blocking read-back, which browsers forbid; pass the indices from the host"
        )))
    }
}

/// The one value at `position` of a flat I32 tensor (only that word is read back).
async fn read_index(ctx: &Context, idx: &GpuTensor, position: u64) -> Result<i64> {
    let Some(seg) = idx.segment_of(position) else { return Ok(-1) };
    let word = ctx.scoped(|| {
        let word = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bad-index"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut encoder = ctx.encoder();
        encoder.copy_buffer_to_buffer(&seg.buffer, (position - seg.first_row) * 4, &word, 0, 4);
        ctx.submit(encoder)?;
        Ok(word)
    })?;
    let bytes = GpuTensor::from_buffer(word, &[1], DType::I32).read_bytes(ctx).await?;
    Ok(i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as i64)
}

/// Checks that every value of a flat I32 tensor on the GPU is in `[0, limit)`, before
/// any kernel that writes runs on it: the first bad one (lowest position) becomes
/// [`Error::IndexOutOfRange`] with its position and value, and nothing has been written.
pub(crate) async fn check_gpu_indices_async(ctx: &Context, name: &'static str, idx: &GpuTensor, limit: u64) -> Result<()> {
    if idx.dtype() != DType::I32 || idx.row_len() != 1 {
        return Err(Error::arg(name, format!("expected a flat I32 tensor on the GPU, got {:?} with rows of {}", idx.dtype(), idx.row_len())));
    }
    if idx.rows() >= u32::MAX as u64 {
        return Err(Error::arg(name, format!("{} indices is more than one call can address (limit {})", idx.rows(), u32::MAX - 1)));
    }
    let status = Status::new(ctx);
    ctx.scoped(|| {
        let mut encoder = ctx.encoder();
        for seg in idx.segments() {
            let params = CheckParams {
                count: seg.rows as u32,
                index_base: seg.first_row as u32,
                limit: limit.min(u32::MAX as u64) as u32,
                _pad: 0,
            };
            let uniform = ctx.uniform(&params);
            ctx.dispatch(
                &mut encoder,
                &INDEX_CHECK,
                &[],
                &[uniform.as_entire_binding(), seg.binding(), status.buffer().as_entire_binding()],
                seg.rows,
            );
        }
        ctx.submit(encoder)
    })?;
    status.check_async(ctx, name, idx, limit).await
}

/// Blocking form of [`check_gpu_indices_async`] (native only).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn check_gpu_indices(ctx: &Context, name: &'static str, idx: &GpuTensor, limit: u64) -> Result<()> {
    pollster::block_on(check_gpu_indices_async(ctx, name, idx, limit))
}
