//! `eval`'s numbers on a hand-made case, worked out by hand below: the protocol of
//! MTI-Net / MTLoRA (split-level confusion for mIoU over all classes, saliency mIoU and
//! maxF over thresholds of per-image averages, maxF_beta from pixel counts, pixel-mean
//! angular error) and Δm against MTLoRA's single-task Swin-T baseline.

use candle_core::{Device, Tensor};
use vmt_hub::data::Label;
use vmt_hub::eval::{read_baseline, Evaluator};
use vmt_hub::tasks::known_task;

/// Two images of 2x2 pixels (row-major pixel order p0 p1 / p2 p3).
const B: usize = 2;
const N: usize = 4;

/// Logits `[B, classes, 2, 2]` that predict `pred[b][p]` at pixel p of image b.
fn class_logits(classes: usize, pred: [[usize; N]; B]) -> Tensor {
    let mut v = vec![0f32; B * classes * N];
    for b in 0..B {
        for p in 0..N {
            v[(b * classes + pred[b][p]) * N + p] = 10.0;
        }
    }
    Tensor::from_vec(v, (B, classes, 2, 2), &Device::Cpu).unwrap()
}

fn logit(p: f32) -> f32 {
    (p / (1.0 - p)).ln()
}

#[test]
fn a_hand_made_case_gives_the_protocols_numbers_and_delta_m() {
    let tasks: Vec<_> = ["semseg", "human_parts", "sal", "normals"]
        .iter()
        .map(|t| known_task(t).unwrap())
        .collect();

    // semseg (21 classes). Image 0: label 0 0 1 ignored, prediction 0 1 1 7;
    // image 1: label 2 2 2 2, prediction 2 2 2 0.
    // Over the split: class 0 TP 1, FN 1, FP 1 -> 1/3; class 1 TP 1, FP 1 -> 1/2;
    // class 2 TP 3, FN 1 -> 3/4; the 7 at an ignored pixel counts nowhere; the 18 other
    // classes count 0: mIoU = (1/3 + 1/2 + 3/4) / 21 = 19/252.
    let semseg = class_logits(21, [[0, 1, 1, 7], [2, 2, 2, 0]]);
    let semseg_gt = [vec![0u8, 0, 1, 255], vec![2, 2, 2, 2]];
    let semseg_miou = 100.0 * 19.0 / 252.0;

    // human_parts (7 classes). Image 0: label 0 1 2 3, prediction 0 1 2 2: classes 0 and 1
    // IoU 1, class 2 1/2, class 3 0, classes 4-6 absent (0). Image 1 has no person: all
    // ignored. mIoU = 2.5 / 7.
    let parts = class_logits(7, [[0, 1, 2, 2], [5, 5, 6, 6]]);
    let parts_gt = [vec![0u8, 1, 2, 3], vec![255; 4]];
    let parts_miou = 100.0 * 2.5 / 7.0;

    // sal. Image 0: label 1 1 0 0, p = .93 .57 .43 .07; image 1: label 1 0 0 0,
    // p = .62 .71 .07 .07. At the 15 thresholds 0.2, 0.25, ..., 0.9 (p > t):
    //   t 0.20-0.40: image 0 IoU 2/3 P 2/3 R 1, image 1 IoU 1/2 P 1/2 R 1
    //                -> mean IoU 7/12, mean P 7/12, R 1, F 14/19
    //   t 0.45-0.55: image 0 perfect, image 1 as above -> IoU 3/4, P 3/4, R 1, F 6/7
    //   t 0.60:      image 0 IoU 1/2 P 1 R 1/2, image 1 as above -> IoU 1/2, F 3/4
    //   t 0.65-0.90: image 0 as at 0.6, image 1 IoU 0 P 0 R 0 -> IoU 1/4, F 1/3
    // mIoU = 3/4, maxF = 6/7. maxF_beta (β² 0.3, p >= t at 0.05..0.95, pixels of both
    // images): best at t 0.45-0.55: TP 3, predicted 4, actual 3: P 3/4, R 1,
    // F = 1.3 * 3/4 / (0.3 * 3/4 + 1) = 39/49.
    let probs = [[0.93f32, 0.57, 0.43, 0.07], [0.62, 0.71, 0.07, 0.07]];
    let sal = Tensor::from_vec(
        probs
            .iter()
            .flatten()
            .map(|&p| logit(p))
            .collect::<Vec<f32>>(),
        (B, 1, 2, 2),
        &Device::Cpu,
    )
    .unwrap();
    let sal_gt = [vec![1u8, 1, 0, 0], vec![1, 0, 0, 0]];
    let (sal_miou, sal_maxf, sal_maxf_beta) = (75.0, 100.0 * 6.0 / 7.0, 100.0 * 39.0 / 49.0);

    // normals. Image 0: (0,0,2) vs (0,0,1) 0°, (0,1,0) vs (1,0,0) 90°, (0,1,1) vs (0,0,1)
    // 45°, one invalid pixel; image 1: label (1,0,0) everywhere, predictions (1,0,0) 0°
    // twice and (1,√3,0) 60° twice. Pixel mean over the split: (0+90+45+0+0+60+60)/7.
    let s3 = 3f32.sqrt();
    let pred = [
        [[0., 0., 2.], [0., 1., 0.], [0., 1., 1.], [5., 5., 5.]],
        [[1., 0., 0.], [1., 0., 0.], [1., s3, 0.], [1., s3, 0.]],
    ];
    let gt = [
        [[0., 0., 1.], [1., 0., 0.], [0., 0., 1.], [255., 255., 255.]],
        [[1., 0., 0.]; 4],
    ];
    let channel_major = |v: &[[f32; 3]; N]| -> Vec<f32> {
        (0..3).flat_map(|c| v.iter().map(move |px| px[c])).collect()
    };
    let normals = Tensor::from_vec(
        pred.iter().flat_map(channel_major).collect::<Vec<f32>>(),
        (B, 3, 2, 2),
        &Device::Cpu,
    )
    .unwrap();
    let normals_merr = 255.0 / 7.0;

    let labels: Vec<Vec<Label>> = (0..B)
        .map(|b| {
            vec![
                Label::Classes(semseg_gt[b].clone()),
                Label::Classes(parts_gt[b].clone()),
                Label::Classes(sal_gt[b].clone()),
                Label::Normals(channel_major(&gt[b])),
            ]
        })
        .collect();
    let mut ev = Evaluator::new(&tasks);
    // One image at a time: the metrics accumulate over the split, not per batch.
    for (b, image_labels) in labels.iter().enumerate() {
        let outs: Vec<Tensor> = [&semseg, &parts, &sal, &normals]
            .iter()
            .map(|t| t.narrow(0, b, 1).unwrap())
            .collect();
        let refs: Vec<&Tensor> = outs.iter().collect();
        ev.add(&refs, &[&image_labels[..]]).unwrap();
    }
    let baseline = read_baseline("pascal-swin-t-stl").unwrap();
    let report = ev.finish("val", 2).with_baseline(&baseline);

    let metric = |task: &str, m: &str| report.tasks[task].metrics[m];
    let close = |what: &str, got: f64, want: f64| {
        assert!((got - want).abs() < 1e-4, "{what}: {got} vs {want} by hand")
    };
    close("semseg mIoU", metric("semseg", "mIoU"), semseg_miou);
    close(
        "human_parts mIoU",
        metric("human_parts", "mIoU"),
        parts_miou,
    );
    close("sal mIoU", metric("sal", "mIoU"), sal_miou);
    close("sal maxF", metric("sal", "maxF"), sal_maxf);
    close("sal maxF_beta", metric("sal", "maxF_beta"), sal_maxf_beta);
    close("normals mErr", metric("normals", "mErr"), normals_merr);

    // Δm as MTLoRA's calculate_multi_task_performance: higher-is-better tasks count
    // (M - B) / B, normals -(M - B) / B; the mean, in percent.
    let dm = 100.0 / 4.0
        * ((semseg_miou - 67.21) / 67.21
            + (parts_miou - 61.93) / 61.93
            + (sal_miou - 62.35) / 62.35
            - (normals_merr - 17.97) / 17.97);
    close("Δm", report.delta_m.unwrap(), dm);
    let table = report.table();
    assert!(table.contains(&format!("Δm {dm:+.2}%")), "{table}");
    assert!(table.contains("normals 17.97"), "{table}");
}

#[test]
fn an_unknown_baseline_names_the_built_in_ones() {
    let e = read_baseline("pascal-swin-b").unwrap_err().to_string();
    assert!(
        e.contains("pascal-swin-b") && e.contains("pascal-swin-t-stl"),
        "{e}"
    );
}
