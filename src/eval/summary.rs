//! The grid's results: read every completed run report back, aggregate over seeds, and
//! write `results.md` (the table a person reads), `results.json` (the same numbers for
//! programs) and one `accuracy-rRATIO.png` per keep ratio.
//!
//! Per (policy, keep ratio), over the seeds that completed:
//! - final test accuracy, wall-clock seconds (whole run: data and model loading, every
//!   stage, every evaluation) and selection seconds (the extract stage's forward passes for
//!   scoring plus the selection itself: `superbatches x (ms_per_forward +
//!   ms_per_selection)`), as mean and sample standard deviation;
//! - time to the target accuracy: the wall-clock at the end of the first epoch whose
//!   evaluation reached it, averaged over the seeds that reached it ("not reached" when
//!   none did; "k/n" when only some did);
//! - accuracy at the equal-wall-clock budget `T` (the fastest run's wall-clock unless
//!   `grid.budget_seconds` sets it), interpolated linearly between the run's evaluations.
//!   Where `T` comes before a run's first evaluation the segment starts at chance accuracy
//!   (1 / classes) at 0 s, a guess the table marks with a dagger;
//! - for the learner-aware policies, the staleness of the scoring weights in optimizer
//!   steps (mean, max; [`crate::select::learner`]).
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::plot::{self, Line, Panel};
use super::{EvalConfig, GridPolicy, RunSpec};
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::select::learner::LearnerStats;
use crate::select::Policy;

/// The parts of a run report the summary uses.
#[derive(Debug, Clone, Deserialize)]
pub struct RunRecord {
    /// `completed`, `cancelled` or `failed`.
    pub status: String,
    /// Per epoch.
    pub epochs: Vec<EpochPoint>,
    /// Accuracy after the last epoch.
    pub final_test_accuracy: Option<f64>,
    /// Wall seconds of the whole run.
    pub wall_seconds: f64,
    /// Selection figures.
    pub selection: SelectionView,
}

/// One epoch of a run report.
#[derive(Debug, Clone, Deserialize)]
pub struct EpochPoint {
    /// 1-based.
    pub epoch: usize,
    /// Test accuracy after it.
    pub test_accuracy: f64,
    /// Wall seconds from the run's start to the end of its evaluation.
    pub wall_seconds: f64,
}

/// The selection figures of a run report.
#[derive(Debug, Clone, Deserialize)]
pub struct SelectionView {
    /// Super-batches selected from.
    pub superbatches: u64,
    /// Mean milliseconds of selection per super-batch.
    pub ms_per_selection: f64,
    /// Mean milliseconds of forward passes for scoring per super-batch.
    pub ms_per_forward: f64,
    /// Staleness figures (learner-aware policies).
    #[serde(default)]
    pub learner: Option<LearnerStats>,
    /// Samples offered to the selector.
    #[serde(default)]
    pub samples_in: u64,
    /// Samples kept.
    #[serde(default)]
    pub samples_kept: u64,
    /// Offered samples repeating an original of their super-batch (`source.repeat`).
    #[serde(default)]
    pub repeats_in: u64,
    /// Kept samples repeating an original kept from their super-batch.
    #[serde(default)]
    pub repeats_kept: u64,
}

impl RunRecord {
    /// Reads a report; `None` when the file is missing.
    pub fn read(path: &Path) -> Result<Option<RunRecord>> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Output {
                    path: path.to_path_buf(),
                    message: format!("is not a run report: {e}"),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Seconds the extract stage spent scoring and selecting.
    pub fn selection_seconds(&self) -> f64 {
        let s = &self.selection;
        s.superbatches as f64 * (s.ms_per_forward + s.ms_per_selection) / 1e3
    }

    /// Wall-clock at the end of the last evaluation.
    pub fn curve_end(&self) -> f64 {
        self.epochs
            .last()
            .map_or(self.wall_seconds, |e| e.wall_seconds)
    }

    /// Wall-clock at the end of the first epoch whose accuracy reached `target`.
    pub fn time_to(&self, target: f64) -> Option<f64> {
        self.epochs
            .iter()
            .find(|e| e.test_accuracy >= target)
            .map(|e| e.wall_seconds)
    }

    /// Test accuracy at `t` seconds, linear between evaluations (held after the last one);
    /// before the first, on the segment from `(0 s, chance)`: the flag says so.
    pub fn accuracy_at(&self, t: f64, chance: f64) -> (f64, bool) {
        let mut prev = (0.0, chance);
        for e in &self.epochs {
            let cur = (e.wall_seconds, e.test_accuracy);
            if t <= cur.0 {
                let span = cur.0 - prev.0;
                let f = if span > 0.0 { (t - prev.0) / span } else { 1.0 };
                return (prev.1 + f.clamp(0.0, 1.0) * (cur.1 - prev.1), e.epoch == 1);
            }
            prev = cur;
        }
        (prev.1, false)
    }
}

/// Mean and sample standard deviation (0 for a single value).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (n - 1).
    pub sd: f64,
}

impl Stat {
    /// Of `xs` (not empty).
    ///
    /// ```
    /// let s = saln::eval::summary::Stat::of(&[1.0, 2.0, 3.0]);
    /// assert_eq!((s.mean, s.sd), (2.0, 1.0));
    /// ```
    pub fn of(xs: &[f64]) -> Stat {
        let n = xs.len().max(1) as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let sd = if xs.len() > 1 {
            (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        Stat { mean, sd }
    }
}

/// Time to one target accuracy, over a cell's runs.
#[derive(Debug, Clone, Serialize)]
pub struct TargetStat {
    /// The target accuracy (a fraction).
    pub target: f64,
    /// Runs that reached it.
    pub reached: usize,
    /// Runs in the cell.
    pub runs: usize,
    /// Seconds, over the runs that reached it.
    pub seconds: Option<Stat>,
}

/// One run of a cell.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SeedPoint {
    /// The run's seed.
    pub seed: u64,
    /// Its final test accuracy.
    pub final_accuracy: f64,
    /// Its accuracy at the equal-wall-clock budget.
    pub accuracy_at_budget: f64,
}

/// How many repeated samples (`source.repeat`) a cell's runs were offered and kept.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RepeatStat {
    /// Repeats among the samples offered (a fraction): what keeping at random would keep.
    pub offered: Stat,
    /// Repeats among the samples kept (a fraction).
    pub kept: Stat,
}

/// Staleness of the scoring weights, over a cell's runs.
#[derive(Debug, Clone, Serialize)]
pub struct StalenessStat {
    /// Mean over runs of each run's mean staleness (optimizer steps).
    pub mean: f64,
    /// Largest over runs.
    pub max: u64,
    /// Mean over runs of the staleness at scoring time (timing-dependent).
    pub mean_at_scoring: f64,
    /// Seconds the extract stage waited for snapshots, mean over runs.
    pub wait_seconds: f64,
}

/// One (policy, keep ratio) of the grid.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// The policy, as in the grid (`saln:quantile`).
    pub policy: String,
    /// The keep ratio.
    pub keep_ratio: f64,
    /// The runs summarised (completed), by name.
    pub runs: Vec<String>,
    /// Final test accuracy.
    pub final_accuracy: Stat,
    /// Wall-clock seconds of the whole run.
    pub wall_seconds: Stat,
    /// Seconds of scoring and selection.
    pub selection_seconds: Stat,
    /// Time to each target accuracy, in `grid.target_accuracy`'s order.
    pub time_to_target: Vec<TargetStat>,
    /// Accuracy at the equal-wall-clock budget.
    pub accuracy_at_budget: Stat,
    /// Runs whose accuracy at the budget came from before their first evaluation.
    pub budget_before_first_evaluation: usize,
    /// Runs that had finished training before T: their accuracy at T is their final one
    /// (they stopped; given the budget, they could have trained on).
    pub budget_after_last_evaluation: usize,
    /// Each run's seed, final accuracy and accuracy at the budget, by seed.
    pub per_seed: Vec<SeedPoint>,
    /// With `source.repeat`: the share of repeats among the offered and the kept samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeats: Option<RepeatStat>,
    /// Per-epoch mean test accuracy (epochs every run of the cell has).
    pub accuracy_by_epoch: Vec<f64>,
    /// Per-epoch mean wall-clock seconds.
    pub seconds_by_epoch: Vec<f64>,
    /// Learner-aware policies: staleness of the scoring weights.
    pub staleness: Option<StalenessStat>,
}

/// Everything `results.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Runs in the grid.
    pub runs_in_grid: usize,
    /// Runs with a completed report.
    pub runs_completed: usize,
    /// Runs without one (not run yet, failed or cancelled).
    pub runs_missing: Vec<String>,
    /// Runs that failed now, with the error.
    pub failed: Vec<(String, String)>,
    /// `grid.target_accuracy`.
    pub target_accuracy: Vec<f64>,
    /// The equal-wall-clock budget, seconds.
    pub budget_seconds: f64,
    /// Where it comes from: `grid.budget_seconds` or the fastest run's name.
    pub budget_from: String,
    /// Chance accuracy (1 / classes).
    pub chance: f64,
    /// Per (policy, keep ratio), by keep ratio descending, then in grid order.
    pub cells: Vec<Cell>,
}

/// Aggregates the completed reports of `runs`.
pub fn summarize(
    cfg: &EvalConfig,
    runs: &[RunSpec],
    classes: usize,
    failed: &[(String, String)],
) -> Result<Summary> {
    let chance = 1.0 / classes.max(1) as f64;
    let mut records: Vec<(&RunSpec, RunRecord)> = Vec::new();
    let mut missing = Vec::new();
    for r in runs {
        match RunRecord::read(r.report_path())? {
            Some(rec) if rec.status == "completed" && !rec.epochs.is_empty() => {
                records.push((r, rec))
            }
            _ => missing.push(r.name.clone()),
        }
    }
    let (budget, budget_from) = match cfg.grid.budget_seconds {
        Some(b) => (b, "grid.budget_seconds".to_string()),
        None => records
            .iter()
            .min_by(|a, b| a.1.curve_end().total_cmp(&b.1.curve_end()))
            .map(|(r, rec)| (rec.curve_end(), format!("the fastest run, {}", r.name)))
            .unwrap_or((0.0, "no completed run".into())),
    };
    // Cells in display order: keep ratio descending, then the grid's policy order.
    let mut keys: Vec<(f64, usize, GridPolicy)> = Vec::new();
    for r in runs {
        let pos = cfg.grid.policies.iter().position(|p| *p == r.policy);
        let key = (r.keep_ratio, pos.unwrap_or(usize::MAX), r.policy);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let targets = &cfg.grid.target_accuracy;
    let mut cells = Vec::new();
    for (ratio, _, policy) in keys {
        let mine: Vec<&(&RunSpec, RunRecord)> = records
            .iter()
            .filter(|(r, _)| r.policy == policy && r.keep_ratio == ratio)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let collect = |f: &dyn Fn(&RunRecord) -> f64| -> Vec<f64> {
            mine.iter().map(|(_, rec)| f(rec)).collect()
        };
        let time_to_target = targets
            .iter()
            .map(|&target| {
                let reached: Vec<f64> = mine
                    .iter()
                    .filter_map(|(_, rec)| rec.time_to(target))
                    .collect();
                TargetStat {
                    target,
                    reached: reached.len(),
                    runs: mine.len(),
                    seconds: (!reached.is_empty()).then(|| Stat::of(&reached)),
                }
            })
            .collect();
        let at_budget: Vec<(f64, bool)> = mine
            .iter()
            .map(|(_, rec)| rec.accuracy_at(budget, chance))
            .collect();
        let epochs = mine
            .iter()
            .map(|(_, rec)| rec.epochs.len())
            .min()
            .unwrap_or(0);
        let per_epoch = |f: &dyn Fn(&EpochPoint) -> f64| -> Vec<f64> {
            (0..epochs)
                .map(|e| {
                    mine.iter().map(|(_, rec)| f(&rec.epochs[e])).sum::<f64>() / mine.len() as f64
                })
                .collect()
        };
        let learner: Vec<&LearnerStats> = mine
            .iter()
            .filter_map(|(_, rec)| rec.selection.learner.as_ref())
            .collect();
        let staleness = (!learner.is_empty()).then(|| {
            let n = learner.len() as f64;
            StalenessStat {
                mean: learner.iter().map(|l| l.mean_staleness).sum::<f64>() / n,
                max: learner.iter().map(|l| l.max_staleness).max().unwrap_or(0),
                mean_at_scoring: learner
                    .iter()
                    .map(|l| l.mean_staleness_at_scoring)
                    .sum::<f64>()
                    / n,
                wait_seconds: learner.iter().map(|l| l.wait_seconds).sum::<f64>() / n,
            }
        });
        let mut per_seed: Vec<SeedPoint> = mine
            .iter()
            .zip(&at_budget)
            .map(|((r, rec), a)| SeedPoint {
                seed: r.seed,
                final_accuracy: rec.final_test_accuracy.unwrap_or(f64::NAN),
                accuracy_at_budget: a.0,
            })
            .collect();
        per_seed.sort_by_key(|p| p.seed);
        let share = |part: u64, whole: u64| part as f64 / whole.max(1) as f64;
        let repeats = mine
            .iter()
            .any(|(_, rec)| rec.selection.repeats_in > 0)
            .then(|| RepeatStat {
                offered: Stat::of(&collect(&|r| {
                    share(r.selection.repeats_in, r.selection.samples_in)
                })),
                kept: Stat::of(&collect(&|r| {
                    share(r.selection.repeats_kept, r.selection.samples_kept)
                })),
            });
        cells.push(Cell {
            policy: policy.to_string(),
            keep_ratio: ratio,
            runs: mine.iter().map(|(r, _)| r.name.clone()).collect(),
            final_accuracy: Stat::of(&collect(&|r| r.final_test_accuracy.unwrap_or(f64::NAN))),
            wall_seconds: Stat::of(&collect(&|r| r.wall_seconds)),
            selection_seconds: Stat::of(&collect(&RunRecord::selection_seconds)),
            time_to_target,
            accuracy_at_budget: Stat::of(&at_budget.iter().map(|a| a.0).collect::<Vec<_>>()),
            budget_before_first_evaluation: at_budget.iter().filter(|a| a.1).count(),
            budget_after_last_evaluation: mine
                .iter()
                .filter(|(_, rec)| rec.curve_end() < budget)
                .count(),
            per_seed,
            repeats,
            accuracy_by_epoch: per_epoch(&|e| e.test_accuracy),
            seconds_by_epoch: per_epoch(&|e| e.wall_seconds),
            staleness,
        });
    }
    Ok(Summary {
        runs_in_grid: runs.len(),
        runs_completed: records.len(),
        runs_missing: missing,
        failed: failed.to_vec(),
        target_accuracy: targets.clone(),
        budget_seconds: budget,
        budget_from,
        chance,
        cells,
    })
}

/// `87.53 ± 0.21` (percent).
pub fn pct(s: Stat) -> String {
    format!("{:.2} ± {:.2}", 100.0 * s.mean, 100.0 * s.sd)
}

/// `31.2 ± 0.8` (seconds).
pub fn secs(s: Stat) -> String {
    format!("{:.1} ± {:.1}", s.mean, s.sd)
}

fn list<T: std::fmt::Display>(xs: &[T]) -> String {
    xs.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the learner of pipeline `p` is, in words (`ResNet-18 (small stem)`, `CNN conv 16/32
/// hidden 64`).
fn learner_text(p: &crate::config::PipelineConfig) -> String {
    let t = &p.trainer;
    let name = |v: Option<serde_json::Value>| {
        v.and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "?".into())
    };
    match name(serde_json::to_value(t.model).ok()).as_str() {
        "resnet" => t.resnet.as_ref().map_or("ResNet".into(), |r| {
            format!(
                "{} ({} stem)",
                name(serde_json::to_value(r.arch).ok()),
                name(serde_json::to_value(r.stem).ok())
            )
        }),
        "torchscript" => t.torchscript.as_ref().map_or("TorchScript".into(), |m| {
            format!("TorchScript `{}`", m.path.display())
        }),
        _ => format!(
            "CNN conv {}/{} hidden {}",
            t.arch.conv1, t.arch.conv2, t.arch.hidden
        ),
    }
}

/// The Markdown report.
pub fn markdown(cfg: &EvalConfig, s: &Summary) -> String {
    let g = &cfg.grid;
    let p = &cfg.pipeline;
    let mut md = String::new();
    md.push_str("# SALN evaluation: accuracy per second\n\n");
    if s.runs_completed < s.runs_in_grid {
        md.push_str(&format!(
            "**Partial: {} of {} runs completed.** Missing: {}.\n\n",
            s.runs_completed,
            s.runs_in_grid,
            list(&s.runs_missing)
        ));
    }
    let repeat = if p.source.repeat > 1 {
        format!(
            ", every learner sample {} times (`source.repeat`)",
            p.source.repeat
        )
    } else {
        String::new()
    };
    md.push_str(&format!(
        "Grid: policies {}; keep ratios {}; seeds {} ({} runs; `none` runs at ratio 1 only, \
         where every policy would keep everything). Pipeline: super-batches of {}, {} epochs, \
         learner {}, `source.limit` {}{repeat}, hold-out {}, device `{}`.\n\n",
        list(&g.policies),
        list(&g.keep_ratios),
        list(&g.seeds),
        s.runs_in_grid,
        p.superbatch.size,
        p.trainer.epochs,
        learner_text(p),
        p.source.limit.map_or("none".into(), |l| l.to_string()),
        p.source.holdout,
        p.device,
    ));
    let targets: Vec<String> = s
        .target_accuracy
        .iter()
        .map(|t| format!("{:.2}%", 100.0 * t))
        .collect();
    md.push_str(&format!(
        "Equal-wall-clock budget **T = {:.1} s** ({}). Target {} {}.\n\n",
        s.budget_seconds,
        s.budget_from,
        if targets.len() == 1 {
            "accuracy"
        } else {
            "accuracies"
        },
        targets.join(" and ")
    ));
    let ttt_heads: String = targets
        .iter()
        .map(|t| format!(" time to {t} (s) |"))
        .collect();
    md.push_str(&format!(
        "| keep ratio | policy | runs | final test accuracy (%) | wall-clock (s) | selection (s) \
         |{ttt_heads} accuracy at T (%) | staleness (steps, mean / max) |\n"
    ));
    md.push_str(&format!(
        "|---|---|---|---|---|---|{}---|---|\n",
        "---|".repeat(targets.len())
    ));
    let (mut dagger, mut double_dagger) = (false, false);
    for c in &s.cells {
        let ttt: String = c
            .time_to_target
            .iter()
            .map(|tt| match (&tt.seconds, tt.reached) {
                (None, _) => " not reached |".to_string(),
                (Some(t), r) if r == tt.runs => format!(" {} |", secs(*t)),
                (Some(t), r) => format!(" {} ({r}/{} reached) |", secs(*t), tt.runs),
            })
            .collect();
        let mut mark = String::new();
        if c.budget_before_first_evaluation > 0 {
            dagger = true;
            mark.push_str(" †");
        }
        if c.budget_after_last_evaluation > 0 {
            double_dagger = true;
            mark.push_str(" ‡");
        }
        let stale = c.staleness.as_ref().map_or("—".to_string(), |st| {
            format!("{:.1} / {}", st.mean, st.max)
        });
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.1} |{} {}{} | {} |\n",
            c.keep_ratio,
            c.policy,
            c.runs.len(),
            pct(c.final_accuracy),
            secs(c.wall_seconds),
            c.selection_seconds.mean,
            ttt,
            pct(c.accuracy_at_budget),
            mark,
            stale,
        ));
    }
    md.push_str(
        "\nMean ± sample standard deviation over seeds. Wall-clock: the whole run (data and \
         model loading, every stage, every evaluation). Selection: the extract stage's \
         scoring forward passes plus the selection itself. Time to target: wall-clock at the \
         end of the first epoch whose test accuracy reached it. Accuracy at T: interpolated \
         linearly between a run's per-epoch evaluations. Staleness: optimizer steps between \
         the learner weights that scored a super-batch and the weights that trained on it.\n",
    );
    if dagger {
        md.push_str(&format!(
            "\n† T falls before some of these runs' first evaluation: their value is on the \
             line from chance accuracy ({:.0}%) at 0 s to the first evaluation, a guess.\n",
            100.0 * s.chance
        ));
    }
    if double_dagger {
        md.push_str(
            "\n‡ Some of these runs had finished their last epoch before T: their value is their \
             final accuracy. They stopped early, not because the budget ran out; compare them \
             with runs given more epochs (docs/results/README.md does).\n",
        );
    }
    md.push_str(&seed_by_seed(s));
    if s.cells.iter().any(|c| c.repeats.is_some()) {
        md.push_str(
            "\n## Repeats kept\n\nShare of the samples that repeat an original already in the \
             same super-batch (offered) or already kept from it (kept), mean ± sd over seeds. \
             Keeping at random keeps fewer repeats than are offered (a sub-batch holds fewer \
             chances to meet a copy); a policy that avoids redundancy keeps fewer still.\n\n\
             | keep ratio | policy | offered (%) | kept (%) |\n|---|---|---|---|\n",
        );
        for c in &s.cells {
            if let Some(r) = c.repeats {
                md.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    c.keep_ratio,
                    c.policy,
                    pct(r.offered),
                    pct(r.kept)
                ));
            }
        }
    }
    if !s.failed.is_empty() {
        md.push_str("\n## Failed runs\n\n");
        for (name, e) in &s.failed {
            md.push_str(&format!("- `{name}`: {e}\n"));
        }
    }
    md.push_str(
        "\nPlots: `accuracy-rRATIO.png`, test accuracy against epochs and against wall-clock \
         seconds, one line per policy (mean over seeds), `none` dashed for reference. Per-run \
         reports: `runs/*.json`.\n",
    );
    md
}

/// Seed-by-seed differences of each `saln` policy against `uniform` and `jest` at the same
/// keep ratio: accuracy at T and final accuracy, in points, one column per seed the two
/// cells share. Empty when the grid has no such pair.
fn seed_by_seed(s: &Summary) -> String {
    let mut md = String::new();
    for base in ["uniform", "jest"] {
        let mut rows = Vec::new();
        for c in s.cells.iter().filter(|c| c.policy.starts_with("saln")) {
            let Some(b) = s
                .cells
                .iter()
                .find(|b| b.policy == base && b.keep_ratio == c.keep_ratio)
            else {
                continue;
            };
            let pairs: Vec<(u64, f64, f64)> = c
                .per_seed
                .iter()
                .filter_map(|p| {
                    let q = b.per_seed.iter().find(|q| q.seed == p.seed)?;
                    Some((
                        p.seed,
                        100.0 * (p.accuracy_at_budget - q.accuracy_at_budget),
                        100.0 * (p.final_accuracy - q.final_accuracy),
                    ))
                })
                .collect();
            if !pairs.is_empty() {
                rows.push((c, pairs));
            }
        }
        if rows.is_empty() {
            continue;
        }
        md.push_str(&format!(
            "\n## Seed by seed: SALN minus `{base}`\n\nPoints of test accuracy, same seed (same \
             split, order and augmentation): at T / at the end of training. Positive: SALN \
             ahead.\n\n| keep ratio | policy | per seed (at T / final) | ahead at T |\n\
             |---|---|---|---|\n"
        ));
        for (c, pairs) in rows {
            let cells: Vec<String> = pairs
                .iter()
                .map(|(seed, at, fin)| format!("s{seed}: {at:+.2} / {fin:+.2}"))
                .collect();
            let ahead = pairs.iter().filter(|p| p.1 > 0.0).count();
            md.push_str(&format!(
                "| {} | {} | {} | {ahead} of {} |\n",
                c.keep_ratio,
                c.policy,
                cells.join("; "),
                pairs.len()
            ));
        }
    }
    md
}

/// The PNG file of keep ratio `r`.
pub fn plot_name(r: f64) -> String {
    format!("accuracy-r{r}.png")
}

/// One figure per keep ratio, `none` (ratio 1) dashed in each.
pub fn plots(s: &Summary, dir: &Path) -> Result<Vec<PathBuf>> {
    let none_label = GridPolicy {
        policy: Policy::None,
        rule: None,
    }
    .to_string();
    let none = s.cells.iter().find(|c| c.policy == none_label);
    let mut ratios: Vec<f64> = s.cells.iter().map(|c| c.keep_ratio).collect();
    ratios.dedup();
    let mut written = Vec::new();
    for r in ratios {
        let mut cells: Vec<&Cell> = s.cells.iter().filter(|c| c.keep_ratio == r).collect();
        if let Some(n) = none.filter(|n| n.keep_ratio != r) {
            cells.insert(0, n);
        }
        let line = |c: &Cell, by_time: bool| Line {
            label: if c.keep_ratio == r {
                c.policy.clone()
            } else {
                format!("{} (ratio {})", c.policy, c.keep_ratio)
            },
            color: plot::policy_color(&c.policy),
            dashed: c.policy == none_label,
            points: c
                .accuracy_by_epoch
                .iter()
                .enumerate()
                .map(|(e, &a)| {
                    let x = if by_time {
                        c.seconds_by_epoch[e]
                    } else {
                        (e + 1) as f64
                    };
                    (x, a)
                })
                .collect(),
        };
        let runs = cells.iter().map(|c| c.runs.len()).max().unwrap_or(0);
        let panels = [
            Panel {
                caption: "by epoch".into(),
                x_label: "epoch".into(),
                y_label: "test accuracy (%)".into(),
                lines: cells.iter().map(|c| line(c, false)).collect(),
            },
            Panel {
                caption: "by wall-clock".into(),
                x_label: "wall-clock (s)".into(),
                y_label: "test accuracy (%)".into(),
                lines: cells.iter().map(|c| line(c, true)).collect(),
            },
        ];
        let path = dir.join(plot_name(r));
        plot::line_figure(
            &path,
            &format!("keep ratio {r}: test accuracy, mean over up to {runs} seeds"),
            &panels,
        )?;
        written.push(path);
    }
    Ok(written)
}

/// Summarises `runs` and writes `results.md`, `results.json` and the plots into
/// `cfg.grid.output`; returns the paths written.
pub fn write(
    cfg: &EvalConfig,
    runs: &[RunSpec],
    classes: usize,
    failed: &[(String, String)],
) -> Result<Vec<PathBuf>> {
    let dir = &cfg.grid.output;
    let s = summarize(cfg, runs, classes, failed)?;
    let md_path = dir.join("results.md");
    write_atomic(&md_path, markdown(cfg, &s).as_bytes())?;
    let json_path = dir.join("results.json");
    let json = serde_json::to_vec_pretty(&s).map_err(|e| Error::Output {
        path: json_path.clone(),
        message: format!("cannot serialise: {e}"),
    })?;
    write_atomic(&json_path, &json)?;
    let mut written = vec![md_path, json_path];
    written.extend(plots(&s, dir)?);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(points: &[(f64, f64)]) -> RunRecord {
        RunRecord {
            status: "completed".into(),
            epochs: points
                .iter()
                .enumerate()
                .map(|(i, &(t, a))| EpochPoint {
                    epoch: i + 1,
                    test_accuracy: a,
                    wall_seconds: t,
                })
                .collect(),
            final_test_accuracy: points.last().map(|p| p.1),
            wall_seconds: points.last().map_or(0.0, |p| p.0 + 0.5),
            selection: SelectionView {
                superbatches: 10,
                ms_per_selection: 2.0,
                ms_per_forward: 8.0,
                learner: None,
                samples_in: 0,
                samples_kept: 0,
                repeats_in: 0,
                repeats_kept: 0,
            },
        }
    }

    #[test]
    fn accuracy_at_interpolates_between_evaluations() {
        let r = rec(&[(10.0, 0.6), (20.0, 0.8), (30.0, 0.9)]);
        assert_eq!(r.accuracy_at(15.0, 0.1), (0.7, false));
        assert_eq!(r.accuracy_at(20.0, 0.1), (0.8, false));
        assert_eq!(r.accuracy_at(99.0, 0.1), (0.9, false));
        let (a, before) = r.accuracy_at(5.0, 0.1);
        assert!((a - 0.35).abs() < 1e-12 && before);
        assert_eq!(r.time_to(0.8), Some(20.0));
        assert_eq!(r.time_to(0.95), None);
        assert!((r.selection_seconds() - 0.1).abs() < 1e-12);
        assert_eq!(r.curve_end(), 30.0);
    }
}
