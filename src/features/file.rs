//! The features file `graft extract` writes: safetensors with one `features` tensor
//! `[N, D]` (f32) and metadata naming the backbone, its weights and each row's image.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};

use crate::backbone::BackboneId;
use crate::error::{Error, Result};

pub const FORMAT: &str = "graft-features/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeaturesFile {
    pub backbone: BackboneId,
    pub weights_sha256: String,
    /// Row `i` of `features` belongs to `paths[i]`, relative to the extracted folder.
    pub paths: Vec<String>,
    pub dim: usize,
    /// `[paths.len(), dim]`, row-major.
    pub features: Vec<f32>,
}

impl FeaturesFile {
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes: Vec<u8> = self.features.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![self.paths.len(), self.dim], &bytes)
            .map_err(|e| Error::Invalid(format!("features tensor: {e}")))?;
        let metadata = HashMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("backbone".to_string(), self.backbone.name().to_string()),
            ("weights_sha256".to_string(), self.weights_sha256.clone()),
            (
                "paths".to_string(),
                serde_json::to_string(&self.paths).map_err(|e| Error::Invalid(e.to_string()))?,
            ),
        ]);
        let data = safetensors::serialize([("features", view)], &Some(metadata))
            .map_err(|e| Error::Invalid(format!("cannot serialize features: {e}")))?;
        crate::fsx::write_atomic(path, &data)
    }

    pub fn load(path: &Path) -> Result<FeaturesFile> {
        let bad = |reason: String| {
            Error::invalid_input(
                path,
                format!("{reason}; is this a file written by `graft extract`?"),
            )
        };
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!("not a {FORMAT} file")));
        }
        let tensors =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let view = tensors.tensor("features").map_err(|e| bad(e.to_string()))?;
        let shape = view.shape().to_vec();
        if shape.len() != 2 || view.dtype() != Dtype::F32 {
            return Err(bad(format!("features tensor has shape {shape:?}")));
        }
        let features = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let field = |k: &str| {
            meta.get(k)
                .cloned()
                .ok_or_else(|| bad(format!("metadata lacks '{k}'")))
        };
        let paths: Vec<String> =
            serde_json::from_str(&field("paths")?).map_err(|e| bad(e.to_string()))?;
        if paths.len() != shape[0] {
            return Err(bad("row count and path count differ".into()));
        }
        Ok(FeaturesFile {
            backbone: field("backbone")?.parse()?,
            weights_sha256: field("weights_sha256")?,
            paths,
            dim: shape[1],
            features,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let file = FeaturesFile {
            backbone: BackboneId::EfficientNetLite0,
            weights_sha256: "ab".into(),
            paths: vec!["a.jpg".into(), "b/c.png".into()],
            dim: 3,
            features: vec![1.0, 2.0, 3.0, -4.0, 5.5, 6.25],
        };
        let p = dir.path().join("f.safetensors");
        file.save(&p).unwrap();
        assert_eq!(FeaturesFile::load(&p).unwrap(), file);
        std::fs::write(&p, b"junk").unwrap();
        let err = FeaturesFile::load(&p).unwrap_err().to_string();
        assert!(err.contains("f.safetensors"), "{err}");
    }
}
