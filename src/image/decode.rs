//! Decoding image files to 8-bit RGB, as PIL's `Image.open(..).convert('RGB')` does:
//! alpha is dropped (not composited), palette and grey images are expanded, 16-bit
//! channels are scaled to 8 bits.

use std::io::Cursor;
use std::path::Path;

use ::image::{ImageReader, Limits, RgbImage};

use crate::error::{Error, Result};

/// File extensions graft reads, matched case-insensitively.
pub const SUPPORTED_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff",
];

/// Whether `path` has one of [`SUPPORTED_EXTENSIONS`] (any letter case).
pub fn is_supported_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| SUPPORTED_EXTENSIONS.iter().any(|s| s.eq_ignore_ascii_case(e)))
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
        let err = decode_rgb8_bytes(&png, Path::new("big.png"), DecodeLimits { max_pixels: 5000 })
            .unwrap_err();
        assert!(matches!(err, Error::ImageTooLarge { width: 100, height: 100, .. }), "{err}");
    }

    #[test]
    fn truncated_jpeg_is_an_error_not_a_panic() {
        let img = ::image::RgbImage::from_fn(64, 64, |x, y| ::image::Rgb([x as u8, y as u8, 7]));
        let mut jpg = Vec::new();
        img.write_to(&mut Cursor::new(&mut jpg), ::image::ImageFormat::Jpeg)
            .unwrap();
        jpg.truncate(jpg.len() / 3);
        // Either a clean error or a (partially grey) image; never a panic.
        let _ = decode_rgb8_bytes(&jpg, Path::new("t.jpg"), DecodeLimits::default());
    }
}
