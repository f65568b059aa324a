//! Reading and writing the 2-D little-endian `.npy` files the harness shares with faiss.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// A row-major `rows × cols` matrix of f32.
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

/// Parses the header of a version 1/2/3 `.npy` file: (shape, header length in bytes).
fn header(bytes: &[u8], descr: &str) -> Result<(Vec<usize>, usize)> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("not a .npy file");
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                bail!("truncated .npy header");
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => bail!("unsupported .npy version {v}"),
    };
    let text = std::str::from_utf8(bytes.get(start..start + len).context("truncated .npy header")?)?;
    if !text.contains(&format!("'descr': '{descr}'")) {
        bail!("expected elements of type {descr}, header is {text}");
    }
    if text.contains("'fortran_order': True") {
        bail!("expected C order");
    }
    let shape_text = text
        .split("'shape':")
        .nth(1)
        .and_then(|s| s.split('(').nth(1))
        .and_then(|s| s.split(')').next())
        .context("no shape in .npy header")?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().context("bad shape"))
        .collect::<Result<Vec<_>>>()?;
    Ok((shape, start + len))
}

pub fn read(path: &Path) -> Result<Matrix> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut head = vec![0u8; 4096];
    let n = file.read(&mut head)?;
    let (shape, offset) = header(&head[..n], "<f4").with_context(|| path.display().to_string())?;
    let (rows, cols) = match shape.as_slice() {
        [r, c] => (*r, *c),
        other => bail!("{}: expected a 2-D array, shape is {other:?}", path.display()),
    };
    let mut data = vec![0f32; rows * cols];
    let mut reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
    std::io::copy(&mut (&mut reader).take(offset as u64), &mut std::io::sink())?;
    // SAFETY: f32 has no invalid bit patterns; the slice covers exactly `data`.
    let bytes = unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr() as *mut u8, data.len() * 4) };
    reader.read_exact(bytes).with_context(|| format!("{}: truncated data", path.display()))?;
    if cfg!(target_endian = "big") {
        for x in &mut data {
            *x = f32::from_bits(x.to_bits().swap_bytes());
        }
    }
    Ok(Matrix { rows, cols, data })
}

/// A 2-D array of little-endian i64 (the truth files), row-major.
pub fn read_i64(path: &Path) -> Result<Vec<i64>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (shape, offset) = header(&bytes, "<i8").with_context(|| path.display().to_string())?;
    let count: usize = shape.iter().product();
    let data = bytes.get(offset..offset + count * 8).with_context(|| format!("{}: truncated data", path.display()))?;
    Ok(data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect())
}

/// Writes a C-order 2-D array of `descr` (`<f4`, `<i8`) elements, `bytes` little-endian.
fn write_raw(path: &Path, descr: &str, rows: usize, cols: usize, bytes: &[u8]) -> Result<()> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': ({rows}, {cols}), }}").into_bytes();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?);
    file.write_all(b"\x93NUMPY\x01\x00")?;
    file.write_all(&(header.len() as u16).to_le_bytes())?;
    file.write_all(&header)?;
    file.write_all(bytes)?;
    file.flush()?;
    Ok(())
}

pub fn write_f32(path: &Path, rows: usize, cols: usize, data: &[f32]) -> Result<()> {
    assert_eq!(data.len(), rows * cols);
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_raw(path, "<f4", rows, cols, &bytes)
}

pub fn write_i64(path: &Path, rows: usize, cols: usize, data: &[i64]) -> Result<()> {
    assert_eq!(data.len(), rows * cols);
    let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
    write_raw(path, "<i8", rows, cols, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_version_1_file() {
        let dir = std::env::temp_dir().join(format!("capmatch-bench-npy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.npy");
        let mut header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }".to_vec();
        while !(10 + header.len() + 1).is_multiple_of(64) {
            header.push(b' ');
        }
        header.push(b'\n');
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend((header.len() as u16).to_le_bytes());
        bytes.extend(header);
        for v in [1f32, 2., 3., 4., 5., 6.] {
            bytes.extend(v.to_le_bytes());
        }
        std::fs::write(&path, bytes).unwrap();
        let m = read(&path).unwrap();
        assert_eq!((m.rows, m.cols), (2, 3));
        assert_eq!(m.row(1), &[4., 5., 6.]);
        let again = dir.join("again.npy");
        write_f32(&again, 2, 3, &m.data).unwrap();
        assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&path).unwrap(), "written as numpy writes it");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
