//! graft: turn a pretrained ImageNet network into your own image classifier.
//!
//! Data flows one way, and each module owns one stage of it:
//!
//! ```text
//! image file -> decoded RGB -> preprocessed tensor -> backbone features -> feature cache
//!            -> softmax head -> predictions -> metrics / reports / HTTP answers
//! ```
//!
//! - [`dataset`]: scanning folders, labels, organizing a labelled CSV into class folders.
//! - [`image`]: decoding, preprocessing for a backbone, augmentation.
//! - [`backbone`]: the networks, one definition each, and the per-backbone table of facts.
//! - [`weights`]: fetching, verifying, converting and reading the networks' weights.
//! - [`engine`]: running a network: the burn interpreter and its kernels, onnxruntime,
//!   ONNX writing, and [`engine::Backbone`], a network with its weights on an engine.
//! - [`features`]: batch feature extraction.
//! - [`export`]: a trained model as one ONNX classifier, and as an offline web page.

pub mod backbone;
pub mod bundle;
pub mod dataset;
pub mod engine;
pub mod error;
pub mod evaluate;
pub mod export;
pub mod features;
pub mod fsx;
pub mod head;
pub mod home;
pub mod image;
pub mod metrics;
pub mod output;
pub mod predict;
pub mod progress;
pub mod report;
pub mod retrain;
pub mod serve;
pub mod weights;

pub use error::{Error, Result};
