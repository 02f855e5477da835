//! The other layers of the library, for JavaScript: LayerNorm, StableEmbedding, the
//! BERT embedding block (sum of lookups, then LayerNorm), axial position embeddings,
//! quantized tables (int8 block-wise / row-wise, NF4, FP4) and block-wise quantization.

use std::rc::Rc;
use std::str::FromStr;

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wgpu_embed as lib;

use crate::args::{index_list, opt_bool, opt_f64, opt_i64, opt_str, shape_arg, IndexList};
use crate::{gpu_call, js_error, Gpu, Tensor};

fn opt_f32_array(options: &JsValue, key: &'static str) -> Result<Option<Vec<f32>>, JsValue> {
    if options.is_undefined() || options.is_null() {
        return Ok(None);
    }
    let v = js_sys::Reflect::get(options, &key.into())?;
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    v.dyn_ref::<js_sys::Float32Array>().map(|a| Some(a.to_vec())).ok_or_else(|| js_error(lib::Error::arg(key, "expected a Float32Array")))
}

fn blocksize(options: &JsValue) -> Result<Option<usize>, JsValue> {
    match opt_i64(options, "blocksize")? {
        None => Ok(None),
        Some(b) if b >= 0 => Ok(Some(b as usize)),
        Some(b) => Err(js_error(lib::Error::arg("blocksize", format!("blocksize {b} is not supported")))),
    }
}

fn table_dims(data: &js_sys::Float32Array, shape: &JsValue, name: &'static str) -> Result<(Vec<f32>, usize, usize), JsValue> {
    let values = data.to_vec();
    match shape_arg(shape, name)?.as_deref() {
        Some([v, d]) => Ok((values, *v, *d)),
        other => Err(js_error(lib::Error::arg(name, format!("expected a table shape [rows, dim], got {other:?}")))),
    }
}

/// Float32Array tables with their `[rows, dim]` shapes, copied to the host.
fn host_tables(tables: &JsValue, shapes: &JsValue) -> Result<Vec<(Vec<f32>, usize, usize)>, JsValue> {
    let (tables, shapes) = (array_arg(tables, "tables")?, array_arg(shapes, "shapes")?);
    if tables.len() != shapes.len() {
        return Err(js_error(lib::Error::arg("shapes", format!("{} shapes for {} tables", shapes.len(), tables.len()))));
    }
    tables
        .iter()
        .zip(&shapes)
        .map(|(t, s)| {
            let t = t.dyn_ref::<js_sys::Float32Array>().ok_or_else(|| js_error(lib::Error::arg("tables", "expected Float32Arrays")))?;
            table_dims(t, s, "shapes")
        })
        .collect()
}

#[wasm_bindgen]
impl Gpu {
    /// `nn.LayerNorm(dim, eps)`; options `{eps = 1e-5, gamma?, beta?}` (Float32Arrays of
    /// `dim`; both absent: no affine part).
    #[wasm_bindgen(js_name = layerNorm)]
    pub fn layer_norm(
        &self,
        dim: f64,
        #[wasm_bindgen(unchecked_param_type = "{ eps?: number, gamma?: Float32Array, beta?: Float32Array } | undefined")] options: JsValue,
    ) -> Result<LayerNorm, JsValue> {
        if !(dim.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&dim)) {
            return Err(js_error(lib::Error::arg("dim", format!("expected a non-negative integer, got {dim}"))));
        }
        let dim = dim as usize;
        let eps = opt_f64(&options, "eps")?.unwrap_or(1e-5) as f32;
        let (gamma, beta) = (opt_f32_array(&options, "gamma")?, opt_f32_array(&options, "beta")?);
        let layer = lib::LayerNorm::from_params(&self.ctx, dim, eps, gamma.as_deref(), beta.as_deref()).map_err(js_error)?;
        Ok(LayerNorm { ctx: self.ctx.clone(), layer })
    }

    /// bitsandbytes' `StableEmbedding` over a `[rows, dim]` f32 table: lookup, then
    /// LayerNorm. Options `{paddingIdx?, gamma?, beta?, eps?}`.
    #[wasm_bindgen(js_name = stableEmbedding)]
    pub async fn stable_embedding(
        &self,
        weight: js_sys::Float32Array,
        #[wasm_bindgen(unchecked_param_type = "number[]")] shape: JsValue,
        #[wasm_bindgen(
            unchecked_param_type = "{ paddingIdx?: number | null, eps?: number, gamma?: Float32Array, beta?: Float32Array } | undefined"
        )]
        options: JsValue,
    ) -> Result<StableEmbedding, JsValue> {
        let (w, v, d) = table_dims(&weight, &shape, "shape")?;
        let padding_idx = opt_i64(&options, "paddingIdx")?;
        let eps = opt_f64(&options, "eps")?.map_or(lib::STABLE_EMBEDDING_EPS, |e| e as f32);
        let (gamma, beta) = (opt_f32_array(&options, "gamma")?, opt_f32_array(&options, "beta")?);
        let ctx = self.ctx.clone();
        let layer = gpu_call(&ctx, || {
            lib::StableEmbedding::from_pretrained(&ctx, lib::HostTable::f32(&w, v, d)?, padding_idx, gamma.as_deref(), beta.as_deref(), eps)
        })
        .await?;
        Ok(StableEmbedding { ctx, layer })
    }

    /// BERT's embedding block: LayerNorm of the sum of lookups in several `[rows, dim]`
    /// tables (`tables[k]` with shape `shapes[k]`). Options `{gamma?, beta?, eps = 1e-12}`.
    #[wasm_bindgen(js_name = embeddingSumLayerNorm)]
    pub async fn embedding_sum_layer_norm(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Float32Array[]")] tables: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number[][]")] shapes: JsValue,
        #[wasm_bindgen(unchecked_param_type = "{ eps?: number, gamma?: Float32Array, beta?: Float32Array } | undefined")] options: JsValue,
    ) -> Result<EmbeddingSumLayerNorm, JsValue> {
        let host = host_tables(&tables, &shapes)?;
        let eps = opt_f64(&options, "eps")?.unwrap_or(1e-12) as f32;
        let (gamma, beta) = (opt_f32_array(&options, "gamma")?, opt_f32_array(&options, "beta")?);
        let ctx = self.ctx.clone();
        let layer = gpu_call(&ctx, || {
            let tables = host.iter().map(|(w, v, d)| lib::HostTable::f32(w, *v, *d)).collect::<lib::Result<Vec<_>>>()?;
            lib::EmbeddingSumLayerNorm::new(&ctx, &tables, gamma.as_deref(), beta.as_deref(), eps)
        })
        .await?;
        Ok(EmbeddingSumLayerNorm { ctx, layer })
    }

    /// FBGEMM's table-batched embedding bags (see the crate's `TableBatchedEmbeddingBags`):
    /// `tables` (Float32Arrays, row-major) of `shapes` `[[rows, dim], ...]`, feature f
    /// reading table `featureTableMap[f]`, options `{ mode: "sum" | "mean" | "none" }` (sum).
    #[wasm_bindgen(js_name = tableBatchedEmbeddingBags)]
    pub async fn table_batched_embedding_bags(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Float32Array[]")] tables: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number[][]")] shapes: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number[]")] feature_table_map: JsValue,
        #[wasm_bindgen(unchecked_param_type = "{ mode?: \"sum\" | \"mean\" | \"none\" } | undefined")] options: JsValue,
    ) -> Result<TableBatchedEmbeddingBags, JsValue> {
        let host = host_tables(&tables, &shapes)?;
        let map = shape_arg(&feature_table_map, "featureTableMap")?.unwrap_or_default();
        let mode = lib::Pooling::from_str(opt_str(&options, "mode")?.as_deref().unwrap_or("sum")).map_err(js_error)?;
        let ctx = self.ctx.clone();
        let layer = gpu_call(&ctx, || {
            let tables: Vec<(&[f32], usize, usize)> = host.iter().map(|(w, v, d)| (&w[..], *v, *d)).collect();
            lib::TableBatchedEmbeddingBags::from_pretrained(&ctx, &tables, &map, mode)
        })
        .await?;
        Ok(TableBatchedEmbeddingBags { ctx, layer })
    }

    /// FBGEMM's inference TBE over tables of mixed precision (see the crate's
    /// `TableBatchedEmbeddingBags::from_rows`): `tables` (Uint8Arrays, each table's rows
    /// in FBGEMM's inference layout) of `shapes` `[[rows, dim], ...]` stored as
    /// `precisions` (`"fp32" | "fp16" | "int8" | "int4"`, one per table); arguments
    /// otherwise as `tableBatchedEmbeddingBags`'s. For inference: it has no `weights`.
    #[wasm_bindgen(js_name = tableBatchedEmbeddingBagsFromRows)]
    pub async fn table_batched_embedding_bags_from_rows(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Uint8Array[]")] tables: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number[][]")] shapes: JsValue,
        #[wasm_bindgen(unchecked_param_type = "string[]")] precisions: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number[]")] feature_table_map: JsValue,
        #[wasm_bindgen(unchecked_param_type = "{ mode?: \"sum\" | \"mean\" | \"none\" } | undefined")] options: JsValue,
    ) -> Result<TableBatchedEmbeddingBags, JsValue> {
        let (bytes, shapes, precisions) =
            (array_arg(&tables, "tables")?, array_arg(&shapes, "shapes")?, array_arg(&precisions, "precisions")?);
        if bytes.len() != shapes.len() || bytes.len() != precisions.len() {
            let what = format!("{} tables, {} shapes and {} precisions", bytes.len(), shapes.len(), precisions.len());
            return Err(js_error(lib::Error::arg("shapes", what)));
        }
        let mut host = Vec::with_capacity(bytes.len());
        for ((t, shape), precision) in bytes.iter().zip(&shapes).zip(&precisions) {
            let t = t.dyn_ref::<js_sys::Uint8Array>().ok_or_else(|| js_error(lib::Error::arg("tables", "expected Uint8Arrays")))?;
            let dims = shape_arg(shape, "shapes")?.unwrap_or_default();
            let [rows, dim] = dims[..] else {
                return Err(js_error(lib::Error::arg("shapes", format!("expected [rows, dim] per table, got {dims:?}"))));
            };
            let name = precision.as_string().ok_or_else(|| js_error(lib::Error::arg("precisions", "expected strings")))?;
            host.push((t.to_vec(), rows, dim, lib::TablePrecision::from_str(&name).map_err(js_error)?));
        }
        let map = shape_arg(&feature_table_map, "featureTableMap")?.unwrap_or_default();
        let mode = lib::Pooling::from_str(opt_str(&options, "mode")?.as_deref().unwrap_or("sum")).map_err(js_error)?;
        let ctx = self.ctx.clone();
        let layer = gpu_call(&ctx, || {
            let tables: Vec<lib::TableRows<'_>> = host
                .iter()
                .map(|(bytes, rows, dim, precision)| lib::TableRows { rows: *rows, dim: *dim, precision: *precision, bytes })
                .collect();
            lib::TableBatchedEmbeddingBags::from_rows(&ctx, &tables, &map, mode)
        })
        .await?;
        Ok(TableBatchedEmbeddingBags { ctx, layer })
    }

    /// transformers' `AxialPositionEmbeddings`: position p is `weight0[p / n2] ++ weight1[p % n2]`,
    /// with `weight0` `[n1, d0]` and `weight1` `[n2, d1]` (`axialPosShape = [n1, n2]`, `axialDims = [d0, d1]`).
    #[wasm_bindgen(js_name = axialPositionEmbedding)]
    pub async fn axial_position_embedding(
        &self,
        weight0: js_sys::Float32Array,
        weight1: js_sys::Float32Array,
        #[wasm_bindgen(unchecked_param_type = "[number, number]")] axial_pos_shape: JsValue,
        #[wasm_bindgen(unchecked_param_type = "[number, number]")] axial_dims: JsValue,
    ) -> Result<AxialPositionEmbedding, JsValue> {
        let pair = |v: &JsValue, name: &'static str| -> Result<[usize; 2], JsValue> {
            match shape_arg(v, name)?.as_deref() {
                Some(&[a, b]) => Ok([a, b]),
                other => Err(js_error(lib::Error::arg(name, format!("expected two numbers, got {other:?}")))),
            }
        };
        let (shape, dims) = (pair(&axial_pos_shape, "axial_pos_shape")?, pair(&axial_dims, "axial_dims")?);
        let (w0, w1) = (weight0.to_vec(), weight1.to_vec());
        let ctx = self.ctx.clone();
        let layer = gpu_call(&ctx, || lib::AxialPositionEmbedding::from_pretrained(&ctx, &w0, &w1, shape, dims)).await?;
        Ok(AxialPositionEmbedding { ctx, layer })
    }

    /// An embedding over a quantized copy of `weight` (a `[V, D]` f32 tensor on this GPU,
    /// left as it is). Options `{scheme = "int8_blockwise" | "int8_rowwise" | "nf4" | "fp4", blocksize?}`.
    #[wasm_bindgen(js_name = quantizedEmbedding)]
    pub async fn quantized_embedding(
        &self,
        weight: &Tensor,
        #[wasm_bindgen(unchecked_param_type = "{ scheme?: string, blocksize?: number } | undefined")] options: JsValue,
    ) -> Result<QuantizedEmbedding, JsValue> {
        let table = self.quantized_table(weight, &options).await?;
        Ok(QuantizedEmbedding { ctx: self.ctx.clone(), layer: lib::QuantizedEmbedding::from_table(table) })
    }

    /// An embedding bag over a quantized copy of `weight`. Options as `quantizedEmbedding`
    /// plus `{mode = "mean", paddingIdx?, includeLastOffset?}`.
    #[wasm_bindgen(js_name = quantizedEmbeddingBag)]
    pub async fn quantized_embedding_bag(
        &self,
        weight: &Tensor,
        #[wasm_bindgen(
            unchecked_param_type = "{ scheme?: string, blocksize?: number, mode?: \"sum\" | \"mean\" | \"max\", paddingIdx?: number | null, includeLastOffset?: boolean } | undefined"
        )]
        options: JsValue,
    ) -> Result<QuantizedEmbeddingBag, JsValue> {
        let mode = lib::BagMode::from_str(opt_str(&options, "mode")?.as_deref().unwrap_or("mean")).map_err(js_error)?;
        let padding_idx = opt_i64(&options, "paddingIdx")?;
        let include_last_offset = opt_bool(&options, "includeLastOffset")?.unwrap_or(false);
        let table = self.quantized_table(weight, &options).await?;
        let layer = lib::QuantizedEmbeddingBag::from_table(table, mode)
            .with_padding_idx(padding_idx)
            .map_err(js_error)?
            .with_include_last_offset(include_last_offset);
        Ok(QuantizedEmbeddingBag { ctx: self.ctx.clone(), layer })
    }

    /// `bitsandbytes.functional.quantize_blockwise` of an f32 tensor (taken flat):
    /// `{codes: Tensor (U8), absmax: Tensor (F32)}`, both on the GPU.
    #[wasm_bindgen(js_name = quantizeBlockwise, unchecked_return_type = "{ codes: Tensor, absmax: Tensor }")]
    pub async fn quantize_blockwise(
        &self,
        x: js_sys::Float32Array,
        #[wasm_bindgen(unchecked_param_type = "BlockwiseOptions | undefined")] options: JsValue,
    ) -> Result<JsValue, JsValue> {
        let values = x.to_vec();
        let (blocksize, code) = blockwise_options(&options)?;
        let ctx = self.ctx.clone();
        let q = gpu_call(&ctx, || {
            let t = lib::GpuTensor::from_bytes(&ctx, bytemuck::cast_slice(&values), &[values.len()], lib::DType::F32, 1)?;
            lib::quantize_blockwise(&ctx, &t, blocksize, code)
        })
        .await?;
        let o = js_sys::Object::new();
        js_sys::Reflect::set(&o, &"codes".into(), &Tensor::new(ctx.clone(), q.codes).into())?;
        js_sys::Reflect::set(&o, &"absmax".into(), &Tensor::new(ctx, q.absmax).into())?;
        Ok(o.into())
    }

    /// `bitsandbytes.functional.dequantize_blockwise`: f32 values `[codes.length]` on the GPU.
    #[wasm_bindgen(js_name = dequantizeBlockwise)]
    pub async fn dequantize_blockwise(
        &self,
        codes: js_sys::Uint8Array,
        absmax: js_sys::Float32Array,
        #[wasm_bindgen(unchecked_param_type = "BlockwiseOptions | undefined")] options: JsValue,
    ) -> Result<Tensor, JsValue> {
        let (codes, absmax) = (codes.to_vec(), absmax.to_vec());
        let (blocksize, code) = blockwise_options(&options)?;
        let ctx = self.ctx.clone();
        let out = gpu_call(&ctx, || {
            let c = lib::GpuTensor::from_bytes(&ctx, &codes, &[codes.len()], lib::DType::U8, 1)?;
            let a = lib::GpuTensor::from_bytes(&ctx, bytemuck::cast_slice(&absmax), &[absmax.len()], lib::DType::F32, 1)?;
            lib::dequantize_blockwise(&ctx, &c, &a, blocksize, code)
        })
        .await?;
        Ok(Tensor::new(ctx, out))
    }
}

impl Gpu {
    async fn quantized_table(&self, weight: &Tensor, options: &JsValue) -> Result<lib::QuantizedTable, JsValue> {
        let scheme = lib::Scheme::from_str(opt_str(options, "scheme")?.as_deref().unwrap_or("int8_blockwise")).map_err(js_error)?;
        let blocksize = blocksize(options)?;
        let w = weight.gpu()?.clone();
        gpu_call(&self.ctx, || lib::QuantizedTable::from_tensor(&self.ctx, &w, scheme, blocksize)).await
    }
}

/// `{blocksize = 4096, code = "dynamic"}` of the block-wise (de)quantization.
fn blockwise_options(options: &JsValue) -> Result<(usize, lib::CodeMap), JsValue> {
    let blocksize = blocksize(options)?.unwrap_or(4096);
    let code = lib::CodeMap::from_str(opt_str(options, "code")?.as_deref().unwrap_or("dynamic")).map_err(js_error)?;
    lib::quant::blockwise::check_blocksize(blocksize).map_err(js_error)?;
    Ok((blocksize, code))
}

pub(crate) fn array_arg(v: &JsValue, name: &'static str) -> Result<Vec<JsValue>, JsValue> {
    v.dyn_ref::<js_sys::Array>().map(|a| a.iter().collect()).ok_or_else(|| js_error(lib::Error::arg(name, "expected an array")))
}

pub(crate) fn indices_and_shape(indices: &JsValue, shape: &JsValue, name: &'static str) -> Result<(IndexList, Vec<usize>), JsValue> {
    let values = index_list(indices, name)?;
    let shape = shape_arg(shape, "shape")?.unwrap_or_else(|| vec![values.len()]);
    Ok((values, shape))
}

js_layer!(
    /// `nn.LayerNorm` over the last dimension.
    LayerNorm, lib::LayerNorm
);

#[wasm_bindgen]
impl LayerNorm {
    /// Normalises host values of `shape` (last dimension = `dim`).
    pub async fn forward(
        &self,
        x: js_sys::Float32Array,
        #[wasm_bindgen(unchecked_param_type = "number[]")] shape: JsValue,
    ) -> Result<Tensor, JsValue> {
        let values = x.to_vec();
        let shape = shape_arg(&shape, "shape")?.unwrap_or_else(|| vec![values.len()]);
        let out = gpu_call(&self.ctx, || self.layer.forward(&self.ctx, &values, &shape)).await?;
        Ok(Tensor::new(self.ctx.clone(), out))
    }

    /// Normalises a tensor already on the GPU (e.g. an embedding's output), without a round trip.
    #[wasm_bindgen(js_name = forwardTensor)]
    pub async fn forward_tensor(&self, x: &Tensor) -> Result<Tensor, JsValue> {
        let x = x.gpu()?.clone();
        let out = gpu_call(&self.ctx, || self.layer.forward_gpu(&self.ctx, &x)).await?;
        Ok(Tensor::new(self.ctx.clone(), out))
    }
}

lookup_layer!(
    /// bitsandbytes' `StableEmbedding`: lookup, then LayerNorm.
    StableEmbedding, lib::StableEmbedding
);
lookup_layer!(
    /// transformers' `AxialPositionEmbeddings` (forward takes position ids).
    AxialPositionEmbedding, lib::AxialPositionEmbedding
);
lookup_layer!(
    /// A lookup in a quantized table, dequantized on the GPU.
    QuantizedEmbedding, lib::QuantizedEmbedding
);

js_layer!(
    /// BERT's embedding block: LayerNorm(Σ_k table_k[indices_k]).
    EmbeddingSumLayerNorm, lib::EmbeddingSumLayerNorm
);

#[wasm_bindgen]
impl EmbeddingSumLayerNorm {
    /// One index array per table: all of `shape`, or each of its own shape when `shape`
    /// is a list of shapes (they broadcast, e.g. positions `[1, S]` with ids `[B, S]`).
    pub async fn forward(
        &self,
        #[wasm_bindgen(unchecked_param_type = "IndexArray[]")] indices: JsValue,
        #[wasm_bindgen(unchecked_param_type = "number[] | number[][] | undefined")] shape: JsValue,
    ) -> Result<Tensor, JsValue> {
        let lists = array_arg(&indices, "indices")?.iter().map(|v| index_list(v, "indices")).collect::<Result<Vec<_>, _>>()?;
        let per_table = js_sys::Array::is_array(&shape) && js_sys::Array::is_array(&js_sys::Array::from(&shape).get(0));
        let shapes: Vec<Vec<usize>> = if per_table {
            js_sys::Array::from(&shape).iter().map(|s| shape_arg(&s, "shape").map(|s| s.unwrap_or_default())).collect::<Result<_, _>>()?
        } else {
            let one = shape_arg(&shape, "shape")?.unwrap_or_else(|| vec![lists.first().map_or(0, |l| l.len())]);
            vec![one; lists.len()]
        };
        if shapes.len() != lists.len() {
            return Err(js_error(lib::Error::arg(
                "shape",
                format!("expected {} shapes (one per index array), got {}", lists.len(), shapes.len()),
            )));
        }
        let out = gpu_call(&self.ctx, || {
            let idx: Vec<lib::Indices<'_>> = lists.iter().zip(&shapes).map(|(l, s)| l.as_indices(s)).collect();
            self.layer.forward(&self.ctx, &idx)
        })
        .await?;
        Ok(Tensor::new(self.ctx.clone(), out))
    }
}

js_layer!(
    /// An embedding bag over a quantized table.
    QuantizedEmbeddingBag, lib::QuantizedEmbeddingBag
);

crate::bag_forward!(QuantizedEmbeddingBag, "As `EmbeddingBag.forward`.");

#[wasm_bindgen]
impl QuantizedEmbeddingBag {}

js_layer!(
    /// FBGEMM's table-batched embedding bags: every feature's bags in one dispatch.
    TableBatchedEmbeddingBags, lib::TableBatchedEmbeddingBags
);

#[wasm_bindgen]
impl TableBatchedEmbeddingBags {
    /// Pools every feature's bags: flat `indices`, `offsets` of F·B + 1 entries
    /// (feature-major), `perSampleWeights` (one per index, sum only); a `[B, outputDim]`
    /// tensor on the GPU.
    pub async fn forward(
        &self,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] indices: JsValue,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] offsets: JsValue,
        #[wasm_bindgen(unchecked_param_type = "Float32Array | null | undefined")] per_sample_weights: JsValue,
    ) -> Result<Tensor, JsValue> {
        let (indices, offsets) = (index_list(&indices, "indices")?, index_list(&offsets, "offsets")?);
        let weights = per_sample_weights.dyn_ref::<js_sys::Float32Array>().map(|w| w.to_vec());
        let (n, o) = ([indices.len()], [offsets.len()]);
        let out = gpu_call(&self.ctx, || self.layer.forward(&self.ctx, indices.as_indices(&n), offsets.as_indices(&o), weights.as_deref()))
            .await?;
        Ok(Tensor::new(self.ctx.clone(), out))
    }

    /// Pools bags of a batch size per feature and rank (FBGEMM's VBE):
    /// `batchSizePerFeaturePerRank[f][r]` bags of feature f from rank r, the offsets
    /// Σ batch sizes + 1 entries (feature-major, ranks in order within a feature); a flat
    /// tensor in FBGEMM's layout (rank after rank, each feature's bags of that rank in turn).
    #[wasm_bindgen(js_name = forwardVbe)]
    pub async fn forward_vbe(
        &self,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] indices: JsValue,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] offsets: JsValue,
        #[wasm_bindgen(unchecked_param_type = "Float32Array | null | undefined")] per_sample_weights: JsValue,
        #[wasm_bindgen(js_name = batchSizePerFeaturePerRank, unchecked_param_type = "number[][]")] batch_size_per_feature_per_rank: JsValue,
    ) -> Result<Tensor, JsValue> {
        let (indices, offsets) = (index_list(&indices, "indices")?, index_list(&offsets, "offsets")?);
        let weights = per_sample_weights.dyn_ref::<js_sys::Float32Array>().map(|w| w.to_vec());
        let sizes = nested_sizes(&batch_size_per_feature_per_rank, "batchSizePerFeaturePerRank")?;
        let (n, o) = ([indices.len()], [offsets.len()]);
        let out = gpu_call(&self.ctx, || {
            self.layer.forward_vbe(&self.ctx, indices.as_indices(&n), offsets.as_indices(&o), weights.as_deref(), &sizes)
        })
        .await?;
        Ok(Tensor::new(self.ctx.clone(), out))
    }

    /// The output's width: the sum of the features' dims.
    #[wasm_bindgen(getter, js_name = outputDim)]
    pub fn output_dim(&self) -> u32 {
        self.layer.output_dim() as u32
    }

    /// Every table as one `[Σ rows, D]` tensor (tables of one dim D): what an optimizer
    /// over all of them steps (`gpu.optimizer(tbe.weights, options)`).
    #[wasm_bindgen(getter)]
    pub fn weights(&self) -> Result<Tensor, JsValue> {
        Ok(Tensor::new(self.ctx.clone(), self.layer.weights().map_err(js_error)?))
    }

    /// The dense gradient of every table (`[Σ rows, D]`, FBGEMM's dense TBE `weights.grad`)
    /// for `gradOut` (the forward's shape, on the GPU); arguments as `forward`'s.
    pub async fn backward(
        &self,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] indices: JsValue,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] offsets: JsValue,
        #[wasm_bindgen(unchecked_param_type = "Float32Array | null | undefined")] per_sample_weights: JsValue,
        grad_out: &Tensor,
    ) -> Result<Tensor, JsValue> {
        let (indices, offsets) = (index_list(&indices, "indices")?, index_list(&offsets, "offsets")?);
        let weights = per_sample_weights.dyn_ref::<js_sys::Float32Array>().map(|w| w.to_vec());
        let (n, o) = ([indices.len()], [offsets.len()]);
        let g = grad_out.gpu()?.clone();
        let r = self
            .layer
            .backward(&self.ctx, indices.as_indices(&n), offsets.as_indices(&o), weights.as_deref(), &g, Default::default())
            .await;
        match crate::backward::checked(&self.ctx, r).await? {
            lib::Gradient::Dense(t) => Ok(Tensor::new(self.ctx.clone(), t)),
            lib::Gradient::Sparse { .. } => Err(js_error(lib::Error::Unsupported("a dense TBE backward gave a sparse gradient".into()))),
        }
    }

    /// The backward and one step of `optimizer` (made for `weights`), fused for the
    /// optimizers that take sparse gradients (FBGEMM's EXACT_SGD, EXACT_ADAGRAD,
    /// EXACT_ROWWISE_ADAGRAD, ADAM as `tbe_adam`, PARTIAL_ROWWISE_ADAM). With
    /// `batchSizePerFeaturePerRank` (as `forwardVbe` takes it), the step of `forwardVbe`'s
    /// output, `gradOut` of its flat shape.
    #[allow(clippy::await_holding_refcell_ref)] // as Optimizer.stepEmbedding: the borrow refuses a second step meanwhile
    pub async fn step(
        &self,
        optimizer: &crate::optim::Optimizer,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] indices: JsValue,
        #[wasm_bindgen(unchecked_param_type = "IndexArray")] offsets: JsValue,
        #[wasm_bindgen(unchecked_param_type = "Float32Array | null | undefined")] per_sample_weights: JsValue,
        grad_out: &Tensor,
        #[wasm_bindgen(js_name = batchSizePerFeaturePerRank, unchecked_param_type = "number[][] | undefined")]
        batch_size_per_feature_per_rank: JsValue,
    ) -> Result<(), JsValue> {
        let (indices, offsets) = (index_list(&indices, "indices")?, index_list(&offsets, "offsets")?);
        let weights = per_sample_weights.dyn_ref::<js_sys::Float32Array>().map(|w| w.to_vec());
        let sizes = if batch_size_per_feature_per_rank.is_undefined() || batch_size_per_feature_per_rank.is_null() {
            None
        } else {
            Some(nested_sizes(&batch_size_per_feature_per_rank, "batchSizePerFeaturePerRank")?)
        };
        let (n, o) = ([indices.len()], [offsets.len()]);
        let (idx, off) = (indices.as_indices(&n), offsets.as_indices(&o));
        let g = grad_out.gpu()?.clone();
        let mut opt = optimizer.busy_or_mut()?;
        let r = match &sizes {
            Some(sizes) => self.layer.variable_batch(sizes).step(&self.ctx, &mut opt, idx, off, weights.as_deref(), &g).await,
            None => self.layer.step(&self.ctx, &mut opt, idx, off, weights.as_deref(), &g).await,
        };
        crate::backward::checked(&self.ctx, r).await
    }
}

/// A list of lists of non-negative integers from JS (`number[][]`), such as FBGEMM's
/// batch sizes per feature and rank.
fn nested_sizes(value: &JsValue, name: &'static str) -> Result<Vec<Vec<usize>>, JsValue> {
    let bad = || js_error(lib::Error::arg(name, "expected an array of arrays of non-negative integers"));
    let outer = value.dyn_ref::<js_sys::Array>().ok_or_else(bad)?;
    outer
        .iter()
        .map(|inner| {
            let inner = inner.dyn_ref::<js_sys::Array>().ok_or_else(bad)?;
            inner
                .iter()
                .map(|v| v.as_f64().filter(|x| *x >= 0.0 && x.fract() == 0.0 && *x < u32::MAX as f64).map(|x| x as usize).ok_or_else(bad))
                .collect()
        })
        .collect()
}
