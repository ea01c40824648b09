//! `data import` on replicas of the distributed PASCAL_MT and NYUD_MT layouts
//! (tests/fixtures/replicas, written by reference/make_dataset_replicas.py with scipy, PIL
//! and numpy, together with the labels the upstream loaders produce from them).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{fixtures, output_without_panic, vmt_hub_command};
use vmt_hub::data::benchmarks::{import, Benchmark, ImportSummary};
use vmt_hub::data::{Dataset, Label};

fn replica(name: &str) -> PathBuf {
    fixtures().join("replicas").join(name)
}

fn expected(bench: &str, task: &str, id: &str) -> (Vec<u64>, Vec<u16>) {
    let path = fixtures()
        .join("replicas/expected")
        .join(bench)
        .join(task)
        .join(format!("{id}.npy"));
    let bytes = std::fs::read(&path).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().to_vec();
    let values = match npy.try_data::<u8>() {
        Ok(r) => r.map(|v| v.map(u16::from)).collect::<Result<_, _>>(),
        Err(npy) => npy.into_vec::<u16>(),
    }
    .unwrap();
    (shape, values)
}

/// The raw pixel values of a converted label (8 or 16 bits, 1 or 3 channels).
fn pixels(path: &Path) -> (u32, u32, usize, Vec<u16>) {
    let img = image::open(path).unwrap();
    let (w, h) = (img.width(), img.height());
    match img {
        image::DynamicImage::ImageLuma8(i) => {
            (w, h, 1, i.into_raw().into_iter().map(u16::from).collect())
        }
        image::DynamicImage::ImageRgb8(i) => {
            (w, h, 3, i.into_raw().into_iter().map(u16::from).collect())
        }
        image::DynamicImage::ImageLuma16(i) => (w, h, 1, i.into_raw()),
        image::DynamicImage::ImageRgb16(i) => (w, h, 3, i.into_raw()),
        other => panic!("{}: unexpected {:?}", path.display(), other.color()),
    }
}

fn run(bench: Benchmark, src: &Path, out: &Path) -> Result<ImportSummary, String> {
    run_on(bench, src, out, 2)
}

fn run_on(bench: Benchmark, src: &Path, out: &Path, jobs: usize) -> Result<ImportSummary, String> {
    import(bench, src, out, jobs, &|_, _| {}).map_err(|e| e.to_string())
}

/// Every converted label pixel equals the upstream loader's, every image is copied as it is.
fn check_against_expected(out: &Path, src: &Path, bench: &str, image_dir: &str, tasks: &[&str]) {
    let ds = Dataset::open(out).unwrap();
    let ids: Vec<String> = ["train", "val"]
        .iter()
        .flat_map(|s| ds.split(s).unwrap())
        .collect();
    assert!(ids.len() >= 5);
    for id in &ids {
        assert_eq!(
            std::fs::read(out.join("images").join(format!("{id}.jpg"))).unwrap(),
            std::fs::read(src.join(image_dir).join(format!("{id}.jpg"))).unwrap(),
            "image {id} is copied unchanged"
        );
        for task in tasks {
            let (shape, want) = expected(bench, task, id);
            let (w, h, c, got) = pixels(&out.join(task).join(format!("{id}.png")));
            let mut dims = vec![h as u64, w as u64];
            if c == 3 {
                dims.push(3);
            }
            assert_eq!(dims, shape, "{task}/{id}: shape");
            let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(
                diff, 0,
                "{task}/{id}: {diff} pixels differ from the upstream loader's"
            );
        }
    }
}

#[test]
fn pascal_context_replica_converts_to_the_upstream_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pascal");
    let src = replica("PASCAL_MT");
    // Through the command line, as a user runs it.
    let o = output_without_panic(
        vmt_hub_command()
            .args(["data", "import", "pascal-context"])
            .arg(&src)
            .arg("--out")
            .arg(&out)
            .args(["--jobs", "2", "--quiet"]),
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("6 images (4 train, 2 val)"), "{stdout}");
    assert!(stdout.contains("converted 6, skipped 0"), "{stdout}");
    assert!(
        stdout.contains("2 of 4 train images have human parts"),
        "{stdout}"
    );
    check_against_expected(
        &out,
        &src,
        "pascal-context",
        "JPEGImages",
        &["semseg", "human_parts", "sal", "normals"],
    );

    // The human-parts subset: images whose label is not all ignored.
    let ds = Dataset::open(&out).unwrap();
    assert_eq!(
        ds.split("human_parts_train").unwrap(),
        ["2008_000001", "2008_000002"]
    );
    assert_eq!(ds.split("human_parts_val").unwrap(), ["2008_000005"]);
    // And the training loader reads the result.
    let sample = ds.load("2008_000005", &ds.info.tasks).unwrap();
    let Label::Classes(parts) = &sample.labels[1] else {
        panic!("human_parts")
    };
    let mut seen: Vec<u8> = parts.clone();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, [0, 1, 2, 3, 4, 5, 6], "all six parts and background");
}

#[test]
fn nyud_replica_converts_to_the_upstream_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("nyud");
    let src = replica("NYUD_MT");
    let s = run(Benchmark::Nyud, &src, &out).unwrap();
    assert_eq!((s.converted, s.skipped), (5, 0));
    check_against_expected(
        &out,
        &src,
        "nyud",
        "images",
        &["semseg", "depth", "normals"],
    );

    // The loader decodes 16-bit normals and millimetre depth back to within rounding.
    let ds = Dataset::open(&out).unwrap();
    let id = "0003";
    let sample = ds.load(id, &ds.info.tasks).unwrap();
    let read = |dir: &str| {
        let bytes = std::fs::read(src.join(dir).join(format!("{id}.npy"))).unwrap();
        let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
        match npy.try_data::<f32>() {
            Ok(r) => r.map(|v| v.map(f64::from)).collect::<Result<Vec<f64>, _>>(),
            Err(npy) => npy.into_vec::<f64>(),
        }
        .unwrap()
    };
    let Label::Depth(depth) = &sample.labels[1] else {
        panic!("depth")
    };
    for (got, want) in depth.iter().zip(read("depth")) {
        assert!(
            (*got as f64 - want).abs() <= 0.0005 + 1e-6,
            "depth {got} vs {want}"
        );
    }
    let Label::Normals(normals) = &sample.labels[2] else {
        panic!("normals")
    };
    let n = normals.len() / 3;
    let want = read("normals");
    for i in 0..n {
        let w = &want[3 * i..3 * i + 3];
        for c in 0..3 {
            let got = normals[c * n + i] as f64;
            if w == [0.0, 0.0, 0.0] {
                assert_eq!(got, 255.0, "invalid normal at {i}");
            } else {
                assert!(
                    (got - w[c]).abs() < 2e-5,
                    "normal {i}.{c}: {got} vs {}",
                    w[c]
                );
            }
        }
    }
}

/// Every file under `dir`, by relative path.
fn tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().into(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    for (rel, bytes) in tree(from) {
        let p = to.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

#[test]
fn an_interrupted_import_resumed_writes_what_an_uninterrupted_one_does() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = tmp.path().join("whole");
    run(Benchmark::PascalContext, &replica("PASCAL_MT"), &whole).unwrap();

    // A run that stops at a broken file (a truncated .mat) after converting some images:
    // on one thread the images go in order, and the broken one is the last.
    let src = tmp.path().join("src");
    copy_dir(&replica("PASCAL_MT"), &src);
    let broken = src.join("human_parts/2008_000006.mat");
    let good = std::fs::read(&broken).unwrap();
    std::fs::write(&broken, &good[..good.len() / 2]).unwrap();
    let resumed = tmp.path().join("resumed");
    let err = run_on(Benchmark::PascalContext, &src, &resumed, 1).unwrap_err();
    assert!(err.contains("2008_000006.mat"), "{err}");
    assert!(
        !resumed.join("dataset.json").exists(),
        "an unfinished import has no dataset.json"
    );
    assert!(Dataset::open(&resumed).is_err());
    // What a kill mid-write leaves: a temporary file, and a missing label.
    std::fs::write(resumed.join("semseg/.vmt-import-XyZ123"), b"half a png").unwrap();
    std::fs::write(resumed.join(".vmt-import-AbC456"), b"half a dataset.json").unwrap();
    let _ = std::fs::remove_file(resumed.join("sal/2008_000001.png"));

    std::fs::write(&broken, &good).unwrap();
    let s = run(Benchmark::PascalContext, &src, &resumed).unwrap();
    assert!(s.skipped >= 1 && s.converted >= 2, "{s}");
    assert_eq!(s.converted + s.skipped, 6);
    let (a, b) = (tree(&whole), tree(&resumed));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (rel, bytes) in &a {
        assert!(bytes == &b[rel], "{} differs", rel.display());
    }
    // And a third run has nothing left to do.
    let s = run(Benchmark::PascalContext, &src, &resumed).unwrap();
    assert_eq!((s.converted, s.skipped), (0, 6));
}

/// The error message of importing `src` after `break_it` damaged a copy of it.
fn error_after(bench: Benchmark, name: &str, break_it: impl FnOnce(&Path)) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    copy_dir(&replica(name), &src);
    break_it(&src);
    run(bench, &src, &tmp.path().join("out")).unwrap_err()
}

#[test]
fn malformed_inputs_name_the_file() {
    let p = Benchmark::PascalContext;
    let e = error_after(p, "PASCAL_MT", |s| {
        std::fs::remove_file(s.join("ImageSets/Context/val.txt")).unwrap()
    });
    assert!(
        e.contains("ImageSets/Context/val.txt") && e.contains("No such file"),
        "{e}"
    );

    let e = error_after(p, "PASCAL_MT", |s| {
        std::fs::write(s.join("ImageSets/Context/train.txt"), "\n").unwrap()
    });
    assert!(
        e.contains("train.txt") && e.contains("lists no image"),
        "{e}"
    );

    // A .mat of another structure: a LabelMap where a PASCAL-Part annotation belongs.
    let e = error_after(p, "PASCAL_MT", |s| {
        std::fs::copy(
            s.join("pascal-context/trainval/2008_000002.mat"),
            s.join("human_parts/2008_000002.mat"),
        )
        .unwrap();
    });
    assert!(
        e.contains("human_parts/2008_000002.mat") && e.contains("no variable \"anno\""),
        "{e}"
    );

    // A PASCAL-Part annotation where the LabelMap belongs.
    let e = error_after(p, "PASCAL_MT", |s| {
        std::fs::copy(
            s.join("human_parts/2008_000003.mat"),
            s.join("pascal-context/trainval/2008_000003.mat"),
        )
        .unwrap();
    });
    assert!(
        e.contains("trainval/2008_000003.mat") && e.contains("LabelMap"),
        "{e}"
    );

    // Not a MAT-file at all.
    let e = error_after(p, "PASCAL_MT", |s| {
        std::fs::write(s.join("human_parts/2008_000001.mat"), b"hello").unwrap()
    });
    assert!(
        e.contains("human_parts/2008_000001.mat") && e.contains("not a readable MAT-file"),
        "{e}"
    );

    // A label of the wrong size.
    let e = error_after(p, "PASCAL_MT", |s| {
        image::GrayImage::new(10, 10)
            .save(s.join("sal_distill/2008_000005.png"))
            .unwrap()
    });
    assert!(
        e.contains("sal_distill/2008_000005.png") && e.contains("10x10") && e.contains("16x12"),
        "{e}"
    );

    // A class id out of range.
    let e = error_after(p, "PASCAL_MT", |s| {
        let path = s.join("semseg/VOC12/2008_000001.png");
        let mut img = image::open(&path).unwrap().to_luma8();
        img.put_pixel(3, 3, image::Luma([77]));
        img.save(&path).unwrap();
    });
    assert!(
        e.contains("VOC12/2008_000001.png") && e.contains("class id 77"),
        "{e}"
    );

    // A missing label: both semseg places are named.
    let e = error_after(p, "PASCAL_MT", |s| {
        std::fs::remove_file(s.join("semseg/pascal-context/2008_000002.png")).unwrap()
    });
    assert!(
        e.contains("pascal-context/2008_000002.png") && e.contains("VOC12/2008_000002.png"),
        "{e}"
    );

    let n = Benchmark::Nyud;
    let e = error_after(n, "NYUD_MT", |s| {
        std::fs::remove_file(s.join("gt_sets/train.txt")).unwrap()
    });
    assert!(e.contains("gt_sets/train.txt"), "{e}");
    // A depth array of the wrong shape.
    let e = error_after(n, "NYUD_MT", |s| {
        std::fs::copy(s.join("normals/0001.npy"), s.join("depth/0001.npy")).unwrap();
    });
    assert!(
        e.contains("depth/0001.npy") && e.contains("[12, 16, 3]") && e.contains("[12, 16]"),
        "{e}"
    );
    let e = error_after(n, "NYUD_MT", |s| {
        std::fs::write(s.join("normals/0002.npy"), b"\x93NUMPY garbage").unwrap()
    });
    assert!(e.contains("normals/0002.npy") && e.contains(".npy"), "{e}");
}
