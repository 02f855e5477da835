//! Reading JS arguments into Rust values, with the library's errors for bad ones.

use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wgpu_embed::Error;

use crate::js_error;

/// Index values as the caller gave them.
pub(crate) enum IndexList {
    I32(Vec<i32>),
    I64(Vec<i64>),
}

impl IndexList {
    pub(crate) fn len(&self) -> usize {
        match self {
            IndexList::I32(v) => v.len(),
            IndexList::I64(v) => v.len(),
        }
    }
}

fn describe(value: &JsValue) -> String {
    if value.is_undefined() {
        return "undefined".into();
    }
    if value.is_null() {
        return "null".into();
    }
    let name = js_sys::Reflect::get(value, &"constructor".into())
        .ok()
        .and_then(|c| js_sys::Reflect::get(&c, &"name".into()).ok())
        .and_then(|n| n.as_string());
    name.unwrap_or_else(|| value.js_typeof().as_string().unwrap_or_default())
}

/// Int32Array, BigInt64Array, Uint32Array or an array of integers (numbers or bigints).
pub(crate) fn index_list(value: &JsValue, name: &'static str) -> Result<IndexList, JsValue> {
    if let Some(a) = value.dyn_ref::<js_sys::Int32Array>() {
        return Ok(IndexList::I32(a.to_vec()));
    }
    if let Some(a) = value.dyn_ref::<js_sys::BigInt64Array>() {
        return Ok(IndexList::I64(a.to_vec()));
    }
    if let Some(a) = value.dyn_ref::<js_sys::Uint32Array>() {
        return Ok(IndexList::I64(a.to_vec().into_iter().map(i64::from).collect()));
    }
    if let Some(a) = value.dyn_ref::<js_sys::Array>() {
        let mut out = Vec::with_capacity(a.length() as usize);
        for (i, v) in a.iter().enumerate() {
            out.push(integer(&v).ok_or_else(|| js_error(Error::arg(name, format!("element {i} is {}, expected an integer", show(&v)))))?);
        }
        return Ok(IndexList::I64(out));
    }
    Err(js_error(Error::arg(
        name,
        format!("expected an Int32Array, BigInt64Array, Uint32Array or array of integers, got {}", describe(value)),
    )))
}

fn show(v: &JsValue) -> String {
    if let Some(f) = v.as_f64() {
        return f.to_string();
    }
    js_sys::JSON::stringify(v).ok().and_then(|s| s.as_string()).unwrap_or_else(|| describe(v))
}

fn integer(v: &JsValue) -> Option<i64> {
    if let Some(f) = v.as_f64() {
        // Exactly representable integers only: no silent rounding.
        return (f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_991.0).then_some(f as i64);
    }
    if v.is_bigint() {
        return i64::try_from(v.clone()).ok();
    }
    None
}

/// An optional shape: an array of non-negative integers.
pub(crate) fn shape_arg(value: &JsValue, name: &'static str) -> Result<Option<Vec<usize>>, JsValue> {
    if value.is_undefined() || value.is_null() {
        return Ok(None);
    }
    let bad = || js_error(Error::arg(name, format!("expected an array of non-negative integers, got {}", show(value))));
    let list: Vec<JsValue> = if let Some(a) = value.dyn_ref::<js_sys::Array>() {
        a.iter().collect()
    } else if let Some(a) = value.dyn_ref::<js_sys::Uint32Array>() {
        a.to_vec().into_iter().map(|x| JsValue::from(x as f64)).collect()
    } else {
        return Err(bad());
    };
    list.iter().map(|v| integer(v).filter(|&d| d >= 0).map(|d| d as usize).ok_or_else(bad)).collect::<Result<_, _>>().map(Some)
}

fn field(options: &JsValue, key: &'static str) -> Result<Option<JsValue>, JsValue> {
    if options.is_undefined() || options.is_null() {
        return Ok(None);
    }
    if !options.is_object() {
        return Err(js_error(Error::arg("options", format!("expected an object, got {}", show(options)))));
    }
    let v = js_sys::Reflect::get(options, &key.into())?;
    Ok(if v.is_undefined() || v.is_null() { None } else { Some(v) })
}

pub(crate) fn opt_f64(options: &JsValue, key: &'static str) -> Result<Option<f64>, JsValue> {
    field(options, key)?
        .map(|v| v.as_f64().ok_or_else(|| js_error(Error::arg(key, format!("expected a number, got {}", show(&v))))))
        .transpose()
}

pub(crate) fn opt_i64(options: &JsValue, key: &'static str) -> Result<Option<i64>, JsValue> {
    field(options, key)?
        .map(|v| integer(&v).ok_or_else(|| js_error(Error::arg(key, format!("expected an integer, got {}", show(&v))))))
        .transpose()
}

pub(crate) fn opt_bool(options: &JsValue, key: &'static str) -> Result<Option<bool>, JsValue> {
    field(options, key)?
        .map(|v| v.as_bool().ok_or_else(|| js_error(Error::arg(key, format!("expected true or false, got {}", show(&v))))))
        .transpose()
}

pub(crate) fn opt_str(options: &JsValue, key: &'static str) -> Result<Option<String>, JsValue> {
    field(options, key)?
        .map(|v| v.as_string().ok_or_else(|| js_error(Error::arg(key, format!("expected a string, got {}", show(&v))))))
        .transpose()
}
