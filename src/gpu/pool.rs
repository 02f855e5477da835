//! Tensor buffers reused across calls.
//!
//! Every layer call makes tensors (its uploaded indices, its output); without reuse each
//! is a fresh device allocation. Here a dropped tensor's buffer goes back to its
//! context's pool, keyed by byte size, and the next tensor of that size takes it, so a
//! loop of like calls allocates nothing after its first iteration and the context's GPU
//! memory stays flat. Idle buffers are capped in bytes; past the cap they are freed.
//!
//! A tensor may be dropped while a command encoder that uses it is still being
//! recorded (wgpu keeps the buffer alive for it). Its buffer is therefore held back until
//! the context's next submission, and only then offered again; reused buffers are
//! cleared or filled with `Queue::write_buffer`, which runs before the next submission's
//! commands, so the pool itself never submits while an encoder may be open.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Idle bytes a pool keeps by default (see `ContextOptions::pool_bytes`).
pub const DEFAULT_POOL_BYTES: u64 = 64 << 20;

/// Larger buffers are not pooled (freed when their tensor goes): clearing one for reuse
/// would cost a host-side write of its size.
pub(crate) const MAX_POOLED_BUFFER: u64 = 16 << 20;

/// What a context's tensors hold on the device now (see `Context::memory`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes of the buffers of tensors alive now.
    pub live_bytes: u64,
    /// Bytes of idle buffers kept for reuse.
    pub pooled_bytes: u64,
    /// Buffers created since the context was made.
    pub buffers_created: u64,
    /// Buffers handed out again from the pool.
    pub buffers_reused: u64,
}

#[derive(Debug)]
pub(crate) struct BufferPool {
    idle: Mutex<HashMap<u64, Vec<wgpu::Buffer>>>,
    /// Returned since the last submission: not offered until the next one.
    held: Mutex<Vec<wgpu::Buffer>>,
    cap: u64,
    live: AtomicU64,
    pooled: AtomicU64,
    created: AtomicU64,
    reused: AtomicU64,
    /// Recordings open now: buffers returned while one is open are held until it is
    /// submitted (its commands may still read them after a `write_buffer` would run).
    recordings: AtomicU64,
}

/// A tensor buffer's tie to its pool: when the last segment sharing it drops, the buffer
/// goes back (or is freed, past the cap or once the context is gone).
#[derive(Debug)]
pub(crate) struct Lease {
    buffer: wgpu::Buffer,
    pool: Weak<BufferPool>,
    /// Free the memory now instead of keeping the buffer (`GpuTensor::release`).
    destroy: bool,
}

impl Lease {
    /// For a user done with a finished tensor: a buffer the pool would not keep is
    /// destroyed now (browsers otherwise free it only when it is garbage-collected);
    /// others go back to the pool as on drop.
    pub(crate) fn release(mut self) {
        self.destroy = match self.pool.upgrade() {
            Some(pool) => self.buffer.size() > MAX_POOLED_BUFFER.min(pool.cap),
            None => true,
        };
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let pool = self.pool.upgrade();
        if let Some(pool) = &pool {
            pool.live.fetch_sub(self.buffer.size(), Ordering::Relaxed);
        }
        match pool {
            Some(pool) if !self.destroy => pool.give_back(self.buffer.clone()),
            _ if self.destroy => self.buffer.destroy(),
            // Dropped, not destroyed: an encoder still being recorded may use it.
            _ => {}
        }
    }
}

impl BufferPool {
    pub(crate) fn new(cap: u64) -> Arc<Self> {
        Arc::new(BufferPool {
            idle: Mutex::default(),
            held: Mutex::default(),
            cap,
            live: AtomicU64::new(0),
            pooled: AtomicU64::new(0),
            created: AtomicU64::new(0),
            reused: AtomicU64::new(0),
            recordings: AtomicU64::new(0),
        })
    }

    /// An idle buffer of exactly `size` bytes, if one is kept. Its contents are whatever
    /// its last tensor left: the caller overwrites or clears it.
    pub(crate) fn take(&self, size: u64) -> Option<wgpu::Buffer> {
        let buffer = self.idle.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&size)?.pop()?;
        self.pooled.fetch_sub(size, Ordering::Relaxed);
        self.reused.fetch_add(1, Ordering::Relaxed);
        Some(buffer)
    }

    pub(crate) fn note_created(&self) {
        self.created.fetch_add(1, Ordering::Relaxed);
    }

    /// Ties `buffer` (now in a tensor) to this pool.
    pub(crate) fn lease(self: &Arc<Self>, buffer: wgpu::Buffer) -> Arc<Lease> {
        self.live.fetch_add(buffer.size(), Ordering::Relaxed);
        Arc::new(Lease { buffer, pool: Arc::downgrade(self), destroy: false })
    }

    fn give_back(&self, buffer: wgpu::Buffer) {
        // Too large to pool: dropped (wgpu frees it once no recorded work uses it).
        if buffer.size() <= MAX_POOLED_BUFFER.min(self.cap) {
            self.held.lock().unwrap_or_else(|p| p.into_inner()).push(buffer);
        }
    }

    pub(crate) fn recording_opened(&self) {
        self.recordings.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn recording_closed(&self) {
        self.recordings.fetch_sub(1, Ordering::Relaxed);
    }

    /// Called after each submission: what was held back may be reused now, unless a
    /// recording is still open.
    pub(crate) fn submitted(&self) {
        if self.recordings.load(Ordering::Relaxed) > 0 {
            return;
        }
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()));
        if held.is_empty() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        for buffer in held {
            let size = buffer.size();
            // Past the cap the buffer is dropped: wgpu frees it after the work in flight.
            if self.pooled.load(Ordering::Relaxed) + size <= self.cap {
                self.pooled.fetch_add(size, Ordering::Relaxed);
                idle.entry(size).or_default().push(buffer);
            }
        }
    }

    /// Frees every idle buffer.
    pub(crate) fn trim(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        for buffer in idle.drain().flat_map(|(_, v)| v) {
            self.pooled.fetch_sub(buffer.size(), Ordering::Relaxed);
        }
    }

    pub(crate) fn stats(&self) -> MemoryStats {
        MemoryStats {
            live_bytes: self.live.load(Ordering::Relaxed),
            pooled_bytes: self.pooled.load(Ordering::Relaxed),
            buffers_created: self.created.load(Ordering::Relaxed),
            buffers_reused: self.reused.load(Ordering::Relaxed),
        }
    }
}
