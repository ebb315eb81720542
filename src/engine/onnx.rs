//! Export of a (folded) [`Graph`] and its weights as an ONNX model, so that onnxruntime
//! runs the same network definition the burn engine interprets.
//!
//! The model has one input, `pixels` `[batch, 3, H, W]`, and two outputs, `features`
//! `[batch, D]` and `logits` `[batch, 1000]`; the batch dimension is symbolic. Opset 17.
//!
//! The protobuf encoding is written by hand: ONNX needs eight small messages, whose wire
//! format is a few lines of varint and length-delimited fields, while the generated-code
//! route (prost-build) needs `protoc` on the build machine and the published
//! pre-generated crates (`onnx-protobuf`) pull in a whole protobuf runtime for what is a
//! write-only use.
//! Field numbers are those of `onnx.proto` (cited at each message below).

use crate::backbone::graph::{Activation, Graph, Op, Shape, Value};
use crate::backbone::BackboneId;
use crate::error::{Error, Result};
use crate::weights::{TensorData, TensorMap};

/// ONNX IR version 8 is the one that goes with opset 17.
const IR_VERSION: u64 = 8;
const OPSET: u64 = 17;
/// `TensorProto.DataType.FLOAT`.
const FLOAT: u64 = 1;

/// Protobuf wire encoding of one message under construction.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire_type: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire_type));
    }

    /// An `int32`/`int64`/enum field; negative values take ten bytes, as protobuf says.
    fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.key(field, 0);
        self.varint(v as u64);
        self
    }

    fn bytes(&mut self, field: u32, bytes: &[u8]) -> &mut Self {
        self.key(field, 2);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
        self
    }

    fn string(&mut self, field: u32, s: &str) -> &mut Self {
        self.bytes(field, s.as_bytes())
    }

    fn message(&mut self, field: u32, m: &Message) -> &mut Self {
        self.bytes(field, &m.0)
    }

    fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
}

/// `AttributeProto`: name = 1, f = 2, i = 3, ints = 8, type = 20.
enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
}

fn attribute(name: &str, value: &Attr) -> Message {
    let mut m = Message::default();
    m.string(1, name);
    match value {
        Attr::Float(f) => {
            m.float(2, *f).int(20, 1);
        }
        Attr::Int(i) => {
            m.int(3, *i).int(20, 2);
        }
        Attr::Ints(values) => {
            for v in values {
                m.int(8, *v);
            }
            m.int(20, 7);
        }
    }
    m
}

/// `TensorProto`: dims = 1, data_type = 2, name = 8, raw_data = 9 (little-endian).
fn tensor(name: &str, dims: &[usize], data: &[f32]) -> Message {
    let mut m = Message::default();
    for d in dims {
        m.int(1, *d as i64);
    }
    m.int(2, FLOAT as i64).string(8, name);
    let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    m.bytes(9, &raw);
    m
}

/// `TensorProto.DataType` of the quantized tensors: UINT8, INT8, INT32.
const Q_UINT8: i64 = 2;
const Q_INT8: i64 = 3;
const Q_INT32: i64 = 6;
/// `TensorProto.DataType` INT64 (shapes).
const INT64: i64 = 7;

/// A `TensorProto` of any element type from its little-endian bytes.
fn raw_tensor(name: &str, dims: &[usize], data_type: i64, raw: &[u8]) -> Message {
    let mut m = Message::default();
    for d in dims {
        m.int(1, *d as i64);
    }
    m.int(2, data_type).string(8, name).bytes(9, raw);
    m
}

/// The uint8 quantization of one activation tensor (`x = scale * (q - zero_point)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActivationScale {
    pub scale: f32,
    pub zero_point: u8,
}

/// Static QDQ quantization of a graph ([`super::quantize`] computes it): per value of the
/// graph, the scale its `QuantizeLinear`/`DequantizeLinear` pair uses, or `None` where the
/// value stays float. The weights of every convolution whose input is quantized become
/// per-output-channel symmetric int8, its bias int32 at input scale times weight scale:
/// the pattern onnxruntime fuses into `QLinearConv`.
#[derive(Clone, Debug, Default)]
pub struct Qdq {
    pub activations: Vec<Option<ActivationScale>>,
    /// Per node, whether a convolution keeps float weights although its input is
    /// quantized (the backbone's `int8_float_layers`); false for every other node.
    pub float_convs: Vec<bool>,
    /// Per value, the mean of each channel over the calibration images, for the values
    /// an int8 convolution reads: the bias correction's input.
    pub input_means: Vec<Option<Vec<f32>>>,
    /// How wide the weights of dense and pointwise convolutions are.
    pub weights: Int8Weights,
}

/// What [`export_with`] writes beyond the float graph.
#[derive(Clone, Copy, Debug, Default)]
pub struct ExportOptions<'a> {
    /// Values also exposed as float outputs named `v<index>`, to record their ranges
    /// (calibration). Not the input: its range is known without running anything.
    pub probes: &'a [Value],
    /// The QDQ quantization to write, if any.
    pub qdq: Option<&'a Qdq>,
}

/// How wide the int8 weights of dense and pointwise convolutions are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Int8Weights {
    /// 7 bits (+-63, onnxruntime's `reduce_range`): right on every CPU. On x86 CPUs
    /// without VNNI, onnxruntime's uint8 x int8 matrix kernels add pairs of products in
    /// int16 (`vpmaddubsw`), which saturates once 2 x 255 x |w| passes 32767; with
    /// |w| <= 63 it cannot. Measured on an AVX2-only EPYC (tests/int8.rs, 17 grocery
    /// photos, Lite0): the lowest cosine of int8 to fp32 features was 0.852 with 127,
    /// 0.985 with 63. Exported files use it: the device that runs them is not known.
    #[default]
    Portable,
    /// The full 8 bits (+-127), for CPUs with AVX-512 VNNI, where onnxruntime's kernels
    /// multiply uint8 by int8 and sum in int32 in one instruction (`vpdpbusd`), so nothing
    /// saturates. On Lite2 and the 2640 grocery `train/` photos (a Zen 5 EPYC) the mean
    /// relative error of int8 features to fp32's went from 0.064 to 0.047 (docs/int8.md).
    Full,
}

impl Int8Weights {
    /// What graft's own int8 runs use on this machine: [`Int8Weights::Full`] where the
    /// CPU has AVX-512 VNNI, else [`Int8Weights::Portable`].
    pub fn for_this_cpu() -> Int8Weights {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512bw")
        {
            return Int8Weights::Full;
        }
        Int8Weights::Portable
    }

    /// The largest weight magnitude of a dense or pointwise convolution.
    pub fn pointwise_max(self) -> f32 {
        match self {
            Int8Weights::Portable => 63.0,
            Int8Weights::Full => 127.0,
        }
    }

    /// Joined to the quantizer's tag in cache keys: nothing for the portable width, so
    /// the quantized models and int8 features cached before it existed stay valid.
    pub fn tag(self) -> &'static str {
        match self {
            Int8Weights::Portable => "",
            Int8Weights::Full => ":weights-8bit",
        }
    }
}

/// The largest int8 weight magnitude of a depthwise convolution: the full 8 bits.
/// onnxruntime's depthwise kernels widen input and filter to int16 and sum the products
/// in int32 (`vpmaddwd`), so nothing saturates. On Lite2 and 2640 grocery photos this took
/// the mean relative error of int8 features to fp32 from 0.179 to 0.156 (docs/int8.md).
pub const INT8_DEPTHWISE_WEIGHT_MAX: f32 = 127.0;

/// The weight limit of a convolution with weights of shape `dims` (`[out, in / groups,
/// kh, kw]`): depthwise (one input channel per group), or as wide as `weights` says.
pub fn int8_weight_max(dims: &[usize], weights: Int8Weights) -> f32 {
    if dims.len() == 4 && dims[1] == 1 {
        INT8_DEPTHWISE_WEIGHT_MAX
    } else {
        weights.pointwise_max()
    }
}

/// Per-output-channel symmetric int8 of `weights` (`[out, ...]` row-major), within
/// +-`limit`: the values and one scale per channel (1 for an all-zero channel, whose
/// values are all 0).
pub fn int8_per_channel(weights: &[f32], out_channels: usize, limit: f32) -> (Vec<i8>, Vec<f32>) {
    let per = weights.len() / out_channels.max(1);
    let mut values = Vec::with_capacity(weights.len());
    let mut scales = Vec::with_capacity(out_channels);
    for channel in weights.chunks(per.max(1)) {
        let max = channel.iter().fold(0f32, |m, w| m.max(w.abs()));
        let scale = if max > 0.0 { max / limit } else { 1.0 };
        scales.push(scale);
        values.extend(
            channel
                .iter()
                .map(|w| (w / scale).round().clamp(-limit, limit) as i8),
        );
    }
    (values, scales)
}

/// Bias correction (Nagel et al., "Data-Free Quantization", 2019): subtracts from each
/// output channel's bias the mean shift that rounding its weights causes,
/// `sum (w_q - w) * mean(input channel)` over the channel's kernel, so the int8 convolution
/// is right on average over the calibration images. The rounding errors of a channel's
/// weights do not cancel: the inputs after ReLU6 are positive, so each error adds with the
/// sign it has, and 7-bit weights make them large. On Lite2 it halves the relative error
/// of the int8 features (docs/int8.md).
///
/// `dims` is `[out, in / groups, kh, kw]`, `values` and `scales` the per-channel int8
/// weights of `weights`, `means` one value per input channel.
pub fn correct_bias(
    bias: &mut [f32],
    weights: &[f32],
    values: &[i8],
    scales: &[f32],
    dims: &[usize],
    means: &[f32],
) {
    let out = dims[0];
    let per_group_in = dims[1];
    let taps: usize = dims[2..].iter().product();
    let groups = (means.len() / per_group_in.max(1)).max(1);
    let out_per_group = (out / groups).max(1);
    for o in 0..out {
        let first_in = (o / out_per_group) * per_group_in;
        let mut shift = 0f64;
        for i in 0..per_group_in {
            let mu = f64::from(means.get(first_in + i).copied().unwrap_or(0.0));
            for t in 0..taps {
                let k = (o * per_group_in + i) * taps + t;
                let err = f64::from(values[k]) * f64::from(scales[o]) - f64::from(weights[k]);
                shift += err * mu;
            }
        }
        bias[o] -= shift as f32;
    }
}

/// A tensor dimension: a fixed size or a symbolic name.
enum Dim<'a> {
    Fixed(usize),
    Named(&'a str),
}

/// `ValueInfoProto` (name = 1, type = 2) of a float tensor: `TypeProto.tensor_type` = 1,
/// `Tensor.elem_type` = 1, `Tensor.shape` = 2, `TensorShapeProto.dim` = 1,
/// `Dimension.dim_value` = 1, `Dimension.dim_param` = 2.
fn value_info(name: &str, dims: &[Dim]) -> Message {
    let mut shape = Message::default();
    for d in dims {
        let mut dim = Message::default();
        match d {
            Dim::Fixed(n) => dim.int(1, *n as i64),
            Dim::Named(s) => dim.string(2, s),
        };
        shape.message(1, &dim);
    }
    let mut tensor_type = Message::default();
    tensor_type.int(1, FLOAT as i64).message(2, &shape);
    let mut type_proto = Message::default();
    type_proto.message(1, &tensor_type);
    let mut m = Message::default();
    m.string(1, name).message(2, &type_proto);
    m
}

/// `ValueInfoProto` of a float tensor whose shape is left to the runtime (probes).
fn value_info_unshaped(name: &str) -> Message {
    let mut tensor_type = Message::default();
    tensor_type.int(1, FLOAT as i64);
    let mut type_proto = Message::default();
    type_proto.message(1, &tensor_type);
    let mut m = Message::default();
    m.string(1, name).message(2, &type_proto);
    m
}

/// Collects nodes and initializers of the `GraphProto` (node = 1, initializer = 5).
struct Writer<'a> {
    graph: Message,
    tensors: &'a TensorMap,
    nodes: usize,
}

impl Writer<'_> {
    /// `NodeProto`: input = 1, output = 2, name = 3, op_type = 4, attribute = 5.
    fn node(&mut self, op_type: &str, inputs: &[&str], output: &str, attrs: &[(&str, Attr)]) {
        let mut m = Message::default();
        for input in inputs {
            m.string(1, input);
        }
        m.string(2, output)
            .string(3, &format!("{op_type}_{}", self.nodes))
            .string(4, op_type);
        for (name, value) in attrs {
            m.message(5, &attribute(name, value));
        }
        self.nodes += 1;
        self.graph.message(1, &m);
    }

    fn initializer(&mut self, name: &str, dims: &[usize], data: &[f32]) {
        self.graph.message(5, &tensor(name, dims, data));
    }

    /// Adds the weight `key` as an initializer under its own name, checking its size.
    fn weight(&mut self, key: &str, dims: &[usize]) -> Result<()> {
        let t: &TensorData = self
            .tensors
            .get(key)
            .ok_or_else(|| Error::Invalid(format!("ONNX export: missing weight '{key}'")))?;
        if t.data.len() != dims.iter().product::<usize>() {
            return Err(Error::Invalid(format!(
                "ONNX export: weight '{key}' has {} values, expected shape {dims:?}",
                t.data.len()
            )));
        }
        let data = t.data.clone();
        self.initializer(key, dims, &data);
        Ok(())
    }

    /// `input` through `activation` into `output`.
    fn activation(&mut self, activation: Activation, input: &str, output: &str) {
        match activation {
            Activation::None => self.node("Identity", &[input], output, &[]),
            Activation::Relu => self.node("Relu", &[input], output, &[]),
            Activation::Relu6 => self.node("Clip", &[input, CLIP_MIN, CLIP_MAX], output, &[]),
        }
    }

    /// `value` through `QuantizeLinear` and `DequantizeLinear` into `{value}_dq`.
    fn fake_quantize(&mut self, value: &str, q: ActivationScale) {
        let (scale, zero) = (format!("{value}_q_scale"), format!("{value}_q_zero_point"));
        self.initializer(&scale, &[], &[q.scale]);
        self.graph
            .message(5, &raw_tensor(&zero, &[], Q_UINT8, &[q.zero_point]));
        let quantized = format!("{value}_q");
        self.node("QuantizeLinear", &[value, &scale, &zero], &quantized, &[]);
        let out = format!("{value}_dq");
        self.node("DequantizeLinear", &[&quantized, &scale, &zero], &out, &[]);
    }

    /// The convolution weight `wkey` (and bias `bkey`) as int8 (int32) initializers, each
    /// through a per-channel `DequantizeLinear`; returns the names the `Conv` reads.
    fn int8_conv_weights(
        &mut self,
        wkey: &str,
        dims: &[usize],
        bkey: Option<&str>,
        input_scale: f32,
        input_means: Option<&[f32]>,
        int8_width: Int8Weights,
    ) -> Result<(String, Option<String>)> {
        let get = |key: &str, len: usize| -> Result<Vec<f32>> {
            let t = self
                .tensors
                .get(key)
                .ok_or_else(|| Error::Invalid(format!("ONNX export: missing weight '{key}'")))?;
            if t.data.len() != len {
                return Err(Error::Invalid(format!(
                    "ONNX export: weight '{key}' has {} values, expected {len}",
                    t.data.len()
                )));
            }
            Ok(t.data.clone())
        };
        let out_ch = dims[0];
        let weights = get(wkey, dims.iter().product())?;
        let mut bias = bkey.map(|k| get(k, out_ch)).transpose()?;
        let (values, scales) =
            int8_per_channel(&weights, out_ch, int8_weight_max(dims, int8_width));
        if let (Some(bias), Some(means)) = (bias.as_mut(), input_means) {
            correct_bias(bias, &weights, &values, &scales, dims, means);
        }
        let raw: Vec<u8> = values.iter().map(|v| *v as u8).collect();
        let per_channel = |w: &mut Self,
                           tensor: &str,
                           shape: &[usize],
                           data_type: i64,
                           raw: &[u8],
                           scales: &[f32]| {
            let (q, scale, zero) = (
                format!("{tensor}_q"),
                format!("{tensor}_scale"),
                format!("{tensor}_zero_point"),
            );
            let zero_bytes = vec![0u8; out_ch * if data_type == Q_INT32 { 4 } else { 1 }];
            w.graph.message(5, &raw_tensor(&q, shape, data_type, raw));
            w.initializer(&scale, &[out_ch], scales);
            w.graph
                .message(5, &raw_tensor(&zero, &[out_ch], data_type, &zero_bytes));
            let out = format!("{tensor}_dq");
            w.node(
                "DequantizeLinear",
                &[&q, &scale, &zero],
                &out,
                &[("axis", Attr::Int(0))],
            );
            out
        };
        let wname = per_channel(self, wkey, dims, Q_INT8, &raw, &scales);
        let bname = match (bkey, bias) {
            (Some(bkey), Some(bias)) => {
                // onnxruntime fuses a bias only as int32 at input scale x weight scale.
                let bias_scales: Vec<f32> = scales.iter().map(|s| s * input_scale).collect();
                let raw: Vec<u8> = bias
                    .iter()
                    .zip(&bias_scales)
                    .flat_map(|(b, s)| {
                        let q = (f64::from(*b) / f64::from(*s))
                            .round()
                            .clamp(f64::from(i32::MIN), f64::from(i32::MAX))
                            as i32;
                        q.to_le_bytes()
                    })
                    .collect();
                Some(per_channel(
                    self,
                    bkey,
                    &[out_ch],
                    Q_INT32,
                    &raw,
                    &bias_scales,
                ))
            }
            _ => None,
        };
        Ok((wname, bname))
    }
}

const CLIP_MIN: &str = "relu6_min";
const CLIP_MAX: &str = "relu6_max";

fn name(v: Value) -> String {
    if v.0 == 0 {
        "pixels".to_string()
    } else {
        format!("v{}", v.0)
    }
}

/// Serializes `graph` with the weights in `tensors` (as [`super::fold::fold_for_inference`]
/// returns them) into an ONNX `ModelProto`.
pub fn export(graph: &Graph, tensors: &TensorMap) -> Result<Vec<u8>> {
    export_with(graph, tensors, ExportOptions::default())
}

/// [`export`] with calibration probes or QDQ quantization ([`ExportOptions`]).
pub fn export_with(
    graph: &Graph,
    tensors: &TensorMap,
    options: ExportOptions<'_>,
) -> Result<Vec<u8>> {
    let quantized = |v: Value| {
        options
            .qdq
            .and_then(|q| q.activations.get(v.0).copied().flatten())
    };
    // Shadows the free `name` for the consumers below: a quantized value is read through
    // its dequantized copy, so that onnxruntime sees DequantizeLinear -> op -> Quantize.
    let name = |v: Value| match quantized(v) {
        Some(_) => format!("{}_dq", self::name(v)),
        None => self::name(v),
    };
    let mut w = Writer {
        graph: Message::default(),
        tensors,
        nodes: 0,
    };
    let uses_relu6 = graph.nodes.iter().any(|n| {
        matches!(
            n.op,
            Op::Conv {
                activation: Activation::Relu6,
                ..
            } | Op::Activation {
                activation: Activation::Relu6,
                ..
            }
        )
    });
    if uses_relu6 {
        w.initializer(CLIP_MIN, &[], &[0.0]);
        w.initializer(CLIP_MAX, &[], &[6.0]);
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        // The producer writes the float value under its plain name.
        let out = self::name(Value(i));
        match &node.op {
            Op::Input => {
                if i != 0 {
                    return Err(Error::Invalid(
                        "ONNX export: the graph has an input that is not its first node".into(),
                    ));
                }
            }
            Op::Conv {
                input,
                key,
                kernel,
                stride,
                padding,
                groups,
                bias,
                activation,
            } => {
                let in_ch = graph.shape(*input).channels();
                let out_ch = node.shape.channels();
                let wkey = format!("{key}.weight");
                let groups = (*groups).max(1);
                let dims = [out_ch, in_ch / groups, kernel[0], kernel[1]];
                let bkey = format!("{key}.bias");
                let float_conv = options
                    .qdq
                    .is_some_and(|q| q.float_convs.get(i).copied().unwrap_or(false));
                let (wname, bname) = match quantized(*input).filter(|_| !float_conv) {
                    Some(q) => w.int8_conv_weights(
                        &wkey,
                        &dims,
                        bias.then_some(&bkey),
                        q.scale,
                        options
                            .qdq
                            .and_then(|q| q.input_means.get(input.0))
                            .and_then(|m| m.as_deref()),
                        options.qdq.map_or(Int8Weights::Portable, |q| q.weights),
                    )?,
                    None => {
                        w.weight(&wkey, &dims)?;
                        if *bias {
                            w.weight(&bkey, &[out_ch])?;
                        }
                        (wkey.clone(), bias.then(|| bkey.clone()))
                    }
                };
                let input = name(*input);
                let mut inputs = vec![input.as_str(), wname.as_str()];
                if let Some(bname) = &bname {
                    inputs.push(bname);
                }
                let conv_out = match activation {
                    Activation::None => out.clone(),
                    _ => format!("{out}_conv"),
                };
                let [(top, bottom), (left, right)] = *padding;
                w.node(
                    "Conv",
                    &inputs,
                    &conv_out,
                    &[
                        (
                            "kernel_shape",
                            Attr::Ints(vec![kernel[0] as i64, kernel[1] as i64]),
                        ),
                        (
                            "strides",
                            Attr::Ints(vec![stride[0] as i64, stride[1] as i64]),
                        ),
                        (
                            "pads",
                            Attr::Ints(vec![top as i64, left as i64, bottom as i64, right as i64]),
                        ),
                        ("group", Attr::Int(groups as i64)),
                    ],
                );
                if *activation != Activation::None {
                    w.activation(*activation, &conv_out, &out);
                }
            }
            Op::BatchNorm { input, key, eps } => {
                let c = node.shape.channels();
                let keys: Vec<String> = ["weight", "bias", "running_mean", "running_var"]
                    .iter()
                    .map(|n| format!("{key}.{n}"))
                    .collect();
                for k in &keys {
                    w.weight(k, &[c])?;
                }
                let input = name(*input);
                let mut inputs = vec![input.as_str()];
                inputs.extend(keys.iter().map(String::as_str));
                w.node(
                    "BatchNormalization",
                    &inputs,
                    &out,
                    &[("epsilon", Attr::Float(*eps))],
                );
            }
            Op::Activation { input, activation } => {
                w.activation(*activation, &name(*input), &out);
            }
            Op::Add { a, b } => w.node("Add", &[&name(*a), &name(*b)], &out, &[]),
            Op::MaxPool {
                input,
                kernel,
                stride,
            } => w.node(
                "MaxPool",
                &[&name(*input)],
                &out,
                &[
                    (
                        "kernel_shape",
                        Attr::Ints(vec![kernel[0] as i64, kernel[1] as i64]),
                    ),
                    (
                        "strides",
                        Attr::Ints(vec![stride[0] as i64, stride[1] as i64]),
                    ),
                ],
            ),
            Op::AvgPool {
                input,
                kernel,
                stride,
                padding,
            } => {
                let (ph, pw) = (padding[0] as i64, padding[1] as i64);
                w.node(
                    "AveragePool",
                    &[&name(*input)],
                    &out,
                    &[
                        (
                            "kernel_shape",
                            Attr::Ints(vec![kernel[0] as i64, kernel[1] as i64]),
                        ),
                        (
                            "strides",
                            Attr::Ints(vec![stride[0] as i64, stride[1] as i64]),
                        ),
                        ("pads", Attr::Ints(vec![ph, pw, ph, pw])),
                        // The graph's AvgPool divides by the full window, padding included.
                        ("count_include_pad", Attr::Int(1)),
                    ],
                );
            }
            Op::GlobalAvgPool { input } => {
                let pooled = format!("{out}_pooled");
                w.node("GlobalAveragePool", &[&name(*input)], &pooled, &[]);
                w.node("Flatten", &[&pooled], &out, &[("axis", Attr::Int(1))]);
            }
            Op::Flatten { input } => {
                w.node("Flatten", &[&name(*input)], &out, &[("axis", Attr::Int(1))]);
            }
            Op::Concat { inputs } => {
                let names: Vec<String> = inputs.iter().map(|v| name(*v)).collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                w.node("Concat", &refs, &out, &[("axis", Attr::Int(1))]);
            }
            Op::ChannelAffine {
                input,
                scale,
                shift,
            } => {
                let (scale_name, shift_name) = (format!("{out}_scale"), format!("{out}_shift"));
                w.initializer(&scale_name, &[1, scale.len(), 1, 1], scale);
                w.initializer(&shift_name, &[1, shift.len(), 1, 1], shift);
                let scaled = format!("{out}_scaled");
                w.node("Mul", &[&name(*input), &scale_name], &scaled, &[]);
                w.node("Add", &[&scaled, &shift_name], &out, &[]);
            }
            Op::Linear { input, key } => {
                let in_len = graph.shape(*input).channels();
                let out_len = node.shape.channels();
                let (wkey, bkey) = (format!("{key}.weight"), format!("{key}.bias"));
                w.weight(&wkey, &[out_len, in_len])?;
                w.weight(&bkey, &[out_len])?;
                w.node(
                    "Gemm",
                    &[&name(*input), &wkey, &bkey],
                    &out,
                    &[("transB", Attr::Int(1))],
                );
            }
        }
        if let Some(q) = quantized(Value(i)) {
            w.fake_quantize(&out, q);
        }
    }
    // Identity nodes give the outputs their public names whatever node produced them;
    // onnxruntime removes them when it optimizes the graph.
    w.node("Identity", &[&name(graph.features)], "features", &[]);
    w.node("Identity", &[&name(graph.logits)], "logits", &[]);

    let Shape::Map {
        channels: c,
        height: h,
        width: wd,
    } = graph.input_shape()
    else {
        return Err(Error::Invalid(
            "ONNX export: the graph input is not an image".into(),
        ));
    };
    let batch = Dim::Named("batch");
    let mut g = w.graph;
    // GraphProto: name = 2, input = 11, output = 12.
    g.string(2, "graft");
    g.message(
        11,
        &value_info(
            "pixels",
            &[batch, Dim::Fixed(*c), Dim::Fixed(*h), Dim::Fixed(*wd)],
        ),
    );
    for (out_name, value) in [("features", graph.features), ("logits", graph.logits)] {
        g.message(
            12,
            &value_info(
                out_name,
                &[
                    Dim::Named("batch"),
                    Dim::Fixed(graph.shape(value).channels()),
                ],
            ),
        );
    }

    for probe in options.probes {
        g.message(12, &value_info_unshaped(&self::name(*probe)));
    }

    // OperatorSetIdProto: domain = 1 (empty: the default ONNX domain), version = 2.
    let mut opset = Message::default();
    opset.int(2, OPSET as i64);
    // ModelProto: ir_version = 1, producer_name = 2, producer_version = 3, graph = 7,
    // opset_import = 8.
    let mut model = Message::default();
    model
        .int(1, IR_VERSION as i64)
        .string(2, "graft")
        .string(3, env!("CARGO_PKG_VERSION"))
        .message(7, &g)
        .message(8, &opset);
    Ok(model.0)
}

/// The ONNX model of backbone `id` with the weights in `tensors` (named as the reference
/// checkpoint names them), folded for inference as every engine runs it; `origin` names
/// where the weights came from in errors.
pub fn export_backbone(id: BackboneId, tensors: &TensorMap, origin: &str) -> Result<Vec<u8>> {
    let (folded, folded_tensors) =
        super::folded_graph(id, id.spec().preprocess.size, tensors, origin)?;
    export(&folded, &folded_tensors)
}

/// `TensorProto.DataType.UINT8`.
const UINT8: u64 = 2;

/// What [`wrap_classifier`] puts around a backbone model whose `logits` are already a
/// trained head's: the pixel input a client feeds, the softmax, and the facts a client
/// needs, in the model's `metadata_props` and doc strings.
pub struct ClassifierWrap<'a> {
    /// Per-channel `mean` and `std` of the backbone's normalisation (`(p - mean) / std`).
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Logits are divided by it before the softmax (1: no division node).
    pub temperature: f32,
    pub classes: usize,
    pub feature_dim: usize,
    /// `ModelProto.doc_string`.
    pub doc: &'a str,
    /// `ModelProto.metadata_props`, in this order.
    pub metadata: &'a [(&'a str, String)],
}

/// The backbone's float input inside a wrapped classifier: its public name `pixels` goes
/// to the uint8 input.
const NORMALIZED: &str = "pixels_normalized";

/// One top-level field of a serialized message: its number, and its whole encoding (key
/// included) along with the payload of a length-delimited field.
struct Field<'a> {
    number: u64,
    raw: &'a [u8],
    payload: Option<&'a [u8]>,
    varint: Option<u64>,
}

fn read_varint(bytes: &[u8], pos: &mut usize) -> Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes
            .get(*pos)
            .ok_or_else(|| Error::Invalid("ONNX wrap: truncated varint".into()))?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(Error::Invalid("ONNX wrap: varint too long".into()))
}

/// The top-level fields of `bytes`, in order. Only the wire types this writer emits
/// (varint, length-delimited, 32-bit) are accepted.
fn fields(bytes: &[u8]) -> Result<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let start = pos;
        let key = read_varint(bytes, &mut pos)?;
        let mut varint = None;
        let payload = match key & 7 {
            0 => {
                varint = Some(read_varint(bytes, &mut pos)?);
                None
            }
            2 => {
                let len = usize::try_from(read_varint(bytes, &mut pos)?)
                    .map_err(|_| Error::Invalid("ONNX wrap: field too long".into()))?;
                let end = pos
                    .checked_add(len)
                    .filter(|end| *end <= bytes.len())
                    .ok_or_else(|| Error::Invalid("ONNX wrap: truncated field".into()))?;
                let payload = &bytes[pos..end];
                pos = end;
                Some(payload)
            }
            5 => {
                pos += 4;
                None
            }
            other => {
                return Err(Error::Invalid(format!(
                    "ONNX wrap: unexpected wire type {other}"
                )))
            }
        };
        let raw = bytes
            .get(start..pos)
            .ok_or_else(|| Error::Invalid("ONNX wrap: truncated field".into()))?;
        out.push(Field {
            number: key >> 3,
            raw,
            payload,
            varint,
        });
    }
    Ok(out)
}

/// `NodeProto` `node` with every input named `from` renamed `to`.
fn rename_node_inputs(node: &[u8], from: &str, to: &str) -> Result<Message> {
    let mut m = Message::default();
    for f in fields(node)? {
        match (f.number, f.payload) {
            (1, Some(name)) if name == from.as_bytes() => {
                m.string(1, to);
            }
            _ => m.0.extend_from_slice(f.raw),
        }
    }
    Ok(m)
}

/// A `NodeProto` (see [`Writer::node`]) outside a [`Writer`].
fn node_message(op_type: &str, inputs: &[&str], output: &str, attrs: &[(&str, Attr)]) -> Message {
    let mut m = Message::default();
    for input in inputs {
        m.string(1, input);
    }
    m.string(2, output)
        .string(3, &format!("{op_type}_{output}"))
        .string(4, op_type);
    for (name, value) in attrs {
        m.message(5, &attribute(name, value));
    }
    m
}

/// [`value_info`] of a tensor of element type `elem_type`, with a doc string (field 3).
fn typed_value_info(name: &str, elem_type: u64, dims: &[Dim], doc: &str) -> Message {
    let mut shape = Message::default();
    for d in dims {
        let mut dim = Message::default();
        match d {
            Dim::Fixed(n) => dim.int(1, *n as i64),
            Dim::Named(s) => dim.string(2, s),
        };
        shape.message(1, &dim);
    }
    let mut tensor_type = Message::default();
    tensor_type.int(1, elem_type as i64).message(2, &shape);
    let mut type_proto = Message::default();
    type_proto.message(1, &tensor_type);
    let mut m = Message::default();
    m.string(1, name).message(2, &type_proto).string(3, doc);
    m
}

/// Turns `model` (what [`export`] writes for a graph whose `logits` are a trained head's)
/// into a whole classifier: input `pixels` uint8 `[N, H, W, 3]` (decoded RGB at the
/// backbone's size), cast, normalised and transposed inside the graph; outputs
/// `probabilities` `[N, C]` (softmax of the logits divided by the temperature) and
/// `features` `[N, D]`.
///
/// It works on the serialized model rather than inside [`export`] so that whatever graph
/// the writer emits for a backbone (fp32, or quantized) becomes a classifier the same way:
/// the backbone's nodes are copied as written, with the one input they read renamed.
pub fn wrap_classifier(model: &[u8], wrap: &ClassifierWrap) -> Result<Vec<u8>> {
    let model_fields = fields(model)?;
    let graph = model_fields
        .iter()
        .find(|f| f.number == 7)
        .and_then(|f| f.payload)
        .ok_or_else(|| Error::Invalid("ONNX wrap: the model has no graph".into()))?;
    let graph_fields = fields(graph)?;
    // The backbone's input shape [N, 3, H, W], read back from its ValueInfoProto.
    let (height, width) = input_size(&graph_fields)?;

    let mut g = Message::default();
    // The same arithmetic as graft's preprocessing, (p - mean) * (1 / std), so the
    // network sees the same floats. It runs on the pixels as they come, one image row of
    // W x 3 values per row of a [N x H, W x 3] view, against the mean and 1 / std repeated
    // W times: onnxruntime moves a transpose that comes first behind the quantization of an
    // int8 graph, and a constant of 3 values broadcast along the last axis ran ten times
    // slower there (13% of an int8 file's time; docs/int8.md). The reshapes keep it in
    // front.
    let row = width * 3;
    let tile =
        |per_channel: [f32; 3]| -> Vec<f32> { (0..row).map(|i| per_channel[i % 3]).collect() };
    let inv_std = wrap.std.map(|s| 1.0 / s);
    g.message(5, &tensor("pixel_mean", &[row], &tile(wrap.mean)));
    g.message(5, &tensor("pixel_inv_std", &[row], &tile(inv_std)));
    let int64 = |name: &str, values: &[i64]| {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        raw_tensor(name, &[values.len()], INT64, &raw)
    };
    g.message(5, &int64("pixel_rows", &[-1, row as i64]));
    g.message(
        5,
        &int64("pixel_images", &[-1, height as i64, width as i64, 3]),
    );
    g.message(
        1,
        &node_message(
            "Cast",
            &["pixels"],
            "pixels_f32",
            &[("to", Attr::Int(FLOAT as i64))],
        ),
    );
    g.message(
        1,
        &node_message("Reshape", &["pixels_f32", "pixel_rows"], "pixels_rows", &[]),
    );
    g.message(
        1,
        &node_message("Sub", &["pixels_rows", "pixel_mean"], "pixels_centred", &[]),
    );
    g.message(
        1,
        &node_message(
            "Mul",
            &["pixels_centred", "pixel_inv_std"],
            "pixels_scaled",
            &[],
        ),
    );
    g.message(
        1,
        &node_message(
            "Reshape",
            &["pixels_scaled", "pixel_images"],
            "pixels_nhwc",
            &[],
        ),
    );
    g.message(
        1,
        &node_message(
            "Transpose",
            &["pixels_nhwc"],
            NORMALIZED,
            &[("perm", Attr::Ints(vec![0, 3, 1, 2]))],
        ),
    );
    for f in &graph_fields {
        match (f.number, f.payload) {
            // The backbone's inputs and outputs are replaced below.
            (11 | 12, _) => {}
            (1, Some(node)) => {
                g.message(1, &rename_node_inputs(node, "pixels", NORMALIZED)?);
            }
            _ => g.0.extend_from_slice(f.raw),
        }
    }
    let softmax_input = if wrap.temperature != 1.0 {
        g.message(5, &tensor("temperature", &[], &[wrap.temperature]));
        g.message(
            1,
            &node_message("Div", &["logits", "temperature"], "logits_scaled", &[]),
        );
        "logits_scaled"
    } else {
        "logits"
    };
    g.message(
        1,
        &node_message(
            "Softmax",
            &[softmax_input],
            "probabilities",
            &[("axis", Attr::Int(1))],
        ),
    );
    let batch = || Dim::Named("batch");
    g.message(
        11,
        &typed_value_info(
            "pixels",
            UINT8,
            &[
                batch(),
                Dim::Fixed(height),
                Dim::Fixed(width),
                Dim::Fixed(3),
            ],
            "decoded RGB pixels, 0-255, cropped and resized as metadata `graft.preprocessing` says",
        ),
    );
    g.message(
        12,
        &typed_value_info(
            "probabilities",
            FLOAT,
            &[batch(), Dim::Fixed(wrap.classes)],
            "softmax over the labels in metadata `graft.labels`, in that order",
        ),
    );
    g.message(
        12,
        &typed_value_info(
            "features",
            FLOAT,
            &[batch(), Dim::Fixed(wrap.feature_dim)],
            "the backbone's pooled features (what the head reads)",
        ),
    );
    // GraphProto.doc_string = 10.
    g.string(10, wrap.doc);

    let mut out = Message::default();
    for f in &model_fields {
        match f.number {
            7 => {
                out.message(7, &g);
            }
            // doc_string and metadata_props are written below.
            6 | 14 => {}
            _ => out.0.extend_from_slice(f.raw),
        }
    }
    // ModelProto.doc_string = 6, metadata_props = 14 (StringStringEntryProto: key = 1,
    // value = 2).
    out.string(6, wrap.doc);
    for (key, value) in wrap.metadata {
        let mut entry = Message::default();
        entry.string(1, key).string(2, value);
        out.message(14, &entry);
    }
    Ok(out.0)
}

/// Height and width of the `[N, 3, H, W]` input `pixels` among a graph's fields.
fn input_size(graph_fields: &[Field]) -> Result<(usize, usize)> {
    let missing = || Error::Invalid("ONNX wrap: the backbone model has no image input".into());
    let info = graph_fields
        .iter()
        .filter(|f| f.number == 11)
        .find_map(|f| f.payload)
        .ok_or_else(missing)?;
    // ValueInfoProto.type (2) -> TypeProto.tensor_type (1) -> shape (2) -> dim (1)*.
    let sub = |bytes: &[u8], number: u64| -> Result<Vec<Vec<u8>>> {
        Ok(fields(bytes)?
            .into_iter()
            .filter(|f| f.number == number)
            .filter_map(|f| f.payload.map(<[u8]>::to_vec))
            .collect())
    };
    let one = |bytes: &[u8], number: u64| -> Result<Vec<u8>> {
        sub(bytes, number)?.into_iter().next().ok_or_else(missing)
    };
    let shape = one(&one(&one(info, 2)?, 1)?, 2)?;
    let mut dims = Vec::new();
    for dim in sub(&shape, 1)? {
        // Dimension.dim_value = 1 (a symbolic dimension has none).
        let value = fields(&dim)?
            .into_iter()
            .find(|f| f.number == 1)
            .and_then(|f| f.varint)
            .map(|v| v as usize);
        dims.push(value);
    }
    match dims.as_slice() {
        [_, Some(3), Some(h), Some(w)] => Ok((*h, *w)),
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_reading_the_pixels_is_renamed_and_nothing_else_changes() {
        let node = node_message(
            "Conv",
            &["pixels", "w", "pixels_x"],
            "v1",
            &[("group", Attr::Int(1))],
        );
        let renamed = rename_node_inputs(&node.0, "pixels", NORMALIZED).unwrap();
        let inputs: Vec<&[u8]> = fields(&renamed.0)
            .unwrap()
            .into_iter()
            .filter(|f| f.number == 1)
            .filter_map(|f| f.payload)
            .collect();
        assert_eq!(inputs, [NORMALIZED.as_bytes(), b"w", b"pixels_x"]);
        let others = |m: &[u8]| -> Vec<Vec<u8>> {
            fields(m)
                .unwrap()
                .into_iter()
                .filter(|f| f.number != 1)
                .map(|f| f.raw.to_vec())
                .collect()
        };
        assert_eq!(others(&node.0), others(&renamed.0));
        assert!(
            fields(&[0x0a, 0x05, b'a']).is_err(),
            "a truncated field is an error"
        );
    }

    #[test]
    fn varints_match_protobuf() {
        let mut m = Message::default();
        m.varint(1);
        m.varint(300);
        m.varint(u64::MAX);
        assert_eq!(&m.0[..3], &[0x01, 0xac, 0x02]);
        assert_eq!(m.0.len(), 3 + 10);
        let mut m = Message::default();
        m.int(1, -1);
        assert_eq!(m.0.len(), 1 + 10, "negative int64 is ten bytes");
        let mut m = Message::default();
        m.string(4, "Conv");
        assert_eq!(m.0, b"\x22\x04Conv");
    }
}
