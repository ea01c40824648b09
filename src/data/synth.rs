//! `vmt-hub data synth`: procedural multi-task scenes with exact ground truth for every
//! task, so anyone can train and evaluate with no download.
//!
//! Each scene is a receding textured background plane with a few shapes (disc = sphere,
//! box and triangle = tilted planes) and one figure (head sphere, torso and legs
//! cylinders), drawn far to near with a depth test. Colour is shaded by the analytic
//! normal, so every task is learnable from the image:
//! - semseg (5 classes): background, disc, box, triangle, figure;
//! - human_parts (4): background, head, torso, legs;
//! - sal: the figure;
//! - normals and depth: from the geometry of each primitive.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vmt_registry::bundle::{TaskKind, TaskSpec};

use super::loader::mix;
use super::{DataError, DatasetInfo};

/// Classes of the synthetic semseg task (background, disc, box, triangle, figure).
pub const SEMSEG_CLASSES: usize = 5;
/// Classes of the synthetic human-parts task (background, head, torso, legs).
pub const PART_CLASSES: usize = 4;

/// The tasks a synthetic dataset provides.
pub fn synth_tasks() -> Vec<TaskSpec> {
    vec![
        TaskSpec::new("semseg", TaskKind::Segmentation, SEMSEG_CLASSES).with_classes(&[
            "background",
            "disc",
            "box",
            "triangle",
            "figure",
        ]),
        TaskSpec::new("human_parts", TaskKind::Segmentation, PART_CLASSES).with_classes(&[
            "background",
            "head",
            "torso",
            "legs",
        ]),
        TaskSpec::new("sal", TaskKind::Saliency, 1),
        TaskSpec::new("normals", TaskKind::Normals, 3),
        TaskSpec::new("depth", TaskKind::Depth, 1),
    ]
}

/// One rendered scene.
pub struct Scene {
    /// Side in pixels.
    pub size: usize,
    /// RGB8 bytes.
    pub rgb: Vec<u8>,
    /// Semseg class per pixel.
    pub semseg: Vec<u8>,
    /// Human-part class per pixel.
    pub parts: Vec<u8>,
    /// Saliency (0/1) per pixel.
    pub sal: Vec<u8>,
    /// Unit normals, pixel-major `[n, 3]`.
    pub normals: Vec<[f32; 3]>,
    /// Metres.
    pub depth: Vec<f32>,
}

#[derive(Clone, Copy)]
enum Shape {
    /// Sphere: centre and radius in pixels.
    Disc {
        cx: f32,
        cy: f32,
        r: f32,
    },
    /// Axis-aligned rectangle; `cylinder` bends its normal around the vertical axis.
    Rect {
        x0: f32,
        y0: f32,
        x1: f32,
        y1: f32,
        cylinder: bool,
    },
    Triangle {
        p: [(f32, f32); 3],
    },
}

struct Object {
    shape: Shape,
    /// Depth of the object's front (metres).
    z: f32,
    /// Normal of flat shapes.
    tilt: [f32; 3],
    colour: [f32; 3],
    /// 0 plain, 1 stripes, 2 checker.
    texture: u8,
    semseg: u8,
    part: u8,
    salient: bool,
}

fn normalize(v: [f32; 3]) -> [f32; 3] {
    let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt().max(1e-6);
    [v[0] / n, v[1] / n, v[2] / n]
}

impl Object {
    /// Normal and depth at pixel centre (x, y), if the object covers it.
    fn hit(&self, x: f32, y: f32) -> Option<([f32; 3], f32)> {
        match self.shape {
            Shape::Disc { cx, cy, r } => {
                let (dx, dy) = ((x - cx) / r, (y - cy) / r);
                let d2 = dx * dx + dy * dy;
                (d2 <= 1.0).then(|| {
                    let nz = (1.0 - d2).sqrt();
                    ([dx, -dy, nz], self.z - 0.4 * nz)
                })
            }
            Shape::Rect {
                x0,
                y0,
                x1,
                y1,
                cylinder,
            } => (x >= x0 && x <= x1 && y >= y0 && y <= y1).then(|| {
                if cylinder {
                    let nx = ((x - x0) / (x1 - x0) * 2.0 - 1.0).clamp(-0.999, 0.999);
                    let nz = (1.0 - nx * nx).sqrt();
                    ([nx, 0.0, nz], self.z - 0.2 * nz)
                } else {
                    (
                        self.tilt,
                        self.z + 0.01 * (self.tilt[0] * (x - x0) - self.tilt[1] * (y - y0)),
                    )
                }
            }),
            Shape::Triangle { p } => {
                let s = |a: (f32, f32), b: (f32, f32)| {
                    (b.0 - a.0) * (y - a.1) - (b.1 - a.1) * (x - a.0)
                };
                let (d0, d1, d2) = (s(p[0], p[1]), s(p[1], p[2]), s(p[2], p[0]));
                let inside =
                    (d0 >= 0.0 && d1 >= 0.0 && d2 >= 0.0) || (d0 <= 0.0 && d1 <= 0.0 && d2 <= 0.0);
                inside.then_some((self.tilt, self.z))
            }
        }
    }

    fn albedo(&self, x: f32, y: f32) -> [f32; 3] {
        let k = match self.texture {
            1 => 0.75 + 0.25 * ((x + y) * 0.6).sin().signum(),
            2 => {
                if ((x / 4.0).floor() + (y / 4.0).floor()) as i64 % 2 == 0 {
                    1.0
                } else {
                    0.6
                }
            }
            _ => 1.0,
        };
        self.colour.map(|c| c * k)
    }
}

fn jitter(rng: &mut ChaCha8Rng, base: [f32; 3], amount: f32) -> [f32; 3] {
    base.map(|c| (c + rng.gen_range(-amount..amount)).clamp(0.0, 1.0))
}

/// Renders scene number `index` of `seed` at `size x size`.
pub fn render(size: usize, seed: u64, index: u64) -> Scene {
    // One generator, drawn in this order: objects, figure, background, pixel noise.
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, index));
    let mut objects = random_objects(&mut rng, size as f32);
    objects.extend(figure(&mut rng, size as f32));
    rasterise(&mut rng, size, &objects)
}

/// One to three discs, rectangles and triangles somewhere in a scene of side `s`.
fn random_objects(rng: &mut ChaCha8Rng, s: f32) -> Vec<Object> {
    let mut objects = Vec::new();
    let flat_tilt =
        |rng: &mut ChaCha8Rng| normalize([rng.gen_range(-0.6..0.6), rng.gen_range(-0.6..0.6), 1.0]);
    for _ in 0..rng.gen_range(1..=3) {
        let kind = rng.gen_range(0..3u8);
        let (cx, cy) = (rng.gen_range(0.1..0.9) * s, rng.gen_range(0.1..0.9) * s);
        let r = rng.gen_range(0.08..0.2) * s;
        let (shape, colour, texture) = match kind {
            0 => (Shape::Disc { cx, cy, r }, [0.85, 0.2, 0.15], 0),
            1 => (
                Shape::Rect {
                    x0: cx - r,
                    y0: cy - r * 0.7,
                    x1: cx + r,
                    y1: cy + r * 0.7,
                    cylinder: false,
                },
                [0.2, 0.75, 0.25],
                1,
            ),
            _ => {
                let a = rng.gen_range(0.0..std::f32::consts::TAU);
                let p = [0.0f32, 2.1, 4.2]
                    .map(|o| (cx + r * 1.3 * (a + o).cos(), cy + r * 1.3 * (a + o).sin()));
                (Shape::Triangle { p }, [0.2, 0.3, 0.9], 2)
            }
        };
        objects.push(Object {
            shape,
            z: rng.gen_range(3.0..7.0),
            tilt: flat_tilt(rng),
            colour: jitter(rng, colour, 0.15),
            texture,
            semseg: kind + 1,
            part: 0,
            salient: false,
        });
    }
    objects
}

/// The figure (the person of semseg class 4, salient, with three parts): head, torso
/// and two legs.
fn figure(rng: &mut ChaCha8Rng, s: f32) -> Vec<Object> {
    let mut objects = Vec::new();
    let (fx, fy) = (rng.gen_range(0.25..0.75) * s, rng.gen_range(0.3..0.6) * s);
    let u = rng.gen_range(0.06..0.1) * s;
    let z = rng.gen_range(2.5..5.0);
    let skin = jitter(rng, [0.9, 0.7, 0.55], 0.08);
    let shirt = jitter(rng, [0.9, 0.8, 0.2], 0.25);
    let trousers = jitter(rng, [0.25, 0.2, 0.45], 0.1);
    let part = |shape, colour, texture, part, dz: f32| Object {
        shape,
        z: z + dz,
        tilt: [0.0, 0.0, 1.0],
        colour,
        texture,
        semseg: 4,
        part,
        salient: true,
    };
    objects.push(part(
        Shape::Disc {
            cx: fx,
            cy: fy - 2.2 * u,
            r: u,
        },
        skin,
        0,
        1,
        0.0,
    ));
    objects.push(part(
        Shape::Rect {
            x0: fx - 1.1 * u,
            y0: fy - 1.2 * u,
            x1: fx + 1.1 * u,
            y1: fy + 1.5 * u,
            cylinder: true,
        },
        shirt,
        1,
        2,
        0.0,
    ));
    for side in [-1.0f32, 1.0] {
        let x = fx + side * 0.55 * u;
        objects.push(part(
            Shape::Rect {
                x0: x - 0.45 * u,
                y0: fy + 1.5 * u,
                x1: x + 0.45 * u,
                y1: fy + 3.8 * u,
                cylinder: true,
            },
            trousers,
            0,
            3,
            0.05,
        ));
    }
    objects
}

/// The scene's pixels and labels: each pixel shows the nearest object (or the background
/// plane), shaded by one light, with a little noise.
fn rasterise(rng: &mut ChaCha8Rng, size: usize, objects: &[Object]) -> Scene {
    let (n, s) = (size * size, size as f32);
    let light = normalize([0.4, 0.5, 1.0]);
    let bg = jitter(rng, [0.55, 0.5, 0.45], 0.2);
    let bg_normal = normalize([0.0, 0.35, 1.0]);
    let mut scene = Scene {
        size,
        rgb: vec![0; 3 * n],
        semseg: vec![0; n],
        parts: vec![0; n],
        sal: vec![0; n],
        normals: vec![bg_normal; n],
        depth: vec![0.0; n],
    };
    for y in 0..size {
        for x in 0..size {
            let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
            let i = y * size + x;
            // Background plane: farther towards the top of the image.
            let mut depth = 9.0 - 3.0 * py / s;
            let mut normal = bg_normal;
            let wave = 0.9 + 0.1 * (px * 0.15).sin() * (py * 0.11).cos();
            let mut albedo = bg.map(|c| c * wave);
            let (mut class, mut part, mut salient) = (0u8, 0u8, false);
            for o in objects {
                if let Some((nrm, d)) = o.hit(px, py) {
                    if d < depth {
                        (depth, normal, albedo) = (d, normalize(nrm), o.albedo(px, py));
                        (class, part, salient) = (o.semseg, o.part, o.salient);
                    }
                }
            }
            let shade = 0.35
                + 0.65
                    * (normal[0] * light[0] + normal[1] * light[1] + normal[2] * light[2]).max(0.0);
            let noise: f32 = rng.gen_range(-0.03..0.03);
            for (out, a) in scene.rgb[3 * i..3 * i + 3].iter_mut().zip(albedo) {
                *out = ((a * shade + noise).clamp(0.0, 1.0) * 255.0).round() as u8;
            }
            scene.semseg[i] = class;
            scene.parts[i] = part;
            scene.sal[i] = u8::from(salient);
            scene.normals[i] = normal;
            scene.depth[i] = depth;
        }
    }
    scene
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |e| DataError::Io {
        path: path.into(),
        source: e,
    }
}

fn save(img: impl FnOnce(&Path) -> image::ImageResult<()>, path: &Path) -> Result<(), DataError> {
    img(path).map_err(|e| DataError::Invalid {
        path: path.into(),
        reason: e.to_string(),
    })
}

/// Writes `count` scenes (80% train, 20% val) in the dataset layout under `out`.
pub fn synthesize(out: &Path, count: usize, size: usize, seed: u64) -> Result<(), DataError> {
    if count < 2 {
        return Err(DataError::Invalid {
            path: out.into(),
            reason: format!("{count} scenes asked for; at least 2 are needed (one training and one validation image)"),
        });
    }
    let tasks = synth_tasks();
    for d in ["images", "splits"]
        .into_iter()
        .chain(tasks.iter().map(|t| t.name.as_str()))
    {
        let p = out.join(d);
        std::fs::create_dir_all(&p).map_err(io(&p))?;
    }
    let info = DatasetInfo {
        name: format!("synth (seed {seed}, {count} images of {size}x{size})"),
        tasks,
    };
    let p = out.join("dataset.json");
    std::fs::write(&p, serde_json::to_string_pretty(&info).expect("serialises")).map_err(io(&p))?;
    let ids: Vec<String> = (0..count).map(|i| format!("{i:06}")).collect();
    let n_val = (count / 5).max(1);
    for (split, part) in [
        ("train", &ids[..count - n_val]),
        ("val", &ids[count - n_val..]),
    ] {
        let p = out.join("splits").join(format!("{split}.txt"));
        std::fs::write(&p, part.join("\n") + "\n").map_err(io(&p))?;
    }
    let sz = size as u32;
    for (i, id) in ids.iter().enumerate() {
        let s = render(size, seed, i as u64);
        let file = |dir: &str, ext: &str| out.join(dir).join(format!("{id}.{ext}"));
        let rgb = image::RgbImage::from_raw(sz, sz, s.rgb.clone()).expect("size");
        let p = file("images", "jpg");
        save(
            |p| image::DynamicImage::ImageRgb8(rgb).save_with_format(p, image::ImageFormat::Jpeg),
            &p,
        )?;
        for (dir, v) in [("semseg", &s.semseg), ("human_parts", &s.parts)] {
            let img = image::GrayImage::from_raw(sz, sz, v.clone()).expect("size");
            save(|p| img.save(p), &file(dir, "png"))?;
        }
        let sal = image::GrayImage::from_raw(sz, sz, s.sal.iter().map(|&v| v * 255).collect())
            .expect("size");
        save(|p| sal.save(p), &file("sal", "png"))?;
        let normals: Vec<u8> = s
            .normals
            .iter()
            .flat_map(|n| n.map(|c| ((c + 1.0) / 2.0 * 255.0).round().clamp(1.0, 255.0) as u8))
            .collect();
        let img = image::RgbImage::from_raw(sz, sz, normals).expect("size");
        save(|p| img.save(p), &file("normals", "png"))?;
        let mm: Vec<u16> = s
            .depth
            .iter()
            .map(|d| (d * 1000.0).round() as u16)
            .collect();
        let img = image::ImageBuffer::<image::Luma<u16>, _>::from_raw(sz, sz, mm).expect("size");
        save(|p| img.save(p), &file("depth", "png"))?;
    }
    Ok(())
}
