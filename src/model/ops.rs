//! Differentiable building blocks.
//!
//! candle's fused `layer_norm`, `softmax_last_dim` and `upsample_bilinear2d` record no
//! backward op: a gradient through them silently vanishes. Everything on the training
//! path uses these versions instead: linear layers, LayerNorm, softmax and the bilinear
//! upsampling run as our own fused CPU kernels with backward passes ([`super::fused`])
//! and as plain tensor ops on other devices (bilinear resizing as two fixed
//! interpolation matrices).

use candle_core::{DType, Device, Module, Result, Tensor, D};

/// A linear layer with a PyTorch-layout weight `[out, in]` and optional bias `[out]`.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// A linear layer.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }
}

impl Module for Linear {
    /// `[..., in] -> [..., out]`, as one 2-D matmul over the flattened leading dims.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let (lead, inp) = dims.split_at(dims.len() - 1);
        let rows: usize = lead.iter().product();
        let out = self.weight.dim(0)?;
        let x = x.reshape((rows, inp[0]))?;
        let y = match &self.bias {
            Some(b) if super::fused::enabled(&x) && self.weight.is_contiguous() => {
                super::fused::linear(&x.contiguous()?, &self.weight, &b.contiguous()?)?
            }
            Some(b) => x.matmul(&self.weight.t()?)?.broadcast_add(b)?,
            None => x.matmul(&self.weight.t()?)?,
        };
        let mut shape = lead.to_vec();
        shape.push(out);
        y.reshape(shape)
    }
}

/// LayerNorm over the last dimension, built from plain ops so that gradients flow.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    /// Scale.
    pub weight: Tensor,
    /// Shift.
    pub bias: Tensor,
    /// Epsilon.
    pub eps: f64,
}

impl LayerNorm {
    /// A LayerNorm over the last dimension.
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if super::fused::enabled(x) {
            let op = super::fused::LayerNormOp { eps: self.eps };
            return x.contiguous()?.apply_op3(
                &self.weight.contiguous()?,
                &self.bias.contiguous()?,
                op,
            );
        }
        layer_norm_plain(x, &self.weight, &self.bias, self.eps)
    }
}

/// LayerNorm from plain ops (every device; the reference for the fused CPU kernel).
pub fn layer_norm_plain(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(weight)?.broadcast_add(bias)
}

/// Softmax over the last dimension, with a backward pass: the fused kernel on CPU, plain
/// ops elsewhere.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if super::fused::enabled(x) {
        return x.contiguous()?.apply_op1(super::fused::SoftmaxOp);
    }
    softmax_plain(x)
}

/// Softmax over the last dimension from plain ops (the max is a constant shift).
pub fn softmax_plain(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Log-softmax over dimension `dim` from plain ops.
pub fn log_softmax(x: &Tensor, dim: usize) -> Result<Tensor> {
    let max = x.max_keepdim(dim)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(dim)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// The two taps of PyTorch's bilinear resize with `align_corners=False` along one axis,
/// per output position: `y[i] = w0 * x[i0] + w1 * x[i1]` as `(i0, i1, w0, w1)`.
pub fn bilinear_taps(out: usize, inp: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = inp as f64 / out as f64;
    (0..out)
        .map(|i| {
            let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(inp - 1);
            let i1 = (i0 + 1).min(inp - 1);
            let l1 = src - i0 as f64;
            (i0, i1, (1.0 - l1) as f32, l1 as f32)
        })
        .collect()
}

/// The `[out, in]` matrix of the same resize: `y = A · x`.
pub fn bilinear_matrix(out: usize, inp: usize) -> Vec<f32> {
    let mut a = vec![0f32; out * inp];
    for (i, (i0, i1, w0, w1)) in bilinear_taps(out, inp).into_iter().enumerate() {
        a[i * inp + i0] += w0;
        a[i * inp + i1] += w1;
    }
    a
}

/// Bilinear resize of an NCHW map `[B, C, h, w]` to `[B, C, H, W]` (same rule).
pub fn resize_bilinear_nchw(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    if super::fused::enabled(x) {
        return x
            .contiguous()?
            .apply_op1(super::fused::ResizeOp { out_h, out_w });
    }
    resize_bilinear_nchw_plain(x, out_h, out_w)
}

/// [`resize_bilinear_nchw`] from plain ops: a matmul with the resize matrix along each axis.
pub fn resize_bilinear_nchw_plain(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let dev = x.device();
    let a_h = Tensor::from_vec(bilinear_matrix(out_h, h), (out_h, h), dev)?.to_dtype(x.dtype())?;
    let a_w = Tensor::from_vec(bilinear_matrix(out_w, w), (out_w, w), dev)?.to_dtype(x.dtype())?;
    // Along W: [B*C*h, w] · A_wᵀ -> [B*C*h, W].
    let y = x.contiguous()?.reshape((b * c * h, w))?.matmul(&a_w.t()?)?;
    // Along H: A_h [H, h] · [h, W] for each of the B*C maps (A_h broadcast over them, no
    // transposed copies).
    let y = a_h
        .broadcast_as((b * c, out_h, h))?
        .matmul(&y.reshape((b * c, h, out_w))?)?;
    y.reshape((b, c, out_h, out_w))
}

/// Bilinear resize of an NHWC map `[B, h, w, C]` to `[B, H, W, C]` (same rule), with no
/// transposed copies: along W one product per image row, along H one per image.
pub fn resize_bilinear_nhwc(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    let dev = x.device();
    let a_h = Tensor::from_vec(bilinear_matrix(out_h, h), (out_h, h), dev)?.to_dtype(x.dtype())?;
    let a_w = Tensor::from_vec(bilinear_matrix(out_w, w), (out_w, w), dev)?.to_dtype(x.dtype())?;
    // Along W: A_w [W, w] · [w, C] for each of the B*h rows.
    let y = a_w
        .broadcast_as((b * h, out_w, w))?
        .matmul(&x.contiguous()?.reshape((b * h, w, c))?)?;
    // Along H: A_h [H, h] · [h, W*C] for each image.
    let y = a_h
        .broadcast_as((b, out_h, h))?
        .matmul(&y.reshape((b, h, out_w * c))?)?;
    y.reshape((b, out_h, out_w, c))
}

/// A scalar f32 tensor on `dev`.
pub fn scalar(v: f32, dev: &Device) -> Result<Tensor> {
    Tensor::new(v, dev)?.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    fn diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// The gradient of `sum(y * probe)` with respect to `x`.
    fn grad(y: Tensor, probe: &Tensor, x: &Var) -> Tensor {
        let g = (y * probe).unwrap().sum_all().unwrap().backward().unwrap();
        g.get(x.as_tensor()).unwrap().clone()
    }

    /// The NHWC resize is the NCHW one on the transposed map, in value and in gradient, up
    /// and down, by uneven factors.
    #[test]
    fn nhwc_resize_equals_nchw_resize() {
        let dev = Device::Cpu;
        for (h, w, out_h, out_w) in [(7, 5, 14, 20), (9, 12, 4, 5), (3, 3, 3, 8)] {
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1f32, (2, h, w, 3), &dev).unwrap()).unwrap();
            let probe = Tensor::randn(0f32, 1f32, (2, out_h, out_w, 3), &dev).unwrap();
            let nhwc = super::resize_bilinear_nhwc(x.as_tensor(), out_h, out_w).unwrap();
            let nchw = super::resize_bilinear_nchw(
                &x.as_tensor().permute((0, 3, 1, 2)).unwrap(),
                out_h,
                out_w,
            )
            .unwrap()
            .permute((0, 2, 3, 1))
            .unwrap();
            assert!(diff(&nhwc, &nchw) < 1e-6, "{h}x{w} -> {out_h}x{out_w}");
            let d = diff(&grad(nhwc, &probe, &x), &grad(nchw, &probe, &x));
            assert!(d < 1e-5, "gradient {h}x{w} -> {out_h}x{out_w}: {d}");
        }
    }

    /// The two-tap kernel is the matrix version, in value and in gradient.
    #[test]
    fn fused_resize_equals_matrix_resize() {
        let dev = Device::Cpu;
        for (h, w, out_h, out_w) in [
            (14, 14, 56, 56),
            (7, 5, 20, 14),
            (9, 12, 4, 5),
            (1, 3, 2, 3),
        ] {
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1f32, (2, 3, h, w), &dev).unwrap()).unwrap();
            let probe = Tensor::randn(0f32, 1f32, (2, 3, out_h, out_w), &dev).unwrap();
            let fused = super::resize_bilinear_nchw(x.as_tensor(), out_h, out_w).unwrap();
            let plain = super::resize_bilinear_nchw_plain(x.as_tensor(), out_h, out_w).unwrap();
            assert!(diff(&fused, &plain) < 1e-5, "{h}x{w} -> {out_h}x{out_w}");
            let d = diff(&grad(fused, &probe, &x), &grad(plain, &probe, &x));
            assert!(d < 1e-5, "gradient {h}x{w} -> {out_h}x{out_w}: {d}");
        }
    }
}
