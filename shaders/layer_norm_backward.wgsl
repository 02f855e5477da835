// Backward of LayerNorm over the last dimension (and, through it, of StableEmbedding
// and BERT's embedding block): with xhat = (x - mean) · rstd and g' = grad_out · gamma,
//   grad_x = rstd · (g' - mean(g') - xhat · mean(g' · xhat)),
//   grad_gamma = Σ_rows grad_out · xhat,   grad_beta = Σ_rows grad_out.
// Column sums go through per-chunk partial sums and a second pass, in a fixed order:
// no float atomics, the same bits every run. Parts: common/grid.wgsl,
// common/pass.wgsl, then this file. Pass fields: dim, arg0 eps (f32 bits), arg1
// affine (bit 0: gamma at ln_affine[0 .. dim]), arg2 rows per segment, arg3 rows per
// chunk of the partial sums.

@group(0) @binding(2) var<storage, read> x_rows: array<f32>;
// Rows of dim + 2: x minus its first value, then the mean of that and rstd.
@group(0) @binding(2) var<storage, read> shifted: array<f32>;
@group(0) @binding(9) var<storage, read> grad_rows: array<f32>;
@group(0) @binding(5) var<storage, read> ln_affine: array<f32>;
@group(0) @binding(10) var<storage, read_write> partials: array<f32>;
@group(0) @binding(10) var<storage, read> partials_in: array<f32>;

fn gamma(c: u32) -> f32 {
    if ((params.arg1 & 1u) != 0u) { return ln_affine[c]; }
    return 1.0;
}

// One row's statistics, as the forward computes them (Welford on the row shifted by
// its first value): out gets the shifted row, its mean and rstd.
@compute @workgroup_size(WG_SIZE)
fn row_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = linear_id(wid, nwg, lid);
    if (row >= params.rows) { return; }
    let dim = params.dim;
    let src = row * dim;
    let dst = row * (dim + 2u);
    let pivot = x_rows[src];
    var mean = 0.0;
    var m2 = 0.0;
    for (var c = 0u; c < dim; c++) {
        let v = x_rows[src + c] - pivot;
        out[dst + c] = v;
        let delta = v - mean;
        mean += delta / f32(c + 1u);
        m2 += delta * (v - mean);
    }
    out[dst + dim] = mean;
    out[dst + dim + 1u] = 1.0 / sqrt(max(m2 / f32(dim), 0.0) + bitcast<f32>(params.arg0));
}

fn xhat(base: u32, c: u32) -> f32 {
    let dim = params.dim;
    return (shifted[base + c] - shifted[base + dim]) * shifted[base + dim + 1u];
}

// grad_x of one row, in PyTorch's form (with xs = x - pivot, mean of xs, rstd = a,
// g' = grad_out · gamma, s = 1 / dim):
//   b = (Σ g' · mean - Σ g' · xs) · a³ · s,   c = -b · mean - Σ g' · a · s,
//   grad_x = a · grad_out · gamma + b · xs + c.
// Where the exact gradient is 0 (rows of one element, constant rows) PyTorch's value
// is the rounding of those terms; the same terms in the same order give the same.
@compute @workgroup_size(WG_SIZE)
fn input_grads(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let row = linear_id(wid, nwg, lid);
    if (row >= params.rows) { return; }
    let dim = params.dim;
    let base = row * (dim + 2u);
    let g0 = row * dim;
    var db = 0.0;
    var ds = 0.0;
    for (var c = 0u; c < dim; c++) {
        let g = grad_rows[g0 + c] * gamma(c);
        db += g;
        ds += g * shifted[base + c];
    }
    let mean = shifted[base + dim];
    let a = shifted[base + dim + 1u];
    let s = 1.0 / f32(dim);
    let b = (db * mean - ds) * a * a * a * s;
    let cc = -b * mean - db * a * s;
    for (var c = 0u; c < dim; c++) {
        out[g0 + c] = a * grad_rows[g0 + c] * gamma(c) + b * shifted[base + c] + cc;
    }
}

// Partial column sums over chunks of arg3 rows of the bound segment:
// partials[slot * 2 dim + c] = Σ grad · xhat, [.. + dim + c] = Σ grad, where slot
// numbers the chunks of all segments (segment index_first / arg2, ceil(arg2 / arg3)
// chunks each).
@compute @workgroup_size(WG_SIZE)
fn column_partials(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_id) lid: vec3<u32>) {
    let id = linear_id(wid, nwg, lid);
    let dim = params.dim;
    let chunk = id / dim;
    let c = id - chunk * dim;
    let first = chunk * params.arg3;
    if (first >= params.rows) { return; }
    let last = min(first + params.arg3, params.rows);
    var sum_gx = 0.0;
    var sum_g = 0.0;
    for (var r = first; r < last; r++) {
        let g = grad_rows[r * dim + c];
        sum_g += g;
        sum_gx += g * xhat(r * (dim + 2u), c);
    }
    let chunks_per_segment = (params.arg2 + params.arg3 - 1u) / params.arg3;
    let slot = (params.index_first / params.arg2) * chunks_per_segment + chunk;
    partials[slot * 2u * dim + c] = sum_gx;
    partials[slot * 2u * dim + dim + c] = sum_g;
}

// out[c] for c < 2 dim: the sum over params.rows slots of partials (grad_gamma, then
// grad_beta), in slot order.
@compute @workgroup_size(WG_SIZE)
fn column_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = linear_id(wid, nwg, lid);
    let width = 2u * params.dim;
    if (c >= width) { return; }
    var acc = 0.0;
    for (var s = 0u; s < params.rows; s++) { acc += partials_in[s * width + c]; }
    out[c] = acc;
}
