//! bitsandbytes' quantization on the GPU: code maps and the constants buffer
//! (`codes`), block-wise 8-bit (de)quantization and the kernels that build quantized
//! tables (`blockwise`), quantized tables themselves (`table`), and bitsandbytes' own
//! layouts of them, in and out (`bitsandbytes`).

pub mod bitsandbytes;
pub mod blockwise;
pub mod codes;
pub mod table;
