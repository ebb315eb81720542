//! The pure-Rust engine's dense convolution (`groups == 1`): im2col on NCHW data and one
//! `gemm` call per tile of output positions, writing straight into the output, with the
//! bias and activation fused in.
//!
//! Why by hand: burn-flex 0.22's general convolution copies every input to NHWC on one
//! thread, re-flattens the weight on every call and copies each tile's GEMM result into
//! place: on Inception V3 (3x3, 1x7 and 7x1 kernels) that is ~40% of the engine's time by
//! `perf`. burn-flex 0.23 (a pre-release as of this writing) takes the same NCHW im2col
//! approach; drop this file when graft moves to it. Depthwise convolutions stay on burn,
//! whose depthwise path is already direct.

use rayon::prelude::*;

use crate::backbone::graph::Activation;

/// Largest im2col buffer per thread, in values (4 MiB of f32): bounds memory on big
/// images and keeps the buffer near the cache.
const MAX_COLUMN_VALUES: usize = 1 << 20;

/// A folded convolution ready to run: weight `[out, in, kh, kw]` row-major.
pub struct DenseConv {
    weight: Vec<f32>,
    /// Per output channel; zeros where the layer has no bias.
    bias: Vec<f32>,
    in_channels: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    /// `[(top, bottom), (left, right)]`.
    padding: [(usize, usize); 2],
    activation: Activation,
}

impl DenseConv {
    /// `weight` `[out, in, kernel[0], kernel[1]]` row-major, `bias` `[out]` if any.
    pub fn new(
        weight: Vec<f32>,
        bias: Option<Vec<f32>>,
        in_channels: usize,
        kernel: [usize; 2],
        stride: [usize; 2],
        padding: [(usize, usize); 2],
        activation: Activation,
    ) -> DenseConv {
        let out = weight.len() / (in_channels * kernel[0] * kernel[1]).max(1);
        DenseConv {
            bias: bias.unwrap_or_else(|| vec![0.0; out]),
            weight,
            in_channels,
            kernel,
            stride,
            padding,
            activation,
        }
    }

    pub fn out_channels(&self) -> usize {
        self.bias.len()
    }

    /// Output height and width for an input of `[height, width]`.
    fn out_size(&self, [height, width]: [usize; 2]) -> [usize; 2] {
        let side = |size: usize, d: usize| {
            let (begin, end) = self.padding[d];
            (size + begin + end).saturating_sub(self.kernel[d]) / self.stride[d] + 1
        };
        [side(height, 0), side(width, 1)]
    }

    /// Maps `[batch, in, height, width]` -> `[batch, out, out_h, out_w]` (both row-major);
    /// returns the values and `[out_h, out_w]`.
    pub fn forward(&self, input: &[f32], batch: usize, size: [usize; 2]) -> (Vec<f32>, [usize; 2]) {
        let out_size = self.out_size(size);
        let in_len = self.in_channels * size[0] * size[1];
        let out_len = self.out_channels() * out_size[0] * out_size[1];
        let mut output = vec![0f32; batch * out_len];
        if out_len == 0 || in_len == 0 {
            return (output, out_size);
        }
        if batch >= rayon::current_num_threads() {
            // One image per task: no synchronisation inside a convolution.
            output
                .par_chunks_mut(out_len)
                .zip(input.par_chunks(in_len))
                .for_each(|(out, x)| self.image(x, out, size, out_size, false));
        } else {
            for (out, x) in output.chunks_mut(out_len).zip(input.chunks(in_len)) {
                self.image(x, out, size, out_size, true);
            }
        }
        (output, out_size)
    }

    /// One image: `x` `[in, H, W]` -> `out` `[out, H', W']`, on every thread if `parallel`.
    fn image(
        &self,
        x: &[f32],
        out: &mut [f32],
        size: [usize; 2],
        out_size: [usize; 2],
        parallel: bool,
    ) {
        let parallelism = if parallel {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        };
        let spatial = out_size[0] * out_size[1];
        for (row, &b) in out.chunks_mut(spatial).zip(&self.bias) {
            row.fill(b);
        }
        let m = self.out_channels();
        let column_len = self.in_channels * self.kernel[0] * self.kernel[1];
        let pointwise =
            self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [(0, 0), (0, 0)];
        if pointwise {
            // The input is already the `[in, H*W]` right-hand side.
            gemm_into(
                out,
                0,
                spatial,
                &self.weight,
                x,
                m,
                spatial,
                column_len,
                parallelism,
            );
        } else {
            let tile = (MAX_COLUMN_VALUES / column_len).clamp(1, spatial);
            let mut columns = vec![0f32; column_len * tile];
            for start in (0..spatial).step_by(tile) {
                let n = tile.min(spatial - start);
                let columns = &mut columns[..column_len * n];
                let fill = |(r, row): (usize, &mut [f32])| {
                    self.fill_row(row, r, start, x, size, out_size[1]);
                };
                if parallel {
                    columns.par_chunks_mut(n).enumerate().for_each(fill);
                } else {
                    columns.chunks_mut(n).enumerate().for_each(fill);
                }
                gemm_into(
                    out,
                    start,
                    spatial,
                    &self.weight,
                    columns,
                    m,
                    n,
                    column_len,
                    parallelism,
                );
            }
        }
        match self.activation {
            Activation::None => {}
            Activation::Relu => out.iter_mut().for_each(|v| *v = v.max(0.0)),
            Activation::Relu6 => out.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
        }
    }

    /// Row `r` = (input channel, kernel row, kernel column) of the im2col matrix for output
    /// positions `start..start + row.len()`: the input value under that kernel tap at each
    /// position, zero where the window lies in the padding.
    fn fill_row(
        &self,
        row: &mut [f32],
        r: usize,
        start: usize,
        x: &[f32],
        [in_h, in_w]: [usize; 2],
        out_w: usize,
    ) {
        let [kh, kw] = self.kernel;
        let (c, dy, dx) = (r / (kh * kw), (r / kw) % kh, r % kw);
        let plane = &x[c * in_h * in_w..(c + 1) * in_h * in_w];
        let [sy, sx] = self.stride;
        let (pad_top, pad_left) = (self.padding[0].0, self.padding[1].0);
        let mut filled = 0;
        while filled < row.len() {
            // A run of positions within one output row.
            let position = start + filled;
            let (oy, ox0) = (position / out_w, position % out_w);
            let run = (out_w - ox0).min(row.len() - filled);
            let dst = &mut row[filled..filled + run];
            filled += run;
            let iy = (oy * sy + dy) as isize - pad_top as isize;
            if iy < 0 || iy >= in_h as isize {
                dst.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * in_w..(iy as usize + 1) * in_w];
            let first = (ox0 * sx + dx) as isize - pad_left as isize;
            if sx == 1 {
                // Columns [lo, hi) of the run fall inside the input row.
                let lo = (-first).clamp(0, run as isize) as usize;
                let hi = (in_w as isize - first).clamp(lo as isize, run as isize) as usize;
                dst[..lo].fill(0.0);
                let a = (first + lo as isize) as usize;
                dst[lo..hi].copy_from_slice(&src[a..a + (hi - lo)]);
                dst[hi..].fill(0.0);
            } else {
                for (q, value) in dst.iter_mut().enumerate() {
                    let ix = first + (q * sx) as isize;
                    *value = if ix >= 0 && ix < in_w as isize {
                        src[ix as usize]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// `out[:, start..start + n] += lhs[m, k] @ rhs[k, n]`, with `out` rows `out_stride` long.
#[allow(clippy::too_many_arguments)]
fn gemm_into(
    out: &mut [f32],
    start: usize,
    out_stride: usize,
    lhs: &[f32],
    rhs: &[f32],
    m: usize,
    n: usize,
    k: usize,
    parallelism: gemm::Parallelism,
) {
    assert!(lhs.len() >= m * k && rhs.len() >= k * n);
    assert!(m == 0 || out.len() >= (m - 1) * out_stride + start + n);
    // SAFETY: the asserts above keep every index gemm touches inside the three slices:
    // dst (i, j) at start + i * out_stride + j, lhs (i, l) at i * k + l, rhs (l, j) at
    // l * n + j, for i < m, j < n, l < k; `out` is borrowed mutably and alone.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr().add(start),
            1,
            out_stride as isize,
            true,
            lhs.as_ptr(),
            1,
            k as isize,
            rhs.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use burn::tensor::{Device, Tensor, TensorData};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Every value of `got` within `tolerance` (relative, floored at 1) of `want`'s.
    pub(crate) fn assert_close(got: &[f32], want: &[f32], tolerance: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: output size");
        for (j, (g, r)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - r).abs() <= tolerance * (1.0 + r.abs()),
                "{what} value {j}: {g} vs {r}"
            );
        }
    }

    fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
    }

    /// burn's own conv2d plus the activation: the reference.
    #[allow(clippy::too_many_arguments)]
    fn reference(
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        [batch, c_in, h, wd]: [usize; 4],
        [c_out, kh, kw]: [usize; 3],
        stride: [usize; 2],
        padding: [(usize, usize); 2],
        activation: Activation,
    ) -> Vec<f32> {
        let device = Device::flex();
        let x = Tensor::<4>::from_data(TensorData::new(x.to_vec(), [batch, c_in, h, wd]), &device);
        let w = Tensor::<4>::from_data(TensorData::new(w.to_vec(), [c_out, c_in, kh, kw]), &device);
        let b = b.map(|b| Tensor::<1>::from_data(TensorData::new(b.to_vec(), [c_out]), &device));
        let y = conv2d(
            x,
            w,
            b,
            ConvOptions::new_with_padding(stride, padding, [1, 1], 1),
        );
        let y = match activation {
            Activation::None => y,
            Activation::Relu => burn::tensor::activation::relu(y),
            Activation::Relu6 => burn::tensor::activation::relu(y).clamp_max(6.0),
        };
        y.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn matches_burn_conv2d_on_every_kernel_shape_graft_uses() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        // (batch, in, h, w, out, kernel, stride, padding, bias, activation)
        #[rustfmt::skip]
        let cases = [
            (3, 5, 9, 11, 4, [1, 1], [1, 1], [(0, 0), (0, 0)], true, Activation::Relu),
            (1, 5, 9, 11, 4, [1, 1], [1, 1], [(0, 0), (0, 0)], false, Activation::None),
            (2, 3, 13, 12, 6, [3, 3], [2, 2], [(0, 0), (0, 0)], true, Activation::Relu),
            (4, 4, 10, 10, 5, [3, 3], [1, 1], [(1, 1), (1, 1)], true, Activation::Relu6),
            (3, 6, 8, 9, 7, [1, 7], [1, 1], [(0, 0), (3, 3)], true, Activation::Relu),
            (3, 6, 9, 8, 7, [7, 1], [1, 1], [(3, 3), (0, 0)], false, Activation::Relu),
            (1, 3, 15, 14, 8, [3, 3], [2, 2], [(0, 1), (0, 1)], true, Activation::Relu6),
            (2, 4, 7, 7, 3, [5, 5], [1, 1], [(2, 2), (2, 2)], true, Activation::None),
            (5, 2, 6, 6, 3, [1, 1], [2, 2], [(0, 0), (0, 0)], true, Activation::Relu),
        ];
        for (i, (batch, c_in, h, w, c_out, kernel, stride, padding, bias, activation)) in
            cases.into_iter().enumerate()
        {
            let x = random(&mut rng, batch * c_in * h * w);
            let weight = random(&mut rng, c_out * c_in * kernel[0] * kernel[1]);
            let b = bias.then(|| random(&mut rng, c_out));
            let conv = DenseConv::new(
                weight.clone(),
                b.clone(),
                c_in,
                kernel,
                stride,
                padding,
                activation,
            );
            let (got, [oh, ow]) = conv.forward(&x, batch, [h, w]);
            let want = reference(
                &x,
                &weight,
                b.as_deref(),
                [batch, c_in, h, w],
                [c_out, kernel[0], kernel[1]],
                stride,
                padding,
                activation,
            );
            assert_eq!(got.len(), batch * c_out * oh * ow, "case {i}: output size");
            assert_close(&got, &want, 1e-5, &format!("case {i}"));
        }
    }

    #[test]
    fn tiles_larger_images_than_one_column_buffer_holds() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // 64 x 3 x 3 = 576 values per column, 90 x 90 positions: 8 tiles.
        let (c_in, h, w, c_out) = (64, 90, 90, 3);
        let x = random(&mut rng, c_in * h * w);
        let weight = random(&mut rng, c_out * c_in * 9);
        let padding = [(1, 1), (1, 1)];
        let conv = DenseConv::new(
            weight.clone(),
            None,
            c_in,
            [3, 3],
            [1, 1],
            padding,
            Activation::None,
        );
        assert!(
            c_in * 9 * h * w > MAX_COLUMN_VALUES,
            "the test must need several tiles"
        );
        let (got, _) = conv.forward(&x, 1, [h, w]);
        let want = reference(
            &x,
            &weight,
            None,
            [1, c_in, h, w],
            [c_out, 3, 3],
            [1, 1],
            padding,
            Activation::None,
        );
        assert_close(&got, &want, 1e-4, "tiled");
    }
}
