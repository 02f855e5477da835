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

    /// Blocking [`Self::check_async`], for the kernel-level tests.
    #[cfg(test)]
    pub(crate) fn check(&self, ctx: &Context, name: &'static str, idx: &GpuTensor, num_rows: u64) -> Result<()> {
        pollster::block_on(self.check_async(ctx, name, idx, num_rows))
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

/// A browser cannot block on the read-back, so GPU-resident indices are refused there,
/// before any GPU work (host indices are checked on the host).
#[cfg(target_arch = "wasm32")]
pub(crate) fn check_gpu_indices(_ctx: &Context, name: &'static str, _idx: &GpuTensor, _limit: u64) -> Result<()> {
    Err(Error::Unsupported(format!(
        "`{name}` on the GPU: its bounds check needs a blocking read-back, which browsers forbid; pass the indices from the host"
    )))
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    //! The kernels' own defence, below the check kernel: out-of-range GPU-resident
    //! indices are never read (their output is zero) and the first one is reported.

    use super::*;
    use crate::embedding::lookup_into;
    use crate::embedding_bag::{bags_per_segment, reduce_bags, BagMode, BagSpec};

    fn context() -> Context {
        Context::new().expect("a GPU adapter (lavapipe on CI)")
    }

    /// A table whose every value is >= 100, so a zero cannot come from it.
    fn table(ctx: &Context, v: usize, d: usize) -> (Vec<f32>, GpuTensor) {
        let w: Vec<f32> = (0..v * d).map(|i| 100.0 + i as f32).collect();
        let t = GpuTensor::from_f32(ctx, &w, &[v, d]).unwrap();
        (w, t)
    }

    #[test]
    fn lookup_kernel_writes_zeros_for_bad_gpu_indices_and_reports_the_first() {
        let ctx = context();
        // d = 8 takes the vectorised kernel, d = 3 the scalar one.
        for d in [8usize, 3] {
            let (w, t) = table(&ctx, 10, d);
            let idx_values = [1i32, 10, -3, 2, 1_000_000, 9];
            let idx = GpuTensor::from_i32(&ctx, &idx_values, &[6]).unwrap();
            let out = GpuTensor::zeros(&ctx, &[6, d], DType::F32, d).unwrap();
            let status = Status::new(&ctx);
            let mut encoder = ctx.encoder();
            lookup_into(&ctx, &mut encoder, &t, &idx, &out, status.buffer(), None).unwrap();
            ctx.submit(encoder).unwrap();
            let got = out.to_vec_f32(&ctx).unwrap();
            for (pos, &i) in idx_values.iter().enumerate() {
                let row = &got[pos * d..(pos + 1) * d];
                if (0..10).contains(&i) {
                    assert_eq!(row, &w[i as usize * d..(i as usize + 1) * d], "d={d} pos={pos}");
                } else {
                    assert!(row.iter().all(|&x| x == 0.0), "d={d} pos={pos}: read outside the table: {row:?}");
                }
            }
            match status.check(&ctx, "indices", &idx, 10) {
                Err(Error::IndexOutOfRange { name: "indices", position: 1, value: 10, num_embeddings: 10 }) => {}
                other => panic!("d={d}: expected IndexOutOfRange at position 1, got {other:?}"),
            }
        }
    }

    #[test]
    fn bag_kernel_skips_bad_gpu_indices_and_reports_the_first() {
        let ctx = context();
        for d in [8usize, 3] {
            let (w, t) = table(&ctx, 10, d);
            // Bags: [3, -1, 4] [] [7, 12]
            let idx_values = [3i32, -1, 4, 7, 12];
            let bounds = [0u32, 3, 3, 5];
            let idx = GpuTensor::from_i32(&ctx, &idx_values, &[5]).unwrap();
            let out = GpuTensor::zeros_with(&ctx, &[3, d], DType::F32, d, bags_per_segment(&ctx, d).unwrap()).unwrap();
            let status = Status::new(&ctx);
            let spec = BagSpec { mode: BagMode::Sum, padding_idx: None, num_embeddings: 10 };
            let mut encoder = ctx.encoder();
            reduce_bags(&ctx, &mut encoder, &t, &idx, None, &bounds, &out, status.buffer(), spec).unwrap();
            ctx.submit(encoder).unwrap();
            let got = out.to_vec_f32(&ctx).unwrap();
            let row = |r: usize, c: usize| w[r * d + c];
            for c in 0..d {
                assert_eq!(got[c], row(3, c) + row(4, c), "d={d} bag 0 col {c}");
                assert_eq!(got[d + c], 0.0, "d={d} bag 1 col {c}");
                assert_eq!(got[2 * d + c], row(7, c), "d={d} bag 2 col {c}");
            }
            match status.check(&ctx, "input", &idx, 10) {
                Err(Error::IndexOutOfRange { name: "input", position: 1, value: -1, .. }) => {}
                other => panic!("d={d}: expected IndexOutOfRange at position 1, got {other:?}"),
            }
        }
    }
}
