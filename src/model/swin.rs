//! The frozen Swin Transformer backbone (Hugging Face `SwinModel` semantics).
//!
//! Weights use the Hugging Face names without the `swin.` prefix
//! (`embeddings.*`, `encoder.layers.{i}.blocks.{j}.*`, `encoder.layers.{i}.downsample.*`,
//! `layernorm.*`); [`super::backbone`] maps other layouts onto them. Every tensor here
//! is a plain tensor, never a Var: the backbone is not trained, but gradients flow
//! through it to the adapters of earlier blocks, so every op is differentiable.
//!
//! Window rule (the reference's `_no_clamp`): a window never shrinks; a stage whose map
//! is no larger than one window on its shorter side gets no shift; maps are zero-padded
//! bottom/right to whole windows.

use candle_core::{DType, Device, Module, Result, Tensor};

use super::error::ModelError;
use super::fused::WindowMap;
use super::ops::{softmax_last_dim, LayerNorm, Linear};
use super::tensors::NamedTensors;
use vmt_registry::bundle::SwinGeometry;

/// Reads one backbone tensor as f32 (checkpoints may hold f16/bf16).
fn weight(
    w: &NamedTensors,
    name: &str,
    shape: &[usize],
) -> std::result::Result<Tensor, ModelError> {
    Ok(w.get(name, shape)?.to_dtype(DType::F32)?)
}

fn layer_norm(
    w: &NamedTensors,
    prefix: &str,
    dim: usize,
    eps: f64,
) -> std::result::Result<LayerNorm, ModelError> {
    Ok(LayerNorm::new(
        weight(w, &format!("{prefix}.weight"), &[dim])?,
        weight(w, &format!("{prefix}.bias"), &[dim])?,
        eps,
    ))
}

fn linear(
    w: &NamedTensors,
    prefix: &str,
    out: usize,
    inp: usize,
    bias: bool,
) -> std::result::Result<Linear, ModelError> {
    let b = if bias {
        Some(weight(w, &format!("{prefix}.bias"), &[out])?)
    } else {
        None
    };
    Ok(Linear::new(
        weight(w, &format!("{prefix}.weight"), &[out, inp])?,
        b,
    ))
}

/// Patch embedding: a `p x p` stride-`p` convolution (done as one matmul) and a LayerNorm.
#[derive(Debug, Clone)]
pub struct PatchEmbed {
    /// `[C, 3*p*p]`: the convolution kernel flattened in (channel, row, column) order.
    proj: Linear,
    norm: LayerNorm,
    patch: usize,
}

impl PatchEmbed {
    fn new(w: &NamedTensors, g: &SwinGeometry) -> std::result::Result<Self, ModelError> {
        let (c, p) = (g.embed_dim, g.patch_size);
        let kernel = weight(
            w,
            "embeddings.patch_embeddings.projection.weight",
            &[c, 3, p, p],
        )?;
        let bias = weight(w, "embeddings.patch_embeddings.projection.bias", &[c])?;
        Ok(Self {
            proj: Linear::new(kernel.reshape((c, 3 * p * p))?, Some(bias)),
            norm: layer_norm(w, "embeddings.norm", c, g.layer_norm_eps)?,
            patch: p,
        })
    }

    /// `[B, 3, H, W]` -> tokens `[B, h*w, C]` with `h = ceil(H/p)`, `w = ceil(W/p)`
    /// (the input is zero-padded bottom/right to whole patches, as in Hugging Face).
    pub fn forward(&self, x: &Tensor) -> Result<(Tensor, usize, usize)> {
        let p = self.patch;
        let (b, c, hi, wi) = x.dims4()?;
        let (h, w) = (hi.div_ceil(p), wi.div_ceil(p));
        let x = x
            .pad_with_zeros(3, 0, w * p - wi)?
            .pad_with_zeros(2, 0, h * p - hi)?;
        let patches = x
            .reshape((b, c, h, p, w, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((b, h * w, c * p * p))?;
        let tokens = self.norm.forward(&self.proj.forward(&patches)?)?;
        Ok((tokens, h, w))
    }
}

/// Window multi-head self-attention with a learned relative position bias.
#[derive(Debug, Clone)]
pub struct WindowAttention {
    /// Query, key and value fused: `[3C, C]`.
    qkv: Linear,
    proj: Linear,
    /// `[heads, N, N]` with `N = window²`, gathered once from the bias table.
    relative_bias: Tensor,
    heads: usize,
}

/// Index into the `(2w-1)²` relative-position table for each pair of tokens of a window.
fn relative_position_index(window: usize) -> Vec<u32> {
    let n = window * window;
    let mut idx = Vec::with_capacity(n * n);
    for i in 0..n {
        for j in 0..n {
            let dy = (i / window) as i64 - (j / window) as i64 + window as i64 - 1;
            let dx = (i % window) as i64 - (j % window) as i64 + window as i64 - 1;
            idx.push((dy * (2 * window as i64 - 1) + dx) as u32);
        }
    }
    idx
}

impl WindowAttention {
    fn new(
        w: &NamedTensors,
        prefix: &str,
        dim: usize,
        heads: usize,
        window: usize,
    ) -> std::result::Result<Self, ModelError> {
        let part = |n: &str| -> std::result::Result<(Tensor, Tensor), ModelError> {
            Ok((
                weight(w, &format!("{prefix}.self.{n}.weight"), &[dim, dim])?,
                weight(w, &format!("{prefix}.self.{n}.bias"), &[dim])?,
            ))
        };
        let (qw, qb) = part("query")?;
        let (kw, kb) = part("key")?;
        let (vw, vb) = part("value")?;
        let qkv = Linear::new(
            Tensor::cat(&[qw, kw, vw], 0)?,
            Some(Tensor::cat(&[qb, kb, vb], 0)?),
        );
        let span = 2 * window - 1;
        let table = weight(
            w,
            &format!("{prefix}.self.relative_position_bias_table"),
            &[span * span, heads],
        )?;
        let n = window * window;
        let index = Tensor::from_vec(relative_position_index(window), n * n, table.device())?;
        let relative_bias = table
            .index_select(&index, 0)?
            .reshape((n, n, heads))?
            .permute((2, 0, 1))?
            .contiguous()?;
        Ok(Self {
            qkv,
            proj: linear(w, &format!("{prefix}.output.dense"), dim, dim, true)?,
            relative_bias,
            heads,
        })
    }

    /// `windows`: `[B*nW, N, C]`; `mask`: `[nW, N, N]` (0 or -100) for shifted windows.
    pub fn forward(&self, windows: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let qkv = self.qkv.forward(windows)?; // [B*nW, N, 3C]
        let context = if super::fused::enabled(&qkv) {
            super::fused::window_attention(&qkv, self.heads, &self.relative_bias, mask)?
        } else {
            attention_plain(&qkv, self.heads, &self.relative_bias, mask)?
        };
        self.proj.forward(&context)
    }
}

/// Multi-head attention within each window from plain tensor ops: `qkv` `[B*nW, N, 3C]`
/// (queries, keys, values, each `heads` heads of `C / heads`), `bias` `[heads, N, N]`,
/// `mask` `[nW, N, N]`; the context `[B*nW, N, C]`, heads side by side.
pub fn attention_plain(
    qkv: &Tensor,
    heads: usize,
    bias: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (bw, n, c3) = qkv.dims3()?;
    let c = c3 / 3;
    let hd = c / heads;
    let qkv = qkv
        .reshape((bw, n, 3, heads, hd))?
        .permute((2, 0, 3, 1, 4))?; // [3, B*nW, heads, N, hd]
    let q = qkv.get(0)?.contiguous()?;
    let k = qkv.get(1)?.contiguous()?;
    let v = qkv.get(2)?.contiguous()?;
    let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?; // [B*nW, heads, N, N]
    let scores = scores.broadcast_add(bias)?;
    let scores = match mask {
        Some(mask) => {
            let nw = mask.dim(0)?;
            scores
                .reshape((bw / nw, nw, heads, n, n))?
                .broadcast_add(&mask.unsqueeze(1)?)?
                .reshape((bw, heads, n, n))?
        }
        None => scores,
    };
    softmax_last_dim(&scores)?
        .matmul(&v)? // [B*nW, heads, N, hd]
        .transpose(1, 2)?
        .reshape((bw, n, c))
}

/// How a stage's blocks tile its `h x w` map into windows.
#[derive(Debug, Clone)]
pub struct StageLayout {
    /// Map height.
    pub h: usize,
    /// Map width.
    pub w: usize,
    /// Padded to whole windows.
    pub h_pad: usize,
    /// Width padded to whole windows.
    pub w_pad: usize,
    /// Shift of the odd blocks: half a window, or 0 when the map fits one window.
    pub shift: usize,
    /// `[nW, N, N]` attention mask of the shifted blocks (None when `shift == 0`).
    pub mask: Option<Tensor>,
}

impl StageLayout {
    /// The layout of an `h x w` map in windows of `window`.
    pub fn new(h: usize, w: usize, window: usize, device: &Device) -> Result<Self> {
        let shift = if h.min(w) <= window { 0 } else { window / 2 };
        let (h_pad, w_pad) = (h.div_ceil(window) * window, w.div_ceil(window) * window);
        let mask = if shift > 0 {
            Some(shifted_window_mask(h_pad, w_pad, window, shift, device)?)
        } else {
            None
        };
        Ok(Self {
            h,
            w,
            h_pad,
            w_pad,
            shift,
            mask,
        })
    }
}

/// The Hugging Face mask: tokens from different regions of the rolled map get -100.
fn shifted_window_mask(
    hp: usize,
    wp: usize,
    window: usize,
    shift: usize,
    device: &Device,
) -> Result<Tensor> {
    let region = |pos: usize, len: usize| {
        if pos < len - window {
            0
        } else if pos < len - shift {
            1
        } else {
            2
        }
    };
    let n = window * window;
    let (nh, nw) = (hp / window, wp / window);
    let mut mask = Vec::with_capacity(nh * nw * n * n);
    for wy in 0..nh {
        for wx in 0..nw {
            let ids: Vec<usize> = (0..n)
                .map(|t| {
                    let (y, x) = (wy * window + t / window, wx * window + t % window);
                    region(y, hp) * 3 + region(x, wp)
                })
                .collect();
            for &a in &ids {
                for &b in &ids {
                    mask.push(if a == b { 0f32 } else { -100f32 });
                }
            }
        }
    }
    Tensor::from_vec(mask, (nh * nw, n, n), device)
}

/// One Swin block. The VMT model drives its two halves ([`attend`](Self::attend) and
/// [`mlp`](Self::mlp)) so that the adapter can read `LN_after(x1)`.
#[derive(Debug, Clone)]
pub struct SwinBlock {
    layernorm_before: LayerNorm,
    attention: WindowAttention,
    /// LayerNorm before the MLP (and the adapter).
    pub layernorm_after: LayerNorm,
    intermediate: Linear,
    output: Linear,
    window: usize,
    /// Whether this block shifts its windows (the odd blocks of a stage).
    shifted: bool,
}

impl SwinBlock {
    fn new(
        w: &NamedTensors,
        prefix: &str,
        g: &SwinGeometry,
        dim: usize,
        heads: usize,
        shifted: bool,
    ) -> std::result::Result<Self, ModelError> {
        let eps = g.layer_norm_eps;
        let hidden = g.mlp_hidden(dim);
        Ok(Self {
            layernorm_before: layer_norm(w, &format!("{prefix}.layernorm_before"), dim, eps)?,
            attention: WindowAttention::new(
                w,
                &format!("{prefix}.attention"),
                dim,
                heads,
                g.window_size,
            )?,
            layernorm_after: layer_norm(w, &format!("{prefix}.layernorm_after"), dim, eps)?,
            intermediate: linear(
                w,
                &format!("{prefix}.intermediate.dense"),
                hidden,
                dim,
                true,
            )?,
            output: linear(w, &format!("{prefix}.output.dense"), dim, hidden, true)?,
            window: g.window_size,
            shifted,
        })
    }

    /// `x1 = x + WindowAttention(LN_before(x))`; `x`: `[B, h*w, C]`.
    pub fn attend(&self, x: &Tensor, layout: &StageLayout) -> Result<Tensor> {
        let (b, _, c) = x.dims3()?;
        let (ws, h, w) = (self.window, layout.h, layout.w);
        let shift = if self.shifted { layout.shift } else { 0 };
        let (hp, wp) = (layout.h_pad, layout.w_pad);
        let mask = if shift > 0 {
            layout.mask.as_ref()
        } else {
            None
        };
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
        let normed = self.layernorm_before.forward(x)?;
        // Fused: pad, shift and partition in one copy, and back in one.
        let fused = super::fused::enabled(x);
        let windows = if fused {
            super::fused::window_partition(&normed, wm)?
        } else {
            window_partition_plain(&normed, wm)?
        };
        let attended = self.attention.forward(&windows, mask)?;
        if fused {
            x + super::fused::window_merge(&attended, wm)?
        } else {
            x + window_merge_plain(&attended, wm)?
        }
    }

    /// The block's MLP on `h = LN_after(x1)`: `fc2(gelu(fc1(h)))` (exact, erf GELU).
    pub fn mlp(&self, h: &Tensor) -> Result<Tensor> {
        self.output
            .forward(&super::fused::gelu(&self.intermediate.forward(h)?)?)
    }

    /// The plain block (no adapter): `x1 + MLP(LN_after(x1))`.
    pub fn forward(&self, x: &Tensor, layout: &StageLayout) -> Result<Tensor> {
        let x1 = self.attend(x, layout)?;
        &x1 + self.mlp(&self.layernorm_after.forward(&x1)?)?
    }
}

/// A block's windows `[b * nW, ws * ws, c]` from its map `[b, h * w, c]` by the plain
/// ops: pad to whole windows, roll up and left by the shift, permute (the fused path
/// does it in one copy: [`super::fused::window_partition`]).
pub(crate) fn window_partition_plain(map: &Tensor, wm: WindowMap) -> Result<Tensor> {
    let WindowMap {
        b,
        h,
        w,
        c,
        ws,
        shift,
        hp,
        wp,
    } = wm;
    let mut map = map
        .reshape((b, h, w, c))?
        .pad_with_zeros(2, 0, wp - w)?
        .pad_with_zeros(1, 0, hp - h)?;
    if shift > 0 {
        map = map.roll(-(shift as i32), 1)?.roll(-(shift as i32), 2)?;
    }
    map.reshape((b, hp / ws, ws, wp / ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .reshape((b * (hp / ws) * (wp / ws), ws * ws, c))
}

/// The map `[b, h * w, c]` back from a block's windows by the plain ops: permute, roll
/// down and right, drop the padding (fused: [`super::fused::window_merge`]).
pub(crate) fn window_merge_plain(windows: &Tensor, wm: WindowMap) -> Result<Tensor> {
    let WindowMap {
        b,
        h,
        w,
        c,
        ws,
        shift,
        hp,
        wp,
    } = wm;
    let mut map = windows
        .reshape((b, hp / ws, wp / ws, ws, ws, c))?
        .permute((0, 1, 3, 2, 4, 5))?
        .reshape((b, hp, wp, c))?;
    if shift > 0 {
        map = map.roll(shift as i32, 1)?.roll(shift as i32, 2)?;
    }
    if (hp, wp) != (h, w) {
        map = map.narrow(1, 0, h)?.narrow(2, 0, w)?;
    }
    map.reshape((b, h * w, c))
}

/// Patch merging: 2x2 neighbours concatenated (odd maps zero-padded), LayerNorm, `4C -> 2C`.
#[derive(Debug, Clone)]
pub struct PatchMerging {
    norm: LayerNorm,
    reduction: Linear,
}

impl PatchMerging {
    fn new(
        w: &NamedTensors,
        prefix: &str,
        dim: usize,
        eps: f64,
    ) -> std::result::Result<Self, ModelError> {
        Ok(Self {
            norm: layer_norm(w, &format!("{prefix}.norm"), 4 * dim, eps)?,
            reduction: linear(w, &format!("{prefix}.reduction"), 2 * dim, 4 * dim, false)?,
        })
    }

    /// `[B, h*w, C]` -> `[B, ceil(h/2)*ceil(w/2), 2C]`.
    pub fn forward(&self, x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let (b, _, c) = x.dims3()?;
        let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
        // Order of the 4C channels, as in Hugging Face: (0,0), (1,0), (0,1), (1,1) in (row, col).
        let merged = x
            .reshape((b, h, w, c))?
            .pad_with_zeros(2, 0, 2 * w2 - w)?
            .pad_with_zeros(1, 0, 2 * h2 - h)?
            .reshape((b, h2, 2, w2, 2, c))?
            .permute((0, 1, 3, 4, 2, 5))?
            .reshape((b, h2 * w2, 4 * c))?;
        self.reduction.forward(&self.norm.forward(&merged)?)
    }
}

/// One stage: its blocks and the patch merging that follows (all stages but the last).
#[derive(Debug, Clone)]
pub struct SwinStage {
    /// Its blocks.
    pub blocks: Vec<SwinBlock>,
    /// Patch merging at its end.
    pub downsample: Option<PatchMerging>,
}

/// The Swin backbone. `layernorm` (the classifier's final norm) is loaded and counted but
/// not used: VMT decoders read the stage outputs.
#[derive(Debug, Clone)]
pub struct Swin {
    /// Its geometry.
    pub geometry: SwinGeometry,
    /// Patch embedding.
    pub embeddings: PatchEmbed,
    /// The stages.
    pub stages: Vec<SwinStage>,
    /// Final LayerNorm, when the checkpoint has one.
    pub layernorm: Option<LayerNorm>,
    /// Where its weights live.
    pub device: Device,
}

impl Swin {
    /// Builds the backbone from canonical (Hugging Face, unprefixed) tensor names.
    pub fn new(
        w: &NamedTensors,
        g: &SwinGeometry,
        device: &Device,
    ) -> std::result::Result<Self, ModelError> {
        let dims = g.stage_dims();
        let mut stages = Vec::new();
        for (i, (&depth, &heads)) in g.depths.iter().zip(&g.num_heads).enumerate() {
            let blocks = (0..depth)
                .map(|j| {
                    let prefix = format!("encoder.layers.{i}.blocks.{j}");
                    SwinBlock::new(w, &prefix, g, dims[i], heads, j % 2 == 1)
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let downsample = if i + 1 < g.depths.len() {
                let prefix = format!("encoder.layers.{i}.downsample");
                Some(PatchMerging::new(w, &prefix, dims[i], g.layer_norm_eps)?)
            } else {
                None
            };
            stages.push(SwinStage { blocks, downsample });
        }
        let last = *dims.last().unwrap_or(&g.embed_dim);
        let layernorm = if w.tensors.contains_key("layernorm.weight") {
            Some(layer_norm(w, "layernorm", last, g.layer_norm_eps)?)
        } else {
            None
        };
        Ok(Self {
            geometry: g.clone(),
            embeddings: PatchEmbed::new(w, g)?,
            stages,
            layernorm,
            device: device.clone(),
        })
    }

    /// Generic stage features (no adapter), NHWC `[B, h_i, w_i, C_i]`.
    pub fn forward_features(&self, pixels: &Tensor) -> Result<Vec<Tensor>> {
        let (mut x, mut h, mut w) = self.embeddings.forward(pixels)?;
        let b = x.dim(0)?;
        let mut feats = Vec::new();
        for stage in &self.stages {
            let layout = StageLayout::new(h, w, self.geometry.window_size, &self.device)?;
            for block in &stage.blocks {
                x = block.forward(&x, &layout)?;
            }
            feats.push(x.reshape((b, h, w, x.dim(2)?))?);
            if let Some(down) = &stage.downsample {
                x = down.forward(&x, h, w)?;
                (h, w) = (h.div_ceil(2), w.div_ceil(2));
            }
        }
        Ok(feats)
    }
}

/// Number of parameters of a Swin of this geometry, without classifier or index buffers.
pub fn parameter_count(g: &SwinGeometry) -> usize {
    let (c0, p) = (g.embed_dim, g.patch_size);
    let mut n = c0 * 3 * p * p + c0 + 2 * c0;
    let span = (2 * g.window_size - 1).pow(2);
    let dims = g.stage_dims();
    for (i, (&depth, &heads)) in g.depths.iter().zip(&g.num_heads).enumerate() {
        let c = dims[i];
        let hidden = g.mlp_hidden(c);
        let block = 2 * c // layernorm_before
            + 3 * (c * c + c) // query, key, value
            + span * heads // relative position table
            + c * c + c // attention output
            + 2 * c // layernorm_after
            + hidden * c + hidden // intermediate
            + c * hidden + c; // output
        n += depth * block;
        if i + 1 < g.depths.len() {
            n += 2 * 4 * c + 4 * c * 2 * c;
        }
    }
    n + 2 * dims.last().copied().unwrap_or(c0)
}
