//! Static int8 quantization of a folded backbone graph, in the QDQ form onnxruntime fuses
//! into integer kernels (`QLinearConv`, `QLinearAdd`, ...): per-output-channel symmetric
//! int8 weights, and per-tensor uint8 activations whose scale and zero point come from a
//! calibration pass (the float graph run on calibration images, the range of every
//! quantized tensor recorded).
//!
//! Written by hand because onnxruntime's quantization tool is Python-only (and works on a
//! finished ONNX file, where graft has the graph itself); the rules follow that tool's
//! defaults: QDQ format, uint8 activations, int8 per-channel weights, int32 bias at input
//! scale x weight scale, every range widened to include 0; and its `reduce_range` (7-bit
//! weights), which CPUs without VNNI need (see [`Int8Weights`]), for all but the
//! depthwise convolutions, whose kernels cannot saturate, unless the CPU has AVX-512 VNNI. Beyond that tool: each
//! convolution's bias is corrected for the mean shift its rounded weights cause, from the
//! per-channel means of its input over the calibration images
//! ([`super::onnx::correct_bias`]).
//!
//! What is quantized: the output of every convolution, addition, concatenation, pooling
//! window and activation, and any value such an op reads (the network input when a
//! convolution reads it directly). The global pooling that makes the features and the
//! ImageNet classifier stay float: they are a sliver of the work, and the features keep
//! their full resolution for the head. So do the convolutions a backbone names in its
//! `int8_float_layers` (for EfficientNet-Lite the stem and the first block), whose
//! rounding costs the features most; their inputs and outputs are still quantized where an
//! integer op reads or writes them.

use super::onnx::{ActivationScale, ExportOptions, Int8Weights, Qdq};
use crate::backbone::graph::{Graph, Op, Value};
use crate::error::{Error, Result};
use crate::weights::TensorMap;

/// Bumped when the quantization rules change, retiring every quantized model cached
/// (2: 7-bit weights; 3: depthwise weights back to 8 bits; 4: the backbone's
/// `int8_float_layers` stay float; 5: bias correction).
pub const QUANTIZER_VERSION: &str = "graft-int8/5";

/// How a tensor's range is taken from the calibration batches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RangeMethod {
    /// The smallest and largest value seen.
    MinMax,
    /// Per batch, the value below which this percent of the tensor lies (and its mirror
    /// for the minimum), averaged over batches: outliers no longer stretch the scale.
    Percentile(f32),
}

impl RangeMethod {
    /// The method graft uses: the one that kept top-1 closest to float (docs/int8.md).
    pub const DEFAULT: RangeMethod = RangeMethod::MinMax;

    pub fn tag(self) -> String {
        match self {
            RangeMethod::MinMax => "minmax".to_string(),
            RangeMethod::Percentile(p) => format!("percentile-{p}"),
        }
    }
}

/// Whether an op runs on quantized tensors (reads and writes them).
fn integer_op(op: &Op) -> bool {
    matches!(
        op,
        Op::Conv { .. }
            | Op::BatchNorm { .. }
            | Op::Activation { .. }
            | Op::Add { .. }
            | Op::Concat { .. }
            | Op::MaxPool { .. }
            | Op::AvgPool { .. }
    )
}

/// For each node of `graph`, whether it is a convolution whose key starts with one of
/// `float_layers` (it keeps float weights and a float output).
pub fn float_convs(graph: &Graph, float_layers: &[&str]) -> Vec<bool> {
    graph
        .nodes
        .iter()
        .map(|n| match &n.op {
            Op::Conv { key, .. } => float_layers.iter().any(|p| key.starts_with(p)),
            _ => false,
        })
        .collect()
}

/// For each value of `graph`, whether it gets a QuantizeLinear/DequantizeLinear pair: the
/// outputs of integer ops (convolutions in `float_layers` excepted) and everything an
/// integer op reads.
pub fn quantized_values(graph: &Graph, float_layers: &[&str]) -> Vec<bool> {
    quantized_given(graph, &float_convs(graph, float_layers))
}

/// [`quantized_values`] with the float convolutions already marked per node.
fn quantized_given(graph: &Graph, float: &[bool]) -> Vec<bool> {
    let integer: Vec<bool> = graph
        .nodes
        .iter()
        .zip(float)
        .map(|(n, float)| integer_op(&n.op) && !float)
        .collect();
    let mut quantized = integer.clone();
    for (node, integer) in graph.nodes.iter().zip(integer) {
        if integer {
            for input in node.op.inputs() {
                quantized[input.0] = true;
            }
        }
    }
    quantized
}

/// Running per-channel mean of one `[n, c, h, w]` tensor over the calibration batches.
#[derive(Clone, Debug)]
struct ChannelMeans {
    sums: Vec<f64>,
    /// Values added per channel.
    count: usize,
}

impl ChannelMeans {
    fn new(channels: usize) -> ChannelMeans {
        ChannelMeans {
            sums: vec![0.0; channels],
            count: 0,
        }
    }

    /// `values`: `n` images, channel planes in order.
    fn add(&mut self, values: &[f32], n: usize) {
        let c = self.sums.len();
        let plane = (values.len() / (n * c).max(1)).max(1);
        for (k, chunk) in values.chunks(plane).enumerate() {
            self.sums[k % c] += chunk.iter().map(|x| f64::from(*x)).sum::<f64>();
        }
        self.count += n * plane;
    }

    fn means(&self) -> Vec<f32> {
        let count = self.count.max(1) as f64;
        self.sums.iter().map(|s| (s / count) as f32).collect()
    }
}

/// Running range of one tensor over the calibration batches.
#[derive(Clone, Copy, Debug)]
struct Range {
    min: f64,
    max: f64,
    batches: usize,
}

impl Range {
    const EMPTY: Range = Range {
        min: 0.0,
        max: 0.0,
        batches: 0,
    };

    fn add(&mut self, values: &[f32], method: RangeMethod) {
        if values.is_empty() {
            return;
        }
        let (lo, hi) = match method {
            RangeMethod::MinMax => values
                .iter()
                .fold((f32::MAX, f32::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v))),
            RangeMethod::Percentile(p) => {
                let mut sorted = values.to_vec();
                let at = |sorted: &mut Vec<f32>, q: f64| {
                    let k = ((sorted.len() - 1) as f64 * q).round() as usize;
                    *sorted.select_nth_unstable_by(k, f32::total_cmp).1
                };
                let q = f64::from(p) / 100.0;
                (at(&mut sorted, 1.0 - q), at(&mut sorted, q))
            }
        };
        if !lo.is_finite() || !hi.is_finite() {
            return;
        }
        let (lo, hi) = (f64::from(lo), f64::from(hi));
        match method {
            RangeMethod::MinMax if self.batches > 0 => {
                self.min = self.min.min(lo);
                self.max = self.max.max(hi);
            }
            RangeMethod::Percentile(_) if self.batches > 0 => {
                let n = self.batches as f64;
                self.min = (self.min * n + lo) / (n + 1.0);
                self.max = (self.max * n + hi) / (n + 1.0);
            }
            _ => {
                self.min = lo;
                self.max = hi;
            }
        }
        self.batches += 1;
    }
}

/// The uint8 scale and zero point of the range `[min, max]`, widened to include 0 so
/// that zero (padding, ReLU's floor) is exact.
pub fn activation_scale(min: f32, max: f32) -> ActivationScale {
    let (min, max) = (min.min(0.0), max.max(0.0));
    let scale = (max - min) / 255.0;
    if !(scale.is_finite() && scale > f32::MIN_POSITIVE) {
        return ActivationScale {
            scale: 1.0,
            zero_point: 0,
        };
    }
    ActivationScale {
        scale,
        zero_point: (-min / scale).round().clamp(0.0, 255.0) as u8,
    }
}

/// Runs the float `graph` on every calibration batch and records the range of every
/// value [`quantized_values`] picks; returns the QDQ parameters.
///
/// `batches` yields preprocessed images `[n, 3, S, S]` and their count `n`;
/// `float_layers` are the key prefixes of the convolutions that stay float; `weights`
/// how wide the weights of the others are.
pub fn calibrate(
    graph: &Graph,
    tensors: &TensorMap,
    batches: impl IntoIterator<Item = Result<(Vec<f32>, usize)>>,
    method: RangeMethod,
    float_layers: &[&str],
    weights: Int8Weights,
    progress: &dyn crate::progress::Progress,
) -> Result<Qdq> {
    let float = float_convs(graph, float_layers);
    let quantized = quantized_given(graph, &float);
    // The input's range is read from the pixels themselves; an ONNX input cannot be an
    // output too.
    let probes: Vec<Value> = (1..graph.nodes.len())
        .filter(|i| quantized[*i])
        .map(Value)
        .collect();
    let model = super::onnx::export_with(
        graph,
        tensors,
        ExportOptions {
            probes: &probes,
            qdq: None,
        },
    )?;
    let environment = super::onnxruntime::environment(progress)?;
    let failed = |e: String| Error::Engine(format!("onnxruntime (int8 calibration): {e}"));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut session = ort::session::Session::builder(environment)
        .map_err(|e| failed(e.to_string()))?
        .with_intra_threads(threads)
        .map_err(|e| failed(e.to_string()))?
        .commit_from_memory(&model)
        .map_err(|e| failed(format!("cannot load the calibration model: {e}")))?;
    let [c, h, w] = match graph.input_shape() {
        crate::backbone::graph::Shape::Map {
            channels,
            height,
            width,
        } => [*channels, *height, *width],
        _ => return Err(Error::Engine("the graph input is not an image".into())),
    };
    let mut ranges = vec![Range::EMPTY; graph.nodes.len()];
    // Channel means of every value an int8 convolution reads, for the bias correction.
    let mut means: Vec<Option<ChannelMeans>> = vec![None; graph.nodes.len()];
    for (node, float) in graph.nodes.iter().zip(&float) {
        if let Op::Conv { input, .. } = node.op {
            // A value several convolutions read (Inception's branches) needs its means
            // when any of them is an int8 one.
            if quantized[input.0] && !float {
                means[input.0] = Some(ChannelMeans::new(graph.shape(input).channels()));
            }
        }
    }
    let mut images = 0usize;
    for batch in batches {
        let (pixels, n) = batch?;
        if n == 0 {
            continue;
        }
        if pixels.len() != n * c * h * w {
            return Err(Error::Engine(format!(
                "int8 calibration: expected {n}x{c}x{h}x{w} input values, got {}",
                pixels.len()
            )));
        }
        if quantized[0] {
            ranges[0].add(&pixels, method);
        }
        if let Some(m) = means[0].as_mut() {
            m.add(&pixels, n);
        }
        let tensor = ort::value::Tensor::from_array(([n, c, h, w], pixels))
            .map_err(|e| failed(e.to_string()))?;
        let outputs = session
            .run(ort::inputs!["pixels" => tensor])
            .map_err(|e| failed(e.to_string()))?;
        for probe in &probes {
            let key = format!("v{}", probe.0);
            let value = outputs
                .get(key.as_str())
                .ok_or_else(|| failed(format!("no output '{key}'")))?;
            let (_, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| failed(e.to_string()))?;
            ranges[probe.0].add(data, method);
            if let Some(m) = means[probe.0].as_mut() {
                m.add(data, n);
            }
        }
        images += n;
        progress.advance(n as u64);
    }
    if images == 0 {
        return Err(Error::Invalid(
            "int8 calibration needs at least one image; none could be decoded".into(),
        ));
    }
    let mut activations: Vec<Option<ActivationScale>> = ranges
        .iter()
        .zip(&quantized)
        .map(|(range, q)| q.then(|| activation_scale(range.min as f32, range.max as f32)))
        .collect();
    // Max pooling picks values of its input: with the input's scale, onnxruntime runs it
    // on the integers directly instead of dequantizing around it.
    for (i, node) in graph.nodes.iter().enumerate() {
        if let Op::MaxPool { input, .. } = node.op {
            activations[i] = activations[input.0];
        }
    }
    Ok(Qdq {
        activations,
        float_convs: float,
        input_means: means
            .iter()
            .map(|m| m.as_ref().map(ChannelMeans::means))
            .collect(),
        weights,
    })
}

/// The QDQ-quantized ONNX model of the folded `graph` with `tensors`, calibrated on
/// `batches` of preprocessed images (see [`calibrate`]): what `graft ... --precision
/// int8` runs (with [`Int8Weights::for_this_cpu`]), and what an export with int8
/// quantization writes (with [`Int8Weights::Portable`]).
pub fn quantize(
    graph: &Graph,
    tensors: &TensorMap,
    batches: impl IntoIterator<Item = Result<(Vec<f32>, usize)>>,
    method: RangeMethod,
    float_layers: &[&str],
    weights: Int8Weights,
    progress: &dyn crate::progress::Progress,
) -> Result<Vec<u8>> {
    let qdq = calibrate(
        graph,
        tensors,
        batches,
        method,
        float_layers,
        weights,
        progress,
    )?;
    super::onnx::export_with(
        graph,
        tensors,
        ExportOptions {
            probes: &[],
            qdq: Some(&qdq),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_ranges_include_zero_and_map_it_exactly() {
        let relu = activation_scale(0.0, 6.0);
        assert_eq!(relu.zero_point, 0);
        assert!((relu.scale - 6.0 / 255.0).abs() < 1e-7);
        let signed = activation_scale(-1.0, 3.0);
        let zero = signed.zero_point as f32 * signed.scale;
        assert!((zero - 1.0).abs() < signed.scale / 2.0, "{signed:?}");
        // A range that excludes 0 is widened to it.
        assert_eq!(activation_scale(2.0, 4.0).zero_point, 0);
        // A constant-zero tensor gets a usable scale, not a division by zero.
        assert_eq!(activation_scale(0.0, 0.0).scale, 1.0);
    }

    #[test]
    fn per_channel_weights_are_symmetric_per_output_channel() {
        let weights = [0.6, -1.0, 0.2, 0.0, 0.0, 0.0, 2.0, 1.2, -2.0];
        let onnx = |dims: &[usize], width: Int8Weights| {
            super::super::onnx::int8_per_channel(
                &weights,
                3,
                super::super::onnx::int8_weight_max(dims, width),
            )
        };
        // A dense or pointwise convolution, 7-bit: the largest magnitude of each channel
        // maps to 63.
        let (q, scales) = onnx(&[3, 3, 1, 1], Int8Weights::Portable);
        assert_eq!(q, [38, -63, 13, 0, 0, 0, 63, 38, -63]);
        assert_eq!(scales, [1.0 / 63.0, 1.0, 2.0 / 63.0]);
        // A depthwise one (one input channel per group), 8-bit: to 127, at either width.
        let eight_bit = [76, -127, 25, 0, 0, 0, 127, 76, -127];
        let eight_bit_scales = [1.0 / 127.0, 1.0, 2.0 / 127.0];
        for width in [Int8Weights::Portable, Int8Weights::Full] {
            let (q, scales) = onnx(&[3, 1, 3, 1], width);
            assert_eq!(
                (q.as_slice(), scales.as_slice()),
                (&eight_bit[..], &eight_bit_scales[..])
            );
        }
        // The portable width adds nothing to cache keys (models cached before it stay
        // valid); the full one keys its models apart.
        assert_eq!(Int8Weights::Portable.tag(), "");
        assert_ne!(Int8Weights::Full.tag(), "");
        // The pointwise one at the full width, for CPUs with VNNI: to 127 too.
        let (q, scales) = onnx(&[3, 3, 1, 1], Int8Weights::Full);
        assert_eq!(
            (q.as_slice(), scales.as_slice()),
            (&eight_bit[..], &eight_bit_scales[..])
        );
    }

    #[test]
    fn percentile_ranges_ignore_outliers_that_minmax_keeps() {
        let mut values: Vec<f32> = (0..1000).map(|i| i as f32 / 1000.0).collect();
        values[7] = 100.0;
        let mut minmax = Range::EMPTY;
        minmax.add(&values, RangeMethod::MinMax);
        assert_eq!(minmax.max, 100.0);
        let mut pct = Range::EMPTY;
        pct.add(&values, RangeMethod::Percentile(99.9));
        assert!(pct.max < 1.0, "{pct:?}");
    }

    #[test]
    fn the_float_layers_keep_their_convolutions_out_of_the_integer_graph() {
        use crate::backbone::efficientnet_lite::{build, LiteConfig};
        use crate::backbone::BackboneId;
        use crate::weights::{formula::formula_tensor, TensorData};
        // The folded graph, as quantized: batch norm inside the convolutions.
        let unfolded = build(LiteConfig::LITE0, 224);
        let tensors: TensorMap = unfolded
            .parameters()
            .into_iter()
            .map(|p| {
                let data = formula_tensor(&p.key, &p.shape);
                (
                    p.key,
                    TensorData {
                        shape: p.shape,
                        data,
                    },
                )
            })
            .collect();
        let (graph, _) = super::super::fold::fold_for_inference(&unfolded, &tensors).unwrap();
        let layers = BackboneId::EfficientNetLite0.spec().int8_float_layers;
        let float = float_convs(&graph, layers);
        let key = |i: usize| match &graph.nodes[i].op {
            Op::Conv { key, .. } => Some(key.as_str()),
            _ => None,
        };
        let floated: Vec<&str> = (0..graph.nodes.len())
            .filter(|i| float[*i])
            .filter_map(key)
            .collect();
        assert_eq!(
            floated,
            [
                "_conv_stem",
                "_blocks.0._depthwise_conv",
                "_blocks.0._project_conv"
            ]
        );
        // `_blocks.0.` does not reach `_blocks.10.`.
        assert!((0..graph.nodes.len())
            .filter_map(key)
            .any(|k| k.starts_with("_blocks.10.")));
        let quantized = quantized_values(&graph, layers);
        let everything = quantized_values(&graph, &[]);
        let node = |k: &str| (0..graph.nodes.len()).find(|i| key(*i) == Some(k)).unwrap();
        // The stem reads the pixels and writes for a float convolution: neither is
        // quantized any more; the first block's output feeds an integer convolution.
        assert!(everything[0] && !quantized[0]);
        let stem = node("_conv_stem");
        assert!(everything[stem] && !quantized[stem]);
        assert!(quantized[node("_blocks.0._project_conv")]);
        assert!(quantized[node("_blocks.1._expand_conv")]);
        assert!(quantized[node("_conv_head")]);
    }

    #[test]
    fn corrected_biases_make_int8_convolutions_right_on_mean_inputs() {
        use super::super::onnx::{correct_bias, int8_per_channel, int8_weight_max};
        // Output of one output channel on an input that is `means` everywhere (no padding):
        // sum over its kernel of weight x mean of the input channel, plus the bias.
        let response = |w: &[f32], dims: &[usize], means: &[f32], bias: &[f32]| -> Vec<f32> {
            let (out, per, taps) = (dims[0], dims[1], dims[2] * dims[3]);
            let groups = means.len() / per;
            (0..out)
                .map(|o| {
                    let first = (o / (out / groups)) * per;
                    let mut y = bias[o];
                    for i in 0..per {
                        for t in 0..taps {
                            y += w[(o * per + i) * taps + t] * means[first + i];
                        }
                    }
                    y
                })
                .collect()
        };
        let cases: [(&[usize], &[f32]); 2] = [
            // A dense 1x1 convolution, 3 -> 2 channels (7-bit weights) ...
            (&[2, 3, 1, 1], &[0.5, 2.0, 3.0]),
            // ... and a depthwise 3x1 one over 2 channels (8-bit).
            (&[2, 1, 3, 1], &[1.5, 4.0]),
        ];
        for (dims, means) in cases {
            let n: usize = dims.iter().product();
            let weights: Vec<f32> = (0..n).map(|k| ((k as f32) * 0.37).sin() * 0.9).collect();
            let bias = vec![0.25f32; dims[0]];
            let (values, scales) = int8_per_channel(
                &weights,
                dims[0],
                int8_weight_max(dims, Int8Weights::Portable),
            );
            let rounded: Vec<f32> = values
                .iter()
                .enumerate()
                .map(|(k, v)| f32::from(*v) * scales[k / (n / dims[0])])
                .collect();
            let float = response(&weights, dims, means, &bias);
            let plain = response(&rounded, dims, means, &bias);
            let mut corrected_bias = bias.clone();
            correct_bias(&mut corrected_bias, &weights, &values, &scales, dims, means);
            let corrected = response(&rounded, dims, means, &corrected_bias);
            let off = |a: &[f32]| {
                a.iter()
                    .zip(&float)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max)
            };
            assert!(off(&plain) > 1e-3, "{dims:?}: rounding shifted nothing");
            assert!(
                off(&corrected) < 1e-5,
                "{dims:?}: {corrected:?} vs {float:?}"
            );
        }
    }
}
