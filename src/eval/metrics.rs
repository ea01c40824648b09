//! Metrics of the multi-task PASCAL-Context / NYUD-v2 protocol, accumulated over a split,
//! as MTI-Net, InvPT and MTLoRA compute them (their `evaluation/eval_*.py`):
//!
//! - segmentation (semseg, human_parts): per class IoU = TP / max(TP + FP + FN, 1e-8) over
//!   all valid pixels of the split (label 255 ignored), mIoU = the mean over *all* classes
//!   (a class absent from labels and predictions counts 0);
//! - saliency: at thresholds linspace(0.2, 0.9, 15) on the foreground probability, per-image
//!   IoU (1 when label and prediction are both empty), precision TP / (TP + FP + 1e-12) and
//!   recall TP / (TP + FN + 1e-12), averaged over images; `mIoU` = max over thresholds of
//!   the mean IoU (the number Δm uses), `maxF` = max over thresholds of 2PR / (P + R) of the
//!   mean P and R; `maxF_beta` = MTI-Net's F-measure with β² = 0.3 from pixel counts over
//!   the split at thresholds 0.05, 0.10, ..., 0.95 (probability >= threshold);
//! - normals: mean angle in degrees between the normalised prediction and the label over
//!   valid pixels of the split (`mErr`; MTLoRA's "rmse" column is this number);
//! - depth: RMSE in metres over valid pixels of the split;
//! - Δm: mean over tasks of ±(M_t - B_t) / B_t × 100 against single-task baselines B, minus
//!   where lower is better.

use std::collections::BTreeMap;

/// Confusion-matrix mIoU.
#[derive(Debug, Clone)]
pub struct SegMetric {
    classes: usize,
    /// `confusion[gt * classes + pred]`.
    confusion: Vec<u64>,
}

impl SegMetric {
    /// An empty confusion matrix over `classes`.
    pub fn new(classes: usize) -> Self {
        Self {
            classes,
            confusion: vec![0; classes * classes],
        }
    }

    /// Adds one image: predicted and true class per pixel (true 255 = ignored).
    pub fn add(&mut self, pred: &[u8], gt: &[u8]) {
        for (&p, &g) in pred.iter().zip(gt) {
            if g != 255 && (g as usize) < self.classes && (p as usize) < self.classes {
                self.confusion[g as usize * self.classes + p as usize] += 1;
            }
        }
    }

    /// IoU per class; None for a class absent from both labels and predictions.
    pub fn iou(&self) -> Vec<Option<f64>> {
        let k = self.classes;
        (0..k)
            .map(|c| {
                let tp = self.confusion[c * k + c];
                let gt: u64 = (0..k).map(|p| self.confusion[c * k + p]).sum();
                let pred: u64 = (0..k).map(|g| self.confusion[g * k + c]).sum();
                let union = gt + pred - tp;
                (union > 0).then(|| tp as f64 / union as f64)
            })
            .collect()
    }

    /// Mean IoU over all classes, an absent class counting 0 (the protocol's).
    pub fn miou(&self) -> f64 {
        let iou = self.iou();
        iou.iter().map(|i| i.unwrap_or(0.0)).sum::<f64>() / iou.len().max(1) as f64
    }
}

/// Saliency mIoU, maxF and maxF_beta over thresholds.
#[derive(Debug, Clone)]
pub struct SalMetric {
    /// The thresholds of mIoU and maxF: linspace(0.2, 0.9, 15).
    pub thresholds: Vec<f32>,
    precision: Vec<f64>,
    recall: Vec<f64>,
    jaccard: Vec<f64>,
    images: usize,
    /// The thresholds of maxF_beta: 0.05, 0.10, ..., 0.95.
    pub beta_thresholds: Vec<f32>,
    /// Pixel counts over the split per beta threshold: (TP, predicted, actual).
    beta_counts: Vec<(u64, u64, u64)>,
}

impl Default for SalMetric {
    fn default() -> Self {
        Self::new()
    }
}

impl SalMetric {
    /// The protocol's thresholds.
    pub fn new() -> Self {
        // numpy.linspace(0.2, 0.9, 15) and torch.arange(0.05, 1, 0.05), compared in f32.
        let thresholds: Vec<f32> = (0..15)
            .map(|i| {
                if i == 14 {
                    0.9
                } else {
                    (0.2 + i as f64 * ((0.9 - 0.2) / 14.0)) as f32
                }
            })
            .collect();
        let beta_thresholds: Vec<f32> = (1..20).map(|i| (i as f64 * 0.05) as f32).collect();
        let (n, nb) = (thresholds.len(), beta_thresholds.len());
        Self {
            thresholds,
            precision: vec![0.0; n],
            recall: vec![0.0; n],
            jaccard: vec![0.0; n],
            images: 0,
            beta_thresholds,
            beta_counts: vec![(0, 0, 0); nb],
        }
    }

    /// Adds one image: foreground probability per pixel and the 0/1 label (255 ignored).
    pub fn add(&mut self, prob: &[f32], gt: &[u8]) {
        for (j, &t) in self.thresholds.iter().enumerate() {
            let (mut tp, mut fp, mut fn_) = (0u64, 0u64, 0u64);
            for (&p, &g) in prob.iter().zip(gt) {
                if g == 255 {
                    continue;
                }
                match (p > t, g == 1) {
                    (true, true) => tp += 1,
                    (true, false) => fp += 1,
                    (false, true) => fn_ += 1,
                    (false, false) => {}
                }
            }
            let (tp, fp, fn_) = (tp as f64, fp as f64, fn_ as f64);
            // Label and prediction both empty: a perfect image (jaccard.py).
            self.jaccard[j] += if tp + fp + fn_ == 0.0 {
                1.0
            } else {
                tp / (tp + fp + fn_)
            };
            self.precision[j] += tp / (tp + fp + 1e-12);
            self.recall[j] += tp / (tp + fn_ + 1e-12);
        }
        for (j, &t) in self.beta_thresholds.iter().enumerate() {
            let c = &mut self.beta_counts[j];
            for (&p, &g) in prob.iter().zip(gt) {
                if g == 255 {
                    continue;
                }
                let (pred, actual) = (p >= t, g == 1);
                c.0 += u64::from(pred && actual);
                c.1 += u64::from(pred);
                c.2 += u64::from(actual);
            }
        }
        self.images += 1;
    }

    /// Maximum over thresholds of the F-measure of the mean precision and recall (0..1).
    pub fn max_f(&self) -> f64 {
        let n = self.images.max(1) as f64;
        self.precision
            .iter()
            .zip(&self.recall)
            .map(|(p, r)| {
                let (p, r) = (p / n, r / n);
                2.0 * p * r / (p + r + 1e-12)
            })
            .fold(0.0, f64::max)
    }

    /// Maximum over thresholds of the mean per-image IoU (0..1): the number Δm uses.
    pub fn miou(&self) -> f64 {
        let n = self.images.max(1) as f64;
        self.jaccard.iter().map(|j| j / n).fold(0.0, f64::max)
    }

    /// MTI-Net's maxF: F_β (β² = 0.3) from the split's pixel counts, best threshold (0..1).
    pub fn max_f_beta(&self) -> f64 {
        const BETA2: f64 = 0.3;
        self.beta_counts
            .iter()
            .map(|&(tp, predicted, actual)| {
                let p = tp as f64 / predicted as f64;
                let r = tp as f64 / actual as f64;
                let f = (1.0 + BETA2) * p * r / (BETA2 * p + r);
                if f.is_nan() {
                    0.0
                } else {
                    f
                }
            })
            .fold(0.0, f64::max)
    }
}

/// Mean angular error (degrees) between predicted and true normals.
#[derive(Debug, Clone, Default)]
pub struct NormalsMetric {
    sum_deg: f64,
    pixels: u64,
}

impl NormalsMetric {
    /// `pred`, `gt`: channel-major `3*n`; a true normal of 255 marks an invalid pixel.
    pub fn add(&mut self, pred: &[f32], gt: &[f32]) {
        let n = gt.len() / 3;
        for i in 0..n {
            let g = [gt[i], gt[n + i], gt[2 * n + i]];
            if g.contains(&255.0) {
                continue;
            }
            let p = [pred[i], pred[n + i], pred[2 * n + i]];
            let norm =
                |v: [f32; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt().max(1e-12) as f64;
            let dot = (p[0] * g[0] + p[1] * g[1] + p[2] * g[2]) as f64 / (norm(p) * norm(g));
            self.sum_deg += dot.clamp(-1.0, 1.0).acos().to_degrees();
            self.pixels += 1;
        }
    }

    /// Mean angular error in degrees.
    pub fn mean_error(&self) -> f64 {
        self.sum_deg / self.pixels.max(1) as f64
    }
}

/// Depth RMSE over pixels whose true depth is > 0.
#[derive(Debug, Clone, Default)]
pub struct DepthMetric {
    sum_sq: f64,
    pixels: u64,
}

impl DepthMetric {
    /// Adds predictions and ground truth (0 = invalid) of one image.
    pub fn add(&mut self, pred: &[f32], gt: &[f32]) {
        for (&p, &g) in pred.iter().zip(gt) {
            if g > 0.0 {
                self.sum_sq += ((p - g) as f64).powi(2);
                self.pixels += 1;
            }
        }
    }

    /// Root mean squared error over valid pixels.
    pub fn rmse(&self) -> f64 {
        (self.sum_sq / self.pixels.max(1) as f64).sqrt()
    }
}

/// Whether a higher value of a metric is better.
pub fn higher_is_better(metric: &str) -> bool {
    !matches!(metric, "mErr" | "rmse")
}

/// Δm in percent: `(1/T) Σ_t (-1)^{l_t} (M_t - B_t) / B_t * 100`, over the tasks present in
/// both, using each task's primary metric.
pub fn delta_m(
    model: &BTreeMap<String, (String, f64)>,
    baseline: &BTreeMap<String, f64>,
) -> Option<f64> {
    let terms: Vec<f64> = model
        .iter()
        .filter_map(|(task, (metric, m))| {
            let b = *baseline.get(task)?;
            let sign = if higher_is_better(metric) { 1.0 } else { -1.0 };
            (b != 0.0).then(|| sign * (m - b) / b * 100.0)
        })
        .collect();
    (!terms.is_empty()).then(|| terms.iter().sum::<f64>() / terms.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn miou_of_a_hand_made_case() {
        let mut m = SegMetric::new(3);
        // gt:   0 0 1 1 255   pred: 0 1 1 1 2
        m.add(&[0, 1, 1, 1, 2], &[0, 0, 1, 1, 255]);
        // class 0: tp 1, union 2 -> 0.5; class 1: tp 2, union 3 -> 2/3; class 2 absent
        // from labels and (valid) predictions -> 0 in the mean, as in the protocol.
        let iou = m.iou();
        assert!((iou[0].unwrap() - 0.5).abs() < 1e-12);
        assert!((iou[1].unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(iou[2], None);
        assert!((m.miou() - (0.5 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
    }

    #[test]
    fn miou_counts_a_predicted_absent_class_and_ignores_all_ignored_images() {
        let mut m = SegMetric::new(3);
        m.add(&[2, 2, 2], &[255, 255, 255]); // all ignored: no effect
        m.add(&[0, 2], &[0, 0]); // class 2 predicted but absent from labels: IoU 0
        assert_eq!(m.iou()[2], Some(0.0));
        assert!((m.miou() - 0.5 / 3.0).abs() < 1e-12); // class 0: 1/2, classes 1 and 2: 0
    }

    #[test]
    fn saliency_perfect_and_all_foreground() {
        let gt = [1u8, 1, 0, 0];
        let mut perfect = SalMetric::new();
        perfect.add(&[0.95, 0.95, 0.05, 0.05], &gt);
        assert!((perfect.max_f() - 1.0).abs() < 1e-9 && (perfect.miou() - 1.0).abs() < 1e-9);
        let mut all = SalMetric::new();
        all.add(&[1.0; 4], &gt);
        // precision 0.5, recall 1 -> F = 2/3; IoU = 0.5.
        assert!((all.max_f() - 2.0 / 3.0).abs() < 1e-9);
        assert!((all.miou() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn angular_error_and_rmse() {
        let mut n = NormalsMetric::default();
        // Pixel 0: 90 degrees apart; pixel 1: identical; pixel 2: invalid.
        let gt = [1.0, 0.0, 255.0, 0.0, 0.0, 255.0, 0.0, 1.0, 255.0];
        let pred = [0.0, 0.0, 5.0, 1.0, 0.0, 5.0, 0.0, 2.0, 5.0];
        n.add(&pred, &gt);
        assert!((n.mean_error() - 45.0).abs() < 1e-6);
        let mut d = DepthMetric::default();
        d.add(&[1.0, 2.0, 9.0], &[2.0, 4.0, 0.0]); // errors 1 and 2; the third is invalid
        assert!((d.rmse() - (2.5f64).sqrt()).abs() < 1e-9);
    }

    #[test]
    fn delta_m_signs() {
        let model = BTreeMap::from([
            ("semseg".to_string(), ("mIoU".to_string(), 55.0)),
            ("normals".to_string(), ("mErr".to_string(), 18.0)),
        ]);
        let base = BTreeMap::from([("semseg".to_string(), 50.0), ("normals".to_string(), 20.0)]);
        // semseg +10%, normals +10% (lower error is better).
        assert!((delta_m(&model, &base).unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(delta_m(&model, &BTreeMap::new()), None);
    }
}
