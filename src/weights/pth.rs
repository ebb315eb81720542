//! Reading PyTorch checkpoints (what `torch.save(state_dict, path)` writes) into named
//! `f32` tensors, with burn's `pytorch-reader`. It reads both of torch's formats (the zip
//! format, and the legacy one the EfficientNet-Lite checkpoints use), gathers strided and
//! offset views row-major, never executes a pickle, and refuses truncated or corrupted
//! files with an error. It reads a checkpoint that holds tensors from a file only (the
//! tensor bytes are read from it lazily), so a checkpoint held in memory, such as a wheel
//! member, goes through a temporary file.

use std::io::Write;
use std::path::Path;

use pytorch_reader::{DType, PytorchReader};

use crate::error::{Error, Result};
use crate::weights::{TensorData, TensorMap};

/// Reads the checkpoint at `path`: its floating-point tensors as `f32`, integer
/// bookkeeping such as batch norm's `num_batches_tracked` dropped.
pub fn read_pth(path: &Path) -> Result<TensorMap> {
    read_file(path, path)
}

/// Reads a checkpoint held in memory, as [`read_pth`]; `origin` names it in errors (a
/// file, or a wheel member).
pub fn read_pth_bytes(origin: &Path, bytes: &[u8]) -> Result<TensorMap> {
    let mut file = tempfile::Builder::new()
        .prefix(".graft-checkpoint-")
        .suffix(".pth")
        .tempfile()
        .map_err(|e| Error::io(std::env::temp_dir(), e))?;
    file.write_all(bytes)
        .and_then(|()| file.flush())
        .map_err(|e| Error::io(file.path(), e))?;
    read_file(file.path(), origin)
}

fn read_file(path: &Path, origin: &Path) -> Result<TensorMap> {
    let refused = |reason: String| Error::Weights {
        path: origin.to_path_buf(),
        reason,
    };
    let reader = PytorchReader::new(path).map_err(|e| refused(e.to_string()))?;
    let mut tensors = TensorMap::new();
    for (name, tensor) in reader.into_tensors() {
        let convert: fn(&[u8]) -> f32 = match tensor.dtype() {
            DType::F32 => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            DType::F64 => {
                |b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }
            DType::F16 => |b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
            DType::BF16 => |b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16),
            _ => continue,
        };
        let size = tensor.dtype().size();
        let bytes = tensor.read().map_err(|e| refused(e.to_string()))?;
        let data = bytes.chunks_exact(size).map(convert).collect();
        let shape = tensor.shape().to_vec();
        tensors.insert(name, TensorData { shape, data });
    }
    Ok(tensors)
}

/// IEEE half to single precision, exact (every half is representable as a single).
fn f16_to_f32(bits: u16) -> f32 {
    let negative = bits & 0x8000 != 0;
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);
    let magnitude = match exponent {
        0 => mantissa as f32 * (1.0 / 16_777_216.0), // subnormal: mantissa * 2^-24
        0x1f => f32::from_bits(0x7f80_0000 | (mantissa << 13)),
        _ => f32::from_bits(((exponent + 112) << 23) | (mantissa << 13)),
    };
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/pth")
            .join(name)
    }

    fn floats(tensors: &TensorMap, name: &str) -> (Vec<usize>, Vec<f32>) {
        let tensor = &tensors[name];
        (tensor.shape.clone(), tensor.data.clone())
    }

    /// The values `make_fixtures.py` prints; both formats must give exactly these.
    fn check_fixture(tensors: &TensorMap) {
        assert_eq!(tensors.len(), 9, "{:?}", tensors.keys().collect::<Vec<_>>());
        assert!(
            !tensors.contains_key("bn.num_batches_tracked"),
            "integer bookkeeping is dropped"
        );
        assert_eq!(
            floats(tensors, "conv.weight"),
            (vec![2, 3], vec![-1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
        );
        assert_eq!(
            floats(tensors, "transposed"),
            (vec![3, 2], vec![-1.0, 0.5, -0.5, 1.0, 0.0, 1.5])
        );
        assert_eq!(
            floats(tensors, "offset"),
            (vec![2, 2], vec![4.0, 5.0, 6.0, 7.0])
        );
        assert_eq!(
            floats(tensors, "strided"),
            (vec![4], vec![0.0, 3.0, 6.0, 9.0])
        );
        assert_eq!(
            floats(tensors, "half"),
            (
                vec![5],
                vec![1.5, -2.0, 65504.0, 2f32.powi(-14), 2f32.powi(-24)]
            )
        );
        assert_eq!(floats(tensors, "bf16"), (vec![2], vec![1.0, -3.5]));
        assert_eq!(
            floats(tensors, "double"),
            (vec![2, 1], vec![0.25, 1e-3_f64 as f32])
        );
        assert_eq!(floats(tensors, "scalar"), (vec![], vec![3.25]));
        assert_eq!(floats(tensors, "empty"), (vec![0, 4], vec![]));
    }

    #[test]
    fn reads_the_zip_format_fixture() {
        check_fixture(&read_pth(&fixture("tiny_zip.pth")).unwrap());
    }

    #[test]
    fn reads_the_legacy_format_fixture() {
        check_fixture(&read_pth(&fixture("tiny_legacy.pth")).unwrap());
    }

    #[test]
    fn reads_a_checkpoint_held_in_memory() {
        let bytes = std::fs::read(fixture("tiny_legacy.pth")).unwrap();
        check_fixture(&read_pth_bytes(Path::new("wheel.whl/model.pth"), &bytes).unwrap());
    }

    #[test]
    fn reads_protocol_4_pickles_of_parameters() {
        let tensors = read_pth(&fixture("tiny_zip_protocol4.pth")).unwrap();
        assert_eq!(tensors.len(), 1, "the int `step` is not a tensor");
        assert_eq!(
            floats(&tensors, "linear.weight"),
            (vec![3, 2], vec![-1.0, 0.5, -0.5, 1.0, 0.0, 1.5])
        );
    }

    /// Every prefix of the fixtures, and many single-byte corruptions of them, is either
    /// read or refused with an error naming the file: never a panic.
    #[test]
    fn truncated_or_corrupted_files_are_errors_not_panics() {
        let origin = Path::new("model.pth");
        for name in ["tiny_zip.pth", "tiny_legacy.pth", "tiny_zip_protocol4.pth"] {
            let bytes = std::fs::read(fixture(name)).unwrap();
            for len in 0..bytes.len() {
                let err = read_pth_bytes(origin, &bytes[..len]).unwrap_err();
                assert!(
                    matches!(&err, Error::Weights { path, .. } if path == origin),
                    "{name}[..{len}]: {err}"
                );
            }
            for at in 0..bytes.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut corrupt = bytes.clone();
                    corrupt[at] ^= flip;
                    if let Err(err) = read_pth_bytes(origin, &corrupt) {
                        assert!(
                            matches!(&err, Error::Weights { path, .. } if path == origin),
                            "{name}: {err}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let err = read_pth_bytes(Path::new("x.pth"), b"hello world").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("x.pth") && text.contains("not a PyTorch checkpoint"),
            "{text}"
        );
    }

    #[test]
    fn half_precision_conversion_is_exact() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    }
}
