// torch.nn.Embedding: row lookup and in-place max-norm renormalisation.
// A lookup pass handles one output segment against one table slice; rows whose index
// falls outside the bound slice are left to another pass. Parts: common/grid.wgsl,
// common/pass.wgsl, common/table.wgsl, then this file.

@compute @workgroup_size(WG_SIZE)
fn lookup(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = output_element(wid, nwg, lid);
    if (e.x == NO_ELEMENT) { return; }
    let index = checked_row(indices[e.y], params.index_first + e.y, e.z == 0u);
    if (index == BAD_ROW) {
        // Never read outside the table: the reporting pass writes zeros.
        if (has_flag(FLAG_REPORT_BAD)) { out[e.x] = 0.0; }
        return;
    }
    if (!slice_holds_row(index)) { return; }
    out[e.x] = table_element(index, e.z);
}

// Vectorised lookup, for tables whose rows are whole vec4 words (F32 with D % 4 == 0,
// F16 / BF16 with D % 8 == 0). LANES invocations share one output row and move its
// vec4 words at stride LANES, so a workgroup copies WG_SIZE / LANES rows with
// contiguous 16-byte loads and stores (as FBGEMM's TBE forward gives a row to a warp).
override LANES: u32 = 16u; // values: 1, 2, 4, 8, 16, 32, 64

@compute @workgroup_size(WG_SIZE)
fn lookup_vec4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = group_index(wid, nwg) * (WG_SIZE / LANES) + lid.x / LANES;
    let lane = lid.x % LANES;
    if (row >= params.rows) { return; }
    let out_words = params.dim / 4u;
    let in_words = select(out_words / 2u, out_words, TABLE_FORMAT == 0u);
    let dst = row * out_words;
    let index = checked_row(indices[row], params.index_first + row, lane == 0u);
    if (index == BAD_ROW) {
        if (has_flag(FLAG_REPORT_BAD)) {
            for (var c = lane; c < out_words; c += LANES) { out4[dst + c] = vec4<f32>(0.0); }
        }
        return;
    }
    if (!slice_holds_row(index)) { return; }
    let src = (index - params.first0) * in_words;
    for (var c = lane; c < in_words; c += LANES) {
        let w = table_word(src + c);
        if (TABLE_FORMAT == 0u) {
            out4[dst + c] = bitcast<vec4<f32>>(w);
        } else {
            out4[dst + 2u * c] = widen_half4(w, false);
            out4[dst + 2u * c + 1u] = widen_half4(w, true);
        }
    }
}

// embedding_renorm_: every row referenced by the bound index segment whose norm
// exceeds max_norm (arg0, f32 bits) is scaled by max_norm / (norm + 1e-7), once per
// row. norm_type (arg1, f32 bits) is p of the p-norm, +inf for the max norm.
@group(0) @binding(1) var<storage, read_write> renorm_table: array<f32>;
// One bit per table row of the bound slice: each referenced row is scaled once, as
// embedding_renorm_ does after taking the unique indices.
@group(0) @binding(7) var<storage, read_write> renorm_claimed: array<atomic<u32>>;

fn is_inf(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) == 0x7f800000u;
}

@compute @workgroup_size(WG_SIZE)
fn renorm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    if (id >= params.index_count) { return; }
    let index = table_row(indices[id]);
    if (index == BAD_ROW || !slice_holds_row(index)) { return; }
    let local = index - params.first0;
    let bit = 1u << (local & 31u);
    let previous = atomicOr(&renorm_claimed[local >> 5u], bit);
    if ((previous & bit) != 0u) { return; }

    let base = local * params.dim;
    let max_norm = bitcast<f32>(params.arg0);
    let p = bitcast<f32>(params.arg1);
    var acc = 0.0;
    for (var c = 0u; c < params.dim; c++) {
        let a = abs(renorm_table[base + c]);
        if (is_inf(p)) {
            acc = max(acc, a);
        } else if (p == 1.0) {
            acc += a;
        } else if (p == 2.0) {
            acc += a * a;
        } else if (p == 0.0) {
            acc += select(0.0, 1.0, a != 0.0);
        } else {
            acc += pow(a, p);
        }
    }
    var norm = acc;
    if (p == 2.0) {
        norm = sqrt(acc);
    } else if (!is_inf(p) && p != 1.0 && p != 0.0) {
        norm = pow(acc, 1.0 / p);
    }
    if (norm > max_norm) {
        let scale = max_norm / (norm + 1e-7);
        for (var c = 0u; c < params.dim; c++) {
            renorm_table[base + c] = renorm_table[base + c] * scale;
        }
    }
}
