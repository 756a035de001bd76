//! Model metadata as GGUF stores it: typed key/value pairs.
//!
//! Every loader (GGUF, Hugging Face, llama2.c) presents its hyper-parameters
//! with GGUF's key names, so the model code reads one vocabulary of keys.

use crate::FormatError;

/// The GGUF metadata value type ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum MetaType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    String = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl MetaType {
    pub fn from_id(id: u32) -> Option<MetaType> {
        use MetaType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    /// An array keeps its element type so that empty arrays round-trip.
    Array(MetaType, Vec<MetaValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetaValue {
    pub fn meta_type(&self) -> MetaType {
        match self {
            MetaValue::U8(_) => MetaType::U8,
            MetaValue::I8(_) => MetaType::I8,
            MetaValue::U16(_) => MetaType::U16,
            MetaValue::I16(_) => MetaType::I16,
            MetaValue::U32(_) => MetaType::U32,
            MetaValue::I32(_) => MetaType::I32,
            MetaValue::F32(_) => MetaType::F32,
            MetaValue::Bool(_) => MetaType::Bool,
            MetaValue::String(_) => MetaType::String,
            MetaValue::Array(..) => MetaType::Array,
            MetaValue::U64(_) => MetaType::U64,
            MetaValue::I64(_) => MetaType::I64,
            MetaValue::F64(_) => MetaType::F64,
        }
    }

    /// Any integer value as i128 (so every integer type converts losslessly).
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v as i128,
            MetaValue::I8(v) => v as i128,
            MetaValue::U16(v) => v as i128,
            MetaValue::I16(v) => v as i128,
            MetaValue::U32(v) => v as i128,
            MetaValue::I32(v) => v as i128,
            MetaValue::U64(v) => v as i128,
            MetaValue::I64(v) => v as i128,
            _ => return None,
        })
    }

    /// Any numeric value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_int().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            MetaValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(_, v) => Some(v),
            _ => None,
        }
    }

    /// An array of strings.
    pub fn string_array(items: Vec<String>) -> MetaValue {
        MetaValue::Array(
            MetaType::String,
            items.into_iter().map(MetaValue::String).collect(),
        )
    }
}

/// Ordered key/value metadata with typed getters whose errors name the key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    pub entries: Vec<(String, MetaValue)>,
}

impl Metadata {
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Insert or replace a value, keeping the original position of the key.
    pub fn set(&mut self, key: impl Into<String>, value: MetaValue) {
        let key = key.into();
        match self.entries.iter_mut().find(|(k, _)| *k == key) {
            Some(e) => e.1 = value,
            None => self.entries.push((key, value)),
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<MetaValue> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        Some(self.entries.remove(i).1)
    }

    fn need(&self, key: &str) -> Result<&MetaValue, FormatError> {
        self.get(key)
            .ok_or_else(|| FormatError::MissingKey(key.to_string()))
    }

    fn wrong(key: &str, want: &str, v: &MetaValue) -> FormatError {
        FormatError::WrongKeyType {
            key: key.to_string(),
            expected: want.to_string(),
            found: format!("{:?}", v.meta_type()),
        }
    }

    /// An integer that fits in u64.
    pub fn get_u64(&self, key: &str) -> Result<u64, FormatError> {
        let v = self.need(key)?;
        v.as_int()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| Self::wrong(key, "non-negative integer", v))
    }

    /// An integer that fits in usize.
    pub fn get_usize(&self, key: &str) -> Result<usize, FormatError> {
        let v = self.get_u64(key)?;
        usize::try_from(v).map_err(|_| FormatError::Invalid {
            field: key.to_string(),
            reason: format!("{v} does not fit in memory"),
        })
    }

    pub fn get_f32(&self, key: &str) -> Result<f32, FormatError> {
        let v = self.need(key)?;
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| Self::wrong(key, "number", v))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, FormatError> {
        let v = self.need(key)?;
        v.as_str().ok_or_else(|| Self::wrong(key, "string", v))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, FormatError> {
        let v = self.need(key)?;
        v.as_bool().ok_or_else(|| Self::wrong(key, "bool", v))
    }

    pub fn get_array(&self, key: &str) -> Result<&[MetaValue], FormatError> {
        let v = self.need(key)?;
        v.as_array().ok_or_else(|| Self::wrong(key, "array", v))
    }

    /// An optional value: `Ok(None)` when absent, an error when present with the wrong type.
    pub fn opt<T>(
        &self,
        key: &str,
        f: impl Fn(&Self, &str) -> Result<T, FormatError>,
    ) -> Result<Option<T>, FormatError> {
        if self.get(key).is_some() {
            f(self, key).map(Some)
        } else {
            Ok(None)
        }
    }
}
