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

/// The one network definition of a backbone, as a graph, at its native input size.
pub fn graph(id: BackboneId) -> Graph {
    graph_at(id, id.spec().preprocess.size)
}

/// [`graph`] for `[batch, 3, size, size]` inputs (`--image-size`): the same layers and
/// weights; only the feature maps, and TF's "same" padding where it depends on them, change.
pub fn graph_at(id: BackboneId, size: u32) -> Graph {
    let size = size as usize;
    match id {
        BackboneId::EfficientNetLite0 => efficientnet_lite::build(LiteConfig::LITE0, size),
        BackboneId::EfficientNetLite1 => efficientnet_lite::build(LiteConfig::LITE1, size),
        BackboneId::EfficientNetLite2 => efficientnet_lite::build(LiteConfig::LITE2, size),
        BackboneId::InceptionV3 => inception_v3::build(size),
    }
}

#[cfg(test)]
mod tests {
    use super::graph::Shape;
    use super::*;

    #[test]
    fn a_network_at_another_size_reads_the_same_weights_and_gives_the_same_features() {
        for id in BackboneId::ALL {
            let native = graph(id);
            let size = id.spec().preprocess.size as usize;
            let square = |side| Shape::Map {
                channels: 3,
                height: side,
                width: side,
            };
            assert_eq!(native.input_shape(), &square(size));
            let other = graph_at(id, 192);
            assert_eq!(other.input_shape(), &square(192));
            assert_eq!(other.parameters(), native.parameters(), "{id:?}");
            assert_eq!(other.shape(other.features), native.shape(native.features));
            // The feature maps themselves change with the input.
            assert_eq!(other.nodes.len(), native.nodes.len());
            let maps_differ = (other.nodes.iter().zip(&native.nodes))
                .all(|(a, b)| matches!(a.shape, Shape::Flat { .. }) || a.shape != b.shape);
            assert!(maps_differ, "{id:?}: a feature map kept its native size");
        }
    }
}
