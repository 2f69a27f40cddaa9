//! The learner's optimizers (`trainer.optimizer`), written out over the `VarStore`'s
//! trainable tensors rather than taken from tch: a checkpoint needs their state (Adam's
//! moments, SGD's momentum buffers), which tch's optimizers do not expose, and the usual
//! weight-decay rule needs a per-tensor choice.
//!
//! The updates are PyTorch's (`torch.optim.SGD`, `Adam`, `AdamW`, their default betas and
//! eps), step for step:
//!
//! - `sgd`: `g = grad + wd * p` (L2, decayed tensors only); with momentum `m`,
//!   `b = g` on the first step, then `b = m * b + g`; `g = g + m * b` (Nesterov) or `g = b`;
//!   `p -= lr * g`.
//! - `adam`: `g = grad + wd * p`; `m1 = b1 m1 + (1 - b1) g`, `m2 = b2 m2 + (1 - b2) g^2`;
//!   `p -= lr / (1 - b1^t) * m1 / (sqrt(m2) / sqrt(1 - b2^t) + eps)`.
//! - `adamw`: `p *= 1 - lr * wd` (decayed tensors only), then `adam` without the L2 term.
//!
//! **Which tensors decay**: those of two or more dimensions (convolution and linear
//! weights). Biases and normalisation scales and shifts (one dimension) do not, as is usual
//! (timm, the "bag of tricks" recipes): decaying them pulls the normalisation towards zero
//! and costs accuracy. Buffers (running statistics) are not trainable and are never touched.
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Tensor};

use crate::error::{Error, Issues, Result};

/// `trainer.optimizer.kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam (betas 0.9, 0.999; eps 1e-8), L2 weight decay. The default.
    #[default]
    Adam,
    /// AdamW: Adam with decoupled weight decay.
    Adamw,
    /// Stochastic gradient descent with optional (Nesterov) momentum, L2 weight decay.
    Sgd,
}

/// `trainer.optimizer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// `adam` (default), `adamw` or `sgd`.
    #[serde(default)]
    pub kind: OptimizerKind,
    /// SGD momentum (0 = none). Default 0.9.
    #[serde(default = "d_momentum")]
    pub momentum: f64,
    /// Nesterov momentum for SGD. Default false.
    #[serde(default)]
    pub nesterov: bool,
    /// Weight decay of tensors with two or more dimensions. Default 0.
    #[serde(default)]
    pub weight_decay: f64,
}

fn d_momentum() -> f64 {
    0.9
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::default(),
            momentum: d_momentum(),
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

impl OptimizerConfig {
    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        v.check(
            (0.0..1.0).contains(&self.momentum),
            "trainer.optimizer.momentum",
            || format!("must be in [0, 1), got {}", self.momentum),
        );
        v.check(
            self.weight_decay >= 0.0 && self.weight_decay.is_finite(),
            "trainer.optimizer.weight_decay",
            || format!("must be 0 or more, got {}", self.weight_decay),
        );
        v.check(
            !self.nesterov || (self.kind == OptimizerKind::Sgd && self.momentum > 0.0),
            "trainer.optimizer.nesterov",
            || "needs kind: sgd with a momentum above 0".into(),
        );
    }
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// An optimizer over a `VarStore`'s trainable tensors, in name order.
pub struct Optimizer {
    cfg: OptimizerConfig,
    params: Vec<(String, Tensor)>,
    decay: Vec<bool>,
    /// Adam: first and second moments. SGD: the momentum buffer (only the first used).
    state: Vec<[Tensor; 2]>,
    t: u64,
}

impl std::fmt::Debug for Optimizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Optimizer")
            .field("kind", &self.cfg.kind)
            .field("tensors", &self.params.len())
            .field("steps", &self.t)
            .finish()
    }
}

impl Optimizer {
    /// An optimizer of `vs`'s trainable variables (buffers left out).
    pub fn new(cfg: &OptimizerConfig, vs: &nn::VarStore) -> Result<Optimizer> {
        let mut params: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let mut state = Vec::with_capacity(params.len());
        for (_, p) in &params {
            state.push([p.f_zeros_like()?, p.f_zeros_like()?]);
        }
        let decay = params.iter().map(|(_, p)| p.dim() >= 2).collect();
        Ok(Optimizer {
            cfg: cfg.clone(),
            params,
            decay,
            state,
            t: 0,
        })
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// Zeroes every gradient.
    pub fn zero_grad(&mut self) -> Result<()> {
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.f_zero_()?;
            }
        }
        Ok(())
    }

    /// The L2 norm of all gradients together.
    pub fn grad_norm(&self) -> Result<f64> {
        let _guard = tch::no_grad_guard();
        // The per-tensor norms stay on the device; one value is read back (one sync per
        // step on CUDA, not one per tensor).
        let norms = self
            .params
            .iter()
            .map(|(_, p)| p.grad())
            .filter(|g| g.defined())
            .map(|g| g.f_norm())
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if norms.is_empty() {
            return Ok(0.0);
        }
        let total = Tensor::f_stack(&norms, 0)?
            .f_to_kind(tch::Kind::Double)?
            .f_norm()?;
        Ok(total.f_double_value(&[])?)
    }

    /// Multiplies every gradient by `factor`.
    pub fn scale_grads(&mut self, factor: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for (_, p) in &self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.f_mul_scalar_(factor)?;
            }
        }
        Ok(())
    }

    /// Scales the gradients down so that their joint L2 norm is at most `max`
    /// (`torch.nn.utils.clip_grad_norm_`); returns the norm before clipping.
    pub fn clip_grad_norm(&mut self, max: f64) -> Result<f64> {
        let norm = self.grad_norm()?;
        let factor = max / (norm + 1e-6);
        if factor < 1.0 {
            self.scale_grads(factor)?;
        }
        Ok(norm)
    }

    /// One update with learning rate `lr` from the gradients in place.
    pub fn step(&mut self, lr: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        self.t += 1;
        let cfg = &self.cfg;
        let bc1 = 1.0 - BETA1.powf(self.t as f64);
        let bc2 = 1.0 - BETA2.powf(self.t as f64);
        for (i, (_, p)) in self.params.iter_mut().enumerate() {
            let grad = p.grad();
            if !grad.defined() {
                continue;
            }
            let wd = if self.decay[i] { cfg.weight_decay } else { 0.0 };
            let [s0, s1] = &mut self.state[i];
            match cfg.kind {
                OptimizerKind::Sgd => {
                    let mut g = if wd > 0.0 {
                        grad.f_add(&p.f_mul_scalar(wd)?)?
                    } else {
                        grad
                    };
                    if cfg.momentum > 0.0 {
                        if self.t == 1 {
                            s0.f_copy_(&g)?;
                        } else {
                            let _ = s0.f_mul_scalar_(cfg.momentum)?.f_add_(&g)?;
                        }
                        g = if cfg.nesterov {
                            g.f_add(&s0.f_mul_scalar(cfg.momentum)?)?
                        } else {
                            s0.shallow_clone()
                        };
                    }
                    let _ = p.f_sub_(&g.f_mul_scalar(lr)?)?;
                }
                OptimizerKind::Adam | OptimizerKind::Adamw => {
                    let g = if cfg.kind == OptimizerKind::Adam && wd > 0.0 {
                        grad.f_add(&p.f_mul_scalar(wd)?)?
                    } else {
                        grad
                    };
                    if cfg.kind == OptimizerKind::Adamw && wd > 0.0 {
                        let _ = p.f_mul_scalar_(1.0 - lr * wd)?;
                    }
                    let _ = s0.f_mul_scalar_(BETA1)?;
                    let _ = s0.f_add_(&g.f_mul_scalar(1.0 - BETA1)?)?;
                    let _ = s1.f_mul_scalar_(BETA2)?;
                    let _ = s1.f_addcmul_(&g.f_mul_scalar(1.0 - BETA2)?, &g)?;
                    let denom = s1.f_sqrt()?.f_div_scalar(bc2.sqrt())?.f_add_scalar(EPS)?;
                    let _ = p.f_sub_(&s0.f_div(&denom)?.f_mul_scalar(lr / bc1)?)?;
                }
            }
        }
        Ok(())
    }

    /// The optimizer's state as `(name, CPU tensor)`: `m1/NAME` and `m2/NAME` (Adam's
    /// moments; SGD's momentum buffer is `m1`), in name order. With [`Optimizer::steps`]
    /// it is everything a checkpoint needs besides the weights.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for ((name, _), [s0, s1]) in self.params.iter().zip(&self.state) {
            out.push((format!("m1/{name}"), s0.f_to_device(Device::Cpu)?));
            if self.cfg.kind != OptimizerKind::Sgd {
                out.push((format!("m2/{name}"), s1.f_to_device(Device::Cpu)?));
            }
        }
        Ok(out)
    }

    /// Puts back a state written by [`Optimizer::state_tensors`] after `steps` steps.
    pub fn restore(&mut self, tensors: &[(String, Tensor)], steps: u64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        let map: std::collections::HashMap<&str, &Tensor> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let sgd = self.cfg.kind == OptimizerKind::Sgd;
        for ((name, _), [s0, s1]) in self.params.iter().zip(self.state.iter_mut()) {
            let mut slots = vec![("m1", s0)];
            if !sgd {
                slots.push(("m2", s1));
            }
            for (prefix, dst) in slots {
                let key = format!("{prefix}/{name}");
                let src = map.get(key.as_str()).ok_or_else(|| Error::Data {
                    path: "checkpoint".into(),
                    message: format!("the optimizer state has no tensor `{key}`"),
                })?;
                if src.size() != dst.size() {
                    return Err(Error::Data {
                        path: "checkpoint".into(),
                        message: format!(
                            "optimizer tensor `{key}` has shape {:?}, the learner's is {:?}",
                            src.size(),
                            dst.size()
                        ),
                    });
                }
                dst.f_copy_(src)?;
            }
        }
        self.t = steps;
        Ok(())
    }
}

/// The dynamic loss scale of float16 mixed precision (PyTorch's `GradScaler`): the loss is
/// multiplied by the scale before `backward` so that small gradients survive float16; the
/// gradients are divided by it before the update. A step whose gradients hold an inf or a
/// NaN is skipped and the scale halved; after `GROWTH_INTERVAL` good steps in a row it
/// doubles.
#[derive(Debug, Clone, PartialEq)]
pub struct LossScaler {
    scale: f64,
    good: u32,
    /// Steps skipped for non-finite gradients.
    pub skipped: u64,
}

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler {
            scale: 65536.0,
            good: 0,
            skipped: 0,
        }
    }
}

impl LossScaler {
    const GROWTH_INTERVAL: u32 = 2000;

    /// The current scale.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The scaler's state as one CPU tensor `[scale, good steps, skipped steps]` (float64),
    /// for a checkpoint; [`LossScaler::from_state`] reads it back.
    pub fn state(&self) -> Tensor {
        Tensor::from_slice(&[self.scale, self.good as f64, self.skipped as f64])
    }

    /// A scaler from [`LossScaler::state`]'s tensor; `None` when it is not 3 finite values
    /// with a scale of at least 1.
    pub fn from_state(t: &Tensor) -> Option<LossScaler> {
        let v: Vec<f64> = t
            .to_kind(tch::Kind::Double)
            .flatten(0, -1)
            .try_into()
            .ok()?;
        match v[..] {
            [scale, good, skipped]
                if scale.is_finite() && scale >= 1.0 && good >= 0.0 && skipped >= 0.0 =>
            {
                Some(LossScaler {
                    scale,
                    good: good as u32,
                    skipped: skipped as u64,
                })
            }
            _ => None,
        }
    }

    /// After `backward` of `loss * scale()`: unscales the gradients and says whether the
    /// step may be taken (false: skip it; the scale has been halved).
    pub fn unscale(&mut self, opt: &mut Optimizer) -> Result<bool> {
        let norm = opt.grad_norm()?;
        if !norm.is_finite() {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good = 0;
            self.skipped += 1;
            return Ok(false);
        }
        opt.scale_grads(1.0 / self.scale)?;
        self.good += 1;
        if self.good >= Self::GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.good = 0;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn the_loss_scale_goes_through_its_state_tensor() {
        let s = LossScaler {
            scale: 1024.0,
            good: 17,
            skipped: 3,
        };
        let back = LossScaler::from_state(&s.state()).unwrap();
        assert_eq!((back.scale(), back.good, back.skipped), (1024.0, 17, 3));
        for bad in [
            vec![0.5, 0.0, 0.0],
            vec![f64::NAN, 0.0, 0.0],
            vec![2.0, 1.0],
        ] {
            assert!(LossScaler::from_state(&Tensor::from_slice(&bad)).is_none());
        }
    }

    /// One variable `w` (2x2, decayed) and one `b` (2, not decayed), loss = sum(w*x) + sum(b).
    fn problem() -> (nn::VarStore, Tensor, Tensor) {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().var_copy(
            "w",
            &Tensor::from_slice(&[1.0f32, -2.0, 3.0, 0.5]).view([2, 2]),
        );
        let b = vs
            .root()
            .var_copy("b", &Tensor::from_slice(&[0.5f32, -0.5]));
        (vs, w, b)
    }

    fn run(cfg: OptimizerConfig, steps: usize) -> (Vec<f32>, Vec<f32>) {
        let (vs, w, b) = problem();
        let x = Tensor::from_slice(&[0.3f32, -1.0, 2.0, 0.1]).view([2, 2]);
        let mut opt = Optimizer::new(&cfg, &vs).unwrap();
        for _ in 0..steps {
            opt.zero_grad().unwrap();
            let loss = (&w * &x).sum(Kind::Float) * (&w * &w).sum(Kind::Float)
                + (&b * &b).sum(Kind::Float);
            loss.backward();
            opt.step(0.05).unwrap();
        }
        let v = |t: &Tensor| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
        (v(&w), v(&b))
    }

    /// Reference values from PyTorch 2.11 (`torch.optim.SGD/Adam/AdamW` on the same problem,
    /// weight decay on `w` only, 3 steps of lr 0.05), computed in the project venv by
    /// `fixtures/optim_reference.py`.
    #[test]
    fn updates_equal_pytorchs() {
        type Case = (OptimizerKind, f64, bool, f64, [f32; 4], [f32; 2]);
        #[rustfmt::skip]
        let cases: [Case; 6] = [
            (OptimizerKind::Sgd, 0.0, false, 0.0, [-0.1248567, 0.7673431, -1.798052, 0.002275285], [0.3645, -0.3645]),
            (OptimizerKind::Sgd, 0.9, true, 0.1, [-84.20465, 235.4068, -436.8571, -33.72764], [0.1636605, -0.1636605]),
            (OptimizerKind::Sgd, 0.9, false, 0.1, [-3.682325, 9.721679, -17.52881, -1.546534], [0.243, -0.243]),
            (OptimizerKind::Adam, 0.9, false, 0.0, [0.8504249, -1.85027, 2.850232, 0.3508678], [0.3507932, -0.3507932]),
            (OptimizerKind::Adam, 0.9, false, 0.1, [0.8504243, -1.850269, 2.850231, 0.3508675], [0.3507932, -0.3507932]),
            (OptimizerKind::Adamw, 0.9, false, 0.1, [0.8363322, -1.821241, 2.806276, 0.3442632], [0.3507932, -0.3507932]),
        ];
        for (kind, momentum, nesterov, weight_decay, w, b) in cases {
            let cfg = OptimizerConfig {
                kind,
                momentum,
                nesterov,
                weight_decay,
            };
            let (gw, gb) = run(cfg.clone(), 3);
            for (a, e) in gw.iter().zip(w).chain(gb.iter().zip(b)) {
                assert!(
                    (a - e).abs() <= 2e-5 * e.abs().max(1.0),
                    "{cfg:?}: {gw:?} {gb:?}"
                );
            }
        }
    }

    #[test]
    fn the_state_round_trips_and_the_run_continues_identically() {
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::Adam,
            OptimizerKind::Adamw,
        ] {
            let cfg = OptimizerConfig {
                kind,
                weight_decay: 0.1,
                nesterov: kind == OptimizerKind::Sgd,
                ..Default::default()
            };
            let straight = run(cfg.clone(), 4);
            // Two steps, save, a fresh optimizer restored, two more steps.
            let (vs, w, b) = problem();
            let x = Tensor::from_slice(&[0.3f32, -1.0, 2.0, 0.1]).view([2, 2]);
            let step = |opt: &mut Optimizer| {
                opt.zero_grad().unwrap();
                let loss = (&w * &x).sum(Kind::Float) * (&w * &w).sum(Kind::Float)
                    + (&b * &b).sum(Kind::Float);
                loss.backward();
                opt.step(0.05).unwrap();
            };
            let mut opt = Optimizer::new(&cfg, &vs).unwrap();
            step(&mut opt);
            step(&mut opt);
            let saved = opt.state_tensors().unwrap();
            let mut opt = Optimizer::new(&cfg, &vs).unwrap();
            opt.restore(&saved, 2).unwrap();
            step(&mut opt);
            step(&mut opt);
            let v = |t: &Tensor| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
            assert_eq!((v(&w), v(&b)), straight, "{kind:?}");
        }
    }

    #[test]
    fn clipping_bounds_the_gradient_norm() {
        let (vs, w, _) = problem();
        let mut opt = Optimizer::new(&OptimizerConfig::default(), &vs).unwrap();
        (&w * 100.0).sum(Kind::Float).backward();
        let before = opt.clip_grad_norm(1.0).unwrap();
        assert!((before - 200.0).abs() < 1e-3, "{before}");
        assert!((opt.grad_norm().unwrap() - 1.0).abs() < 1e-4);
    }

    #[test]
    fn the_loss_scaler_skips_non_finite_steps_and_halves() {
        let (vs, w, _) = problem();
        let mut opt = Optimizer::new(&OptimizerConfig::default(), &vs).unwrap();
        let mut s = LossScaler::default();
        (&w * f64::INFINITY).sum(Kind::Float).backward();
        assert!(!s.unscale(&mut opt).unwrap());
        assert_eq!((s.scale(), s.skipped), (32768.0, 1));
        opt.zero_grad().unwrap();
        (&w * s.scale()).sum(Kind::Float).backward();
        assert!(s.unscale(&mut opt).unwrap());
        // Unscaled: d(sum w)/dw = 1 everywhere, norm 2.
        assert!((opt.grad_norm().unwrap() - 2.0).abs() < 1e-6);
    }
}
