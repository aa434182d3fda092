//! Exact reformulations of two UNet layers that do less arithmetic than the textbook composition, with the
//! same weights and (up to floating-point summation order) the same outputs and gradients.
//!
//! - [`upsample2x_conv3x3`]: nearest-neighbour ×2 upsampling followed by a 3×3 convolution (padding 1) equals,
//!   for each of the four output phases `(a, b) = (row parity, column parity)`, a 2×2 convolution of the
//!   *low-resolution* input whose taps are sums of the 3×3 taps. With `A₀ = [[1,0,0],[0,1,1]]` and
//!   `A₁ = [[1,1,0],[0,0,1]]` the phase kernel is `K_ab = A_a · W · A_bᵀ`; even output rows read input rows
//!   `i−1, i`, odd ones `i, i+1`. One convolution with `4·C_out` output channels (2×2 kernel, padding 1) gives
//!   all phases on an `(H+1)×(W+1)` grid, and one strided view interleaves them into `[N, C_out, 2H, 2W]`.
//!   Multiply-adds per output pixel drop from `9·C_in` to `4·C_in` (2.25× fewer), and the upsampled
//!   activation is never built.
//! - [`conv3x3_few_outputs`]: a 3×3 convolution (padding 1) with very few output channels (the UNet's
//!   `conv_out`) as a 1×1 convolution to `9·C_out` channels followed by `col2im`, which sums the nine shifted
//!   taps. oneDNN's direct convolution is slow when `C_out` is 1–4; the 1×1 convolution is not.
//!
//! Both are used by [`crate::blocks::Upsample2D`] and [`crate::unet::UNet2DModel`] unless
//! [`set_enabled`]`(false)` turns them off for the whole process (the benchmark's `--reference-layers`, to
//! measure what they buy). Tests compare each against the composition it replaces, values and gradients, in
//! f64.
use std::sync::atomic::{AtomicBool, Ordering};

use tch::Tensor;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the reformulated layers on (the default) or off for the whole process.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether the reformulated layers are used.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// `conv2d(upsample_nearest(xs, ×2), weight, bias, padding = 1)` with 2.25× fewer multiply-adds.
///
/// # Shapes
/// `xs`: `[N, C_in, H, W]`, `weight`: `[C_out, C_in, 3, 3]`, `bias`: `[C_out]` → `[N, C_out, 2H, 2W]`.
pub fn upsample2x_conv3x3(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let (n, _, h, w) = xs.size4().expect("upsample input must be [N, C, H, W]");
    let c_out = weight.size()[0];
    let c_in = weight.size()[1];
    // A[a]: which 3×3 taps fall on the two low-resolution rows an output row of parity `a` reads.
    let a = Tensor::from_slice(&[1.0f64, 0., 0., 0., 1., 1., 1., 1., 0., 0., 0., 1.])
        .view([2, 2, 3])
        .to_kind(weight.kind())
        .to_device(weight.device());
    // K[a, b, o, i, p, q] = Σ_{h, w} A[a, p, h] · W[o, i, h, w] · A[b, q, w].
    let kernel = Tensor::einsum("aph,oihw,bqw->aboipq", &[&a, weight, &a], None::<i64>).reshape([
        4 * c_out,
        c_in,
        2,
        2,
    ]);
    let bias4 = bias.map(|b| b.repeat([4]));
    let ys = xs
        .conv2d(&kernel, bias4.as_ref(), [1, 1], [1, 1], [1, 1], 1)
        .contiguous();
    // ys[n, (a, b, o), r, c] with r ∈ 0..=H, c ∈ 0..=W; output pixel (2i + a, 2j + b) is ys[n, (a, b, o), i + a,
    // j + b]. As a strided view [N, C_out, H, 2, W, 2] of that buffer:
    let (s_w, s_h) = (1, w + 1);
    let s_o = (h + 1) * (w + 1);
    let s_b = c_out * s_o;
    let s_a = 2 * s_b;
    let s_n = 4 * s_b;
    ys.as_strided(
        [n, c_out, h, 2, w, 2],
        [s_n, s_o, s_h, s_a + s_h, s_w, s_b + s_w],
        None::<i64>,
    )
    .reshape([n, c_out, 2 * h, 2 * w])
}

/// `conv2d(xs, weight, bias, padding = 1)` for a 3×3 kernel, as a 1×1 convolution to the nine taps and
/// `col2im`. Meant for few output channels (see [`conv3x3_few_outputs_pays`]).
///
/// # Shapes
/// `xs`: `[N, C_in, H, W]`, `weight`: `[C_out, C_in, 3, 3]`, `bias`: `[C_out]` → `[N, C_out, H, W]`.
pub fn conv3x3_few_outputs(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let (n, _, h, w) = xs.size4().expect("conv input must be [N, C, H, W]");
    let (c_out, c_in) = (weight.size()[0], weight.size()[1]);
    // col2im adds column (c·9 + k) of the patch matrix at offset k (row-major in the 3×3 window) from each
    // location, i.e. it correlates with the flipped kernel: feed it the flipped taps.
    let taps = weight
        .flip([2, 3])
        .permute([0, 2, 3, 1])
        .reshape([9 * c_out, c_in, 1, 1]);
    let cols = xs
        .conv2d(&taps, None::<Tensor>, [1, 1], [0, 0], [1, 1], 1)
        .view([n, 9 * c_out, h * w]);
    let ys = cols.col2im([h, w], [3, 3], [1, 1], [1, 1], [1, 1]);
    match bias {
        Some(b) => ys + b.view([1, c_out, 1, 1]),
        None => ys,
    }
}

/// Whether [`conv3x3_few_outputs`] is the faster way for a 3×3 convolution from `c_in` to `c_out` channels
/// (measured on oneDNN: `C_out ≤ 4` with at least 8 input channels per output channel).
pub fn conv3x3_few_outputs_pays(c_in: i64, c_out: i64) -> bool {
    c_out <= 4 && c_in >= 8 * c_out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    const TEST_KIND: Kind = Kind::Double;

    fn randn(shape: &[i64]) -> Tensor {
        Tensor::randn(shape, (TEST_KIND, Device::Cpu))
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    /// Values and gradients (input, weight, bias) of `fast` against `reference` under a random cotangent.
    fn check_same(
        x_shape: &[i64],
        w_shape: &[i64],
        out_shape: &[i64],
        fast: impl Fn(&Tensor, &Tensor, Option<&Tensor>) -> Tensor,
        reference: impl Fn(&Tensor, &Tensor, Option<&Tensor>) -> Tensor,
    ) {
        let xs = randn(x_shape).set_requires_grad(true);
        let w = randn(w_shape).set_requires_grad(true);
        let b = randn(&[w_shape[0]]).set_requires_grad(true);
        let cot = randn(out_shape);
        let grads = |f: &dyn Fn(&Tensor, &Tensor, Option<&Tensor>) -> Tensor| {
            let y = f(&xs, &w, Some(&b));
            assert_eq!(y.size(), out_shape);
            let loss = (&y * &cot).sum(TEST_KIND);
            let g = Tensor::run_backward(&[loss], &[&xs, &w, &b], false, false);
            (y.detach(), g)
        };
        let (yf, gf) = grads(&fast);
        let (yr, gr) = grads(&reference);
        let scale = yr.abs().max().double_value(&[]);
        assert!(
            max_abs(&yf, &yr) <= 1e-12 * scale.max(1.0),
            "values differ by {}",
            max_abs(&yf, &yr)
        );
        for (name, (a, r)) in ["input", "weight", "bias"]
            .iter()
            .zip(gf.iter().zip(gr.iter()))
        {
            let s = r.abs().max().double_value(&[]).max(1.0);
            let e = max_abs(a, r);
            assert!(e <= 1e-12 * s, "{name} gradients differ by {e} (scale {s})");
        }
    }

    fn naive_upsample_conv(xs: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        let (_, _, h, wd) = xs.size4().unwrap();
        xs.upsample_nearest2d([2 * h, 2 * wd], None::<f64>, None::<f64>)
            .conv2d(w, b, [1, 1], [1, 1], [1, 1], 1)
    }

    fn naive_conv(xs: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        xs.conv2d(w, b, [1, 1], [1, 1], [1, 1], 1)
    }

    #[test]
    fn upsample_conv_equals_upsample_then_conv() {
        tch::manual_seed(1);
        for (c_in, c_out, h, w) in [(3, 5, 4, 4), (4, 4, 7, 7), (2, 3, 1, 1), (6, 2, 3, 5)] {
            check_same(
                &[2, c_in, h, w],
                &[c_out, c_in, 3, 3],
                &[2, c_out, 2 * h, 2 * w],
                upsample2x_conv3x3,
                naive_upsample_conv,
            );
        }
    }

    #[test]
    fn upsample_conv_handles_channels_last_and_no_bias() {
        tch::manual_seed(2);
        let _guard = tch::no_grad_guard();
        // An attention block hands over a [N, C, H, W] tensor with channels-last strides.
        let xs = randn(&[2, 5, 3, 4])
            .permute([0, 2, 3, 1])
            .contiguous()
            .permute([0, 3, 1, 2]);
        assert!(!xs.is_contiguous());
        let w = randn(&[3, 5, 3, 3]);
        let e = max_abs(
            &upsample2x_conv3x3(&xs, &w, None),
            &naive_upsample_conv(&xs, &w, None),
        );
        assert!(e < 1e-12, "{e}");
    }

    #[test]
    fn few_output_conv_equals_conv() {
        tch::manual_seed(3);
        for (c_in, c_out, h, w) in [(8, 1, 5, 5), (16, 2, 4, 6), (3, 3, 1, 1), (32, 1, 28, 28)] {
            check_same(
                &[2, c_in, h, w],
                &[c_out, c_in, 3, 3],
                &[2, c_out, h, w],
                conv3x3_few_outputs,
                naive_conv,
            );
        }
    }

    #[test]
    fn few_output_rule() {
        assert!(conv3x3_few_outputs_pays(32, 1));
        assert!(conv3x3_few_outputs_pays(128, 3));
        assert!(!conv3x3_few_outputs_pays(64, 32));
        assert!(!conv3x3_few_outputs_pays(4, 1));
    }
}
