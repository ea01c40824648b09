//! Fused CPU kernels with their backward passes: linear layers with bias, LayerNorm,
//! softmax, GELU, window attention, the KEMs of a stage, the bilinear upsampling and the
//! segmentation cross-entropy.
//!
//! candle's own fused ops record no backward; the plain-op versions (in [`super::ops`],
//! [`super::swin::attention_plain`], the KEM loop in [`super::vmt`]) do, but keep every
//! intermediate alive until backward. These custom ops keep only their inputs and output:
//! the backward pass recomputes what it needs. CPU and f32 only; other devices use the
//! plain-op versions, and [`Kernels::Plain`] (`VMT_FUSED=0`) selects them on CPU too (for A/B runs). Each
//! kernel is tested against its plain-op version, values and gradients (tests below); the
//! inner loops are in `src/model/simd.rs`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::simd::{self, sum16, CE_BLOCK};

/// The kernels the CPU path runs: the fused ones of this module (the default), or
/// candle's plain ops (for A/B comparisons in benchmarks). A process-wide setting:
/// [`Kernels::install`] sets it, [`Kernels::from_env`] reads `VMT_FUSED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// The fused kernels of this module.
    #[default]
    Fused,
    /// candle's plain ops only.
    Plain,
}

static PLAIN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Kernels {
    /// `VMT_FUSED=0`: [`Kernels::Plain`]; anything else: [`Kernels::Fused`].
    pub fn from_env() -> Self {
        match std::env::var("VMT_FUSED") {
            Ok(v) if v == "0" => Self::Plain,
            _ => Self::Fused,
        }
    }

    /// Makes these the kernels of every model of this process from now on.
    pub fn install(self) {
        PLAIN.store(self == Self::Plain, std::sync::atomic::Ordering::Relaxed);
    }

    /// The kernels installed.
    pub fn current() -> Self {
        match PLAIN.load(std::sync::atomic::Ordering::Relaxed) {
            true => Self::Plain,
            false => Self::Fused,
        }
    }
}

/// Whether `x` goes through the fused kernels: f32 on CPU, unless [`Kernels::Plain`] is
/// installed.
pub fn enabled(x: &Tensor) -> bool {
    Kernels::current() == Kernels::Fused
        && x.device().is_cpu()
        && x.dtype() == candle_core::DType::F32
}

/// Rows per parallel task: enough work per task that scheduling does not dominate.
fn rows_per_task(d: usize) -> usize {
    (16384 / d.max(1)).max(1)
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: fused kernels take f32 only")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{what}: fused kernels take contiguous tensors"),
    }
}

/// LayerNorm over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`.
pub(crate) struct LayerNormOp {
    /// Epsilon.
    pub eps: f64,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "vmt-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "layer_norm input")?;
        let (w, b) = (
            f32_slice(s2, l2, "layer_norm weight")?,
            f32_slice(s3, l3, "layer_norm bias")?,
        );
        let d = l1.dims().last().copied().unwrap_or(1);
        let eps = self.eps as f32;
        let mut out = vec![0f32; x.len()];
        let step = d * rows_per_task(d);
        out.par_chunks_mut(step)
            .zip(x.par_chunks(step))
            .for_each(|(o, x)| {
                for (o, row) in o.chunks_mut(d).zip(x.chunks(d)) {
                    let mean = sum16(row, |v| v) / d as f32;
                    let var = sum16(row, |v| (v - mean) * (v - mean)) / d as f32;
                    let rstd = 1.0 / (var + eps).sqrt();
                    for i in 0..d {
                        o[i] = (row[i] - mean) * rstd * w[i] + b[i];
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let tracks_x = x.track_op();
        let x = x.detach();
        let d = *x.dims().last().unwrap_or(&1);
        let rows = x.elem_count() / d.max(1);
        let grad = grad.contiguous()?;
        let grad_x = tracks_x
            .then(|| {
                let (x, w) = (x.contiguous()?, w.detach().contiguous()?);
                x.apply_op3_no_bwd(&w, &grad, &LayerNormGradOp { eps: self.eps })
            })
            .transpose()?;
        // A frozen backbone's weight and bias track nothing: no row sums for them.
        let grad_w = w
            .track_op()
            .then(|| {
                let mean = x.mean_keepdim(D::Minus1)?;
                let centred = x.broadcast_sub(&mean)?;
                let rstd = (centred.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
                    .sqrt()?
                    .recip()?;
                let xhat = centred.broadcast_mul(&rstd)?;
                (&grad * &xhat)?.reshape((rows, d))?.sum(0)
            })
            .transpose()?;
        let grad_b = b
            .track_op()
            .then(|| grad.reshape((rows, d))?.sum(0))
            .transpose()?;
        Ok((grad_x, grad_w, grad_b))
    }
}

/// The input gradient of [`LayerNormOp`] in one pass per row: with `x̂` the normalised
/// row, `rstd` its `1 / sqrt(var + eps)` and `g = grad * weight`,
/// `dx = rstd (g - mean(g) - x̂ mean(g x̂))`. Inputs: `x`, `weight`, `grad`.
struct LayerNormGradOp {
    eps: f64,
}

impl CustomOp3 for LayerNormGradOp {
    fn name(&self) -> &'static str {
        "vmt-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "layer_norm backward input")?;
        let w = f32_slice(s2, l2, "layer_norm backward weight")?;
        let grad = f32_slice(s3, l3, "layer_norm backward gradient")?;
        let d = l1.dims().last().copied().unwrap_or(1);
        if grad.len() != x.len() || w.len() != d {
            candle_core::bail!(
                "layer_norm backward: input {:?}, weight {:?}, gradient {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            )
        }
        let eps = self.eps as f32;
        let mut dx = vec![0f32; x.len()];
        let step = d * rows_per_task(d);
        dx.par_chunks_mut(step)
            .zip(x.par_chunks(step).zip(grad.par_chunks(step)))
            .for_each(|(dx, (x, grad))| {
                let rows = dx.chunks_mut(d).zip(x.chunks(d).zip(grad.chunks(d)));
                for (dx, (row, grad)) in rows {
                    let mean = sum16(row, |v| v) / d as f32;
                    let var = sum16(row, |v| (v - mean) * (v - mean)) / d as f32;
                    let rstd = 1.0 / (var + eps).sqrt();
                    // dx holds g = grad * weight until the last loop.
                    for i in 0..d {
                        dx[i] = grad[i] * w[i];
                    }
                    let mean_g = sum16(dx, |g| g) / d as f32;
                    let mean_gx = simd::dot16(dx, row, mean) * rstd / d as f32;
                    for i in 0..d {
                        let xhat = (row[i] - mean) * rstd;
                        dx[i] = rstd * (dx[i] - mean_g - xhat * mean_gx);
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Softmax over the last dimension.
pub(crate) struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "vmt-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "softmax input")?;
        let d = l.dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; x.len()];
        let step = d * rows_per_task(d);
        out.par_chunks_mut(step)
            .zip(x.par_chunks(step))
            .for_each(|(o, x)| simd::softmax_rows(o, x, d));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        // dx = y * (g - sum(g * y))
        let y = res.detach();
        let dot = (grad * &y)?.sum_keepdim(D::Minus1)?;
        Ok(Some((grad.broadcast_sub(&dot)? * y)?))
    }
}

/// Elements per parallel task of the elementwise kernels.
const ELEMENTS_PER_TASK: usize = 16384;

/// Exact (erf) GELU, `0.5 x (1 + erf(x / sqrt 2))`, with erf as a rational function
/// (`simd::erf_fast`; within 2e-6 of candle's `gelu_erf`); its backward is one pass over the
/// input (candle's is about a dozen tensor ops, each a pass and an allocation over the
/// MLP's hidden activations).
pub(crate) struct GeluOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "vmt-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "gelu input")?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(x.par_chunks(ELEMENTS_PER_TASK))
            .for_each(|(o, x)| simd::gelu(o, x));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            x.detach()
                .apply_op2_no_bwd(&grad.contiguous()?, &GeluGradOp)?,
        ))
    }
}

/// `grad * gelu'(x)`, `gelu'(x) = 0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi)`.
struct GeluGradOp;

impl CustomOp2 for GeluGradOp {
    fn name(&self) -> &'static str {
        "vmt-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "gelu backward input")?;
        let g = f32_slice(s2, l2, "gelu backward gradient")?;
        if x.len() != g.len() {
            candle_core::bail!("gelu backward: {} inputs, {} gradients", x.len(), g.len())
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(ELEMENTS_PER_TASK)
            .zip(
                x.par_chunks(ELEMENTS_PER_TASK)
                    .zip(g.par_chunks(ELEMENTS_PER_TASK)),
            )
            .for_each(|(o, (x, g))| simd::gelu_grad(o, x, g));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Exact GELU: the fused kernel where [`enabled`], else candle's `gelu_erf`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if enabled(x) {
        x.contiguous()?.apply_op1(GeluOp)
    } else {
        x.gelu_erf()
    }
}

/// A linear layer with bias, `x Wᵀ + b` for `x` `[rows, in]`, `W` `[out, in]`, `b`
/// `[out]` (all contiguous): one GEMM into rows that start as the bias, so the product
/// before the bias is never a tensor of its own (the plain ops keep both it and the sum
/// for backward). Gradients only for the inputs that track one (a frozen backbone's
/// weights get none).
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.apply_op3(w, b, LinearOp)
}

struct LinearOp;

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "vmt-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "linear input")?;
        let w = f32_slice(s2, l2, "linear weight")?;
        let b = f32_slice(s3, l3, "linear bias")?;
        let (rows, inp) = l1.shape().dims2()?;
        let (out, inp_w) = l2.shape().dims2()?;
        if inp != inp_w || b.len() != out || out == 0 {
            candle_core::bail!(
                "linear: input {:?}, weight {:?}, bias {:?}",
                l1.dims(),
                l2.dims(),
                l3.dims()
            )
        }
        // y starts as the bias in every row (written once: no zeroed buffer first).
        let mut y = Vec::with_capacity(rows * out);
        y.spare_capacity_mut()
            .par_chunks_mut(out * rows_per_task(out))
            .for_each(|y| {
                y.chunks_mut(out).for_each(|r| {
                    r.iter_mut().zip(b).for_each(|(r, b)| {
                        r.write(*b);
                    })
                })
            });
        // SAFETY: every element was written above.
        unsafe { y.set_len(rows * out) };
        // y += x Wᵀ; SAFETY: x is rows x inp, W is out x inp (read transposed), y rows x out.
        unsafe {
            par_gemm(
                (rows, out, inp),
                y.as_mut_ptr(),
                true,
                (x.as_ptr(), inp),
                (w.as_ptr(), inp, true),
            )
        }
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad_x = x
            .track_op()
            .then(|| {
                grad.contiguous()?
                    .apply_op2_no_bwd(&w.detach(), &LinearGradOp)
            })
            .transpose()?;
        let grad_w = w
            .track_op()
            .then(|| grad.t()?.matmul(&x.detach()))
            .transpose()?;
        let grad_b = b.track_op().then(|| grad.sum(0)).transpose()?;
        Ok((grad_x, grad_w, grad_b))
    }
}

/// The input gradient of a linear layer, `grad W` for `grad` `[rows, out]` and `W`
/// `[out, in]`: [`par_gemm`] (candle's matmul leaves a thread idle at the deep stages'
/// few rows).
struct LinearGradOp;

impl CustomOp2 for LinearGradOp {
    fn name(&self) -> &'static str {
        "vmt-linear-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(s1, l1, "linear backward gradient")?;
        let w = f32_slice(s2, l2, "linear backward weight")?;
        let (rows, out) = l1.shape().dims2()?;
        let (out_w, inp) = l2.shape().dims2()?;
        if out != out_w {
            candle_core::bail!(
                "linear backward: gradient {:?}, weight {:?}",
                l1.dims(),
                l2.dims()
            )
        }
        // x = grad W, written into uninitialised capacity (gemm does not read dst when it
        // does not accumulate, and writes every element, zeros where out is 0).
        // SAFETY: grad is rows x out, W out x inp, x rows x inp; every element is written
        // before set_len.
        let mut x: Vec<f32> = Vec::with_capacity(rows * inp);
        unsafe {
            par_gemm(
                (rows, inp, out),
                x.spare_capacity_mut().as_mut_ptr().cast(),
                false,
                (g.as_ptr(), out),
                (w.as_ptr(), inp, false),
            );
            x.set_len(rows * inp);
        }
        Ok((CpuStorage::F32(x), Shape::from((rows, inp))))
    }
}

/// Rows per thread from which [`par_gemm`] gives each thread a block of rows.
const ROWS_PER_THREAD: usize = 256;

/// Columns per thread from which [`par_gemm`] gives each thread a block of columns when
/// there are too few rows.
const COLS_PER_THREAD: usize = 64;

/// A pointer that crosses to the pool's threads (each uses it for its own block only).
#[derive(Clone, Copy)]
struct SendPtr<T>(T);

// SAFETY: par_gemm gives each thread a block of dst no other thread touches, and the
// operands are only read.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// `dst = lhs rhs` (`dst += lhs rhs` with `accumulate`) for row-major `[m, k] x [k, n]`
/// (`lhs` row-major with the given row stride, `rhs` as in [`gemm_f32`], `dst` with row
/// stride `n`) on every thread of the pool, each thread running gemm on one block of the
/// output: blocks of rows where there are at least [`ROWS_PER_THREAD`] per thread, else
/// blocks of columns where there are at least [`COLS_PER_THREAD`], else gemm's own split.
/// Measured, not explained: gemm's own split is slower at the deep stages' few rows
/// (98 x 768 x 3072, stage 4's fc2, on 2 threads of CPU-2i: 72 GFLOP/s against 121 by
/// columns) and a few percent slower than blocks of rows at the first stages' many
/// (`vmt-hub bench gemm`, docs/benchmarks.md).
///
/// # Safety
/// Every operand must cover the elements its shape and strides address, and `dst` must
/// not overlap `lhs` or `rhs` nor be touched by anything else during the call.
unsafe fn par_gemm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    accumulate: bool,
    (lhs, lhs_s): (*const f32, usize),
    (rhs, rhs_s, rhs_t): (*const f32, usize, bool),
) {
    if m == 0 || n == 0 {
        return;
    }
    let alpha = accumulate.then_some(1.0);
    let threads = rayon::current_num_threads();
    let (rows, cols) = if m >= ROWS_PER_THREAD * threads && k > 0 {
        (m.div_ceil(threads), n)
    } else if n >= COLS_PER_THREAD * threads && k > 0 {
        (m, n.div_ceil(threads).next_multiple_of(16))
    } else {
        let (rhs, par) = ((rhs, rhs_s, rhs_t), gemm::Parallelism::Rayon(threads));
        return gemm_f32(
            (m, n, k),
            (dst, n),
            alpha,
            (lhs, lhs_s, false),
            rhs,
            1.0,
            par,
        );
    };
    let blocks: Vec<(usize, usize)> = (0..m.div_ceil(rows))
        .flat_map(|i| (0..n.div_ceil(cols)).map(move |j| (i * rows, j * cols)))
        .collect();
    let (dst, lhs, rhs) = (SendPtr(dst), SendPtr(lhs), SendPtr(rhs));
    blocks.into_par_iter().for_each(|(r0, c0)| {
        let (dst, lhs, rhs) = (dst, lhs, rhs);
        let lhs = (lhs.0.add(r0 * lhs_s), lhs_s, false);
        // Column c of rhs starts at c (row-major) or at row c (read transposed).
        let rhs = rhs.0.add(if rhs_t { c0 * rhs_s } else { c0 });
        let dst = dst.0.add(r0 * n + c0);
        let block = (rows.min(m - r0), cols.min(n - c0), k);
        let par = gemm::Parallelism::None;
        gemm_f32(block, (dst, n), alpha, lhs, (rhs, rhs_s, rhs_t), 1.0, par);
    });
}

/// How a GEMM of [`gemm_split`] shares its work between the pool's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GemmSplit {
    /// [`par_gemm`]'s blocks, as the fused linear layers run.
    Blocks,
    /// gemm's own split (`Parallelism::Rayon`), as candle's matmul runs.
    Gemm,
}

/// `y = x wᵀ` (`w` `[n, k]`) or, with `w_t`, `y = x w` (`w` `[k, n]`) for `x` `[m, k]`,
/// shared between the threads as `split` says: what `vmt-hub bench gemm` times.
///
/// # Panics
/// If an operand or `y` is shorter than its shape.
pub(crate) fn gemm_split(
    (m, n, k): (usize, usize, usize),
    (x, w, w_t): (&[f32], &[f32], bool),
    y: &mut [f32],
    split: GemmSplit,
) {
    let len = |a: usize, b: usize| a.checked_mul(b).expect("gemm_split: shape overflows");
    assert!(
        x.len() >= len(m, k) && w.len() >= len(n, k) && y.len() >= len(m, n),
        "gemm_split: operands too short"
    );
    if m == 0 || n == 0 {
        return;
    }
    let (rhs_s, rhs_t) = if w_t { (n, false) } else { (k, true) };
    // SAFETY: x is m x k, w n x k (or k x n), y m x n: checked above.
    unsafe {
        match split {
            GemmSplit::Blocks => par_gemm(
                (m, n, k),
                y.as_mut_ptr(),
                false,
                (x.as_ptr(), k),
                (w.as_ptr(), rhs_s, rhs_t),
            ),
            GemmSplit::Gemm => {
                let par = gemm::Parallelism::Rayon(rayon::current_num_threads());
                let (lhs, rhs) = ((x.as_ptr(), k, false), (w.as_ptr(), rhs_s, rhs_t));
                gemm_f32((m, n, k), (y.as_mut_ptr(), n), None, lhs, rhs, 1.0, par)
            }
        }
    }
}

/// Where a Swin block's windows come from: a `[b, h, w, c]` map, zero-padded to `hp x wp`
/// (whole windows of `ws`), cyclically shifted up and left by `shift`, cut into
/// `b * (hp / ws) * (wp / ws)` windows of `ws * ws` rows of `c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowMap {
    /// Images.
    pub b: usize,
    /// Map height.
    pub h: usize,
    /// Map width.
    pub w: usize,
    /// Channels.
    pub c: usize,
    /// Window side.
    pub ws: usize,
    /// Cyclic shift (0 for the unshifted blocks).
    pub shift: usize,
    /// Height padded to whole windows.
    pub hp: usize,
    /// Width padded to whole windows.
    pub wp: usize,
}

impl WindowMap {
    fn windows_len(&self) -> usize {
        self.b * self.hp * self.wp * self.c
    }

    fn map_len(&self) -> usize {
        self.b * self.h * self.w * self.c
    }

    fn check(&self) -> Result<()> {
        let ok = self.ws > 0
            && self.hp.is_multiple_of(self.ws)
            && self.wp.is_multiple_of(self.ws)
            && (self.h..self.h + self.ws).contains(&self.hp)
            && (self.w..self.w + self.ws).contains(&self.wp)
            && self.shift < self.ws;
        if !ok {
            candle_core::bail!("window map: {self:?} is not a map padded to whole windows")
        }
        Ok(())
    }

    /// For map row `y`: the row index within the windows' grid of rows.
    fn window_row(&self, y: usize) -> usize {
        (y + self.hp - self.shift) % self.hp
    }

    /// Copies between the map and the windows, one `c`-long row per map position:
    /// `to_windows` gathers map rows into window rows, else scatters back. Window rows of
    /// padding are not touched.
    ///
    /// # Safety
    /// `map` must hold [`Self::map_len`] and `windows` [`Self::windows_len`] elements;
    /// the written one must not be touched by anything else during the call.
    unsafe fn copy(&self, map: *mut f32, windows: *mut f32, to_windows: bool) {
        let &Self { b, h, w, c, ws, .. } = self;
        let (nw, n) = (self.wp / ws, ws * ws);
        let (map, windows) = (SendPtr(map), SendPtr(windows));
        (0..b * h).into_par_iter().for_each(|row| {
            let (map, windows) = (map, windows);
            let (bi, y) = (row / h, row % h);
            let i = self.window_row(y);
            let (wy, py) = (i / ws, i % ws);
            for x in 0..w {
                let j = (x + self.wp - self.shift) % self.wp;
                let (wx, px) = (j / ws, j % ws);
                let window = (bi * (self.hp / ws) + wy) * nw + wx;
                let at_window = windows.0.add((window * n + py * ws + px) * c);
                let at_map = map.0.add((row * w + x) * c);
                if to_windows {
                    std::ptr::copy_nonoverlapping(at_map, at_window, c);
                } else {
                    std::ptr::copy_nonoverlapping(at_window, at_map, c);
                }
            }
        });
    }
}

/// A block's windows `[b * nW, ws * ws, c]` from its map `[b, h * w, c]` (padded, shifted
/// and cut in one copy, where the plain ops pad, roll twice and permute: four copies,
/// each kept for backward). Its backward is [`window_merge`]'s copy.
pub fn window_partition(map: &Tensor, wm: WindowMap) -> Result<Tensor> {
    map.contiguous()?.apply_op1(WindowOp {
        wm,
        to_windows: true,
    })
}

/// The map `[b, h * w, c]` from a block's windows `[b * nW, ws * ws, c]`: the inverse of
/// [`window_partition`] (padding dropped).
pub fn window_merge(windows: &Tensor, wm: WindowMap) -> Result<Tensor> {
    windows.contiguous()?.apply_op1(WindowOp {
        wm,
        to_windows: false,
    })
}

/// [`window_partition`] (`to_windows`) or [`window_merge`].
struct WindowOp {
    wm: WindowMap,
    to_windows: bool,
}

impl CustomOp1 for WindowOp {
    fn name(&self) -> &'static str {
        if self.to_windows {
            "vmt-window-partition"
        } else {
            "vmt-window-merge"
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let wm = self.wm;
        wm.check()?;
        let src = f32_slice(s, l, self.name())?;
        let (from, to) = match self.to_windows {
            true => (wm.map_len(), wm.windows_len()),
            false => (wm.windows_len(), wm.map_len()),
        };
        if src.len() != from {
            candle_core::bail!("{}: input {:?} for {wm:?}", self.name(), l.dims())
        }
        let padded = (wm.hp, wm.wp) != (wm.h, wm.w);
        let mut out: Vec<f32> = if self.to_windows && padded {
            vec![0f32; to] // the padding's rows stay zero
        } else {
            Vec::with_capacity(to)
        };
        let dst = out.as_mut_ptr(); // valid for `to` writes: the capacity
                                    // SAFETY: src holds `from`, dst `to` elements (checked); every element of dst is a
                                    // copied row or (padding, zeroed above) none; the copy writes only dst.
        unsafe {
            let src = src.as_ptr().cast_mut();
            match self.to_windows {
                true => wm.copy(src, dst, true),
                false => wm.copy(dst, src, false),
            }
            out.set_len(to);
        }
        let shape = match self.to_windows {
            true => Shape::from((
                wm.b * (wm.hp / wm.ws) * (wm.wp / wm.ws),
                wm.ws * wm.ws,
                wm.c,
            )),
            false => Shape::from((wm.b, wm.h * wm.w, wm.c)),
        };
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = WindowOp {
            wm: self.wm,
            to_windows: !self.to_windows,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

/// Window attention from the qkv projection: `qkv` `[B*nW, N, 3C]` (queries, keys and
/// values, each `heads` heads of `C / heads` side by side), `bias` the relative-position
/// bias `[heads, N, N]`, `mask` `[nW, N, N]` for shifted windows (both constants of the
/// frozen backbone: they get no gradient); the context `[B*nW, N, C]`. One kernel per
/// window and head (`softmax(q kᵀ / sqrt(d) + bias + mask) v` with gemm on the strided
/// heads): no copies of q, k and v, and of the four `[B*nW, heads, N, N]` score tensors
/// the plain ops keep for backward none is kept; the backward recomputes the
/// probabilities.
pub fn window_attention(
    qkv: &Tensor,
    heads: usize,
    bias: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let bias_mask = match mask {
        // [nW, heads, N, N]
        Some(mask) => bias.unsqueeze(0)?.broadcast_add(&mask.unsqueeze(1)?)?,
        None => bias.unsqueeze(0)?,
    };
    if bias_mask.track_op() {
        candle_core::bail!("fused window attention: the bias and mask must be constants")
    }
    qkv.contiguous()?
        .apply_op2(&bias_mask.contiguous()?, WindowAttentionOp { heads })
}

/// See [`window_attention`]; the second input is the bias plus the mask, `[nW, heads, N, N]`.
struct WindowAttentionOp {
    heads: usize,
}

/// `(B*nW, N, C, head dim, nW)` of a window attention's qkv and bias-plus-mask.
fn attention_dims(
    heads: usize,
    qkv: &Layout,
    bias_mask: &Layout,
) -> Result<(usize, usize, usize, usize, usize)> {
    let (bw, n, c3) = qkv.shape().dims3()?;
    let (nw, h, n1, n2) = bias_mask.shape().dims4()?;
    let c = c3 / 3;
    if c3 % 3 != 0 || heads == 0 || c % heads != 0 || h != heads || (n1, n2) != (n, n) {
        candle_core::bail!(
            "window attention: qkv {:?} and bias {:?} for {heads} heads",
            qkv.dims(),
            bias_mask.dims()
        )
    }
    if nw == 0 || bw % nw != 0 {
        candle_core::bail!("window attention: {bw} windows is not a multiple of {nw} masks")
    }
    Ok((bw, n, c, c / heads, nw))
}

/// `dst = alpha dst + beta lhs rhs` for `[m, k] x [k, n]` in row-major f32 with the given
/// row strides (every column stride is 1 but where `*_t` says the operand is read
/// transposed: then its row stride is 1 and its column stride the one given).
///
/// # Safety
/// Every operand must cover the elements its shape and strides address.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    alpha: Option<f32>,
    (lhs, lhs_s, lhs_t): (*const f32, usize, bool),
    (rhs, rhs_s, rhs_t): (*const f32, usize, bool),
    beta: f32,
    parallelism: gemm::Parallelism,
) {
    let strides = |s: usize, t: bool| if t { (s as isize, 1) } else { (1, s as isize) };
    let (lhs_cs, lhs_rs) = strides(lhs_s, lhs_t);
    let (rhs_cs, rhs_rs) = strides(rhs_s, rhs_t);
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        alpha.is_some(),
        lhs,
        lhs_cs,
        lhs_rs,
        rhs,
        rhs_cs,
        rhs_rs,
        alpha.unwrap_or(0.0),
        beta,
        false,
        false,
        false,
        parallelism,
    )
}

impl WindowAttentionOp {
    /// For window `b` (its `[N, 3C]` qkv rows `x`) and head `h`: the scores
    /// `q kᵀ scale + bias_mask` into `s`, their softmax into `p`.
    #[allow(clippy::too_many_arguments)]
    fn probabilities(
        (n, c, hd): (usize, usize, usize),
        x: &[f32],
        bias_mask: &[f32],
        h: usize,
        s: &mut [f32],
        p: &mut [f32],
    ) {
        s.copy_from_slice(&bias_mask[h * n * n..][..n * n]);
        let scale = 1.0 / (hd as f32).sqrt();
        // SAFETY: q and k of head h are `n` rows of `hd` at stride 3c within x; s is n x n.
        unsafe {
            gemm_f32(
                (n, n, hd),
                (s.as_mut_ptr(), n),
                Some(1.0),
                (x.as_ptr().add(h * hd), 3 * c, false),
                (x.as_ptr().add(c + h * hd), 3 * c, true),
                scale,
                gemm::Parallelism::None,
            )
        }
        simd::softmax_rows(p, s, n);
    }
}

impl CustomOp2 for WindowAttentionOp {
    fn name(&self) -> &'static str {
        "vmt-window-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(s1, l1, "window attention qkv")?;
        let bias_mask = f32_slice(s2, l2, "window attention bias")?;
        let (bw, n, c, hd, nw) = attention_dims(self.heads, l1, l2)?;
        let mut out = vec![0f32; bw * n * c];
        out.par_chunks_mut(n * c)
            .zip(qkv.par_chunks(n * 3 * c))
            .enumerate()
            .for_each_init(
                || vec![0f32; 2 * n * n],
                |scratch, (b, (out, x))| {
                    let (s, p) = scratch.split_at_mut(n * n);
                    let bm = &bias_mask[(b % nw) * self.heads * n * n..];
                    for h in 0..self.heads {
                        Self::probabilities((n, c, hd), x, bm, h, s, p);
                        // out[:, h*hd..] = p v; SAFETY: v of head h is n rows of hd at
                        // stride 3c; the head's output n rows of hd at stride c.
                        unsafe {
                            gemm_f32(
                                (n, hd, n),
                                (out.as_mut_ptr().add(h * hd), c),
                                None,
                                (p.as_ptr(), n, false),
                                (x.as_ptr().add(2 * c + h * hd), 3 * c, false),
                                1.0,
                                gemm::Parallelism::None,
                            )
                        }
                    }
                },
            );
        Ok((CpuStorage::F32(out), Shape::from((bw, n, c))))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        bias_mask: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = qkv.detach().apply_op3_no_bwd(
            &bias_mask.detach(),
            &grad.contiguous()?,
            &WindowAttentionGradOp { heads: self.heads },
        )?;
        Ok((Some(g), None))
    }
}

/// The gradient of [`WindowAttentionOp`] with respect to qkv, from qkv, the bias plus
/// mask and the gradient of the context: per window and head, with `p` recomputed,
/// `dv = pᵀ g`, `dp = g vᵀ`, `ds = p (dp - rowsum(p dp))`, `dq = ds k scale`,
/// `dk = dsᵀ q scale`.
struct WindowAttentionGradOp {
    heads: usize,
}

impl CustomOp3 for WindowAttentionGradOp {
    fn name(&self) -> &'static str {
        "vmt-window-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(s1, l1, "window attention qkv")?;
        let bias_mask = f32_slice(s2, l2, "window attention bias")?;
        let grad = f32_slice(s3, l3, "window attention gradient")?;
        let (bw, n, c, hd, nw) = attention_dims(self.heads, l1, l2)?;
        if grad.len() != bw * n * c {
            candle_core::bail!(
                "window attention backward: {} gradients for {bw}x{n}x{c}",
                grad.len()
            )
        }
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; qkv.len()];
        out.par_chunks_mut(n * 3 * c)
            .zip(qkv.par_chunks(n * 3 * c).zip(grad.par_chunks(n * c)))
            .enumerate()
            .for_each_init(
                || vec![0f32; 2 * n * n],
                |scratch, (b, (dx, (x, g)))| {
                    let (s, p) = scratch.split_at_mut(n * n);
                    let bm = &bias_mask[(b % nw) * self.heads * n * n..];
                    for h in 0..self.heads {
                        WindowAttentionOp::probabilities((n, c, hd), x, bm, h, s, p);
                        let (q, k, v) = (h * hd, c + h * hd, 2 * c + h * hd);
                        // SAFETY (every call): heads are n rows of hd at stride 3c in x and
                        // dx, at stride c in g; s and p are n x n.
                        unsafe {
                            // dv = pᵀ g
                            gemm_f32(
                                (n, hd, n),
                                (dx.as_mut_ptr().add(v), 3 * c),
                                None,
                                (p.as_ptr(), n, true),
                                (g.as_ptr().add(h * hd), c, false),
                                1.0,
                                gemm::Parallelism::None,
                            );
                            // dp = g vᵀ (into s)
                            gemm_f32(
                                (n, n, hd),
                                (s.as_mut_ptr(), n),
                                None,
                                (g.as_ptr().add(h * hd), c, false),
                                (x.as_ptr().add(v), 3 * c, true),
                                1.0,
                                gemm::Parallelism::None,
                            );
                        }
                        simd::softmax_grad_rows(s, p, n); // s = ds
                        unsafe {
                            // dq = ds k scale
                            gemm_f32(
                                (n, hd, n),
                                (dx.as_mut_ptr().add(q), 3 * c),
                                None,
                                (s.as_ptr(), n, false),
                                (x.as_ptr().add(k), 3 * c, false),
                                scale,
                                gemm::Parallelism::None,
                            );
                            // dk = dsᵀ q scale
                            gemm_f32(
                                (n, hd, n),
                                (dx.as_mut_ptr().add(k), 3 * c),
                                None,
                                (s.as_ptr(), n, true),
                                (x.as_ptr().add(q), 3 * c, false),
                                scale,
                                gemm::Parallelism::None,
                            );
                        }
                    }
                },
            );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// A stage's features for one task, its knowledge-extraction modules (KEMs) applied:
/// `x + scale * sum_j (gamma_j * a_j + beta_j)` over the stage's blocks j, from the stage
/// output `x` (`[.., C]`), the blocks' adapter outputs stacked (`a`, `[d, .., C]`) and the
/// task's KEM parameters (`p`: the gammas stacked on the betas, `[2, d, C]`). One pass,
/// and one tensor kept for backward per task and stage, where the plain ops keep three
/// per task and block.
pub fn kem_features(x: &Tensor, a: &Tensor, p: &Tensor, scale: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&a.contiguous()?, &p.contiguous()?, KemOp { scale })
}

struct KemOp {
    scale: f64,
}

/// `(d, rows, C)` of a KEM's stage output, adapter outputs and parameters.
fn kem_dims(x: &Layout, a: &Layout, p: &Layout) -> Result<(usize, usize, usize)> {
    let c = x.dims().last().copied().unwrap_or(0);
    let (two, d, pc) = p.shape().dims3()?;
    let rows = x.shape().elem_count().checked_div(c).unwrap_or(0);
    if two != 2 || pc != c || c == 0 || a.shape().elem_count() != d * rows * c {
        candle_core::bail!(
            "KEM: stage output {:?}, adapter outputs {:?}, parameters {:?}",
            x.dims(),
            a.dims(),
            p.dims()
        )
    }
    Ok((d, rows, c))
}

impl CustomOp3 for KemOp {
    fn name(&self) -> &'static str {
        "vmt-kem"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "KEM stage output")?;
        let a = f32_slice(s2, l2, "KEM adapter outputs")?;
        let p = f32_slice(s3, l3, "KEM parameters")?;
        let (d, rows, c) = kem_dims(l1, l2, l3)?;
        let s = self.scale as f32;
        let gamma: Vec<f32> = p[..d * c].iter().map(|g| g * s).collect();
        let mut bias = vec![0f32; c];
        for beta in p[d * c..].chunks(c) {
            bias.iter_mut().zip(beta).for_each(|(b, v)| *b += v * s);
        }
        let step = rows_per_task(c);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(step * c)
            .zip(x.par_chunks(step * c))
            .enumerate()
            .for_each(|(i, (out, x))| {
                let a: Vec<&[f32]> = (0..d)
                    .map(|j| &a[j * rows * c + i * step * c..][..out.len()])
                    .collect();
                simd::kem_rows(out, x, &a, &gamma, &bias)
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        a: &Tensor,
        p: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // [d*rows*C + 2*d*C]: the adapter outputs' gradient, then the parameters'.
        let all =
            a.detach()
                .apply_op3_no_bwd(&p.detach(), &grad, &KemGradOp { scale: self.scale })?;
        let n = a.elem_count();
        let grad_a = all.narrow(0, 0, n)?.reshape(a.shape())?;
        // Copied out: a view would keep the whole buffer alive with the parameters' grads.
        let grad_p = all
            .narrow(0, n, p.elem_count())?
            .reshape(p.shape())?
            .copy()?;
        Ok((Some(grad), Some(grad_a), Some(grad_p)))
    }
}

/// The gradients of [`KemOp`] with respect to the adapter outputs and the parameters,
/// from the adapter outputs, the parameters and the gradient of the features:
/// `da_j = scale * gamma_j * g`, `dgamma_j = scale * sum_rows g * a_j`,
/// `dbeta_j = scale * sum_rows g`.
struct KemGradOp {
    scale: f64,
}

impl CustomOp3 for KemGradOp {
    fn name(&self) -> &'static str {
        "vmt-kem-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = f32_slice(s1, l1, "KEM adapter outputs")?;
        let p = f32_slice(s2, l2, "KEM parameters")?;
        let g = f32_slice(s3, l3, "KEM gradient")?;
        let (d, rows, c) = kem_dims(l3, l1, l2)?;
        let s = self.scale as f32;
        let mut out = vec![0f32; a.len() + 2 * d * c];
        let (da, dp) = out.split_at_mut(a.len());
        let step = rows_per_task(c) * c;
        da.par_chunks_mut(rows * c).enumerate().for_each(|(j, da)| {
            let gamma = &p[j * c..][..c];
            da.par_chunks_mut(step)
                .zip(g.par_chunks(step))
                .for_each(|(da, g)| {
                    for (da, g) in da.chunks_mut(c).zip(g.chunks(c)) {
                        for i in 0..c {
                            da[i] = s * gamma[i] * g[i];
                        }
                    }
                })
        });
        // Per chunk of rows: [dgamma (d*C), dbeta (C)], summed in chunk order (so that the
        // result does not depend on the scheduling).
        let partial: Vec<Vec<f32>> = g
            .par_chunks(step)
            .enumerate()
            .map(|(i, g)| {
                let mut sums = vec![0f32; (d + 1) * c];
                let (dgamma, dbeta) = sums.split_at_mut(d * c);
                let mut dbeta = Some(dbeta); // the same for every block: summed once
                for j in 0..d {
                    let a = &a[j * rows * c + i * step..][..g.len()];
                    simd::kem_grad_sums(&mut dgamma[j * c..][..c], dbeta.take(), g, a);
                }
                sums
            })
            .collect();
        let (dgamma, dbeta) = dp.split_at_mut(d * c);
        for sums in &partial {
            dgamma
                .iter_mut()
                .zip(&sums[..d * c])
                .for_each(|(o, v)| *o += s * v);
            for db in dbeta.chunks_mut(c) {
                db.iter_mut()
                    .zip(&sums[d * c..])
                    .for_each(|(o, v)| *o += s * v);
            }
        }
        let n = out.len();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

/// Bilinear resize (PyTorch's rule, `align_corners=False`) of a contiguous NCHW map to
/// `out_h x out_w`, two taps per axis: the decoders' upsampling to full resolution without
/// the dense resize matrices' products (56 multiply-adds per output and axis where two are
/// not zero). Its backward is the transposed taps, per map.
pub(crate) struct ResizeOp {
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
}

/// Resizes every `h x w` map of `x` to `out_h x out_w` (`grad`: the transposed resize,
/// from `out_h x out_w` maps back to `h x w`).
fn resize_maps(
    x: &[f32],
    maps: usize,
    (h, w): (usize, usize),
    (out_h, out_w): (usize, usize),
    grad: bool,
) -> Vec<f32> {
    let taps_h = super::ops::bilinear_taps(out_h, h);
    let taps_w = super::ops::bilinear_taps(out_w, w);
    let taps = (taps_h.as_slice(), taps_w.as_slice());
    let (src, dst) = if grad {
        (out_h * out_w, h * w)
    } else {
        (h * w, out_h * out_w)
    };
    let mut out = vec![0f32; maps * dst];
    out.par_chunks_mut(dst)
        .zip(x.par_chunks(src))
        .for_each_init(
            || vec![0f32; h * out_w],
            |tmp, (out, x)| {
                if grad {
                    tmp.fill(0.0);
                    simd::resize_map_grad(out, x, taps, tmp)
                } else {
                    simd::resize_map(out, x, taps, tmp)
                }
            },
        );
    out
}

impl CustomOp1 for ResizeOp {
    fn name(&self) -> &'static str {
        "vmt-resize-bilinear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, "resize input")?;
        let (b, c, h, w) = l.shape().dims4()?;
        if h == 0 || w == 0 || self.out_h == 0 || self.out_w == 0 {
            candle_core::bail!("resize: {h}x{w} to {}x{}", self.out_h, self.out_w)
        }
        let out = resize_maps(x, b * c, (h, w), (self.out_h, self.out_w), false);
        Ok((
            CpuStorage::F32(out),
            Shape::from((b, c, self.out_h, self.out_w)),
        ))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = x.dims4()?;
        let op = ResizeGradOp {
            in_hw: (h, w),
            out_hw: (self.out_h, self.out_w),
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// The gradient of [`ResizeOp`]: `[B, C, out_h, out_w]` back to `[B, C, h, w]`.
struct ResizeGradOp {
    in_hw: (usize, usize),
    out_hw: (usize, usize),
}

impl CustomOp1 for ResizeGradOp {
    fn name(&self) -> &'static str {
        "vmt-resize-bilinear-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(s, l, "resize gradient")?;
        let (b, c, oh, ow) = l.shape().dims4()?;
        if (oh, ow) != self.out_hw {
            candle_core::bail!(
                "resize backward: gradient {:?} for {:?}",
                l.dims(),
                self.out_hw
            )
        }
        let (h, w) = self.in_hw;
        let out = resize_maps(g, b * c, (h, w), (oh, ow), true);
        Ok((CpuStorage::F32(out), Shape::from((b, c, h, w))))
    }
}

/// Per-pixel cross-entropy of logits `[B, K, H, W]` (contiguous) against labels `[B, H, W]`
/// (f32 class ids, 255 = ignored): `logsumexp_k(x) - x[label]`, 0 where ignored. Its
/// backward is `g * (softmax(x) - onehot(label))`, with the log-sum-exp recovered from the
/// forward's result (`loss + x[label]`): one pass over the `[B, K, H, W]` logits each way
/// instead of the dozen of the plain-op version.
pub(crate) struct CrossEntropyOp;

impl CrossEntropyOp {
    /// `(B, K, H*W)`, after checking that the labels fit the logits and that every label
    /// is a class id below K or 255.
    fn dims(l1: &Layout, l2: &Layout, labels: &[f32]) -> Result<(usize, usize, usize)> {
        let (b, k, h, w) = l1.shape().dims4()?;
        if l2.dims() != [b, h, w] {
            candle_core::bail!(
                "cross-entropy: labels {:?} for logits {:?}",
                l2.dims(),
                l1.dims()
            )
        }
        if let Some(l) = labels
            .iter()
            .find(|&&l| l != 255.0 && !(l >= 0.0 && l < k as f32 && l.fract() == 0.0))
        {
            candle_core::bail!("cross-entropy: label {l} is not a class id below {k} or 255")
        }
        Ok((b, k, h * w))
    }
}

impl CustomOp2 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "vmt-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "cross-entropy logits")?;
        let labels = f32_slice(s2, l2, "cross-entropy labels")?;
        let (b, k, hw) = Self::dims(l1, l2, labels)?;
        let mut out = vec![0f32; b * hw];
        out.par_chunks_mut(hw)
            .zip(x.par_chunks(k * hw).zip(labels.par_chunks(hw)))
            .for_each(|(out, (x, labels))| {
                out.par_chunks_mut(CE_BLOCK)
                    .zip(labels.par_chunks(CE_BLOCK))
                    .enumerate()
                    .for_each(|(i, (out, labels))| {
                        simd::cross_entropy_block(out, x, labels, (k, hw, i * CE_BLOCK))
                    })
            });
        Ok((CpuStorage::F32(out), l2.shape().clone()))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The per-pixel losses and their gradients travel as one [2, B, H, W] tensor.
        let loss_and_grad = Tensor::stack(&[res.detach(), grad.detach()], 0)?;
        let g = logits.detach().apply_op3_no_bwd(
            &labels.detach(),
            &loss_and_grad,
            &CrossEntropyGradOp,
        )?;
        Ok((Some(g), None))
    }
}

/// `grad[b, p] * (softmax(x)[b, k, p] - [k == label[b, p]])`, 0 at ignored pixels; the
/// third input is the forward's per-pixel losses stacked on their gradients.
struct CrossEntropyGradOp;

impl CustomOp3 for CrossEntropyGradOp {
    fn name(&self) -> &'static str {
        "vmt-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, "cross-entropy logits")?;
        let labels = f32_slice(s2, l2, "cross-entropy labels")?;
        let loss_and_grad = f32_slice(s3, l3, "cross-entropy gradient")?;
        let (b, k, hw) = CrossEntropyOp::dims(l1, l2, labels)?;
        if loss_and_grad.len() != 2 * b * hw {
            candle_core::bail!(
                "cross-entropy backward: {} losses and gradients for 2x{b}x{hw} pixels",
                loss_and_grad.len()
            )
        }
        let (loss, g) = loss_and_grad.split_at(b * hw);
        // Per pixel: the log-sum-exp and the gradient, +inf and 0 where ignored.
        let (mut lse, mut gv) = (vec![0f32; b * hw], vec![0f32; b * hw]);
        (lse.par_chunks_mut(hw), gv.par_chunks_mut(hw))
            .into_par_iter()
            .enumerate()
            .for_each(|(img, (lse, gv))| {
                let x = &x[img * k * hw..][..k * hw];
                for p in 0..hw {
                    let at = img * hw + p;
                    let l = labels[at];
                    (lse[p], gv[p]) = if l == 255.0 {
                        (f32::INFINITY, 0.0)
                    } else {
                        (loss[at] + x[l as usize * hw + p], g[at])
                    };
                }
            });
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(row, (out, x))| {
                let (img, class) = (row / k, row % k);
                let at = img * hw..(img + 1) * hw;
                simd::cross_entropy_grad_row(
                    out,
                    x,
                    &labels[at.clone()],
                    &lse[at.clone()],
                    &gv[at],
                    class as f32,
                );
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use crate::model::ops::{layer_norm_plain, softmax_last_dim, softmax_plain, LayerNorm};
    use candle_core::Module;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// The gradients of `sum(out * probe)`.
    fn grads_of(out: Tensor, probe: &Tensor) -> candle_core::backprop::GradStore {
        (out * probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    /// `fused` and `plain` agree in value and in the gradient of `sum(out * probe)` with
    /// respect to `var`.
    fn assert_same(
        what: &str,
        (fused, plain): (Tensor, Tensor),
        var: &Var,
        probe: &Tensor,
        tol: (f32, f32),
    ) {
        let d = max_diff(&fused, &plain);
        assert!(d < tol.0, "{what}: values differ by {d}");
        let (gf, gp) = (grads_of(fused, probe), grads_of(plain, probe));
        let d = max_diff(
            gf.get(var.as_tensor()).unwrap(),
            gp.get(var.as_tensor()).unwrap(),
        );
        assert!(d < tol.1, "{what}: gradients differ by {d}");
    }

    /// The fused kernels give the plain-op values and gradients (the plain ops are what
    /// other devices run, and what the parity fixtures were first matched with).
    #[test]
    fn fused_equals_plain_in_value_and_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(
            &(Tensor::randn(0f32, 2f32, (3, 5, 24), &dev).unwrap() + 1.5).unwrap(),
        )
        .unwrap();
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3f32, 24, &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3f32, 24, &dev).unwrap()).unwrap();
        let probe = Tensor::randn(0f32, 1f32, (3, 5, 24), &dev).unwrap();
        let ln = LayerNorm::new(w.as_tensor().clone(), b.as_tensor().clone(), 1e-5);
        let fused = ln.forward(x.as_tensor()).unwrap();
        let plain = layer_norm_plain(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap();
        assert!(max_diff(&fused, &plain) < 1e-5);
        let gf = grads_of(fused, &probe);
        let gp = grads_of(plain, &probe);
        for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
            let d = max_diff(
                gf.get(v.as_tensor()).unwrap(),
                gp.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-4, "layer norm grad of {name}: {d}");
        }
        // A frozen weight and bias (the backbone's) get no gradient; x gets the same one.
        let (w0, b0) = (w.as_tensor().detach(), b.as_tensor().detach());
        let frozen = LayerNorm::new(w0.clone(), b0.clone(), 1e-5);
        let g = grads_of(frozen.forward(x.as_tensor()).unwrap(), &probe);
        assert!(g.get(&w0).is_none() && g.get(&b0).is_none());
        let gx = (
            g.get(x.as_tensor()).unwrap(),
            gp.get(x.as_tensor()).unwrap(),
        );
        assert!(max_diff(gx.0, gx.1) < 1e-4);

        let fused = softmax_last_dim(x.as_tensor()).unwrap();
        let plain = softmax_plain(x.as_tensor()).unwrap();
        assert_same("softmax", (fused, plain), &x, &probe, (1e-6, 1e-5));

        // GELU: candle's gelu_erf values and its backward's gradient, also where the tails
        // saturate.
        let wide = Var::from_tensor(&(x.as_tensor() * 3.0).unwrap()).unwrap();
        let fused = wide.as_tensor().apply_op1(super::GeluOp).unwrap();
        let plain = wide.as_tensor().gelu_erf().unwrap();
        assert_same("gelu", (fused, plain), &wide, &probe, (2e-6, 1e-5));
    }

    /// The fused cross-entropy gives the plain ops' per-pixel losses and gradients, with
    /// ignored pixels, a pixel count that is not a multiple of the block.
    #[test]
    fn fused_cross_entropy_equals_log_softmax() {
        let dev = Device::Cpu;
        let (b, k, h, w) = (2, 5, 23, 29);
        let x = Var::from_tensor(&Tensor::randn(0f32, 3f32, (b, k, h, w), &dev).unwrap()).unwrap();
        let labels: Vec<f32> = (0..b * h * w)
            .map(|i| {
                if i % 7 == 3 {
                    255.0
                } else {
                    (i * 31 % k) as f32
                }
            })
            .collect();
        let labels = Tensor::from_vec(labels, (b, h, w), &dev).unwrap();
        let fused = x
            .as_tensor()
            .apply_op2(&labels, super::CrossEntropyOp)
            .unwrap();
        // Plain: -log_softmax picked by a one-hot, zero where ignored.
        let classes = Tensor::arange(0f32, k as f32, &dev)
            .unwrap()
            .reshape((1, k, 1, 1))
            .unwrap();
        let one_hot = labels
            .unsqueeze(1)
            .unwrap()
            .broadcast_eq(&classes)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        let plain = (crate::model::ops::log_softmax(x.as_tensor(), 1).unwrap() * one_hot)
            .unwrap()
            .sum(1)
            .unwrap()
            .neg()
            .unwrap();
        let probe = Tensor::randn(0f32, 1f32, (b, h, w), &dev).unwrap();
        assert_same("cross-entropy", (fused, plain), &x, &probe, (1e-5, 1e-5));
    }

    /// A label that is neither a class id nor 255 is an error, not an out-of-bounds read.
    #[test]
    fn cross_entropy_rejects_a_label_outside_the_classes() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 3, 2, 2), candle_core::DType::F32, &dev).unwrap();
        for bad in [3.0, -1.0, 1.5] {
            let labels = Tensor::from_vec(vec![0f32, 1.0, bad, 255.0], (1, 2, 2), &dev).unwrap();
            let err = x.apply_op2(&labels, super::CrossEntropyOp).unwrap_err();
            assert!(err.to_string().contains(&format!("label {bad}")), "{err}");
        }
    }

    /// The fused window attention gives the plain ops' context and qkv gradient, with and
    /// without a shift mask, several heads and windows (the mask cycling over them).
    #[test]
    fn fused_window_attention_equals_plain() {
        let dev = Device::Cpu;
        let (bw, n, heads, hd, nw) = (6, 9, 3, 4, 3);
        let c = heads * hd;
        let qkv =
            Var::from_tensor(&Tensor::randn(0f32, 1f32, (bw, n, 3 * c), &dev).unwrap()).unwrap();
        let bias = Tensor::randn(0f32, 1f32, (heads, n, n), &dev).unwrap();
        let mask: Vec<f32> = (0..nw * n * n)
            .map(|i| {
                if (i * 7 + i / 11) % 5 == 0 {
                    -100.0
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (nw, n, n), &dev).unwrap();
        let probe = Tensor::randn(0f32, 1f32, (bw, n, c), &dev).unwrap();
        for mask in [None, Some(&mask)] {
            let x = qkv.as_tensor();
            let fused = super::window_attention(x, heads, &bias, mask).unwrap();
            let plain = crate::model::swin::attention_plain(x, heads, &bias, mask).unwrap();
            let what = format!("window attention, mask {}", mask.is_some());
            assert_same(&what, (fused, plain), &qkv, &probe, (1e-5, 1e-5));
        }
    }

    /// The fused KEMs give the plain ops' features and the gradients of the stage output,
    /// every block's adapter output, gamma and beta; more rows than one parallel task takes.
    #[test]
    fn fused_kem_equals_plain() {
        let dev = Device::Cpu;
        let (d, shape, c, scale) = (3, (2, 2100, 8), 8, 0.7);
        let var = |mean: f32, dims: &[usize]| {
            Var::from_tensor(&Tensor::randn(mean, 1f32, dims, &dev).unwrap()).unwrap()
        };
        let x = var(0.0, &[shape.0, shape.1, shape.2]);
        let a: Vec<Var> = (0..d)
            .map(|_| var(0.0, &[shape.0, shape.1, shape.2]))
            .collect();
        let gammas: Vec<Var> = (0..d).map(|_| var(1.0, &[c])).collect();
        let betas: Vec<Var> = (0..d).map(|_| var(0.0, &[c])).collect();
        let probe = Tensor::randn(0f32, 1f32, shape, &dev).unwrap();
        let t = |v: &[Var]| v.iter().map(|v| v.as_tensor().clone()).collect::<Vec<_>>();
        let stacked = Tensor::stack(&t(&a), 0).unwrap();
        let p = Tensor::stack(
            &[
                Tensor::stack(&t(&gammas), 0).unwrap(),
                Tensor::stack(&t(&betas), 0).unwrap(),
            ],
            0,
        )
        .unwrap();
        let fused = super::kem_features(x.as_tensor(), &stacked, &p, scale).unwrap();
        let mut acc = None::<Tensor>;
        for j in 0..d {
            let k = a[j]
                .as_tensor()
                .broadcast_mul(gammas[j].as_tensor())
                .unwrap()
                .broadcast_add(betas[j].as_tensor())
                .unwrap();
            acc = Some(match acc {
                Some(prev) => (prev + k).unwrap(),
                None => k,
            });
        }
        let plain = (x.as_tensor() + (acc.unwrap() * scale).unwrap()).unwrap();
        assert!(max_diff(&fused, &plain) < 1e-5);
        let (gf, gp) = (grads_of(fused, &probe), grads_of(plain, &probe));
        let all = std::iter::once(&x).chain(&a).chain(&gammas).chain(&betas);
        for (i, v) in all.enumerate() {
            let (f, p) = (
                gf.get(v.as_tensor()).unwrap(),
                gp.get(v.as_tensor()).unwrap(),
            );
            let scale = p
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let diff = max_diff(f, p);
            assert!(diff < 1e-5 * scale.max(1.0), "KEM gradient {i}: {diff}");
        }
    }

    /// Partition and merge in one copy each give the plain ops' windows and map and
    /// gradients: shifted or not, padded or not; merging a partition gives the map back.
    #[test]
    fn window_partition_and_merge_equal_the_plain_ops() {
        use super::{window_merge, window_partition, WindowMap};
        use crate::model::swin::{window_merge_plain, window_partition_plain};
        let dev = Device::Cpu;
        for (h, w, shift) in [
            (14usize, 14usize, 3usize),
            (9, 12, 3),
            (11, 7, 0),
            (14, 14, 0),
        ] {
            let (ws, b, c) = (7, 2, 5);
            let (hp, wp) = (h.div_ceil(ws) * ws, w.div_ceil(ws) * ws);
            let wm = WindowMap {
                b,
                h,
                w,
                c,
                ws,
                shift,
                hp,
                wp,
            };
            let what = format!("{h}x{w} shift {shift}");
            let map =
                Var::from_tensor(&Tensor::randn(0f32, 1f32, (b, h * w, c), &dev).unwrap()).unwrap();
            let n = b * (hp / ws) * (wp / ws);
            let probe = Tensor::randn(0f32, 1f32, (n, ws * ws, c), &dev).unwrap();
            let fused = window_partition(map.as_tensor(), wm).unwrap();
            let plain = window_partition_plain(map.as_tensor(), wm).unwrap();
            assert_eq!(fused.dims(), plain.dims(), "{what}");
            assert_same(
                &what,
                (fused.clone(), plain),
                &map,
                &probe,
                (0.0 + 1e-12, 1e-6),
            );
            let back = window_merge(&fused, wm).unwrap();
            assert_eq!(max_diff(&back, map.as_tensor()), 0.0, "{what}");

            let windows = Var::from_tensor(&probe).unwrap();
            let probe = Tensor::randn(0f32, 1f32, (b, h * w, c), &dev).unwrap();
            let fused = window_merge(windows.as_tensor(), wm).unwrap();
            let plain = window_merge_plain(windows.as_tensor(), wm).unwrap();
            assert_same(&what, (fused, plain), &windows, &probe, (1e-12, 1e-6));
        }
        let bad = WindowMap {
            b: 1,
            h: 7,
            w: 7,
            c: 2,
            ws: 7,
            shift: 0,
            hp: 14,
            wp: 7,
        };
        let map = Tensor::zeros((1, 49, 2), candle_core::DType::F32, &dev).unwrap();
        assert!(
            window_partition(&map, bad).is_err(),
            "a pad of a whole window"
        );
    }

    /// Both ways of sharing a GEMM between threads give candle's product, `x wᵀ` and `x w`,
    /// on 2 and 3 threads, with rows, columns and neither to split.
    #[test]
    fn gemm_splits_equal_candles_matmul() {
        use super::{gemm_split, GemmSplit};
        let dev = Device::Cpu;
        for threads in [2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            // rows; columns; gemm's split (above its threading threshold, and below it)
            for (m, n, k) in [
                (1100, 40, 24),
                (301, 250, 24),
                (301, 100, 64),
                (301, 19, 37),
            ] {
                let x = Tensor::randn(0f32, 1f32, (m, k), &dev).unwrap();
                let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for w_t in [false, true] {
                    let w_dims = if w_t { (k, n) } else { (n, k) };
                    let w = Tensor::randn(0f32, 1f32, w_dims, &dev).unwrap();
                    let ws = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let want = if w_t {
                        x.matmul(&w)
                    } else {
                        x.matmul(&w.t().unwrap())
                    };
                    let want = want.unwrap();
                    for split in [GemmSplit::Blocks, GemmSplit::Gemm] {
                        let mut y = vec![f32::NAN; m * n];
                        pool.install(|| gemm_split((m, n, k), (&xs, &ws, w_t), &mut y, split));
                        let y = Tensor::from_vec(y, (m, n), &dev).unwrap();
                        let d = max_diff(&y, &want);
                        assert!(d < 1e-4, "{split:?} {m}x{n}x{k} w_t={w_t}: {d}");
                    }
                }
            }
            // Empty shapes: nothing to write, or (no inner dimension) zeros.
            for (m, n, k) in [(0, 200, 8), (600, 0, 8), (301, 200, 0), (600, 40, 0)] {
                let (x, w) = (vec![1f32; m * k], vec![1f32; n * k]);
                for split in [GemmSplit::Blocks, GemmSplit::Gemm] {
                    let mut y = vec![f32::NAN; m * n];
                    pool.install(|| gemm_split((m, n, k), (&x, &w, false), &mut y, split));
                    assert!(y.iter().all(|v| *v == 0.0), "{split:?} {m}x{n}x{k}");
                }
            }
        }
    }

    /// The fused linear layer gives the plain ops' output and the gradients of its input,
    /// weight and bias; a frozen (constant) weight and bias get none.
    #[test]
    fn fused_linear_equals_plain() {
        // On 2 and 3 threads, sizes that do not divide evenly.
        for threads in [2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
            // (rows, in, out): forward (rows, out, in), backward (rows, in, out) as
            // (m, n, k): rows both; columns forward, gemm's backward; gemm's forward,
            // columns backward; gemm's both.
            for dims in [
                (1100, 24, 40),
                (301, 24, 250),
                (301, 250, 24),
                (301, 37, 19),
            ] {
                pool.as_ref().unwrap().install(|| linear_equals_plain(dims));
            }
        }
    }

    fn linear_equals_plain((rows, inp, out): (usize, usize, usize)) {
        let dev = Device::Cpu;
        let var = |dims: (usize, usize)| {
            Var::from_tensor(&Tensor::randn(0f32, 1f32, dims, &dev).unwrap()).unwrap()
        };
        let (x, w) = (var((rows, inp)), var((out, inp)));
        let b = Var::from_tensor(&Tensor::randn(0f32, 1f32, out, &dev).unwrap()).unwrap();
        let probe = Tensor::randn(0f32, 1f32, (rows, out), &dev).unwrap();
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        let fused = super::linear(xt, wt, bt).unwrap();
        let plain = xt
            .matmul(&wt.t().unwrap())
            .unwrap()
            .broadcast_add(bt)
            .unwrap();
        assert!(max_diff(&fused, &plain) < 1e-5);
        let (gf, gp) = (grads_of(fused, &probe), grads_of(plain, &probe));
        for (name, v) in [("x", &x), ("weight", &w), ("bias", &b)] {
            let d = max_diff(
                gf.get(v.as_tensor()).unwrap(),
                gp.get(v.as_tensor()).unwrap(),
            );
            assert!(d < 1e-4, "linear gradient of {name}: {d}");
        }
        let (w0, b0) = (wt.detach(), bt.detach());
        let g = grads_of(super::linear(xt, &w0, &b0).unwrap(), &probe);
        assert!(g.get(xt).is_some());
        assert!(g.get(&w0).is_none() && g.get(&b0).is_none());
    }
}
