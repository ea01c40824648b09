//! AdamW over the bundle's tensors, with decoupled weight decay only on matrices (no
//! decay on biases, norms, gamma and beta), global-norm gradient clipping, and a state
//! that can be saved and restored exactly.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// One trainable tensor and its AdamW moments (kept in f32, like the Var).
pub struct Param {
    /// Its bundle name.
    pub name: String,
    /// The variable.
    pub var: Var,
    /// First moment.
    pub m: Tensor,
    /// Second moment.
    pub v: Tensor,
    /// Whether weight decay applies.
    pub decays: bool,
}

/// AdamW over named variables.
pub struct AdamW {
    /// The variables and their moments.
    pub params: Vec<Param>,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Epsilon.
    pub eps: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Updates applied so far (for bias correction).
    pub t: u64,
}

impl AdamW {
    /// AdamW over `(name, var, decays)`.
    pub fn new(params: Vec<(String, Var, bool)>, weight_decay: f64) -> Result<Self> {
        let params = params
            .into_iter()
            .map(|(name, var, decays)| {
                let z = var.as_tensor().zeros_like()?;
                Ok(Param {
                    name,
                    m: z.clone(),
                    v: z,
                    var,
                    decays,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            t: 0,
        })
    }

    /// Global L2 norm of the gradients (missing gradients count as zero).
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sq = 0f64;
        for p in &self.params {
            if let Some(g) = grads.get(p.var.as_tensor()) {
                sq += g.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
            }
        }
        Ok(sq.sqrt())
    }

    /// One update at learning rate `lr`; gradients are scaled by `grad_scale` first
    /// (clipping).
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.t += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let c1 = 1.0 - b1.powi(self.t as i32);
        let c2 = 1.0 - b2.powi(self.t as i32);
        for p in &mut self.params {
            let Some(g) = grads.get(p.var.as_tensor()) else {
                continue;
            };
            let g = (g * grad_scale)?;
            p.m = ((&p.m * b1)? + (&g * (1.0 - b1))?)?;
            p.v = ((&p.v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let m_hat = (&p.m / c1)?;
            let v_hat = (&p.v / c2)?;
            let mut theta = p.var.as_tensor().clone();
            if p.decays && self.weight_decay > 0.0 {
                theta = (&theta * (1.0 - lr * self.weight_decay))?;
            }
            let update = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
            p.var.set(&(theta - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// Linear warm-up to `base`, then cosine decay to zero at `total` steps.
pub fn learning_rate(base: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((learning_rate(1.0, 0, 10, 100) - 0.1).abs() < 1e-12);
        assert!((learning_rate(1.0, 9, 10, 100) - 1.0).abs() < 1e-12);
        assert!((learning_rate(1.0, 10, 10, 100) - 1.0).abs() < 1e-12);
        assert!((learning_rate(1.0, 55, 10, 100) - 0.5).abs() < 1e-12);
        assert!(learning_rate(1.0, 100, 10, 100).abs() < 1e-12);
    }

    #[test]
    fn adamw_first_step_moves_by_lr_and_decays_only_matrices() {
        let dev = candle_core::Device::Cpu;
        let w = Var::new(&[[1.0f32, -1.0]], &dev).unwrap();
        let b = Var::new(&[1.0f32], &dev).unwrap();
        let loss = (w.as_tensor().sum_all().unwrap() * 3.0)
            .unwrap()
            .add(&b.as_tensor().sum_all().unwrap())
            .unwrap();
        let grads = loss.backward().unwrap();
        let mut opt = AdamW::new(
            vec![
                ("w".into(), w.clone(), true),
                ("b".into(), b.clone(), false),
            ],
            0.1,
        )
        .unwrap();
        opt.step(&grads, 0.01, 1.0).unwrap();
        // First Adam step moves each element by lr * sign(g); decay shrinks w first.
        let w_now = w.as_tensor().to_vec2::<f32>().unwrap();
        assert!(
            (w_now[0][0] - (1.0 * (1.0 - 0.001) - 0.01)).abs() < 1e-6,
            "{w_now:?}"
        );
        assert!(
            (w_now[0][1] - (-(1.0 - 0.001) - 0.01)).abs() < 1e-6,
            "{w_now:?}"
        );
        let b_now = b.as_tensor().to_vec1::<f32>().unwrap();
        assert!((b_now[0] - 0.99).abs() < 1e-6, "{b_now:?}");
    }
}
