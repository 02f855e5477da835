// Table-batched embedding bags (FBGEMM's TBE forward, `SplitTableBatchedEmbeddingBagsCodegen`):
// the bags of every feature, each over its own table (several features may share one),
// in one dispatch. The tables are packed one after another in one f32 buffer; feature
// f's bag b is indices[offsets[f * B + b] .. offsets[f * B + b + 1]] (feature-major, as
// FBGEMM lays the offsets out), and goes to columns [col_f, col_f + dim_f) of output row
// b, whose width is the sum of the features' dims. One invocation per output element:
// consecutive invocations read consecutive columns of one table row.
// Parts: common/grid.wgsl, common/pass.wgsl, then this file.
// Pass fields: rows = B, dim = the output's width (Σ dims), mode = MODE_SUM / MODE_MEAN,
// flags: FLAG_HAS_WEIGHTS.

const MODE_MEAN: u32 = 1u;

// Per feature: (first word of its table in `tables`, its dim, its table's rows, its
// first output column).
@group(0) @binding(1) var<storage, read> tables: array<f32>;
@group(0) @binding(5) var<storage, read> bag_offsets: array<u32>;
@group(0) @binding(7) var<storage, read> sample_weights: array<f32>;
@group(0) @binding(9) var<storage, read> features: array<vec4<u32>>;
// The feature each output column belongs to.
@group(0) @binding(10) var<storage, read> column_features: array<u32>;

@compute @workgroup_size(WG_SIZE)
fn tbe_pooled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let e = output_element(wid, nwg, lid);
    if (e.x == NO_ELEMENT) { return; }
    let f = column_features[e.z];
    let feature = features[f];
    let c = e.z - feature.w;
    let bag = f * params.rows + e.y;
    let start = bag_offsets[bag];
    let end = bag_offsets[bag + 1u];
    var acc = 0.0;
    for (var p = start; p < end; p++) {
        // Indices were range-checked on the host; a bad one is still never read.
        let index = indices[p];
        if (index < 0 || u32(index) >= feature.z) { continue; }
        var x = tables[feature.x + u32(index) * feature.y + c];
        if (has_flag(FLAG_HAS_WEIGHTS)) { x *= sample_weights[p]; }
        acc += x;
    }
    if (params.mode == MODE_MEAN && end > start) { acc /= f32(end - start); }
    out[e.x] = acc;
}
