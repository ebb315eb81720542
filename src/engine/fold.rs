//! Inference-time graph rewriting, shared by every engine: batch norm folded into the
//! preceding convolution's weights and bias, and activations fused into the convolution
//! that feeds them. Saves a full pass over each feature map per layer.

use std::collections::HashMap;

use crate::backbone::graph::{Activation, Graph, Node, Op, Value};
use crate::error::{Error, Result};
use crate::weights::{TensorData, TensorMap};

fn get<'a>(tensors: &'a TensorMap, key: &str) -> Result<&'a TensorData> {
    tensors
        .get(key)
        .ok_or_else(|| Error::Invalid(format!("missing weight '{key}'")))
}

/// Returns an equivalent graph without `BatchNorm` nodes that follow a convolution, with
/// activations fused into convolutions, and the tensors it needs.
pub fn fold_for_inference(graph: &Graph, tensors: &TensorMap) -> Result<(Graph, TensorMap)> {
    let mut readers = vec![0usize; graph.nodes.len()];
    for node in &graph.nodes {
        for input in node.op.inputs() {
            readers[input.0] += 1;
        }
    }
    for out in [graph.features, graph.logits] {
        readers[out.0] += 1;
    }

    let mut out_nodes: Vec<Node> = Vec::new();
    let mut out_tensors = TensorMap::new();
    // Old value index -> new value.
    let mut remap: HashMap<usize, Value> = HashMap::new();
    let map = |remap: &HashMap<usize, Value>, v: Value| remap[&v.0];

    for (i, node) in graph.nodes.iter().enumerate() {
        let new_op = match &node.op {
            Op::BatchNorm { input, key, eps } => {
                let producer = remap[&input.0].0;
                let foldable = readers[input.0] == 1
                    && matches!(
                        out_nodes[producer].op,
                        Op::Conv {
                            activation: Activation::None,
                            ..
                        }
                    );
                if foldable {
                    fold_into_conv(
                        &mut out_nodes[producer],
                        key,
                        *eps,
                        tensors,
                        &mut out_tensors,
                    )?;
                    remap.insert(i, Value(producer));
                    continue;
                }
                for name in ["weight", "bias", "running_mean", "running_var"] {
                    let k = format!("{key}.{name}");
                    out_tensors.insert(k.clone(), get(tensors, &k)?.clone());
                }
                Op::BatchNorm {
                    input: map(&remap, *input),
                    key: key.clone(),
                    eps: *eps,
                }
            }
            Op::Activation { input, activation } => {
                let producer = remap[&input.0].0;
                if readers[input.0] == 1 {
                    if let Op::Conv {
                        activation: a @ Activation::None,
                        ..
                    } = &mut out_nodes[producer].op
                    {
                        *a = *activation;
                        remap.insert(i, Value(producer));
                        continue;
                    }
                }
                Op::Activation {
                    input: map(&remap, *input),
                    activation: *activation,
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
                let wkey = format!("{key}.weight");
                out_tensors.insert(wkey.clone(), get(tensors, &wkey)?.clone());
                if *bias {
                    let bkey = format!("{key}.bias");
                    out_tensors.insert(bkey.clone(), get(tensors, &bkey)?.clone());
                }
                Op::Conv {
                    input: map(&remap, *input),
                    key: key.clone(),
                    kernel: *kernel,
                    stride: *stride,
                    padding: *padding,
                    groups: *groups,
                    bias: *bias,
                    activation: *activation,
                }
            }
            Op::Linear { input, key } => {
                for name in ["weight", "bias"] {
                    let k = format!("{key}.{name}");
                    out_tensors.insert(k.clone(), get(tensors, &k)?.clone());
                }
                Op::Linear {
                    input: map(&remap, *input),
                    key: key.clone(),
                }
            }
            other => remap_inputs(other, &remap),
        };
        out_nodes.push(Node {
            op: new_op,
            shape: node.shape.clone(),
        });
        remap.insert(i, Value(out_nodes.len() - 1));
    }
    let graph = Graph {
        nodes: out_nodes,
        features: remap[&graph.features.0],
        logits: remap[&graph.logits.0],
    };
    Ok((graph, out_tensors))
}

fn remap_inputs(op: &Op, remap: &HashMap<usize, Value>) -> Op {
    let m = |v: &Value| remap[&v.0];
    match op {
        Op::Input => Op::Input,
        Op::Add { a, b } => Op::Add { a: m(a), b: m(b) },
        Op::MaxPool {
            input,
            kernel,
            stride,
        } => Op::MaxPool {
            input: m(input),
            kernel: *kernel,
            stride: *stride,
        },
        Op::AvgPool {
            input,
            kernel,
            stride,
            padding,
        } => Op::AvgPool {
            input: m(input),
            kernel: *kernel,
            stride: *stride,
            padding: *padding,
        },
        Op::GlobalAvgPool { input } => Op::GlobalAvgPool { input: m(input) },
        Op::Flatten { input } => Op::Flatten { input: m(input) },
        Op::Concat { inputs } => Op::Concat {
            inputs: inputs.iter().map(m).collect(),
        },
        Op::ChannelAffine {
            input,
            scale,
            shift,
        } => Op::ChannelAffine {
            input: m(input),
            scale: scale.clone(),
            shift: shift.clone(),
        },
        // Parameterised ops and activations are handled by the caller.
        Op::Conv { .. } | Op::BatchNorm { .. } | Op::Activation { .. } | Op::Linear { .. } => {
            op.clone()
        }
    }
}

/// `w' = w * g / sqrt(v + eps)` per output channel, `b' = beta + (b - mean) * g / sqrt(v + eps)`,
/// computed in f64 so folding adds no error of its own beyond the final rounding.
fn fold_into_conv(
    conv: &mut Node,
    bn_key: &str,
    eps: f32,
    tensors: &TensorMap,
    out_tensors: &mut TensorMap,
) -> Result<()> {
    let Op::Conv { key, bias, .. } = &mut conv.op else {
        return Ok(());
    };
    let gamma = &get(tensors, &format!("{bn_key}.weight"))?.data;
    let beta = &get(tensors, &format!("{bn_key}.bias"))?.data;
    let mean = &get(tensors, &format!("{bn_key}.running_mean"))?.data;
    let var = &get(tensors, &format!("{bn_key}.running_var"))?.data;
    let wkey = format!("{key}.weight");
    let bkey = format!("{key}.bias");
    let weight = get(tensors, &wkey)?;
    let out = weight.shape[0];
    let per_out = weight.data.len() / out.max(1);
    let old_bias: Vec<f32> = if *bias {
        get(tensors, &bkey)?.data.clone()
    } else {
        vec![0.0; out]
    };
    let mut w = weight.data.clone();
    let mut b = vec![0f32; out];
    for o in 0..out {
        let s = f64::from(gamma[o]) / (f64::from(var[o]) + f64::from(eps)).sqrt();
        for v in &mut w[o * per_out..(o + 1) * per_out] {
            *v = (f64::from(*v) * s) as f32;
        }
        b[o] = (f64::from(beta[o]) + (f64::from(old_bias[o]) - f64::from(mean[o])) * s) as f32;
    }
    out_tensors.insert(
        wkey,
        TensorData {
            shape: weight.shape.clone(),
            data: w,
        },
    );
    out_tensors.insert(
        bkey,
        TensorData {
            shape: vec![out],
            data: b,
        },
    );
    *bias = true;
    Ok(())
}
