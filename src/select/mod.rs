//! Selection: which part of a super-batch reaches the optimizer.
//!
//! | file | what |
//! |---|---|
//! | [`spectral`] | SALN: cosine graph, Laplacian, Fiedler vector |
//! | [`rules`] | how the Fiedler vector becomes `b` indices |
//! | [`feedback`] | per-sample learner losses handed back by a training loop |
//!
//! Policies ([`Policy`]): `saln` (spectral, label- and learner-free), `uniform` (b of B at
//! random: the baseline any selection must beat at equal compute) and `none` (everything;
//! standard training).
//!
//! The number kept is `b = max(1, round(keep_ratio * B))`, capped at `B` ([`keep_count`]).
use crate::config::Issues;

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result};
use crate::rng::{self, Rng};

pub mod feedback;
pub mod rules;
pub mod spectral;

pub use rules::Rule;
pub use spectral::WeightMapping;

/// A selection policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Spectral selection on the reference model's features (SALN).
    #[default]
    Saln,
    /// `b` of `B` uniformly at random (seeded per super-batch).
    Uniform,
    /// Keep every sample: standard training.
    None,
}

impl Policy {
    /// Whether the policy needs the reference model's features.
    pub fn needs_features(self) -> bool {
        matches!(self, Policy::Saln)
    }
}

/// Settings of a [`Selector`].
#[derive(Debug, Clone, PartialEq)]
pub struct SelectorConfig {
    /// The policy.
    pub policy: Policy,
    /// Fraction kept, in (0, 1].
    pub keep_ratio: f64,
    /// Similarity weights (saln).
    pub weights: WeightMapping,
    /// Selection rule (saln).
    pub rule: Rule,
    /// Seed of the random policies.
    pub seed: u64,
}

impl SelectorConfig {
    /// From the pipeline config.
    pub fn from_config(cfg: &crate::config::PipelineConfig) -> Self {
        SelectorConfig {
            policy: cfg.selection.policy,
            keep_ratio: cfg.selection.keep_ratio,
            weights: cfg.selection.weights,
            rule: cfg.selection.rule,
            seed: cfg.seed,
        }
    }
}

/// What the selector decided for one super-batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Positions (within the super-batch) of the kept samples, ascending.
    pub kept: Vec<usize>,
    /// One score per sample of the super-batch: the canonical Fiedler value for `saln`,
    /// 0 for the other policies.
    pub scores: Vec<f32>,
    /// Second-smallest Laplacian eigenvalue (algebraic connectivity); 0 when not computed.
    pub lambda2: f64,
    /// Third-smallest eigenvalue (`lambda3 - lambda2` small means an unstable Fiedler vector).
    pub lambda3: f64,
    /// Wall seconds spent selecting (features excluded).
    pub seconds: f64,
}

/// `max(1, round(rho * n))`, at most `n`.
///
/// ```
/// assert_eq!(saln::select::keep_count(256, 0.25), 64);
/// assert_eq!(saln::select::keep_count(3, 0.1), 1);
/// assert_eq!(saln::select::keep_count(10, 1.0), 10);
/// ```
pub fn keep_count(n: usize, keep_ratio: f64) -> usize {
    ((keep_ratio * n as f64).round() as usize).clamp(1, n.max(1))
}

/// Runs a policy on super-batches.
#[derive(Debug, Clone)]
pub struct Selector {
    cfg: SelectorConfig,
}

impl Selector {
    /// A selector with the given settings.
    pub fn new(cfg: SelectorConfig) -> Self {
        Selector { cfg }
    }

    /// The settings.
    pub fn config(&self) -> &SelectorConfig {
        &self.cfg
    }

    /// Selects from a super-batch of `n` samples. `features` is `[n, d]` (any float dtype,
    /// any device) and is required for `saln`; `superbatch` is the global super-batch index,
    /// used to seed random policies and to name the super-batch in errors.
    pub fn select(
        &self,
        n: usize,
        features: Option<&Tensor>,
        superbatch: u64,
    ) -> Result<Selection> {
        let start = Instant::now();
        let b = keep_count(n, self.cfg.keep_ratio);
        let mut out = match self.cfg.policy {
            Policy::None => Selection {
                kept: (0..n).collect(),
                scores: vec![0.0; n],
                lambda2: 0.0,
                lambda3: 0.0,
                seconds: 0.0,
            },
            Policy::Uniform => {
                let mut order: Vec<usize> = (0..n).collect();
                Rng::derive(self.cfg.seed, &[rng::SELECT, superbatch]).shuffle(&mut order);
                let mut kept = order[..b].to_vec();
                kept.sort_unstable();
                Selection {
                    kept,
                    scores: vec![0.0; n],
                    lambda2: 0.0,
                    lambda3: 0.0,
                    seconds: 0.0,
                }
            }
            Policy::Saln => {
                let features = features.ok_or_else(|| Error::Selection {
                    superbatch,
                    message: "the saln policy needs features".into(),
                })?;
                let spec = spectral::fiedler(features, self.cfg.weights).map_err(|e| {
                    Error::Selection {
                        superbatch,
                        message: e,
                    }
                })?;
                let kept = rules::apply(self.cfg.rule, &spec.vector, b);
                Selection {
                    kept,
                    scores: spec.vector.iter().map(|&v| v as f32).collect(),
                    lambda2: spec.lambda2,
                    lambda3: spec.lambda3,
                    seconds: 0.0,
                }
            }
        };
        out.seconds = start.elapsed().as_secs_f64();
        Ok(out)
    }
}

// ---- configuration ----

/// The selection policy and its parameters.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionConfig {
    /// `saln` (spectral), `uniform` (b of B at random) or `none` (keep everything).
    #[serde(default)]
    pub policy: Policy,
    /// Fraction of each super-batch that reaches the trainer (rho), in (0, 1].
    #[serde(default = "d_keep_ratio")]
    pub keep_ratio: f64,
    /// How cosine similarity becomes an edge weight: `clip` = max(0, cos), `shift` = (1+cos)/2.
    #[serde(default)]
    pub weights: WeightMapping,
    /// How the Fiedler vector becomes b indices: `extremes`, `boundary`, `balanced`, `quantile`.
    #[serde(default)]
    pub rule: Rule,
}

pub(crate) fn d_keep_ratio() -> f64 {
    0.25
}

impl SelectionConfig {
    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        let rho = self.keep_ratio;
        v.check(rho > 0.0 && rho <= 1.0, "selection.keep_ratio", || {
            format!("must be in (0, 1], got {rho}")
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(policy: Policy, rho: f64) -> Selector {
        Selector::new(SelectorConfig {
            policy,
            keep_ratio: rho,
            weights: WeightMapping::Clip,
            rule: Rule::Quantile,
            seed: 5,
        })
    }

    #[test]
    fn none_keeps_everything() {
        let s = sel(Policy::None, 0.25).select(10, None, 0).unwrap();
        assert_eq!(s.kept, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn uniform_keeps_b_distinct_seeded_per_superbatch() {
        let s = sel(Policy::Uniform, 0.25);
        let a = s.select(100, None, 3).unwrap();
        assert_eq!(a.kept.len(), 25);
        assert!(a.kept.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(a.kept, s.select(100, None, 3).unwrap().kept);
        assert_ne!(a.kept, s.select(100, None, 4).unwrap().kept);
    }

    #[test]
    fn saln_without_features_is_an_error() {
        let e = sel(Policy::Saln, 0.5).select(10, None, 9).unwrap_err();
        assert!(e.to_string().contains("super-batch 9"), "{e}");
    }
}
