//! `vmt-hub predict`: one PNG per task and image, plus an overlay sheet per image.
//!
//! Segmentation: a palette (the PASCAL VOC colour map); saliency: grey probability;
//! depth: grey, near is bright (scaled per image); normals: RGB = (n + 1) / 2.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Tensor};
use image::{Rgb, RgbImage};
use vmt_registry::bundle::TaskKind;

use crate::data::{MEAN, STD};
use crate::model::VmtModel;

/// Colour of class `c` in the PASCAL VOC palette.
pub fn palette(c: usize) -> [u8; 3] {
    let (mut r, mut g, mut b) = (0u8, 0u8, 0u8);
    let mut c = c;
    for shift in (0..8).rev() {
        r |= ((c & 1) as u8) << shift;
        g |= (((c >> 1) & 1) as u8) << shift;
        b |= (((c >> 2) & 1) as u8) << shift;
        c >>= 3;
    }
    [r, g, b]
}

/// Normalised pixels `[1, 3, H, W]` of an RGB image.
pub fn image_tensor(img: &RgbImage, device: &candle_core::Device) -> candle_core::Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let n = w * h;
    let mut v = vec![0f32; 3 * n];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            v[c * n + i] = (p.0[c] as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    Tensor::from_vec(v, (1, 3, h, w), device)
}

/// The picture of one task's raw output `[K, H, W]`.
pub fn render_task(kind: TaskKind, out: &Tensor) -> anyhow::Result<RgbImage> {
    let (_, h, w) = out.dims3()?;
    let out = out.to_device(&candle_core::Device::Cpu)?;
    let (w32, h32) = (w as u32, h as u32);
    Ok(match kind {
        TaskKind::Segmentation => {
            let classes = out
                .argmax(0)?
                .to_dtype(DType::U32)?
                .flatten_all()?
                .to_vec1::<u32>()?;
            RgbImage::from_fn(w32, h32, |x, y| {
                Rgb(palette(classes[(y * w32 + x) as usize] as usize))
            })
        }
        TaskKind::Saliency => {
            let p = candle_nn::ops::sigmoid(&out)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            RgbImage::from_fn(w32, h32, |x, y| {
                let v = (p[(y * w32 + x) as usize] * 255.0).round() as u8;
                Rgb([v, v, v])
            })
        }
        TaskKind::Depth => {
            let d = out.flatten_all()?.to_vec1::<f32>()?;
            let (lo, hi) = d
                .iter()
                .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            RgbImage::from_fn(w32, h32, |x, y| {
                let v = d[(y * w32 + x) as usize];
                let g = if hi > lo {
                    ((hi - v) / (hi - lo) * 255.0).round() as u8
                } else {
                    128
                };
                Rgb([g, g, g])
            })
        }
        TaskKind::Normals => {
            let n = out.flatten_all()?.to_vec1::<f32>()?;
            let m = w * h;
            RgbImage::from_fn(w32, h32, |x, y| {
                let i = (y * w32 + x) as usize;
                let v = [n[i], n[m + i], n[2 * m + i]];
                let len = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt().max(1e-12);
                Rgb(v.map(|c| ((c / len + 1.0) / 2.0 * 255.0).round() as u8))
            })
        }
    })
}

/// Writes `<stem>.<task>.png` for each task and `<stem>.sheet.png` (the image, then each
/// task; segmentation blended over the image). Returns the files written.
pub fn predict_image(
    model: &VmtModel,
    image: &Path,
    out_dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    let img = image::open(image)
        .with_context(|| format!("{}: cannot decode image", image.display()))?
        .to_rgb8();
    let pixels = image_tensor(&img, &model.backbone.device)?;
    let out = model.forward(&pixels)?;
    std::fs::create_dir_all(out_dir).with_context(|| out_dir.display().to_string())?;
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let (w, h) = img.dimensions();
    let mut panels = vec![img.clone()];
    let mut written = Vec::new();
    for head in &model.heads {
        let t = out
            .task(&head.spec.name)
            .expect("every task has an output")
            .get(0)?;
        let pic = render_task(head.spec.kind, &t)?;
        let path = out_dir.join(format!("{stem}.{}.png", head.spec.name));
        pic.save(&path)
            .with_context(|| path.display().to_string())?;
        written.push(path);
        if head.spec.kind == TaskKind::Segmentation {
            panels.push(RgbImage::from_fn(w, h, |x, y| {
                let (a, b) = (img.get_pixel(x, y).0, pic.get_pixel(x, y).0);
                Rgb([0, 1, 2].map(|c| ((a[c] as u16 + b[c] as u16) / 2) as u8))
            }));
        } else {
            panels.push(pic);
        }
    }
    let mut sheet = RgbImage::new(w * panels.len() as u32, h);
    for (i, p) in panels.iter().enumerate() {
        image::imageops::replace(&mut sheet, p, (i as u32 * w) as i64, 0);
    }
    let path = out_dir.join(format!("{stem}.sheet.png"));
    sheet
        .save(&path)
        .with_context(|| path.display().to_string())?;
    written.push(path);
    Ok(written)
}

#[cfg(test)]
mod tests {
    #[test]
    fn voc_palette() {
        assert_eq!(super::palette(0), [0, 0, 0]);
        assert_eq!(super::palette(1), [128, 0, 0]);
        assert_eq!(super::palette(2), [0, 128, 0]);
        assert_eq!(super::palette(15), [192, 128, 128]);
    }
}
