// Optimizer steps on an f32 table, in place, as torch.optim computes them (single-
// tensor forms, same operation order), and FBGEMM's row-wise Adagrad. The table's
// segment is bound as `out` (rows [lo, hi) of the table), the gradient's rows as the
// input, the states beside the table (state_a, state_b: segmented like it), the
// hyper-parameters in `hyper`. Parts: common/grid.wgsl, common/pass.wgsl, then this.
// Pass fields: rows / dim, mode = the optimizer, index_first / index_count = the
// gradient segment's rows.

const OPT_SGD: u32 = 0u;
const OPT_ADAM: u32 = 1u;
const OPT_ADAGRAD: u32 = 2u;
const OPT_SPARSE_ADAM: u32 = 3u;
const OPT_ROWWISE_ADAGRAD: u32 = 4u;
const OPT_ADAM_8BIT: u32 = 5u;  // on the dequantized states (bitsandbytes' operation order)

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

@group(0) @binding(2) var<storage, read> grad_values: array<f32>;
@group(0) @binding(9) var<storage, read_write> state_a: array<f32>;
@group(0) @binding(24) var<storage, read_write> state_b: array<f32>;
@group(0) @binding(25) var<storage, read> hyper: array<f32>;
@group(0) @binding(26) var<storage, read> grad_rows: array<i32>;

// Element `t` of the bound table segment takes gradient `g`.
fn update(t: u32, g_in: f32) {
    var w = out[t];
    var g = g_in;
    let lr = hyper[H_LR];
    let wd = hyper[H_WEIGHT_DECAY];
    switch params.mode {
        case OPT_SGD: {
            if (wd != 0.0) { g = g + wd * w; }
            let momentum = hyper[H_MOMENTUM];
            if (momentum != 0.0) {
                var buf = g;
                if (hyper[H_FIRST_STEP] == 0.0) { buf = state_a[t] * momentum + g * (1.0 - hyper[H_DAMPENING]); }
                state_a[t] = buf;
                if (hyper[H_NESTEROV] != 0.0) { g = g + buf * momentum; } else { g = buf; }
            }
            out[t] = w + g * -lr;
        }
        case OPT_ADAM: {
            if (hyper[H_DECOUPLED] != 0.0) { w = w * (1.0 - lr * wd); } else if (wd != 0.0) { g = g + wd * w; }
            let m = state_a[t] + (g - state_a[t]) * (1.0 - hyper[H_BETA1]);
            let v = state_b[t] * hyper[H_BETA2] + (g * g) * (1.0 - hyper[H_BETA2]);
            state_a[t] = m;
            state_b[t] = v;
            let denom = sqrt(v) / hyper[H_BC2_SQRT] + hyper[H_EPS];
            out[t] = w + (m / denom) * -hyper[H_STEP_SIZE];
        }
        case OPT_ADAGRAD: {
            if (wd != 0.0) { g = g + wd * w; }
            let sum = state_a[t] + g * g;
            state_a[t] = sum;
            out[t] = w + (g / (sqrt(sum) + hyper[H_EPS])) * -hyper[H_STEP_SIZE];
        }
        case OPT_SPARSE_ADAM: {
            let m_old = state_a[t];
            let v_old = state_b[t];
            let m = (g - m_old) * (1.0 - hyper[H_BETA1]) + m_old;
            let v = (g * g - v_old) * (1.0 - hyper[H_BETA2]) + v_old;
            state_a[t] = m;
            state_b[t] = v;
            out[t] = w + -hyper[H_STEP_SIZE] * (m / (sqrt(v) + hyper[H_EPS]));
        }
        case OPT_ADAM_8BIT: {
            let m = state_a[t] * hyper[H_BETA1] + g * (1.0 - hyper[H_BETA1]);
            let v = state_b[t] * hyper[H_BETA2] + (g * g) * (1.0 - hyper[H_BETA2]);
            state_a[t] = m;
            state_b[t] = v;
            let denom = sqrt(v) / hyper[H_BC2_SQRT] + hyper[H_EPS];
            if (wd > 0.0) { w = w * (1.0 - lr * wd); }
            out[t] = w + (m / denom) * -hyper[H_STEP_SIZE];
        }
        default: {}
    }
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

// FBGEMM's row-wise Adagrad: one invocation per gradient row; with g = grad +
// weight_decay · w, momentum[row] += mean(g²), w -= lr · g / (sqrt(momentum) + eps).
@compute @workgroup_size(WG_SIZE)
fn rowwise_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_id) lid: vec3<u32>) {
    let k = linear_id(wid, nwg, lid);
    if (k >= params.rows) { return; }
    let local = target_row(k);
    if (local == NO_ELEMENT) { return; }
    let dim = params.dim;
    let wd = hyper[H_WEIGHT_DECAY];
    var sum = 0.0;
    for (var c = 0u; c < dim; c++) {
        let g = grad_values[k * dim + c] + wd * out[local * dim + c];
        sum += g * g;
    }
    let momentum = state_a[local] + sum / f32(dim);
    state_a[local] = momentum;
    let scale = hyper[H_LR] / (sqrt(momentum) + hyper[H_EPS]);
    for (var c = 0u; c < dim; c++) {
        let t = local * dim + c;
        let g = grad_values[k * dim + c] + wd * out[t];
        out[t] = out[t] - scale * g;
    }
}
