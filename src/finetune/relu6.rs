//! ReLU6 of the trainable top, with a backward pass of graft's own.
//!
//! burn differentiates `clamp(x, 0, 6)` through two comparisons, two boolean masks and two
//! `mask_fill`s, each a full pass over the activation and burn-flex's `mask_fill` a serial
//! one: profiled, `mask_fill` alone was 11% of a fine-tuning epoch on 2 cores. Here the
//! forward pass is one parallel clamp, and the backward pass one parallel pass that keeps
//! the output gradient where the output lies strictly inside (0, 6), as PyTorch's
//! `hardtanh_backward` does. The output is the only state: the next layer keeps it anyway.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

/// Elements per rayon task: large enough that a task costs more than its scheduling.
const CHUNK: usize = 1 << 14;

#[backend_extension(Flex, Autodiff)]
pub trait Relu6Backend: Backend {
    /// `min(max(x, 0), 6)`, any shape.
    fn relu6(input: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// The f32 values of `tensor`, contiguous. The top trains in f32 only.
fn values(tensor: &FlexTensor) -> FlexTensor {
    assert_eq!(tensor.dtype(), DType::F32, "relu6 runs on f32");
    tensor.to_contiguous()
}

impl Relu6Backend for Flex {
    fn relu6(input: FlexTensor) -> FlexTensor {
        let input = values(&input);
        let x: &[f32] = input.storage();
        let mut out = vec![0.0f32; x.len()];
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(o, x)| {
                for (o, x) in o.iter_mut().zip(x) {
                    *o = x.clamp(0.0, 6.0);
                }
            });
        FlexTensor::from_data(TensorData::new(out, input.layout().shape().clone()))
    }
}

#[derive(Debug)]
struct Relu6Backward;

impl Backward<Flex, 1> for Relu6Backward {
    /// The forward pass's output.
    type State = FlexTensor;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [Some(node)] = ops.parents else {
            return;
        };
        let output_grad = values(&grads.consume::<Flex>(&ops.node));
        let output = values(&ops.state);
        let (dy, y): (&[f32], &[f32]) = (output_grad.storage(), output.storage());
        let mut dx = vec![0.0f32; dy.len()];
        dx.par_chunks_mut(CHUNK)
            .zip(dy.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
            .for_each(|(dx, (dy, y))| {
                for ((dx, dy), y) in dx.iter_mut().zip(dy).zip(y) {
                    *dx = if *y > 0.0 && *y < 6.0 { *dy } else { 0.0 };
                }
            });
        let shape = output_grad.layout().shape().clone();
        grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(dx, shape)));
    }
}

impl<C: CheckpointStrategy> Relu6Backend for Autodiff<Flex, C> {
    fn relu6(input: FloatTensor<Self>) -> FloatTensor<Self> {
        let (input, node) = input.into_parts();
        match Relu6Backward
            .prepare::<C>([node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let output = Flex::relu6(input);
                prep.finish(output.clone(), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::relu6(input)),
        }
    }
}

/// ReLU6 on burn tensors, differentiated by [`Relu6Backward`].
pub fn relu6<const D: usize>(input: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as Relu6Backend>::relu6(input.into_dispatch()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    #[test]
    fn relu6_and_its_gradient_equal_burns_clamp() {
        let device = Device::flex().autodiff();
        let values: Vec<f32> = (0..40_000).map(|i| (i % 97) as f32 * 0.17 - 4.0).collect();
        let weights: Vec<f32> = (0..40_000).map(|i| (i % 13) as f32 - 6.0).collect();
        let x = Tensor::<2>::from_data(TensorData::new(values, [200, 200]), &device);
        let r = Tensor::<2>::from_data(TensorData::new(weights, [200, 200]), &device);
        let run = |f: &dyn Fn(Tensor<2>) -> Tensor<2>| {
            let x = x.clone().require_grad();
            let y = f(x.clone());
            let g = (y.clone() * r.clone()).sum().backward();
            let read = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
            (read(y), read(x.grad(&g).unwrap()))
        };
        let (y, dx) = run(&|x| relu6(x));
        let (want_y, want_dx) = run(&|x| x.clamp(0.0, 6.0));
        assert_eq!(y, want_y);
        // burn's clamp passes the gradient at exactly 0 and 6; PyTorch's hardtanh does not.
        // The inputs above never hit either bound exactly.
        assert_eq!(dx, want_dx);
        assert!(dx.contains(&0.0) && dx.iter().any(|g| *g != 0.0));
    }
}
