//! Sorting and scanning u32 arrays on the GPU, with integer work only: the
//! orders and sums do not depend on how invocations are scheduled, so what is built on
//! them (the backward passes) gives identical bits run after run. Shader family:
//! `sort.wgsl`. Each array lives in one buffer (one binding).

use crate::error::{Error, Result};
use crate::gpu::context::{words, Context};
use crate::gpu::kernel::{binding, common, Kernel, Role, ShaderFamily, Slot};
use crate::gpu::plan::{record_flat, Call, Grid, PassParams, FIRST_PASS};
use crate::gpu::recording::Recording;

pub(crate) static FAMILY: ShaderFamily =
    ShaderFamily { name: "sort", parts: &[common::GRID, common::PASS, include_str!("../../shaders/sort.wgsl")] };

const KEYS_IN: (u32, Slot, Role) = (10, Slot::Read, Role::Extra(0));
const VALUES_IN: (u32, Slot, Role) = (11, Slot::Read, Role::Extra(1));
const PAIRS: &[(u32, Slot, Role)] =
    &[binding::PARAMS, KEYS_IN, VALUES_IN, (12, Slot::ReadWrite, Role::Extra(2)), (13, Slot::ReadWrite, Role::Extra(3))];
const ONE_OUT: &[(u32, Slot, Role)] = &[binding::PARAMS, KEYS_IN, (12, Slot::ReadWrite, Role::Extra(1))];

const SORT_RUNS: Kernel = Kernel::new(&FAMILY, "sort_runs", PAIRS);
const MERGE_RUNS: Kernel = Kernel::new(&FAMILY, "merge_runs", PAIRS);
const CHUNK_SUMS: Kernel = Kernel::new(&FAMILY, "chunk_sums", ONE_OUT);
const CHUNK_SCAN: Kernel =
    Kernel::new(&FAMILY, "chunk_scan", &[binding::PARAMS, KEYS_IN, VALUES_IN, (12, Slot::ReadWrite, Role::Extra(2))]);

/// `LOCAL_RUN` of the shader: pairs one invocation sorts before merging.
const LOCAL_RUN: u64 = 8;
/// `MERGE_CHUNK` of the shader: outputs one merge invocation writes.
const MERGE_CHUNK: u64 = 16;
/// Elements one scan invocation adds up.
const SCAN_CHUNK: u64 = 256;

/// Refuses lists of `n` elements of `bytes_each` that one binding cannot hold.
pub(crate) fn check_list_len(ctx: &Context, name: &'static str, n: u64, bytes_each: u64) -> Result<()> {
    let limit = ctx.max_binding_size() / bytes_each;
    if n > limit || n >= u32::MAX as u64 / 2 {
        return Err(Error::arg(
            name,
            format!(
                "{n} entries are more than one call sorts on this device (at most {limit}: its storage binding size is {} bytes)",
                ctx.max_binding_size()
            ),
        ));
    }
    Ok(())
}

fn pass(kernel: &'static Kernel, extra: &[wgpu::Buffer], params: PassParams) -> (Call<'static>, Vec<wgpu::Buffer>) {
    (Call::new(kernel, &[], Grid::Elements(1), params), extra.to_vec())
}

fn run(ctx: &Context, encoder: &mut Recording<'_>, kernel: &'static Kernel, extra: &[wgpu::Buffer], params: PassParams, items: u64) {
    let (call, extra) = pass(kernel, extra, params);
    record_flat(ctx, encoder, &Call { extra: &extra, ..call }, None, None, items);
}

/// The pairs `(keys[i], values[i])`, `i < n`, sorted by key, stably: their sorted keys
/// and values, in new buffers.
pub(crate) fn record_sort(
    ctx: &Context,
    encoder: &mut Recording<'_>,
    keys: &wgpu::Buffer,
    values: &wgpu::Buffer,
    n: u64,
) -> (wgpu::Buffer, wgpu::Buffer) {
    let mut a = (words(ctx, "sort-keys", n), words(ctx, "sort-values", n));
    let mut b = (words(ctx, "sort-keys", n), words(ctx, "sort-values", n));
    let params = PassParams { rows: n as u32, ..Default::default() };
    run(ctx, encoder, &SORT_RUNS, &[keys.clone(), values.clone(), a.0.clone(), a.1.clone()], params, n.div_ceil(LOCAL_RUN));
    let mut width = LOCAL_RUN;
    while width < n {
        let p = PassParams { arg0: width as u32, ..params };
        run(ctx, encoder, &MERGE_RUNS, &[a.0.clone(), a.1.clone(), b.0.clone(), b.1.clone()], p, n.div_ceil(MERGE_CHUNK));
        std::mem::swap(&mut a, &mut b);
        width *= 2;
    }
    a
}

/// The exclusive prefix sums of `input[..n]`, in a new buffer of `n` words (give an
/// input with a trailing 0 to get the total as the last sum).
pub(crate) fn record_exclusive_scan(ctx: &Context, encoder: &mut Recording<'_>, input: &wgpu::Buffer, n: u64) -> wgpu::Buffer {
    let out = words(ctx, "scan", n);
    let chunks = n.div_ceil(SCAN_CHUNK);
    let params = PassParams { rows: n as u32, arg0: SCAN_CHUNK as u32, ..Default::default() };
    if chunks <= 1 {
        let p = PassParams { flags: FIRST_PASS, ..params };
        run(ctx, encoder, &CHUNK_SCAN, &[input.clone(), input.clone(), out.clone()], p, 1);
        return out;
    }
    let sums = words(ctx, "scan-sums", chunks);
    run(ctx, encoder, &CHUNK_SUMS, &[input.clone(), sums.clone()], params, chunks);
    let bases = record_exclusive_scan(ctx, encoder, &sums, chunks);
    run(ctx, encoder, &CHUNK_SCAN, &[input.clone(), bases, out.clone()], params, chunks);
    out
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use crate::gpu::tensor::{DType, GpuTensor};
    use crate::Block;

    fn read(ctx: &Context, b: &wgpu::Buffer, n: usize) -> Vec<u32> {
        let t = GpuTensor::from_buffer(b.clone(), &[n], DType::U32);
        bytemuck::pod_collect_to_vec(&t.read_bytes(ctx).block().unwrap())
    }

    fn upload(ctx: &Context, v: &[u32]) -> wgpu::Buffer {
        crate::gpu::context::upload(ctx, "test", v)
    }

    #[test]
    fn sort_is_stable_and_matches_the_host() {
        let ctx = Context::new().block().expect("a GPU adapter (lavapipe on CI)");
        for n in [1usize, 7, 8, 9, 100, 1000, 5003] {
            // Many equal keys, so stability shows.
            let keys: Vec<u32> = (0..n as u32).map(|i| (i.wrapping_mul(2654435761) >> 7) % 37).collect();
            let values: Vec<u32> = (0..n as u32).collect();
            let (kb, vb) = (upload(&ctx, &keys), upload(&ctx, &values));
            let mut encoder = ctx.encoder();
            let (sk, sv) = record_sort(&ctx, &mut encoder, &kb, &vb, n as u64);
            ctx.submit(encoder).unwrap();
            let mut want: Vec<(u32, u32)> = keys.iter().copied().zip(values.iter().copied()).collect();
            want.sort_by_key(|&(k, _)| k);
            let got: Vec<(u32, u32)> = read(&ctx, &sk, n).into_iter().zip(read(&ctx, &sv, n)).collect();
            assert_eq!(got, want, "n = {n}");
        }
    }

    #[test]
    fn exclusive_scan_matches_the_host() {
        let ctx = Context::new().block().expect("a GPU adapter (lavapipe on CI)");
        for n in [1usize, 255, 256, 257, 70_000] {
            let input: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
            let b = upload(&ctx, &input);
            let mut encoder = ctx.encoder();
            let out = record_exclusive_scan(&ctx, &mut encoder, &b, n as u64);
            ctx.submit(encoder).unwrap();
            let want: Vec<u32> = input.iter().scan(0u32, |s, &x| Some(std::mem::replace(s, *s + x))).collect();
            assert_eq!(read(&ctx, &out, n), want, "n = {n}");
        }
    }
}
