//! Recorded execution: the commands of many calls in one encoder, submitted once.
//!
//! A [`Recording`] owns a command encoder and one open compute pass (ended only when a
//! copy must go between dispatches), so a pipeline of layer calls is one command buffer
//! and one submission. What a call can only learn from the GPU is deferred, never lost:
//! - validation and out-of-memory errors of the commands are caught by error scopes
//!   around each recorded call and around the submission;
//! - GPU-resident indices are bounds-checked by a kernel in the same submission, which
//!   writes the first bad position and its value into a status word, and sets the
//!   recording's guard word; dispatches that write rows from such indices are recorded
//!   *guarded*: their workgroup counts come from an indirect-argument buffer that a gate
//!   kernel zeroes when the guard is set, so a refused call writes nothing without a
//!   read-back;
//! - reads of tensors (staged in the same submission) and the status words are mapped
//!   together when the result is awaited: one read-back.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::kernel::{binding, common, Kernel, Role, ShaderFamily, Slot};
use crate::gpu::plan::PassParams;
use crate::gpu::tensor::{DType, GpuTensor};
use crate::gpu::texture::TableTexture;

/// The bounds check of GPU-resident indices, the report of the first bad one and the
/// gate of guarded dispatches (`shaders/index_check.wgsl`).
pub(crate) static FAMILY: ShaderFamily =
    ShaderFamily { name: "index_check", parts: &[common::GRID, common::PASS, include_str!("../../shaders/index_check.wgsl")] };

const GUARD: (u32, Slot, Role) = (9, Slot::ReadWrite, Role::Extra(0));
const CHECK: Kernel = Kernel::new(&FAMILY, "check", &[binding::PARAMS, binding::INPUT, binding::STATUS]);
const REPORT: Kernel = Kernel::new(&FAMILY, "report", &[binding::PARAMS, binding::INPUT, binding::STATUS, GUARD]);
const GATE: Kernel = Kernel::new(&FAMILY, "gate", &[binding::PARAMS, GUARD, (10, Slot::ReadWrite, Role::Extra(1))]);

/// Indirect dispatches one gate buffer holds (16 bytes each).
const GATE_CAPACITY: u64 = 64;

/// What a context has done since it was made (see [`Context::stats`]): what a pipeline
/// of calls costs in round trips, for tests and the bench.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecutionStats {
    /// Command buffers handed to the queue.
    pub submissions: u64,
    /// Times the calling thread blocked until the GPU finished (native polls).
    pub waits: u64,
    /// Compute pipelines created (each once per kernel variant, then cached).
    pub pipelines_created: u64,
    /// Compute dispatches recorded (each waits for the one before it where it reads
    /// what that one wrote: what small calls pay per kernel).
    pub dispatches: u64,
    /// Times results were mapped back to the host (each may bring several tensors).
    pub readbacks: u64,
    /// Bytes brought back to the host.
    pub bytes_read_back: u64,
}

/// A read registered with [`Recording::read`], redeemed from the awaited [`Outputs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadId(usize);

/// A bounds check recorded in a recording: reported when its submission is awaited.
struct Check {
    name: &'static str,
    limit: u64,
    status: wgpu::Buffer,
}

/// An indirect-argument buffer of guarded dispatches and the grids planned for it.
struct GateChunk {
    args: wgpu::Buffer,
    planned: Vec<[u32; 4]>,
    /// Checks recorded before its gate kernel (a later check needs a new gate).
    after_checks: usize,
}

/// The result of a validation and an out-of-memory scope: resolved at once natively,
/// a promise in the browser.
#[cfg(not(target_arch = "wasm32"))]
type ScopeResult = Option<wgpu::Error>;
#[cfg(target_arch = "wasm32")]
type ScopeResult = std::pin::Pin<Box<dyn std::future::Future<Output = Option<wgpu::Error>>>>;

/// The commands of any number of calls, submitted once (made by [`Context::record`]).
///
/// Layers' `record` methods add to it and return their outputs at once, usable by later
/// calls of the same recording before anything ran. [`Recording::read`] asks for a
/// tensor's values; [`Recording::submit`] hands everything to the queue in one command
/// buffer; the returned [`Submitted`] yields the values and every deferred error.
///
/// For kernels of your own, [`Recording::encoder`] is the command encoder (commands go
/// in order with the layers'). A recording lives on the thread that made it, as wgpu's
/// error scopes do. Dropping it unsubmitted discards its commands.
pub struct Recording<'c> {
    ctx: &'c Context,
    /// Dropped after `pass`, which borrows it (`forget_lifetime`).
    encoder: Option<wgpu::CommandEncoder>,
    pass: Option<wgpu::ComputePass<'static>>,
    checks: Vec<Check>,
    /// One word: set by the report kernel when any check of this recording failed.
    guard: Option<wgpu::Buffer>,
    /// Guarded sections open now (see [`Recording::guarded`]).
    guarded: u32,
    gates: Vec<GateChunk>,
    reads: Vec<(wgpu::Buffer, u64)>,
    scopes: Vec<(ScopeResult, ScopeResult)>,
    /// Texture slots this recording filled: emptied again if it is never submitted.
    textures: Vec<Arc<Mutex<Option<Arc<TableTexture>>>>>,
}

impl std::fmt::Debug for Recording<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording").field("checks", &self.checks.len()).field("reads", &self.reads.len()).finish()
    }
}

impl<'c> Recording<'c> {
    pub(crate) fn new(ctx: &'c Context) -> Self {
        ctx.pool.recording_opened();
        let encoder = ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgpu-embed") });
        Recording {
            ctx,
            encoder: Some(encoder),
            pass: None,
            checks: Vec::new(),
            guard: None,
            guarded: 0,
            gates: Vec::new(),
            reads: Vec::new(),
            scopes: Vec::new(),
            textures: Vec::new(),
        }
    }

    /// The context this recording belongs to.
    pub fn context(&self) -> &'c Context {
        self.ctx
    }

    /// The command encoder, for commands of your own between the layers' (ends the
    /// recording's open compute pass).
    pub fn encoder(&mut self) -> &mut wgpu::CommandEncoder {
        self.pass = None;
        self.encoder.as_mut().expect("a recording's encoder lives until it is submitted")
    }

    fn compute_pass(&mut self) -> &mut wgpu::ComputePass<'static> {
        if self.pass.is_none() {
            let encoder = self.encoder.as_mut().expect("a recording's encoder lives until it is submitted");
            let pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("wgpu-embed"), timestamp_writes: None });
            self.pass = Some(pass.forget_lifetime());
        }
        self.pass.as_mut().expect("opened above")
    }

    /// Runs `f` (one call's recording) inside validation and out-of-memory error scopes,
    /// whose findings are reported when the submission is awaited. Argument errors that
    /// `f` returns come back at once.
    pub(crate) fn scoped<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.ctx.check_alive()?;
        self.capture(f)
    }

    /// Runs `f` inside a validation and an out-of-memory scope and keeps their results.
    fn capture<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        let oom = self.ctx.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let validation = self.ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f(self);
        let v = validation.pop();
        let o = oom.pop();
        #[cfg(not(target_arch = "wasm32"))]
        self.scopes.push((futures::executor::block_on(v), futures::executor::block_on(o)));
        #[cfg(target_arch = "wasm32")]
        self.scopes.push((Box::pin(v), Box::pin(o)));
        out
    }

    /// Records `f` with every dispatch guarded: if a bounds check recorded earlier in
    /// this recording finds a bad index, none of them runs. Without checks it is `f`.
    pub(crate) fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> T {
        self.guarded += 1;
        let out = f(self);
        self.guarded -= 1;
        out
    }

    /// Records the bounds check of a flat I32 tensor of GPU-resident indices against
    /// `[0, limit)`: its first bad index (lowest position) is reported as
    /// [`Error::IndexOutOfRange`] naming `name` when the submission is awaited, and
    /// every guarded dispatch recorded after it writes nothing.
    pub(crate) fn check_indices(&mut self, name: &'static str, idx: &GpuTensor, limit: u64) -> Result<()> {
        if idx.dtype() != DType::I32 || idx.row_len() != 1 {
            return Err(Error::arg(
                name,
                format!("expected a flat I32 tensor on the GPU, got {:?} with rows of {}", idx.dtype(), idx.row_len()),
            ));
        }
        if idx.rows() >= u32::MAX as u64 {
            return Err(Error::arg(name, format!("{} indices is more than one call can address (limit {})", idx.rows(), u32::MAX - 1)));
        }
        let ctx = self.ctx;
        let status = ctx.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("status"),
            contents: bytemuck::cast_slice(&[u32::MAX, 0, 0, 0]),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        });
        let guard = self.guard.get_or_insert_with(|| crate::gpu::context::words(ctx, "guard", 4)).clone();
        let limit32 = limit.min(u32::MAX as u64) as u32;
        // Every check pass first, then the reports (each segment reads the one position).
        for pass in [&CHECK, &REPORT] {
            for seg in idx.segments() {
                let p = PassParams {
                    num_embeddings: limit32,
                    index_first: seg.first_row as u32,
                    index_count: seg.rows as u32,
                    flags: crate::gpu::plan::REPORT_BAD,
                    ..Default::default()
                };
                let params = ctx.uniform(&p);
                let mut bindings = vec![params.as_entire_binding(), seg.binding(), status.as_entire_binding()];
                let groups = if std::ptr::eq(pass, &REPORT) {
                    bindings.push(guard.as_entire_binding());
                    1
                } else {
                    seg.rows.div_ceil(crate::gpu::context::WORKGROUP_SIZE as u64)
                };
                self.record_dispatch(pass, &[], &bindings, groups, false);
            }
        }
        self.checks.push(Check { name, limit, status });
        Ok(())
    }

    /// Records one dispatch of `groups` workgroups of `kernel`, spread over y (and z)
    /// past the per-dimension limit; guarded inside [`Recording::guarded`].
    pub(crate) fn dispatch_groups(
        &mut self,
        kernel: &Kernel,
        constants: &[(&'static str, f64)],
        bindings: &[wgpu::BindingResource<'_>],
        groups: u64,
    ) {
        let guarded = self.guarded > 0 && !self.checks.is_empty();
        self.record_dispatch(kernel, constants, bindings, groups, guarded);
    }

    fn record_dispatch(
        &mut self,
        kernel: &Kernel,
        constants: &[(&'static str, f64)],
        bindings: &[wgpu::BindingResource<'_>],
        groups: u64,
        guarded: bool,
    ) {
        if groups == 0 {
            return;
        }
        debug_assert_eq!(bindings.len(), kernel.bindings.len());
        let ctx = self.ctx;
        let pipeline = ctx.pipeline(kernel, constants);
        let bind_group = ctx.bind_group(kernel, bindings);
        let grid = crate::gpu::context::workgroup_grid(groups, ctx.limits().max_compute_workgroups_per_dimension);
        let indirect = guarded.then(|| self.gate_slot(grid));
        ctx.stats.dispatches.fetch_add(1, Ordering::Relaxed);
        let pass = self.compute_pass();
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        match indirect {
            Some((args, offset)) => pass.dispatch_workgroups_indirect(&args, offset),
            None => pass.dispatch_workgroups(grid[0], grid[1], grid[2]),
        }
    }

    /// A slot for the indirect arguments `grid` of a guarded dispatch, in a gate buffer
    /// whose gate kernel ran after every check recorded so far.
    fn gate_slot(&mut self, grid: [u32; 3]) -> (wgpu::Buffer, u64) {
        let checks = self.checks.len();
        let fresh = self.gates.last().is_none_or(|g| g.after_checks != checks || g.planned.len() as u64 == GATE_CAPACITY);
        if fresh {
            let args = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("gated-args"),
                size: GATE_CAPACITY * 16,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::INDIRECT | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let guard = self.guard.clone().expect("a guard exists once a check was recorded");
            let params = self.ctx.uniform(&PassParams { index_count: GATE_CAPACITY as u32, ..Default::default() });
            let bindings = [params.as_entire_binding(), guard.as_entire_binding(), args.as_entire_binding()];
            self.record_dispatch(&GATE, &[], &bindings, GATE_CAPACITY.div_ceil(crate::gpu::context::WORKGROUP_SIZE as u64), false);
            self.gates.push(GateChunk { args, planned: Vec::new(), after_checks: checks });
        }
        let gate = self.gates.last_mut().expect("pushed above");
        gate.planned.push([grid[0], grid[1], grid[2], 0]);
        (gate.args.clone(), (gate.planned.len() as u64 - 1) * 16)
    }

    /// Asks for `tensor`'s bytes as they are at this point of the recording; they come
    /// back, with every other read, from [`Submitted::finish`].
    pub fn read(&mut self, tensor: &GpuTensor) -> ReadId {
        let bytes = tensor.numel() as u64 * tensor.dtype().size() as u64;
        let staging = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes.next_multiple_of(4).max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let row_bytes = (tensor.row_len() * tensor.dtype().size()) as u64;
        let encoder = self.encoder();
        for seg in tensor.segments() {
            let (offset, len) = (seg.first_row * row_bytes, (seg.rows * row_bytes).next_multiple_of(4));
            let len = len.min(staging.size() - offset);
            if len > 0 {
                encoder.copy_buffer_to_buffer(&seg.buffer, 0, &staging, offset, len);
            }
        }
        self.reads.push((staging, bytes));
        ReadId(self.reads.len() - 1)
    }

    /// Notes a texture slot this recording filled (emptied if it is never submitted).
    pub(crate) fn filled_texture(&mut self, slot: Arc<Mutex<Option<Arc<TableTexture>>>>) {
        self.textures.push(slot);
    }

    /// Whether this recording made a texture copy of a table.
    /// Whether this recording holds the copy that fills the texture in `slot`.
    pub(crate) fn fills_texture(&self, slot: &Arc<Mutex<Option<Arc<TableTexture>>>>) -> bool {
        self.textures.iter().any(|s| Arc::ptr_eq(s, slot))
    }

    pub(crate) fn filled_textures(&self) -> bool {
        !self.textures.is_empty()
    }

    /// Hands the commands to the queue as one command buffer. Deferred errors and the
    /// reads come from the returned [`Submitted`].
    ///
    /// # Errors
    /// [`Error::DeviceLost`] if the device is gone; nothing is submitted then.
    pub fn submit(mut self) -> Result<Submitted<'c>> {
        let ctx = self.ctx;
        ctx.check_alive()?;
        for gate in &self.gates {
            ctx.queue.write_buffer(&gate.args, 0, bytemuck::cast_slice(&gate.planned));
        }
        let mut status_reads = Vec::new();
        let statuses: Vec<wgpu::Buffer> = self.checks.iter().map(|c| c.status.clone()).collect();
        for status in &statuses {
            let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("status-readback"),
                size: 8,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.encoder().copy_buffer_to_buffer(status, 0, &staging, 0, 8);
            status_reads.push(staging);
        }
        self.pass = None;
        let encoder = self.encoder.take().expect("submitted once");
        self.capture(|_| ctx.queue.submit([encoder.finish()]));
        ctx.stats.submissions.fetch_add(1, Ordering::Relaxed);
        for slot in self.textures.drain(..) {
            if let Some(t) = slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                t.mark_filled();
            }
        }
        ctx.pool.recording_closed();
        ctx.pool.submitted();
        let checks = std::mem::take(&mut self.checks).into_iter().zip(status_reads).map(|(c, s)| (c.name, c.limit, s)).collect();
        Ok(Submitted { ctx, reads: std::mem::take(&mut self.reads), checks, scopes: std::mem::take(&mut self.scopes), finished: false })
    }

    /// Records the commands and submits them as before this recording existed: for the
    /// library's one-call paths, which report nothing deferred.
    /// Bounds checks it holds go to the context's pending reports, read by the next
    /// awaited submission.
    pub(crate) fn submit_now(self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = self.submit()?.scope_error_now() {
            return Err(e);
        }
        // In the browser the scopes are promises: the web crate awaits scopes of its own.
        #[cfg(target_arch = "wasm32")]
        drop(self.submit()?);
        Ok(())
    }
}

impl std::ops::Deref for Recording<'_> {
    type Target = wgpu::CommandEncoder;
    fn deref(&self) -> &wgpu::CommandEncoder {
        self.encoder.as_ref().expect("a recording's encoder lives until it is submitted")
    }
}

/// Commands recorded through `DerefMut` (copies) go between the dispatches, in order.
impl std::ops::DerefMut for Recording<'_> {
    fn deref_mut(&mut self) -> &mut wgpu::CommandEncoder {
        self.encoder()
    }
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        if self.encoder.is_some() {
            // Never submitted: texture copies it would have filled are made again later.
            for slot in &self.textures {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            self.ctx.pool.recording_closed();
        }
    }
}

/// A submitted recording: await [`Submitted::finish`] for its reads and its deferred
/// errors (natively `finish().block()`, see [`crate::Block`]).
///
/// Dropped without either, its bounds-check reports go to the context and come back
/// from the next awaited submission (see [`Context::deferred_errors`]), so a
/// training loop can submit step after step without a wait and still hear of a bad index.
#[must_use = "await `finish` for the reads and the deferred errors"]
pub struct Submitted<'c> {
    ctx: &'c Context,
    reads: Vec<(wgpu::Buffer, u64)>,
    checks: Vec<(&'static str, u64, wgpu::Buffer)>,
    scopes: Vec<(ScopeResult, ScopeResult)>,
    finished: bool,
}

impl std::fmt::Debug for Submitted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submitted").field("reads", &self.reads.len()).field("checks", &self.checks.len()).finish()
    }
}

/// The values a finished submission read, by [`ReadId`].
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    bytes: Vec<Vec<u8>>,
}

impl Outputs {
    /// The bytes of a read.
    pub fn bytes(&self, id: ReadId) -> &[u8] {
        &self.bytes[id.0]
    }

    /// A read of an F32 tensor, as values.
    pub fn f32(&self, id: ReadId) -> Vec<f32> {
        bytemuck::pod_collect_to_vec(self.bytes(id))
    }

    /// A read of an I32 tensor, as values.
    pub fn i32(&self, id: ReadId) -> Vec<i32> {
        bytemuck::pod_collect_to_vec(self.bytes(id))
    }
}

/// Checks left unread by dropped submissions: reported by the next awaited one.
pub(crate) type PendingChecks = Mutex<Vec<(&'static str, u64, wgpu::Buffer)>>;

/// Error scopes of dropped submissions (browsers: promises), awaited by the next one.
#[cfg(target_arch = "wasm32")]
pub(crate) type PendingScopes = Mutex<Vec<(ScopeResult, ScopeResult)>>;

impl<'c> Submitted<'c> {
    /// A submission of nothing: awaiting it reports what earlier ones left pending.
    pub(crate) fn nothing(ctx: &'c Context) -> Self {
        Submitted { ctx, reads: Vec::new(), checks: Vec::new(), scopes: Vec::new(), finished: false }
    }

    /// A validation or out-of-memory error that a scope of this submission caught.
    #[cfg(not(target_arch = "wasm32"))]
    fn scope_error_now(&mut self) -> Option<Error> {
        let scopes = std::mem::take(&mut self.scopes);
        scopes.into_iter().find_map(|(v, o)| scope_error(v, o))
    }

    /// Waits for the submission (without blocking the thread; what browsers call) and
    /// returns its reads.
    ///
    /// # Errors
    /// The first deferred error: a bad GPU-resident index
    /// ([`Error::IndexOutOfRange`] naming the argument, position and value; guarded
    /// writes were skipped), a validation ([`Error::Device`]) or allocation
    /// ([`Error::OutOfMemory`]) error of the recorded commands, or a lost device. What an
    /// earlier submission dropped unawaited found comes first.
    pub async fn finish(mut self) -> Result<Outputs> {
        self.finished = true;
        let ctx = self.ctx;
        if let Some(e) = ctx.pending_errors.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(e);
        }
        #[cfg(target_arch = "wasm32")]
        let mut scopes = std::mem::take(&mut *ctx.pending_scopes.lock().unwrap_or_else(|p| p.into_inner()));
        #[cfg(not(target_arch = "wasm32"))]
        let mut scopes = Vec::new();
        scopes.append(&mut self.scopes);
        for (v, o) in scopes {
            #[cfg(target_arch = "wasm32")]
            let (v, o) = (v.await, o.await);
            if let Some(e) = scope_error(v, o) {
                return Err(e);
            }
        }
        let mut checks = std::mem::take(&mut *ctx.pending_checks.lock().unwrap_or_else(|p| p.into_inner()));
        checks.append(&mut self.checks);
        let buffers: Vec<&wgpu::Buffer> = checks.iter().map(|(_, _, b)| b).chain(self.reads.iter().map(|(b, _)| b)).collect();
        let mapped = map_all(ctx, &buffers).await?;
        let (status, reads) = mapped.split_at(checks.len());
        let report = checks.iter().zip(status).find_map(|((name, limit, _), words)| {
            let [position, value] = [0, 4].map(|o| u32::from_le_bytes(words[o..o + 4].try_into().expect("4 bytes")));
            (position != u32::MAX).then_some(Error::IndexOutOfRange {
                name,
                position: position as u64,
                value: value as i32 as i64,
                num_embeddings: *limit,
            })
        });
        if let Some(e) = report {
            return Err(e);
        }
        let bytes = reads.iter().zip(&self.reads).map(|(b, (_, len))| b[..*len as usize].to_vec()).collect();
        Ok(Outputs { bytes })
    }
}

impl Drop for Submitted<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if !self.checks.is_empty() {
            self.ctx.pending_checks.lock().unwrap_or_else(|p| p.into_inner()).append(&mut self.checks);
        }
        // Natively the scopes have resolved: their first error waits for the next await.
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = self.scope_error_now() {
            self.ctx.pending_errors.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
        }
        // In the browser they are promises: the next await resolves them.
        #[cfg(target_arch = "wasm32")]
        self.ctx.pending_scopes.lock().unwrap_or_else(|p| p.into_inner()).append(&mut self.scopes);
    }
}

fn scope_error(validation: Option<wgpu::Error>, oom: Option<wgpu::Error>) -> Option<Error> {
    match (oom, validation) {
        (Some(e), _) => Some(Error::OutOfMemory(e.to_string())),
        (None, Some(e)) => Some(Error::Device(e.to_string())),
        (None, None) => None,
    }
}

/// Maps every staging buffer for reading with one wait, and copies their bytes out.
pub(crate) async fn map_all(ctx: &Context, buffers: &[&wgpu::Buffer]) -> Result<Vec<Vec<u8>>> {
    if buffers.is_empty() {
        return Ok(Vec::new());
    }
    let mut receivers = Vec::new();
    for buf in buffers {
        let (tx, rx) = futures::channel::oneshot::channel();
        buf.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        receivers.push(rx);
    }
    ctx.wait_for_gpu()?;
    let mut out = Vec::with_capacity(buffers.len());
    for (buf, rx) in buffers.iter().zip(receivers) {
        match rx.await {
            Ok(Ok(())) => {}
            // A lost device fails every mapping; say so rather than "readback failed".
            Ok(Err(e)) => return Err(ctx.check_alive().err().unwrap_or_else(|| Error::Device(format!("readback failed: {e}")))),
            Err(_) => return Err(ctx.check_alive().err().unwrap_or_else(|| Error::Device("readback cancelled".into()))),
        }
        let view = buf.slice(..).get_mapped_range().map_err(|e| Error::Device(format!("readback: {e}")))?;
        out.push(view.to_vec());
        drop(view);
        buf.unmap();
    }
    ctx.stats.readbacks.fetch_add(1, Ordering::Relaxed);
    ctx.stats.bytes_read_back.fetch_add(out.iter().map(|b| b.len() as u64).sum(), Ordering::Relaxed);
    Ok(out)
}
