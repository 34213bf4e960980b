//! Explicit records: values written field by field as fixed-width
//! little-endian numbers, in an order the writing code spells out, so a
//! stored layout changes only when that code does (never because a struct
//! gained a field and a derive followed it). The checkpoint's dense state is
//! such a record (docs/checkpoint.md lists its fields).
//!
//! Every length read is checked against the bytes still there before
//! anything is allocated for it.
//!
//! ```
//! use freshet_core::record::{RecordReader, RecordWriter};
//!
//! let mut writer = RecordWriter::default();
//! writer.u32(7);
//! writer.f64s(&[0.5, -1.0]);
//! let bytes = writer.into_bytes();
//! let mut reader = RecordReader::new(&bytes, "example");
//! assert_eq!(reader.u32()?, 7);
//! assert_eq!(reader.f64s()?, vec![0.5, -1.0]);
//! reader.finish()?;
//! # Ok::<(), freshet_core::record::RecordError>(())
//! ```

use thiserror::Error;

/// Why bytes are not the record expected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{what}: {problem}")]
pub struct RecordError {
    /// The record read.
    pub what: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// Writes a record.
#[derive(Debug, Default)]
pub struct RecordWriter {
    bytes: Vec<u8>,
}

macro_rules! fixed {
    ($($name:ident: $t:ty),*) => {
        impl RecordWriter {
            $(
                #[doc = concat!("Appends a `", stringify!($t), "`, little-endian.")]
                pub fn $name(&mut self, value: $t) {
                    self.bytes.extend_from_slice(&value.to_le_bytes());
                }
            )*
        }
        impl RecordReader<'_> {
            $(
                #[doc = concat!("Reads a `", stringify!($t), "`, little-endian.")]
                pub fn $name(&mut self) -> Result<$t, RecordError> {
                    let bytes = self.take(size_of::<$t>())?;
                    Ok(<$t>::from_le_bytes(bytes.try_into().expect("the size taken")))
                }
            )*
        }
    };
}

fixed!(u8: u8, u16: u16, u32: u32, u64: u64, i32: i32, i64: i64, u128: u128, f32: f32, f64: f64);

impl RecordWriter {
    /// Appends a bool as one byte, 0 or 1.
    pub fn bool(&mut self, value: bool) {
        self.u8(u8::from(value));
    }

    /// Appends an optional f64: a byte 0 (none) or 1, then the value.
    pub fn option_f64(&mut self, value: Option<f64>) {
        self.bool(value.is_some());
        if let Some(value) = value {
            self.f64(value);
        }
    }

    /// Appends a length (u64).
    pub fn len(&mut self, len: usize) {
        self.u64(len as u64);
    }

    /// Appends a length, then the values.
    pub fn f32s(&mut self, values: &[f32]) {
        self.len(values.len());
        values.iter().for_each(|&v| self.f32(v));
    }

    /// Appends a length, then the values.
    pub fn f64s(&mut self, values: &[f64]) {
        self.len(values.len());
        values.iter().for_each(|&v| self.f64(v));
    }

    /// Appends a length, then the values.
    pub fn u64s(&mut self, values: &[u64]) {
        self.len(values.len());
        values.iter().for_each(|&v| self.u64(v));
    }

    /// Appends a length, then the string's UTF-8 bytes.
    pub fn str(&mut self, value: &str) {
        self.len(value.len());
        self.bytes.extend_from_slice(value.as_bytes());
    }

    /// Appends a length, then the bytes.
    pub fn bytes(&mut self, value: &[u8]) {
        self.len(value.len());
        self.bytes.extend_from_slice(value);
    }

    /// The record's bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads a record written by [`RecordWriter`].
#[derive(Debug)]
pub struct RecordReader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> RecordReader<'a> {
    /// Reads `bytes`, naming them `what` in errors.
    pub fn new(bytes: &'a [u8], what: &'static str) -> Self {
        RecordReader { bytes, what }
    }

    /// An error about this record.
    pub fn error(&self, problem: impl Into<String>) -> RecordError {
        RecordError { what: self.what, problem: problem.into() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.bytes.len() < n {
            return Err(self.error(format!("{n} more bytes needed, {} left", self.bytes.len())));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// Reads a bool (a byte 0 or 1).
    pub fn bool(&mut self) -> Result<bool, RecordError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.error(format!("bool byte {other}"))),
        }
    }

    /// Reads an optional f64.
    pub fn option_f64(&mut self) -> Result<Option<f64>, RecordError> {
        Ok(if self.bool()? { Some(self.f64()?) } else { None })
    }

    /// Reads a length of elements `unit` bytes each, which must fit in what is left.
    pub fn len(&mut self, unit: usize) -> Result<usize, RecordError> {
        let len = self.u64()?;
        match usize::try_from(len) {
            Ok(len) if len.checked_mul(unit).is_some_and(|bytes| bytes <= self.bytes.len()) => Ok(len),
            _ => Err(self.error(format!("a length of {len} is more than the record holds"))),
        }
    }

    /// Reads a length, then as many f32s.
    pub fn f32s(&mut self) -> Result<Vec<f32>, RecordError> {
        let len = self.len(4)?;
        (0..len).map(|_| self.f32()).collect()
    }

    /// Reads a length, then as many f64s.
    pub fn f64s(&mut self) -> Result<Vec<f64>, RecordError> {
        let len = self.len(8)?;
        (0..len).map(|_| self.f64()).collect()
    }

    /// Reads a length, then as many u64s.
    pub fn u64s(&mut self) -> Result<Vec<u64>, RecordError> {
        let len = self.len(8)?;
        (0..len).map(|_| self.u64()).collect()
    }

    /// Reads a length, then as many bytes of UTF-8.
    pub fn string(&mut self) -> Result<String, RecordError> {
        let len = self.len(1)?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes).map(str::to_owned).map_err(|_| self.error("a string that is not UTF-8"))
    }

    /// Reads a length, then as many bytes.
    pub fn bytes(&mut self) -> Result<Vec<u8>, RecordError> {
        let len = self.len(1)?;
        Ok(self.take(len)?.to_vec())
    }

    /// Checks that the whole record was read.
    pub fn finish(self) -> Result<(), RecordError> {
        match self.bytes.len() {
            0 => Ok(()),
            extra => Err(self.error(format!("{extra} trailing bytes"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_short_or_long_records_are_errors() {
        let mut writer = RecordWriter::default();
        writer.u8(1);
        writer.u16(2);
        writer.i64(-3);
        writer.u128(u128::MAX);
        writer.bool(true);
        writer.option_f64(None);
        writer.option_f64(Some(2.5));
        writer.f32s(&[1.5]);
        writer.str("päge");
        writer.i32(-7);
        writer.u64s(&[4, 5]);
        let bytes = writer.into_bytes();
        let mut reader = RecordReader::new(&bytes, "r");
        assert_eq!((reader.u8(), reader.u16(), reader.i64()), (Ok(1), Ok(2), Ok(-3)));
        assert_eq!((reader.u128(), reader.bool()), (Ok(u128::MAX), Ok(true)));
        assert_eq!((reader.option_f64(), reader.option_f64()), (Ok(None), Ok(Some(2.5))));
        assert_eq!(reader.f32s(), Ok(vec![1.5]));
        assert_eq!((reader.string(), reader.i32()), (Ok("päge".to_owned()), Ok(-7)));
        assert_eq!(reader.u64s(), Ok(vec![4, 5]));
        assert_eq!(reader.finish(), Ok(()));

        let mut short = RecordReader::new(&bytes[..3], "r");
        assert!(short.u64().is_err());
        let mut long = RecordReader::new(&bytes, "r");
        long.u8().expect("a byte");
        assert!(long.finish().is_err_and(|e| e.problem.contains("trailing")));
        // A length beyond the bytes is refused before anything is allocated.
        let huge = u64::MAX.to_le_bytes();
        assert!(RecordReader::new(&huge, "r").f64s().is_err());
        assert!(RecordReader::new(&[2], "r").bool().is_err());
        let mut not_utf8 = RecordWriter::default();
        not_utf8.len(1);
        not_utf8.u8(0xff);
        assert!(RecordReader::new(&not_utf8.into_bytes(), "r").string().is_err());
    }
}
