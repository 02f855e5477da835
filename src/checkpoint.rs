//! Tables and LayerNorm parameters from safetensors checkpoints (as Hugging Face ships
//! them), found by tensor name with shape and dtype checks. F16 and BF16 tables stay
//! packed: the shaders unpack them, so they work on adapters without `shader-f16`.

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::gpu::table::check_table_shape;
use crate::gpu::tensor::DType;

/// A 2-D lookup table on the host: `rows × dim` values of F32, F16 or BF16 as
/// little-endian bytes (borrowed where possible).
#[derive(Debug, Clone)]
pub struct HostTable<'a> {
    dtype: DType,
    bytes: Cow<'a, [u8]>,
    rows: usize,
    dim: usize,
}

impl<'a> HostTable<'a> {
    /// An f32 table.
    pub fn f32(data: &'a [f32], rows: usize, dim: usize) -> Result<Self> {
        Self::from_bytes(DType::F32, bytemuck::cast_slice(data), rows, dim)
    }

    /// An f16 table (kept packed on the GPU).
    pub fn f16(data: &'a [half::f16], rows: usize, dim: usize) -> Result<Self> {
        Self::from_bytes(DType::F16, bytemuck::cast_slice(data), rows, dim)
    }

    /// A bf16 table (kept packed on the GPU).
    pub fn bf16(data: &'a [half::bf16], rows: usize, dim: usize) -> Result<Self> {
        Self::from_bytes(DType::BF16, bytemuck::cast_slice(data), rows, dim)
    }

    /// A table from raw little-endian bytes of `dtype` (F32, F16 or BF16).
    pub fn from_bytes(dtype: DType, bytes: impl Into<Cow<'a, [u8]>>, rows: usize, dim: usize) -> Result<Self> {
        if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
            return Err(Error::arg("weight", format!("expected an F32, F16 or BF16 table, got {dtype:?}")));
        }
        check_table_shape(rows, dim)?;
        let bytes = bytes.into();
        let want = rows.checked_mul(dim).and_then(|n| n.checked_mul(dtype.size()));
        if want != Some(bytes.len()) {
            return Err(Error::arg(
                "weight",
                format!(
                    "expected {rows} x {dim} {dtype:?} values ({} bytes), got {} bytes",
                    rows.saturating_mul(dim).saturating_mul(dtype.size()),
                    bytes.len()
                ),
            ));
        }
        Ok(HostTable { dtype, bytes, rows, dim })
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Rows (`num_embeddings`).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (`embedding_dim`).
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The raw little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes widened to f32 (exact for F16 and BF16), for mixing formats in one table.
    pub(crate) fn f32_bytes(&self) -> Cow<'_, [u8]> {
        match self.dtype {
            DType::F16 => {
                Cow::Owned(self.bytes.chunks_exact(2).flat_map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32().to_le_bytes()).collect())
            }
            DType::BF16 => Cow::Owned(
                self.bytes.chunks_exact(2).flat_map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32().to_le_bytes()).collect(),
            ),
            _ => Cow::Borrowed(&self.bytes),
        }
    }
}

/// A safetensors file held in memory.
pub struct Checkpoint {
    bytes: Vec<u8>,
    source: String,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint").field("source", &self.source).field("bytes", &self.bytes.len()).finish()
    }
}

impl Checkpoint {
    /// Reads a `.safetensors` file.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Format(format!("cannot read {}: {e}", path.display())))?;
        Self::with_source(bytes, path.display().to_string())
    }

    /// Wraps the bytes of a `.safetensors` file (e.g. fetched in the browser).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::with_source(bytes, "<bytes>".into())
    }

    fn with_source(bytes: Vec<u8>, source: String) -> Result<Self> {
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::Format(format!("{source} is not a safetensors file: {e}")))?;
        Ok(Checkpoint { bytes, source })
    }

    fn tensors(&self) -> safetensors::SafeTensors<'_> {
        // Checked in the constructor.
        safetensors::SafeTensors::deserialize(&self.bytes).expect("validated safetensors header")
    }

    /// Names of every tensor in the file, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.tensors().names().into_iter().map(str::to_string).collect();
        names.sort();
        names
    }

    /// The tensor `name` as stored: its dtype (F32, F16, BF16, U8 or I32; I8 bytes come
    /// as U8), shape and bytes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the file has no such tensor (naming similar ones)
    /// or holds it in another dtype.
    pub fn raw(&self, name: &str) -> Result<(DType, Vec<usize>, &[u8])> {
        let st = self.tensors();
        let view = st.tensor(name).map_err(|_| {
            let names = self.names();
            let near: Vec<&String> = names.iter().filter(|n| n.contains(name.rsplit('.').nth(1).unwrap_or(name))).take(8).collect();
            Error::arg("name", format!("{} has no tensor {name:?} ({} tensors; similar names: {near:?})", self.source, names.len()))
        })?;
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => DType::F32,
            safetensors::Dtype::F16 => DType::F16,
            safetensors::Dtype::BF16 => DType::BF16,
            // Int8 bytes (bitsandbytes' Int8Params) come back as they are; `stored_dtype` tells.
            safetensors::Dtype::U8 | safetensors::Dtype::I8 => DType::U8,
            safetensors::Dtype::I32 => DType::I32,
            other => {
                return Err(Error::arg(
                    "dtype",
                    format!("tensor {name:?} in {} is {other:?}; expected F32, F16, BF16, U8 or I32", self.source),
                ))
            }
        };
        let shape = view.shape().to_vec();
        // Borrow the data from our own bytes (the view borrows them too).
        let start = view.data().as_ptr() as usize - self.bytes.as_ptr() as usize;
        Ok((dtype, shape, &self.bytes[start..start + view.data().len()]))
    }

    /// The safetensors dtype tensor `name` is stored in.
    pub(crate) fn stored_dtype(&self, name: &str) -> Result<safetensors::Dtype> {
        self.raw(name)?;
        Ok(self.tensors().tensor(name).map_err(|e| Error::Format(e.to_string()))?.dtype())
    }

    /// The file's `__metadata__` (string keys and values; empty when it has none).
    pub fn metadata(&self) -> std::collections::BTreeMap<String, String> {
        safetensors::SafeTensors::read_metadata(&self.bytes)
            .ok()
            .and_then(|(_, m)| m.metadata().clone())
            .map(|m| m.into_iter().collect())
            .unwrap_or_default()
    }

    /// The 2-D table `name`, kept in its stored format (F32, F16 or BF16).
    pub fn table(&self, name: &str) -> Result<HostTable<'_>> {
        let (dtype, shape, data) = self.raw(name)?;
        match shape[..] {
            [rows, dim] => HostTable::from_bytes(dtype, data, rows, dim),
            _ => Err(Error::ShapeMismatch(format!(
                "tensor {name:?} in {} has shape {shape:?}; expected a 2-D table [num_embeddings, embedding_dim]",
                self.source
            ))),
        }
    }

    /// The 2-D table `name`, which must have `dim` columns (and `rows` rows when given).
    pub fn table_with_dim(&self, name: &str, rows: Option<usize>, dim: usize) -> Result<HostTable<'_>> {
        let t = self.table(name)?;
        if t.dim() != dim || rows.is_some_and(|r| r != t.rows()) {
            let want = rows.map_or_else(|| format!("[*, {dim}]"), |r| format!("[{r}, {dim}]"));
            return Err(Error::ShapeMismatch(format!(
                "tensor {name:?} in {} has shape [{}, {}]; expected {want}",
                self.source,
                t.rows(),
                t.dim()
            )));
        }
        Ok(t)
    }

    /// Uploads the 2-D table `name` as it is stored (F32, F16 or BF16), calling
    /// `progress(bytes_uploaded, bytes_total)` as its pieces reach the queue.
    pub fn upload_table(&self, ctx: &crate::Context, name: &str, progress: &mut dyn FnMut(u64, u64)) -> Result<crate::GpuTensor> {
        let t = self.table(name)?;
        crate::GpuTensor::from_bytes_with_progress(ctx, t.bytes(), &[t.rows(), t.dim()], t.dtype(), t.dim(), progress)
    }

    /// The 1-D tensor `name` of `len` values (e.g. LayerNorm's weight or bias), as f32.
    pub fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let (dtype, shape, data) = self.raw(name)?;
        if shape[..] != [len] {
            return Err(Error::ShapeMismatch(format!("tensor {name:?} in {} has shape {shape:?}; expected [{len}]", self.source)));
        }
        let table = HostTable::from_bytes(dtype, data, 1, len.max(1))?;
        Ok(bytemuck::pod_collect_to_vec(&table.f32_bytes()))
    }
}
