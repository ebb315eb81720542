//! The trainable top of a cut backbone on burn's autodiff: the graph's nodes above the
//! cut, interpreted unfolded so that gradients reach every convolution and batch-norm
//! scale and shift. Batch norm runs in inference mode: its running statistics are
//! constants, as Keras and PyTorch's `eval()` keep them when fine-tuning.

use burn::module::{Module, Param};
use burn::tensor::activation::relu;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData as BurnData};

use super::depthwise::{depthwise_conv2d, Geometry};
use super::relu6::relu6;
use super::Cut;
use crate::backbone::graph::{Activation, Op};
use crate::error::{Error, Result};
use crate::weights::{TensorData, TensorMap};

/// The parameters that train, each with its checkpoint key in `keys`.
#[derive(Module, Debug)]
pub struct TopParams {
    /// Convolution weights `[out, in / groups, kh, kw]`.
    pub convs: Vec<Param<Tensor<4>>>,
    /// Batch-norm `weight` (gamma) then `bias` (beta) of each batch norm, `[C]`.
    pub norms: Vec<Param<Tensor<1>>>,
}

/// A batch norm in inference mode: `x * scale + shift` per channel, where
/// `scale = gamma / sqrt(var + eps)` and `shift = beta - mean * scale`.
#[derive(Clone)]
struct Norm {
    /// Indices of gamma and beta in [`TopParams::norms`].
    gamma: usize,
    beta: usize,
    /// `1 / sqrt(var + eps)` and `mean`, constants.
    inv_std: Tensor<1>,
    mean: Tensor<1>,
}

impl Norm {
    /// `(scale, shift)`, `[C]` each, tracked through gamma and beta.
    fn affine(&self, params: &TopParams) -> (Tensor<1>, Tensor<1>) {
        let scale = params.norms[self.gamma].val() * self.inv_std.clone();
        let shift = params.norms[self.beta].val() - self.mean.clone() * scale.clone();
        (scale, shift)
    }
}

enum Step {
    Conv {
        input: usize,
        weight: usize,
        options: ConvOptions<2>,
        norm: Option<Norm>,
    },
    /// A 1x1 convolution of stride 1 without padding or groups, run as a batched matrix
    /// product `[out, in] x [in, H * W]`: the same numbers, and its backward pass is two
    /// more matrix products instead of burn-flex's general convolution gradients.
    Pointwise {
        input: usize,
        weight: usize,
        norm: Option<Norm>,
    },
    /// One filter per channel (`groups` = channels in = channels out), differentiated by
    /// [`depthwise_conv2d`]'s direct backward pass.
    Depthwise {
        input: usize,
        weight: usize,
        geometry: Geometry,
        norm: Option<Norm>,
    },
    BatchNorm {
        input: usize,
        norm: Norm,
    },
    /// A batch norm folded into the convolution that is its input's only consumer: its
    /// output is that convolution's.
    Folded {
        input: usize,
    },
    Activation {
        input: usize,
        activation: Activation,
    },
    Add {
        a: usize,
        b: usize,
    },
    GlobalAvgPool {
        input: usize,
    },
}

/// How the top is wired; the parameters live apart in [`TopParams`] so the optimizer sees
/// only them.
pub struct TopLayout {
    /// `(node index, step)` for every node above the cut up to the pooled features.
    steps: Vec<(usize, Step)>,
    cut: usize,
    /// Checkpoint keys of [`TopParams::convs`] and [`TopParams::norms`], in order.
    conv_keys: Vec<String>,
    norm_keys: Vec<String>,
    conv_shapes: Vec<[usize; 4]>,
    nodes: usize,
}

fn weight<'a>(tensors: &'a TensorMap, key: &str) -> Result<&'a TensorData> {
    tensors
        .get(key)
        .ok_or_else(|| Error::Invalid(format!("missing weight '{key}'")))
}

fn flat(device: &Device, values: Vec<f32>) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(BurnData::new(values, [n]), device)
}

/// A convolution kernel (`[out, ...]`, any rank) with `norm` folded in, each output
/// channel scaled, and the folded norm's shift for the bias.
fn fold<const D: usize>(
    kernel: Tensor<D>,
    norm: Option<&Norm>,
    params: &TopParams,
) -> (Tensor<D>, Option<Tensor<1>>) {
    match norm {
        Some(norm) => {
            let (scale, shift) = norm.affine(params);
            let mut per_channel = [1; D];
            per_channel[0] = scale.dims()[0];
            (kernel * scale.reshape(per_channel), Some(shift))
        }
        None => (kernel, None),
    }
}

fn activate<const D: usize>(x: Tensor<D>, activation: Activation) -> Tensor<D> {
    match activation {
        Activation::None => x,
        Activation::Relu => relu(x),
        Activation::Relu6 => relu6(x),
    }
}

/// One map of the top, channels last: `x` is `[batch * h * w, C]`.
#[derive(Clone)]
struct Map {
    x: Tensor<2>,
    h: usize,
    w: usize,
}

impl Map {
    fn c(&self) -> usize {
        self.x.dims()[1]
    }
}

/// `x` `[rows, C]` plus a per-channel shift, where there is one.
fn shifted(x: Tensor<2>, shift: Option<Tensor<1>>) -> Tensor<2> {
    match shift {
        Some(shift) => {
            let c = shift.dims()[0];
            x + shift.reshape([1, c])
        }
        None => x,
    }
}

fn read(t: Tensor<1>) -> Result<Vec<f32>> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| Error::Engine(format!("{e:?}")))
}

impl TopLayout {
    /// The top of `cut` with its initial parameters from `tensors` (the base weights).
    pub fn new(cut: &Cut, tensors: &TensorMap, device: &Device) -> Result<(TopLayout, TopParams)> {
        let graph = &cut.graph;
        let mut steps = Vec::new();
        let mut convs = Vec::new();
        let mut norms = Vec::new();
        let mut conv_keys = Vec::new();
        let mut norm_keys = Vec::new();
        let mut conv_shapes = Vec::new();
        let mut consumers = vec![0usize; graph.nodes.len()];
        for node in &graph.nodes {
            for v in node.op.inputs() {
                consumers[v.0] += 1;
            }
        }
        for (i, node) in graph.nodes.iter().enumerate().take(graph.features.0 + 1) {
            if i <= cut.at.0 {
                continue;
            }
            let step = match &node.op {
                Op::Conv {
                    input,
                    key,
                    stride,
                    padding,
                    groups,
                    bias,
                    activation,
                    ..
                } => {
                    if *bias || *activation != Activation::None {
                        // The Lite definitions have neither; the unfolded graph never fuses.
                        return Err(Error::Engine(format!(
                            "{key}: fine-tuning expects bias-free, unfused convolutions"
                        )));
                    }
                    let k = format!("{key}.weight");
                    let w = weight(tensors, &k)?;
                    let shape: [usize; 4] = w
                        .shape
                        .clone()
                        .try_into()
                        .map_err(|_| Error::Invalid(format!("weight '{k}' is not 4-d")))?;
                    convs.push(Param::from_tensor(Tensor::from_data(
                        BurnData::new(w.data.clone(), shape),
                        device,
                    )));
                    conv_keys.push(k);
                    conv_shapes.push(shape);
                    let pointwise = shape[2..] == [1, 1]
                        && *stride == [1, 1]
                        && *padding == [(0, 0); 2]
                        && *groups == 1;
                    let depthwise = *groups > 1 && shape[1] == 1 && shape[0] == *groups;
                    if pointwise {
                        Step::Pointwise {
                            input: input.0,
                            weight: convs.len() - 1,
                            norm: None,
                        }
                    } else if depthwise {
                        Step::Depthwise {
                            input: input.0,
                            weight: convs.len() - 1,
                            geometry: Geometry {
                                stride: *stride,
                                padding: *padding,
                            },
                            norm: None,
                        }
                    } else {
                        Step::Conv {
                            input: input.0,
                            weight: convs.len() - 1,
                            options: ConvOptions::new_with_padding(
                                *stride,
                                *padding,
                                [1, 1],
                                *groups,
                            ),
                            norm: None,
                        }
                    }
                }
                Op::BatchNorm { input, key, eps } => {
                    let get = |name: &str| weight(tensors, &format!("{key}.{name}"));
                    let var = &get("running_var")?.data;
                    let inv_std: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
                    for name in ["weight", "bias"] {
                        norms.push(Param::from_tensor(flat(device, get(name)?.data.clone())));
                        norm_keys.push(format!("{key}.{name}"));
                    }
                    let norm = Norm {
                        gamma: norms.len() - 2,
                        beta: norms.len() - 1,
                        inv_std: flat(device, inv_std),
                        mean: flat(device, get("running_mean")?.data.clone()),
                    };
                    // Fold into the convolution before it when nothing else reads that
                    // convolution's output (every batch norm of the Lite blocks): one
                    // multiply on the weights instead of one on every activation, forward
                    // and backward.
                    match steps.last_mut() {
                        Some((
                            conv_node,
                            Step::Conv {
                                norm: slot @ None, ..
                            }
                            | Step::Pointwise {
                                norm: slot @ None, ..
                            }
                            | Step::Depthwise {
                                norm: slot @ None, ..
                            },
                        )) if *conv_node == input.0 && consumers[input.0] == 1 => {
                            *slot = Some(norm);
                            Step::Folded { input: input.0 }
                        }
                        _ => Step::BatchNorm {
                            input: input.0,
                            norm,
                        },
                    }
                }
                Op::Activation { input, activation } => Step::Activation {
                    input: input.0,
                    activation: *activation,
                },
                Op::Add { a, b } => Step::Add { a: a.0, b: b.0 },
                Op::GlobalAvgPool { input } => Step::GlobalAvgPool { input: input.0 },
                other => {
                    return Err(Error::Engine(format!(
                        "fine-tuning cannot train a {other:?} node yet"
                    )))
                }
            };
            steps.push((i, step));
        }
        Ok((
            TopLayout {
                steps,
                cut: cut.at.0,
                conv_keys,
                norm_keys,
                conv_shapes,
                nodes: graph.nodes.len(),
            },
            TopParams { convs, norms },
        ))
    }

    /// Activations at the cut `[batch, C, H, W]` -> pooled features `[batch, D]`.
    ///
    /// Inside, every map is channels last, `[batch * H * W, C]`: a 1x1 convolution is then
    /// one matrix product over the whole batch (`[batch * H * W, in] x [in, out]`), forward
    /// and in both gradients, where channels first it was one small product per image and
    /// the weight gradient a sum of `batch` matrices. One epoch of `--fine-tune 6` on a
    /// quarter of the grocery photos: see docs/fine-tuning.md.
    pub fn forward(&self, params: &TopParams, cut: Tensor<4>) -> Result<Tensor<2>> {
        let malformed = || Error::Engine("malformed fine-tuning graph".into());
        let [n, c, h, w] = cut.dims();
        let mut maps: Vec<Option<Map>> = (0..self.nodes).map(|_| None).collect();
        maps[self.cut] = Some(Map {
            x: cut.permute([0, 2, 3, 1]).reshape([n * h * w, c]),
            h,
            w,
        });
        let get = |maps: &Vec<Option<Map>>, i: usize| maps[i].clone().ok_or_else(malformed);
        let mut pooled = None;
        for (i, step) in &self.steps {
            let out = match step {
                Step::Conv {
                    input,
                    weight,
                    options,
                    norm,
                } => {
                    let m = get(&maps, *input)?;
                    let (kernel, shift) = fold(params.convs[*weight].val(), norm.as_ref(), params);
                    let c = m.c();
                    let channels_first = m.x.reshape([n, m.h, m.w, c]).permute([0, 3, 1, 2]);
                    let y = conv2d(channels_first, kernel, shift, options.clone());
                    let [_, out, oh, ow] = y.dims();
                    Map {
                        x: y.permute([0, 2, 3, 1]).reshape([n * oh * ow, out]),
                        h: oh,
                        w: ow,
                    }
                }
                Step::Depthwise {
                    input,
                    weight,
                    geometry,
                    norm,
                } => {
                    let m = get(&maps, *input)?;
                    let c = m.c();
                    let (kernel, shift) = fold(params.convs[*weight].val(), norm.as_ref(), params);
                    let y = depthwise_conv2d(m.x.reshape([n, m.h, m.w, c]), kernel, *geometry);
                    let [_, oh, ow, _] = y.dims();
                    let y = y.reshape([n * oh * ow, c]);
                    Map {
                        x: shifted(y, shift),
                        h: oh,
                        w: ow,
                    }
                }
                Step::Pointwise {
                    input,
                    weight,
                    norm,
                } => {
                    let m = get(&maps, *input)?;
                    let [out, ..] = self.conv_shapes[*weight];
                    let kernel = params.convs[*weight].val().reshape([out, m.c()]);
                    let (kernel, shift) = fold(kernel, norm.as_ref(), params);
                    Map {
                        x: shifted(m.x.matmul(kernel.transpose()), shift),
                        ..m
                    }
                }
                Step::BatchNorm { input, norm } => {
                    let m = get(&maps, *input)?;
                    let (scale, shift) = norm.affine(params);
                    let c = scale.dims()[0];
                    Map {
                        x: shifted(m.x * scale.reshape([1, c]), Some(shift)),
                        ..m
                    }
                }
                Step::Folded { input } => get(&maps, *input)?,
                Step::Activation { input, activation } => {
                    let m = get(&maps, *input)?;
                    Map {
                        x: activate(m.x, *activation),
                        ..m
                    }
                }
                Step::Add { a, b } => {
                    let (a, b) = (get(&maps, *a)?, get(&maps, *b)?);
                    Map { x: a.x + b.x, ..a }
                }
                Step::GlobalAvgPool { input } => {
                    let m = get(&maps, *input)?;
                    let c = m.c();
                    pooled = Some(m.x.reshape([n, m.h * m.w, c]).mean_dim(1).reshape([n, c]));
                    continue;
                }
            };
            maps[*i] = Some(out);
        }
        pooled.ok_or_else(malformed)
    }

    /// Checkpoint keys of [`TopParams::convs`], in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.conv_keys.iter()
    }

    /// Checkpoint keys of [`TopParams::norms`], in order.
    pub fn norm_keys(&self) -> impl Iterator<Item = &String> {
        self.norm_keys.iter()
    }

    /// The trained tensors by checkpoint key.
    pub fn tensors(&self, params: &TopParams) -> Result<TensorMap> {
        let mut out = TensorMap::new();
        for ((key, shape), p) in self
            .conv_keys
            .iter()
            .zip(&self.conv_shapes)
            .zip(&params.convs)
        {
            let n: usize = shape.iter().product();
            out.insert(
                key.clone(),
                TensorData {
                    shape: shape.to_vec(),
                    data: read(p.val().reshape([n]))?,
                },
            );
        }
        for (key, p) in self.norm_keys.iter().zip(&params.norms) {
            let data = read(p.val())?;
            out.insert(
                key.clone(),
                TensorData {
                    shape: vec![data.len()],
                    data,
                },
            );
        }
        Ok(out)
    }
}
