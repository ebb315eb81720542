//! EfficientNet-Lite0/1/2, as `efficientnet_lite_pytorch` defines them (the code that
//! goes with the published PyTorch weights): MBConv blocks without squeeze-excite, ReLU6,
//! TF "SAME" padding, BatchNorm eps 1e-3, stem (32) and head (1280) not scaled, first and
//! last stage repeats not scaled. Keys follow `efficientnet_pytorch`: `_conv_stem`,
//! `_blocks.N._depthwise_conv`, `_bn0`, ...

use super::graph::{Activation, Graph, GraphBuilder, Padding, Value};

const BN_EPS: f32 = 1e-3;
const STEM_CHANNELS: usize = 32;
const HEAD_CHANNELS: usize = 1280;
const DEPTH_DIVISOR: f64 = 8.0;

/// One stage of `efficientnet_lite_builder.py`'s block strings `rR_kK_sS_eE_iI_oO`.
struct Stage {
    repeats: usize,
    kernel: usize,
    stride: usize,
    expand: usize,
    input: usize,
    output: usize,
}

const STAGES: [Stage; 7] = [
    Stage {
        repeats: 1,
        kernel: 3,
        stride: 1,
        expand: 1,
        input: 32,
        output: 16,
    },
    Stage {
        repeats: 2,
        kernel: 3,
        stride: 2,
        expand: 6,
        input: 16,
        output: 24,
    },
    Stage {
        repeats: 2,
        kernel: 5,
        stride: 2,
        expand: 6,
        input: 24,
        output: 40,
    },
    Stage {
        repeats: 3,
        kernel: 3,
        stride: 2,
        expand: 6,
        input: 40,
        output: 80,
    },
    Stage {
        repeats: 3,
        kernel: 5,
        stride: 1,
        expand: 6,
        input: 80,
        output: 112,
    },
    Stage {
        repeats: 4,
        kernel: 5,
        stride: 2,
        expand: 6,
        input: 112,
        output: 192,
    },
    Stage {
        repeats: 1,
        kernel: 3,
        stride: 1,
        expand: 6,
        input: 192,
        output: 320,
    },
];

/// Width and depth multipliers of one variant.
#[derive(Clone, Copy, Debug)]
pub struct LiteConfig {
    pub width: f64,
    pub depth: f64,
}

impl LiteConfig {
    pub const LITE0: LiteConfig = LiteConfig {
        width: 1.0,
        depth: 1.0,
    };
    pub const LITE1: LiteConfig = LiteConfig {
        width: 1.0,
        depth: 1.1,
    };
    pub const LITE2: LiteConfig = LiteConfig {
        width: 1.1,
        depth: 1.2,
    };
}

/// `round_filters` of the reference: scale by width, round to a multiple of 8, never
/// more than 10% below the scaled value.
fn round_filters(filters: usize, width: f64) -> usize {
    let scaled = filters as f64 * width;
    let mut rounded = (DEPTH_DIVISOR
        .max(((scaled + DEPTH_DIVISOR / 2.0) / DEPTH_DIVISOR).floor() * DEPTH_DIVISOR))
        as usize;
    if (rounded as f64) < 0.9 * scaled {
        rounded += DEPTH_DIVISOR as usize;
    }
    rounded
}

fn round_repeats(repeats: usize, depth: f64) -> usize {
    (depth * repeats as f64).ceil() as usize
}

fn conv_bn_relu6(
    g: &mut GraphBuilder,
    x: Value,
    conv: &str,
    bn: &str,
    out: usize,
    kernel: usize,
    stride: usize,
    groups: usize,
    activation: Activation,
) -> Value {
    let y = g.conv(
        x,
        conv,
        out,
        [kernel; 2],
        [stride; 2],
        Padding::Same,
        groups,
        false,
    );
    let y = g.batch_norm(y, bn, BN_EPS);
    g.activation(y, activation)
}

/// Builds the network for `[batch, 3, size, size]` inputs normalised as `(p - 127) / 128`.
pub fn build(config: LiteConfig, size: usize) -> Graph {
    let (mut g, pixels) = GraphBuilder::new(3, size, size);
    let mut x = conv_bn_relu6(
        &mut g,
        pixels,
        "_conv_stem",
        "_bn0",
        STEM_CHANNELS,
        3,
        2,
        1,
        Activation::Relu6,
    );
    let mut index = 0;
    for (i, stage) in STAGES.iter().enumerate() {
        let fixed = i == 0 || i == STAGES.len() - 1;
        let repeats = if fixed {
            stage.repeats
        } else {
            round_repeats(stage.repeats, config.depth)
        };
        let mut input = if i == 0 {
            STEM_CHANNELS
        } else {
            round_filters(stage.input, config.width)
        };
        let output = round_filters(stage.output, config.width);
        for r in 0..repeats {
            let stride = if r == 0 { stage.stride } else { 1 };
            let p = format!("_blocks.{index}");
            let expanded = input * stage.expand;
            let mut y = x;
            if stage.expand != 1 {
                y = conv_bn_relu6(
                    &mut g,
                    y,
                    &format!("{p}._expand_conv"),
                    &format!("{p}._bn0"),
                    expanded,
                    1,
                    1,
                    1,
                    Activation::Relu6,
                );
            }
            y = conv_bn_relu6(
                &mut g,
                y,
                &format!("{p}._depthwise_conv"),
                &format!("{p}._bn1"),
                expanded,
                stage.kernel,
                stride,
                expanded,
                Activation::Relu6,
            );
            y = conv_bn_relu6(
                &mut g,
                y,
                &format!("{p}._project_conv"),
                &format!("{p}._bn2"),
                output,
                1,
                1,
                1,
                Activation::None,
            );
            if stride == 1 && input == output {
                y = g.add(y, x);
            }
            x = y;
            input = output;
            index += 1;
        }
    }
    let x = conv_bn_relu6(
        &mut g,
        x,
        "_conv_head",
        "_bn1",
        HEAD_CHANNELS,
        1,
        1,
        1,
        Activation::Relu6,
    );
    let features = g.global_avg_pool(x);
    let logits = g.linear(features, "_fc", 1000);
    g.finish(features, logits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::graph::Shape;

    #[test]
    fn round_filters_matches_the_reference() {
        assert_eq!(round_filters(32, 1.0), 32);
        // Lite2 (width 1.1): 16 -> 17.6 -> 16; 24 -> 26.4 -> 24; 40 -> 44 -> 48; 320 -> 352.
        assert_eq!(round_filters(16, 1.1), 16);
        assert_eq!(round_filters(24, 1.1), 24);
        assert_eq!(round_filters(40, 1.1), 48);
        assert_eq!(round_filters(112, 1.1), 120);
        assert_eq!(round_filters(320, 1.1), 352);
    }

    #[test]
    fn lite0_has_the_published_layout() {
        let graph = build(LiteConfig::LITE0, 224);
        let params = graph.parameters();
        // 16 blocks for Lite0; the last block is `_blocks.15`.
        assert!(params
            .iter()
            .any(|p| p.key == "_blocks.15._project_conv.weight"));
        assert!(!params.iter().any(|p| p.key.starts_with("_blocks.16.")));
        assert_eq!(graph.shape(graph.features), &Shape::Flat { len: 1280 });
        let head = params
            .iter()
            .find(|p| p.key == "_conv_head.weight")
            .unwrap();
        assert_eq!(head.shape, vec![1280, 320, 1, 1]);
    }
}
