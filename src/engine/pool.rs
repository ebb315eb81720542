//! The pure-Rust engine's max and average pooling on NCHW data, one task per run of planes.
//!
//! Why by hand: burn-flex 0.22's max pooling always computes the argmax indices too, and
//! its average pooling goes through a generic 3D path; together they took ~24% of
//! Inception V3's time on the engine by `perf` (Inception pools after every mixed block),
//! for work that is a few percent of a convolution's. These loops are the plain
//! definitions.

use rayon::prelude::*;

/// Output side of a pooling window `kernel` moved by `stride` over `size` padded by `pad`
/// on both ends (no partial windows, as PyTorch's default `ceil_mode=False`).
fn out_side(size: usize, kernel: usize, stride: usize, pad: usize) -> usize {
    (size + 2 * pad).saturating_sub(kernel) / stride + 1
}

/// Output `[height, width]` of a pooling.
fn out_size(
    [height, width]: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> [usize; 2] {
    [
        out_side(height, kernel[0], stride[0], padding[0]),
        out_side(width, kernel[1], stride[1], padding[1]),
    ]
}

/// Planes `[planes, H, W]` -> `[planes, H', W']` and `[H', W']`, where each output value is
/// `reduce` over the input values under its window (clipped to the image), then `finish`. Separable:
/// rows first into `[H, W']`, then columns, so both inner loops run along memory.
#[allow(clippy::too_many_arguments)]
fn pool(
    input: &[f32],
    planes: usize,
    size: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    start: f32,
    reduce: impl Fn(f32, f32) -> f32 + Sync,
    finish: impl Fn(f32) -> f32 + Sync,
) -> (Vec<f32>, [usize; 2]) {
    let [h, w] = size;
    let [oh, ow] = out_size(size, kernel, stride, padding);
    let mut output = vec![0f32; planes * oh * ow];
    if oh * ow == 0 || h * w == 0 {
        return (output, [oh, ow]);
    }
    // Outputs `o` whose tap `k` reads inside the input: `0 <= o * stride + k - pad < len`.
    let taps = |k: usize, d: usize, len: usize, out: usize| {
        let (s, pad) = (stride[d], padding[d]);
        let lo = pad.saturating_sub(k).div_ceil(s);
        let hi = (len + pad).saturating_sub(k).div_ceil(s).min(out);
        lo..hi.max(lo)
    };
    output
        .par_chunks_mut(oh * ow)
        .zip(input.par_chunks(h * w))
        .with_min_len(8)
        .for_each_init(
            || vec![start; h * ow],
            |rows, (out, plane)| {
                rows.fill(start);
                for (row, reduced) in plane.chunks(w).zip(rows.chunks_mut(ow)) {
                    for k in 0..kernel[1] {
                        for ox in taps(k, 1, w, ow) {
                            let x = ox * stride[1] + k - padding[1];
                            reduced[ox] = reduce(reduced[ox], row[x]);
                        }
                    }
                }
                out.fill(start);
                for k in 0..kernel[0] {
                    for oy in taps(k, 0, h, oh) {
                        let y = oy * stride[0] + k - padding[0];
                        let out_row = &mut out[oy * ow..(oy + 1) * ow];
                        for (o, &r) in out_row.iter_mut().zip(&rows[y * ow..(y + 1) * ow]) {
                            *o = reduce(*o, r);
                        }
                    }
                }
                out.iter_mut().for_each(|v| *v = finish(*v));
            },
        );
    (output, [oh, ow])
}

/// Max pooling without padding: `[planes, H, W]` -> `[planes, H', W']` and `[H', W']`.
pub fn max_pool(
    input: &[f32],
    planes: usize,
    size: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
) -> (Vec<f32>, [usize; 2]) {
    pool(
        input,
        planes,
        size,
        kernel,
        stride,
        [0, 0],
        f32::NEG_INFINITY,
        f32::max,
        |m| m,
    )
}

/// Average pooling with zero padding counted in the denominator (PyTorch's default
/// `count_include_pad=True`): `[planes, H, W]` -> `[planes, H', W']` and `[H', W']`.
pub fn avg_pool(
    input: &[f32],
    planes: usize,
    size: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
) -> (Vec<f32>, [usize; 2]) {
    let area = (kernel[0] * kernel[1]) as f32;
    pool(
        input,
        planes,
        size,
        kernel,
        stride,
        padding,
        0.0,
        |a, v| a + v,
        |sum| sum / area,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::conv::tests::assert_close;
    use burn::tensor::module::{avg_pool2d, max_pool2d};
    use burn::tensor::ops::{AvgPoolOptions, MaxPoolOptions};
    use burn::tensor::{Device, Tensor, TensorData};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn matches_burn_pooling_on_the_shapes_graft_uses() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let device = Device::flex();
        // (batch, channels, h, w, kernel, stride, padding)
        let cases = [
            (2, 3, 9, 9, [3, 3], [2, 2], [0, 0]),
            (1, 4, 10, 7, [3, 3], [2, 2], [0, 0]),
            (3, 2, 8, 8, [3, 3], [1, 1], [1, 1]),
            (1, 5, 7, 9, [2, 2], [2, 2], [0, 0]),
            (2, 2, 6, 5, [5, 5], [1, 1], [2, 2]),
        ];
        for (batch, c, h, w, kernel, stride, padding) in cases {
            let x: Vec<f32> = (0..batch * c * h * w)
                .map(|_| rng.gen_range(-3.0..3.0))
                .collect();
            let tensor =
                || Tensor::<4>::from_data(TensorData::new(x.clone(), [batch, c, h, w]), &device);
            let what = format!("{kernel:?} stride {stride:?} padding {padding:?} on {h}x{w}");
            if padding == [0, 0] {
                let want = max_pool2d(tensor(), MaxPoolOptions::new(kernel).with_stride(stride))
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap();
                assert_close(
                    &max_pool(&x, batch * c, [h, w], kernel, stride).0,
                    &want,
                    1e-6,
                    &format!("max {what}"),
                );
            }
            let want = avg_pool2d(
                tensor(),
                AvgPoolOptions::new(kernel)
                    .with_stride(stride)
                    .with_padding(padding)
                    .with_count_include_pad(true),
            )
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
            assert_close(
                &avg_pool(&x, batch * c, [h, w], kernel, stride, padding).0,
                &want,
                1e-6,
                &format!("avg {what}"),
            );
        }
    }
}
