//! `vmt-hub data import`: the multi-task PASCAL-Context and NYUD-v2 benchmarks, as
//! distributed for ASTMT / MTI-Net / InvPT / MTLoRA (`PASCAL_MT`, `NYUD_MT`), converted into
//! vmt-hub's dataset layout (docs/dataset.md) with the label mappings of those projects'
//! loaders.
//!
//! The conversion is parallel and resumable: every output file is written to a temporary
//! name and renamed into place, an image whose outputs all exist is skipped, and
//! `dataset.json` is written last, so a folder without it is an unfinished import and a
//! finished one is byte for byte what an uninterrupted run writes.

pub mod nyud;
pub mod pascal;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use image::DynamicImage;
use rayon::prelude::*;
use vmt_registry::bundle::TaskSpec;

use super::{invalid, DataError, DatasetInfo};

/// Prefix of the temporary files an import writes before renaming them into place.
const TEMP_PREFIX: &str = ".vmt-import-";

/// A benchmark layout `data import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Benchmark {
    /// `PASCAL_MT`: semseg (21 classes), human_parts (7), sal, normals.
    PascalContext,
    /// `NYUD_MT`: semseg (40 classes), depth, normals.
    Nyud,
}

impl FromStr for Benchmark {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pascal-context" | "pascal" => Ok(Benchmark::PascalContext),
            "nyud" | "nyud-v2" => Ok(Benchmark::Nyud),
            _ => Err(format!(
                "unknown benchmark {s:?} (known: pascal-context, nyud)"
            )),
        }
    }
}

/// What one image converts to: its tasks' labels, in the order of the layout's tasks.
pub(crate) struct Converted {
    labels: Vec<DynamicImage>,
}

/// A distributed layout: where its files are and how one image's labels are made.
pub(crate) trait Layout: Sync {
    /// Display name, written to dataset.json.
    fn name(&self) -> &'static str;
    /// The tasks it converts to.
    fn tasks(&self) -> Vec<TaskSpec>;
    /// The list of ids of `split` (`train`, `val`).
    fn split_file(&self, split: &str) -> PathBuf;
    /// The image of `id`.
    fn image(&self, id: &str) -> PathBuf;
    /// The labels of `id`, for an image of `width x height`.
    fn convert(&self, id: &str, width: u32, height: u32) -> Result<Converted, DataError>;
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// The layout's display name.
    pub name: String,
    /// The folder written.
    pub out: PathBuf,
    /// Images per split, in order.
    pub splits: Vec<(String, usize)>,
    /// Images converted by this run.
    pub converted: usize,
    /// Images skipped because an earlier run had converted them.
    pub skipped: usize,
    /// Facts about the data, one line each (e.g. how many images have human parts).
    pub notes: Vec<String>,
}

impl std::fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let splits: Vec<String> = self
            .splits
            .iter()
            .map(|(s, n)| format!("{n} {s}"))
            .collect();
        writeln!(
            f,
            "{}: {} images ({}) in {}",
            self.name,
            self.converted + self.skipped,
            splits.join(", "),
            self.out.display()
        )?;
        writeln!(
            f,
            "converted {}, skipped {} (already converted)",
            self.converted, self.skipped
        )?;
        for n in &self.notes {
            writeln!(f, "{n}")?;
        }
        Ok(())
    }
}

/// Converts the benchmark at `src` into a dataset folder `out`, on `jobs` threads;
/// `progress(done, total)` is called after each image.
///
/// # Errors
/// A missing or empty split file, a missing image or label, a `.mat` without the expected
/// structure, a label whose size differs from its image, a value out of range: each names
/// the file. Files converted before the error stay, and a later run skips them.
pub fn import(
    benchmark: Benchmark,
    src: &Path,
    out: &Path,
    jobs: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<ImportSummary, DataError> {
    match benchmark {
        Benchmark::PascalContext => run(&pascal::Pascal::new(src), out, jobs, progress),
        Benchmark::Nyud => run(&nyud::Nyud::new(src), out, jobs, progress),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |e| DataError::Io {
        path: path.into(),
        source: e,
    }
}

/// The ids listed in a split file (one per line).
fn read_split(path: &Path) -> Result<Vec<String>, DataError> {
    let ids = super::read_id_list(path)?;
    if ids.is_empty() {
        return Err(invalid(path, "the split lists no image"));
    }
    if let Some(bad) = ids
        .iter()
        .find(|id| id.contains(['/', '\\']) || id.starts_with('.'))
    {
        return Err(invalid(path, format!("{bad:?} is not an image id")));
    }
    Ok(ids)
}

fn run(
    layout: &dyn Layout,
    out: &Path,
    jobs: usize,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<ImportSummary, DataError> {
    let splits: Vec<(String, Vec<String>)> = ["train", "val"]
        .into_iter()
        .map(|s| Ok((s.to_string(), read_split(&layout.split_file(s))?)))
        .collect::<Result<_, DataError>>()?;
    let mut ids: Vec<&String> = splits.iter().flat_map(|(_, ids)| ids).collect();
    ids.sort();
    ids.dedup();
    let tasks = layout.tasks();
    for dir in ["", "images", "splits"]
        .into_iter()
        .chain(tasks.iter().map(|t| t.name.as_str()))
    {
        let d = out.join(dir);
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        remove_temp_files(&d)?;
    }
    let (done, converted) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs.max(1))
        .build()
        .map_err(|e| invalid(out, format!("cannot start {jobs} threads: {e}")))?;
    pool.install(|| {
        ids.par_iter().try_for_each(|id| {
            if convert_one(layout, &tasks, out, id)? {
                converted.fetch_add(1, Ordering::Relaxed);
            }
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, ids.len());
            Ok::<(), DataError>(())
        })
    })?;

    let mut split_files: Vec<(String, Vec<String>)> = splits.clone();
    let mut notes = Vec::new();
    if tasks.iter().any(|t| t.name == "human_parts") {
        let (files, n) = human_parts_splits(out, &splits)?;
        split_files.extend(files);
        notes.extend(n);
    }
    for (name, ids) in &split_files {
        let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
        write_atomic(
            &out.join("splits").join(format!("{name}.txt")),
            text.as_bytes(),
        )?;
    }
    let info = DatasetInfo {
        name: layout.name().into(),
        tasks: tasks.clone(),
    };
    let json = serde_json::to_string_pretty(&info).expect("dataset.json serialises") + "\n";
    write_atomic(&out.join("dataset.json"), json.as_bytes())?;
    let converted = converted.into_inner();
    Ok(ImportSummary {
        name: layout.name().into(),
        out: out.into(),
        splits: splits
            .iter()
            .map(|(s, ids)| (s.clone(), ids.len()))
            .collect(),
        converted,
        skipped: ids.len() - converted,
        notes,
    })
}

/// For each split, the images whose human_parts label is not all ignored (upstream trains
/// human_parts alone on these): `human_parts_<split>` lists, and a note for each.
#[allow(clippy::type_complexity)]
fn human_parts_splits(
    out: &Path,
    splits: &[(String, Vec<String>)],
) -> Result<(Vec<(String, Vec<String>)>, Vec<String>), DataError> {
    let (mut files, mut notes) = (Vec::new(), Vec::new());
    for (split, ids) in splits {
        let mut with = Vec::new();
        for id in ids {
            if has_labelled_pixel(&out.join("human_parts").join(format!("{id}.png")))? {
                with.push(id.clone());
            }
        }
        notes.push(format!(
            "human_parts: {} of {} {split} images have human parts (splits/human_parts_{split}.txt); the others are ignored",
            with.len(),
            ids.len()
        ));
        files.push((format!("human_parts_{split}"), with));
    }
    Ok((files, notes))
}

/// Converts one image unless all its outputs exist; true when it converted.
fn convert_one(
    layout: &dyn Layout,
    tasks: &[TaskSpec],
    out: &Path,
    id: &str,
) -> Result<bool, DataError> {
    let src = layout.image(id);
    let ext = src
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("jpg")
        .to_ascii_lowercase();
    let image_out = out.join("images").join(format!("{id}.{ext}"));
    let label_outs: Vec<PathBuf> = tasks
        .iter()
        .map(|t| out.join(&t.name).join(format!("{id}.png")))
        .collect();
    if image_out.is_file() && label_outs.iter().all(|p| p.is_file()) {
        return Ok(false);
    }
    let (width, height) = image::image_dimensions(&src).map_err(|e| DataError::Decode {
        path: src.clone(),
        reason: e.to_string(),
    })?;
    let converted = layout.convert(id, width, height)?;
    for ((label, path), task) in converted.labels.iter().zip(&label_outs).zip(tasks) {
        debug_assert_eq!(
            (label.width(), label.height()),
            (width, height),
            "task {}",
            task.name
        );
        let mut png = Vec::new();
        label
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| invalid(path, format!("cannot encode PNG: {e}")))?;
        write_atomic(path, &png)?;
    }
    // The image is copied as it is (no re-encoding), last.
    let bytes = std::fs::read(&src).map_err(io_err(&src))?;
    write_atomic(&image_out, &bytes)?;
    Ok(true)
}

/// Writes `bytes` to a temporary file next to `path`, then renames it into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(io_err(dir))?;
    tmp.write_all(bytes).map_err(io_err(tmp.path()))?;
    tmp.persist(path).map_err(|e| DataError::Io {
        path: path.into(),
        source: e.error,
    })?;
    Ok(())
}

/// Removes what an interrupted run left half-written.
fn remove_temp_files(dir: &Path) -> Result<(), DataError> {
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            let p = entry.path();
            std::fs::remove_file(&p).map_err(io_err(&p))?;
        }
    }
    Ok(())
}

fn has_labelled_pixel(path: &Path) -> Result<bool, DataError> {
    let img = image::open(path).map_err(|e| DataError::Decode {
        path: path.into(),
        reason: e.to_string(),
    })?;
    Ok(img.to_luma8().pixels().any(|p| p.0[0] != 255))
}

/// An 8-bit class-index PNG (greyscale, or palette indices as they are) as `(w, h, ids)`.
pub(crate) fn read_index_png(path: &Path) -> Result<(u32, u32, Vec<u8>), DataError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let decode = |e: png::DecodingError| DataError::Decode {
        path: path.into(),
        reason: e.to_string(),
    };
    let mut reader = decoder.read_info().map_err(decode)?;
    let (color, depth) = reader.output_color_type();
    if depth != png::BitDepth::Eight
        || !matches!(color, png::ColorType::Grayscale | png::ColorType::Indexed)
    {
        return Err(invalid(
            path,
            format!("expected an 8-bit greyscale or palette PNG of class ids, found {color:?} with {depth:?} bits"),
        ));
    }
    let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
    let info = reader.next_frame(&mut buf).map_err(decode)?;
    let (w, h) = (info.width, info.height);
    let mut ids = Vec::with_capacity((w * h) as usize);
    for row in buf[..info.buffer_size()].chunks(info.line_size) {
        ids.extend_from_slice(&row[..w as usize]);
    }
    Ok((w, h, ids))
}

/// An error unless `(w, h)` is the image's size.
pub(crate) fn check_size(
    path: &Path,
    what: &str,
    (w, h): (u32, u32),
    (width, height): (u32, u32),
) -> Result<(), DataError> {
    if (w, h) != (width, height) {
        return Err(invalid(
            path,
            format!("{what} is {w}x{h}, its image is {width}x{height}"),
        ));
    }
    Ok(())
}
