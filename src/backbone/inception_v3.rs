//! Inception V3 as torchvision's `Inception3` defines it, for the Google weights
//! (`transform_input=True`): keys such as `Mixed_7c.branch3x3dbl_3a.conv.weight` follow
//! torchvision's checkpoint verbatim. The auxiliary classifier only matters in training
//! and is left out; its checkpoint keys are ignored.

use super::graph::{Activation, Graph, GraphBuilder, Padding, Value};

const BN_EPS: f32 = 1e-3;

/// torchvision's `BasicConv2d`: conv (no bias) -> batch norm (eps 1e-3) -> ReLU.
fn basic(
    g: &mut GraphBuilder,
    x: Value,
    key: &str,
    out: usize,
    kernel: [usize; 2],
    stride: usize,
    padding: [usize; 2],
) -> Value {
    let y = g.conv(
        x,
        &format!("{key}.conv"),
        out,
        kernel,
        [stride; 2],
        Padding::symmetric(padding[0], padding[1]),
        1,
        false,
    );
    let y = g.batch_norm(y, &format!("{key}.bn"), BN_EPS);
    g.activation(y, Activation::Relu)
}

fn k(n: usize) -> [usize; 2] {
    [n, n]
}

fn inception_a(g: &mut GraphBuilder, x: Value, m: &str, pool_features: usize) -> Value {
    let b1 = basic(g, x, &format!("{m}.branch1x1"), 64, k(1), 1, [0, 0]);
    let b5 = basic(g, x, &format!("{m}.branch5x5_1"), 48, k(1), 1, [0, 0]);
    let b5 = basic(g, b5, &format!("{m}.branch5x5_2"), 64, k(5), 1, [2, 2]);
    let b3 = basic(g, x, &format!("{m}.branch3x3dbl_1"), 64, k(1), 1, [0, 0]);
    let b3 = basic(g, b3, &format!("{m}.branch3x3dbl_2"), 96, k(3), 1, [1, 1]);
    let b3 = basic(g, b3, &format!("{m}.branch3x3dbl_3"), 96, k(3), 1, [1, 1]);
    let bp = g.avg_pool(x, 3, 1, 1);
    let bp = basic(
        g,
        bp,
        &format!("{m}.branch_pool"),
        pool_features,
        k(1),
        1,
        [0, 0],
    );
    g.concat(&[b1, b5, b3, bp])
}

fn inception_b(g: &mut GraphBuilder, x: Value, m: &str) -> Value {
    let b3 = basic(g, x, &format!("{m}.branch3x3"), 384, k(3), 2, [0, 0]);
    let bd = basic(g, x, &format!("{m}.branch3x3dbl_1"), 64, k(1), 1, [0, 0]);
    let bd = basic(g, bd, &format!("{m}.branch3x3dbl_2"), 96, k(3), 1, [1, 1]);
    let bd = basic(g, bd, &format!("{m}.branch3x3dbl_3"), 96, k(3), 2, [0, 0]);
    let bp = g.max_pool(x, 3, 2);
    g.concat(&[b3, bd, bp])
}

fn inception_c(g: &mut GraphBuilder, x: Value, m: &str, c7: usize) -> Value {
    let b1 = basic(g, x, &format!("{m}.branch1x1"), 192, k(1), 1, [0, 0]);
    let b7 = basic(g, x, &format!("{m}.branch7x7_1"), c7, k(1), 1, [0, 0]);
    let b7 = basic(g, b7, &format!("{m}.branch7x7_2"), c7, [1, 7], 1, [0, 3]);
    let b7 = basic(g, b7, &format!("{m}.branch7x7_3"), 192, [7, 1], 1, [3, 0]);
    let bd = basic(g, x, &format!("{m}.branch7x7dbl_1"), c7, k(1), 1, [0, 0]);
    let bd = basic(g, bd, &format!("{m}.branch7x7dbl_2"), c7, [7, 1], 1, [3, 0]);
    let bd = basic(g, bd, &format!("{m}.branch7x7dbl_3"), c7, [1, 7], 1, [0, 3]);
    let bd = basic(g, bd, &format!("{m}.branch7x7dbl_4"), c7, [7, 1], 1, [3, 0]);
    let bd = basic(
        g,
        bd,
        &format!("{m}.branch7x7dbl_5"),
        192,
        [1, 7],
        1,
        [0, 3],
    );
    let bp = g.avg_pool(x, 3, 1, 1);
    let bp = basic(g, bp, &format!("{m}.branch_pool"), 192, k(1), 1, [0, 0]);
    g.concat(&[b1, b7, bd, bp])
}

fn inception_d(g: &mut GraphBuilder, x: Value, m: &str) -> Value {
    let b3 = basic(g, x, &format!("{m}.branch3x3_1"), 192, k(1), 1, [0, 0]);
    let b3 = basic(g, b3, &format!("{m}.branch3x3_2"), 320, k(3), 2, [0, 0]);
    let b7 = basic(g, x, &format!("{m}.branch7x7x3_1"), 192, k(1), 1, [0, 0]);
    let b7 = basic(g, b7, &format!("{m}.branch7x7x3_2"), 192, [1, 7], 1, [0, 3]);
    let b7 = basic(g, b7, &format!("{m}.branch7x7x3_3"), 192, [7, 1], 1, [3, 0]);
    let b7 = basic(g, b7, &format!("{m}.branch7x7x3_4"), 192, k(3), 2, [0, 0]);
    let bp = g.max_pool(x, 3, 2);
    g.concat(&[b3, b7, bp])
}

fn inception_e(g: &mut GraphBuilder, x: Value, m: &str) -> Value {
    let b1 = basic(g, x, &format!("{m}.branch1x1"), 320, k(1), 1, [0, 0]);
    let b3 = basic(g, x, &format!("{m}.branch3x3_1"), 384, k(1), 1, [0, 0]);
    let b3a = basic(g, b3, &format!("{m}.branch3x3_2a"), 384, [1, 3], 1, [0, 1]);
    let b3b = basic(g, b3, &format!("{m}.branch3x3_2b"), 384, [3, 1], 1, [1, 0]);
    let bd = basic(g, x, &format!("{m}.branch3x3dbl_1"), 448, k(1), 1, [0, 0]);
    let bd = basic(g, bd, &format!("{m}.branch3x3dbl_2"), 384, k(3), 1, [1, 1]);
    let bda = basic(
        g,
        bd,
        &format!("{m}.branch3x3dbl_3a"),
        384,
        [1, 3],
        1,
        [0, 1],
    );
    let bdb = basic(
        g,
        bd,
        &format!("{m}.branch3x3dbl_3b"),
        384,
        [3, 1],
        1,
        [1, 0],
    );
    let bp = g.avg_pool(x, 3, 1, 1);
    let bp = basic(g, bp, &format!("{m}.branch_pool"), 192, k(1), 1, [0, 0]);
    g.concat(&[b1, b3a, b3b, bda, bdb, bp])
}

/// torchvision's `transform_input`: turns ImageNet-normalised input back into the
/// `(x - 0.5) / 0.5` normalisation the Google weights were trained with.
fn transform_input(g: &mut GraphBuilder, x: Value) -> Value {
    let mean = [0.485f32, 0.456, 0.406];
    let std = [0.229f32, 0.224, 0.225];
    let scale = std.iter().map(|s| s / 0.5).collect();
    let shift = mean.iter().map(|m| (m - 0.5) / 0.5).collect();
    g.channel_affine(x, scale, shift)
}

/// Builds the network for `[batch, 3, size, size]` inputs (299 natively) with ImageNet
/// mean/std normalisation.
pub fn build(size: usize) -> Graph {
    let (mut builder, pixels) = GraphBuilder::new(3, size, size);
    let g = &mut builder;
    let x = transform_input(g, pixels);
    let x = basic(g, x, "Conv2d_1a_3x3", 32, k(3), 2, [0, 0]);
    let x = basic(g, x, "Conv2d_2a_3x3", 32, k(3), 1, [0, 0]);
    let x = basic(g, x, "Conv2d_2b_3x3", 64, k(3), 1, [1, 1]);
    let x = g.max_pool(x, 3, 2);
    let x = basic(g, x, "Conv2d_3b_1x1", 80, k(1), 1, [0, 0]);
    let x = basic(g, x, "Conv2d_4a_3x3", 192, k(3), 1, [0, 0]);
    let x = g.max_pool(x, 3, 2);
    let x = inception_a(g, x, "Mixed_5b", 32);
    let x = inception_a(g, x, "Mixed_5c", 64);
    let x = inception_a(g, x, "Mixed_5d", 64);
    let x = inception_b(g, x, "Mixed_6a");
    let x = inception_c(g, x, "Mixed_6b", 128);
    let x = inception_c(g, x, "Mixed_6c", 160);
    let x = inception_c(g, x, "Mixed_6d", 160);
    let x = inception_c(g, x, "Mixed_6e", 192);
    let x = inception_d(g, x, "Mixed_7a");
    let x = inception_e(g, x, "Mixed_7b");
    let x = inception_e(g, x, "Mixed_7c");
    let features = g.global_avg_pool(x);
    let logits = g.linear(features, "fc", 1000);
    builder.finish(features, logits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::graph::Shape;

    #[test]
    fn shapes_follow_torchvision() {
        let graph = build(299);
        assert_eq!(graph.shape(graph.features), &Shape::Flat { len: 2048 });
        // Mixed_7c's input is 8x8x2048 for a 299 input.
        let last_map = graph
            .nodes
            .iter()
            .rev()
            .find_map(|n| match n.shape {
                Shape::Map {
                    channels,
                    height,
                    width,
                } => Some((channels, height, width)),
                _ => None,
            })
            .unwrap();
        assert_eq!(last_map, (2048, 8, 8));
        let params = graph.parameters();
        assert!(params
            .iter()
            .any(|p| p.key == "Mixed_7c.branch3x3dbl_3b.bn.running_var"));
        let fc = params.iter().find(|p| p.key == "fc.weight").unwrap();
        assert_eq!(fc.shape, vec![1000, 2048]);
    }
}
