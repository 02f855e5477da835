//! Quantized tables in bitsandbytes' own layouts, in ([`QuantizedTable::from_bitsandbytes`])
//! and out ([`StateDict::quantized_table`](crate::StateDict::quantized_table)):
//! - `Int8Params` (what `Embedding8bit` and `Linear8bitLt` hold): the int8 rows as
//!   `{prefix}weight` `[V, D]` I8 and each row's absmax as `{prefix}SCB` `[V]` F32
//!   (`Linear8bitLt.state_dict()` adds `{prefix}weight_format`, a U8 0: row-major);
//! - `Params4bit` (`Embedding4bit`, `Linear4bit` with `compress_statistics`, as
//!   `Linear4bit.state_dict()` writes them): the packed codes as `{prefix}weight`
//!   `[ceil(V·D / 2), 1]` U8, and its `QuantState` beside it: `weight.absmax` (the nested
//!   absmax codes, U8), `weight.nested_absmax` (F32), `weight.quant_map` (the 16 4-bit
//!   values), `weight.nested_quant_map` (the 256 of the dynamic map) and the packed JSON
//!   `weight.quant_state.bitsandbytes__nf4` (or `__fp4`: quant_type, blocksize, dtype,
//!   shape, nested_blocksize, nested_dtype, nested_offset).
//!
//! The planes are bitsandbytes' bytes as they are: nothing is requantized either way.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::tensor::{DType, GpuTensor};
use crate::quant::blockwise::check_blocksize;
use crate::quant::codes::{constants, CodeMap, FourBit, C_OFFSET};
use crate::quant::table::{QuantizedTable, Scheme, NESTED_BLOCKSIZE};

/// The name of a 4-bit table's packed `QuantState` JSON under `prefix`.
pub(crate) fn quant_state_name(prefix: &str, four_bit: FourBit) -> String {
    let kind = match four_bit {
        FourBit::Nf4 => "nf4",
        FourBit::Fp4 => "fp4",
    };
    format!("{prefix}weight.quant_state.bitsandbytes__{kind}")
}

/// The packed `QuantState` JSON of a 4-bit table (`nested_offset`: the nested statistics'
/// offset), as bitsandbytes' `pack_dict_to_tensor` writes it.
pub(crate) fn quant_state_json(table: &QuantizedTable, four_bit: FourBit, nested_offset: f32) -> Vec<u8> {
    let quant_type = match four_bit {
        FourBit::Nf4 => "nf4",
        FourBit::Fp4 => "fp4",
    };
    serde_json::json!({
        "quant_type": quant_type,
        "blocksize": table.blocksize(),
        "dtype": "float32",
        "shape": [table.num_embeddings(), table.embedding_dim()],
        "nested_blocksize": NESTED_BLOCKSIZE,
        "nested_dtype": "float32",
        "nested_offset": nested_offset as f64,
    })
    .to_string()
    .into_bytes()
}

/// Tensor `name` of `saved` as `dtype` with `shape`, else an error naming it.
fn expect<'a>(saved: &'a Checkpoint, name: &str, dtype: DType, shape: &[usize]) -> Result<&'a [u8]> {
    let (got, got_shape, bytes) = saved.raw(name)?;
    if got != dtype || got_shape != shape {
        return Err(Error::arg(
            "saved",
            format!("bitsandbytes' {name:?} should be {dtype:?} of shape {shape:?}, got {got:?} of shape {got_shape:?}"),
        ));
    }
    Ok(bytes)
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

impl QuantizedTable {
    /// A table bitsandbytes quantized, from its state-dict layout in `saved` under
    /// `prefix` (see the module's page): `Int8Params` (`{prefix}weight` and
    /// `{prefix}SCB`) or `Params4bit` with nested statistics (`{prefix}weight` and
    /// `{prefix}weight.quant_state.bitsandbytes__nf4` / `__fp4`). Its bytes go to the
    /// GPU as they are; lookups give what bitsandbytes' `Embedding8bit` / `Embedding4bit`
    /// give.
    ///
    /// ```
    /// # use wgpu_embed::{Block, Checkpoint, Context, QuantizedEmbedding, QuantizedTable, Scheme, StateDict, Indices};
    /// # let ctx = Context::new().block()?;
    /// let weight: Vec<f32> = (0..8 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
    /// let table = QuantizedTable::from_pretrained(&ctx, &weight, 8, 64, Scheme::Nf4, None)?;
    /// let bytes = StateDict::new().quantized_table("emb.", &table).to_bytes(&ctx).block()?;
    /// let back = QuantizedTable::from_bitsandbytes(&ctx, &Checkpoint::from_bytes(bytes)?, "emb.")?;
    /// assert_eq!(back.scheme(), Scheme::Nf4);
    /// let rows = QuantizedEmbedding::from_table(back).forward(&ctx, Indices::i64(&[3], &[1]))?;
    /// assert_eq!(rows.shape(), [1, 64]);
    /// # Ok::<(), wgpu_embed::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `saved` holds neither layout under `prefix`, or a
    /// tensor of it has another dtype or shape; [`Error::Unsupported`] for what these
    /// kernels do not read: 4-bit tables without nested statistics, other dtypes than
    /// float32, code maps other than bitsandbytes' NF4 / FP4 and dynamic ones.
    pub fn from_bitsandbytes(ctx: &Context, saved: &Checkpoint, prefix: &str) -> Result<Self> {
        let names = saved.names();
        if names.contains(&format!("{prefix}SCB")) {
            return Self::from_int8_params(ctx, saved, prefix);
        }
        for four_bit in [FourBit::Nf4, FourBit::Fp4] {
            if names.contains(&quant_state_name(prefix, four_bit)) {
                return Self::from_params4bit(ctx, saved, prefix, four_bit);
            }
        }
        Err(Error::arg(
            "saved",
            format!(
                "no bitsandbytes table under {prefix:?}: expected {prefix}SCB (Int8Params) or {} / __fp4 (Params4bit)",
                quant_state_name(prefix, FourBit::Nf4)
            ),
        ))
    }

    fn from_int8_params(ctx: &Context, saved: &Checkpoint, prefix: &str) -> Result<Self> {
        let weight = format!("{prefix}weight");
        let (_, shape, codes) = saved.raw(&weight)?;
        let [v, d] = shape[..] else {
            return Err(Error::arg("saved", format!("{weight:?} should be [num_embeddings, embedding_dim], got shape {shape:?}")));
        };
        let stored = saved.stored_dtype(&weight)?;
        if stored != safetensors::Dtype::I8 {
            return Err(Error::arg("saved", format!("{weight:?} should hold Int8Params' int8 rows (I8), got {stored:?}")));
        }
        let absmax = f32s(expect(saved, &format!("{prefix}SCB"), DType::F32, &[v])?);
        // Embedding8bit's forward: codes * (SCB / 127), one division per row.
        let scales: Vec<f32> = absmax.iter().map(|a| a / 127.0).collect();
        let codes = GpuTensor::from_bytes(ctx, codes, &[v * d], DType::U8, 1)?;
        let (scales, absmax) = (GpuTensor::flat(ctx, &scales, DType::F32)?, GpuTensor::flat(ctx, &absmax, DType::F32)?);
        let consts = constants(&CodeMap::Dynamic.values(), None);
        Self::from_parts(ctx, Scheme::Int8Rowwise, 0, (v, d), codes, scales, None, Some(absmax), &consts)
    }

    fn from_params4bit(ctx: &Context, saved: &Checkpoint, prefix: &str, four_bit: FourBit) -> Result<Self> {
        let json_name = quant_state_name(prefix, four_bit);
        let (_, _, json) = saved.raw(&json_name)?;
        let state: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| Error::Format(format!("{json_name:?} is not bitsandbytes' packed JSON: {e}")))?;
        let field = |key: &str| state.get(key).ok_or_else(|| Error::arg("saved", format!("{json_name:?} has no {key:?}")));
        let shape: Vec<usize> = serde_json::from_value(field("shape")?.clone()).map_err(|e| {
            Error::arg("saved", format!("{json_name:?}: shape {}: {e}", field("shape").map(|s| s.to_string()).unwrap_or_default()))
        })?;
        let [v, d] = shape[..] else {
            return Err(Error::arg("saved", format!("{json_name:?}: expected a 2-D table, got shape {shape:?}")));
        };
        let blocksize = field("blocksize")?.as_u64().unwrap_or(0) as usize;
        check_blocksize(blocksize)?;
        for key in ["dtype", "nested_dtype"] {
            if state.get(key).and_then(|x| x.as_str()).is_some_and(|x| x != "float32") {
                return Err(Error::Unsupported(format!("{json_name:?}: {key} {} (these kernels give float32)", state[key])));
            }
        }
        let Some(offset) = state.get("nested_offset").and_then(|x| x.as_f64()) else {
            return Err(Error::Unsupported(format!("{json_name:?}: a 4-bit table without nested statistics (compress_statistics=False)")));
        };
        if field("nested_blocksize")?.as_u64() != Some(NESTED_BLOCKSIZE) {
            return Err(Error::Unsupported(format!(
                "{json_name:?}: nested_blocksize {} (bitsandbytes uses 256)",
                state["nested_blocksize"]
            )));
        }
        let numel = v * d;
        let blocks = numel.div_ceil(blocksize);
        let maps = [("quant_map", four_bit.values().to_vec()), ("nested_quant_map", CodeMap::Dynamic.values().to_vec())];
        for (key, want) in maps {
            let name = format!("{prefix}weight.{key}");
            let got = f32s(expect(saved, &name, DType::F32, &[want.len()])?);
            if got != want {
                return Err(Error::Unsupported(format!("{name:?} is not bitsandbytes' own map: these kernels read that one")));
            }
        }
        let packed = expect(saved, &format!("{prefix}weight"), DType::U8, &[numel.div_ceil(2), 1])?;
        let nested = expect(saved, &format!("{prefix}weight.absmax"), DType::U8, &[blocks])?;
        let nested_absmax =
            f32s(expect(saved, &format!("{prefix}weight.nested_absmax"), DType::F32, &[blocks.div_ceil(NESTED_BLOCKSIZE as usize)])?);
        let codes = GpuTensor::from_bytes(ctx, packed, &[packed.len()], DType::U8, 1)?;
        let scales = GpuTensor::from_bytes(ctx, nested, &[blocks], DType::U8, 1)?;
        let scales2 = GpuTensor::flat(ctx, &nested_absmax, DType::F32)?;
        let mut consts = constants(&CodeMap::Dynamic.values(), Some(four_bit));
        consts[C_OFFSET] = (offset as f32).to_bits();
        let scheme = match four_bit {
            FourBit::Nf4 => Scheme::Nf4,
            FourBit::Fp4 => Scheme::Fp4,
        };
        Self::from_parts(ctx, scheme, blocksize, (v, d), codes, scales, Some(scales2), None, &consts)
    }
}
