// Generic kernels over u32 arrays (src/gpu/sort.rs): a stable sort of (key, value)
// pairs by key and an exclusive prefix sum.
// Integer work only: orders and sums that do not depend on scheduling, so whatever
// is built on them (the backward passes) gives the same bits run after run.
// Parts: common/grid.wgsl, common/pass.wgsl, then this file.
// Pass fields: rows = the elements n; arg0 the run width (merge) or the chunk length
// (scan).

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

// Outputs one merge invocation writes.
const MERGE_CHUNK: u32 = 16u;

// One merge pass: sorted runs of arg0 pairs merge two by two, stably (equal keys keep
// the left run first). Each invocation writes MERGE_CHUNK consecutive outputs of one
// pair: a binary search finds how many of the left run come before its first output
// (the merge path's co-rank), then it merges sequentially. Run widths are multiples of
// MERGE_CHUNK / 2, so no invocation's outputs straddle two pairs.
@compute @workgroup_size(WG_SIZE)
fn merge_runs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = params.rows;
    let first_out = linear_id(wid, nwg, lid) * MERGE_CHUNK;
    if (first_out >= n) { return; }
    let width = params.arg0;
    let a0 = (first_out / (2u * width)) * (2u * width);
    let na = min(width, n - a0);
    let b0 = a0 + na;
    let nb = min(width, n - b0);
    let d = first_out - a0;
    var lo = select(0u, d - nb, d > nb);
    var hi = min(d, na);
    while (lo < hi) {
        let mid = (lo + hi) / 2u;
        if (keys_in[a0 + mid] <= keys_in[b0 + d - mid - 1u]) { lo = mid + 1u; } else { hi = mid; }
    }
    var i = lo;
    var j = d - lo;
    // The heads of both runs stay in registers: one key load per output.
    let no_key = 0xffffffffu;
    var ka = no_key;
    var kb = no_key;
    if (i < na) { ka = keys_in[a0 + i]; }
    if (j < nb) { kb = keys_in[b0 + j]; }
    let end = min(first_out + MERGE_CHUNK, b0 + nb);
    for (var o = first_out; o < end; o++) {
        // An exhausted run's head is never taken (a key of 0xffffffff in the other run
        // ties with it: the left run's goes first, as it should).
        if (i < na && (j >= nb || ka <= kb)) {
            keys_out[o] = ka;
            values_out[o] = values_in[a0 + i];
            i++;
            if (i < na) { ka = keys_in[a0 + i]; }
        } else {
            keys_out[o] = kb;
            values_out[o] = values_in[b0 + j];
            j++;
            if (j < nb) { kb = keys_in[b0 + j]; }
        }
    }
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
