//! The pure-Rust engine: interprets a (folded) [`Graph`] with burn tensors on the
//! `flex` CPU backend.

use burn::tensor::activation::relu;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData as BurnData};

use super::conv::DenseConv;
use super::pool;
use crate::backbone::graph::{Activation, Graph, Op, Shape};
use crate::error::{Error, Result};
use crate::weights::TensorMap;

/// A prepared step: the graph op plus its weights already on the device.
enum Step {
    Input,
    /// `groups == 1`: graft's own im2col + gemm ([`super::conv`]).
    DenseConv {
        input: usize,
        conv: DenseConv,
    },
    /// Grouped (depthwise) convolutions: burn's.
    Conv {
        input: usize,
        weight: Tensor<4>,
        bias: Option<Tensor<1>>,
        options: ConvOptions<2>,
        activation: Activation,
    },
    BatchNorm {
        input: usize,
        /// `gamma / sqrt(var + eps)` and `beta - mean * scale`, as `[1, C, 1, 1]`.
        scale: Tensor<4>,
        shift: Tensor<4>,
    },
    Activation {
        input: usize,
        activation: Activation,
    },
    Add {
        a: usize,
        b: usize,
    },
    /// graft's pooling ([`super::pool`]), as the dense convolution.
    MaxPool {
        input: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
    },
    AvgPool {
        input: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    },
    GlobalAvgPool {
        input: usize,
    },
    Flatten {
        input: usize,
    },
    Concat {
        inputs: Vec<usize>,
    },
    ChannelAffine {
        input: usize,
        scale: Tensor<4>,
        shift: Tensor<4>,
    },
    Linear {
        input: usize,
        weight_t: Tensor<2>,
        bias: Tensor<2>,
    },
}

enum Val {
    Map(Tensor<4>),
    Flat(Tensor<2>),
}

fn clone_val(v: &Val) -> Val {
    match v {
        Val::Map(t) => Val::Map(t.clone()),
        Val::Flat(t) => Val::Flat(t.clone()),
    }
}

/// A backbone ready to run on a burn device.
pub struct BurnNet {
    steps: Vec<Step>,
    last_use: Vec<usize>,
    features: usize,
    logits: usize,
    input: [usize; 3],
    device: Device,
}

/// The outputs graft uses, row-major.
#[derive(Debug, Clone)]
pub struct Outputs {
    /// `[batch, D]`.
    pub features: Vec<f32>,
    /// `[batch, 1000]`.
    pub logits: Vec<f32>,
}

fn tensor<const D: usize>(
    tensors: &TensorMap,
    key: &str,
    shape: [usize; D],
    device: &Device,
) -> Result<Tensor<D>> {
    Ok(Tensor::from_data(
        BurnData::new(values(tensors, key, shape)?, shape),
        device,
    ))
}

/// The values of weight `key`, checked against `shape`.
fn values<const D: usize>(tensors: &TensorMap, key: &str, shape: [usize; D]) -> Result<Vec<f32>> {
    let t = tensors
        .get(key)
        .ok_or_else(|| Error::Invalid(format!("missing weight '{key}'")))?;
    if t.data.len() != shape.iter().product::<usize>() {
        return Err(Error::Invalid(format!(
            "weight '{key}' has {} values, expected shape {shape:?}",
            t.data.len()
        )));
    }
    Ok(t.data.clone())
}

/// A map's values, row-major, and its `[batch, C, H, W]`.
fn values_of(map: Tensor<4>) -> Result<(Vec<f32>, [usize; 4])> {
    let shape = map.dims();
    let values = map
        .into_data()
        .try_into_vec::<f32>()
        .map_err(|e| Error::Engine(format!("{e:?}")))?;
    Ok((values, shape))
}

fn per_channel(values: Vec<f32>, device: &Device) -> Tensor<4> {
    let c = values.len();
    Tensor::from_data(BurnData::new(values, [1, c, 1, 1]), device)
}

fn activate<const D: usize>(x: Tensor<D>, activation: Activation) -> Tensor<D> {
    match activation {
        Activation::None => x,
        Activation::Relu => relu(x),
        Activation::Relu6 => relu(x).clamp_max(6.0),
    }
}

impl BurnNet {
    /// Prepares `graph` (best already folded) with `tensors` on `device`.
    pub fn new(graph: &Graph, tensors: &TensorMap, device: Device) -> Result<BurnNet> {
        let mut steps = Vec::with_capacity(graph.nodes.len());
        for node in &graph.nodes {
            let step = match &node.op {
                Op::Input => Step::Input,
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
                    let out = node.shape.channels();
                    if *groups == 1 {
                        let weight = values(
                            tensors,
                            &format!("{key}.weight"),
                            [out, in_ch, kernel[0], kernel[1]],
                        )?;
                        let bias = if *bias {
                            Some(values(tensors, &format!("{key}.bias"), [out])?)
                        } else {
                            None
                        };
                        steps.push(Step::DenseConv {
                            input: input.0,
                            conv: DenseConv::new(
                                weight,
                                bias,
                                in_ch,
                                *kernel,
                                *stride,
                                *padding,
                                *activation,
                            ),
                        });
                        continue;
                    }
                    let weight = tensor(
                        tensors,
                        &format!("{key}.weight"),
                        [out, in_ch / groups, kernel[0], kernel[1]],
                        &device,
                    )?;
                    let bias = if *bias {
                        Some(tensor(tensors, &format!("{key}.bias"), [out], &device)?)
                    } else {
                        None
                    };
                    Step::Conv {
                        input: input.0,
                        weight,
                        bias,
                        options: ConvOptions::new_with_padding(*stride, *padding, [1, 1], *groups),
                        activation: *activation,
                    }
                }
                Op::BatchNorm { input, key, eps } => {
                    let get = |name: &str| -> Result<Vec<f32>> {
                        let k = format!("{key}.{name}");
                        tensors
                            .get(&k)
                            .map(|t| t.data.clone())
                            .ok_or_else(|| Error::Invalid(format!("missing weight '{k}'")))
                    };
                    let (gamma, beta, mean, var) = (
                        get("weight")?,
                        get("bias")?,
                        get("running_mean")?,
                        get("running_var")?,
                    );
                    let scale: Vec<f32> = gamma
                        .iter()
                        .zip(&var)
                        .map(|(g, v)| g / (v + eps).sqrt())
                        .collect();
                    let shift: Vec<f32> = beta
                        .iter()
                        .zip(&mean)
                        .zip(&scale)
                        .map(|((b, m), s)| b - m * s)
                        .collect();
                    Step::BatchNorm {
                        input: input.0,
                        scale: per_channel(scale, &device),
                        shift: per_channel(shift, &device),
                    }
                }
                Op::Activation { input, activation } => Step::Activation {
                    input: input.0,
                    activation: *activation,
                },
                Op::Add { a, b } => Step::Add { a: a.0, b: b.0 },
                Op::MaxPool {
                    input,
                    kernel,
                    stride,
                } => Step::MaxPool {
                    input: input.0,
                    kernel: *kernel,
                    stride: *stride,
                },
                Op::AvgPool {
                    input,
                    kernel,
                    stride,
                    padding,
                } => Step::AvgPool {
                    input: input.0,
                    kernel: *kernel,
                    stride: *stride,
                    padding: *padding,
                },
                Op::GlobalAvgPool { input } => Step::GlobalAvgPool { input: input.0 },
                Op::Flatten { input } => Step::Flatten { input: input.0 },
                Op::Concat { inputs } => Step::Concat {
                    inputs: inputs.iter().map(|v| v.0).collect(),
                },
                Op::ChannelAffine {
                    input,
                    scale,
                    shift,
                } => Step::ChannelAffine {
                    input: input.0,
                    scale: per_channel(scale.clone(), &device),
                    shift: per_channel(shift.clone(), &device),
                },
                Op::Linear { input, key } => {
                    let in_len = graph.shape(*input).channels();
                    let out = node.shape.channels();
                    let weight: Tensor<2> =
                        tensor(tensors, &format!("{key}.weight"), [out, in_len], &device)?;
                    let bias: Tensor<1> = tensor(tensors, &format!("{key}.bias"), [out], &device)?;
                    Step::Linear {
                        input: input.0,
                        weight_t: weight.transpose(),
                        bias: bias.reshape([1, out]),
                    }
                }
            };
            steps.push(step);
        }
        let input = match graph.input_shape() {
            Shape::Map {
                channels,
                height,
                width,
            } => [*channels, *height, *width],
            Shape::Flat { len } => [*len, 1, 1],
        };
        Ok(BurnNet {
            steps,
            last_use: graph.last_uses(),
            features: graph.features.0,
            logits: graph.logits.0,
            input,
            device,
        })
    }

    /// Input shape without the batch: `[3, H, W]`.
    pub fn input_shape(&self) -> [usize; 3] {
        self.input
    }

    /// Images `[batch, 3, H, W]` -> (features `[batch, D]`, logits `[batch, 1000]`).
    ///
    /// Errors only if the graph is malformed (a definition bug), never on input values.
    pub fn forward(&self, pixels: Tensor<4>) -> Result<(Tensor<2>, Tensor<2>)> {
        let malformed = |what: &str| Error::Engine(format!("malformed graph: {what}"));
        let mut values: Vec<Option<Val>> = (0..self.steps.len()).map(|_| None).collect();
        // A value still read later is cloned (cheap: burn tensors share storage); at its
        // last use it is moved out, freeing its memory as early as possible.
        let take_map = |values: &mut Vec<Option<Val>>, i: usize, now: usize| -> Result<Tensor<4>> {
            let slot = if self.last_use[i] > now {
                values[i].as_ref().map(clone_val)
            } else {
                values[i].take()
            };
            match slot {
                Some(Val::Map(t)) => Ok(t),
                _ => Err(malformed("a spatial op reads a missing or flat value")),
            }
        };
        let mut pixels = Some(pixels);
        for (now, step) in self.steps.iter().enumerate() {
            let out = match step {
                Step::Input => Val::Map(pixels.take().ok_or_else(|| malformed("two inputs"))?),
                Step::DenseConv { input, conv } => {
                    let (x, [n, _, h, w]) = values_of(take_map(&mut values, *input, now)?)?;
                    let (y, [oh, ow]) = conv.forward(&x, n, [h, w]);
                    Val::Map(self.map(y, [n, conv.out_channels(), oh, ow]))
                }
                Step::Conv {
                    input,
                    weight,
                    bias,
                    options,
                    activation,
                } => {
                    let x = take_map(&mut values, *input, now)?;
                    Val::Map(activate(
                        conv2d(x, weight.clone(), bias.clone(), options.clone()),
                        *activation,
                    ))
                }
                Step::BatchNorm {
                    input,
                    scale,
                    shift,
                }
                | Step::ChannelAffine {
                    input,
                    scale,
                    shift,
                } => {
                    let x = take_map(&mut values, *input, now)?;
                    Val::Map(x * scale.clone() + shift.clone())
                }
                Step::Activation { input, activation } => {
                    match values[*input].as_ref().map(clone_val) {
                        Some(Val::Flat(t)) => Val::Flat(activate(t, *activation)),
                        _ => Val::Map(activate(take_map(&mut values, *input, now)?, *activation)),
                    }
                }
                Step::Add { a, b } => {
                    let x = take_map(&mut values, *a, now)?;
                    let y = take_map(&mut values, *b, now)?;
                    Val::Map(x + y)
                }
                Step::MaxPool {
                    input,
                    kernel,
                    stride,
                } => {
                    let (x, [n, c, h, w]) = values_of(take_map(&mut values, *input, now)?)?;
                    let (y, [oh, ow]) = pool::max_pool(&x, n * c, [h, w], *kernel, *stride);
                    Val::Map(self.map(y, [n, c, oh, ow]))
                }
                Step::AvgPool {
                    input,
                    kernel,
                    stride,
                    padding,
                } => {
                    let (x, [n, c, h, w]) = values_of(take_map(&mut values, *input, now)?)?;
                    let (y, [oh, ow]) =
                        pool::avg_pool(&x, n * c, [h, w], *kernel, *stride, *padding);
                    Val::Map(self.map(y, [n, c, oh, ow]))
                }
                Step::GlobalAvgPool { input } => {
                    let x = take_map(&mut values, *input, now)?;
                    let [n, c, _, _] = x.dims();
                    Val::Flat(x.mean_dim(3).mean_dim(2).reshape([n, c]))
                }
                Step::Flatten { input } => {
                    let x = take_map(&mut values, *input, now)?;
                    let [n, c, h, w] = x.dims();
                    Val::Flat(x.reshape([n, c * h * w]))
                }
                Step::Concat { inputs } => {
                    let parts = inputs
                        .iter()
                        .map(|i| take_map(&mut values, *i, now))
                        .collect::<Result<Vec<_>>>()?;
                    Val::Map(Tensor::cat(parts, 1))
                }
                Step::Linear {
                    input,
                    weight_t,
                    bias,
                } => match values[*input].as_ref() {
                    Some(Val::Flat(t)) => {
                        Val::Flat(t.clone().matmul(weight_t.clone()) + bias.clone())
                    }
                    _ => return Err(malformed("a linear layer reads a spatial value")),
                },
            };
            values[now] = Some(out);
        }
        let flat = |v: &Option<Val>| match v {
            Some(Val::Flat(t)) => Ok(t.clone()),
            _ => Err(malformed("features and logits must be flat")),
        };
        Ok((flat(&values[self.features])?, flat(&values[self.logits])?))
    }

    /// `values` `[batch, C, H, W]` row-major as a tensor on this net's device.
    fn map(&self, values: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
        Tensor::from_data(BurnData::new(values, shape), &self.device)
    }

    /// Runs `batch` preprocessed images (`[batch, 3, H, W]` row-major) and reads the
    /// outputs back.
    pub fn run(&self, pixels: Vec<f32>, batch: usize) -> Result<Outputs> {
        let [c, h, w] = self.input;
        if pixels.len() != batch * c * h * w {
            return Err(Error::Engine(format!(
                "expected {batch}x{c}x{h}x{w} input values, got {}",
                pixels.len()
            )));
        }
        let input = Tensor::from_data(BurnData::new(pixels, [batch, c, h, w]), &self.device);
        let (features, logits) = self.forward(input)?;
        let read = |t: Tensor<2>| -> Result<Vec<f32>> {
            t.into_data()
                .try_to_vec::<f32>()
                .map_err(|e| Error::Engine(format!("{e:?}")))
        };
        Ok(Outputs {
            features: read(features)?,
            logits: read(logits)?,
        })
    }
}
