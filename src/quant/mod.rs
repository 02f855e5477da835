//! bitsandbytes' quantization on the GPU: code maps and the constants buffer
//! (`codes`), block-wise 8-bit (de)quantization and the kernels that build quantized
//! tables (`blockwise`), and quantized tables themselves (`table`).

pub mod blockwise;
pub mod codes;
pub mod table;
