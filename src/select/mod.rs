//! Selection: which part of a super-batch reaches the optimizer.
//!
//! | file | what |
//! |---|---|
//! | [`spectral`] | SALN: similarity graph, Laplacian, Fiedler vector (dense or iterative) |
//! | [`lanczos`] | the iterative solver: block Lanczos with full re-orthogonalisation |
//! | [`rules`] | how the Fiedler vector becomes `b` indices |
//! | [`baselines`] | the learner-aware baselines: `loss`, `rho-loss`, `jest` |
//! | [`learner`] | the learner's weights in the extract stage: snapshots, staleness |
//! | [`schedule`] | the keep ratio over training (constant, linear, cosine, step) |
//! | [`bench`] | `saln-pipe bench selection`: dense vs iterative, time and agreement |
//! | [`feedback`] | per-sample learner losses handed back by a loader's training loop, and the reader that scores with them |
//!
//! Policies ([`Policy`]): `saln` (spectral, label- and learner-free), `uniform` (b of B at
//! random: the baseline any selection must beat at equal compute), `none` (everything;
//! standard training), and the learner-aware baselines `loss`, `rho-loss` and `jest`
//! (`docs/evaluation.md`).
//!
//! The number kept is `b = max(1, round(rho * B))`, capped at `B` ([`keep_count`]), with
//! `rho` the schedule's keep ratio at the super-batch's training progress. `docs/selection.md`
//! is the user's guide to every option.
use crate::error::Issues;

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::error::{Error, Result, SampleFault};
use crate::rng::{self, Rng};

pub mod baselines;
pub mod bench;
pub mod feedback;
pub mod lanczos;
pub mod learner;
pub mod outcome;
pub mod rules;
pub mod schedule;
pub mod spectral;

pub use lanczos::LanczosOptions;
pub use rules::Rule;
pub use schedule::Schedule;
pub use spectral::{LaplacianKind, Solver, SpectralConfig, WeightMapping};

/// Why a selection step failed, before the stage that runs it adds the super-batch: a
/// sample that cannot be used (its position travels in the value), or anything else
/// (a wrong shape, libtorch).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SelectError {
    /// One sample is at fault.
    #[error("{0}")]
    Sample(SampleFault),
    /// The input as a whole, or libtorch.
    #[error("{0}")]
    Other(String),
}

impl From<tch::TchError> for SelectError {
    fn from(e: tch::TchError) -> Self {
        SelectError::Other(e.to_string())
    }
}

impl SelectError {
    /// As the library's [`Error`], for super-batch `superbatch`.
    pub fn at(self, superbatch: u64) -> Error {
        match self {
            SelectError::Sample(fault) => Error::BadSample {
                superbatch,
                id: None,
                fault,
            },
            SelectError::Other(message) => Error::Selection {
                superbatch,
                message,
            },
        }
    }
}

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
    /// The `b` samples with the highest loss under the learner (Loshchilov & Hutter 2015).
    Loss,
    /// The `b` samples with the highest reducible loss, learner loss minus reference-model
    /// loss (RHO-LOSS, Mindermann et al. 2022).
    RhoLoss,
    /// JEST's chunked sampling by learnability, learner loss minus reference loss (Evans et
    /// al. 2024); see [`baselines::jest`].
    Jest,
}

impl Policy {
    /// Every policy, in the order the docs list them.
    pub const ALL: [Policy; 6] = [
        Policy::None,
        Policy::Uniform,
        Policy::Loss,
        Policy::RhoLoss,
        Policy::Jest,
        Policy::Saln,
    ];

    /// The policy's name as written in the YAML (`rho-loss`), the report, the export's
    /// metadata and the evaluation's tables: the one place it is spelled.
    ///
    /// ```
    /// use saln::select::Policy;
    /// assert_eq!(Policy::RhoLoss.name(), "rho-loss");
    /// assert_eq!("rho-loss".parse::<Policy>(), Ok(Policy::RhoLoss));
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Policy::Saln => "saln",
            Policy::Uniform => "uniform",
            Policy::None => "none",
            Policy::Loss => "loss",
            Policy::RhoLoss => "rho-loss",
            Policy::Jest => "jest",
        }
    }

    /// The sort key of a sample's score under this policy (and `rule`, for `saln`): the
    /// lower the key, the more the policy prefers the sample. The selection rules
    /// ([`rules::apply`]) and the export's ranks ([`ranks`]) both order by it, so the two
    /// can never disagree. Random policies prefer no sample (key 0: position order).
    pub fn preference_key(self, rule: Rule, score: f64) -> f64 {
        match self {
            Policy::Saln => rule.preference_key(score),
            Policy::Uniform | Policy::None => 0.0,
            // Learner-aware policies prefer high (reducible) loss / learnability.
            Policy::Loss | Policy::RhoLoss | Policy::Jest => -score,
        }
    }

    /// Whether the policy needs the reference model's features.
    pub fn needs_features(self) -> bool {
        matches!(self, Policy::Saln)
    }

    /// Whether the policy scores samples by the learner's losses: with snapshots of the
    /// trainer's weights in a training run ([`learner`]), with the losses a loader's loop
    /// reports in a loader run ([`feedback`]).
    pub fn needs_learner(self) -> bool {
        matches!(self, Policy::Loss | Policy::RhoLoss | Policy::Jest)
    }

    /// Whether the policy needs the reference model loaded: its features (`saln`) or its
    /// per-sample losses (`rho-loss`, `jest`).
    pub fn needs_reference(self) -> bool {
        matches!(self, Policy::Saln | Policy::RhoLoss | Policy::Jest)
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Policy::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Policy::ALL.iter().map(|p| p.name()).collect();
                format!("unknown policy `{s}`: expected one of {}", names.join(", "))
            })
    }
}

/// The rank of each sample of a super-batch by how much `policy` (with `rule`) prefers it:
/// 0 for the most preferred, ties by position (the order [`Policy::preference_key`] gives).
///
/// | policy / rule | order |
/// |---|---|
/// | `saln` + `extremes`, `balanced` | `abs(score)` descending: cluster cores first |
/// | `saln` + `boundary` | `abs(score)` ascending: nearest the spectral cut first |
/// | `saln` + `quantile` | `score` ascending: the position along the spectral axis (the rule keeps evenly spaced ranks) |
/// | `uniform`, `none` | position in the super-batch (these policies score nothing) |
/// | `loss`, `rho-loss`, `jest` | `score` descending: the highest (reducible) loss first |
///
/// ```
/// use saln::select::{ranks, Policy, Rule};
/// let v = [0.5, -0.9, 0.1];
/// assert_eq!(ranks(Policy::Saln, Rule::Extremes, &v), vec![1, 0, 2]);
/// assert_eq!(ranks(Policy::Saln, Rule::Quantile, &v), vec![2, 0, 1]);
/// assert_eq!(ranks(Policy::Uniform, Rule::Quantile, &[0.0; 3]), vec![0, 1, 2]);
/// ```
pub fn ranks(policy: Policy, rule: Rule, scores: &[f32]) -> Vec<u32> {
    let key = |v: f32| policy.preference_key(rule, v as f64);
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| key(scores[a]).total_cmp(&key(scores[b])).then(a.cmp(&b)));
    let mut rank = vec![0u32; scores.len()];
    for (r, &i) in order.iter().enumerate() {
        rank[i] = r as u32;
    }
    rank
}

/// Settings of a [`Selector`].
#[derive(Debug, Clone, PartialEq)]
pub struct SelectorConfig {
    /// The policy.
    pub policy: Policy,
    /// Keep ratio at the end of training (all along with a constant schedule), in (0, 1].
    pub keep_ratio: f64,
    /// How the keep ratio moves over training.
    pub schedule: Schedule,
    /// The spectral step (saln).
    pub spectral: SpectralConfig,
    /// Selection rule (saln).
    pub rule: Rule,
    /// Seed of the random policies and of the iterative solver's start vectors.
    pub seed: u64,
    /// Chunks of JEST's joint sampling (`jest`).
    pub jest_chunks: usize,
}

impl SelectorConfig {
    /// From the `selection:` section and the pipeline's master `seed`.
    pub fn new(s: &SelectionConfig, seed: u64) -> Self {
        SelectorConfig {
            policy: s.policy,
            keep_ratio: s.keep_ratio,
            schedule: s.schedule,
            spectral: SpectralConfig {
                weights: s.weights,
                knn_k: s.knn_k,
                laplacian: s.laplacian,
                solver: s.solver,
                lanczos: LanczosOptions::default(),
            },
            rule: s.rule,
            seed,
            jest_chunks: s.jest_chunks,
        }
    }
}

/// What the selector decided for one super-batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Positions (within the super-batch) of the kept samples, ascending.
    pub kept: Vec<usize>,
    /// One score per sample of the super-batch: the canonical Fiedler value for `saln`
    /// (all zeros when the spectrum is `degenerate`), 0 for the other policies.
    pub scores: Vec<f32>,
    /// The keep ratio the schedule gave at this super-batch's progress.
    pub keep_ratio: f64,
    /// Second-smallest Laplacian eigenvalue (algebraic connectivity); 0 when not computed.
    pub lambda2: f64,
    /// Third-smallest eigenvalue (`lambda3 - lambda2` small means an unstable Fiedler vector).
    pub lambda3: f64,
    /// The solver that computed the spectrum; `None` for policies without one.
    pub solver: Option<Solver>,
    /// `lambda2` was repeated or the graph had no edge: scores are zero and the rule kept by
    /// position (see [`spectral::fiedler`]).
    pub degenerate: bool,
    /// `false` when the iterative solver stopped before its tolerance (see
    /// [`spectral::Spectrum::converged`]).
    pub converged: bool,
    /// Operator products of the iterative solver (0 for `dense`).
    pub matvecs: usize,
    /// Wall seconds spent selecting (features excluded).
    pub seconds: f64,
}

impl Selection {
    fn without_spectrum(kept: Vec<usize>, n: usize, keep_ratio: f64) -> Selection {
        Selection {
            kept,
            scores: vec![0.0; n],
            keep_ratio,
            lambda2: 0.0,
            lambda3: 0.0,
            solver: None,
            degenerate: false,
            converged: true,
            matvecs: 0,
            seconds: 0.0,
        }
    }
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

    /// Selects from a super-batch of `n` samples.
    ///
    /// - `features`: `[n, d]` (any float dtype, any device), required for `saln`; for the
    ///   learner-aware policies (`loss`, `rho-loss`, `jest`) the `[n, 2]` per-sample losses,
    ///   learner then reference, that [`learner::LearnerScorer::losses`] computes.
    /// - `superbatch`: the global super-batch index; seeds the random policies and the
    ///   iterative solver, and names the super-batch in errors.
    /// - `progress`: training progress in `[0, 1]` ([`crate::batch::SuperBatch::progress`]),
    ///   which sets the keep ratio through the schedule.
    ///
    /// With `saln` the spectrum is computed even when every sample is kept (`b = n`), so
    /// that the report's eigenvalues and the checks on the features do not depend on the
    /// keep ratio.
    pub fn select(
        &self,
        n: usize,
        features: Option<&Tensor>,
        superbatch: u64,
        progress: f64,
    ) -> Result<Selection> {
        let start = Instant::now();
        let rho = self.cfg.schedule.keep_ratio(self.cfg.keep_ratio, progress);
        let b = keep_count(n, rho);
        let mut out = match self.cfg.policy {
            Policy::None => Selection::without_spectrum((0..n).collect(), n, 1.0),
            Policy::Uniform => {
                let mut order: Vec<usize> = (0..n).collect();
                Rng::derive(self.cfg.seed, &[rng::SELECT, superbatch]).shuffle(&mut order);
                let mut kept = order[..b].to_vec();
                kept.sort_unstable();
                Selection::without_spectrum(kept, n, rho)
            }
            Policy::Saln => {
                let features = features.ok_or_else(|| Error::Selection {
                    superbatch,
                    message: "the saln policy needs features".into(),
                })?;
                let stream = Rng::derive(self.cfg.seed, &[rng::SELECT, superbatch, 1]);
                let spec = spectral::fiedler(features, &self.cfg.spectral, stream)
                    .map_err(|e| e.at(superbatch))?;
                Selection {
                    kept: rules::apply(self.cfg.rule, &spec.vector, b),
                    scores: spec.vector.iter().map(|&v| v as f32).collect(),
                    keep_ratio: rho,
                    lambda2: spec.lambda2,
                    lambda3: spec.lambda3,
                    solver: Some(spec.solver),
                    degenerate: spec.degenerate,
                    converged: spec.converged,
                    matvecs: spec.matvecs,
                    seconds: 0.0,
                }
            }
            Policy::Loss | Policy::RhoLoss | Policy::Jest => {
                let mut s = baselines::select(&self.cfg, n, b, features, superbatch)?;
                s.keep_ratio = rho;
                s
            }
        };
        out.seconds = start.elapsed().as_secs_f64();
        Ok(out)
    }

    /// Selects from a super-batch scored by per-sample `losses` (`loss`, `rho-loss`,
    /// `jest`), as [`Selector::select`] does from the `[n, 2]` tensor, here assembled by the
    /// caller: a loader's reported losses ([`feedback`]), where a learner loss is `+inf`
    /// for a sample with none yet. The losses are checked ([`baselines::Losses::check`]).
    pub fn select_losses(
        &self,
        n: usize,
        losses: &baselines::Losses,
        superbatch: u64,
        progress: f64,
    ) -> Result<Selection> {
        let start = Instant::now();
        if !self.cfg.policy.needs_learner() {
            return Err(Error::Selection {
                superbatch,
                message: format!("policy {} does not score losses", self.cfg.policy.name()),
            });
        }
        losses.check(n).map_err(|e| e.at(superbatch))?;
        let rho = self.cfg.schedule.keep_ratio(self.cfg.keep_ratio, progress);
        let mut out = baselines::select_from(&self.cfg, keep_count(n, rho), losses, superbatch)?;
        out.keep_ratio = rho;
        out.seconds = start.elapsed().as_secs_f64();
        Ok(out)
    }
}

// ---- configuration ----

/// The selection policy and its parameters. `docs/selection.md` explains each option.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectionConfig {
    /// `saln` (spectral), `uniform` (b of B at random), `none` (keep everything), or the
    /// learner-aware baselines `loss`, `rho-loss` and `jest` (`docs/evaluation.md`).
    #[serde(default)]
    pub policy: Policy,
    /// Fraction of each super-batch that reaches the trainer (rho), in (0, 1]; with a
    /// `schedule` other than `constant`, the ratio at the end of training.
    #[serde(default = "d_keep_ratio")]
    pub keep_ratio: f64,
    /// How the keep ratio moves over training: `{ kind: constant }` (default),
    /// `{ kind: linear, start: 1.0 }`, `{ kind: cosine, start: 1.0 }`,
    /// `{ kind: step, start: 1.0, steps: 3 }`; every kind ends at `keep_ratio`.
    #[serde(default)]
    pub schedule: Schedule,
    /// How cosine similarity becomes an edge weight: `clip` = max(0, cos),
    /// `shift` = (1+cos)/2, `knn` = max(0, cos) to each sample's `knn_k` nearest, symmetrised.
    #[serde(default)]
    pub weights: WeightMapping,
    /// Neighbours per sample with `weights: knn` (capped at B - 1).
    #[serde(default = "d_knn_k")]
    pub knn_k: usize,
    /// `unnormalized` (the paper's L = D - S) or `symmetric` (I - D^-1/2 S D^-1/2).
    #[serde(default)]
    pub laplacian: LaplacianKind,
    /// `auto` (dense up to 128 samples, lanczos above), `dense` (linalg_eigh) or `lanczos`
    /// (block Lanczos for the two eigenpairs needed).
    #[serde(default)]
    pub solver: Solver,
    /// How the Fiedler vector becomes b indices: `extremes`, `boundary`, `balanced`, `quantile`.
    #[serde(default)]
    pub rule: Rule,
    /// `loss`, `rho-loss`, `jest`: the extract stage scores with a snapshot of the learner's
    /// weights taken every `refresh_every` optimizer steps (`docs/evaluation.md`).
    #[serde(default = "baselines::d_refresh_every")]
    pub refresh_every: u64,
    /// `loss`, `rho-loss`, `jest`: super-batch `j` is scored with the snapshot taken after
    /// step `refresh_every * floor((j - snapshot_lag) / refresh_every)`, so the selection
    /// never depends on how far the trainer got. A lag of at least the
    /// `channels.extract_to_train` capacity + 1 lets the stages overlap; a smaller one makes
    /// the extract stage wait for the trainer.
    #[serde(default = "baselines::d_snapshot_lag")]
    pub snapshot_lag: u64,
    /// `jest`: the number of chunks of the joint sampling (the first is uniform).
    #[serde(default = "baselines::d_jest_chunks")]
    pub jest_chunks: usize,
}

pub(crate) fn d_keep_ratio() -> f64 {
    0.25
}
pub(crate) fn d_knn_k() -> usize {
    10
}

impl SelectionConfig {
    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        let rho = self.keep_ratio;
        v.check(rho > 0.0 && rho <= 1.0, "selection.keep_ratio", || {
            format!("must be in (0, 1], got {rho}")
        });
        baselines::validate(self, v);
        v.check(self.knn_k >= 1, "selection.knn_k", || {
            "must be at least 1".into()
        });
        self.schedule.validate(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_names_are_the_yaml_spelling() {
        for p in Policy::ALL {
            let yaml = serde_json::to_value(p).unwrap();
            assert_eq!(yaml.as_str(), Some(p.name()));
            assert_eq!(p.name().parse::<Policy>(), Ok(p));
        }
        assert!("sideways"
            .parse::<Policy>()
            .unwrap_err()
            .contains("rho-loss"));
    }
    use crate::select::bench::clustered_features;

    fn sel(policy: Policy, rho: f64) -> Selector {
        Selector::new(SelectorConfig {
            policy,
            keep_ratio: rho,
            schedule: Schedule::Constant,
            spectral: SpectralConfig::default(),
            rule: Rule::Quantile,
            seed: 5,
            jest_chunks: 16,
        })
    }

    fn saln(rule: Rule, rho: f64, solver: Solver) -> Selector {
        let mut s = sel(Policy::Saln, rho);
        s.cfg.rule = rule;
        s.cfg.spectral.solver = solver;
        s
    }

    const RULES: [Rule; 4] = [
        Rule::Extremes,
        Rule::Boundary,
        Rule::Balanced,
        Rule::Quantile,
    ];

    #[test]
    fn none_keeps_everything() {
        let s = sel(Policy::None, 0.25).select(10, None, 0, 0.0).unwrap();
        assert_eq!(s.kept, (0..10).collect::<Vec<_>>());
        assert_eq!(s.solver, None);
    }

    #[test]
    fn uniform_keeps_b_distinct_seeded_per_superbatch() {
        let s = sel(Policy::Uniform, 0.25);
        let a = s.select(100, None, 3, 0.0).unwrap();
        assert_eq!(a.kept.len(), 25);
        assert!(a.kept.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(a.kept, s.select(100, None, 3, 0.0).unwrap().kept);
        assert_ne!(a.kept, s.select(100, None, 4, 0.0).unwrap().kept);
    }

    #[test]
    fn saln_without_features_is_an_error() {
        let e = sel(Policy::Saln, 0.5).select(10, None, 9, 0.0).unwrap_err();
        assert!(e.to_string().contains("super-batch 9"), "{e}");
    }

    #[test]
    fn a_bad_feature_names_the_superbatch_and_the_sample() {
        let f = clustered_features(200, 8, 3, 1, tch::Device::Cpu).unwrap();
        let _ = f.get(17).fill_(0.0);
        for solver in [Solver::Dense, Solver::Lanczos] {
            let e = saln(Rule::Extremes, 0.5, solver)
                .select(200, Some(&f), 4, 0.0)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("super-batch 4") && e.contains("sample 17 is all zeros"),
                "{e}"
            );
        }
    }

    #[test]
    fn every_rule_keeps_exactly_b_and_b_equal_to_n_keeps_all_with_a_spectrum() {
        let f = clustered_features(150, 12, 3, 2, tch::Device::Cpu).unwrap();
        for rule in RULES {
            for (rho, b) in [(0.25, 38), (0.5, 75), (1.0, 150)] {
                let s = saln(rule, rho, Solver::Auto)
                    .select(150, Some(&f), 0, 0.3)
                    .unwrap();
                assert_eq!(s.kept.len(), b, "{rule:?} {rho}");
                assert!(s.kept.windows(2).all(|w| w[0] < w[1]));
                assert_eq!(s.solver, Some(Solver::Lanczos));
                assert!(s.lambda3 > s.lambda2 && s.lambda2 > 0.0, "{s:?}");
            }
        }
    }

    #[test]
    fn selection_is_equivariant_under_permutation() {
        let n = 160;
        let f = clustered_features(n, 16, 4, 8, tch::Device::Cpu).unwrap();
        // perm[i] = the original position now at position i.
        let mut perm: Vec<usize> = (0..n).collect();
        Rng::new(3).shuffle(&mut perm);
        let index = Tensor::from_slice(&perm.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let g = f.index_select(0, &index);
        for solver in [Solver::Dense, Solver::Lanczos] {
            for rule in RULES {
                let s = saln(rule, 0.25, solver);
                let a = s.select(n, Some(&f), 0, 0.0).unwrap();
                let b = s.select(n, Some(&g), 0, 0.0).unwrap();
                assert!(
                    a.lambda3 - a.lambda2 > 1e-3 * a.lambda3,
                    "the gap is not tiny"
                );
                let mut mapped: Vec<usize> = b.kept.iter().map(|&i| perm[i]).collect();
                mapped.sort_unstable();
                assert_eq!(mapped, a.kept, "{solver:?} {rule:?}");
                assert!((a.lambda2 - b.lambda2).abs() <= 1e-8 * a.lambda2);
                for (i, &p) in perm.iter().enumerate() {
                    assert!((b.scores[i] - a.scores[p]).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn same_input_and_seed_give_the_same_selection() {
        let f = clustered_features(300, 24, 3, 6, tch::Device::Cpu).unwrap();
        for rule in RULES {
            let s = saln(rule, 0.25, Solver::Lanczos);
            let a = s.select(300, Some(&f), 7, 0.5).unwrap();
            let b = s.select(300, Some(&f), 7, 0.5).unwrap();
            assert_eq!((a.kept, a.scores, a.lambda2), (b.kept, b.scores, b.lambda2));
        }
    }

    #[test]
    fn a_degenerate_superbatch_keeps_by_position() {
        let row = Tensor::from_slice(&[0.5f32, 1.0, -0.2]).view([1, 3]);
        let f = row.repeat([20, 1]);
        let s = saln(Rule::Extremes, 0.25, Solver::Auto)
            .select(20, Some(&f), 0, 0.0)
            .unwrap();
        assert!(s.degenerate);
        assert_eq!(s.kept, vec![0, 1, 2, 3, 4]);
        assert!(s.scores.iter().all(|&x| x == 0.0));
        let s = saln(Rule::Quantile, 0.25, Solver::Auto)
            .select(20, Some(&f), 0, 0.0)
            .unwrap();
        assert_eq!(s.kept, vec![2, 6, 10, 14, 18]);
    }

    #[test]
    fn the_schedule_sets_the_keep_ratio_from_progress() {
        let mut s = sel(Policy::Uniform, 0.25);
        s.cfg.schedule = Schedule::Linear { start: 1.0 };
        let at = |t: f64| s.select(100, None, 0, t).unwrap();
        assert_eq!(at(0.0).kept.len(), 100);
        assert_eq!(at(0.5).kept.len(), 63); // 0.625 * 100 rounded
        assert_eq!(at(0.5).keep_ratio, 0.625);
        assert_eq!(at(1.0).kept.len(), 25);
        // `none` ignores it: standard training keeps everything.
        let mut none = sel(Policy::None, 0.25);
        none.cfg.schedule = Schedule::Linear { start: 1.0 };
        assert_eq!(none.select(100, None, 0, 1.0).unwrap().kept.len(), 100);
    }

    fn parse(selection: &str) -> crate::Result<crate::config::PipelineConfig> {
        let yaml = format!("source: {{ idx: {{ dir: /nonexistent }} }}\nselection: {selection}\n");
        crate::config::PipelineConfig::from_yaml_str(&yaml, "inline.yaml")
    }

    #[test]
    fn every_option_parses_from_yaml() {
        let cfg = parse(
            "{ keep_ratio: 0.5, schedule: { kind: step, start: 1.0, steps: 3 }, weights: knn, \
             knn_k: 7, laplacian: symmetric, solver: lanczos, rule: balanced }",
        )
        .unwrap();
        let s = SelectorConfig::new(&cfg.selection, cfg.seed);
        assert_eq!(
            s.schedule,
            Schedule::Step {
                start: 1.0,
                steps: 3
            }
        );
        assert_eq!(s.spectral.weights, WeightMapping::Knn);
        assert_eq!(s.spectral.knn_k, 7);
        assert_eq!(s.spectral.laplacian, LaplacianKind::Symmetric);
        assert_eq!(s.spectral.solver, Solver::Lanczos);
        assert_eq!(s.rule, Rule::Balanced);
        for (yaml, want) in [
            ("{ kind: constant }", Schedule::Constant),
            (
                "{ kind: linear, start: 0.9 }",
                Schedule::Linear { start: 0.9 },
            ),
            (
                "{ kind: cosine, start: 0.8 }",
                Schedule::Cosine { start: 0.8 },
            ),
        ] {
            let cfg = parse(&format!("{{ schedule: {yaml} }}")).unwrap();
            assert_eq!(cfg.selection.schedule, want);
        }
        // Defaults: constant schedule, clip, the paper's Laplacian, auto solver.
        let d = parse("{}").unwrap().selection;
        assert_eq!(d.schedule, Schedule::Constant);
        assert_eq!(
            (d.weights, d.laplacian, d.solver),
            (
                WeightMapping::Clip,
                LaplacianKind::Unnormalized,
                Solver::Auto
            )
        );
    }

    #[test]
    fn bad_options_are_reported_with_their_keys() {
        let e = parse("{ schedule: { kind: linear, start: 1.0, end: 0.2 } }").unwrap_err();
        assert!(e.to_string().contains("end"), "{e}");
        let e = parse("{ schedule: { kind: sawtooth } }").unwrap_err();
        assert!(e.to_string().contains("sawtooth"), "{e}");
        let e = parse("{ solver: magic }").unwrap_err();
        assert!(e.to_string().contains("magic"), "{e}");
        let e = parse("{ knn_k: 0, schedule: { kind: cosine, start: 0 } }")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("selection.knn_k") && e.contains("selection.schedule.start"),
            "{e}"
        );
    }

    #[test]
    fn an_unconverged_lanczos_is_recomputed_by_dense_under_auto_and_flagged_otherwise() {
        // Isotropic noise has small gaps: 8 basis vectors cannot reach the tolerance.
        let f = clustered_features(200, 40, 1, 3, tch::Device::Cpu).unwrap();
        let f = f.f_sub(&f.mean_dim(0, true, tch::Kind::Float)).unwrap();
        for (solver, want) in [
            (Solver::Auto, Solver::Dense),
            (Solver::Lanczos, Solver::Lanczos),
        ] {
            let mut s = saln(Rule::Quantile, 0.25, solver);
            s.cfg.spectral.lanczos.max_basis = 8;
            let r = s.select(200, Some(&f), 0, 0.0).unwrap();
            assert_eq!(r.solver, Some(want));
            assert_eq!(r.converged, want == Solver::Dense, "{r:?}");
            assert_eq!(r.kept.len(), 50);
        }
    }
}
