//! Decoding image files to 8-bit RGB, as PIL's `Image.open(..).convert('RGB')` does:
//! alpha is dropped (not composited), palette and grey images are expanded, 16-bit
//! channels are scaled to 8 bits — and pixels are turned upright by their EXIF
//! orientation, as PIL's `ImageOps.exif_transpose` does, for every format that carries
//! one (JPEG APP1, PNG eXIf, TIFF, WebP). Phone and handheld photos are stored sideways
//! with a tag saying so; every command and `serve` decode here, so all of them see the
//! photo the way a viewer shows it. Callers that re-encode (augment, organize) write
//! these upright pixels without any EXIF, so no stale tag turns them a second time.

use std::io::Cursor;
use std::path::Path;

use ::image::metadata::Orientation;
use ::image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::error::{Error, Result};

/// File extensions graft reads, matched case-insensitively.
pub const SUPPORTED_EXTENSIONS: &[&str] =
    &["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"];

/// Whether `path` has one of [`SUPPORTED_EXTENSIONS`] (any letter case).
pub fn is_supported_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| {
            SUPPORTED_EXTENSIONS
                .iter()
                .any(|s| s.eq_ignore_ascii_case(e))
        })
        .unwrap_or(false)
}

/// Guards against decompression bombs: images above `max_pixels` are refused before
/// their pixels are allocated.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    pub max_pixels: u64,
}

impl Default for DecodeLimits {
    /// 100 megapixels: larger than any phone or shelf camera photo.
    fn default() -> Self {
        DecodeLimits {
            max_pixels: 100_000_000,
        }
    }
}

/// Decodes the image file at `path` to RGB8. The format is taken from the content,
/// not the extension, so a PNG named `.jpg` still decodes.
pub fn decode_rgb8(path: &Path, limits: DecodeLimits) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_rgb8_bytes(&bytes, path, limits)
}

/// Decodes in-memory image bytes; `origin` names them in errors.
pub fn decode_rgb8_bytes(bytes: &[u8], origin: &Path, limits: DecodeLimits) -> Result<RgbImage> {
    // The decoders can panic on crafted bytes (cargo fuzz found a PNG whose palette
    // transform indexes out of bounds in png 0.18): a panic is a bad file, not a crash.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_unguarded(bytes, origin, limits)
    }))
    .unwrap_or_else(|_| {
        Err(Error::Decode {
            path: origin.to_path_buf(),
            reason: "the image decoder failed on malformed data".into(),
        })
    })
}

fn decode_unguarded(bytes: &[u8], origin: &Path, limits: DecodeLimits) -> Result<RgbImage> {
    let decode_err = |reason: String| Error::Decode {
        path: origin.to_path_buf(),
        reason,
    };
    if bytes.is_empty() {
        return Err(decode_err("the file is empty".into()));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_err(e.to_string()))?;
    if reader.format().is_none() {
        return Err(decode_err(
            "not an image in a supported format (JPEG, PNG, BMP, GIF, WebP, TIFF)".into(),
        ));
    }
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| decode_err(e.to_string()))?;
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(Error::ImageTooLarge {
            path: origin.to_path_buf(),
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    if reader_format(bytes) == Some(ImageFormat::Jpeg) {
        return decode_jpeg_strict(bytes).map_err(decode_err);
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_err(e.to_string()))?;
    let mut lim = Limits::default();
    // Room for the decoded pixels at up to 16 bits x 4 channels, plus decoder slack.
    lim.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    // `ImageReader::decode` would hide the decoder and with it the orientation; this is
    // its body, the allocation check included.
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| decode_err(e.to_string()))?;
    lim.reserve(decoder.total_bytes())
        .map_err(|e| decode_err(e.to_string()))?;
    decoder
        .set_limits(lim)
        .map_err(|e| decode_err(e.to_string()))?;
    // A malformed EXIF block is no reason to refuse the pixels: PIL leaves such an image
    // as stored, and so do we.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let decoded = DynamicImage::from_decoder(decoder).map_err(|e| decode_err(e.to_string()))?;
    Ok(upright(decoded.into_rgb8(), orientation))
}

/// `pixels` as stored, turned by their EXIF orientation (rotated after the conversion to
/// RGB8, where there are the fewest bytes to move).
fn upright(pixels: RgbImage, orientation: Orientation) -> RgbImage {
    if orientation == Orientation::NoTransforms {
        return pixels;
    }
    let mut image = DynamicImage::ImageRgb8(pixels);
    image.apply_orientation(orientation);
    image.into_rgb8()
}

fn reader_format(bytes: &[u8]) -> Option<ImageFormat> {
    ::image::guess_format(bytes).ok()
}

/// JPEG goes straight to zune-jpeg (the decoder `image` itself uses) in strict mode: the
/// `image` crate runs it leniently, so a truncated JPEG quietly decodes with its missing
/// part painted grey. PIL refuses such a file ("image file is truncated"), and so do we:
/// a half-grey photo would poison the features without anyone noticing.
fn decode_jpeg_strict(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    let options = DecoderOptions::default()
        .set_strict_mode(true)
        .set_max_width(usize::MAX)
        .set_max_height(usize::MAX)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let pixels = decoder
        .decode()
        .map_err(|e| format!("invalid or truncated JPEG: {e:?}"))?;
    let info = decoder.info().ok_or("JPEG without a frame header")?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    let rgb = match decoder.output_colorspace() {
        Some(ColorSpace::RGB) => pixels,
        Some(ColorSpace::Luma) => pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        other => return Err(format!("unsupported JPEG colour space {other:?}")),
    };
    // The APP1 Exif segment, read with the headers: the same orientation the `image`
    // crate's own JPEG decoder would report.
    let orientation = decoder
        .exif()
        .and_then(|exif| Orientation::from_exif_chunk(exif))
        .unwrap_or(Orientation::NoTransforms);
    let pixels = RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| "JPEG pixel data has the wrong size".to_string())?;
    Ok(upright(pixels, orientation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_match_case_insensitively() {
        assert!(is_supported_image(Path::new("a/b.JPG")));
        assert!(is_supported_image(Path::new("a/b.Tiff")));
        assert!(is_supported_image(Path::new("b.webp")));
        assert!(!is_supported_image(Path::new("b.txt")));
        assert!(!is_supported_image(Path::new("jpg")));
    }

    #[test]
    fn empty_and_garbage_bytes_are_refused_with_the_path() {
        let p = Path::new("shelf/0001.jpg");
        let err = decode_rgb8_bytes(&[], p, DecodeLimits::default()).unwrap_err();
        assert!(err.to_string().contains("shelf/0001.jpg"), "{err}");
        assert!(err.to_string().contains("empty"), "{err}");
        let err = decode_rgb8_bytes(b"hello world, not an image", p, DecodeLimits::default())
            .unwrap_err();
        assert!(err.to_string().contains("not an image"), "{err}");
    }

    #[test]
    fn rgba_png_drops_alpha_like_pil() {
        let img = ::image::RgbaImage::from_pixel(3, 2, ::image::Rgba([10, 20, 30, 0]));
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), ::image::ImageFormat::Png)
            .unwrap();
        let rgb = decode_rgb8_bytes(&png, Path::new("x.png"), DecodeLimits::default()).unwrap();
        assert_eq!(rgb.dimensions(), (3, 2));
        assert_eq!(rgb.get_pixel(1, 1).0, [10, 20, 30]);
    }

    #[test]
    fn pixel_limit_refuses_before_decoding() {
        let img = ::image::RgbImage::new(100, 100);
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), ::image::ImageFormat::Png)
            .unwrap();
        let err = decode_rgb8_bytes(
            &png,
            Path::new("big.png"),
            DecodeLimits { max_pixels: 5000 },
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                Error::ImageTooLarge {
                    width: 100,
                    height: 100,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn truncated_jpeg_is_an_error_not_a_panic() {
        let img = ::image::RgbImage::from_fn(64, 64, |x, y| ::image::Rgb([x as u8, y as u8, 7]));
        let mut jpg = Vec::new();
        img.write_to(&mut Cursor::new(&mut jpg), ::image::ImageFormat::Jpeg)
            .unwrap();
        let whole = decode_rgb8_bytes(&jpg, Path::new("t.jpg"), DecodeLimits::default()).unwrap();
        assert_eq!(whole.dimensions(), (64, 64));
        // Headers intact, entropy-coded data cut short.
        jpg.truncate(jpg.len() * 2 / 3);
        let err = decode_rgb8_bytes(&jpg, Path::new("t.jpg"), DecodeLimits::default()).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    #[test]
    fn grey_jpeg_becomes_rgb() {
        let img = ::image::GrayImage::from_fn(16, 8, |x, _| ::image::Luma([x as u8 * 10]));
        let mut jpg = Vec::new();
        img.write_to(&mut Cursor::new(&mut jpg), ::image::ImageFormat::Jpeg)
            .unwrap();
        let rgb = decode_rgb8_bytes(&jpg, Path::new("g.jpg"), DecodeLimits::default()).unwrap();
        assert_eq!(rgb.dimensions(), (16, 8));
        let p = rgb.get_pixel(5, 3).0;
        assert!(p[0] == p[1] && p[1] == p[2]);
    }

    /// A minimal big-endian TIFF block holding only the orientation tag (0x0112), as a
    /// camera writes it into JPEG APP1 and PNG eXIf.
    pub(crate) fn exif_orientation(value: u16) -> Vec<u8> {
        let mut exif = b"MM\0\x2a\0\0\0\x08".to_vec();
        exif.extend_from_slice(&1u16.to_be_bytes());
        exif.extend_from_slice(&0x0112u16.to_be_bytes());
        exif.extend_from_slice(&3u16.to_be_bytes()); // SHORT
        exif.extend_from_slice(&1u32.to_be_bytes());
        exif.extend_from_slice(&value.to_be_bytes());
        exif.extend_from_slice(&[0, 0]);
        exif.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
        exif
    }

    fn encode_with_exif(img: &RgbImage, format: ImageFormat, exif: Vec<u8>) -> Vec<u8> {
        use ::image::{ExtendedColorType, ImageEncoder};
        let mut out = Vec::new();
        let (w, h) = img.dimensions();
        match format {
            ImageFormat::Png => {
                let mut enc = ::image::codecs::png::PngEncoder::new(&mut out);
                enc.set_exif_metadata(exif).unwrap();
                enc.write_image(img.as_raw(), w, h, ExtendedColorType::Rgb8)
                    .unwrap();
            }
            ImageFormat::Jpeg => {
                let mut enc = ::image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 100);
                enc.set_exif_metadata(exif).unwrap();
                enc.write_image(img.as_raw(), w, h, ExtendedColorType::Rgb8)
                    .unwrap();
            }
            ImageFormat::WebP => {
                let mut enc = ::image::codecs::webp::WebPEncoder::new_lossless(&mut out);
                enc.set_exif_metadata(exif).unwrap();
                enc.write_image(img.as_raw(), w, h, ExtendedColorType::Rgb8)
                    .unwrap();
            }
            other => panic!("no encoder for {other:?} in this test"),
        }
        out
    }

    /// PIL's `exif_transpose`: the stored pixel shown at (x, y) of the upright image.
    fn pil_transposed(stored: &RgbImage, orientation: u16) -> RgbImage {
        let (w, h) = stored.dimensions();
        let swapped = orientation >= 5;
        let (ow, oh) = if swapped { (h, w) } else { (w, h) };
        RgbImage::from_fn(ow, oh, |x, y| {
            let (sx, sy) = match orientation {
                1 => (x, y),
                2 => (w - 1 - x, y),
                3 => (w - 1 - x, h - 1 - y),
                4 => (x, h - 1 - y),
                5 => (y, x),
                6 => (y, h - 1 - x),
                7 => (w - 1 - y, h - 1 - x),
                8 => (w - 1 - y, x),
                _ => unreachable!(),
            };
            *stored.get_pixel(sx, sy)
        })
    }

    #[test]
    fn a_png_that_panics_the_decoder_is_a_decode_error() {
        // Found by `cargo fuzz run decode_image`.
        let bytes = include_bytes!("../../tests/fixtures/fuzz/png-palette-panic.png");
        let err = decode_rgb8_bytes(bytes, Path::new("bomb.png"), DecodeLimits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("bomb.png"), "{err}");
    }

    #[test]
    fn all_eight_exif_orientations_turn_png_and_webp_upright_like_pil() {
        let stored = RgbImage::from_fn(3, 2, |x, y| ::image::Rgb([x as u8 * 80, y as u8 * 200, 9]));
        for format in [ImageFormat::Png, ImageFormat::WebP] {
            for orientation in 1..=8 {
                let bytes = encode_with_exif(&stored, format, exif_orientation(orientation));
                let got =
                    decode_rgb8_bytes(&bytes, Path::new("o"), DecodeLimits::default()).unwrap();
                assert_eq!(
                    got,
                    pil_transposed(&stored, orientation),
                    "{format:?}, orientation {orientation}"
                );
            }
        }
    }

    #[test]
    fn the_strict_jpeg_path_honours_exif_orientation_too() {
        // Big flat quadrants, so JPEG's loss cannot blur which corner went where.
        let stored = RgbImage::from_fn(32, 16, |x, y| match (x < 16, y < 8) {
            (true, true) => ::image::Rgb([250, 10, 10]),
            (false, true) => ::image::Rgb([10, 250, 10]),
            (true, false) => ::image::Rgb([10, 10, 250]),
            (false, false) => ::image::Rgb([250, 250, 250]),
        });
        for orientation in 1..=8 {
            let jpg = encode_with_exif(&stored, ImageFormat::Jpeg, exif_orientation(orientation));
            let got = decode_rgb8_bytes(&jpg, Path::new("o.jpg"), DecodeLimits::default()).unwrap();
            let want = pil_transposed(&stored, orientation);
            assert_eq!(
                got.dimensions(),
                want.dimensions(),
                "orientation {orientation}"
            );
            let worst = got
                .as_raw()
                .iter()
                .zip(want.as_raw())
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(worst < 40, "orientation {orientation}: off by {worst}");
        }
    }
}
