// The constants buffer of quantized tables and block-wise quantization (u32 words,
// floats as their bits; src/quant/codes.rs writes it). A family declares `consts`.

const C_MAP: u32 = 0u;        // 256 code values, sorted
const C_THRESH: u32 = 256u;   // 256 lookup-bin thresholds: code = #{k : thresh[k] <= bin}
const C_T4: u32 = 512u;       // 16 4-bit code values, by code
const C_MID4: u32 = 528u;     // 15 midpoints of the sorted 4-bit values
const C_ORDER4: u32 = 544u;   // 16 codes, by sorted position
const C_OFFSET: u32 = 560u;   // mean of absmax (nested 4-bit statistics), written there
const C_ZERO: u32 = 561u;     // always 0; the compiler cannot know it
const CONSTS_WORDS: u32 = 576u;

// x, rounded as it stands: the compiler can neither fuse it into an fma (which would
// round differently from bitsandbytes) nor simplify the float algebra around it
// (drivers may treat (a + b) - a as b).
fn rounded(x: f32) -> f32 {
    return bitcast<f32>(bitcast<u32>(x) | consts[C_ZERO]);
}
