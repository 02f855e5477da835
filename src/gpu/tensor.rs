//! Tensors that live on the GPU between calls.
//!
//! A tensor is a list of rows (the last dimension, or single elements for index
//! lists) stored in one or more buffers ("segments"), each holding whole rows and
//! no more bytes than one storage binding may span. Kernels run once per segment,
//! so any size that fits device memory works on any device.

use std::sync::Arc;

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::pool::Lease;
use crate::gpu::recording::Recording;
use crate::gpu::texture::TableTexture;

/// Element type of a GPU tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit floats.
    F32,
    /// 32-bit signed integers (indices).
    I32,
    /// 32-bit unsigned integers.
    U32,
    /// Bytes, packed four to a 32-bit word.
    U8,
    /// IEEE half floats, packed two to a word (no `shader-f16` needed).
    F16,
    /// bfloat16, packed two to a word.
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::U8 => 1,
        }
    }
}

/// One buffer of a tensor: rows `first_row .. first_row + rows`.
#[derive(Debug, Clone)]
pub struct Segment {
    pub(crate) buffer: wgpu::Buffer,
    /// The tensor's row this segment's buffer starts with.
    pub first_row: u64,
    /// Rows held.
    pub rows: u64,
    /// Hands the buffer back to the context's pool when the last segment sharing it
    /// goes; `None` for buffers wrapped for one call.
    pub(crate) lease: Option<Arc<Lease>>,
}

impl Segment {
    /// The rows this segment holds, as a range.
    pub fn row_range(&self) -> std::ops::Range<u64> {
        self.first_row..self.first_row + self.rows
    }

    pub(crate) fn binding(&self) -> wgpu::BindingResource<'_> {
        self.buffer.as_entire_binding()
    }

    /// The buffer, for kernels of your own on the context's device (see
    /// `examples/train.rs`): rows `first_row ..` packed from offset 0.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
}

/// A tensor resident on the GPU. Cloning is cheap and shares the buffers.
#[derive(Debug, Clone)]
pub struct GpuTensor {
    shape: Vec<usize>,
    dtype: DType,
    row_len: usize,
    segments: Arc<Vec<Segment>>,
    /// The texture copy lookups read on some devices (see `table.rs`), made on
    /// first use and shared by clones, as the buffers are.
    pub(crate) texture: Arc<std::sync::Mutex<Option<Arc<TableTexture>>>>,
    /// Set once an optimizer rewrites the table in place: lookups then read its buffers,
    /// since keeping a texture copy current would copy the whole table every step.
    pub(crate) stepped: Arc<std::sync::atomic::AtomicBool>,
}

// Tensors move between threads with their context (see `context.rs`).
#[cfg(not(target_arch = "wasm32"))]
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GpuTensor>();
};

/// Tensor buffers are whole 16-byte words (and never empty: zero-sized bindings are
/// invalid), so kernels may read any tensor as `array<vec4<...>>` up to its last element.
const BUFFER_ALIGN: u64 = 16;

/// Largest reused buffer cleared from the host for a zero-filled tensor (see `allocate`).
const MAX_HOST_ZEROED: u64 = 256 << 10;

/// Elements, rows and bytes of a tensor of `shape` with rows of `row_len`, refusing
/// shapes whose sizes overflow, rows that do not tile the shape, and tensors over the
/// context's budget — all before anything is allocated.
fn checked_layout(ctx: &Context, shape: &[usize], dtype: DType, row_len: usize) -> Result<(usize, u64, u64)> {
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::arg("shape", format!("shape {shape:?} has more elements than this machine can address")))?;
    let bytes = numel
        .checked_mul(dtype.size())
        .ok_or_else(|| Error::arg("shape", format!("shape {shape:?} of {dtype:?} needs more bytes than this machine can address")))?;
    let row_len = row_len.max(1);
    if numel % row_len != 0 {
        return Err(Error::arg("row_len", format!("rows of {row_len} elements do not tile shape {shape:?} ({numel} elements)")));
    }
    ctx.check_allocation(&format!("a {dtype:?} tensor of shape {shape:?}"), bytes as u64)?;
    Ok((numel, (numel / row_len) as u64, bytes as u64))
}

fn row_bytes(row_len: usize, dtype: DType) -> u64 {
    // Rows are padded to whole 32-bit words only for packed types of odd length; our
    // layouts keep packed rows word-aligned (see `padded_row_len`).
    (row_len * dtype.size()) as u64
}

impl GpuTensor {
    /// Shape of the tensor.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Elements per row (the unit that segments never split).
    pub fn row_len(&self) -> usize {
        self.row_len
    }

    /// Rows in all.
    pub fn rows(&self) -> u64 {
        self.segments.iter().map(|s| s.rows).sum()
    }

    /// The buffers holding the rows.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Bytes this tensor occupies on the GPU.
    pub fn gpu_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.buffer.size()).sum()
    }

    /// The segment holding `row`, if any.
    pub fn segment_of(&self, row: u64) -> Option<&Segment> {
        self.segments.iter().find(|s| s.row_range().contains(&row))
    }

    /// Same data, new shape with the same number of elements and the same row length.
    pub fn reshape(&self, shape: &[usize]) -> Result<GpuTensor> {
        let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if n != Some(self.numel()) {
            return Err(Error::ShapeMismatch(format!("cannot view {:?} as {:?}", self.shape, shape)));
        }
        Ok(GpuTensor { shape: shape.to_vec(), ..self.clone() })
    }

    /// Rows per segment that keep each segment within one binding.
    pub fn rows_per_segment(ctx: &Context, row_len: usize, dtype: DType) -> Result<u64> {
        let rb = (row_len as u64).saturating_mul(dtype.size() as u64).max(1);
        let per = ctx.max_binding_size() / rb;
        if per == 0 {
            return Err(Error::arg(
                "shape",
                format!(
                    "one row of {row_len} {dtype:?} elements ({rb} bytes) exceeds the device's storage binding size of {} bytes",
                    ctx.max_binding_size()
                ),
            ));
        }
        Ok(per)
    }

    /// Uploads host data. `row_len` elements form a row; rows are never split.
    pub fn from_bytes(ctx: &Context, bytes: &[u8], shape: &[usize], dtype: DType, row_len: usize) -> Result<GpuTensor> {
        let per = Self::rows_per_segment(ctx, row_len, dtype)?;
        Self::from_bytes_with(ctx, bytes, shape, dtype, row_len, per)
    }

    /// Uploads host data with a chosen number of rows per segment.
    pub(crate) fn from_bytes_with(
        ctx: &Context,
        bytes: &[u8],
        shape: &[usize],
        dtype: DType,
        row_len: usize,
        rows_per_segment: u64,
    ) -> Result<GpuTensor> {
        let (_, rows, expected) = checked_layout(ctx, shape, dtype, row_len)?;
        if bytes.len() as u64 != expected {
            return Err(Error::ShapeMismatch(format!(
                "{} bytes given for shape {shape:?} of {dtype:?} ({expected} expected)",
                bytes.len(),
            )));
        }
        let row_len = row_len.max(1);
        let rb = row_bytes(row_len, dtype) as usize;
        Self::build(ctx, shape, dtype, row_len, rows, rows_per_segment, |first, n| {
            let chunk = &bytes[first as usize * rb..(first + n) as usize * rb];
            let size = chunk.len().next_multiple_of(BUFFER_ALIGN as usize).max(BUFFER_ALIGN as usize);
            if let Some(buffer) = ctx.pool.take(size as u64) {
                ctx.queue.write_buffer(&buffer, 0, chunk);
                if size > chunk.len() {
                    // The padding reads as zeros, as in a new buffer.
                    ctx.queue.write_buffer(&buffer, chunk.len() as u64, &vec![0; size - chunk.len()]);
                }
                return Ok(buffer);
            }
            ctx.pool.note_created();
            Ok(if size > chunk.len() {
                let mut padded = chunk.to_vec();
                padded.resize(size, 0);
                create_init(ctx, &padded)
            } else {
                create_init(ctx, chunk)
            })
        })
    }

    /// [`GpuTensor::from_bytes`], handing the bytes to the queue in pieces and calling
    /// `progress(bytes_uploaded, bytes_total)` after each (e.g. for a progress bar while
    /// a large table uploads).
    pub fn from_bytes_with_progress(
        ctx: &Context,
        bytes: &[u8],
        shape: &[usize],
        dtype: DType,
        row_len: usize,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<GpuTensor> {
        /// Bytes per write: small enough for a smooth bar, large enough to cost nothing.
        const PIECE: usize = 8 << 20;
        let (_, _, expected) = checked_layout(ctx, shape, dtype, row_len)?;
        if bytes.len() as u64 != expected {
            return Err(Error::ShapeMismatch(format!(
                "{} bytes given for shape {shape:?} of {dtype:?} ({expected} expected)",
                bytes.len(),
            )));
        }
        let t = Self::zeros(ctx, shape, dtype, row_len)?;
        let rb = row_bytes(t.row_len, dtype) as usize;
        let total = bytes.len() as u64;
        let mut done = 0u64;
        progress(0, total);
        for seg in t.segments.iter() {
            let data = &bytes[seg.first_row as usize * rb..(seg.first_row + seg.rows) as usize * rb];
            for (k, piece) in data.chunks(PIECE).enumerate() {
                // Writes are whole words: the last piece is padded (the buffer is).
                let mut padded;
                let piece_words = if piece.len().is_multiple_of(4) {
                    piece
                } else {
                    padded = piece.to_vec();
                    padded.resize(piece.len().next_multiple_of(4), 0);
                    &padded[..]
                };
                ctx.queue().write_buffer(&seg.buffer, (k * PIECE) as u64, piece_words);
                done += piece.len() as u64;
                progress(done, total);
            }
        }
        Ok(t)
    }

    /// A tensor to be filled in order, piece by piece, as its bytes arrive (a streamed
    /// file): see [`TensorWriter`].
    pub fn writer(ctx: &Context, shape: &[usize], dtype: DType, row_len: usize) -> Result<TensorWriter> {
        let (_, _, total) = checked_layout(ctx, shape, dtype, row_len)?;
        let tensor = Self::zeros(ctx, shape, dtype, row_len)?;
        Ok(TensorWriter { row_bytes: row_bytes(tensor.row_len, dtype), tensor, written: 0, total, pending: Vec::new() })
    }

    /// A tensor of `rows` rows in segments of `rows_per_segment`, whose buffers `make`
    /// creates (given first row and rows) inside error scopes: allocation failures (out
    /// of memory) come back as errors, not panics.
    fn build(
        ctx: &Context,
        shape: &[usize],
        dtype: DType,
        row_len: usize,
        rows: u64,
        rows_per_segment: u64,
        mut make: impl FnMut(u64, u64) -> Result<wgpu::Buffer>,
    ) -> Result<GpuTensor> {
        let segments = ctx.scoped(|| {
            let mut segments = Vec::new();
            let mut first = 0u64;
            loop {
                let n = (rows - first).min(rows_per_segment.max(1));
                let buffer = make(first, n)?;
                let lease = Some(ctx.pool.lease(buffer.clone()));
                segments.push(Segment { buffer, first_row: first, rows: n, lease });
                first += n;
                if first >= rows {
                    break;
                }
            }
            Ok(segments)
        })?;
        Ok(GpuTensor {
            shape: shape.to_vec(),
            dtype,
            row_len,
            segments: Arc::new(segments),
            texture: Arc::default(),
            stepped: Arc::default(),
        })
    }

    /// Uploads `values` as a 1-D tensor whose every element is a row of its own, so that
    /// its segments may split it anywhere (index lists, weights, quantization inputs).
    pub fn flat<T: bytemuck::Pod>(ctx: &Context, values: &[T], dtype: DType) -> Result<GpuTensor> {
        let bytes: &[u8] = bytemuck::cast_slice(values);
        Self::from_bytes(ctx, bytes, &[bytes.len() / dtype.size()], dtype, 1)
    }

    /// Uploads f32 data; rows are the last dimension.
    pub fn from_f32(ctx: &Context, data: &[f32], shape: &[usize]) -> Result<GpuTensor> {
        let row_len = shape.last().copied().unwrap_or(1);
        Self::from_bytes(ctx, bytemuck::cast_slice(data), shape, DType::F32, row_len)
    }

    /// Uploads an f16 table; rows are the last dimension. Elements are packed two to a
    /// 32-bit word back to back (element `i` of a segment is half `i & 1` of word `i >> 1`,
    /// low half first), so rows need not start on a word and any row length works.
    pub fn from_f16(ctx: &Context, data: &[half::f16], shape: &[usize]) -> Result<GpuTensor> {
        let row_len = shape.last().copied().unwrap_or(1);
        Self::from_bytes(ctx, bytemuck::cast_slice(data), shape, DType::F16, row_len)
    }

    /// Uploads a bf16 table, packed as [`GpuTensor::from_f16`] packs f16.
    pub fn from_bf16(ctx: &Context, data: &[half::bf16], shape: &[usize]) -> Result<GpuTensor> {
        let row_len = shape.last().copied().unwrap_or(1);
        Self::from_bytes(ctx, bytemuck::cast_slice(data), shape, DType::BF16, row_len)
    }

    /// Uploads i32 data as a flat list (each element its own row, for index lists).
    pub fn from_i32(ctx: &Context, data: &[i32], shape: &[usize]) -> Result<GpuTensor> {
        Self::from_bytes(ctx, bytemuck::cast_slice(data), shape, DType::I32, 1)
    }

    /// Replaces the tensor's contents with `bytes` (all its elements, in order), keeping
    /// its buffers and segments: the write reaches the queue before any later submission.
    ///
    /// # Errors
    /// [`Error::ShapeMismatch`] when `bytes` is not the tensor's size.
    pub(crate) fn overwrite(&self, ctx: &Context, bytes: &[u8]) -> Result<()> {
        let want = self.numel() as u64 * self.dtype.size() as u64;
        if bytes.len() as u64 != want {
            return Err(Error::ShapeMismatch(format!(
                "{} bytes for a tensor of {want} bytes ({:?} {:?})",
                bytes.len(),
                self.dtype,
                self.shape
            )));
        }
        let rb = row_bytes(self.row_len, self.dtype) as usize;
        for seg in self.segments.iter() {
            let chunk = &bytes[seg.first_row as usize * rb..(seg.first_row + seg.rows) as usize * rb];
            if chunk.len().is_multiple_of(BUFFER_ALIGN as usize) {
                ctx.queue.write_buffer(&seg.buffer, 0, chunk);
            } else {
                let mut padded = chunk.to_vec();
                padded.resize(chunk.len().next_multiple_of(BUFFER_ALIGN as usize), 0);
                ctx.queue.write_buffer(&seg.buffer, 0, &padded);
            }
        }
        Ok(())
    }

    /// Zero-filled tensor on the GPU.
    pub fn zeros(ctx: &Context, shape: &[usize], dtype: DType, row_len: usize) -> Result<GpuTensor> {
        let per = Self::rows_per_segment(ctx, row_len, dtype)?;
        Self::zeros_with(ctx, shape, dtype, row_len, per)
    }

    /// Zero-filled tensor with a chosen number of rows per segment.
    pub(crate) fn zeros_with(ctx: &Context, shape: &[usize], dtype: DType, row_len: usize, rows_per_segment: u64) -> Result<GpuTensor> {
        Self::allocate(ctx, shape, dtype, row_len, rows_per_segment, true)
    }

    /// An output whose every element the caller's kernels write before anything reads
    /// it: a buffer taken from the pool is not cleared first (new ones still read zero).
    pub(crate) fn for_overwrite_with(
        ctx: &Context,
        shape: &[usize],
        dtype: DType,
        row_len: usize,
        rows_per_segment: u64,
    ) -> Result<GpuTensor> {
        Self::allocate(ctx, shape, dtype, row_len, rows_per_segment, false)
    }

    fn allocate(ctx: &Context, shape: &[usize], dtype: DType, row_len: usize, rows_per_segment: u64, zeroed: bool) -> Result<GpuTensor> {
        ctx.check_alive()?;
        let (_, rows, _) = checked_layout(ctx, shape, dtype, row_len)?;
        let row_len = row_len.max(1);
        let rb = row_bytes(row_len, dtype);
        Self::build(ctx, shape, dtype, row_len, rows, rows_per_segment, |_, n| {
            let size = (n * rb).next_multiple_of(BUFFER_ALIGN).max(BUFFER_ALIGN);
            if size > ctx.limits().max_buffer_size {
                return Err(Error::OutOfMemory(format!(
                    "shape {shape:?} needs a buffer of {size} bytes, over the device's max_buffer_size of {}",
                    ctx.limits().max_buffer_size
                )));
            }
            // A reused buffer holds its last tensor's values: zeroed from the host before
            // the next submission's commands. Past a few hundred KiB that write costs
            // more than a new buffer, which wgpu zeroes on the GPU.
            let reuse = !zeroed || size <= MAX_HOST_ZEROED;
            if let Some(buffer) = reuse.then(|| ctx.pool.take(size)).flatten() {
                if zeroed {
                    ctx.queue.write_buffer(&buffer, 0, &vec![0; size as usize]);
                }
                return Ok(buffer);
            }
            ctx.pool.note_created();
            Ok(ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("tensor"),
                size,
                usage: storage_usage(),
                mapped_at_creation: false,
            }))
        })
    }

    /// Reads the tensor back as raw bytes (async; works in the browser).
    pub async fn read_bytes(&self, ctx: &Context) -> Result<Vec<u8>> {
        ctx.check_alive()?;
        let rb = row_bytes(self.row_len, self.dtype);
        let staging = ctx.scoped(|| {
            let mut encoder = ctx.encoder();
            let mut staging = Vec::new();
            for seg in self.segments.iter() {
                let bytes = seg.rows * rb;
                if bytes == 0 {
                    continue;
                }
                let size = bytes.next_multiple_of(4);
                let buf = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("readback"),
                    size,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                encoder.copy_buffer_to_buffer(&seg.buffer, 0, &buf, 0, size);
                staging.push((buf, bytes));
            }
            ctx.submit(encoder)?;
            Ok(staging)
        })?;
        let buffers: Vec<&wgpu::Buffer> = staging.iter().map(|(b, _)| b).collect();
        let mapped = crate::gpu::recording::map_all(ctx, &buffers).await?;
        let mut out = Vec::with_capacity(self.numel() * self.dtype.size());
        for (bytes, (_, len)) in mapped.iter().zip(&staging) {
            out.extend_from_slice(&bytes[..*len as usize]);
        }
        out.truncate(self.numel() * self.dtype.size());
        Ok(out)
    }

    /// Reads an f32 tensor back (async).
    pub async fn read_f32(&self, ctx: &Context) -> Result<Vec<f32>> {
        if self.dtype != DType::F32 {
            return Err(Error::arg("tensor", format!("read_f32 on a {:?} tensor", self.dtype)));
        }
        Ok(bytemuck::pod_collect_to_vec(&self.read_bytes(ctx).await?))
    }

    /// A copy of the same elements, in order, as `shape` with rows of `row_len` elements,
    /// `rows_per_segment` rows per buffer (e.g. a flat list laid out like a table),
    /// recorded into `encoder`.
    pub(crate) fn relayout(
        &self,
        ctx: &Context,
        encoder: &mut Recording<'_>,
        shape: &[usize],
        row_len: usize,
        rows_per_segment: u64,
    ) -> Result<GpuTensor> {
        let out = Self::zeros_with(ctx, shape, self.dtype, row_len, rows_per_segment)?;
        if out.numel() != self.numel() {
            return Err(Error::ShapeMismatch(format!("cannot lay {:?} out as {shape:?}", self.shape)));
        }
        let es = self.dtype.size() as u64;
        let range = |s: &Segment, len: usize| (s.first_row * len as u64, (s.first_row + s.rows) * len as u64);
        for dst in out.segments.iter() {
            let (d0, d1) = range(dst, row_len);
            for src in self.segments.iter() {
                let (s0, s1) = range(src, self.row_len);
                let (lo, hi) = (d0.max(s0), d1.min(s1));
                if lo < hi {
                    encoder.copy_buffer_to_buffer(&src.buffer, (lo - s0) * es, &dst.buffer, (lo - d0) * es, (hi - lo) * es);
                }
            }
        }
        Ok(out)
    }

    /// A copy of rows `lo .. hi` as a tensor of its own (rows per segment as this one's
    /// widest segment), recorded into `encoder`.
    pub(crate) fn copy_rows(&self, ctx: &Context, encoder: &mut Recording<'_>, lo: u64, hi: u64) -> Result<GpuTensor> {
        let mut shape = self.shape.clone();
        shape[0] = (hi - lo) as usize * self.row_len / shape[1..].iter().product::<usize>().max(1);
        let per = self.segments.iter().map(|s| s.rows).max().unwrap_or(1).max(1);
        let out = Self::zeros_with(ctx, &shape, self.dtype, self.row_len, per)?;
        let rb = row_bytes(self.row_len, self.dtype);
        for dst in out.segments.iter() {
            for src in self.segments.iter() {
                let a = (dst.first_row + lo).max(src.first_row);
                let b = (dst.first_row + lo + dst.rows).min(src.first_row + src.rows);
                if a < b {
                    encoder.copy_buffer_to_buffer(
                        &src.buffer,
                        (a - src.first_row) * rb,
                        &dst.buffer,
                        (a - lo - dst.first_row) * rb,
                        (b - a) * rb,
                    );
                }
            }
        }
        Ok(out)
    }

    /// A copy on the GPU with `rows_per_segment` rows per buffer (GPU-side copies only).
    /// The copies are recorded into `encoder`, to run before the kernels that read them.
    pub(crate) fn resegment(&self, ctx: &Context, encoder: &mut Recording<'_>, rows_per_segment: u64) -> Result<GpuTensor> {
        if self.segments.iter().all(|s| s.rows <= rows_per_segment)
            && self.segments.iter().rev().skip(1).all(|s| s.rows == rows_per_segment)
        {
            return Ok(self.clone());
        }
        let out = Self::zeros_with(ctx, &self.shape, self.dtype, self.row_len, rows_per_segment)?;
        let rb = row_bytes(self.row_len, self.dtype);
        for dst in out.segments.iter() {
            for src in self.segments.iter() {
                let lo = dst.first_row.max(src.first_row);
                let hi = (dst.first_row + dst.rows).min(src.first_row + src.rows);
                if lo >= hi {
                    continue;
                }
                // Row sizes are word multiples for every tensor we resegment (f32/i32/u32 rows).
                encoder.copy_buffer_to_buffer(
                    &src.buffer,
                    (lo - src.first_row) * rb,
                    &dst.buffer,
                    (lo - dst.first_row) * rb,
                    (hi - lo) * rb,
                );
            }
        }
        Ok(out)
    }
}

pub(crate) fn storage_usage() -> wgpu::BufferUsages {
    wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST
}

fn create_init(ctx: &Context, contents: &[u8]) -> wgpu::Buffer {
    ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some("tensor"), contents, usage: storage_usage() })
}

impl GpuTensor {
    /// Frees the GPU memory now if this is the last handle to it (clones share it);
    /// browsers otherwise free buffers only when they are garbage-collected.
    pub fn release(self) {
        if let Ok(texture) = Arc::try_unwrap(self.texture) {
            if let Some(Ok(t)) = texture.into_inner().unwrap_or_else(|p| p.into_inner()).map(Arc::try_unwrap) {
                t.destroy();
            }
        }
        if let Ok(segments) = Arc::try_unwrap(self.segments) {
            for segment in segments {
                match segment.lease.map(Arc::try_unwrap) {
                    Some(Ok(lease)) => lease.release(),
                    Some(Err(_)) => {} // another view still uses the buffer
                    None => segment.buffer.destroy(),
                }
            }
        }
    }

    /// A one-segment tensor seen as `[numel / row_len, row_len]` (the same buffer, its
    /// own texture copy slot); `None` when it has several segments or rows do not divide it.
    pub(crate) fn rows_view(&self, row_len: usize) -> Option<GpuTensor> {
        let numel = self.numel();
        match &self.segments[..] {
            [seg] if row_len > 0 && numel.is_multiple_of(row_len) => Some(GpuTensor {
                shape: vec![numel / row_len, row_len],
                dtype: self.dtype,
                row_len,
                segments: Arc::new(vec![Segment {
                    buffer: seg.buffer.clone(),
                    first_row: 0,
                    rows: (numel / row_len) as u64,
                    lease: seg.lease.clone(),
                }]),
                texture: Arc::default(),
                stepped: self.stepped.clone(),
            }),
            _ => None,
        }
    }

    /// The same buffers seen with rows of one element, shape kept (e.g. a `[Q, k]` top-k
    /// index tensor read as the flat index list lookups take).
    pub(crate) fn flat_rows(&self) -> GpuTensor {
        if self.row_len == 1 {
            return self.clone();
        }
        let len = self.row_len as u64;
        let segments = self
            .segments
            .iter()
            .map(|s| Segment { buffer: s.buffer.clone(), first_row: s.first_row * len, rows: s.rows * len, lease: s.lease.clone() })
            .collect();
        GpuTensor {
            shape: self.shape.clone(),
            dtype: self.dtype,
            row_len: 1,
            segments: Arc::new(segments),
            texture: Arc::default(),
            stepped: self.stepped.clone(),
        }
    }

    /// Wraps one existing buffer as a flat tensor (rows of one element).
    /// This one-segment tensor viewed as one row, `[1, numel]`: the same buffer (a 1-D
    /// parameter an optimizer updates as a table of one row). `None` over several segments.
    pub(crate) fn as_one_row(&self) -> Option<GpuTensor> {
        self.as_rows(self.numel())
    }

    /// This one-segment tensor viewed as rows of `dim`, `[numel / dim, dim]`: the same
    /// buffer. `None` over several segments or when `dim` does not divide it.
    pub(crate) fn as_rows(&self, dim: usize) -> Option<GpuTensor> {
        let [seg] = self.segments.as_slice() else { return None };
        let n = self.numel();
        if dim == 0 || !n.is_multiple_of(dim) {
            return None;
        }
        let rows = n / dim;
        Some(GpuTensor {
            shape: vec![rows, dim],
            dtype: self.dtype,
            row_len: dim,
            segments: Arc::new(vec![Segment { buffer: seg.buffer.clone(), first_row: 0, rows: rows as u64, lease: seg.lease.clone() }]),
            texture: Arc::default(),
            stepped: self.stepped.clone(),
        })
    }

    pub(crate) fn from_buffer(buffer: wgpu::Buffer, shape: &[usize], dtype: DType) -> GpuTensor {
        let rows = shape.iter().product::<usize>() as u64;
        GpuTensor {
            shape: shape.to_vec(),
            dtype,
            row_len: 1,
            segments: Arc::new(vec![Segment { buffer, first_row: 0, rows, lease: None }]),
            texture: Arc::default(),
            stepped: Arc::default(),
        }
    }
}

/// Fills a tensor's bytes in order as they arrive, handing each piece to the queue at
/// once, so that no more than a piece is held on the host (made by [`GpuTensor::writer`]).
#[derive(Debug)]
pub struct TensorWriter {
    tensor: GpuTensor,
    row_bytes: u64,
    /// Bytes handed to the queue, and in all.
    written: u64,
    total: u64,
    /// Bytes received but not written yet: writes are whole words, except at a segment's end.
    pending: Vec<u8>,
}

impl TensorWriter {
    /// Takes the next `bytes` of the tensor (in its row-major layout).
    pub fn write(&mut self, ctx: &Context, bytes: &[u8]) -> Result<()> {
        if self.written + (self.pending.len() + bytes.len()) as u64 > self.total {
            return Err(Error::ShapeMismatch(format!(
                "more than the {} bytes of shape {:?} of {:?} were given",
                self.total,
                self.tensor.shape(),
                self.tensor.dtype()
            )));
        }
        self.pending.extend_from_slice(bytes);
        let mut used = 0usize;
        while used < self.pending.len() {
            let Some(seg) = self.tensor.segments.iter().find(|s| (s.first_row + s.rows) * self.row_bytes > self.written) else {
                break; // checked above: every byte lies in a segment
            };
            let (start, end) = (seg.first_row * self.row_bytes, (seg.first_row + seg.rows) * self.row_bytes);
            let available = (self.pending.len() - used) as u64;
            let n = available.min(end - self.written);
            // Whole words, unless this finishes the segment (its buffer is padded).
            let n = if self.written + n == end { n } else { n / 4 * 4 };
            if n == 0 {
                break;
            }
            let mut piece = self.pending[used..used + n as usize].to_vec();
            piece.resize(piece.len().next_multiple_of(4), 0);
            ctx.queue().write_buffer(&seg.buffer, self.written - start, &piece);
            self.written += n;
            used += n as usize;
        }
        self.pending.drain(..used);
        Ok(())
    }

    /// Bytes taken so far, and in all.
    pub fn progress(&self) -> (u64, u64) {
        (self.written + self.pending.len() as u64, self.total)
    }

    /// The filled tensor; an error if bytes are missing.
    pub fn finish(self) -> Result<GpuTensor> {
        if self.written != self.total {
            return Err(Error::ShapeMismatch(format!(
                "{} of the {} bytes of shape {:?} of {:?} were given",
                self.written + self.pending.len() as u64,
                self.total,
                self.tensor.shape(),
                self.tensor.dtype()
            )));
        }
        Ok(self.tensor)
    }
}
