//! The GPU context: device, queue, limits, and caches of shader modules,
//! bind-group layouts and compute pipelines shared by every layer.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::gpu::kernel::{Kernel, Slot};
use crate::gpu::pool::{BufferPool, MemoryStats, DEFAULT_POOL_BYTES};
use crate::gpu::recording::{ExecutionStats, PendingChecks, Recording};

/// How to pick and configure the device: `ContextOptions::default()` and its setters.
///
/// ```
/// use wgpu_embed::ContextOptions;
/// let options = ContextOptions::default().max_binding_size(1 << 20).pool_bytes(0);
/// assert_eq!(options.max_binding_size, Some(1 << 20));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ContextOptions {
    /// Backends to look at; `None` honours `WGPU_BACKEND`, else all.
    pub backends: Option<wgpu::Backends>,
    /// Adapter whose name contains this text (case-insensitive); `None` takes the default.
    pub adapter_name: Option<String>,
    /// Behave as if the device's `max_storage_buffer_binding_size` were at most this many
    /// bytes, so that tables are split as on small devices.
    pub max_binding_size: Option<u64>,
    /// Ask for `shader-f16` even if the adapter has it? Off by default: packed f16/bf16
    /// tables work without it.
    pub request_shader_f16: bool,
    /// Refuse, before allocating, any one tensor of more than this many bytes. WebGPU does
    /// not tell how much memory a device has, so a tab or server sharing a GPU sets its own
    /// budget here; without it only the device's buffer limits apply.
    pub max_tensor_bytes: Option<u64>,
    /// Where lookups and bags read table rows from; `Auto` honours
    /// `WGPU_EMBED_TABLE_READS` (`buffer` or `texture`), else picks by device type.
    pub table_reads: TableReads,
    /// Idle bytes of tensor buffers kept for reuse by later calls (`None`: 64 MiB; 0
    /// turns reuse off). See [`Context::memory`].
    pub pool_bytes: Option<u64>,
}

impl ContextOptions {
    /// Sets `backends`.
    pub fn backends(mut self, backends: impl Into<Option<wgpu::Backends>>) -> Self {
        self.backends = backends.into();
        self
    }

    /// Sets `adapter_name`.
    pub fn adapter_name(mut self, adapter_name: impl Into<String>) -> Self {
        self.adapter_name = Some(adapter_name.into());
        self
    }

    /// Sets `max_binding_size`.
    pub fn max_binding_size(mut self, bytes: impl Into<Option<u64>>) -> Self {
        self.max_binding_size = bytes.into();
        self
    }

    /// Sets `request_shader_f16`.
    pub fn request_shader_f16(mut self, request: bool) -> Self {
        self.request_shader_f16 = request;
        self
    }

    /// Sets `max_tensor_bytes`.
    pub fn max_tensor_bytes(mut self, bytes: impl Into<Option<u64>>) -> Self {
        self.max_tensor_bytes = bytes.into();
        self
    }

    /// Sets `table_reads`.
    pub fn table_reads(mut self, table_reads: TableReads) -> Self {
        self.table_reads = table_reads;
        self
    }

    /// Sets `pool_bytes`.
    pub fn pool_bytes(mut self, bytes: impl Into<Option<u64>>) -> Self {
        self.pool_bytes = bytes.into();
        self
    }
}

/// Where `Embedding` / `EmbeddingBag` read their table rows from.
///
/// On CPU adapters (lavapipe, llvmpipe, SwiftShader) every storage-buffer load is
/// emulated one SIMD lane at a time, with a bounds check per component, while a texel
/// fetch is one gather for all lanes: rows read from a texture copy of the table
/// (`rgba32uint`, rows packed end to end) run 2–3x faster there (see examples/bench-results/README.md's
/// benchmarks). On GPUs, coalesced buffer loads are the fast path and need no copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TableReads {
    /// `Texture` on CPU adapters, `Buffer` elsewhere (or as `WGPU_EMBED_TABLE_READS` says).
    #[default]
    Auto,
    /// Straight from the table's storage buffers.
    Buffer,
    /// From a texture copy of the table, made on first use (it doubles the table's
    /// memory); tables too large for one 2-D array texture, and rows that are not
    /// whole vec4 words, still read from buffers.
    Texture,
}

// `FromStr` lets command-line parsers (clap) take `--table-reads buffer` directly.
crate::names::spelled_enum!(TableReads, "table_reads", { Auto => "auto", Buffer => "buffer", Texture => "texture" });

/// A kernel's bind-group layout and the pipeline layout made of it.
type Layouts = (wgpu::BindGroupLayout, wgpu::PipelineLayout);

type PipelineKey = (&'static str, &'static str, Vec<(&'static str, u64)>);

/// Invocations per workgroup of every 1-D kernel (the shaders' `WG_SIZE` override).
pub(crate) const WORKGROUP_SIZE: u32 = 64;

/// Owns a wgpu device and queue, and the compiled pipelines of every layer.
///
/// `Context` is `Send + Sync`: layers may run from several threads at once.
pub struct Context {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    features: wgpu::Features,
    max_binding: u64,
    modules: Mutex<HashMap<&'static str, wgpu::ShaderModule>>,
    layouts: Mutex<HashMap<Vec<(u32, Slot)>, Layouts>>,
    pipelines: Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>,
    max_tensor_bytes: Option<u64>,
    texture_tables: bool,
    /// Buffers of dropped tensors, offered to the next tensors of their size.
    pub(crate) pool: Arc<BufferPool>,
    /// Bound to the slots a kernel variant does not read (a table buffer or texture).
    placeholders: std::sync::OnceLock<(wgpu::Buffer, wgpu::TextureView)>,
    lost: Arc<Mutex<Option<String>>>,
    pub(crate) stats: Counters,
    /// Bounds checks of submissions dropped unawaited (see `Submitted`).
    pub(crate) pending_checks: PendingChecks,
    /// The first scope error of a submission dropped unawaited.
    pub(crate) pending_errors: Mutex<Option<Error>>,
    /// In the browser: the error scopes of submissions dropped unawaited.
    #[cfg(target_arch = "wasm32")]
    pub(crate) pending_scopes: crate::gpu::recording::PendingScopes,
    /// The first device error that no error scope caught (kept for diagnostics; wgpu's
    /// default handler would panic instead).
    uncaptured: Arc<Mutex<Option<String>>>,
}

// Layers run from several threads at once on one context (error scopes are per thread).
#[cfg(not(target_arch = "wasm32"))]
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Context>();
};

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .field("max_binding", &self.max_binding)
            .finish()
    }
}

impl Context {
    /// Creates a context on the default adapter (natively: `Context::new().block()`,
    /// see [`crate::Block`]).
    ///
    /// # Errors
    /// [`Error::NoAdapter`] when no adapter or device could be had.
    pub async fn new() -> Result<Self> {
        Self::with_options(ContextOptions::default()).await
    }

    /// Lists the adapters of the given backends (`None`: `WGPU_BACKEND` or all).
    pub async fn adapters(backends: Option<wgpu::Backends>) -> Vec<wgpu::AdapterInfo> {
        let instance = make_instance(backends);
        instance.enumerate_adapters(instance_backends(backends)).await.iter().map(|a| a.get_info()).collect()
    }

    /// Creates a context, picking the adapter as `options` say.
    pub async fn with_options(options: ContextOptions) -> Result<Self> {
        let instance = make_instance(options.backends);
        let adapter = match &options.adapter_name {
            Some(name) => {
                let want = name.to_lowercase();
                instance
                    .enumerate_adapters(instance_backends(options.backends))
                    .await
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&want))
                    .ok_or_else(|| Error::NoAdapter(format!("no adapter whose name contains {name:?}")))?
            }
            None => instance
                .request_adapter(&wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    ..Default::default()
                })
                .await
                .map_err(|e| Error::NoAdapter(e.to_string()))?,
        };
        Self::from_adapter(&adapter, &options).await
    }

    /// Creates a context on an adapter the caller picked, asking for the adapter's own limits.
    pub async fn from_adapter(adapter: &wgpu::Adapter, options: &ContextOptions) -> Result<Self> {
        let mut features = wgpu::Features::empty();
        let available = adapter.features();
        if options.request_shader_f16 && available.contains(wgpu::Features::SHADER_F16) {
            features |= wgpu::Features::SHADER_F16;
        }
        if available.contains(wgpu::Features::TIMESTAMP_QUERY) {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wgpu-embed"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::NoAdapter(e.to_string()))?;
        let mut ctx = Self::from_device(device, queue, adapter.get_info(), options.max_binding_size);
        ctx.max_tensor_bytes = options.max_tensor_bytes;
        ctx.set_table_reads(options.table_reads)?;
        if let Some(bytes) = options.pool_bytes {
            ctx.pool = BufferPool::new(bytes);
        }
        Ok(ctx)
    }

    /// Wraps a device the caller already has (e.g. shared with a renderer).
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo, max_binding_size: Option<u64>) -> Self {
        let limits = device.limits();
        // Capped at 2 GiB so element offsets inside one binding fit the shaders' u32/i32 math.
        let device_binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size).min(1 << 31);
        // Bindings are kept to whole 256-byte units so sub-range offsets stay aligned.
        let max_binding = max_binding_size.map_or(device_binding, |m| m.min(device_binding)).max(256) & !255;
        let lost = Arc::new(Mutex::new(None));
        let lost_flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            let mut lost = lost_flag.lock().unwrap_or_else(|p| p.into_inner());
            if lost.is_none() {
                *lost = Some(format!("{reason:?}: {message}"));
            }
        });
        // Errors outside our error scopes are recorded rather than panicking the caller.
        let uncaptured = Arc::new(Mutex::new(None));
        let uncaptured_slot = uncaptured.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = uncaptured_slot.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(e.to_string());
            }
        }));
        Self {
            features: device.features(),
            device,
            queue,
            info,
            limits,
            max_binding,
            modules: Mutex::default(),
            layouts: Mutex::default(),
            pipelines: Mutex::default(),
            max_tensor_bytes: None,
            texture_tables: false,
            pool: BufferPool::new(DEFAULT_POOL_BYTES),
            placeholders: std::sync::OnceLock::new(),
            lost,
            stats: Counters::default(),
            pending_checks: PendingChecks::default(),
            pending_errors: Mutex::new(None),
            #[cfg(target_arch = "wasm32")]
            pending_scopes: Default::default(),
            uncaptured,
        }
        .with_auto_table_reads()
    }

    fn with_auto_table_reads(mut self) -> Self {
        // Only an unreadable variable can fail here, and it then means `Auto`.
        let _ = self.set_table_reads(TableReads::Auto);
        self
    }

    /// Chooses where lookups and bags read table rows from (see [`TableReads`]).
    pub fn set_table_reads(&mut self, reads: TableReads) -> Result<()> {
        let reads = match reads {
            TableReads::Auto => match std::env::var("WGPU_EMBED_TABLE_READS") {
                Ok(v) => TableReads::from_str(&v)?,
                Err(_) => TableReads::Auto,
            },
            r => r,
        };
        self.texture_tables = match reads {
            TableReads::Auto => self.info.device_type == wgpu::DeviceType::Cpu,
            r => r == TableReads::Texture,
        };
        Ok(())
    }

    fn placeholders(&self) -> &(wgpu::Buffer, wgpu::TextureView) {
        self.placeholders.get_or_init(|| {
            let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("placeholder"),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            });
            let (texture, view) = word_texture(&self.device, "placeholder", 1, 1, 1);
            // Written once here: a texture bound uninitialised gets wgpu's lazy clear at
            // each use, after which lavapipe's timestamps of later passes read as zero.
            self.queue.write_texture(
                texture.as_image_copy(),
                &[0; 16],
                wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: None, rows_per_image: None },
                wgpu::Extent3d { width: 1, height: 1, depth_or_array_layers: 1 },
            );
            (buffer, view)
        })
    }

    /// A small read-only storage buffer for slots a kernel does not read.
    pub(crate) fn placeholder_buffer(&self) -> &wgpu::Buffer {
        &self.placeholders().0
    }

    /// A 1x1 `rgba32uint` array texture for texture slots a kernel does not read.
    pub(crate) fn placeholder_texture(&self) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::TextureView(&self.placeholders().1)
    }

    /// Whether lookups and bags read table rows from texture copies of the tables.
    pub fn reads_tables_from_textures(&self) -> bool {
        self.texture_tables
    }

    /// The adapter this context runs on.
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The device's limits (the adapter's own, as requested).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Features enabled on the device.
    pub fn features(&self) -> wgpu::Features {
        self.features
    }

    /// Bytes one storage binding may span here (device limit or the option, whichever is less).
    pub fn max_binding_size(&self) -> u64 {
        self.max_binding
    }

    /// The wgpu device, for callers that share it.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// Bytes held by this context's tensors (alive, and idle in the reuse pool) and how
    /// many buffers were created and reused. In a loop of like calls, `live_bytes` and
    /// `buffers_created` stop growing after the first iteration.
    pub fn memory(&self) -> MemoryStats {
        self.pool.stats()
    }

    /// Frees the idle buffers kept for reuse.
    pub fn trim_pool(&self) {
        self.pool.trim();
    }

    /// The per-tensor byte budget of [`ContextOptions::max_tensor_bytes`], if any.
    pub fn max_tensor_bytes(&self) -> Option<u64> {
        self.max_tensor_bytes
    }

    /// Fails with [`Error::DeviceLost`] if the device has been lost or destroyed; every
    /// call checks this first, so a dead context refuses work instead of hanging or
    /// returning zeros.
    pub fn check_alive(&self) -> Result<()> {
        if let Some(reason) = &*self.lost.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(Error::DeviceLost(reason.clone()));
        }
        // `Device::destroy` only marks the device; wgpu reports the loss on the next poll.
        #[cfg(not(target_arch = "wasm32"))]
        let _ = self.device.poll(wgpu::PollType::Poll);
        match &*self.lost.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(reason) => Err(Error::DeviceLost(reason.clone())),
            None => Ok(()),
        }
    }

    /// Destroys the device: the context is dead from now on and every later call returns
    /// [`Error::DeviceLost`] (buffers it made are freed; make a new context to go on).
    pub fn destroy(&self) {
        {
            let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
            if lost.is_none() {
                *lost = Some("Destroyed: Context::destroy was called".into());
            }
        }
        self.device.destroy();
    }

    /// The first device error that happened outside any call of this library (e.g. in
    /// the caller's own use of [`Context::device`]), taken out so it is reported once.
    pub fn take_uncaptured_error(&self) -> Option<String> {
        self.uncaptured.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Refuses an allocation of `bytes` for `what` that the budget or the device cannot hold.
    pub(crate) fn check_allocation(&self, what: &str, bytes: u64) -> Result<()> {
        if let Some(budget) = self.max_tensor_bytes {
            if bytes > budget {
                return Err(Error::OutOfMemory(format!("{what} needs {bytes} bytes, over this context's max_tensor_bytes of {budget}")));
            }
        }
        Ok(())
    }

    fn module(&self, kernel: &Kernel) -> wgpu::ShaderModule {
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        modules
            .entry(kernel.family.name)
            .or_insert_with(|| {
                self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(kernel.family.name),
                    source: wgpu::ShaderSource::Wgsl(kernel.family.source().into()),
                })
            })
            .clone()
    }

    fn layout(&self, kernel: &Kernel) -> (wgpu::BindGroupLayout, wgpu::PipelineLayout) {
        let slots = kernel.layout_key();
        let mut layouts = self.layouts.lock().unwrap_or_else(|p| p.into_inner());
        layouts
            .entry(slots.clone())
            .or_insert_with(|| {
                let entries: Vec<_> = slots
                    .iter()
                    .map(|&(binding, slot)| wgpu::BindGroupLayoutEntry {
                        binding,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: match slot {
                            Slot::Texture => wgpu::BindingType::Texture {
                                sample_type: wgpu::TextureSampleType::Uint,
                                view_dimension: wgpu::TextureViewDimension::D2Array,
                                multisampled: false,
                            },
                            buffer => wgpu::BindingType::Buffer {
                                ty: match buffer {
                                    Slot::Uniform => wgpu::BufferBindingType::Uniform,
                                    Slot::Read => wgpu::BufferBindingType::Storage { read_only: true },
                                    _ => wgpu::BufferBindingType::Storage { read_only: false },
                                },
                                has_dynamic_offset: false,
                                min_binding_size: None,
                            },
                        },
                        count: None,
                    })
                    .collect();
                let bgl = self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: None, entries: &entries });
                let pl = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: None,
                    bind_group_layouts: &[Some(&bgl)],
                    immediate_size: 0,
                });
                (bgl, pl)
            })
            .clone()
    }

    /// The pipeline of `kernel` specialised with `constants` (override name, value), cached.
    pub(crate) fn pipeline(&self, kernel: &Kernel, constants: &[(&'static str, f64)]) -> wgpu::ComputePipeline {
        let key: PipelineKey = (kernel.family.name, kernel.entry, constants.iter().map(|(n, v)| (*n, v.to_bits())).collect());
        if let Some(p) = self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return p.clone();
        }
        let module = self.module(kernel);
        let (_, layout) = self.layout(kernel);
        let mut all: Vec<(&str, f64)> = vec![("WG_SIZE", WORKGROUP_SIZE as f64)];
        all.extend(constants.iter().copied());
        self.stats.pipelines_created.fetch_add(1, Ordering::Relaxed);
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(kernel.entry),
            layout: Some(&layout),
            module: &module,
            entry_point: Some(kernel.entry),
            compilation_options: wgpu::PipelineCompilationOptions { constants: &all, zero_initialize_workgroup_memory: true },
            cache: None,
        });
        self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).insert(key, pipeline.clone());
        pipeline
    }

    /// A small uniform buffer holding `params`.
    pub(crate) fn uniform<T: bytemuck::Pod>(&self, params: &T) -> wgpu::Buffer {
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params"),
            contents: bytemuck::bytes_of(params),
            usage: wgpu::BufferUsages::UNIFORM,
        })
    }

    /// Records one dispatch of `kernel` over `invocations` threads, spreading the
    /// workgroups over y (and z) past the per-dimension limit.
    pub(crate) fn dispatch(
        &self,
        run: &mut Recording<'_>,
        kernel: &Kernel,
        constants: &[(&'static str, f64)],
        bindings: &[wgpu::BindingResource<'_>],
        invocations: u64,
    ) {
        run.dispatch_groups(kernel, constants, bindings, invocations.div_ceil(WORKGROUP_SIZE as u64));
    }

    /// Like [`Context::dispatch`], counted in workgroups (for kernels with a workgroup per item).
    pub(crate) fn dispatch_groups(
        &self,
        run: &mut Recording<'_>,
        kernel: &Kernel,
        constants: &[(&'static str, f64)],
        bindings: &[wgpu::BindingResource<'_>],
        groups: u64,
    ) {
        run.dispatch_groups(kernel, constants, bindings, groups);
    }

    /// The bind group of `kernel` over `bindings` (in the kernel's binding order).
    pub(crate) fn bind_group(&self, kernel: &Kernel, bindings: &[wgpu::BindingResource<'_>]) -> wgpu::BindGroup {
        let (bgl, _) = self.layout(kernel);
        let entries: Vec<_> = kernel
            .bindings
            .iter()
            .zip(bindings)
            .map(|(&(binding, _, _), r)| wgpu::BindGroupEntry { binding, resource: r.clone() })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(kernel.entry), layout: &bgl, entries: &entries })
    }

    /// A new recording: the commands of any number of calls, submitted once (see
    /// [`Recording`]).
    ///
    /// ```
    /// # use wgpu_embed::{Block, Context, Embedding, Indices};
    /// # let ctx = Context::new().block()?;
    /// let table: Vec<f32> = (0..10 * 4).map(|i| i as f32).collect();
    /// let emb = Embedding::from_pretrained(&ctx, &table, 10, 4)?;
    /// let mut run = ctx.record();
    /// let rows = emb.record(&mut run, Indices::i64(&[1, 9], &[2]))?;
    /// let again = emb.record_gpu(&mut run, &ctx_indices(&ctx)?)?; // GPU-resident, checked in the same submission
    /// let (a, b) = (run.read(&rows), run.read(&again));
    /// let out = run.submit()?.finish().block()?;
    /// assert_eq!(out.f32(a)[4..], [36.0, 37.0, 38.0, 39.0]);
    /// assert_eq!(out.f32(b)[..4], [8.0, 9.0, 10.0, 11.0]);
    /// # fn ctx_indices(ctx: &Context) -> wgpu_embed::Result<wgpu_embed::GpuTensor> {
    /// #     wgpu_embed::GpuTensor::from_i32(ctx, &[2], &[1])
    /// # }
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    pub fn record(&self) -> Recording<'_> {
        Recording::new(self)
    }

    /// A one-call path: `f` recorded and submitted at once, without waiting.
    pub(crate) fn run_now<T>(&self, f: impl FnOnce(&mut Recording<'_>) -> Result<T>) -> Result<T> {
        let mut run = self.record();
        let out = f(&mut run)?;
        run.submit_now()?;
        Ok(out)
    }

    /// A one-call path whose deferred errors (bad GPU-resident indices) the caller must
    /// see: `f` recorded, submitted and awaited (one read-back of the status words).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))] // the web crate records and awaits itself
    pub(crate) async fn run_checked<T>(&self, f: impl FnOnce(&mut Recording<'_>) -> Result<T>) -> Result<T> {
        let mut run = self.record();
        let out = f(&mut run)?;
        run.submit()?.finish().await?;
        Ok(out)
    }

    /// Makes the pipelines that `f`'s calls use, ahead of the first real call: `f` is
    /// recorded (on inputs of the shapes the real calls will have, e.g. a dummy query)
    /// and the recording discarded, so nothing runs and no table changes; the pipelines
    /// stay in the context's cache. Call it from another thread to keep the calling one
    /// free (the context is `Send + Sync`).
    ///
    /// ```
    /// # use wgpu_embed::{Block, Context, Embedding, Indices};
    /// # let ctx = Context::new().block()?;
    /// let emb = Embedding::from_pretrained(&ctx, &[0.0; 8 * 4], 8, 4)?;
    /// ctx.prepare(|run| emb.record(run, Indices::i64(&[0], &[1])).map(drop))?;
    /// let made = ctx.stats().pipelines_created;
    /// emb.forward(&ctx, Indices::i64(&[3, 1], &[2]))?;
    /// assert_eq!(ctx.stats().pipelines_created, made, "the call found its pipelines ready");
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    ///
    /// # Errors
    /// What `f` returns.
    pub fn prepare(&self, f: impl FnOnce(&mut Recording<'_>) -> Result<()>) -> Result<()> {
        let mut run = self.record();
        f(&mut run)
    }

    /// A recording for the library's one-call paths.
    pub(crate) fn encoder(&self) -> Recording<'_> {
        Recording::new(self)
    }

    /// Submits a one-call path's recording, catching validation and out-of-memory errors
    /// of the submission.
    pub(crate) fn submit(&self, run: Recording<'_>) -> Result<()> {
        run.submit_now()
    }

    /// Submissions, blocking waits, pipelines created, dispatches and read-backs so far.
    pub fn stats(&self) -> ExecutionStats {
        let c = &self.stats;
        ExecutionStats {
            submissions: c.submissions.load(Ordering::Relaxed),
            waits: c.waits.load(Ordering::Relaxed),
            pipelines_created: c.pipelines_created.load(Ordering::Relaxed),
            dispatches: c.dispatches.load(Ordering::Relaxed),
            readbacks: c.readbacks.load(Ordering::Relaxed),
            bytes_read_back: c.bytes_read_back.load(Ordering::Relaxed),
        }
    }

    /// Blocks until the submitted work has finished (counted in [`Context::stats`]);
    /// in the browser mappings resolve by themselves.
    pub(crate) fn wait_for_gpu(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.stats.waits.fetch_add(1, Ordering::Relaxed);
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| self.check_alive().err().unwrap_or(Error::Device(e.to_string())))?;
        }
        Ok(())
    }

    /// What submissions dropped without being awaited found (see [`crate::Submitted`]):
    /// their bounds-check reports, read back now (one read-back, if there are any), and
    /// their validation and out-of-memory errors (in the browser, the one-call methods'
    /// too: their scopes are promises that this awaits).
    ///
    /// # Errors
    /// The first bad index they found, as [`Error::IndexOutOfRange`], or the first
    /// device error.
    pub async fn deferred_errors(&self) -> Result<()> {
        crate::gpu::recording::Submitted::nothing(self).finish().await.map(|_| ())
    }

    /// Runs `f` inside validation and out-of-memory error scopes and reports what they caught.
    pub(crate) fn scoped<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.check_alive()?;
        // A browser cannot block on the scopes' promises: there the web crate wraps each
        // call in its own error scopes and awaits them.
        #[cfg(target_arch = "wasm32")]
        let result = f();
        #[cfg(not(target_arch = "wasm32"))]
        let result = {
            let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
            let validation = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let result = f();
            let v = futures::executor::block_on(validation.pop());
            let o = futures::executor::block_on(oom.pop());
            self.check_alive()?;
            if let Some(e) = o {
                return Err(Error::OutOfMemory(e.to_string()));
            }
            if let Some(e) = v {
                return Err(Error::Device(e.to_string()));
            }
            result
        };
        self.check_alive()?;
        result
    }

    /// Runs `f` (e.g. the caller's own wgpu calls on [`Context::device`]) inside
    /// validation and out-of-memory error scopes: what they catch comes back as
    /// [`Error::Device`] or [`Error::OutOfMemory`] instead of a panic, and the context
    /// stays usable.
    pub fn catch_errors<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        self.scoped(|| Ok(f()))
    }

    /// Blocks until all submitted work has finished (native); no-op in the browser.
    pub fn wait_idle(&self) -> Result<()> {
        self.wait_for_gpu()?;
        self.check_alive()
    }
}

/// The context's counters behind [`Context::stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub submissions: AtomicU64,
    pub waits: AtomicU64,
    pub pipelines_created: AtomicU64,
    pub dispatches: AtomicU64,
    pub readbacks: AtomicU64,
    pub bytes_read_back: AtomicU64,
}

/// A storage buffer of `n` u32 words (at least 16 bytes: empty bindings are invalid).
pub(crate) fn words(ctx: &Context, label: &str, n: u64) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (n * 4).max(16),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// A storage buffer holding `data` (at least 16 bytes).
pub(crate) fn upload<T: bytemuck::Pod>(ctx: &Context, label: &str, data: &[T]) -> wgpu::Buffer {
    use wgpu::util::DeviceExt;
    let mut bytes: Vec<u8> = bytemuck::cast_slice(data).to_vec();
    bytes.resize(bytes.len().next_multiple_of(4).max(16), 0);
    ctx.device().create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents: &bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
    })
}

/// An `rgba32uint` 2-D array texture the kernels can read and copies can fill, and its
/// array view (tables' texture copies, and the placeholder of unread texture slots).
pub(crate) fn word_texture(device: &wgpu::Device, label: &str, width: u32, height: u32, layers: u32) -> (wgpu::Texture, wgpu::TextureView) {
    let texture = device.create_texture(&wgpu::TextureDescriptor {
        label: Some(label),
        size: wgpu::Extent3d { width, height, depth_or_array_layers: layers },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: wgpu::TextureFormat::Rgba32Uint,
        usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
        view_formats: &[],
    });
    let view =
        texture.create_view(&wgpu::TextureViewDescriptor { dimension: Some(wgpu::TextureViewDimension::D2Array), ..Default::default() });
    (texture, view)
}

/// Splits `groups` workgroups into an x/y/z grid under `max_per_dim`. The shaders
/// recover the linear workgroup index from `num_workgroups` and skip the excess.
pub(crate) fn workgroup_grid(groups: u64, max_per_dim: u32) -> [u32; 3] {
    let m = max_per_dim.max(1) as u64;
    let x = groups.min(m);
    let rest = groups.div_ceil(x);
    let y = rest.min(m);
    let z = rest.div_ceil(y);
    [x as u32, y as u32, z.min(m) as u32]
}

fn instance_backends(backends: Option<wgpu::Backends>) -> wgpu::Backends {
    backends.or_else(wgpu::Backends::from_env).unwrap_or(wgpu::Backends::all())
}

fn make_instance(backends: Option<wgpu::Backends>) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = instance_backends(backends);
    wgpu::Instance::new(desc)
}

#[cfg(test)]
mod tests {
    use super::workgroup_grid;

    #[test]
    fn grid_covers_every_group_within_limits() {
        for (groups, max) in [(1u64, 65535u32), (65535, 65535), (65536, 65535), (10_000_000, 65535), (300, 7), (343, 7)] {
            let [x, y, z] = workgroup_grid(groups, max);
            assert!(x <= max && y <= max && z <= max);
            assert!(x as u64 * y as u64 * z as u64 >= groups, "{groups} {max}");
        }
        assert_eq!(workgroup_grid(65536, 65535), [65535, 2, 1]);
    }
}
