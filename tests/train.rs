//! Training on `data synth` scenes: clearly above trivial baselines, exact resume, and
//! bad data refused without a bundle appearing in the registry.

use std::path::{Path, PathBuf};
use std::process::Output;

mod common;

use candle_core::Device;
use common::vmt_hub;
use vmt_hub::data::synth::synthesize;
use vmt_hub::data::{Dataset, Label};
use vmt_hub::eval::metrics::{NormalsMetric, SalMetric, SegMetric};
use vmt_hub::train::{train, TrainOptions, TrainOutcome};
use vmt_registry::reference::TagName;
use vmt_registry::Registry;

fn options(data: &Path, run_dir: &Path, steps: usize) -> TrainOptions {
    TrainOptions {
        data: data.into(),
        steps,
        seed: 7,
        run_dir: run_dir.into(),
        ..TrainOptions::default()
    }
}

fn finished(o: TrainOutcome) -> vmt_registry::bundle::BundleDir {
    match o {
        TrainOutcome::Finished(b) => *b,
        TrainOutcome::Stopped(s) => panic!("stopped at {s}"),
    }
}

/// Trivial baselines on the validation split, with the same metric code: the training
/// split's majority class, all-foreground saliency, and the mean training normal.
fn trivial_baselines(ds: &Dataset) -> (f64, f64, f64, f64) {
    let tasks = ds.info.tasks.clone();
    let idx = |n: &str| tasks.iter().position(|t| t.name == n).unwrap();
    let (seg, parts, sal, nrm) = (
        idx("semseg"),
        idx("human_parts"),
        idx("sal"),
        idx("normals"),
    );
    let mut counts = [vec![0u64; 5], vec![0u64; 4]];
    let mut mean = [0f64; 3];
    for id in ds.split("train").unwrap() {
        let s = ds.load(&id, &tasks).unwrap();
        for (k, t) in [seg, parts].into_iter().enumerate() {
            let Label::Classes(c) = &s.labels[t] else {
                panic!()
            };
            for &v in c {
                counts[k][v as usize] += 1;
            }
        }
        let Label::Normals(n) = &s.labels[nrm] else {
            panic!()
        };
        let m = n.len() / 3;
        for c in 0..3 {
            mean[c] += n[c * m..(c + 1) * m].iter().map(|&v| v as f64).sum::<f64>();
        }
    }
    let majority = |c: &Vec<u64>| c.iter().enumerate().max_by_key(|p| p.1).unwrap().0 as u8;
    let (maj_seg, maj_parts) = (majority(&counts[0]), majority(&counts[1]));
    let (mut m_seg, mut m_parts, mut m_sal, mut m_nrm) = (
        SegMetric::new(5),
        SegMetric::new(4),
        SalMetric::new(),
        NormalsMetric::default(),
    );
    for id in ds.split("val").unwrap() {
        let s = ds.load(&id, &tasks).unwrap();
        let ex = vmt_hub::data::augment::prepare(&s, 64, None);
        let n = 64 * 64;
        let (Label::Classes(a), Label::Classes(b), Label::Classes(c), Label::Normals(d)) = (
            &ex.labels[seg],
            &ex.labels[parts],
            &ex.labels[sal],
            &ex.labels[nrm],
        ) else {
            panic!()
        };
        m_seg.add(&vec![maj_seg; n], a);
        m_parts.add(&vec![maj_parts; n], b);
        m_sal.add(&vec![1.0; n], c);
        let pred: Vec<f32> = (0..3)
            .flat_map(|c| std::iter::repeat_n(mean[c] as f32, n))
            .collect();
        m_nrm.add(&pred, d);
    }
    (
        100.0 * m_seg.miou(),
        100.0 * m_parts.miou(),
        100.0 * m_sal.max_f(),
        m_nrm.mean_error(),
    )
}

#[test]
fn training_beats_trivial_baselines_on_synthetic_scenes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthesize(&data, 160, 64, 3).unwrap();
    let bundle =
        finished(train(&options(&data, &tmp.path().join("run"), 300), &Device::Cpu).unwrap());
    let val = &bundle.config.extra["metrics"]["val"];
    let metric = |t: &str, m: &str| val[t]["metrics"][m].as_f64().unwrap();
    let (seg, parts, sal_f, nrm) = trivial_baselines(&Dataset::open(&data).unwrap());
    eprintln!("trained {val}\nbaselines: semseg {seg:.2} parts {parts:.2} sal F {sal_f:.2} normals {nrm:.2}");
    assert!(
        metric("semseg", "mIoU") >= 2.0 * seg,
        "semseg mIoU {} vs majority {seg}",
        metric("semseg", "mIoU")
    );
    assert!(
        metric("human_parts", "mIoU") >= 2.0 * parts,
        "parts mIoU {} vs majority {parts}",
        metric("human_parts", "mIoU")
    );
    assert!(
        metric("sal", "maxF") > sal_f,
        "sal maxF {} vs all-foreground {sal_f}",
        metric("sal", "maxF")
    );
    assert!(
        metric("normals", "mErr") < nrm,
        "normals {} vs mean normal {nrm}",
        metric("normals", "mErr")
    );
    // Provenance is recorded.
    let prov = &bundle.config.extra["provenance"];
    assert_eq!(prov["steps"], 300);
    assert_eq!(
        prov["data_digest"].as_str().unwrap(),
        Dataset::open(&data).unwrap().digest().unwrap().to_string()
    );
    assert!(bundle.config.backbone.source.as_deref() == Some("random:tiny"));
}

#[test]
fn resumed_run_gives_identical_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthesize(&data, 24, 32, 5).unwrap();
    let mut o = options(&data, &tmp.path().join("straight"), 12);
    o.image_size = 32;
    o.batch = 4;
    o.checkpoint_every = 3;
    let straight = finished(train(&o, &Device::Cpu).unwrap());

    o.run_dir = tmp.path().join("interrupted");
    o.stop_after = Some(6);
    assert!(matches!(
        train(&o, &Device::Cpu).unwrap(),
        TrainOutcome::Stopped(6)
    ));
    o.stop_after = None;
    o.resume = true;
    let resumed = finished(train(&o, &Device::Cpu).unwrap());

    let reg = Registry::open(&tmp.path().join("reg")).unwrap();
    let a = reg
        .publish(&straight, &TagName::parse("r:a").unwrap())
        .unwrap();
    let b = reg
        .publish(&resumed, &TagName::parse("r:a").unwrap())
        .unwrap();
    assert_eq!(
        a.digest, b.digest,
        "same tag, same bytes: same manifest digest"
    );
    assert_eq!(b.new_blobs, 0);
    // The resumed run's metrics file has each step exactly once.
    let lines = std::fs::read_to_string(tmp.path().join("interrupted/metrics.jsonl")).unwrap();
    let steps: Vec<u64> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (1..=12).collect::<Vec<_>>());

    // Resuming a run that had finished gives the same bundle again: its last loss comes
    // from the checkpoint (it was `null` when taken from a step the resume never ran).
    let again = finished(train(&o, &Device::Cpu).unwrap());
    let loss = |b: &vmt_hub::registry::bundle::BundleDir| b.config.metrics().unwrap().train_loss;
    assert!(loss(&again).is_some_and(f64::is_finite));
    assert_eq!(loss(&again), loss(&resumed));
    let c = reg
        .publish(&again, &TagName::parse("r:a").unwrap())
        .unwrap();
    assert_eq!(
        c.digest, a.digest,
        "a finished run resumed publishes the same digest"
    );

    // Resuming with other settings is refused, naming them.
    o.lr = 1.0;
    match train(&o, &Device::Cpu) {
        Err(vmt_hub::Error::SettingsChanged { differing, .. }) => {
            assert!(
                differing.iter().any(|d| d.starts_with("lr ")),
                "{differing:?}"
            )
        }
        other => panic!("expected SettingsChanged, got {:?}", other.err()),
    }
}

/// `vmt-hub train --steps STEPS` at 32x32, batch 2, quiet, with `extra` arguments.
fn train_cli(
    root: &Path,
    data: &Path,
    extra: &[&str],
    steps: &str,
    run: &Path,
    tag: &str,
) -> Output {
    let mut args = vec!["train", "--data", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend([
        "--steps",
        steps,
        "--batch",
        "2",
        "--image-size",
        "32",
        "--quiet",
        "--run-dir",
        run.to_str().unwrap(),
        "--tag",
        tag,
    ]);
    vmt_hub(root, &args)
}

/// Two steps: enough to publish a bundle.
fn train_two_steps(root: &Path, data: &Path, tasks: &str, run: &Path, tag: &str) -> Output {
    train_cli(root, data, &["--tasks", tasks], "2", run, tag)
}

fn train_fails(root: &Path, data: &Path, run: &Path, needles: &[&str]) {
    let o = train_cli(root, data, &[], "4", run, "bad:v1");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "should fail");
    for n in needles {
        assert!(stderr.contains(n), "error should mention {n:?}: {stderr}");
    }
    let list = String::from_utf8_lossy(&vmt_hub(root, &["list"]).stdout).to_string();
    assert!(
        !list.contains("bad:v1"),
        "a failed run must not publish: {list}"
    );
}

fn fresh(dir: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    synthesize(dir, 10, 32, 1).unwrap();
    dir.into()
}

#[test]
fn bad_data_is_refused_with_the_file_named_and_nothing_published() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    let run = tmp.path().join("run");
    let d = fresh(&tmp.path().join("d"));

    // A label PNG of the wrong size.
    let label = d.join("semseg/000001.png");
    image::GrayImage::new(16, 16).save(&label).unwrap();
    train_fails(&root, &d, &run, &["semseg/000001.png", "16x16", "32x32"]);

    // Class ids out of range.
    let d = fresh(&d);
    image::GrayImage::from_pixel(32, 32, image::Luma([9]))
        .save(&label)
        .unwrap();
    train_fails(&root, &d, &run, &["semseg/000001.png", "class id 9"]);

    // A corrupt image.
    let d = fresh(&d);
    std::fs::write(
        d.join("images/000002.jpg"),
        b"\xff\xd8\xff not really a jpeg",
    )
    .unwrap();
    train_fails(&root, &d, &run, &["images/000002.jpg"]);

    // An empty split.
    let d = fresh(&d);
    std::fs::write(d.join("splits/train.txt"), "\n").unwrap();
    train_fails(&root, &d, &run, &["splits/train.txt", "empty"]);

    // eval on a dataset with more tasks than the bundle.
    let d = fresh(&d);
    let bundle_dir = tmp.path().join("b");
    let o = train_two_steps(&root, &d, "semseg", &run.join("ok"), "ok:v1");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        vmt_hub(&root, &["export", "ok:v1", bundle_dir.to_str().unwrap()])
            .status
            .success()
    );
    let o = vmt_hub(
        &root,
        &[
            "eval",
            "ok:v1",
            "--data",
            d.to_str().unwrap(),
            "--image-size",
            "32",
        ],
    );
    // The dataset has tasks the bundle lacks: the shared one is evaluated, the others
    // are named as skipped.
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && stderr.contains("skipped human_parts"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("semseg"));
    let o = vmt_hub(
        &root,
        &[
            "eval",
            "ok:v1",
            "--data",
            d.to_str().unwrap(),
            "--image-size",
            "32",
            "--tasks",
            "semseg",
            "--json",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(report["tasks"]["semseg"]["metrics"]["mIoU"]
        .as_f64()
        .is_some());
}

#[test]
fn eval_defaults_to_the_tasks_bundle_and_dataset_share() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("reg");
    // data synth makes five tasks (with depth); train four of them.
    let data = fresh(&tmp.path().join("data"));
    assert!(Dataset::open(&data).unwrap().task("depth").is_some());
    let o = train_two_steps(
        &root,
        &data,
        "semseg,human_parts,sal,normals",
        &tmp.path().join("run"),
        "four:v1",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "four:v1",
            "--data",
            data.to_str().unwrap(),
            "--image-size",
            "32",
        ];
        args.extend_from_slice(extra);
        vmt_hub(&root, &args)
    };
    let o = eval(&[]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    );
    assert!(o.status.success(), "{err}");
    for t in ["semseg", "human_parts", "sal", "normals"] {
        assert!(out.contains(t), "{t} missing from {out}");
    }
    assert!(!out.contains("depth"), "{out}");
    assert!(err.contains("skipped depth"), "{err}");
    // Asking for a task the bundle lacks is an error that names it.
    let o = eval(&["--tasks", "depth"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("depth") && err.contains("lacks"), "{err}");

    // predict --data: a sheet per image with the ground truth as a second row, upscaled
    // to a readable size, with every ground-truth class colour on it (panel + legend).
    let out = tmp.path().join("pictures");
    let o = vmt_hub(
        &root,
        &[
            "predict",
            "four:v1",
            "--data",
            data.to_str().unwrap(),
            "--count",
            "1",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ds = Dataset::open(&data).unwrap();
    let id = ds.split("val").unwrap()[0].clone();
    let sheet = image::open(out.join(format!("{id}.sheet.png")))
        .unwrap()
        .to_rgb8();
    assert!(
        sheet.height() >= 2 * 192 && sheet.width() >= 5 * 192,
        "{:?}",
        sheet.dimensions()
    );
    let parts = ds.task("human_parts").unwrap().clone();
    let sample = ds.load(&id, &[parts]).unwrap();
    let vmt_hub::data::Label::Classes(c) = &sample.labels[0] else {
        panic!("human_parts is a class map")
    };
    let colours: std::collections::HashSet<[u8; 3]> = sheet.pixels().map(|p| p.0).collect();
    for &k in c.iter().filter(|&&k| k != 255) {
        assert!(
            colours.contains(&vmt_hub::predict::palette(k as usize)),
            "class {k} of the ground truth is not drawn"
        );
    }
    // Without a dataset: one row.
    let o = vmt_hub(
        &root,
        &[
            "predict",
            "four:v1",
            "--image",
            ds.image_path(&id).unwrap().to_str().unwrap(),
            "--out",
            tmp.path().join("alone").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let alone = image::open(tmp.path().join(format!("alone/{id}.sheet.png"))).unwrap();
    assert!(alone.height() < sheet.height());
}

#[test]
fn a_task_added_later_learns_about_as_well_as_one_trained_jointly() {
    // human_parts trained jointly with three other tasks, against human_parts added with
    // add-task to a bundle trained on those three: same data, steps and seed.
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    synthesize(&data, 160, 64, 3).unwrap();
    let steps = 200;
    let joint = finished(
        train(
            &options(&data, &tmp.path().join("joint"), steps),
            &Device::Cpu,
        )
        .unwrap(),
    );
    let three = finished(
        train(
            &TrainOptions {
                tasks: ["semseg", "sal", "normals"].map(String::from).to_vec(),
                ..options(&data, &tmp.path().join("three"), steps)
            },
            &Device::Cpu,
        )
        .unwrap(),
    );
    let added = finished(
        train(
            &TrainOptions {
                tasks: vec!["human_parts".into()],
                base: Some(vmt_hub::train::Base {
                    bundle: three,
                    parent: None,
                }),
                ..options(&data, &tmp.path().join("added"), steps)
            },
            &Device::Cpu,
        )
        .unwrap(),
    );
    let miou = |b: &vmt_registry::bundle::BundleDir| {
        b.config.extra["metrics"]["val"]["human_parts"]["metrics"]["mIoU"]
            .as_f64()
            .unwrap()
    };
    let (j, a) = (miou(&joint), miou(&added));
    eprintln!(
        "human_parts mIoU: joint {j:.2}, added later {a:.2} ({:.0}%)",
        100.0 * a / j
    );
    assert!(a >= 0.9 * j, "added {a} < 90% of joint {j}");
}
