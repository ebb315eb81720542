//! Turning a decoded RGB image into a backbone's input tensor, following the backbone's
//! [`Preprocess`] record: centre crop, resize, per-channel normalisation.
//!
//! Resizing uses `fast_image_resize` (SIMD, convolution-based like PIL's `resize`, with
//! the crop given as a fractional box, as PIL's `box=` argument), so the result matches
//! PIL within rounding of the 8-bit output.

use ::image::RgbImage;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};

use crate::backbone::{Filter, Preprocess};
use crate::error::{Error, Result};

/// The centred square crop box `(left, top, side)` of `crop_fraction` of the shorter side.
pub fn center_crop_box(width: u32, height: u32, crop_fraction: f64) -> (f64, f64, f64) {
    let side = f64::from(width.min(height)) * crop_fraction;
    let left = (f64::from(width) - side) / 2.0;
    let top = (f64::from(height) - side) / 2.0;
    (left, top, side)
}

/// Crops and resizes `rgb` to `p.size x p.size` pixels (8-bit RGB).
pub fn crop_resize(rgb: &RgbImage, p: &Preprocess) -> Result<RgbImage> {
    resize_box(
        rgb,
        p,
        center_crop_box(rgb.width(), rgb.height(), p.crop_fraction),
    )
}

/// Resizes the square `(left, top, side)` of `rgb` (source pixels, fractional) to
/// `p.size x p.size` pixels with the backbone's filter: a horizontal pass into an 8-bit
/// image `p.size` wide, then a vertical one, as PIL's `resize` runs them.
///
/// One call to fast_image_resize per pass, not one for both: given both at once (5.5 and
/// 6.0 alike), it convolves into a temporary image and shifts the other pass's bounds by
/// the first bound's start, but the bounds it trims of zero weights are not always in
/// order, and the shift wraps below zero into a read 12 GB away: a segfault, for instance
/// on the window `(76.05479452054794, 19.06849315068493, 231.50684931506848)` of a 348x348
/// photo, one of the random views `graft train --fine-tune 6` draws. A single pass uses
/// its bounds as computed, each inside the image.
pub fn resize_box(
    rgb: &RgbImage,
    p: &Preprocess,
    (left, top, side): (f64, f64, f64),
) -> Result<RgbImage> {
    let (filter, support) = match p.filter {
        Filter::Bilinear => (FilterType::Bilinear, 1.0),
        // PIL's BICUBIC is the Catmull-Rom kernel (a = -0.5).
        Filter::Bicubic => (FilterType::CatmullRom, 2.0),
    };
    // The rows the vertical pass reaches: the window and the filter's radius around it
    // (scaled when downsizing), as PIL's horizontal pass covers only those. Clamped to the
    // photo; the result is the same as over every row.
    let radius = support * (side / f64::from(p.size)).max(1.0);
    let first_row = (top - radius).floor().max(0.0);
    let end_row = (top + side + radius).ceil().min(f64::from(rgb.height()));
    let rows = (end_row - first_row).max(1.0);
    let pass = |left: f64, top: f64, width: f64, height: f64| {
        ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(filter))
            .crop(left, top, width, height)
    };
    let failed = |e: fast_image_resize::ResizeError| Error::Engine(format!("resize failed: {e}"));
    let mut resizer = Resizer::new();
    let mut wide = RgbImage::new(p.size, rows as u32);
    resizer
        .resize(rgb, &mut wide, &pass(left, first_row, side, rows))
        .map_err(failed)?;
    let mut out = RgbImage::new(p.size, p.size);
    resizer
        .resize(
            &wide,
            &mut out,
            &pass(0.0, top - first_row, f64::from(p.size), side),
        )
        .map_err(failed)?;
    Ok(out)
}

/// Writes the normalised planes of an already-sized image into `out` (`[3, H, W]`).
pub fn normalize_into(sized: &RgbImage, p: &Preprocess, out: &mut [f32]) {
    normalize_scaled_into(sized, p, 1.0, out);
}

/// [`normalize_into`] with every pixel value multiplied by `brightness` first (unclipped,
/// as retrain.py's brightness distortion). A factor of 1 changes no bit.
pub fn normalize_scaled_into(sized: &RgbImage, p: &Preprocess, brightness: f32, out: &mut [f32]) {
    let plane = (sized.width() * sized.height()) as usize;
    let scale = p.std.map(|s| 1.0 / s);
    for (i, px) in sized.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(px.0[c]) * brightness - p.mean[c]) * scale[c];
        }
    }
}

/// Crop, resize and normalise: the `[3, size, size]` input for one image.
pub fn preprocess(rgb: &RgbImage, p: &Preprocess) -> Result<Vec<f32>> {
    let sized = crop_resize(rgb, p)?;
    let mut out = vec![0f32; 3 * (p.size * p.size) as usize];
    normalize_into(&sized, p, &mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::BackboneId;

    #[test]
    fn crop_box_is_centred_on_the_shorter_side() {
        let (l, t, s) = center_crop_box(400, 200, 0.5);
        assert_eq!((l, t, s), (150.0, 50.0, 100.0));
    }

    /// The ONNX export's same-pixels check (tests/export.rs) relies on it: an image whose
    /// crop is exactly the input size reaches the network as its centre pixels, unresampled.
    #[test]
    fn a_crop_at_the_input_size_is_the_centre_pixels() {
        let p = BackboneId::EfficientNetLite0.spec().preprocess;
        let side = p.size + 32;
        let img = RgbImage::from_fn(side, side, |x, y| {
            ::image::Rgb([(x * 7 + y) as u8, (x * y) as u8, (x ^ y) as u8])
        });
        let sized = crop_resize(&img, &p).unwrap();
        for (x, y, px) in sized.enumerate_pixels() {
            assert_eq!(*px, *img.get_pixel(x + 16, y + 16), "at {x},{y}");
        }
    }

    /// The window on which one fast_image_resize call for both passes read out of bounds
    /// (a segfault): resized in two calls, it is the photo's colour, as any window of a
    /// one-colour photo must be.
    #[test]
    fn a_window_that_crashed_the_two_pass_resize_resizes() {
        let p = BackboneId::EfficientNetLite2.spec().preprocess;
        let img = RgbImage::from_pixel(348, 348, ::image::Rgb([200, 100, 7]));
        let window = (76.05479452054794, 19.06849315068493, 231.50684931506848);
        let sized = resize_box(&img, &p, window).unwrap();
        assert_eq!(sized.dimensions(), (p.size, p.size));
        assert!(sized.pixels().all(|px| px.0 == [200, 100, 7]));
    }

    /// The horizontal pass covers only the rows the vertical pass reaches: the same pixels
    /// as running it over every row, for windows at the edges and inside, downsized and
    /// enlarged, with both filters.
    #[test]
    fn the_horizontal_pass_over_the_reached_rows_gives_every_rows_result() {
        let img = RgbImage::from_fn(348, 464, |x, y| {
            ::image::Rgb([(x * 31 + y * 7) as u8, (x * y) as u8, (x ^ (y * 3)) as u8])
        });
        for backbone in [BackboneId::EfficientNetLite2, BackboneId::InceptionV3] {
            let p = backbone.spec().preprocess;
            let filter = match p.filter {
                Filter::Bilinear => FilterType::Bilinear,
                Filter::Bicubic => FilterType::CatmullRom,
            };
            for window in [
                (0.0, 0.0, 348.0),
                (0.0, 116.0, 348.0),
                (76.05479452054794, 19.06849315068493, 231.50684931506848),
                (10.3, 300.25, 163.7),
                (200.5, 0.4, 120.0),
            ] {
                let (left, top, side) = window;
                let options = |l, t, w, h| {
                    ResizeOptions::new()
                        .resize_alg(ResizeAlg::Convolution(filter))
                        .crop(l, t, w, h)
                };
                let mut resizer = Resizer::new();
                let mut wide = RgbImage::new(p.size, 464);
                resizer
                    .resize(&img, &mut wide, &options(left, 0.0, side, 464.0))
                    .unwrap();
                let mut every_row = RgbImage::new(p.size, p.size);
                resizer
                    .resize(
                        &wide,
                        &mut every_row,
                        &options(0.0, top, f64::from(p.size), side),
                    )
                    .unwrap();
                let sized = resize_box(&img, &p, window).unwrap();
                assert!(sized == every_row, "{backbone:?} {window:?}");
            }
        }
    }

    #[test]
    fn uniform_image_normalises_to_a_constant() {
        let p = BackboneId::EfficientNetLite0.spec().preprocess;
        let img = RgbImage::from_pixel(300, 200, ::image::Rgb([255, 127, 0]));
        let x = preprocess(&img, &p).unwrap();
        let plane = 224 * 224;
        assert_eq!(x.len(), 3 * plane);
        assert!((x[0] - 1.0).abs() < 1e-6, "{}", x[0]);
        assert!(x[plane..2 * plane].iter().all(|v| v.abs() < 1e-6));
        assert!((x[2 * plane] + 127.0 / 128.0).abs() < 1e-6);
    }
}
