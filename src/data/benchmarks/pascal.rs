//! `PASCAL_MT`, the multi-task PASCAL-Context of ASTMT (Maninis et al., 2019), as MTI-Net,
//! InvPT and MTLoRA load it:
//!
//! ```text
//! JPEGImages/<id>.jpg
//! semseg/VOC12/<id>.png, else semseg/pascal-context/<id>.png    21 classes, 255 ignored
//! human_parts/<id>.mat           PASCAL-Part: anno.objects(i).{class_ind, mask, parts(j).{part_name, mask}}
//! pascal-context/trainval/<id>.mat   LabelMap: PASCAL-Context classes (459)
//! normals_distill/<id>.png       RGB, n = 2 v / 255 - 1
//! sal_distill/<id>.png           grey, salient where v / 255 > 0.5
//! ImageSets/Context/{train,val}.txt
//! ```
//!
//! The edge task (a thinned Laplacian of LabelMap) is not converted: vmt-hub has no edge
//! head, and its protocol metric (ODS F) comes from an external MATLAB toolbox.

use std::path::{Path, PathBuf};

use image::{DynamicImage, GrayImage, RgbImage};
use vmt_registry::bundle::{TaskKind, TaskSpec};

use super::{check_size, read_index_png, Converted, Layout};
use crate::data::mat::{self, MatValue};
use crate::data::{invalid, DataError};

/// The PASCAL-Part class of people.
pub const PERSON: f64 = 15.0;

/// PASCAL-Part's human part names mapped to the 6 parts of the benchmark (1 head, 2 torso,
/// 3 upper arms, 4 lower arms and hands, 5 upper legs, 6 lower legs and feet; 0 background).
pub const HUMAN_PARTS_6: [(&str, u8); 24] = [
    ("hair", 1),
    ("head", 1),
    ("lear", 1),
    ("lebrow", 1),
    ("leye", 1),
    ("lfoot", 6),
    ("lhand", 4),
    ("llarm", 4),
    ("llleg", 6),
    ("luarm", 3),
    ("luleg", 5),
    ("mouth", 1),
    ("neck", 2),
    ("nose", 1),
    ("rear", 1),
    ("rebrow", 1),
    ("reye", 1),
    ("rfoot", 6),
    ("rhand", 4),
    ("rlarm", 4),
    ("rlleg", 6),
    ("ruarm", 3),
    ("ruleg", 5),
    ("torso", 2),
];

/// PASCAL-Context classes where the distilled normals are kept: the classes whose names
/// are also NYU-v2 classes (less "unknown"), plus "tvmonitor" (MTI-Net's
/// data/db_info/{context,nyu}_classes.json). Elsewhere the normals are invalid.
pub const NORMALS_VALID_CLASSES: [u16; 170] = [
    3, 4, 6, 9, 10, 11, 13, 15, 17, 18, 22, 23, 29, 30, 33, 34, 36, 37, 38, 39, 41, 43, 46, 49, 50,
    51, 53, 55, 56, 59, 61, 62, 65, 66, 68, 69, 72, 73, 78, 83, 84, 85, 87, 88, 95, 96, 101, 104,
    105, 107, 111, 113, 115, 122, 124, 135, 141, 142, 143, 146, 150, 154, 157, 158, 159, 165, 172,
    174, 181, 183, 184, 191, 193, 195, 197, 199, 202, 213, 215, 216, 219, 220, 223, 225, 228, 230,
    232, 233, 238, 239, 242, 243, 246, 250, 251, 252, 255, 260, 261, 263, 269, 272, 273, 275, 281,
    283, 284, 285, 286, 287, 288, 290, 291, 292, 293, 295, 304, 307, 309, 310, 314, 315, 319, 323,
    329, 330, 331, 336, 342, 345, 349, 350, 351, 352, 355, 357, 368, 370, 371, 374, 379, 380, 383,
    384, 397, 401, 403, 405, 407, 408, 411, 412, 413, 414, 417, 419, 421, 423, 427, 429, 430, 432,
    440, 441, 442, 443, 444, 446, 454, 457,
];

/// A `PASCAL_MT` folder.
pub(crate) struct Pascal {
    root: PathBuf,
}

impl Pascal {
    pub(crate) fn new(root: &Path) -> Self {
        Self { root: root.into() }
    }

    fn semseg_path(&self, id: &str) -> Result<PathBuf, DataError> {
        let voc = self.root.join("semseg/VOC12").join(format!("{id}.png"));
        if voc.is_file() {
            return Ok(voc);
        }
        let context = self
            .root
            .join("semseg/pascal-context")
            .join(format!("{id}.png"));
        if context.is_file() {
            return Ok(context);
        }
        Err(invalid(
            &context,
            format!("missing semseg label (also tried {})", voc.display()),
        ))
    }
}

/// The 21 classes of PASCAL VOC, by id (MTI-Net's `VOC_CATEGORY_NAMES`).
const VOC_CLASSES: [&str; 21] = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
];

impl Layout for Pascal {
    fn name(&self) -> &'static str {
        "PASCAL-Context (multi-task)"
    }

    fn tasks(&self) -> Vec<TaskSpec> {
        vec![
            TaskSpec::new("semseg", TaskKind::Segmentation, 21).with_classes(&VOC_CLASSES),
            TaskSpec::new("human_parts", TaskKind::Segmentation, 7).with_classes(&[
                "background",
                "head",
                "torso",
                "upper arm",
                "lower arm",
                "upper leg",
                "lower leg",
            ]),
            TaskSpec::new("sal", TaskKind::Saliency, 1),
            TaskSpec::new("normals", TaskKind::Normals, 3),
        ]
    }

    fn split_file(&self, split: &str) -> PathBuf {
        self.root
            .join("ImageSets/Context")
            .join(format!("{split}.txt"))
    }

    fn image(&self, id: &str) -> PathBuf {
        self.root.join("JPEGImages").join(format!("{id}.jpg"))
    }

    fn convert(&self, id: &str, width: u32, height: u32) -> Result<Converted, DataError> {
        let size = (width, height);
        // semseg: class ids as they are.
        let path = self.semseg_path(id)?;
        let (w, h, seg) = read_index_png(&path)?;
        check_size(&path, "the semseg label", (w, h), size)?;
        if let Some(bad) = seg.iter().find(|&&c| c >= 21 && c != 255) {
            return Err(invalid(
                &path,
                format!("class id {bad} (PASCAL-Context semseg has 21 classes; 255 = ignored)"),
            ));
        }
        let semseg = GrayImage::from_raw(w, h, seg).expect("w*h ids");

        let parts_path = self.root.join("human_parts").join(format!("{id}.mat"));
        let human_parts = human_parts(&parts_path, size)?;

        // Saliency: salient where v / 255 > 0.5, i.e. v >= 128.
        let path = self.root.join("sal_distill").join(format!("{id}.png"));
        let (w, h, sal) = read_index_png(&path)?;
        check_size(&path, "the saliency label", (w, h), size)?;
        let sal = sal
            .into_iter()
            .map(|v| if v as f64 / 255.0 > 0.5 { 255 } else { 0 })
            .collect();
        let sal = GrayImage::from_raw(w, h, sal).expect("w*h values");

        let normals = self.normals(id, size)?;
        Ok(Converted {
            labels: vec![
                DynamicImage::ImageLuma8(semseg),
                DynamicImage::ImageLuma8(human_parts),
                DynamicImage::ImageLuma8(sal),
                DynamicImage::ImageRgb8(normals),
            ],
        })
    }
}

impl Pascal {
    /// The distilled normals where LabelMap has a class of [`NORMALS_VALID_CLASSES`],
    /// (0, 0, 0) = invalid elsewhere.
    fn normals(&self, id: &str, size: (u32, u32)) -> Result<RgbImage, DataError> {
        let path = self.root.join("normals_distill").join(format!("{id}.png"));
        let img = image::open(&path).map_err(|e| DataError::Decode {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let DynamicImage::ImageRgb8(mut rgb) = img else {
            return Err(invalid(
                &path,
                format!("expected an 8-bit RGB PNG, found {:?}", img.color()),
            ));
        };
        check_size(&path, "the normals", rgb.dimensions(), size)?;
        let lm_path = self
            .root
            .join("pascal-context/trainval")
            .join(format!("{id}.mat"));
        let vars = mat::read(&lm_path)?;
        let labels = vars
            .get("LabelMap")
            .and_then(MatValue::as_matrix)
            .ok_or_else(|| invalid(&lm_path, "no 2-D numeric variable LabelMap"))?;
        let (h, w, classes) = labels;
        check_size(&lm_path, "LabelMap", (w as u32, h as u32), size)?;
        for (p, &c) in rgb.pixels_mut().zip(&classes) {
            let valid = c >= 0.0
                && c <= u16::MAX as f64
                && NORMALS_VALID_CLASSES.binary_search(&(c as u16)).is_ok();
            if !valid {
                p.0 = [0, 0, 0];
            } else if p.0 == [0, 0, 0] {
                // (0,0,0) means invalid in vmt-hub's layout; (1,1,1) points the same way.
                p.0 = [1, 1, 1];
            }
        }
        Ok(rgb)
    }
}

/// The human-part label of one image (MTI-Net's `_load_human_parts`, then
/// `AddIgnoreRegions`): an image has human parts when an object of class 15 has a
/// non-empty mask; then every person with parts, in file order, writes each part's id of
/// [`HUMAN_PARTS_6`] over its mask. A label left all 0 is all ignored (255).
fn human_parts(path: &Path, (width, height): (u32, u32)) -> Result<GrayImage, DataError> {
    let vars = mat::read(path)?;
    let file = PartAnno {
        path,
        size: (width, height),
    };
    let anno = vars
        .get("anno")
        .ok_or_else(|| invalid(path, "no variable \"anno\" (a PASCAL-Part annotation)"))?;
    let objects = file.field(anno, 0, "objects", "anno")?;
    file.check_struct(&objects, "anno.objects")?;
    let mut has_human = false;
    let mut class = Vec::with_capacity(objects.len());
    for i in 0..objects.len() {
        let what = format!("anno.objects({})", i + 1);
        let c = file
            .field(&objects, i, "class_ind", &what)?
            .as_numeric()
            .and_then(|v| v.first().copied())
            .ok_or_else(|| invalid(path, format!("{what}.class_ind is not a number")))?;
        if c == PERSON {
            let mask = file.field(&objects, i, "mask", &what)?;
            has_human |= file
                .mask(&mask, &format!("{what}.mask"))?
                .iter()
                .any(|&b| b);
        }
        class.push(c);
    }
    let mut target = vec![0u8; (width * height) as usize];
    if has_human {
        for (i, &c) in class.iter().enumerate() {
            let what = format!("anno.objects({})", i + 1);
            let parts = file.field(&objects, i, "parts", &what)?;
            if c == PERSON && !parts.is_empty() {
                file.check_struct(&parts, &format!("{what}.parts"))?;
                file.paint_parts(&parts, &what, &mut target)?;
            }
        }
    }
    if target.iter().all(|&t| t == 0) {
        target.fill(255);
    }
    Ok(GrayImage::from_raw(width, height, target).expect("w*h ids"))
}

/// A PASCAL-Part annotation file being read: errors name it and the field at fault.
struct PartAnno<'a> {
    path: &'a Path,
    /// The image's (width, height), which every mask must have.
    size: (u32, u32),
}

impl PartAnno<'_> {
    /// Field `name` of element `i` of the struct array `v` (called `what`).
    fn field(&self, v: &MatValue, i: usize, name: &str, what: &str) -> Result<MatValue, DataError> {
        v.field(i, name)
            .cloned()
            .ok_or_else(|| invalid(self.path, format!("{what} has no field {name:?}")))
    }

    /// Refuses `v` (called `what`) unless it is a struct array.
    fn check_struct(&self, v: &MatValue, what: &str) -> Result<(), DataError> {
        match v {
            MatValue::Struct { .. } => Ok(()),
            _ => Err(invalid(
                self.path,
                format!("{what} is a {}, not a struct array", v.kind()),
            )),
        }
    }

    /// A mask of the image's size.
    fn mask(&self, v: &MatValue, what: &str) -> Result<Vec<bool>, DataError> {
        let (h, w, m) = v
            .as_matrix()
            .ok_or_else(|| invalid(self.path, format!("{what} is not a 2-D array")))?;
        check_size(self.path, what, (w as u32, h as u32), self.size)?;
        Ok(m.into_iter().map(|x| x != 0.0).collect())
    }

    /// Paints each part of one person (`what`) with its id of the six human parts.
    fn paint_parts(
        &self,
        parts: &MatValue,
        what: &str,
        target: &mut [u8],
    ) -> Result<(), DataError> {
        for j in 0..parts.len() {
            let what = format!("{what}.parts({})", j + 1);
            let name = self.field(parts, j, "part_name", &what)?;
            let name = name
                .as_str()
                .ok_or_else(|| invalid(self.path, format!("{what}.part_name is not text")))?;
            let id = HUMAN_PARTS_6
                .iter()
                .find(|(n, _)| *n == name)
                .map(|&(_, id)| id)
                .ok_or_else(|| {
                    invalid(self.path, format!("{what}: unknown human part {name:?}"))
                })?;
            let mask = self.mask(
                &self.field(parts, j, "mask", &what)?,
                &format!("{what}.mask"),
            )?;
            for (t, m) in target.iter_mut().zip(mask) {
                if m {
                    *t = id;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_sorted_and_complete() {
        assert!(NORMALS_VALID_CLASSES.windows(2).all(|w| w[0] < w[1]));
        assert!(NORMALS_VALID_CLASSES.contains(&427)); // tvmonitor
        assert!(!NORMALS_VALID_CLASSES.contains(&431)); // unknown
        let ids: std::collections::BTreeSet<u8> = HUMAN_PARTS_6.iter().map(|p| p.1).collect();
        assert_eq!(ids.into_iter().collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
    }
}
