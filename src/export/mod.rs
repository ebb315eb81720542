//! Taking a trained model out of graft: the whole classifier (backbone, head, softmax) as
//! one ONNX file a client runs on decoded pixels ([`classifier_onnx`]), and a static web
//! folder that runs that file in the browser ([`web`]).
//!
//! The classifier is the backbone graph graft runs, folded for inference, with its
//! ImageNet layer replaced by the bundle's head; the ONNX writer serializes it as it does
//! for the engine, and [`onnx::wrap_classifier`] adds the pixel input and the softmax.

pub mod web;

use serde_json::json;

use crate::backbone::graph::{Graph, Node, Op, Shape};
use crate::bundle::Bundle;
use crate::engine::onnx::{self, ClassifierWrap};
use crate::error::{Error, Result};
use crate::head::HeadWeights;
use crate::weights::{TensorData, TensorMap};

/// The key of the head's weights inside the exported graph (no checkpoint uses it).
const HEAD_KEY: &str = "graft_head";

/// `graph` (folded) with its ImageNet layer replaced by `head`: the node that made the
/// ImageNet logits now makes the head's, from the same features.
pub fn classifier_graph(
    graph: &Graph,
    tensors: &TensorMap,
    head: &HeadWeights,
) -> Result<(Graph, TensorMap)> {
    let (features, logits) = (graph.features, graph.logits);
    let is_layer_on_features = matches!(
        graph.nodes.get(logits.0).map(|n| &n.op),
        Some(Op::Linear { input, .. }) if *input == features
    );
    if !is_layer_on_features {
        return Err(Error::Invalid(
            "export: the backbone's logits are not a layer on its features".into(),
        ));
    }
    let feature_len = graph.shape(features).channels();
    if head.dim != feature_len {
        return Err(Error::Invalid(format!(
            "export: the head reads {} features but the backbone gives {feature_len}",
            head.dim
        )));
    }
    let mut graph = graph.clone();
    graph.nodes[logits.0] = Node {
        op: Op::Linear {
            input: features,
            key: HEAD_KEY.to_string(),
        },
        shape: Shape::Flat { len: head.classes },
    };
    let mut tensors = tensors.clone();
    // The head stores `[dim, classes]`; a graph Linear layer reads `[out, in]`.
    let mut weight = vec![0f32; head.dim * head.classes];
    for d in 0..head.dim {
        for c in 0..head.classes {
            weight[c * head.dim + d] = head.weight[d * head.classes + c];
        }
    }
    tensors.insert(
        format!("{HEAD_KEY}.weight"),
        TensorData {
            shape: vec![head.classes, head.dim],
            data: weight,
        },
    );
    tensors.insert(
        format!("{HEAD_KEY}.bias"),
        TensorData {
            shape: vec![head.classes],
            data: head.bias.clone(),
        },
    );
    Ok((graph, tensors))
}

/// How a client turns a photo into the model's `pixels`, as the `graft.preprocessing`
/// metadata and docs/export.md state it.
pub fn preprocessing_json(bundle: &Bundle) -> serde_json::Value {
    let p = &bundle.manifest.preprocess;
    json!({
        "input": "pixels",
        "layout": "NHWC",
        "dtype": "uint8",
        "color": "RGB, EXIF orientation applied, alpha dropped",
        "size": p.size,
        "crop_fraction": p.crop_fraction,
        "filter": p.filter,
        "rule": format!(
            "cut the centred square of side crop_fraction * min(width, height) (fractional \
             pixels), resize it to {s}x{s} with the {f:?} filter (PIL: \
             img.resize(({s}, {s}), Image.{F}, box=(left, top, left + side, top + side)))",
            s = p.size,
            f = p.filter,
            F = format!("{:?}", p.filter).to_uppercase(),
        ),
        "normalization_in_graph": {"mean": p.mean, "std": p.std, "formula": "(p - mean) / std"},
    })
}

/// The whole classifier of `bundle` as an ONNX model: the backbone with the bundle's
/// weights ([`Bundle::backbone_weights`]: fine-tuned where the model is), the head, and
/// the softmax of the logits divided by the bundle's temperature.
///
/// Input `pixels` uint8 `[N, S, S, 3]`; outputs `probabilities` `[N, C]` and `features`
/// `[N, D]`; labels, backbone, preprocessing, model id and graft version in
/// `metadata_props` (keys `graft.*`). With `int8`, the backbone is QDQ-quantized
/// ([`crate::engine::quantize`]) calibrated on those images; the head stays float.
pub fn classifier_onnx(
    bundle: &Bundle,
    int8: Option<crate::engine::CalibrationSet<'_>>,
    progress: &dyn crate::progress::Progress,
) -> Result<Vec<u8>> {
    let m = &bundle.manifest;
    let weights = bundle.backbone_weights(progress)?;
    let temperature = bundle.manifest.temperature;
    let (folded, folded_tensors) = crate::engine::folded_graph(
        m.backbone,
        m.preprocess.size,
        &weights.tensors,
        &weights.origin,
    )?;
    let (graph, tensors) = classifier_graph(&folded, &folded_tensors, &bundle.head)?;
    let precision = if int8.is_some() { "int8" } else { "fp32" };
    let backbone_model = match int8 {
        None => onnx::export(&graph, &tensors)?,
        Some(calibration) => {
            progress.begin("calibrating int8", calibration.images as u64);
            let model = crate::engine::quantize::quantize(
                &graph,
                &tensors,
                (calibration.batches)(),
                crate::engine::quantize::RangeMethod::DEFAULT,
                m.backbone.spec().int8_float_layers,
                // The file runs on devices graft does not know: 7-bit weights are right on
                // every CPU.
                crate::engine::onnx::Int8Weights::Portable,
                progress,
            );
            progress.finish();
            model?
        }
    };
    let labels = serde_json::to_string(&m.labels).map_err(|e| Error::Invalid(e.to_string()))?;
    let preprocessing = preprocessing_json(bundle).to_string();
    let s = m.preprocess.size;
    let doc = format!(
        "graft classifier {id}: {backbone} backbone + trained softmax head, {c} labels.\n\
         Input `pixels`: uint8 [N, {s}, {s}, 3], decoded RGB (EXIF orientation applied), \
         centre-cropped and resized as metadata `graft.preprocessing` says; the cast and \
         normalisation are inside the graph.\n\
         Outputs: `probabilities` float32 [N, {c}] (softmax{t}, in the order of metadata \
         `graft.labels`), `features` float32 [N, {d}] (the backbone's pooled features).",
        id = bundle.model_id(),
        backbone = m.backbone,
        c = m.labels.len(),
        d = m.feature_dim,
        t = if temperature == 1.0 {
            String::new()
        } else {
            format!(" of logits / {temperature}")
        },
    );
    let metadata = [
        ("graft.format", "classifier/1".to_string()),
        ("graft.labels", labels),
        ("graft.backbone", m.backbone.to_string()),
        ("graft.weights_sha256", m.weights_sha256.clone()),
        ("graft.preprocessing", preprocessing),
        ("graft.temperature", temperature.to_string()),
        ("graft.precision", precision.to_string()),
        ("graft.model_id", bundle.model_id()),
        ("graft.version", env!("CARGO_PKG_VERSION").to_string()),
    ];
    onnx::wrap_classifier(
        &backbone_model,
        &ClassifierWrap {
            mean: m.preprocess.mean,
            std: m.preprocess.std,
            temperature,
            classes: m.labels.len(),
            feature_dim: m.feature_dim,
            doc: &doc,
            metadata: &metadata,
        },
    )
}
