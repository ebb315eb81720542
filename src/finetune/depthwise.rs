//! The depthwise convolution of the trainable top, channels last, forward and backward
//! passes of graft's own.
//!
//! The top runs channels last (`[batch, H, W, C]`, see [`super::top`]) so that each 1x1
//! convolution is one matrix product over the whole batch. burn has no channels-last
//! convolution, and its autodiff differentiates a grouped convolution by the general rules
//! (the input gradient as a transposed convolution through im2col and gemm, the weight
//! gradient as one convolution per group: 1152 groups per block in Lite2's last stage);
//! profiled, that was 17% of a fine-tuning epoch, about 7x the forward pass. No crate has a
//! depthwise convolution for burn tensors either, so all three passes are direct loops
//! here. Channels last, every tap is a multiply-add over a run of C contiguous channels
//! (720 to 1920 in the Lite tops), the loop compilers vectorise best, compiled for this
//! CPU's widest vectors through [`simd`].

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::FlexTensor;
#[cfg(test)]
use burn::backend::ops::ConvOptions;
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

#[cfg(test)]
impl Geometry {
    fn options(&self, channels: usize) -> ConvOptions<2> {
        ConvOptions::new_with_padding(self.stride, self.padding, [1, 1], channels)
    }
}

#[backend_extension(Flex, Autodiff)]
pub trait DepthwiseBackend: Backend {
    /// Input `[batch, H, W, C]`, weight `[C, 1, kh, kw]` -> `[batch, H', W', C]`.
    fn depthwise_conv2d(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        geometry: Geometry,
    ) -> FloatTensor<Self>;
}

impl DepthwiseBackend for Flex {
    fn depthwise_conv2d(input: FlexTensor, weight: FlexTensor, geometry: Geometry) -> FlexTensor {
        let (input, weight) = (input.to_contiguous(), weight.to_contiguous());
        let planes = Planes::new(&input, &weight, geometry);
        let out = planes.forward(f32s(&input), &planes.taps_first(f32s(&weight)));
        flex(out, planes.output_shape())
    }
}

#[derive(Debug)]
struct DepthwiseBackward {
    geometry: Geometry,
}

impl Backward<Flex, 2> for DepthwiseBackward {
    /// The forward pass's input and weight (contiguous).
    type State = (FlexTensor, FlexTensor);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [input_node, weight_node] = ops.parents;
        let output_grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let (input, weight) = ops.state;
        let planes = Planes::new(&input, &weight, self.geometry);
        if let Some(node) = input_node {
            let weight = planes.taps_first(f32s(&weight));
            let grad = planes.input_grad(f32s(&output_grad), &weight);
            grads.register::<Flex>(node.id, flex(grad, input.layout().shape().clone()));
        }
        if let Some(node) = weight_node {
            let grad = planes.weight_grad(f32s(&output_grad), f32s(&input));
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
                let (input, weight) = (input.to_contiguous(), weight.to_contiguous());
                let output = Flex::depthwise_conv2d(input.clone(), weight.clone(), geometry);
                prep.finish((input, weight), output)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(Flex::depthwise_conv2d(input, weight, geometry))
            }
        }
    }
}

/// A channels-last depthwise convolution on burn tensors (input `[batch, H, W, C]`,
/// weight `[C, 1, kh, kw]` as the checkpoint stores it), differentiated by
/// [`DepthwiseBackward`].
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
    assert_eq!(
        tensor.dtype(),
        DType::F32,
        "depthwise convolution runs on f32"
    );
    tensor.storage()
}

/// Runs `f` compiled for the widest vector instructions this CPU has (AVX2 and FMA, or
/// AVX-512), chosen at run time by pulp (gemm's own dispatcher): graft is built for the
/// baseline x86-64, whose loops are 4 lanes wide.
fn simd<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

fn flex(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// `acc[c] += a[c] * b[c]` over one run of channels.
#[inline(always)]
fn multiply_add(acc: &mut [f32], a: &[f32], b: &[f32]) {
    for ((acc, a), b) in acc.iter_mut().zip(a).zip(b) {
        *acc += a * b;
    }
}

/// The sizes of one channels-last depthwise convolution.
#[derive(Clone, Copy, Debug)]
struct Planes {
    batch: usize,
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
    fn new(input: &FlexTensor, weight: &FlexTensor, g: Geometry) -> Planes {
        let (i, w) = (input.layout().shape(), weight.layout().shape());
        let out = |size: usize, k: usize, axis: usize| {
            let (begin, end) = g.padding[axis];
            (size + begin + end).saturating_sub(k) / g.stride[axis] + 1
        };
        Planes {
            batch: i[0],
            in_h: i[1],
            in_w: i[2],
            channels: i[3],
            out_h: out(i[1], w[2], 0),
            out_w: out(i[2], w[3], 1),
            kernel_h: w[2],
            kernel_w: w[3],
            stride: g.stride,
            pad: [g.padding[0].0, g.padding[1].0],
        }
    }

    fn output_shape(&self) -> Shape {
        Shape::from(vec![self.batch, self.out_h, self.out_w, self.channels])
    }

    /// The weight `[C, kh * kw]` as `[kh * kw, C]`: one run of channels per tap.
    fn taps_first(&self, weight: &[f32]) -> Vec<f32> {
        let taps = self.kernel_h * self.kernel_w;
        let mut out = vec![0.0f32; weight.len()];
        for (c, w) in weight.chunks_exact(taps).enumerate() {
            for (t, v) in w.iter().enumerate() {
                out[t * self.channels + c] = *v;
            }
        }
        out
    }

    /// The input coordinate that output `o` reads through tap `k` along `axis`, if inside.
    fn source(&self, o: usize, k: usize, axis: usize) -> Option<usize> {
        let size = [self.in_h, self.in_w][axis];
        (o * self.stride[axis] + k)
            .checked_sub(self.pad[axis])
            .filter(|&i| i < size)
    }

    /// Every `(tap, input pixel, output pixel)` of one image, pixels as offsets in runs of
    /// C channels, taps in the order of `[kh, kw]`.
    fn pairs(&self, mut each: impl FnMut(usize, usize, usize)) {
        for oh in 0..self.out_h {
            for i in 0..self.kernel_h {
                let Some(ih) = self.source(oh, i, 0) else {
                    continue;
                };
                for ow in 0..self.out_w {
                    for j in 0..self.kernel_w {
                        if let Some(iw) = self.source(ow, j, 1) {
                            each(
                                i * self.kernel_w + j,
                                ih * self.in_w + iw,
                                oh * self.out_w + ow,
                            );
                        }
                    }
                }
            }
        }
    }

    /// `output[n, oh, ow, c] = sum over taps of weight[c, i, j] * input[n, oh * s + i - p, ow * s + j - p, c]`,
    /// one rayon task per output row.
    fn forward(&self, input: &[f32], weight: &[f32]) -> Vec<f32> {
        let p = *self;
        let c = p.channels;
        let (in_image, row) = (p.in_h * p.in_w * c, p.out_w * c);
        let mut out = vec![0.0f32; p.batch * p.out_h * row];
        out.par_chunks_mut(row).enumerate().for_each(|(r, y)| {
            simd(|| {
                let (n, oh) = (r / p.out_h, r % p.out_h);
                let x = &input[n * in_image..][..in_image];
                for i in 0..p.kernel_h {
                    let Some(ih) = p.source(oh, i, 0) else {
                        continue;
                    };
                    for ow in 0..p.out_w {
                        let y = &mut y[ow * c..][..c];
                        for j in 0..p.kernel_w {
                            if let Some(iw) = p.source(ow, j, 1) {
                                let w = &weight[(i * p.kernel_w + j) * c..][..c];
                                multiply_add(y, w, &x[(ih * p.in_w + iw) * c..][..c]);
                            }
                        }
                    }
                }
            })
        });
        out
    }

    /// `d input[n, oh * s + i - p, ow * s + j - p, c] += weight[c, i, j] * d output[n, oh, ow, c]`,
    /// one rayon task per image.
    fn input_grad(&self, output_grad: &[f32], weight: &[f32]) -> Vec<f32> {
        let p = *self;
        let c = p.channels;
        let (in_image, out_image) = (p.in_h * p.in_w * c, p.out_h * p.out_w * c);
        let mut grad = vec![0.0f32; p.batch * in_image];
        grad.par_chunks_mut(in_image)
            .zip(output_grad.par_chunks(out_image))
            .for_each(|(dx, dy)| {
                simd(|| {
                    p.pairs(|tap, x, y| {
                        multiply_add(
                            &mut dx[x * c..][..c],
                            &weight[tap * c..][..c],
                            &dy[y * c..][..c],
                        )
                    })
                })
            });
        grad
    }

    /// `d weight[c, i, j] = sum over n, oh, ow of d output[n, oh, ow, c] * input[n, oh * s + i - p, ow * s + j - p, c]`.
    ///
    /// Each image sums into its own `[kh * kw, C]` in parallel; the images' sums are then
    /// added in image order, so the result does not depend on the number of threads.
    fn weight_grad(&self, output_grad: &[f32], input: &[f32]) -> Vec<f32> {
        let p = *self;
        let c = p.channels;
        let taps = p.kernel_h * p.kernel_w;
        let (in_image, out_image) = (p.in_h * p.in_w * c, p.out_h * p.out_w * c);
        let per_image: Vec<Vec<f32>> = input
            .par_chunks(in_image)
            .zip(output_grad.par_chunks(out_image))
            .map(|(x, dy)| {
                simd(|| {
                    let mut dw = vec![0.0f32; taps * c];
                    p.pairs(|tap, xi, yi| {
                        multiply_add(
                            &mut dw[tap * c..][..c],
                            &dy[yi * c..][..c],
                            &x[xi * c..][..c],
                        )
                    });
                    dw
                })
            })
            .collect();
        let mut sum = vec![0.0f32; taps * c];
        simd(|| {
            for dw in &per_image {
                for (s, v) in sum.iter_mut().zip(dw) {
                    *s += v;
                }
            }
        });
        // Back to the checkpoint's `[C, 1, kh, kw]`.
        let mut grad = vec![0.0f32; taps * c];
        for (t, run) in sum.chunks_exact(c).enumerate() {
            for (ch, v) in run.iter().enumerate() {
                grad[ch * taps + t] = *v;
            }
        }
        grad
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::conv2d;
    use burn::tensor::{Device, Distribution};

    /// Output and gradients of `sum(conv * r)` for a fixed random `r`, by
    /// [`depthwise_conv2d`] (channels last, permuted from and back to NCHW) and by burn's
    /// general grouped convolution.
    fn both(geometry: Geometry, input: [usize; 4], kernel: [usize; 2]) -> [[Vec<f32>; 3]; 2] {
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
            let read = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
            let y = read(out.clone().detach());
            let g = (out * r.clone()).sum().backward();
            [y, read(x.grad(&g).unwrap()), read(w.grad(&g).unwrap())]
        };
        [
            grads(&|x, w| {
                depthwise_conv2d(x.permute([0, 2, 3, 1]), w, geometry).permute([0, 3, 1, 2])
            }),
            grads(&|x, w| conv2d(x, w, None, options.clone())),
        ]
    }

    #[test]
    fn depthwise_output_and_gradients_equal_burns_grouped_convolution() {
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
            let [[y, dx, dw], [ry, rx, rw]] = both(geometry, input, kernel);
            for (name, got, want) in [("output", y, ry), ("input", dx, rx), ("weight", dw, rw)] {
                assert_eq!(got.len(), want.len());
                let gap = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    gap <= 1e-4,
                    "{geometry:?} {input:?}: {name} differs by {gap}"
                );
            }
        }
    }
}
