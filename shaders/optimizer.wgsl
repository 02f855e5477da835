// Optimizer steps on an f32 table, in place, as torch.optim computes them (single-
// tensor forms, same operation order), and FBGEMM's row-wise Adagrad. The table's
// segment is bound as `out` (rows [lo, hi) of the table), the gradient's rows as the
// input, the states beside the table (state_a, state_b: segmented like it), the
// hyper-parameters in `hyper`. Parts: common/grid.wgsl, common/pass.wgsl,
// common/runs.wgsl (the fused steps), common/codes.wgsl and common/encode.wgsl (8-bit
// states), then this. Pass fields: rows / dim, mode = the
// optimizer, index_first / index_count = the gradient segment's rows.

const OPT_SGD: u32 = 0u;
const OPT_ADAM: u32 = 1u;
const OPT_ADAGRAD: u32 = 2u;
const OPT_SPARSE_ADAM: u32 = 3u;
const OPT_ROWWISE_ADAGRAD: u32 = 4u;
const OPT_ADAM_8BIT: u32 = 5u;  // on the dequantized states (bitsandbytes' operation order)
const OPT_ADAM_32BIT: u32 = 6u; // bitsandbytes' Adam with f32 states (its operation order)
const OPT_TBE_ADAM: u32 = 7u;   // FBGEMM's ADAM (its operation order)
const OPT_PARTIAL_ROWWISE_ADAM: u32 = 8u; // FBGEMM's: second moment per row (state_b)

// hyper[]: the step's scalars (src/optim.rs, Hyper).
const H_LR: u32 = 0u;
const H_WEIGHT_DECAY: u32 = 1u;
const H_MOMENTUM: u32 = 2u;
const H_DAMPENING: u32 = 3u;
const H_NESTEROV: u32 = 4u;       // 1 or 0
const H_FIRST_STEP: u32 = 5u;     // 1 on the first step (SGD's momentum buffer starts as the gradient)
const H_BETA1: u32 = 6u;
const H_BETA2: u32 = 7u;
const H_EPS: u32 = 8u;
const H_STEP_SIZE: u32 = 9u;      // Adam: lr / (1 - beta1^t); SparseAdam: lr * sqrt(1 - beta2^t) / (1 - beta1^t); Adagrad: clr
const H_BC2_SQRT: u32 = 10u;      // Adam: sqrt(1 - beta2^t)
const H_DECOUPLED: u32 = 11u;     // AdamW: 1
// bitsandbytes' 32-bit Adam reuses slots its update has no use for: 1 - beta1, 1 - beta2
// and the decay factor 1 - lr * wd, computed in f64 as Python does; H_EPS holds
// eps * sqrt(1 - beta2^t), H_STEP_SIZE lr * sqrt(1 - beta2^t) / (1 - beta1^t).
const H_ONE_MINUS_BETA1: u32 = 2u;
const H_ONE_MINUS_BETA2: u32 = 3u;
const H_DECAY: u32 = 4u;
// FBGEMM's Adams: H_STEP_SIZE holds 1 - beta1^t, H_BC2_SQRT 1 - beta2^t (it divides by both).
const H_BC1: u32 = 9u;
const H_BC2: u32 = 10u;

@group(0) @binding(2) var<storage, read> grad_values: array<f32>;
@group(0) @binding(9) var<storage, read_write> state_a: array<f32>;
@group(0) @binding(24) var<storage, read_write> state_b: array<f32>;
@group(0) @binding(25) var<uniform> hyper: array<vec4<f32>, 3>;
@group(0) @binding(26) var<storage, read> grad_rows: array<i32>;

fn hyper_value(h: u32) -> f32 {
    return hyper[h / 4u][h % 4u];
}

// Element `t` of the bound table segment takes gradient `g`.
fn update(t: u32, g_in: f32) {
    var w = out[t];
    var g = g_in;
    let lr = hyper_value(H_LR);
    let wd = hyper_value(H_WEIGHT_DECAY);
    switch params.mode {
        case OPT_SGD: {
            if (wd != 0.0) { g = g + wd * w; }
            let momentum = hyper_value(H_MOMENTUM);
            if (momentum != 0.0) {
                var buf = g;
                if (hyper_value(H_FIRST_STEP) == 0.0) { buf = state_a[t] * momentum + g * (1.0 - hyper_value(H_DAMPENING)); }
                state_a[t] = buf;
                if (hyper_value(H_NESTEROV) != 0.0) { g = g + buf * momentum; } else { g = buf; }
            }
            out[t] = w + g * -lr;
        }
        case OPT_ADAM: {
            if (hyper_value(H_DECOUPLED) != 0.0) { w = w * (1.0 - lr * wd); } else if (wd != 0.0) { g = g + wd * w; }
            let m = state_a[t] + (g - state_a[t]) * (1.0 - hyper_value(H_BETA1));
            let v = state_b[t] * hyper_value(H_BETA2) + (g * g) * (1.0 - hyper_value(H_BETA2));
            state_a[t] = m;
            state_b[t] = v;
            let denom = sqrt(v) / hyper_value(H_BC2_SQRT) + hyper_value(H_EPS);
            out[t] = w + (m / denom) * -hyper_value(H_STEP_SIZE);
        }
        case OPT_ADAGRAD: {
            if (wd != 0.0) { g = g + wd * w; }
            let sum = state_a[t] + g * g;
            state_a[t] = sum;
            out[t] = w + (g / (sqrt(sum) + hyper_value(H_EPS))) * -hyper_value(H_STEP_SIZE);
        }
        case OPT_SPARSE_ADAM: {
            let m_old = state_a[t];
            let v_old = state_b[t];
            let m = (g - m_old) * (1.0 - hyper_value(H_BETA1)) + m_old;
            let v = (g * g - v_old) * (1.0 - hyper_value(H_BETA2)) + v_old;
            state_a[t] = m;
            state_b[t] = v;
            out[t] = w + -hyper_value(H_STEP_SIZE) * (m / (sqrt(v) + hyper_value(H_EPS)));
        }
        case OPT_ADAM_32BIT: {
            let m = state_a[t] * hyper_value(H_BETA1) + hyper_value(H_ONE_MINUS_BETA1) * g;
            let v = state_b[t] * hyper_value(H_BETA2) + (hyper_value(H_ONE_MINUS_BETA2) * g) * g;
            state_a[t] = m;
            state_b[t] = v;
            let update = m / (sqrt(v) + hyper_value(H_EPS));
            out[t] = (w * hyper_value(H_DECAY)) + -hyper_value(H_STEP_SIZE) * update;
        }
        case OPT_TBE_ADAM: {
            let b1 = hyper_value(H_BETA1);
            let b2 = hyper_value(H_BETA2);
            let m = state_a[t] * b1 + g * (1.0 - b1);
            let v = state_b[t] * b2 + (g * g) * (1.0 - b2);
            state_a[t] = m;
            state_b[t] = v;
            let denom = sqrt(v / hyper_value(H_BC2)) + hyper_value(H_EPS);
            out[t] = w - lr * (m / hyper_value(H_BC1) / denom + wd * w);
        }
        case OPT_ADAM_8BIT: {
            let mv = adam8bit_moments(vec2<f32>(state_a[t], state_b[t]), g);
            state_a[t] = mv.x;
            state_b[t] = mv.y;
            out[t] = adam8bit_weight(w, mv);
        }
        default: {}
    }
}

// 8-bit Adam (bitsandbytes' operation order): the new moments from the dequantized
// old ones and the gradient, and the new weight from them (decoupled weight decay).
fn adam8bit_moments(old: vec2<f32>, g: f32) -> vec2<f32> {
    let m = old.x * hyper_value(H_BETA1) + g * (1.0 - hyper_value(H_BETA1));
    let v = old.y * hyper_value(H_BETA2) + (g * g) * (1.0 - hyper_value(H_BETA2));
    return vec2<f32>(m, v);
}

fn adam8bit_weight(w_in: f32, mv: vec2<f32>) -> f32 {
    var w = w_in;
    let lr = hyper_value(H_LR);
    let wd = hyper_value(H_WEIGHT_DECAY);
    let denom = sqrt(mv.y) / hyper_value(H_BC2_SQRT) + hyper_value(H_EPS);
    if (wd > 0.0) { w = w * (1.0 - lr * wd); }
    return w + (mv.x / denom) * -hyper_value(H_STEP_SIZE);
}

// Dense steps: one invocation per element of the bound table segment, whose gradient
// segment holds the same rows.
@compute @workgroup_size(WG_SIZE)
fn dense_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let t = linear_id(wid, nwg, lid);
    if (t >= (params.hi - params.lo) * params.dim) { return; }
    update(t, grad_values[t]);
}

// The table row sparse gradient row k (of the bound segment) updates, if the bound
// table segment holds it; NO_ELEMENT otherwise.
fn target_row(k: u32) -> u32 {
    let row = u32(grad_rows[params.index_first + k]);
    if (row < params.lo || row >= params.hi) { return NO_ELEMENT; }
    return row - params.lo;
}

// Sparse steps (rows distinct, as a coalesced gradient's): one invocation per element
// of the bound gradient segment, or per row (ROW_AT_ONCE: CPU adapters, where an
// invocation costs more than a row's loads).
override ROW_AT_ONCE: bool = false;

@compute @workgroup_size(WG_SIZE)
fn sparse_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_id) lid: vec3<u32>) {
    if (ROW_AT_ONCE) {
        let k = linear_id(wid, nwg, lid);
        if (k >= params.rows) { return; }
        let local = target_row(k);
        if (local == NO_ELEMENT) { return; }
        for (var c = 0u; c < params.dim; c++) { update(local * params.dim + c, grad_values[k * params.dim + c]); }
        return;
    }
    let e = output_element(wid, nwg, lid);
    if (e.x == NO_ELEMENT) { return; }
    let local = target_row(e.y);
    if (local == NO_ELEMENT) { return; }
    update(local * params.dim + e.z, grad_values[e.x]);
}

// FBGEMM's row-wise optimizers: one invocation per gradient row. Row-wise Adagrad:
// with g = grad + weight_decay · w, momentum[row] += mean(g²), w -= lr · g / (sqrt(momentum) + eps).
// Partial row-wise Adam: momentum2[row] (state_b) averages mean(grad²), momentum1 (state_a)
// is Adam's first moment per element.
@compute @workgroup_size(WG_SIZE)
fn rowwise_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let k = linear_id(wid, nwg, lid);
    if (k >= params.rows) { return; }
    let local = target_row(k);
    if (local == NO_ELEMENT) { return; }
    let dim = params.dim;
    var sum = 0.0;
    for (var c = 0u; c < dim; c++) { sum += row_square(grad_values[k * dim + c], out[local * dim + c]); }
    let factor = row_factor(local, sum);
    for (var c = 0u; c < dim; c++) { row_update(local * dim + c, grad_values[k * dim + c], factor); }
}

// The square a row-wise optimizer sums over its row for gradient `g` of weight `w`.
fn row_square(g: f32, w: f32) -> f32 {
    if (params.mode == OPT_PARTIAL_ROWWISE_ADAM) { return g * g; }
    let x = g + hyper_value(H_WEIGHT_DECAY) * w;
    return x * x;
}

// The row state's update for table row `local` whose squares sum to `sum_sq`, and
// the row's factor: row-wise Adagrad's step size, partial row-wise Adam's denominator.
fn row_factor(local: u32, sum_sq: f32) -> f32 {
    let mean_sq = sum_sq / f32(params.dim);
    if (params.mode == OPT_PARTIAL_ROWWISE_ADAM) {
        let b2 = hyper_value(H_BETA2);
        let v = mean_sq * (1.0 - b2) + state_b[local] * b2;
        state_b[local] = v;
        return sqrt(v / hyper_value(H_BC2)) + hyper_value(H_EPS);
    }
    let momentum = state_a[local] + mean_sq;
    state_a[local] = momentum;
    return hyper_value(H_LR) / (sqrt(momentum) + hyper_value(H_EPS));
}

// Element `t` of a row with the row's `factor` takes gradient `g`.
fn row_update(t: u32, g: f32, factor: f32) {
    let w = out[t];
    let wd = hyper_value(H_WEIGHT_DECAY);
    if (params.mode == OPT_PARTIAL_ROWWISE_ADAM) {
        let b1 = hyper_value(H_BETA1);
        let m = state_a[t] * b1 + g * (1.0 - b1);
        state_a[t] = m;
        out[t] = w - hyper_value(H_LR) * (m / hyper_value(H_BC1) / factor + wd * w);
        return;
    }
    out[t] = w - factor * (g + wd * w);
}

// Fused sparse steps (backward and step in one): each run of the sorted gradient list
// (common/runs.wgsl) is summed in registers, in the order the backward sums it, and
// its table row updated at once; no gradient is written. Bound like the backward's
// dense run sums, with the table as `out` (one source segment: FIRST_PASS only).
// Rows of whole vec4 words (WIDTH 4; the host runs other rows unfused). Pass fields:
// mode = the optimizer, arg0 / arg2 / arg3 as runs.wgsl reads them.
@group(0) @binding(2) var<storage, read> grad4: array<vec4<f32>>;

fn entry_contribution(e: vec2<u32>, word: u32) -> vec4<f32> {
    return grad4[(e.x - params.index_first) * (params.dim / 4u) + word] * bitcast<f32>(e.y);
}

fn contribution(j: u32, col: u32) -> vec4<f32> {
    return entry_contribution(entries[j], col / 4u);
}

// Element-wise optimizers: one invocation per run and block of GROUPS words; a short
// run's entries are read once for all of them (as the backward's reduce_runs4).
@compute @workgroup_size(WG_SIZE)
fn fused_sparse_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_id) lid: vec3<u32>) {
    let words = params.dim / 4u;
    let w = run_work(linear_id(wid, nwg, lid), words);
    if (!w.valid) { return; }
    let w0 = w.block * GROUPS;
    let w_end = min(words, w0 + GROUPS);
    var acc: array<vec4<f32>, MAX_GROUPS>;
    if (w.b - w.a <= 2u * params.arg0) {
        for (var j = w.a; j < w.b; j++) {
            let e = entries[j];
            for (var k = 0u; k < GROUPS; k++) {
                if (w0 + k < w_end) { acc[k] += entry_contribution(e, w0 + k); }
            }
        }
    } else {
        for (var k = 0u; k < GROUPS; k++) {
            if (w0 + k < w_end) { acc[k] = run_sum(w.a, w.b, (w0 + k) * 4u); }
        }
    }
    for (var k = 0u; k < GROUPS; k++) {
        if (w0 + k < w_end) {
            let t = w.out_row * params.dim + (w0 + k) * 4u;
            for (var lane = 0u; lane < 4u; lane++) { update(t + lane, acc[k][lane]); }
        }
    }
}

// Row-wise optimizers: one invocation per run, which sums its row twice (once for the
// row's state, once for the update) rather than keep it.
@compute @workgroup_size(WG_SIZE)
fn fused_rowwise_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_id) lid: vec3<u32>) {
    let words = params.dim / 4u;
    let w = run_work(linear_id(wid, nwg, lid), 1u);
    if (!w.valid) { return; }
    let row = w.out_row * params.dim;
    var sum_sq = 0.0;
    for (var g = 0u; g < words; g++) {
        let sum = run_sum(w.a, w.b, g * 4u);
        for (var k = 0u; k < 4u; k++) { sum_sq += row_square(sum[k], out[row + g * 4u + k]); }
    }
    let factor = row_factor(w.out_row, sum_sq);
    for (var g = 0u; g < words; g++) {
        let sum = run_sum(w.a, w.b, g * 4u);
        for (var k = 0u; k < 4u; k++) { row_update(row + g * 4u + k, sum[k], factor); }
    }
}

// 8-bit block-wise Adam in one kernel: one workgroup per block of `params.group`
// elements of the bound table segment (blocks never straddle segments). Each
// invocation owns whole code words (4 elements): it dequantizes both states
// (code * absmax), updates them and the weight, and keeps its largest |m| and |v|; the
// workgroup reduces those to the block's new absmax, then each invocation recomputes
// its moments from the old codes it has not yet overwritten (the same arithmetic, so
// the same values) and writes their codes, as quantize_blockwise would. state1 uses
// the signed dynamic map (consts[0 ..]), state2 the unsigned one (consts[CONSTS_WORDS ..]).
@group(0) @binding(9) var<storage, read_write> state1_codes: array<u32>;
@group(0) @binding(24) var<storage, read_write> state2_codes: array<u32>;
@group(0) @binding(27) var<storage, read_write> absmax1: array<f32>;
@group(0) @binding(28) var<storage, read_write> absmax2: array<f32>;
@group(0) @binding(29) var<storage, read> consts: array<u32>;

// Reductions below assume WG_SIZE is 64, as the context always sets it.

fn decode(word: u32, k: u32, base: u32) -> f32 {
    return bitcast<f32>(consts[base + C_MAP + ((word >> (8u * k)) & 0xffu)]);
}

// The new moments of element e (of the segment's words) from the old codes.
fn adam8bit_element(c1: u32, c2: u32, k: u32, t: u32, old_absmax: vec2<f32>) -> vec2<f32> {
    let old = vec2<f32>(decode(c1, k, 0u) * old_absmax.x, decode(c2, k, CONSTS_WORDS) * old_absmax.y);
    return adam8bit_moments(old, grad_values[t]);
}

@compute @workgroup_size(WG_SIZE)
fn adam8bit_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_id) lid: vec3<u32>) {
    let size = params.group;
    let seg_first = params.lo * params.dim;
    let block = seg_first / size + group_index(wid, nwg);
    let first = block * size - seg_first;   // in the segment
    let end = min(first + size, (params.hi - params.lo) * params.dim);
    let old_absmax = vec2<f32>(absmax1[block], absmax2[block]);
    var largest = vec2<f32>(0.0);
    for (var e = first + 4u * lid.x; e < end; e += 4u * WG_SIZE) {
        let c1 = state1_codes[e / 4u];
        let c2 = state2_codes[e / 4u];
        for (var k = 0u; k < 4u; k++) {
            let t = e + k;
            if (t < end) {
                let mv = adam8bit_element(c1, c2, k, t, old_absmax);
                out[t] = adam8bit_weight(out[t], mv);
                largest = max(largest, abs(mv));
            }
        }
    }
    let new_absmax = workgroup_max(lid.x, largest);
    // 1 / absmax once per block (a long division); an all-zero block keeps code 0.
    let inv = vec2<f32>(div_exact(1.0, new_absmax.x), div_exact(1.0, new_absmax.y));
    for (var e = first + 4u * lid.x; e < end; e += 4u * WG_SIZE) {
        let c1 = state1_codes[e / 4u];
        let c2 = state2_codes[e / 4u];
        var q1 = 0u;
        var q2 = 0u;
        for (var k = 0u; k < 4u; k++) {
            let t = e + k;
            if (t < end) {
                let mv = adam8bit_element(c1, c2, k, t, old_absmax);
                if (new_absmax.x != 0.0) { q1 |= map_code_scaled(mv.x, inv.x, 0u) << (8u * k); }
                if (new_absmax.y != 0.0) { q2 |= map_code_scaled(mv.y, inv.y, CONSTS_WORDS) << (8u * k); }
            }
        }
        state1_codes[e / 4u] = q1;
        state2_codes[e / 4u] = q2;
    }
    if (lid.x == 0u) {
        absmax1[block] = new_absmax.x;
        absmax2[block] = new_absmax.y;
    }
}
