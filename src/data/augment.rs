//! Turning a decoded sample into a fixed-size training or evaluation example.
//!
//! Training (PASCAL-Context multi-task protocol): random scale, random crop (padding with
//! the ignore value where the scaled image is smaller), random horizontal flip (which
//! negates the normals' x), ImageNet normalisation. Evaluation: resize to the size.

use rand::Rng;

use super::{Label, Sample, MEAN, STD};

/// Random choices for one training example.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugParams {
    /// Mirror left-right.
    pub flip: bool,
    /// Shorter side becomes `size * scale` before cropping.
    pub scale: f32,
    /// Crop offsets as fractions of the free room.
    pub crop_y: f32,
    /// Horizontal crop offset, as a fraction of the free room.
    pub crop_x: f32,
}

impl AugParams {
    /// Draws the choices for one example.
    pub fn sample(rng: &mut impl Rng) -> Self {
        Self {
            flip: rng.gen_bool(0.5),
            scale: rng.gen_range(0.75..1.5),
            crop_y: rng.gen(),
            crop_x: rng.gen(),
        }
    }
}

/// A fixed-size example: normalised pixels `3*s*s` and labels at `s x s`.
#[derive(Debug, Clone)]
pub struct Example {
    /// Normalised pixels, channel-major `3*s*s`.
    pub pixels: Vec<f32>,
    /// One label per task, at `s x s`.
    pub labels: Vec<Label>,
}

/// Index of the nearest source pixel for output `i` of `out` (PyTorch's "nearest").
fn nearest(i: usize, out: usize, inp: usize) -> usize {
    (((i as f64 + 0.5) * inp as f64 / out as f64) as usize).min(inp - 1)
}

/// Where each output pixel comes from: a crop window on the image scaled to `sh x sw`,
/// mirrored with `flip`.
struct Window {
    size: usize,
    sh: usize,
    sw: usize,
    oy: isize,
    ox: isize,
    flip: bool,
}

impl Window {
    /// The window of `aug` (None: a plain resize to `size x size`) on an `h x w` image.
    fn new(h: usize, w: usize, size: usize, aug: Option<AugParams>) -> Self {
        let (sh, sw, oy, ox) = match aug {
            None => (size, size, 0isize, 0isize),
            Some(a) => {
                let k = size as f32 * a.scale / h.min(w) as f32;
                let (sh, sw) = (
                    ((h as f32 * k).round() as usize).max(1),
                    ((w as f32 * k).round() as usize).max(1),
                );
                let room =
                    |s: usize, f: f32| ((s.saturating_sub(size)) as f32 * f).floor() as isize;
                (sh, sw, room(sh, a.crop_y), room(sw, a.crop_x))
            }
        };
        let flip = aug.is_some_and(|a| a.flip);
        Self {
            size,
            sh,
            sw,
            oy,
            ox,
            flip,
        }
    }

    /// For output pixel (y, x): the scaled-image pixel it shows, if any.
    fn source(&self, y: usize, x: usize) -> Option<(usize, usize)> {
        let x = if self.flip { self.size - 1 - x } else { x };
        let (sy, sx) = (y as isize + self.oy, x as isize + self.ox);
        (sy >= 0 && sx >= 0 && (sy as usize) < self.sh && (sx as usize) < self.sw)
            .then_some((sy as usize, sx as usize))
    }
}

/// Prepares `sample` at `size x size`; `aug` None means evaluation (plain resize).
pub fn prepare(sample: &Sample, size: usize, aug: Option<AugParams>) -> Example {
    let (h, w) = (sample.height, sample.width);
    let win = Window::new(h, w, size, aug);
    let img = image::RgbImage::from_raw(w as u32, h as u32, sample.rgb.clone())
        .expect("rgb buffer matches size");
    let scaled = if (win.sh, win.sw) == (h, w) {
        img
    } else {
        image::imageops::resize(
            &img,
            win.sw as u32,
            win.sh as u32,
            image::imageops::FilterType::Triangle,
        )
    };
    let n = size * size;
    let mut pixels = vec![0f32; 3 * n];
    for y in 0..size {
        for x in 0..size {
            if let Some((sy, sx)) = win.source(y, x) {
                let p = scaled.get_pixel(sx as u32, sy as u32).0;
                for c in 0..3 {
                    pixels[c * n + y * size + x] = (p[c] as f32 / 255.0 - MEAN[c]) / STD[c];
                }
            }
        }
    }
    // Labels: each output pixel takes the original pixel nearest to its scaled-grid source.
    let origin: Vec<Option<usize>> = (0..n)
        .map(|i| {
            let (sy, sx) = win.source(i / size, i % size)?;
            Some(nearest(sy, win.sh, h) * w + nearest(sx, win.sw, w))
        })
        .collect();
    let labels = sample
        .labels
        .iter()
        .map(|label| resample(label, &origin, h * w, win.flip))
        .collect();
    Example { pixels, labels }
}

/// `label` (of `m` pixels) at the output pixels, each from its `origin` pixel (None:
/// outside the image, the "ignore" value); normals' x flips with the image.
fn resample(label: &Label, origin: &[Option<usize>], m: usize, flip: bool) -> Label {
    let n = origin.len();
    match label {
        Label::Classes(v) => {
            Label::Classes(origin.iter().map(|o| o.map_or(255, |i| v[i])).collect())
        }
        Label::Depth(v) => Label::Depth(origin.iter().map(|o| o.map_or(0.0, |i| v[i])).collect()),
        Label::Normals(v) => {
            let mut out = vec![255f32; 3 * n];
            for (j, i) in origin.iter().enumerate() {
                let Some(i) = *i else { continue };
                if v[i] != 255.0 {
                    out[j] = if flip { -v[i] } else { v[i] };
                    out[n + j] = v[m + i];
                    out[2 * n + j] = v[2 * m + i];
                }
            }
            Label::Normals(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Sample {
        // 4x2 image; a class map with distinct ids; normals pointing +x on the left half.
        let (w, h) = (4, 2);
        let rgb = (0..w * h * 3).map(|i| (i * 10) as u8).collect();
        let classes = (0..(w * h) as u8).collect();
        let mut normals = vec![0f32; 3 * w * h];
        for (i, n) in normals.iter_mut().take(w * h).enumerate() {
            *n = if i % w < 2 { 1.0 } else { -1.0 };
        }
        Sample {
            id: "s".into(),
            width: w,
            height: h,
            rgb,
            labels: vec![Label::Classes(classes), Label::Normals(normals)],
        }
    }

    #[test]
    fn flip_mirrors_labels_and_negates_normal_x() {
        let s = sample();
        // Scale so that the shorter side (2) becomes 2: no resize, crop 2x2 at the left.
        let a = AugParams {
            flip: true,
            scale: 1.0,
            crop_y: 0.0,
            crop_x: 0.0,
        };
        let e = prepare(&s, 2, Some(a));
        let Label::Classes(c) = &e.labels[0] else {
            panic!()
        };
        assert_eq!(c, &vec![1, 0, 5, 4]);
        let Label::Normals(n) = &e.labels[1] else {
            panic!()
        };
        assert_eq!(&n[..4], &[-1.0, -1.0, -1.0, -1.0]);
    }

    #[test]
    fn crop_beyond_the_image_pads_with_ignore() {
        let s = sample();
        let a = AugParams {
            flip: false,
            scale: 0.5,
            crop_y: 0.0,
            crop_x: 0.0,
        };
        let e = prepare(&s, 4, Some(a));
        let Label::Classes(c) = &e.labels[0] else {
            panic!()
        };
        // The shorter side (2) becomes 4 * 0.5 = 2: the 4x2 image fills half of the 4x4
        // crop, the rest is ignore.
        assert_eq!(c.iter().filter(|&&v| v == 255).count(), 8);
        assert_eq!(&c[..8], &[0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(e.pixels.len(), 3 * 16);
    }
}
