//! A reader for MATLAB level-5 MAT-files (what MATLAB writes with `save`, `-v6` and
//! `-v7`, and what `scipy.io.savemat` writes), for exactly the structures the benchmark
//! datasets use: numeric and logical arrays, char arrays, structs and struct arrays, cell
//! arrays, compressed (`miCOMPRESSED`) or not. Sparse arrays, objects and the HDF5-based
//! `-v7.3` format are refused with an error.
//!
//! Format: a 128-byte header (text, subsystem offset, version 0x0100, endian mark `IM`),
//! then data elements, each an 8-byte tag (type, byte count; or the 4-byte "small
//! element" form) and data padded to 8 bytes. A variable is an `miMATRIX` element: array
//! flags (class), dimensions, name, then the class's payload. See MathWorks, "MAT-File
//! Format" (matfile_format.pdf), chapter 1.
//!
//! Every length is checked against what is left, decompression is capped, nesting is
//! bounded: a hostile file gives [`MatError`], never a panic or an unbounded allocation.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Most bytes one compressed variable may inflate to.
pub const MAX_INFLATED: u64 = 1 << 30;
/// Deepest nesting of structs and cells.
pub const MAX_DEPTH: usize = 32;

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
const MI_UTF8: u32 = 16;
const MI_UTF16: u32 = 17;
const MI_UTF32: u32 = 18;

const MX_CELL: u8 = 1;
const MX_STRUCT: u8 = 2;
const MX_CHAR: u8 = 4;
const MX_SPARSE: u8 = 5;

/// A MAT-file that cannot be read, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum MatError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a MAT-file this reader understands.
    #[error("{path}: not a readable MAT-file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the byte offset where it was found.
        reason: String,
    },
}

/// One MATLAB value. Arrays are column-major, as MATLAB stores them.
#[derive(Debug, Clone, PartialEq)]
pub enum MatValue {
    /// A numeric or logical array, converted to f64.
    Numeric {
        /// Dimensions (at least two).
        dims: Vec<usize>,
        /// Column-major values.
        data: Vec<f64>,
    },
    /// A char array.
    Char {
        /// Dimensions.
        dims: Vec<usize>,
        /// The characters, column-major.
        text: String,
    },
    /// A struct array: `elems[i][f]` is field `fields[f]` of element `i`.
    Struct {
        /// Dimensions.
        dims: Vec<usize>,
        /// Field names.
        fields: Vec<String>,
        /// One row of field values per element, column-major.
        elems: Vec<Vec<MatValue>>,
    },
    /// A cell array.
    Cell {
        /// Dimensions.
        dims: Vec<usize>,
        /// Cells, column-major.
        elems: Vec<MatValue>,
    },
}

impl MatValue {
    /// Dimensions of the value.
    pub fn dims(&self) -> &[usize] {
        match self {
            MatValue::Numeric { dims, .. }
            | MatValue::Char { dims, .. }
            | MatValue::Struct { dims, .. }
            | MatValue::Cell { dims, .. } => dims,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.dims().iter().product()
    }

    /// Whether the value has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What kind of value this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            MatValue::Numeric { .. } => "numeric array",
            MatValue::Char { .. } => "char array",
            MatValue::Struct { .. } => "struct",
            MatValue::Cell { .. } => "cell array",
        }
    }

    /// Field `name` of struct element `index`, if this is a struct with that field.
    pub fn field(&self, index: usize, name: &str) -> Option<&MatValue> {
        match self {
            MatValue::Struct { fields, elems, .. } => {
                let f = fields.iter().position(|n| n == name)?;
                elems.get(index)?.get(f)
            }
            _ => None,
        }
    }

    /// The text of a char array.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MatValue::Char { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The values of a numeric array.
    pub fn as_numeric(&self) -> Option<&[f64]> {
        match self {
            MatValue::Numeric { data, .. } => Some(data),
            _ => None,
        }
    }

    /// A 2-D numeric array as `(height, width, row-major values)`.
    pub fn as_matrix(&self) -> Option<(usize, usize, Vec<f64>)> {
        match self {
            MatValue::Numeric { dims, data } if dims.len() == 2 => {
                let (h, w) = (dims[0], dims[1]);
                let mut out = vec![0.0; h * w];
                for c in 0..w {
                    for r in 0..h {
                        out[r * w + c] = data[c * h + r];
                    }
                }
                Some((h, w, out))
            }
            _ => None,
        }
    }
}

impl From<MatError> for super::DataError {
    fn from(e: MatError) -> Self {
        match e {
            MatError::Io { path, source } => super::DataError::Io { path, source },
            MatError::Format { path, reason } => super::DataError::Invalid {
                path,
                reason: format!("not a readable MAT-file: {reason}"),
            },
        }
    }
}

/// The largest MAT-file read (PASCAL-Context's and NYUD-v2's are a few MiB at most).
pub const MAX_MAT_BYTES: u64 = 1 << 30;

/// Reads every variable of a MAT-file (a regular file of at most [`MAX_MAT_BYTES`]).
///
/// # Errors
/// [`MatError::Io`] when the file cannot be read, [`MatError::Format`] when it is not a
/// level-5 MAT-file or holds a structure this reader does not handle.
pub fn read(path: &Path) -> Result<BTreeMap<String, MatValue>, MatError> {
    let bytes =
        vmt_registry::file::read_limited(path, MAX_MAT_BYTES).map_err(|e| MatError::Io {
            path: path.into(),
            source: e,
        })?;
    parse(&bytes).map_err(|reason| MatError::Format {
        path: path.into(),
        reason,
    })
}

/// Parses the bytes of a MAT-file; the error is a reason without the path.
pub fn parse(bytes: &[u8]) -> Result<BTreeMap<String, MatValue>, String> {
    if bytes.len() < 128 {
        return Err(format!(
            "{} bytes, shorter than the 128-byte header",
            bytes.len()
        ));
    }
    if bytes.starts_with(b"\x89HDF") || bytes.starts_with(b"MATLAB 7.3") {
        return Err("a -v7.3 (HDF5) MAT-file; save it with -v7".into());
    }
    let big = match &bytes[126..128] {
        b"IM" => false,
        b"MI" => true,
        other => return Err(format!("no endian mark at byte 126 (found {other:?})")),
    };
    let mut r = Reader {
        bytes,
        pos: 128,
        big,
    };
    let mut vars = BTreeMap::new();
    while r.pos < bytes.len() {
        // Trailing padding after the last element is allowed.
        if bytes[r.pos..].iter().all(|&b| b == 0) {
            break;
        }
        let at = r.pos;
        let (ty, n, body) = r.element()?;
        let (name, value) = match ty {
            MI_MATRIX => matrix(
                &mut Reader {
                    bytes: body,
                    pos: 0,
                    big,
                },
                0,
                at,
            )?,
            MI_COMPRESSED => {
                let inflated = inflate(body, at)?;
                let mut inner = Reader {
                    bytes: &inflated,
                    pos: 0,
                    big,
                };
                let (ty, _, body) = inner.element()?;
                if ty != MI_MATRIX {
                    return Err(format!(
                        "compressed element at byte {at} holds type {ty}, not a matrix"
                    ));
                }
                matrix(
                    &mut Reader {
                        bytes: body,
                        pos: 0,
                        big,
                    },
                    0,
                    at,
                )?
            }
            _ => {
                return Err(format!(
                    "top-level element of type {ty} ({n} bytes) at byte {at}"
                ))
            }
        };
        vars.insert(name, value);
    }
    Ok(vars)
}

fn inflate(body: &[u8], at: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(body)
        .take(MAX_INFLATED + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("compressed element at byte {at}: {e}"))?;
    if out.len() as u64 > MAX_INFLATED {
        return Err(format!(
            "compressed element at byte {at} inflates past {MAX_INFLATED} bytes"
        ));
    }
    Ok(out)
}

#[derive(Clone, Copy)]
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    big: bool,
}

impl<'a> Reader<'a> {
    fn u32_at(&self, at: usize) -> Result<u32, String> {
        let b: [u8; 4] = self
            .bytes
            .get(at..at + 4)
            .ok_or_else(|| format!("truncated at byte {at}"))?
            .try_into()
            .expect("4 bytes");
        Ok(if self.big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    /// The next data element: (type, byte count, data).
    fn element(&mut self) -> Result<(u32, usize, &'a [u8]), String> {
        let at = self.pos;
        let first = self.u32_at(at)?;
        if first >> 16 != 0 {
            // Small data element: type and count in one word, data in the next four.
            let (ty, n) = (first & 0xffff, (first >> 16) as usize);
            if n > 4 {
                return Err(format!("small element at byte {at} claims {n} bytes"));
            }
            let data = self
                .bytes
                .get(at + 4..at + 4 + n)
                .ok_or_else(|| format!("truncated small element at byte {at}"))?;
            self.pos = at + 8;
            return Ok((ty, n, data));
        }
        let n = self.u32_at(at + 4)? as usize;
        let start = at + 8;
        let end = start
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                format!(
                    "element at byte {at} claims {n} bytes, {} are left",
                    self.bytes.len().saturating_sub(start)
                )
            })?;
        // Compressed elements are not padded; the others are padded to 8 bytes.
        self.pos = if first == MI_COMPRESSED {
            end
        } else {
            (end + 7) & !7
        };
        Ok((first, n, &self.bytes[start..end]))
    }
}

/// Decodes the numbers of a numeric element to f64.
fn numbers(ty: u32, data: &[u8], big: bool, at: usize) -> Result<Vec<f64>, String> {
    macro_rules! conv {
        ($t:ty, $w:expr) => {{
            if data.len() % $w != 0 {
                return Err(format!(
                    "element at byte {at}: {} bytes is not a whole number of {}-byte values",
                    data.len(),
                    $w
                ));
            }
            data.chunks_exact($w)
                .map(|c| {
                    let b = c.try_into().expect("chunk width");
                    (if big {
                        <$t>::from_be_bytes(b)
                    } else {
                        <$t>::from_le_bytes(b)
                    }) as f64
                })
                .collect()
        }};
    }
    Ok(match ty {
        MI_INT8 => data.iter().map(|&b| b as i8 as f64).collect(),
        MI_UINT8 | MI_UTF8 => data.iter().map(|&b| b as f64).collect(),
        MI_INT16 => conv!(i16, 2),
        MI_UINT16 | MI_UTF16 => conv!(u16, 2),
        MI_INT32 => conv!(i32, 4),
        MI_UINT32 | MI_UTF32 => conv!(u32, 4),
        MI_SINGLE => conv!(f32, 4),
        MI_DOUBLE => conv!(f64, 8),
        MI_INT64 => conv!(i64, 8),
        MI_UINT64 => conv!(u64, 8),
        _ => return Err(format!("element at byte {at}: unknown data type {ty}")),
    })
}

/// The body of an `miMATRIX` element: (name, value).
fn matrix(r: &mut Reader, depth: usize, at: usize) -> Result<(String, MatValue), String> {
    if depth > MAX_DEPTH {
        return Err(format!("nesting deeper than {MAX_DEPTH} at byte {at}"));
    }
    if r.bytes.is_empty() {
        // An empty matrix element: MATLAB writes these for empty struct fields.
        return Ok((
            String::new(),
            MatValue::Numeric {
                dims: vec![0, 0],
                data: vec![],
            },
        ));
    }
    let big = r.big;
    let (ty, _, flags) = r.element()?;
    if ty != MI_UINT32 || flags.len() < 8 {
        return Err(format!("matrix at byte {at}: no array flags"));
    }
    let word = Reader {
        bytes: flags,
        pos: 0,
        big,
    }
    .u32_at(0)?;
    let class = (word & 0xff) as u8;
    let complex = word & 0x800 != 0;
    let (ty, _, dims_raw) = r.element()?;
    if ty != MI_INT32 {
        return Err(format!("matrix at byte {at}: dimensions are not int32"));
    }
    let dims: Vec<usize> = numbers(ty, dims_raw, big, at)?
        .into_iter()
        .map(|d| {
            if d < 0.0 {
                Err(format!("matrix at byte {at}: negative dimension {d}"))
            } else {
                Ok(d as usize)
            }
        })
        .collect::<Result<_, _>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("matrix at byte {at}: dimensions {dims:?} overflow"))?;
    let (_, _, name) = r.element()?;
    let name = String::from_utf8_lossy(name).into_owned();
    let value = match class {
        MX_CELL => {
            let mut elems = Vec::new();
            for _ in 0..count {
                elems.push(child(r, depth, at)?);
            }
            MatValue::Cell { dims, elems }
        }
        MX_STRUCT => struct_body(r, depth, at, dims, count)?,
        MX_CHAR => char_body(r, at, dims, count)?,
        MX_SPARSE => return Err(format!("sparse array at byte {at} is not supported")),
        6..=15 => {
            let (ty, _, data) = r.element()?;
            let values = numbers(ty, data, big, at)?;
            if values.len() != count {
                return Err(format!(
                    "numeric array at byte {at}: {} values for dimensions {dims:?}",
                    values.len()
                ));
            }
            if complex {
                return Err(format!("complex array at byte {at} is not supported"));
            }
            MatValue::Numeric { dims, data: values }
        }
        other => return Err(format!("matrix at byte {at}: unsupported class {other}")),
    };
    Ok((name, value))
}

/// The fields of an `mxSTRUCT_CLASS` matrix: field-name length, names, then one nested
/// matrix per field and element.
fn struct_body(
    r: &mut Reader,
    depth: usize,
    at: usize,
    dims: Vec<usize>,
    count: usize,
) -> Result<MatValue, String> {
    let big = r.big;
    let (_, _, len_raw) = r.element()?;
    let len = numbers(MI_INT32, len_raw, big, at)?
        .first()
        .copied()
        .unwrap_or(0.0) as usize;
    let (_, _, names) = r.element()?;
    if len == 0 || names.len() % len != 0 {
        return Err(format!(
            "struct at byte {at}: field names of {} bytes in slots of {len}",
            names.len()
        ));
    }
    let fields: Vec<String> = names
        .chunks(len)
        .map(|c| {
            let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
            String::from_utf8_lossy(&c[..end]).into_owned()
        })
        .collect();
    if fields.is_empty() && count > r.bytes.len() {
        return Err(format!(
            "struct at byte {at}: {count} elements without fields"
        ));
    }
    let mut elems = Vec::new();
    for _ in 0..count {
        let mut row = Vec::with_capacity(fields.len());
        for _ in 0..fields.len() {
            row.push(child(r, depth, at)?);
        }
        elems.push(row);
    }
    Ok(MatValue::Struct {
        dims,
        fields,
        elems,
    })
}

/// The characters of an `mxCHAR_CLASS` matrix.
fn char_body(
    r: &mut Reader,
    at: usize,
    dims: Vec<usize>,
    count: usize,
) -> Result<MatValue, String> {
    let big = r.big;
    let (ty, _, data) = r.element()?;
    let codes = numbers(ty, data, big, at)?;
    if codes.len() != count {
        return Err(format!(
            "char array at byte {at}: {} characters for dimensions {dims:?}",
            codes.len()
        ));
    }
    let text = if ty == MI_UTF8 {
        String::from_utf8_lossy(data).into_owned()
    } else {
        codes
            .iter()
            .map(|&c| char::from_u32(c as u32).unwrap_or('\u{fffd}'))
            .collect()
    };
    Ok(MatValue::Char { dims, text })
}

/// One nested `miMATRIX` (a cell or a struct field).
fn child(r: &mut Reader, depth: usize, parent: usize) -> Result<MatValue, String> {
    let at = r.pos;
    let (ty, _, body) = r.element()?;
    if ty != MI_MATRIX {
        return Err(format!(
            "element at byte {at} inside the array at byte {parent} is of type {ty}, not a matrix"
        ));
    }
    let mut inner = Reader {
        bytes: body,
        pos: 0,
        big: r.big,
    };
    Ok(matrix(&mut inner, depth + 1, at)?.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        let dir = std::env::var_os("VMT_FIXTURES")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"));
        std::fs::read(dir.join("mat").join(name)).expect("fixture")
    }

    /// The structure of a PASCAL-Part annotation as scipy writes it: see
    /// reference/make_dataset_replicas.py (`write_mat_fixtures`).
    fn check_parts(vars: &BTreeMap<String, MatValue>) {
        let anno = &vars["anno"];
        assert_eq!(anno.dims(), &[1, 1]);
        assert_eq!(
            anno.field(0, "imname").unwrap().as_str(),
            Some("2008_000001")
        );
        let objects = anno.field(0, "objects").unwrap();
        assert_eq!(objects.dims(), &[1, 2]);
        assert_eq!(objects.field(0, "class").unwrap().as_str(), Some("person"));
        assert_eq!(
            objects.field(0, "class_ind").unwrap().as_numeric(),
            Some(&[15.0][..])
        );
        let parts = objects.field(0, "parts").unwrap();
        assert_eq!(parts.dims(), &[1, 2]);
        assert_eq!(parts.field(1, "part_name").unwrap().as_str(), Some("llleg"));
        let (h, w, mask) = parts.field(0, "mask").unwrap().as_matrix().unwrap();
        assert_eq!((h, w), (5, 7));
        // head: rows 0..2, columns 0..3 (row-major after as_matrix).
        for r in 0..h {
            for c in 0..w {
                assert_eq!(
                    mask[r * w + c],
                    f64::from(u8::from(r < 2 && c < 3)),
                    "({r},{c})"
                );
            }
        }
        assert!(objects.field(1, "parts").unwrap().is_empty());
        let (_, _, dog) = objects.field(1, "mask").unwrap().as_matrix().unwrap();
        assert!(dog.iter().all(|&v| v == 1.0));
    }

    #[test]
    fn reads_scipy_structs_plain_and_compressed() {
        check_parts(&parse(&fixture("parts_plain.mat")).unwrap());
        check_parts(&parse(&fixture("parts_zlib.mat")).unwrap());
    }

    #[test]
    fn reads_a_uint16_label_map_column_major() {
        let vars = parse(&fixture("labelmap.mat")).unwrap();
        let (h, w, v) = vars["LabelMap"].as_matrix().unwrap();
        assert_eq!((h, w), (5, 7));
        // Written as np.arange(35).reshape(5, 7): row-major values 0..35.
        assert_eq!(v, (0..35).map(f64::from).collect::<Vec<_>>());
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error_not_a_panic() {
        for name in ["parts_plain.mat", "parts_zlib.mat", "labelmap.mat"] {
            let bytes = fixture(name);
            for n in 0..bytes.len() {
                let _ = parse(&bytes[..n]);
            }
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0xa5;
                let _ = parse(&b);
            }
            assert!(parse(&bytes[..100]).unwrap_err().contains("header"));
        }
    }

    #[test]
    fn refuses_v73_and_a_missing_endian_mark() {
        let mut b = fixture("labelmap.mat");
        b[126] = b'X';
        assert!(parse(&b).unwrap_err().contains("endian"));
        let mut hdf = vec![0u8; 256];
        hdf[..4].copy_from_slice(b"\x89HDF");
        assert!(parse(&hdf).unwrap_err().contains("7.3"));
    }
}
