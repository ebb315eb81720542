//! Decoding image files to 8-bit RGB, as PIL's `Image.open(..).convert('RGB')` does:
//! alpha is dropped (not composited), palette and grey images are expanded, 16-bit
//! channels are scaled to 8 bits.

use std::io::Cursor;
use std::path::Path;

use ::image::{ImageFormat, ImageReader, Limits, RgbImage};

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
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_err(e.to_string()))?;
    let mut lim = Limits::default();
    // Room for the decoded pixels at up to 16 bits x 4 channels, plus decoder slack.
    lim.max_alloc = Some(limits.max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(lim);
    let decoded = reader.decode().map_err(|e| decode_err(e.to_string()))?;
    Ok(decoded.into_rgb8())
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
    RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| "JPEG pixel data has the wrong size".to_string())
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
}
