// Generic kernels over u32 arrays (src/gpu/sort.rs): a stable sort of (key, value)
// pairs by key, lower bounds of keys in a sorted list, and an exclusive prefix sum.
// Integer work only: orders and sums that do not depend on scheduling, so whatever
// is built on them (the backward passes) gives the same bits run after run.
// Parts: common/grid.wgsl, common/pass.wgsl, then this file.
// Pass fields: rows = the elements n; arg0 the run width (merge), the first key
// (lower bounds) or the chunk length (scan); arg1 the bounds wanted.

@group(0) @binding(10) var<storage, read> keys_in: array<u32>;
@group(0) @binding(11) var<storage, read> values_in: array<u32>;
@group(0) @binding(12) var<storage, read_write> keys_out: array<u32>;
@group(0) @binding(13) var<storage, read_write> values_out: array<u32>;

// Elements one invocation sorts before the merge passes.
const LOCAL_RUN: u32 = 8u;

// Sorts each run of LOCAL_RUN pairs by key, stably (insertion sort in registers).
@compute @workgroup_size(WG_SIZE)
fn sort_runs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let start = linear_id(wid, nwg, lid) * LOCAL_RUN;
    if (start >= params.rows) { return; }
    let len = min(LOCAL_RUN, params.rows - start);
    var k: array<u32, LOCAL_RUN>;
    var v: array<u32, LOCAL_RUN>;
    for (var i = 0u; i < len; i++) {
        k[i] = keys_in[start + i];
        v[i] = values_in[start + i];
    }
    for (var i = 1u; i < len; i++) {
        let key = k[i];
        let value = v[i];
        var j = i;
        while (j > 0u && k[j - 1u] > key) {
            k[j] = k[j - 1u];
            v[j] = v[j - 1u];
            j--;
        }
        k[j] = key;
        v[j] = value;
    }
    for (var i = 0u; i < len; i++) {
        keys_out[start + i] = k[i];
        values_out[start + i] = v[i];
    }
}

// One merge pass: sorted runs of arg0 pairs merge two by two. Each element finds its
// place alone: its rank in its own run plus the number of the partner run's keys
// that go before it (smaller ones; equal ones too when the partner is the left run),
// by binary search. That keeps equal keys in input order (stable).
@compute @workgroup_size(WG_SIZE)
fn merge_runs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    let n = params.rows;
    if (i >= n) { return; }
    let width = params.arg0;
    let run = i / width;
    let own_start = run * width;
    let left = (run & 1u) == 0u;
    var partner_start = own_start - width;
    if (left) { partner_start = min(own_start + width, n); }
    let partner_end = min(partner_start + width, n);
    let key = keys_in[i];
    var lo = partner_start;
    var hi = partner_end;
    while (lo < hi) {
        let mid = (lo + hi) / 2u;
        let k = keys_in[mid];
        if (k < key || (!left && k == key)) { lo = mid + 1u; } else { hi = mid; }
    }
    let dst = min(own_start, partner_start) + (i - own_start) + (lo - partner_start);
    keys_out[dst] = key;
    values_out[dst] = values_in[i];
}

// First position in keys_in[0 .. n) whose key is >= `key`.
fn lower_bound(key: u32) -> u32 {
    var lo = 0u;
    var hi = params.rows;
    while (lo < hi) {
        let mid = (lo + hi) / 2u;
        if (keys_in[mid] < key) { lo = mid + 1u; } else { hi = mid; }
    }
    return lo;
}

// keys_out[i] = the first position of key arg0 + i in the sorted keys, for i in
// 0 ..= arg1 - 1: the bounds of consecutive keys' runs.
@compute @workgroup_size(WG_SIZE)
fn lower_bounds(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = linear_id(wid, nwg, lid);
    if (i >= params.arg1) { return; }
    keys_out[i] = lower_bound(params.arg0 + i);
}

// Exclusive prefix sum in chunks of arg0 elements, one invocation per chunk (no
// barriers, which CPU adapters run slowly); the sums of chunks are scanned the same
// way, a level up (src/gpu/sort.rs).
@compute @workgroup_size(WG_SIZE)
fn chunk_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let chunk = linear_id(wid, nwg, lid);
    let start = chunk * params.arg0;
    if (start >= params.rows) { return; }
    let end = min(start + params.arg0, params.rows);
    var sum = 0u;
    for (var i = start; i < end; i++) { sum += keys_in[i]; }
    keys_out[chunk] = sum;
}

// keys_out[i] = the sum of keys_in before i: each chunk starts from its chunk's
// scanned sum (values_in), or from 0 on the top level (FLAG_FIRST_PASS).
@compute @workgroup_size(WG_SIZE)
fn chunk_scan(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let chunk = linear_id(wid, nwg, lid);
    let start = chunk * params.arg0;
    if (start >= params.rows) { return; }
    let end = min(start + params.arg0, params.rows);
    var running = 0u;
    if (!has_flag(FLAG_FIRST_PASS)) { running = values_in[chunk]; }
    for (var i = start; i < end; i++) {
        let x = keys_in[i];
        keys_out[i] = running;
        running += x;
    }
}
