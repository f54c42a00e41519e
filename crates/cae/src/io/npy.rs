//! NumPy `.npy` files (format version 1.0) for latent codes and labels.
//!
//! Hand-written because cae needs only little-endian 2-D float32 and 1-D int64 arrays in C order,
//! which take a few lines, where the crates for the format pull in `ndarray` or a zip stack.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::Precision;

const MAGIC: &[u8] = b"\x93NUMPY";

/// Writes a C-order float32 array of `shape` (its product must equal `data.len()`).
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    anyhow::ensure!(
        shape.iter().product::<usize>() == data.len(),
        "{}: shape {shape:?} does not hold {} values",
        path.display(),
        data.len()
    );
    write_array(path, "<f4", shape, |w| {
        for v in data {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    })
}

/// Writes a 1-D int64 array.
pub fn write_i64(path: &Path, data: &[i64]) -> Result<()> {
    write_array(path, "<i8", &[data.len()], |w| {
        for v in data {
            w.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    })
}

fn write_array(
    path: &Path,
    descr: &str,
    shape: &[usize],
    body: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    let header = header_text(descr, shape);
    crate::io::atomic::write_with(path, |w| {
        w.write_all(MAGIC)?;
        w.write_all(&[1, 0])?;
        w.write_all(&(header.len() as u16).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        body(w)
    })
}

/// The header dict, padded with spaces and a newline so the data starts 64-byte aligned.
fn header_text(descr: &str, shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    header
}

/// Reads a little-endian float array in C order as float32: its shape and values. float32
/// (`<f4`) is read as it is; float64 (`<f8`, NumPy's default, as `np.save` writes codes it
/// computed) and float16 (`<f2`) are converted, and a float64 beyond float32's range is refused.
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_f32(&bytes)
        .with_context(|| format!("{} is not a float .npy array cae reads", path.display()))
}

fn parse_f32(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>)> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        bail!("missing the NumPy magic bytes");
    }
    let (header_len, header_start) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => bail!("unsupported .npy format version {v}"),
    };
    let data_start = header_start + header_len;
    let header = std::str::from_utf8(
        bytes
            .get(header_start..data_start)
            .context("truncated header")?,
    )
    .context("header is not text")?;
    let precision = if header.contains("'descr': '<f4'") {
        Precision::F32
    } else if header.contains("'descr': '<f8'") {
        Precision::F64
    } else if header.contains("'descr': '<f2'") {
        Precision::F16
    } else {
        bail!(
            "dtype must be little-endian float32, float64 or float16 ('<f4', '<f8', '<f2'); \
             header: {}",
            header.trim()
        );
    };
    if header.contains("'fortran_order': True") {
        bail!("Fortran-ordered arrays are not supported; save with np.ascontiguousarray");
    }
    let shape = parse_shape(header)?;
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .context("shape overflows")?;
    let width = precision.width();
    let data = &bytes[data_start..];
    if Some(data.len()) != count.checked_mul(width) {
        bail!(
            "shape {shape:?} needs {} bytes of data but the file has {}",
            count.saturating_mul(width),
            data.len()
        );
    }
    let values = precision.to_f32(data).map_err(|(i, value)| {
        anyhow::anyhow!("value {i} is {value:e}, which float32 cannot hold")
    })?;
    Ok((shape, values))
}

fn parse_shape(header: &str) -> Result<Vec<usize>> {
    let start = header.find("'shape':").context("header has no shape")? + "'shape':".len();
    let open = header[start..].find('(').context("malformed shape")? + start + 1;
    let close = header[open..].find(')').context("malformed shape")? + open;
    header[open..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .with_context(|| format!("bad dimension `{s}` in the shape"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_array_round_trips_with_aligned_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.npy");
        let data: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        write_f32(&path, &[2, 3], &data).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!((bytes.len() - 24) % 64, 0, "data starts 64-byte aligned");
        assert_eq!(read_f32(&path).unwrap(), (vec![2, 3], data));
    }

    #[test]
    fn wrong_dtype_and_truncation_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let labels = dir.path().join("l.npy");
        write_i64(&labels, &[1, 2, 3]).unwrap();
        let err = format!("{:#}", read_f32(&labels).unwrap_err());
        assert!(err.contains("l.npy") && err.contains("<f4"), "{err}");
        let path = dir.path().join("a.npy");
        write_f32(&path, &[2, 2], &[0.0; 4]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = format!("{:#}", read_f32(&path).unwrap_err());
        assert!(err.contains("needs 16 bytes"), "{err}");
    }
}
