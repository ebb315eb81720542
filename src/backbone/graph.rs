//! A small graph IR that each network is written against once.
//!
//! A network definition (`efficientnet_lite.rs`, `inception_v3.rs`) calls a
//! [`GraphBuilder`] to record its layers; engines then consume the resulting [`Graph`]:
//! the burn engine interprets it with tensors, the ONNX exporter serializes it. That is
//! what keeps one definition per architecture. The builder tracks every value's shape,
//! so TF "SAME" padding is resolved to explicit (possibly asymmetric) padding at build
//! time, exactly as the reference's `Conv2dStaticSamePadding` does.
//!
//! Parameter names are the reference checkpoint's keys, verbatim.

use crate::error::{Error, Result};

/// Index of a node's output in the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Value(pub usize);

/// Spatial padding of a convolution or pooling window.
#[derive(Clone, Copy, Debug)]
pub enum Padding {
    /// `(begin, end)` for height, then width.
    Explicit([(usize, usize); 2]),
    /// TensorFlow's "SAME": output = ceil(input / stride), extra padding at the end.
    Same,
}

impl Padding {
    pub fn symmetric(h: usize, w: usize) -> Padding {
        Padding::Explicit([(h, h), (w, w)])
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    Relu6,
}

#[derive(Clone, Debug)]
pub enum Op {
    /// Images `[batch, channels, height, width]`.
    Input,
    /// `key.weight` `[out, in / groups, kh, kw]`, and `key.bias` `[out]` when `bias`.
    Conv {
        input: Value,
        key: String,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [(usize, usize); 2],
        groups: usize,
        bias: bool,
        activation: Activation,
    },
    /// Inference-mode batch norm with `key.{weight,bias,running_mean,running_var}`.
    BatchNorm {
        input: Value,
        key: String,
        eps: f32,
    },
    Activation {
        input: Value,
        activation: Activation,
    },
    Add {
        a: Value,
        b: Value,
    },
    MaxPool {
        input: Value,
        kernel: [usize; 2],
        stride: [usize; 2],
    },
    /// Average pooling; padded zeros count in the denominator (PyTorch's default).
    AvgPool {
        input: Value,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    },
    /// Mean over height and width: `[batch, C, H, W]` -> `[batch, C]`.
    GlobalAvgPool {
        input: Value,
    },
    /// `[batch, C, H, W]` -> `[batch, C * H * W]`, row-major: the output of a backbone cut
    /// below its pooling (see [`Graph::lower_part`]).
    Flatten {
        input: Value,
    },
    /// Concatenation along channels.
    Concat {
        inputs: Vec<Value>,
    },
    /// `x * scale[c] + shift[c]` per channel (torchvision Inception's `transform_input`).
    ChannelAffine {
        input: Value,
        scale: Vec<f32>,
        shift: Vec<f32>,
    },
    /// `key.weight` `[out, in]`, `key.bias` `[out]`: `[batch, in]` -> `[batch, out]`.
    Linear {
        input: Value,
        key: String,
    },
}

/// Shape of a value without the batch dimension: `[C, H, W]`, or `[C]` after pooling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shape {
    Map {
        channels: usize,
        height: usize,
        width: usize,
    },
    Flat {
        len: usize,
    },
}

impl Shape {
    /// Channels of a map, length of a flat vector.
    pub fn channels(&self) -> usize {
        match self {
            Shape::Map { channels, .. } => *channels,
            Shape::Flat { len } => *len,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub shape: Shape,
}

/// A recorded network: nodes in execution order, plus the two outputs graft uses.
#[derive(Clone, Debug)]
pub struct Graph {
    pub nodes: Vec<Node>,
    /// Pooled feature vector `[batch, D]` (the "bottleneck").
    pub features: Value,
    /// ImageNet logits `[batch, 1000]`.
    pub logits: Value,
}

/// A named parameter and the shape the graph expects for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub key: String,
    pub shape: Vec<usize>,
}

impl Graph {
    pub fn input_shape(&self) -> &Shape {
        &self.nodes[0].shape
    }

    pub fn shape(&self, value: Value) -> &Shape {
        &self.nodes[value.0].shape
    }

    /// Every parameter the graph reads, in execution order, with its expected shape.
    pub fn parameters(&self) -> Vec<ParamSpec> {
        let mut params = Vec::new();
        let mut push = |key: String, shape: Vec<usize>| params.push(ParamSpec { key, shape });
        for node in &self.nodes {
            match &node.op {
                Op::Conv {
                    input,
                    key,
                    kernel,
                    groups,
                    bias,
                    ..
                } => {
                    let in_ch = self.shape(*input).channels();
                    let out = node.shape.channels();
                    push(
                        format!("{key}.weight"),
                        vec![out, in_ch / groups, kernel[0], kernel[1]],
                    );
                    if *bias {
                        push(format!("{key}.bias"), vec![out]);
                    }
                }
                Op::BatchNorm { key, .. } => {
                    let c = node.shape.channels();
                    for name in ["weight", "bias", "running_mean", "running_var"] {
                        push(format!("{key}.{name}"), vec![c]);
                    }
                }
                Op::Linear { input, key } => {
                    let in_len = self.shape(*input).channels();
                    let out = node.shape.channels();
                    push(format!("{key}.weight"), vec![out, in_len]);
                    push(format!("{key}.bias"), vec![out]);
                }
                _ => {}
            }
        }
        params
    }

    /// For each node, the index of the last node that reads it (itself if none), so
    /// engines can free intermediate values as soon as possible.
    pub fn last_uses(&self) -> Vec<usize> {
        let mut last: Vec<usize> = (0..self.nodes.len()).collect();
        for (i, node) in self.nodes.iter().enumerate() {
            for input in node.op.inputs() {
                last[input.0] = last[input.0].max(i);
            }
        }
        for out in [self.features, self.logits] {
            last[out.0] = usize::MAX;
        }
        last
    }

    /// The network below `cut`: nodes up to and including it, its output flattened as
    /// both `features` and `logits`, so every engine runs it as it runs a whole backbone.
    pub fn lower_part(&self, cut: Value) -> Graph {
        let mut nodes = self.nodes[..=cut.0].to_vec();
        let (channels, height, width) = match self.shape(cut) {
            Shape::Map {
                channels,
                height,
                width,
            } => (*channels, *height, *width),
            Shape::Flat { len } => (*len, 1, 1),
        };
        nodes.push(Node {
            op: Op::Flatten { input: cut },
            shape: Shape::Flat {
                len: channels * height * width,
            },
        });
        let out = Value(nodes.len() - 1);
        Graph {
            nodes,
            features: out,
            logits: out,
        }
    }
}

impl Op {
    pub fn inputs(&self) -> Vec<Value> {
        match self {
            Op::Input => vec![],
            Op::Conv { input, .. }
            | Op::BatchNorm { input, .. }
            | Op::Activation { input, .. }
            | Op::MaxPool { input, .. }
            | Op::AvgPool { input, .. }
            | Op::GlobalAvgPool { input }
            | Op::Flatten { input }
            | Op::ChannelAffine { input, .. }
            | Op::Linear { input, .. } => vec![*input],
            Op::Add { a, b } => vec![*a, *b],
            Op::Concat { inputs } => inputs.clone(),
        }
    }
}

/// Records a network's layers, tracking shapes as it goes.
pub struct GraphBuilder {
    nodes: Vec<Node>,
}

fn window_out(size: usize, kernel: usize, stride: usize, pad: usize) -> usize {
    (size + pad).saturating_sub(kernel) / stride + 1
}

/// TF "SAME" padding for one dimension: `(begin, end)`, the extra pixel at the end.
fn same_padding(size: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = size.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(size);
    (total / 2, total - total / 2)
}

impl GraphBuilder {
    /// Starts a graph whose input is `[batch, channels, height, width]`.
    pub fn new(channels: usize, height: usize, width: usize) -> (GraphBuilder, Value) {
        let builder = GraphBuilder {
            nodes: vec![Node {
                op: Op::Input,
                shape: Shape::Map {
                    channels,
                    height,
                    width,
                },
            }],
        };
        (builder, Value(0))
    }

    fn push(&mut self, op: Op, shape: Shape) -> Value {
        self.nodes.push(Node { op, shape });
        Value(self.nodes.len() - 1)
    }

    fn map_shape(&self, v: Value) -> (usize, usize, usize) {
        match self.nodes[v.0].shape {
            Shape::Map {
                channels,
                height,
                width,
            } => (channels, height, width),
            // Definitions are static code; a flat value fed to a spatial op is a bug in
            // the definition, caught by the graph tests for every backbone.
            Shape::Flat { len } => (len, 1, 1),
        }
    }

    /// A convolution without activation; see [`GraphBuilder::conv_act`].
    #[allow(clippy::too_many_arguments)]
    pub fn conv(
        &mut self,
        input: Value,
        key: &str,
        out_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: Padding,
        groups: usize,
        bias: bool,
    ) -> Value {
        let (_, h, w) = self.map_shape(input);
        let padding = match padding {
            Padding::Explicit(p) => p,
            Padding::Same => [
                same_padding(h, kernel[0], stride[0]),
                same_padding(w, kernel[1], stride[1]),
            ],
        };
        let shape = Shape::Map {
            channels: out_channels,
            height: window_out(h, kernel[0], stride[0], padding[0].0 + padding[0].1),
            width: window_out(w, kernel[1], stride[1], padding[1].0 + padding[1].1),
        };
        self.push(
            Op::Conv {
                input,
                key: key.to_string(),
                kernel,
                stride,
                padding,
                groups,
                bias,
                activation: Activation::None,
            },
            shape,
        )
    }

    pub fn batch_norm(&mut self, input: Value, key: &str, eps: f32) -> Value {
        let shape = self.nodes[input.0].shape.clone();
        self.push(
            Op::BatchNorm {
                input,
                key: key.to_string(),
                eps,
            },
            shape,
        )
    }

    pub fn activation(&mut self, input: Value, activation: Activation) -> Value {
        if activation == Activation::None {
            return input;
        }
        let shape = self.nodes[input.0].shape.clone();
        self.push(Op::Activation { input, activation }, shape)
    }

    pub fn add(&mut self, a: Value, b: Value) -> Value {
        let shape = self.nodes[a.0].shape.clone();
        self.push(Op::Add { a, b }, shape)
    }

    pub fn max_pool(&mut self, input: Value, kernel: usize, stride: usize) -> Value {
        let (c, h, w) = self.map_shape(input);
        let shape = Shape::Map {
            channels: c,
            height: window_out(h, kernel, stride, 0),
            width: window_out(w, kernel, stride, 0),
        };
        self.push(
            Op::MaxPool {
                input,
                kernel: [kernel; 2],
                stride: [stride; 2],
            },
            shape,
        )
    }

    pub fn avg_pool(
        &mut self,
        input: Value,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Value {
        let (c, h, w) = self.map_shape(input);
        let shape = Shape::Map {
            channels: c,
            height: window_out(h, kernel, stride, 2 * padding),
            width: window_out(w, kernel, stride, 2 * padding),
        };
        self.push(
            Op::AvgPool {
                input,
                kernel: [kernel; 2],
                stride: [stride; 2],
                padding: [padding; 2],
            },
            shape,
        )
    }

    pub fn global_avg_pool(&mut self, input: Value) -> Value {
        let (c, _, _) = self.map_shape(input);
        self.push(Op::GlobalAvgPool { input }, Shape::Flat { len: c })
    }

    pub fn concat(&mut self, inputs: &[Value]) -> Value {
        let (_, h, w) = self.map_shape(inputs[0]);
        let channels = inputs.iter().map(|v| self.map_shape(*v).0).sum();
        self.push(
            Op::Concat {
                inputs: inputs.to_vec(),
            },
            Shape::Map {
                channels,
                height: h,
                width: w,
            },
        )
    }

    pub fn channel_affine(&mut self, input: Value, scale: Vec<f32>, shift: Vec<f32>) -> Value {
        let shape = self.nodes[input.0].shape.clone();
        self.push(
            Op::ChannelAffine {
                input,
                scale,
                shift,
            },
            shape,
        )
    }

    pub fn linear(&mut self, input: Value, key: &str, out: usize) -> Value {
        self.push(
            Op::Linear {
                input,
                key: key.to_string(),
            },
            Shape::Flat { len: out },
        )
    }

    pub fn finish(self, features: Value, logits: Value) -> Graph {
        Graph {
            nodes: self.nodes,
            features,
            logits,
        }
    }
}

/// Checks that `tensors` holds every parameter of `graph` with the expected shape; the
/// error names the first missing or misshapen key.
pub fn check_parameters(
    graph: &Graph,
    shape_of: impl Fn(&str) -> Option<Vec<usize>>,
    origin: &str,
) -> Result<()> {
    for param in graph.parameters() {
        match shape_of(&param.key) {
            None => {
                return Err(Error::Invalid(format!(
                    "{origin}: missing weight '{}' (expected shape {:?}); the file is not a checkpoint of this backbone",
                    param.key, param.shape
                )))
            }
            Some(shape) if shape != param.shape => {
                return Err(Error::Invalid(format!(
                    "{origin}: weight '{}' has shape {:?}, expected {:?}; the file is not a checkpoint of this backbone",
                    param.key, shape, param.shape
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // 224 input, 3x3 stride 2: output 112, total pad 1, all at the end.
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        // 5x5 stride 2 on 28: out 14, total pad 3 -> (1, 2).
        assert_eq!(same_padding(28, 5, 2), (1, 2));
        // stride 1 keeps size: k=5 -> (2, 2).
        assert_eq!(same_padding(14, 5, 1), (2, 2));
        assert_eq!(same_padding(7, 1, 1), (0, 0));
    }

    #[test]
    fn builder_tracks_shapes_and_parameters() {
        let (mut g, x) = GraphBuilder::new(3, 8, 8);
        let c = g.conv(x, "c", 4, [3, 3], [2, 2], Padding::Same, 1, false);
        let b = g.batch_norm(c, "bn", 1e-3);
        let p = g.global_avg_pool(b);
        let l = g.linear(p, "fc", 10);
        let graph = g.finish(p, l);
        assert_eq!(
            graph.shape(c),
            &Shape::Map {
                channels: 4,
                height: 4,
                width: 4
            }
        );
        let keys: Vec<_> = graph
            .parameters()
            .into_iter()
            .map(|p| (p.key, p.shape))
            .collect();
        assert_eq!(keys[0], ("c.weight".to_string(), vec![4, 3, 3, 3]));
        assert_eq!(keys.len(), 1 + 4 + 2);
        assert_eq!(keys[5], ("fc.weight".to_string(), vec![10, 4]));
    }
}
