//! Loading a safetensors file from a `Response` or a `ReadableStream`, tensor by tensor:
//! each piece that arrives is handed to the GPU queue at once, so the page never holds
//! the file (only the header and the piece at hand), with a progress callback.

use std::collections::BTreeMap;

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wgpu_embed as lib;

use crate::{js_error, Gpu, Tensor};

/// A tensor of the header: its name, dtype, shape and byte range in the data section.
struct Entry {
    name: String,
    dtype: lib::DType,
    shape: Vec<usize>,
    start: u64,
    end: u64,
}

/// The header's tensors, ordered by where their bytes lie (the order they stream in).
fn parse_header(json: &[u8]) -> Result<Vec<Entry>, lib::Error> {
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| lib::Error::Format(format!("safetensors header: {e}")))?;
    let mut entries = Vec::new();
    for (name, v) in header {
        if name == "__metadata__" {
            continue;
        }
        let field = |k: &str| v.get(k).ok_or_else(|| lib::Error::Format(format!("tensor {name:?}: no {k} in the header")));
        let dtype = match field("dtype")?.as_str() {
            Some("F32") => lib::DType::F32,
            Some("F16") => lib::DType::F16,
            Some("BF16") => lib::DType::BF16,
            other => return Err(lib::Error::arg("dtype", format!("tensor {name:?} is {other:?}; streamed tables are F32, F16 or BF16"))),
        };
        let shape: Vec<usize> = field("shape")?
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_u64().map(|d| d as usize)).collect())
            .ok_or_else(|| lib::Error::Format(format!("tensor {name:?}: shape is not a list")))?;
        let offsets: Vec<u64> =
            field("data_offsets")?.as_array().map(|a| a.iter().filter_map(|o| o.as_u64()).collect()).unwrap_or_default();
        let [start, end] = offsets[..] else {
            return Err(lib::Error::Format(format!("tensor {name:?}: data_offsets is not two integers")));
        };
        entries.push(Entry { name, dtype, shape, start, end });
    }
    entries.sort_by_key(|e| e.start);
    Ok(entries)
}

/// The next chunk of a stream reader, or `None` at its end.
async fn next_chunk(reader: &JsValue) -> Result<Option<js_sys::Uint8Array>, JsValue> {
    let read: js_sys::Function = js_sys::Reflect::get(reader, &"read".into())?.dyn_into()?;
    let result = wasm_bindgen_futures::JsFuture::from(read.call0(reader)?.dyn_into::<js_sys::Promise>()?).await?;
    if js_sys::Reflect::get(&result, &"done".into())?.as_bool().unwrap_or(false) {
        return Ok(None);
    }
    Ok(Some(js_sys::Reflect::get(&result, &"value".into())?.dyn_into()?))
}

#[wasm_bindgen]
impl Gpu {
    /// Loads every tensor (F32, F16 or BF16; rows are the last dimension) of a
    /// safetensors file from `source`, a `Response` (e.g. `fetch(url)`) or a
    /// `ReadableStream` of its bytes, uploading each piece as it arrives. Options:
    /// `{ onProgress(loadedBytes, totalBytes, tensorName) }`, called after every piece
    /// (`totalBytes` from the header on). Resolves to `{ name: Tensor }`.
    #[wasm_bindgen(js_name = loadSafetensors, unchecked_return_type = "Record<string, Tensor>")]
    pub async fn load_safetensors(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Response | ReadableStream<Uint8Array>")] source: JsValue,
        #[wasm_bindgen(unchecked_param_type = "{ onProgress?: (loaded: number, total: number, tensor: string) => void } | undefined")]
        options: JsValue,
    ) -> Result<js_sys::Object, JsValue> {
        let stream = match js_sys::Reflect::get(&source, &"body".into()) {
            Ok(body) if !body.is_undefined() && !body.is_null() => body,
            _ => source,
        };
        let get_reader: js_sys::Function = js_sys::Reflect::get(&stream, &"getReader".into())
            .ok()
            .and_then(|f| f.dyn_into().ok())
            .ok_or_else(|| js_error(lib::Error::arg("source", "expected a Response or a ReadableStream")))?;
        let reader = get_reader.call0(&stream)?;
        let on_progress: Option<js_sys::Function> = if options.is_undefined() || options.is_null() {
            None
        } else {
            js_sys::Reflect::get(&options, &"onProgress".into())?.dyn_into().ok()
        };
        let ctx = &self.ctx;
        // The header: 8 bytes of length, then JSON; held until parsed.
        let mut head: Vec<u8> = Vec::new();
        let mut entries: Option<(Vec<Entry>, u64)> = None;
        let mut loaded = 0u64;
        let mut next = 0usize;
        let mut writer: Option<lib::TensorWriter> = None;
        let mut data_pos = 0u64; // bytes of the data section seen
        let out = js_sys::Object::new();
        while let Some(chunk) = next_chunk(&reader).await? {
            loaded += chunk.length() as u64;
            let mut bytes = chunk.to_vec();
            if entries.is_none() {
                head.extend_from_slice(&bytes);
                if head.len() < 8 {
                    continue;
                }
                let n = u64::from_le_bytes(head[..8].try_into().unwrap_or_default()) as usize;
                if head.len() < 8 + n {
                    continue;
                }
                let list = parse_header(&head[8..8 + n]).map_err(js_error)?;
                let data_len = list.iter().map(|e| e.end).max().unwrap_or(0);
                entries = Some((list, 8 + n as u64 + data_len));
                bytes = head.split_off(8 + n);
            }
            let Some((list, _)) = &entries else { continue };
            // Hand the bytes to the tensors they belong to, in order.
            let mut at = 0usize;
            while at < bytes.len() && next < list.len() {
                let e = &list[next];
                if data_pos < e.start {
                    // Padding between tensors.
                    let skip = ((e.start - data_pos) as usize).min(bytes.len() - at);
                    at += skip;
                    data_pos += skip as u64;
                    continue;
                }
                if writer.is_none() {
                    let row_len = e.shape.last().copied().unwrap_or(1).max(1);
                    writer = Some(lib::GpuTensor::writer(ctx, &e.shape, e.dtype, row_len).map_err(js_error)?);
                }
                let take = ((e.end - data_pos) as usize).min(bytes.len() - at);
                if let Some(w) = writer.as_mut() {
                    w.write(ctx, &bytes[at..at + take]).map_err(js_error)?;
                }
                at += take;
                data_pos += take as u64;
                if data_pos == e.end {
                    if let Some(w) = writer.take() {
                        let t = w.finish().map_err(js_error)?;
                        js_sys::Reflect::set(&out, &e.name.as_str().into(), &Tensor::new(self.ctx.clone(), t).into())?;
                    }
                    next += 1;
                }
            }
            if let (Some(f), Some((list, total))) = (&on_progress, &entries) {
                let name = list.get(next.min(list.len().saturating_sub(1))).map_or("", |e| e.name.as_str());
                f.call3(&JsValue::NULL, &(loaded as f64).into(), &(*total as f64).into(), &name.into())?;
            }
        }
        // Empty tensors at the end take no bytes.
        if let Some((list, _)) = &entries {
            while next < list.len() && list[next].start == list[next].end {
                let e = &list[next];
                let t = lib::GpuTensor::writer(ctx, &e.shape, e.dtype, e.shape.last().copied().unwrap_or(1).max(1))
                    .and_then(lib::TensorWriter::finish)
                    .map_err(js_error)?;
                js_sys::Reflect::set(&out, &e.name.as_str().into(), &Tensor::new(self.ctx.clone(), t).into())?;
                next += 1;
            }
        }
        match &entries {
            None => Err(js_error(lib::Error::Format("the stream ended inside the safetensors header".into()))),
            Some((list, _)) if next < list.len() => {
                Err(js_error(lib::Error::Format(format!("the stream ended inside tensor {:?}", list[next].name))))
            }
            Some(_) => Ok(out),
        }
    }
}
