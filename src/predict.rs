//! `vmt-hub predict`: one PNG per task and image, plus a captioned sheet per image
//! (with the ground truth beside each prediction when it comes from a dataset, and a
//! class-colour legend).
//!
//! Segmentation: a palette (the PASCAL VOC colour map); saliency: grey probability;
//! depth: grey, near is bright (scaled per image); normals: RGB = (n + 1) / 2.

use std::path::{Path, PathBuf};

use crate::error::{Context, Result};
use candle_core::{DType, Tensor};
use image::{Rgb, RgbImage};
use vmt_registry::bundle::TaskKind;

use crate::data::{Dataset, Label, MEAN, STD};
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
pub fn render_task(kind: TaskKind, out: &Tensor) -> Result<RgbImage> {
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

/// The picture of a ground-truth label, in the colours of [`render_task`]: ignored
/// pixels are grey (classes, saliency) or black (normals, depth).
pub fn render_label(kind: TaskKind, label: &Label, w: usize, h: usize) -> RgbImage {
    let (w32, h32) = (w as u32, h as u32);
    let at = |x: u32, y: u32| (y * w32 + x) as usize;
    match label {
        Label::Classes(c) => RgbImage::from_fn(w32, h32, |x, y| match c[at(x, y)] {
            255 => Rgb(IGNORE),
            v if kind == TaskKind::Saliency => Rgb([v * 255; 3]),
            v => Rgb(palette(v as usize)),
        }),
        Label::Normals(n) => {
            let m = w * h;
            RgbImage::from_fn(w32, h32, |x, y| {
                let i = at(x, y);
                let v = [n[i], n[m + i], n[2 * m + i]];
                if v.iter().all(|&c| c == 255.0) {
                    return Rgb([0, 0, 0]);
                }
                Rgb(v.map(|c| ((c + 1.0) / 2.0 * 255.0).clamp(0.0, 255.0).round() as u8))
            })
        }
        Label::Depth(d) => {
            let valid = d.iter().copied().filter(|&v| v > 0.0);
            let (lo, hi) = valid.fold((f32::MAX, f32::MIN), |(a, b), v| (a.min(v), b.max(v)));
            RgbImage::from_fn(w32, h32, |x, y| {
                let v = d[at(x, y)];
                if v <= 0.0 {
                    return Rgb([0, 0, 0]);
                }
                let g = if hi > lo {
                    ((hi - v) / (hi - lo) * 255.0).round() as u8
                } else {
                    128
                };
                Rgb([g, g, g])
            })
        }
    }
}

/// Colour of ignored label pixels.
const IGNORE: [u8; 3] = [160, 160, 160];

/// Segmentation classes present in a picture drawn with [`palette`].
fn classes_in(pic: &RgbImage, classes: usize) -> Vec<usize> {
    let colours: Vec<[u8; 3]> = (0..classes).map(palette).collect();
    let mut seen = vec![false; classes];
    for p in pic.pixels() {
        if let Some(k) = colours.iter().position(|c| *c == p.0) {
            seen[k] = true;
        }
    }
    (0..classes).filter(|&k| seen[k]).collect()
}

/// One panel of a sheet: a caption over a picture.
struct Panel {
    caption: String,
    picture: RgbImage,
}

/// A predictions sheet: rows of captioned panels, upscaled to a readable size, and a
/// colour legend per segmentation task.
struct Sheet {
    rows: Vec<Vec<Panel>>,
    /// `(task, classes shown as (id, name))`.
    legends: Vec<(String, Vec<(usize, String)>)>,
}

/// Height of a line of text: the 8x8 font drawn at twice its size, plus a margin.
const TEXT_SCALE: u32 = 2;
const LINE: u32 = 8 * TEXT_SCALE + 8;
const BACKGROUND: [u8; 3] = [255, 255, 255];

/// Draws `text` (ASCII) at `(x, y)` in the 8x8 font at [`TEXT_SCALE`].
fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, colour: [u8; 3]) {
    for (i, ch) in text.chars().enumerate() {
        let glyph = font8x8::legacy::BASIC_LEGACY[(ch as usize).min(127)];
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 0 {
                    continue;
                }
                for dy in 0..TEXT_SCALE {
                    for dx in 0..TEXT_SCALE {
                        let px = x + (i as u32 * 8 + col) * TEXT_SCALE + dx;
                        let py = y + row as u32 * TEXT_SCALE + dy;
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, Rgb(colour));
                        }
                    }
                }
            }
        }
    }
}

impl Sheet {
    /// Every panel scaled (nearest neighbour, so label maps stay crisp) to at least
    /// 192 pixels on its longer side.
    fn render(&self) -> RgbImage {
        let (w, h) = self.rows[0][0].picture.dimensions();
        let scale = 192u32.div_ceil(w.max(h)).max(1);
        let (pw, ph) = (w * scale, h * scale);
        let pad = 8;
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(1) as u32;
        let longest = self
            .rows
            .iter()
            .flatten()
            .map(|p| p.caption.len() as u32)
            .max()
            .unwrap_or(0);
        let cell_w = pw.max(8 * TEXT_SCALE * longest) + 2 * pad;
        let grid_h = self.rows.len() as u32 * (LINE + ph + pad);
        let legend_h = self.legends.len() as u32 * (LINE + 4);
        let width = (cols * cell_w + pad).max(8 * TEXT_SCALE * 40);
        let mut sheet = RgbImage::from_pixel(width, grid_h + legend_h + pad, Rgb(BACKGROUND));
        for (r, row) in self.rows.iter().enumerate() {
            let y0 = r as u32 * (LINE + ph + pad) + pad;
            for (c, panel) in row.iter().enumerate() {
                let x0 = c as u32 * cell_w + pad;
                draw_text(&mut sheet, x0, y0, &panel.caption, [0, 0, 0]);
                let big = image::imageops::resize(
                    &panel.picture,
                    pw,
                    ph,
                    image::imageops::FilterType::Nearest,
                );
                image::imageops::replace(&mut sheet, &big, x0 as i64, (y0 + LINE) as i64);
            }
        }
        for (i, (task, classes)) in self.legends.iter().enumerate() {
            let y = grid_h + pad + i as u32 * (LINE + 4);
            let label = format!("{task}:");
            draw_text(&mut sheet, pad, y, &label, [0, 0, 0]);
            let mut x = pad + (label.len() as u32 + 1) * 8 * TEXT_SCALE;
            for (k, name) in classes {
                let k = *k;
                let side = 8 * TEXT_SCALE;
                for dy in 0..side {
                    for dx in 0..side {
                        if x + dx < sheet.width() {
                            sheet.put_pixel(x + dx, y + dy, Rgb(palette(k)));
                        }
                    }
                }
                let name: String = name.chars().take(16).collect();
                draw_text(&mut sheet, x + side + 4, y, &name, [0, 0, 0]);
                x += side + 4 + (name.len() as u32 + 1) * 8 * TEXT_SCALE;
            }
        }
        sheet
    }
}

/// Writes `<stem>.<task>.png` for each task and `<stem>.sheet.png`: the image and each
/// task's prediction, captioned, with the ground truth beside each prediction when
/// `labels` has it (a second row), and a class-colour legend per segmentation task.
/// Returns the files written.
pub fn predict_image(model: &VmtModel, image: &Path, out_dir: &Path) -> Result<Vec<PathBuf>> {
    let img = image::open(image)
        .with_context(|| format!("{}: cannot decode image", image.display()))?
        .to_rgb8();
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    predict_rgb(model, &img, &stem, &[], out_dir)
}

/// Like [`predict_image`] for image `id` of a dataset split, with its ground truth.
pub fn predict_sample(
    model: &VmtModel,
    dataset: &Dataset,
    id: &str,
    out_dir: &Path,
) -> Result<Vec<PathBuf>> {
    let (img, truth) = with_truth(model, dataset, id)?;
    predict_rgb(model, &img, id, &truth, out_dir)
}

/// The sheet of image `id` of a dataset split (predictions over ground truth), as
/// [`predict_sample`] writes it, in memory: what training logs to TensorBoard.
pub fn sample_sheet(model: &VmtModel, dataset: &Dataset, id: &str) -> Result<RgbImage> {
    let (img, truth) = with_truth(model, dataset, id)?;
    Ok(render_sheet(model, &img, &truth)?.1)
}

/// Image `id` of `dataset` and the ground truth of each of the model's tasks it has.
fn with_truth(
    model: &VmtModel,
    dataset: &Dataset,
    id: &str,
) -> Result<(RgbImage, Vec<(String, RgbImage)>)> {
    let tasks: Vec<_> = model
        .heads
        .iter()
        .filter(|h| dataset.task(&h.spec.name).is_some())
        .map(|h| h.spec.clone())
        .collect();
    let sample = dataset.load(id, &tasks)?;
    let img = RgbImage::from_raw(sample.width as u32, sample.height as u32, sample.rgb)
        .expect("decoded image has w*h*3 bytes");
    let truth = tasks
        .iter()
        .zip(&sample.labels)
        .map(|(t, l)| {
            (
                t.name.clone(),
                render_label(t.kind, l, sample.width, sample.height),
            )
        })
        .collect();
    Ok((img, truth))
}

fn predict_rgb(
    model: &VmtModel,
    img: &RgbImage,
    stem: &str,
    truth: &[(String, RgbImage)],
    out_dir: &Path,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir).with_context(|| out_dir.display().to_string())?;
    let (pictures, sheet) = render_sheet(model, img, truth)?;
    let mut written = Vec::new();
    for (name, pic) in pictures {
        let path = out_dir.join(format!("{stem}.{name}.png"));
        pic.save(&path)
            .with_context(|| path.display().to_string())?;
        written.push(path);
    }
    let path = out_dir.join(format!("{stem}.sheet.png"));
    sheet
        .save(&path)
        .with_context(|| path.display().to_string())?;
    written.push(path);
    Ok(written)
}

/// Each task's prediction for `img` as a picture, and the sheet: the image and the
/// predictions, captioned, with the ground truth beside each (a second row) when
/// `truth` has it, and a class-colour legend per segmentation task.
fn render_sheet(
    model: &VmtModel,
    img: &RgbImage,
    truth: &[(String, RgbImage)],
) -> Result<(Vec<(String, RgbImage)>, RgbImage)> {
    let pixels = image_tensor(img, &model.backbone.device)?;
    let out = model.forward(&pixels)?;
    let mut top = vec![Panel {
        caption: "input".into(),
        picture: img.clone(),
    }];
    let mut bottom = vec![Panel {
        caption: "ground truth:".into(),
        picture: RgbImage::from_pixel(img.width(), img.height(), Rgb(BACKGROUND)),
    }];
    let mut legends = Vec::new();
    let mut pictures = Vec::new();
    for head in &model.heads {
        let name = &head.spec.name;
        let t = out.task(name).expect("every task has an output").get(0)?;
        let pic = render_task(head.spec.kind, &t)?;
        pictures.push((name.clone(), pic.clone()));
        let gt = truth.iter().find(|(n, _)| n == name).map(|(_, p)| p);
        if head.spec.kind == TaskKind::Segmentation {
            let mut classes = classes_in(&pic, head.spec.channels);
            if let Some(g) = gt {
                classes.extend(classes_in(g, head.spec.channels));
            }
            classes.sort_unstable();
            classes.dedup();
            classes.truncate(24);
            let named = classes
                .into_iter()
                .map(|k| (k, head.spec.class_name(k)))
                .collect();
            legends.push((name.clone(), named));
        }
        top.push(Panel {
            caption: name.clone(),
            picture: pic,
        });
        bottom.push(Panel {
            caption: format!("{name} truth"),
            picture: gt.cloned().unwrap_or_else(|| {
                RgbImage::from_pixel(img.width(), img.height(), Rgb(BACKGROUND))
            }),
        });
    }
    let mut rows = vec![top];
    if !truth.is_empty() {
        rows.push(bottom);
    }
    Ok((pictures, Sheet { rows, legends }.render()))
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
