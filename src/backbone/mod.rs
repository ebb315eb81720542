//! The networks: one definition each, as a graph built from a config ([`graph`]), the
//! per-backbone facts ([`spec`]) and the ImageNet class names their logits index.

pub mod efficientnet_lite;
pub mod graph;
pub mod imagenet;
pub mod inception_v3;
pub mod spec;

pub use spec::{BackboneId, BackboneSpec, Filter, Preprocess, WeightsSource};

use efficientnet_lite::LiteConfig;
use graph::Graph;

/// The one network definition of a backbone, as a graph.
pub fn graph(id: BackboneId) -> Graph {
    match id {
        BackboneId::EfficientNetLite0 => efficientnet_lite::build(LiteConfig::LITE0),
        BackboneId::EfficientNetLite1 => efficientnet_lite::build(LiteConfig::LITE1),
        BackboneId::EfficientNetLite2 => efficientnet_lite::build(LiteConfig::LITE2),
        BackboneId::InceptionV3 => inception_v3::build(),
    }
}
