//! Index tensors given from the host (i32 or i64, any shape), and their checks.

use crate::error::{Error, Result};
use crate::gpu::context::Context;
use crate::gpu::tensor::{DType, GpuTensor};

/// Index values borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub enum IndexData<'a> {
    /// `torch.int32` values.
    I32(&'a [i32]),
    /// `torch.int64` values.
    I64(&'a [i64]),
}

impl IndexData<'_> {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            IndexData::I32(v) => v.len(),
            IndexData::I64(v) => v.len(),
        }
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value at `i`, widened.
    pub fn get(&self, i: usize) -> i64 {
        match self {
            IndexData::I32(v) => v[i] as i64,
            IndexData::I64(v) => v[i],
        }
    }

    /// All values, widened.
    pub fn iter(&self) -> impl Iterator<Item = i64> + '_ {
        (0..self.len()).map(move |i| self.get(i))
    }
}

/// An index tensor: values and shape, as `torch.LongTensor` / `IntTensor`.
#[derive(Debug, Clone, Copy)]
pub struct Indices<'a> {
    /// The values, row-major.
    pub data: IndexData<'a>,
    /// The shape (its product is the number of values).
    pub shape: &'a [usize],
}

impl<'a> Indices<'a> {
    /// i64 indices of the given shape.
    pub fn i64(data: &'a [i64], shape: &'a [usize]) -> Self {
        Indices { data: IndexData::I64(data), shape }
    }

    /// i32 indices of the given shape.
    pub fn i32(data: &'a [i32], shape: &'a [usize]) -> Self {
        Indices { data: IndexData::I32(data), shape }
    }

    /// Checks that the shape matches the number of values.
    pub(crate) fn check_shape(&self, name: &'static str) -> Result<()> {
        let Some(n) = self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) else {
            return Err(Error::arg(name, format!("shape {:?} has more elements than this machine can address", self.shape)));
        };
        if n != self.data.len() {
            return Err(Error::arg(name, format!("shape {:?} holds {n} values but {} were given", self.shape, self.data.len())));
        }
        if n as u64 >= u32::MAX as u64 {
            return Err(Error::arg(name, format!("{n} indices is more than one call can address (limit {})", u32::MAX - 1)));
        }
        Ok(())
    }

    /// Checks every value is a non-negative i32 and returns them for the GPU (rows of a
    /// table not known here: the kernels that use them check them again).
    pub fn to_rows_i32(self, name: &'static str) -> Result<Vec<i32>> {
        self.to_rows(name, i32::MAX as u64)
    }

    /// Checks every value is in `[0, num_rows)` and returns them as i32 for the GPU.
    pub(crate) fn to_rows(self, name: &'static str, num_rows: u64) -> Result<Vec<i32>> {
        self.check_shape(name)?;
        let mut out = Vec::with_capacity(self.data.len());
        for (position, value) in self.data.iter().enumerate() {
            if value < 0 || value as u64 >= num_rows {
                return Err(Error::IndexOutOfRange { name, position: position as u64, value, num_embeddings: num_rows });
            }
            out.push(value as i32);
        }
        Ok(out)
    }
}

/// Normalises a PyTorch-style `padding_idx` (negative counts from the end).
pub(crate) fn normalize_padding_idx(padding_idx: Option<i64>, num_embeddings: usize) -> Result<Option<u32>> {
    match padding_idx {
        None => Ok(None),
        Some(p) => {
            let n = num_embeddings as i64;
            if p >= n || p < -n {
                return Err(Error::arg(
                    "padding_idx",
                    format!("padding_idx must be within num_embeddings: got {p} for num_embeddings = {num_embeddings}"),
                ));
            }
            Ok(Some(if p < 0 { (p + n) as u32 } else { p as u32 }))
        }
    }
}

/// Uploads checked rows (one index each) as an I32 tensor of `rows_per_segment` rows
/// per segment, to pair with output segments of as many rows.
pub(crate) fn upload_rows(ctx: &Context, rows: &[i32], rows_per_segment: u64) -> Result<GpuTensor> {
    GpuTensor::from_bytes_with(ctx, bytemuck::cast_slice(rows), &[rows.len()], DType::I32, 1, rows_per_segment)
}
