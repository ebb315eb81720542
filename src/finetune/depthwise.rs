//! The depthwise convolution of the trainable top, with a backward pass of graft's own.
//!
//! burn-flex runs a depthwise convolution's forward pass directly over NCHW planes, but
//! burn's autodiff differentiates every grouped convolution by the general rules: the input
//! gradient as a transposed convolution (per group, through im2col and gemm) and the weight
//! gradient as one convolution per group, slice-assigned into the result (1152 groups per
//! block in Lite2's last stage). Profiled, that transposed convolution alone was 17% of a
//! fine-tuning epoch, about 7x the forward pass it differentiates. Neither burn nor another
//! crate has a direct depthwise backward, so both gradients here are direct loops over the
//! same planes, one rayon task per plane (input) or per channel (weight); the forward pass
//! stays burn-flex's.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ConvOptions, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::{DType, Shape, Tensor, TensorData};
use rayon::prelude::*;

/// Stride and `(begin, end)` padding per spatial axis of a depthwise convolution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Geometry {
    pub stride: [usize; 2],
    pub padding: [(usize, usize); 2],
}

impl Geometry {
    fn options(&self, channels: usize) -> ConvOptions<2> {
        ConvOptions::new_with_padding(self.stride, self.padding, [1, 1], channels)
    }
}

#[backend_extension(Flex, Autodiff)]
pub trait DepthwiseBackend: Backend {
    /// Input `[batch, C, H, W]`, weight `[C, 1, kh, kw]` -> `[batch, C, H', W']`.
    fn depthwise_conv2d(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        geometry: Geometry,
    ) -> FloatTensor<Self>;
}

impl DepthwiseBackend for Flex {
    fn depthwise_conv2d(input: FlexTensor, weight: FlexTensor, geometry: Geometry) -> FlexTensor {
        let channels = weight.layout().shape()[0];
        Flex::conv2d(input, weight, None, geometry.options(channels))
    }
}

#[derive(Debug)]
struct DepthwiseBackward {
    geometry: Geometry,
}

impl Backward<Flex, 2> for DepthwiseBackward {
    /// The forward pass's input and weight.
    type State = (FlexTensor, FlexTensor);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [input_node, weight_node] = ops.parents;
        let output_grad = grads.consume::<Flex>(&ops.node);
        let (input, weight) = ops.state;
        let planes = Planes::new(&input, &weight, &output_grad, self.geometry);
        let output_grad = output_grad.to_contiguous();
        if let Some(node) = input_node {
            let grad = planes.input_grad(f32s(&output_grad), f32s(&weight.to_contiguous()));
            grads.register::<Flex>(node.id, flex(grad, input.layout().shape().clone()));
        }
        if let Some(node) = weight_node {
            let grad = planes.weight_grad(f32s(&output_grad), f32s(&input.to_contiguous()));
            grads.register::<Flex>(node.id, flex(grad, weight.layout().shape().clone()));
        }
    }
}

impl<C: CheckpointStrategy> DepthwiseBackend for Autodiff<Flex, C> {
    fn depthwise_conv2d(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        geometry: Geometry,
    ) -> FloatTensor<Self> {
        let (input, input_node) = input.into_parts();
        let (weight, weight_node) = weight.into_parts();
        match (DepthwiseBackward { geometry })
            .prepare::<C>([input_node, weight_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let output = Flex::depthwise_conv2d(input.clone(), weight.clone(), geometry);
                prep.finish((input, weight), output)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(Flex::depthwise_conv2d(input, weight, geometry))
            }
        }
    }
}

/// A depthwise convolution on burn tensors, differentiated by [`DepthwiseBackward`].
pub fn depthwise_conv2d(input: Tensor<4>, weight: Tensor<4>, geometry: Geometry) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as DepthwiseBackend>::depthwise_conv2d(
        input.into_dispatch(),
        weight.into_dispatch(),
        geometry,
    ))
}

/// The f32 values of a contiguous tensor. The top trains in f32 only (the cut activations
/// are widened from their f16 storage before they enter it).
fn f32s(tensor: &FlexTensor) -> &[f32] {
    assert_eq!(tensor.dtype(), DType::F32, "depthwise backward runs on f32");
    tensor.storage()
}

fn flex(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// The sizes of one depthwise convolution's planes.
#[derive(Clone, Copy, Debug)]
struct Planes {
    channels: usize,
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    kernel_h: usize,
    kernel_w: usize,
    stride: [usize; 2],
    pad: [usize; 2],
}

impl Planes {
    fn new(input: &FlexTensor, weight: &FlexTensor, output: &FlexTensor, g: Geometry) -> Planes {
        let (i, w, o) = (
            input.layout().shape(),
            weight.layout().shape(),
            output.layout().shape(),
        );
        Planes {
            channels: i[1],
            in_h: i[2],
            in_w: i[3],
            out_h: o[2],
            out_w: o[3],
            kernel_h: w[2],
            kernel_w: w[3],
            stride: g.stride,
            pad: [g.padding[0].0, g.padding[1].0],
        }
    }

    /// The output positions along one axis that kernel tap `k` maps inside the input:
    /// `out * stride + k - pad` in `[0, size)`.
    fn taps(k: usize, stride: usize, pad: usize, size: usize, out: usize) -> (usize, usize) {
        let first = pad.saturating_sub(k).div_ceil(stride);
        let last = (size + pad).saturating_sub(k).div_ceil(stride).min(out);
        (first, last.max(first))
    }

    /// `d input[n, c, oh * s + i - p, ow * s + j - p] += weight[c, i, j] * d output[n, c, oh, ow]`.
    fn input_grad(&self, output_grad: &[f32], weight: &[f32]) -> Vec<f32> {
        let p = *self;
        let (in_plane, out_plane) = (p.in_h * p.in_w, p.out_h * p.out_w);
        let taps = p.kernel_h * p.kernel_w;
        let mut grad = vec![0.0f32; output_grad.len() / out_plane * in_plane];
        grad.par_chunks_mut(in_plane)
            .zip(output_grad.par_chunks(out_plane))
            .enumerate()
            .for_each(|(plane, (dx, dy))| {
                let w = &weight[(plane % p.channels) * taps..][..taps];
                for i in 0..p.kernel_h {
                    let (oh0, oh1) = Planes::taps(i, p.stride[0], p.pad[0], p.in_h, p.out_h);
                    for j in 0..p.kernel_w {
                        let (ow0, ow1) = Planes::taps(j, p.stride[1], p.pad[1], p.in_w, p.out_w);
                        let wij = w[i * p.kernel_w + j];
                        for oh in oh0..oh1 {
                            let start =
                                (oh * p.stride[0] + i - p.pad[0]) * p.in_w + ow0 * p.stride[1] + j
                                    - p.pad[1];
                            let dy = &dy[oh * p.out_w + ow0..oh * p.out_w + ow1];
                            let dx = &mut dx[start..];
                            if p.stride[1] == 1 {
                                for (d, g) in dx.iter_mut().zip(dy) {
                                    *d += wij * g;
                                }
                            } else {
                                for (d, g) in dx.iter_mut().step_by(p.stride[1]).zip(dy) {
                                    *d += wij * g;
                                }
                            }
                        }
                    }
                }
            });
        grad
    }

    /// `d weight[c, i, j] = sum over n, oh, ow of d output[n, c, oh, ow] * input[n, c, oh * s + i - p, ow * s + j - p]`.
    ///
    /// Each tap accumulates a row of partial sums (one per output column) so that the inner
    /// loop is an element-wise multiply-add, not a serial sum; the rows are summed once per
    /// channel.
    fn weight_grad(&self, output_grad: &[f32], input: &[f32]) -> Vec<f32> {
        let p = *self;
        let (in_plane, out_plane) = (p.in_h * p.in_w, p.out_h * p.out_w);
        let taps = p.kernel_h * p.kernel_w;
        let batch = output_grad.len() / out_plane / p.channels;
        let mut grad = vec![0.0f32; p.channels * taps];
        grad.par_chunks_mut(taps).enumerate().for_each(|(c, dw)| {
            let mut rows = vec![0.0f32; taps * p.out_w];
            for n in 0..batch {
                let plane = n * p.channels + c;
                let x = &input[plane * in_plane..][..in_plane];
                let dy = &output_grad[plane * out_plane..][..out_plane];
                for i in 0..p.kernel_h {
                    let (oh0, oh1) = Planes::taps(i, p.stride[0], p.pad[0], p.in_h, p.out_h);
                    for j in 0..p.kernel_w {
                        let (ow0, ow1) = Planes::taps(j, p.stride[1], p.pad[1], p.in_w, p.out_w);
                        let acc = &mut rows[(i * p.kernel_w + j) * p.out_w..][ow0..ow1];
                        for oh in oh0..oh1 {
                            let start =
                                (oh * p.stride[0] + i - p.pad[0]) * p.in_w + ow0 * p.stride[1] + j
                                    - p.pad[1];
                            let dy = &dy[oh * p.out_w + ow0..oh * p.out_w + ow1];
                            let x = &x[start..];
                            if p.stride[1] == 1 {
                                for ((a, g), v) in acc.iter_mut().zip(dy).zip(x) {
                                    *a += g * v;
                                }
                            } else {
                                for ((a, g), v) in
                                    acc.iter_mut().zip(dy).zip(x.iter().step_by(p.stride[1]))
                                {
                                    *a += g * v;
                                }
                            }
                        }
                    }
                }
            }
            for (d, row) in dw.iter_mut().zip(rows.chunks(p.out_w)) {
                *d = row.iter().sum();
            }
        });
        grad
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::conv2d;
    use burn::tensor::{Device, Distribution};

    /// Gradients of `sum(conv * r)` for a fixed random `r`, by [`depthwise_conv2d`] and by
    /// burn's general grouped convolution.
    fn both(
        geometry: Geometry,
        input: [usize; 4],
        kernel: [usize; 2],
    ) -> [(Vec<f32>, Vec<f32>); 2] {
        let device = Device::flex().autodiff();
        let [_, channels, _, _] = input;
        let x = Tensor::<4>::random(input, Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<4>::random(
            [channels, 1, kernel[0], kernel[1]],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let options = geometry.options(channels);
        let reference = conv2d(x.clone(), w.clone(), None, options.clone());
        let r = Tensor::<4>::random(reference.dims(), Distribution::Normal(0.0, 1.0), &device);
        let grads = |run: &dyn Fn(Tensor<4>, Tensor<4>) -> Tensor<4>| {
            let (x, w) = (x.clone().require_grad(), w.clone().require_grad());
            let out = run(x.clone(), w.clone());
            assert_eq!(out.dims(), reference.dims());
            let g = (out * r.clone()).sum().backward();
            let read = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
            (read(x.grad(&g).unwrap()), read(w.grad(&g).unwrap()))
        };
        [
            grads(&|x, w| depthwise_conv2d(x, w, geometry)),
            grads(&|x, w| conv2d(x, w, None, options.clone())),
        ]
    }

    #[test]
    fn depthwise_gradients_equal_burns_grouped_convolution() {
        let cases = [
            (
                Geometry {
                    stride: [1, 1],
                    padding: [(2, 2), (2, 2)],
                },
                [2, 3, 9, 9],
                [5, 5],
            ),
            (
                Geometry {
                    stride: [2, 2],
                    padding: [(1, 1), (1, 1)],
                },
                [2, 4, 17, 17],
                [3, 3],
            ),
            (
                Geometry {
                    stride: [2, 2],
                    padding: [(1, 2), (1, 2)],
                },
                [3, 2, 10, 8],
                [5, 5],
            ),
            (
                Geometry {
                    stride: [1, 2],
                    padding: [(0, 0), (2, 1)],
                },
                [1, 5, 6, 7],
                [3, 5],
            ),
        ];
        for (geometry, input, kernel) in cases {
            let [(dx, dw), (rx, rw)] = both(geometry, input, kernel);
            for (name, got, want) in [("input", dx, rx), ("weight", dw, rw)] {
                assert_eq!(got.len(), want.len());
                let gap = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    gap <= 1e-4,
                    "{geometry:?} {input:?}: {name} gradients differ by {gap}"
                );
            }
        }
    }
}
