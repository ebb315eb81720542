//! retrain.py's training-time distortions (`--flip_left_right`, `--random_crop`,
//! `--random_scale`, `--random_brightness`) and the deterministic test-time views.
//!
//! A [`View`] says what the network sees of an image: a square window inside the
//! backbone's preprocessing crop (as fractions of that crop's side), an optional mirror
//! image, and a brightness factor. The undistorted input is [`View::ORIGINAL`]: window
//! `(0, 0, 1)`, no flip, factor 1, which prepares exactly the pixels [`preprocess`] does.
//!
//! retrain.py's `add_input_distortions`, step by step, and what graft does with it:
//!
//! 1. `scale = (1 + random_crop/100) * U[1, 1 + random_scale/100)`: the crop margin and
//!    the random scale combine into one factor.
//! 2. The image is resized to `int(scale * size)` pixels a side (float32 product,
//!    truncated), and a `size x size` window is cut at offsets drawn uniformly from
//!    `0 ..= int(scale * size) - size` (`tf.random_crop`).
//! 3. With `--flip_left_right`, the window is mirrored with probability 1/2.
//! 4. Every pixel value is multiplied by `U[1 - random_brightness/100, 1 + random_brightness/100)`
//!    (not clipped), then normalised with the backbone's mean and std.
//!
//! Beyond retrain.py, colour jitter as torchvision's `ColorJitter` and PIL's `ImageEnhance`
//! define it (`--random-contrast`, `--random-saturation`, factors drawn the same way as the
//! brightness one): contrast blends every value with the window's mean grey, saturation
//! with the pixel's own grey (ITU-R 601 luma, as PIL's `L`), in that order after the
//! brightness, unclipped like it. Views drawn without them draw exactly the numbers they
//! drew before, so their cache entries stay valid.
//!
//! graft draws the same numbers with the same distributions. Two differences, both
//! deliberate: the distortion applies to graft's undistorted view (the backbone's centre
//! crop, the view every cached feature and every prediction uses) instead of the whole photo
//! squashed to a square; and resize-then-crop is done as one resize of the matching window
//! of the source (same geometry, one resampling instead of two).

use ::image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::preprocess::{center_crop_box, normalize_scaled_into, resize_box};
use crate::backbone::Preprocess;
use crate::error::{Error, Result};

/// What the network sees of one image (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct View {
    /// Window origin and side, as fractions of the preprocessing crop's side.
    pub left: f64,
    pub top: f64,
    pub side: f64,
    /// Mirror left to right.
    pub flip: bool,
    /// Factor on the 0-255 pixel values before normalisation.
    pub brightness: f32,
    /// Colour jitter after the brightness: 1 leaves the values as they are.
    pub contrast: f32,
    pub saturation: f32,
}

impl View {
    /// The undistorted input.
    pub const ORIGINAL: View = View {
        left: 0.0,
        top: 0.0,
        side: 1.0,
        flip: false,
        brightness: 1.0,
        contrast: 1.0,
        saturation: 1.0,
    };

    /// How many test-time views [`View::test_time`] defines.
    pub const TEST_TIME_VIEWS: usize = 10;

    /// Side of the corner crops among the test-time views, as a fraction of the
    /// preprocessing crop.
    const CORNER_SIDE: f64 = 0.9;

    /// Test-time view `k` (0-based, below [`View::TEST_TIME_VIEWS`]): the original, its
    /// mirror image, then the four corner crops (top-left, top-right, bottom-left,
    /// bottom-right, 90% of the side) each followed by its mirror image. View 0 is
    /// [`View::ORIGINAL`], so `--tta 1` is plain prediction.
    pub fn test_time(k: usize) -> View {
        let flip = k % 2 == 1;
        let margin = 1.0 - Self::CORNER_SIDE;
        let (left, top, side) = match k / 2 {
            0 => (0.0, 0.0, 1.0),
            1 => (0.0, 0.0, Self::CORNER_SIDE),
            2 => (margin, 0.0, Self::CORNER_SIDE),
            3 => (0.0, margin, Self::CORNER_SIDE),
            _ => (margin, margin, Self::CORNER_SIDE),
        };
        View {
            left,
            top,
            side,
            flip,
            brightness: 1.0,
            contrast: 1.0,
            saturation: 1.0,
        }
    }

    /// The feature-cache tag of test-time view `k`; view 0 shares the original's entry.
    pub fn test_time_tag(k: usize) -> String {
        if k == 0 {
            String::new()
        } else {
            format!("tta/1 k={k}")
        }
    }

    /// The window in source pixels `(left, top, side)` for an image of
    /// `width x height` and a preprocessing crop of `crop_fraction`.
    pub fn window(&self, width: u32, height: u32, crop_fraction: f64) -> (f64, f64, f64) {
        let (left, top, side) = center_crop_box(width, height, crop_fraction);
        (
            left + self.left * side,
            top + self.top * side,
            self.side * side,
        )
    }
}

/// The distortion flags of `graft train`, in retrain.py's units (percent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Distortions {
    pub flip_left_right: bool,
    pub random_crop: f32,
    pub random_scale: f32,
    pub random_brightness: f32,
    /// Colour jitter (percent): not in retrain.py, so absent from older manifests.
    #[serde(default)]
    pub random_contrast: f32,
    #[serde(default)]
    pub random_saturation: f32,
}

impl Distortions {
    /// True when every distortion is off: training uses the cached originals only.
    pub fn is_none(&self) -> bool {
        !self.flip_left_right
            && self.random_crop == 0.0
            && self.random_scale == 0.0
            && self.random_brightness == 0.0
            && self.random_contrast == 0.0
            && self.random_saturation == 0.0
    }

    /// Refuses percentages retrain.py's arithmetic cannot use.
    pub fn check(&self) -> Result<()> {
        for (flag, value, max) in [
            ("--random-crop", self.random_crop, 1000.0),
            ("--random-scale", self.random_scale, 1000.0),
            // Above 100 the factor could go negative.
            ("--random-brightness", self.random_brightness, 100.0),
            ("--random-contrast", self.random_contrast, 100.0),
            ("--random-saturation", self.random_saturation, 100.0),
        ] {
            if !(0.0..=max).contains(&value) {
                return Err(Error::Invalid(format!(
                    "{flag} {value}: give a percentage from 0 to {max}"
                )));
            }
        }
        Ok(())
    }

    /// Identifies the parameters in cache keys: a change of any flag is a different variant.
    pub fn tag(&self) -> String {
        let mut tag = format!(
            "distort/1 flip={} crop={} scale={} brightness={}",
            u8::from(self.flip_left_right),
            self.random_crop,
            self.random_scale,
            self.random_brightness
        );
        // Only when used: the tags (and cache entries) of views without them stay as
        // they were.
        if self.random_contrast > 0.0 || self.random_saturation > 0.0 {
            tag += &format!(
                " contrast={} saturation={}",
                self.random_contrast, self.random_saturation
            );
        }
        tag
    }

    /// The cache tag of variant `k` of an image.
    pub fn variant_tag(&self, k: usize) -> String {
        format!("{} k={k}", self.tag())
    }

    /// One random view for a network input of `size x size`, as retrain.py draws it.
    pub fn draw(&self, size: u32, rng: &mut impl Rng) -> View {
        let margin_scale = 1.0 + self.random_crop / 100.0;
        let resize_scale = 1.0 + self.random_scale / 100.0;
        let random_scale = if resize_scale > 1.0 {
            rng.gen_range(1.0..resize_scale)
        } else {
            1.0
        };
        // retrain.py computes the resized side in float32 and casts it to int32 (truncation).
        let precrop = ((margin_scale * random_scale * size as f32) as u32).max(size);
        let slack = precrop - size;
        let left = rng.gen_range(0..=slack);
        let top = rng.gen_range(0..=slack);
        let flip = self.flip_left_right && rng.gen_bool(0.5);
        let mut factor = |percent: f32| {
            let b = percent / 100.0;
            if b > 0.0 {
                rng.gen_range(1.0 - b..1.0 + b)
            } else {
                1.0
            }
        };
        let brightness = factor(self.random_brightness);
        let contrast = factor(self.random_contrast);
        let saturation = factor(self.random_saturation);
        let precrop = f64::from(precrop);
        View {
            left: f64::from(left) / precrop,
            top: f64::from(top) / precrop,
            side: f64::from(size) / precrop,
            flip,
            brightness,
            contrast,
            saturation,
        }
    }

    /// Variant `k` of the image whose content hashes to `image_sha256`: the same image,
    /// parameters and `k` always give the same view, on any machine and in any order.
    pub fn variant(&self, size: u32, image_sha256: &[u8; 32], k: usize) -> View {
        let mut h = Sha256::new();
        h.update(b"graft-variant/1");
        h.update(image_sha256);
        h.update((k as u64).to_le_bytes());
        let seed: [u8; 32] = h.finalize().into();
        self.draw(size, &mut ChaCha8Rng::from_seed(seed))
    }
}

/// The network input `[3, size, size]` for `view` of `rgb`.
pub fn prepare(rgb: &RgbImage, p: &Preprocess, view: &View) -> Result<Vec<f32>> {
    let window = view.window(rgb.width(), rgb.height(), p.crop_fraction);
    let mut sized = resize_box(rgb, p, window)?;
    if view.flip {
        ::image::imageops::flip_horizontal_in_place(&mut sized);
    }
    let mut out = vec![0f32; 3 * (p.size * p.size) as usize];
    if view.contrast == 1.0 && view.saturation == 1.0 {
        normalize_scaled_into(&sized, p, view.brightness, &mut out);
    } else {
        jitter_into(&sized, p, view, &mut out);
    }
    Ok(out)
}

/// ITU-R 601 luma, the weights of PIL's `convert("L")`.
fn grey(rgb: [f32; 3]) -> f32 {
    0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
}

/// Brightness, contrast, saturation (see the module doc), then the backbone's
/// normalisation, into `out` `[3, H, W]`.
fn jitter_into(sized: &RgbImage, p: &Preprocess, view: &View, out: &mut [f32]) {
    let plane = (sized.width() * sized.height()) as usize;
    let scale = p.std.map(|s| 1.0 / s);
    let bright = |px: &::image::Rgb<u8>| px.0.map(|v| f32::from(v) * view.brightness);
    let mean_grey = sized
        .pixels()
        .map(|px| f64::from(grey(bright(px))))
        .sum::<f64>()
        / plane.max(1) as f64;
    let mean_grey = mean_grey as f32;
    for (i, px) in sized.pixels().enumerate() {
        let contrasted = bright(px).map(|v| mean_grey + view.contrast * (v - mean_grey));
        let own_grey = grey(contrasted);
        for c in 0..3 {
            let v = own_grey + view.saturation * (contrasted[c] - own_grey);
            out[c * plane + i] = (v - p.mean[c]) * scale[c];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::BackboneId;
    use crate::image::preprocess::preprocess;
    use proptest::prelude::*;

    fn photo(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            ::image::Rgb([
                (x * 7 % 256) as u8,
                (y * 5 % 256) as u8,
                ((x + y) % 256) as u8,
            ])
        })
    }

    const ALL: Distortions = Distortions {
        flip_left_right: true,
        random_crop: 10.0,
        random_scale: 10.0,
        random_brightness: 10.0,
        random_contrast: 0.0,
        random_saturation: 0.0,
    };

    #[test]
    fn zero_distortion_returns_the_original_pixels() {
        let p = BackboneId::EfficientNetLite0.spec().preprocess;
        let rgb = photo(317, 251);
        let none = Distortions::default();
        assert!(none.is_none());
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..5 {
            let view = none.draw(p.size, &mut rng);
            assert_eq!(view, View::ORIGINAL);
            assert_eq!(
                prepare(&rgb, &p, &view).unwrap(),
                preprocess(&rgb, &p).unwrap()
            );
        }
        assert_eq!(none.variant(p.size, &[9; 32], 4), View::ORIGINAL);
        assert_eq!(
            prepare(&rgb, &p, &View::test_time(0)).unwrap(),
            preprocess(&rgb, &p).unwrap()
        );
    }

    #[test]
    fn colour_jitter_leaves_the_other_draws_and_the_tag_as_they_were() {
        let jittered = Distortions {
            random_contrast: 30.0,
            random_saturation: 30.0,
            ..ALL
        };
        // The tag of views without jitter is the one their cache entries were stored under.
        assert_eq!(ALL.tag(), "distort/1 flip=1 crop=10 scale=10 brightness=10");
        assert_ne!(jittered.tag(), ALL.tag());
        let mut contrasts = Vec::new();
        for k in 0..20 {
            let (plain, colour) = (
                ALL.variant(260, &[5; 32], k),
                jittered.variant(260, &[5; 32], k),
            );
            assert_eq!((plain.contrast, plain.saturation), (1.0, 1.0));
            assert_eq!(
                View {
                    contrast: 1.0,
                    saturation: 1.0,
                    ..colour
                },
                plain
            );
            assert!(
                (0.7..1.3).contains(&colour.contrast) && (0.7..1.3).contains(&colour.saturation)
            );
            contrasts.push(colour.contrast);
        }
        assert!(contrasts.iter().any(|&c| c < 0.9) && contrasts.iter().any(|&c| c > 1.1));
    }

    #[test]
    fn colour_jitter_blends_with_the_mean_grey_and_each_pixels_grey() {
        let p = BackboneId::EfficientNetLite2.spec().preprocess;
        let rgb = photo(300, 400);
        let plain = prepare(&rgb, &p, &View::ORIGINAL).unwrap();
        let plane = (p.size * p.size) as usize;
        // Back to 0-255 values, per channel.
        let values = |out: &[f32], i: usize| -> [f32; 3] {
            [0, 1, 2].map(|c| out[c * plane + i] * p.std[c] + p.mean[c])
        };
        let mut identity = vec![0f32; 3 * plane];
        let sized = resize_box(&rgb, &p, View::ORIGINAL.window(300, 400, p.crop_fraction)).unwrap();
        jitter_into(&sized, &p, &View::ORIGINAL, &mut identity);
        for (a, b) in identity.iter().zip(&plain) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let grey_image = prepare(
            &rgb,
            &p,
            &View {
                saturation: 0.0,
                ..View::ORIGINAL
            },
        )
        .unwrap();
        let flat = prepare(
            &rgb,
            &p,
            &View {
                contrast: 0.0,
                ..View::ORIGINAL
            },
        )
        .unwrap();
        let double = prepare(
            &rgb,
            &p,
            &View {
                contrast: 2.0,
                ..View::ORIGINAL
            },
        )
        .unwrap();
        let mean_grey = (0..plane).map(|i| grey(values(&plain, i))).sum::<f32>() / plane as f32;
        for i in [0, 777, plane - 1] {
            let [r, g, b] = values(&grey_image, i);
            let own = grey(values(&plain, i));
            for v in [r, g, b] {
                assert!((v - own).abs() < 1e-3, "{v} vs {own}");
            }
            for v in values(&flat, i) {
                assert!((v - mean_grey).abs() < 1e-2, "{v} vs {mean_grey}");
            }
            let (twice, before) = (values(&double, i), values(&plain, i));
            for c in 0..3 {
                let expected = mean_grey + 2.0 * (before[c] - mean_grey);
                assert!(
                    (twice[c] - expected).abs() < 1e-2,
                    "{} vs {expected}",
                    twice[c]
                );
            }
        }
    }

    #[test]
    fn same_image_and_index_give_the_same_variant() {
        let a = ALL.variant(260, &[1; 32], 3);
        assert_eq!(a, ALL.variant(260, &[1; 32], 3));
        assert_ne!(a, ALL.variant(260, &[1; 32], 4));
        assert_ne!(a, ALL.variant(260, &[2; 32], 3));
        let p = BackboneId::EfficientNetLite2.spec().preprocess;
        let rgb = photo(300, 400);
        assert_eq!(
            prepare(&rgb, &p, &a).unwrap(),
            prepare(&rgb, &p, &a).unwrap()
        );
    }

    #[test]
    fn draws_follow_retrain_py_ranges() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let views: Vec<View> = (0..2000).map(|_| ALL.draw(224, &mut rng)).collect();
        let flips = views.iter().filter(|v| v.flip).count();
        assert!((850..1150).contains(&flips), "{flips}");
        for v in &views {
            assert!((0.9..1.1).contains(&v.brightness), "{}", v.brightness);
            // scale in [1.1, 1.21), resized side int(scale * 224) in 246..=271 pixels, of
            // which the window keeps 224.
            assert!(
                v.side <= 224.0 / 246.0 && v.side >= 224.0 / 271.0,
                "{}",
                v.side
            );
        }
        let dim = views.iter().filter(|v| v.brightness < 0.95).count();
        assert!(dim > 300, "{dim}");
        // Brightness alone keeps the geometry.
        let only = Distortions {
            random_brightness: 50.0,
            ..Distortions::default()
        };
        let v = only.draw(224, &mut rng);
        assert_eq!((v.left, v.top, v.side, v.flip), (0.0, 0.0, 1.0, false));
    }

    #[test]
    fn flip_view_mirrors_and_brightness_scales() {
        let p = BackboneId::EfficientNetLite0.spec().preprocess;
        let rgb = photo(256, 256);
        let plain = prepare(&rgb, &p, &View::ORIGINAL).unwrap();
        let mirrored = prepare(&rgb, &p, &View::test_time(1)).unwrap();
        let s = p.size as usize;
        for c in 0..3 {
            for y in [0, 100, s - 1] {
                for x in [0, 17, s - 1] {
                    let i = c * s * s + y * s;
                    assert_eq!(mirrored[i + x], plain[i + s - 1 - x]);
                }
            }
        }
        let bright = View {
            brightness: 1.1,
            ..View::ORIGINAL
        };
        let b = prepare(&rgb, &p, &bright).unwrap();
        // (1.1 v - 127) / 128 = 1.1 (v - 127) / 128 + 0.1 * 127 / 128
        for i in [0, 5000, 3 * s * s - 1] {
            let expected = 1.1 * plain[i] + 0.1 * 127.0 / 128.0;
            assert!((b[i] - expected).abs() < 1e-5, "{} vs {expected}", b[i]);
        }
    }

    #[test]
    fn out_of_range_percentages_are_refused() {
        let bad = Distortions {
            random_brightness: 150.0,
            ..Distortions::default()
        };
        let err = bad.check().unwrap_err().to_string();
        assert!(err.contains("--random-brightness"), "{err}");
        assert!(Distortions {
            random_crop: -1.0,
            ..Distortions::default()
        }
        .check()
        .is_err());
        assert!(ALL.check().is_ok());
    }

    proptest! {
        #[test]
        fn windows_stay_inside_the_image(
            width in 1u32..3000,
            height in 1u32..3000,
            crop in 0f32..100.0,
            scale in 0f32..100.0,
            size in prop::sample::select(vec![224u32, 240, 260, 299]),
            crop_fraction in 0.5f64..=1.0,
            seed in any::<u64>(),
            k in 0usize..View::TEST_TIME_VIEWS,
        ) {
            let d = Distortions { flip_left_right: true, random_crop: crop, random_scale: scale, random_brightness: 0.0, ..Default::default() };
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            for view in [d.draw(size, &mut rng), View::test_time(k)] {
                let (l, t, s) = view.window(width, height, crop_fraction);
                prop_assert!(s > 0.0);
                prop_assert!(l >= 0.0 && t >= 0.0, "{l} {t}");
                prop_assert!(l + s <= f64::from(width) + 1e-9, "{l} + {s} > {width}");
                prop_assert!(t + s <= f64::from(height) + 1e-9, "{t} + {s} > {height}");
            }
        }
    }
}
