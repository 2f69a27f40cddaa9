//! The learner-aware baselines the evaluation compares SALN with (SPEC, "Baselines").
//!
//! | policy | score of sample `i` | kept |
//! |---|---|---|
//! | `loss` | `l_i`, the learner's loss (Loshchilov & Hutter 2015) | the `b` highest |
//! | `rho-loss` | `l_i - r_i`, learner minus reference loss (Mindermann et al. 2022) | the `b` highest |
//! | `jest` | `s_i = l_i - r_i`, the learnability (Evans et al. 2024) | sampled in chunks, [`jest`] |
//!
//! `l_i` is the cross-entropy of sample `i` under a snapshot of the learner's weights
//! ([`super::learner`]), `r_i` under the held-out-trained reference CNN, both with the
//! super-batch's labels. The extract stage computes them
//! ([`super::learner::LearnerScorer::losses`]) and hands them to [`super::Selector::select`]
//! as an `[n, 2]` tensor; this file turns them into kept positions. Ties break by position,
//! and `jest`'s randomness comes from `(seed, super-batch)`, so a selection is a pure
//! function of the losses, the seed and the super-batch index.
//!
//! ## JEST for per-example losses
//! JEST scores a *sub-batch* `B'` by the learnability of the batch loss, which for its
//! contrastive loss couples the examples: each one's loss depends on which others are in
//! the batch. It therefore samples in `N` chunks: the first uniformly at random, each next
//! one from `p ~ exp(s(x | chosen))`, the learnability of `x` *given* the examples already
//! chosen. With a per-example classification loss the batch loss is the mean of
//! independent per-example terms, so the conditional learnability of `x` is just its own
//! `s_x = l_x - r_x` whatever was chosen: the joint sampling reduces to drawing without
//! replacement with `p ~ exp(s_i)` over the samples not yet chosen, after a uniform first
//! chunk. That is what [`jest`] does.
use tch::{Kind, Tensor};

use super::{Policy, SelectError, Selection, SelectionConfig, SelectorConfig};
use crate::error::{Error, Issues, Result, SampleFault};
use crate::rng::{self, Rng};

/// Stream tag of JEST's sampling (beside [`rng::SELECT`]).
const JEST: u64 = 0x4a45_5354;

pub(crate) fn d_refresh_every() -> u64 {
    10
}
pub(crate) fn d_snapshot_lag() -> u64 {
    4
}
pub(crate) fn d_jest_chunks() -> usize {
    16
}

/// The checks of the learner-aware knobs of `selection` (called by
/// [`SelectionConfig::validate`]).
pub(super) fn validate(s: &SelectionConfig, v: &mut Issues) {
    v.check(s.refresh_every > 0, "selection.refresh_every", || {
        "must be at least 1 (optimizer steps between snapshots of the learner)".into()
    });
    v.check(s.jest_chunks > 0, "selection.jest_chunks", || {
        "must be at least 1".into()
    });
}

/// Per-sample losses of a super-batch: from the `[n, 2]` tensor (learner, reference) of a
/// training run ([`Losses::from_tensor`]), or from what a loader's loop reported
/// ([`super::feedback`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Losses {
    /// The learner's cross-entropy per sample; `+inf` for a sample whose loss is not known
    /// yet (a loader's loop never reported one), which every policy prefers.
    pub learner: Vec<f64>,
    /// The reference model's (0 for `loss`, which does not compute it).
    pub reference: Vec<f64>,
}

impl Losses {
    /// Reads `[n, 2]` losses (any float dtype and device). Checks the shape and that every
    /// value is finite; a bad value names its position.
    pub fn from_tensor(t: &Tensor, n: usize) -> std::result::Result<Losses, SelectError> {
        let size = t.size();
        if size != [n as i64, 2] {
            return Err(SelectError::Other(format!(
                "per-sample losses must be [{n}, 2] (learner, reference), got {size:?}"
            )));
        }
        let flat: Vec<f64> = t
            .f_to_kind(Kind::Double)
            .and_then(|x| x.f_to_device(tch::Device::Cpu))
            .and_then(|x| x.f_contiguous())
            .and_then(|x| x.f_view([-1]))
            .and_then(|x| Vec::<f64>::try_from(&x))?;
        let (mut learner, mut reference) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (i, pair) in flat.chunks_exact(2).enumerate() {
            for (value, whose) in [(pair[0], "learner"), (pair[1], "reference model")] {
                if !value.is_finite() {
                    return Err(SelectError::Sample(SampleFault {
                        position: i,
                        what: "loss",
                        problem: format!("under the {whose} is not finite ({value})"),
                    }));
                }
            }
            learner.push(pair[0]);
            reference.push(pair[1]);
        }
        Ok(Losses { learner, reference })
    }

    /// Checks losses assembled outside [`Losses::from_tensor`]: `n` of each, reference
    /// losses finite, learner losses finite or `+inf` (unknown). A bad value names its
    /// position.
    pub fn check(&self, n: usize) -> std::result::Result<(), SelectError> {
        if self.learner.len() != n || self.reference.len() != n {
            return Err(SelectError::Other(format!(
                "{} learner and {} reference losses for {n} samples",
                self.learner.len(),
                self.reference.len()
            )));
        }
        let bad = |position: usize, whose: &str, value: f64| {
            SelectError::Sample(SampleFault {
                position,
                what: "loss",
                problem: format!("under the {whose} is not finite ({value})"),
            })
        };
        for (i, (&l, &r)) in self.learner.iter().zip(&self.reference).enumerate() {
            if l.is_nan() || l == f64::NEG_INFINITY {
                return Err(bad(i, "learner", l));
            }
            if !r.is_finite() {
                return Err(bad(i, "reference model", r));
            }
        }
        Ok(())
    }

    /// `learner - reference` per sample: RHO-LOSS's reducible loss, JEST's learnability.
    pub fn reducible(&self) -> Vec<f64> {
        self.learner
            .iter()
            .zip(&self.reference)
            .map(|(l, r)| l - r)
            .collect()
    }
}

/// The positions of the `b` highest `scores` (ties: the lower position first), ascending.
///
/// ```
/// use saln::select::baselines::top_b;
/// assert_eq!(top_b(&[0.1, 2.0, 0.5, 2.0, -1.0], 3), vec![1, 2, 3]);
/// assert_eq!(top_b(&[1.0, 1.0, 1.0], 2), vec![0, 1]);
/// ```
pub fn top_b(scores: &[f64], b: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]).then(i.cmp(&j)));
    order.truncate(b.min(scores.len()));
    order.sort_unstable();
    order
}

/// JEST's chunked joint sampling of `b` of the `s.len()` samples with learnabilities `s`
/// (finite, or `+inf` for an unknown loss: preferred), in `chunks` chunks (at most `b`; sizes differ by at most one): the first
/// chunk uniformly at random, each later one drawn one sample at a time without
/// replacement with `p_i ~ exp(s_i)` over the samples not yet chosen. Returns the chosen
/// positions, ascending. For why this is JEST for a per-example loss, see the module doc.
///
/// ```
/// use saln::rng::Rng;
/// use saln::select::baselines::jest;
/// let s = [0.0, 5.0, 0.0, 5.0, 0.0, 5.0, 0.0, 5.0];
/// let kept = jest(&s, 3, 3, &mut Rng::new(1));
/// assert_eq!(kept.len(), 3);
/// assert!(kept.windows(2).all(|w| w[0] < w[1]));
/// ```
pub fn jest(s: &[f64], b: usize, chunks: usize, rng: &mut Rng) -> Vec<usize> {
    let n = s.len();
    let b = b.min(n);
    if b == 0 {
        return Vec::new();
    }
    let chunks = chunks.clamp(1, b);
    let size = |k: usize| b / chunks + usize::from(k < b % chunks);
    // `rest` holds the positions not yet chosen.
    let mut rest: Vec<usize> = (0..n).collect();
    let mut chosen = Vec::with_capacity(b);
    // First chunk: uniform without replacement (a partial Fisher-Yates shuffle).
    for _ in 0..size(0) {
        let k = rng.below(rest.len() as u64) as usize;
        chosen.push(rest.swap_remove(k));
    }
    for k in 1..chunks {
        for _ in 0..size(k) {
            // exp(s - max over the candidates) keeps every weight in [0, 1] with at least
            // one equal to 1, so the total never underflows to 0. With `+inf` candidates
            // (unknown losses) that is the limit: uniform over them, 0 for the others.
            let top = rest.iter().map(|&i| s[i]).fold(f64::NEG_INFINITY, f64::max);
            let weight = |i: usize| {
                if top == f64::INFINITY {
                    f64::from(u8::from(s[i] == f64::INFINITY))
                } else {
                    (s[i] - top).exp()
                }
            };
            let total: f64 = rest.iter().map(|&i| weight(i)).sum();
            let mut u = rng.next_f64() * total;
            // The last candidate takes any rounding leftover.
            let mut pick = rest.len() - 1;
            for (p, &i) in rest.iter().enumerate() {
                u -= weight(i);
                if u < 0.0 {
                    pick = p;
                    break;
                }
            }
            chosen.push(rest.swap_remove(pick));
        }
    }
    chosen.sort_unstable();
    chosen
}

/// The [`super::Selector`]'s arm for `loss`, `rho-loss` and `jest`: `losses` is the
/// `[n, 2]` tensor of [`Losses::from_tensor`]; `b` samples are kept. The scores of the
/// [`Selection`] are the ranking scores (loss, reducible loss, learnability).
pub(super) fn select(
    cfg: &SelectorConfig,
    n: usize,
    b: usize,
    losses: Option<&Tensor>,
    superbatch: u64,
) -> Result<Selection> {
    let losses = losses.ok_or_else(|| Error::Selection {
        superbatch,
        message: format!(
            "the {} policy needs the per-sample losses of the learner",
            cfg.policy.name()
        ),
    })?;
    let losses = Losses::from_tensor(losses, n).map_err(|e| e.at(superbatch))?;
    select_from(cfg, b, &losses, superbatch)
}

/// As [`select`], from checked [`Losses`] (a learner loss may be `+inf`: unknown, preferred).
pub(super) fn select_from(
    cfg: &SelectorConfig,
    b: usize,
    losses: &Losses,
    superbatch: u64,
) -> Result<Selection> {
    let n = losses.learner.len();
    let (kept, scores) = match cfg.policy {
        Policy::Loss => (top_b(&losses.learner, b), losses.learner.clone()),
        Policy::RhoLoss => {
            let s = losses.reducible();
            (top_b(&s, b), s)
        }
        Policy::Jest => {
            let s = losses.reducible();
            let mut r = Rng::derive(cfg.seed, &[rng::SELECT, JEST, superbatch]);
            (jest(&s, b, cfg.jest_chunks, &mut r), s)
        }
        p => {
            return Err(Error::Selection {
                superbatch,
                message: format!("policy {} is not a loss-based baseline", p.name()),
            })
        }
    };
    let mut out = Selection::without_spectrum(kept, n, b as f64 / n.max(1) as f64);
    out.scores = scores.iter().map(|&x| x as f32).collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PipelineConfig;
    use crate::rng::Rng;
    use crate::select::{Rule, Selector};
    use proptest::prelude::*;

    fn selector(policy: Policy, rho: f64, seed: u64) -> Selector {
        Selector::new(SelectorConfig {
            policy,
            keep_ratio: rho,
            schedule: crate::select::schedule::Schedule::Constant,
            spectral: crate::select::spectral::SpectralConfig::default(),
            rule: Rule::Quantile,
            seed,
            jest_chunks: 4,
        })
    }

    fn losses(learner: &[f64], reference: &[f64]) -> Tensor {
        let pairs: Vec<f64> = learner
            .iter()
            .zip(reference)
            .flat_map(|(&l, &r)| [l, r])
            .collect();
        Tensor::from_slice(&pairs).view([learner.len() as i64, 2])
    }

    #[test]
    fn loss_keeps_the_b_highest_learner_losses() {
        // A shuffled permutation of 0..40 as losses: the top 10 are the values 30..39.
        let mut learner: Vec<f64> = (0..40).map(f64::from).collect();
        Rng::new(9).shuffle(&mut learner);
        let reference = vec![100.0; 40]; // ignored by `loss`
        let s = selector(Policy::Loss, 0.25, 0)
            .select(40, Some(&losses(&learner, &reference)), 0, 0.0)
            .unwrap();
        let mut want: Vec<usize> = (0..40).filter(|&i| learner[i] >= 30.0).collect();
        want.sort_unstable();
        assert_eq!(s.kept, want);
        assert_eq!(s.scores[7], learner[7] as f32);
    }

    #[test]
    fn rho_loss_ranks_by_learner_minus_reference() {
        // Samples 0..4 have the highest learner loss but the reference finds them just as
        // hard (noise, or unlearnable); 4..8 are hard for the learner only.
        let learner = [9.0, 9.0, 9.0, 9.0, 5.0, 5.0, 5.0, 5.0, 0.1, 0.1];
        let reference = [8.9, 8.9, 8.9, 8.9, 0.2, 0.3, 0.1, 0.4, 0.0, 0.0];
        let t = losses(&learner, &reference);
        let rho = selector(Policy::RhoLoss, 0.4, 0)
            .select(10, Some(&t), 0, 0.0)
            .unwrap();
        assert_eq!(rho.kept, vec![4, 5, 6, 7]);
        assert!((rho.scores[0] - 0.1).abs() < 1e-5);
        let plain = selector(Policy::Loss, 0.4, 0)
            .select(10, Some(&t), 0, 0.0)
            .unwrap();
        assert_eq!(plain.kept, vec![0, 1, 2, 3], "loss alone prefers 0..4");
    }

    #[test]
    fn jest_keeps_b_distinct_is_seeded_per_superbatch() {
        let learner: Vec<f64> = (0..256).map(|i| (i % 17) as f64 * 0.3).collect();
        let reference = vec![0.5; 256];
        let t = losses(&learner, &reference);
        let s = selector(Policy::Jest, 0.25, 11);
        let a = s.select(256, Some(&t), 3, 0.0).unwrap();
        assert_eq!(a.kept.len(), 64);
        assert!(
            a.kept.windows(2).all(|w| w[0] < w[1]),
            "distinct, ascending"
        );
        assert!(a.kept.iter().all(|&i| i < 256));
        assert_eq!(
            a.kept,
            s.select(256, Some(&t), 3, 0.0).unwrap().kept,
            "seeded"
        );
        assert_ne!(
            a.kept,
            s.select(256, Some(&t), 4, 0.0).unwrap().kept,
            "per super-batch"
        );
        let other_seed = selector(Policy::Jest, 0.25, 12).select(256, Some(&t), 3, 0.0);
        assert_ne!(a.kept, other_seed.unwrap().kept, "per seed");
    }

    #[test]
    fn jest_favours_high_learnability() {
        // Half the samples have learnability 2, half 0: after the uniform first chunk, each
        // draw picks a high one with odds e^2 : 1 against the remaining low ones. Over many
        // super-batches the kept share of high samples must be far above the 1/2 of
        // uniform sampling, and the first chunk alone must look uniform.
        let n = 200;
        let s: Vec<f64> = (0..n).map(|i| if i % 2 == 0 { 2.0 } else { 0.0 }).collect();
        let (b, chunks) = (40, 4);
        let (mut high, mut total, mut first_high, mut first_total) = (0, 0, 0, 0);
        for seq in 0..200u64 {
            let mut r = Rng::derive(5, &[seq]);
            let kept = jest(&s, b, chunks, &mut r);
            assert_eq!(kept.len(), b);
            high += kept.iter().filter(|&&i| i % 2 == 0).count();
            total += kept.len();
            // Replay the first chunk with the same stream.
            let mut r = Rng::derive(5, &[seq]);
            let first = jest(&s, b / chunks, 1, &mut r);
            first_high += first.iter().filter(|&&i| i % 2 == 0).count();
            first_total += first.len();
        }
        let share = high as f64 / total as f64;
        let first_share = first_high as f64 / first_total as f64;
        // Expected: 1/4 of the picks at 1/2, 3/4 at about e^2/(e^2+1) = 0.88 => ~0.79.
        assert!(share > 0.72 && share < 0.86, "high share {share}");
        assert!(
            (first_share - 0.5).abs() < 0.06,
            "first chunk {first_share}"
        );
    }

    #[test]
    fn jest_with_equal_scores_is_uniform_and_survives_huge_scores() {
        let s = vec![1e6; 10];
        let kept = jest(&s, 10, 3, &mut Rng::new(2));
        assert_eq!(kept, (0..10).collect::<Vec<_>>());
        let mut s = vec![0.0; 50];
        s[7] = 800.0; // exp(800) overflows without the shift by the maximum
        let kept = jest(&s, 5, 5, &mut Rng::new(3));
        assert!(kept.contains(&7) && kept.len() == 5, "{kept:?}");
    }

    #[test]
    fn unknown_losses_are_preferred_by_every_baseline() {
        // Samples 2 and 5 have no reported loss (+inf): kept before any known loss.
        let inf = f64::INFINITY;
        let l = Losses {
            learner: vec![3.0, 1.0, inf, 2.0, 9.0, inf, 0.5, 0.1],
            reference: vec![0.0; 8],
        };
        l.check(8).unwrap();
        for p in [Policy::Loss, Policy::RhoLoss] {
            let s = selector(p, 0.375, 0).select_losses(8, &l, 0, 0.0).unwrap();
            assert_eq!(s.kept, vec![2, 4, 5], "{p:?}");
            assert_eq!(s.scores[2], f32::INFINITY);
        }
        // JEST: the first chunk is uniform, every later draw takes an unknown one while
        // some remain.
        for seq in 0..50 {
            let s = selector(Policy::Jest, 0.5, 1)
                .select_losses(8, &l, seq, 0.0)
                .unwrap();
            assert_eq!(s.kept.len(), 4);
            assert!(s.kept.contains(&2) && s.kept.contains(&5), "{:?}", s.kept);
        }
        let bad = Losses {
            learner: vec![f64::NEG_INFINITY],
            reference: vec![0.0],
        };
        assert!(bad.check(1).unwrap_err().to_string().contains("sample 0"));
        let bad = Losses {
            learner: vec![1.0],
            reference: vec![inf],
        };
        assert!(bad.check(1).unwrap_err().to_string().contains("reference"));
    }

    #[test]
    fn bad_losses_are_errors_naming_the_sample() {
        let t = losses(&[0.1, f64::NAN, 0.3], &[0.0, 0.0, 0.0]);
        let e = selector(Policy::Loss, 0.5, 0)
            .select(3, Some(&t), 8, 0.0)
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("super-batch 8") && msg.contains("sample 1"),
            "{msg}"
        );
        let e = selector(Policy::RhoLoss, 0.5, 0)
            .select(4, Some(&t), 8, 0.0)
            .unwrap_err();
        assert!(e.to_string().contains("[4, 2]"), "{e}");
        let e = selector(Policy::Jest, 0.5, 0)
            .select(3, None, 2, 0.0)
            .unwrap_err();
        assert!(e.to_string().contains("per-sample losses"), "{e}");
    }

    #[test]
    fn rho_loss_and_jest_need_the_reference_extractor() {
        let yaml = "source: { idx: { dir: /x } }\nselection: { policy: jest }\n\
                    extractor: { kind: torchscript, torchscript: { path: m.pt } }\n";
        let e = PipelineConfig::from_yaml_str(yaml, "t").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("selection.policy (line 2): jest needs per-sample losses")
                && msg.contains("extractor.kind: reference"),
            "{msg}"
        );
        let ok = "source: { idx: { dir: /x } }\nselection: { policy: loss, refresh_every: 0 }\n";
        let e = PipelineConfig::from_yaml_str(ok, "t").unwrap_err();
        assert!(e.to_string().contains("selection.refresh_every"), "{e}");
    }

    proptest! {
        #[test]
        fn every_baseline_keeps_exactly_b_distinct(
            l in prop::collection::vec(0.0f64..5.0, 1..120),
            frac in 0.0f64..1.0,
            seed in 0u64..1000,
        ) {
            let n = l.len();
            let r: Vec<f64> = l.iter().map(|x| x * 0.5).collect();
            let t = losses(&l, &r);
            for p in [Policy::Loss, Policy::RhoLoss, Policy::Jest] {
                let s = selector(p, frac.max(0.01), seed).select(n, Some(&t), seed, 0.0).unwrap();
                let b = crate::select::keep_count(n, frac.max(0.01));
                prop_assert_eq!(s.kept.len(), b);
                prop_assert!(s.kept.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(s.kept.iter().all(|&i| i < n));
            }
        }
    }
}
