//! Images: decoding any supported file to RGB, preprocessing for a backbone, augmentation, distortions.

pub mod augment;
pub mod decode;
pub mod distort;
pub mod preprocess;

pub use decode::{
    decode_rgb8, decode_rgb8_bytes, is_supported_image, DecodeLimits, SUPPORTED_EXTENSIONS,
};
