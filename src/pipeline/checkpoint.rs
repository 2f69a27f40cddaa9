//! Checkpoints of a training run, and resuming from them (`saln-pipe run FILE --resume`).
//!
//! A checkpoint is a folder `ckpt-SSSSSSSSSS` (`S`: the learner's optimizer steps) in the
//! run folder (`checkpoint.dir`) holding
//!
//! | file | what |
//! |---|---|
//! | `learner.safetensors` | the learner's variables (`param/NAME`), the optimizer's state (`opt/m1/NAME`, `opt/m2/NAME`: Adam's moments or SGD's momentum) and the learner snapshots the learner-aware policies still need (`snapshot/STEP/NAME`) |
//! | `state.json` | [`State`]: the result-relevant configuration and its hash, the loader position, the train stage's progress (epoch records, the current epoch's running figures), the loader and selection tallies (`kept_digest` included), the export's finished files |
//!
//! It is written as `.ckpt-SSSSSSSSSS.partial`, every file synced, then renamed: a folder
//! named `ckpt-*` is complete. After each new one, all but the newest `checkpoint.keep`
//! are removed. A checkpoint is taken on the train thread after an optimizer step (not the
//! last of an epoch: that one is followed by the evaluation, then the checkpoint) or after
//! an evaluation, every `checkpoint.every_steps` steps or `checkpoint.every_seconds`
//! seconds. Before it the export closes its open file, so the checkpoint's files hold
//! exactly the rows of the super-batches trained on.
//!
//! ## Why the resumed run is the same run
//! Every order and augmentation is a function of `(seed, epoch, sample)`, every random
//! selection of `(seed, super-batch)`, the keep-ratio schedule of the super-batch's
//! position in the run; the learner draws nothing after its initialisation (no dropout);
//! the learner-aware policies score sub-batch `j` with the snapshot of step `s(j)`
//! (`select::learner`), which the checkpoint holds when it is older than the checkpoint's
//! step. So the loader restarts at the checkpoint's super-batch, the extract stage at its
//! sub-batch count with its tally, the trainer with its weights and moments, and every
//! later decision is the one the uninterrupted run makes.
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::batch::{LoaderState, LoaderSummary};
use crate::config::PipelineConfig;
use crate::error::{ConfigIssue, Error, Result};
use crate::export::ExportState;
use crate::select::outcome::Acc;
use crate::train::{TrainProgress, Trainer};

/// Version of the checkpoint layout.
pub const FORMAT: u32 = 1;

/// What `state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// [`FORMAT`].
    pub format: u32,
    /// The saln version that wrote it.
    pub saln_version: String,
    /// Hash of [`result_config`] (FNV-1a 64 of its JSON).
    pub config_hash: String,
    /// The result-relevant configuration itself, to say what changed.
    pub config: serde_json::Value,
    /// The learner's optimizer steps.
    pub step: u64,
    /// Where the loader continues.
    pub loader: LoaderState,
    /// The train stage's progress.
    pub train: TrainProgress,
    /// The loader's figures so far.
    pub loaded: LoaderSummary,
    /// The selection's figures so far.
    pub tally: Acc,
    /// Steps of the learner snapshots saved in `learner.safetensors`.
    pub snapshots: Vec<u64>,
    /// The export, when the run writes one.
    pub export: Option<ExportState>,
    /// Written by `saln-pipe curate`: no learner, so no `learner.safetensors`; `step`
    /// counts the sub-batches exported.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub curation: bool,
}

/// A checkpoint read back: its state and its tensors.
pub struct Loaded {
    /// The folder it came from.
    pub dir: PathBuf,
    /// `state.json`.
    pub state: State,
    /// The learner's tensors (`param/`, `opt/`).
    pub learner: Vec<(String, Tensor)>,
    /// The saved snapshots, oldest first: `(step, variables)`.
    pub snapshots: Vec<(u64, Vec<(String, Tensor)>)>,
}

/// The configuration with what cannot change the result taken out: the report, the
/// checkpoint settings, queue depths, worker and prefetch counts, the export's queue and
/// overwrite flag, the loader-only block. What is left decides the result; a resumed run
/// must have the same.
pub fn result_config(cfg: &PipelineConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        for k in ["report", "checkpoint", "channels", "loader_only"] {
            o.remove(k);
        }
    }
    for (section, key) in [
        ("augment", "workers"),
        ("superbatch", "prefetch"),
        ("export", "channel"),
        ("export", "overwrite"),
    ] {
        if let Some(o) = v.get_mut(section).and_then(|s| s.as_object_mut()) {
            o.remove(key);
        }
    }
    v
}

/// FNV-1a 64 of `v`'s JSON text, as 16 hex digits.
pub fn hash(v: &serde_json::Value) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v.to_string().bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The dotted keys where `old` and `new` differ, each as `key: old -> new`.
///
/// ```
/// use serde_json::json;
/// let a = json!({"selection": {"keep_ratio": 0.5, "policy": "saln"}, "seed": 1});
/// let b = json!({"selection": {"keep_ratio": 0.25, "policy": "saln"}, "seed": 1});
/// assert_eq!(
///     saln::pipeline::checkpoint::differences(&a, &b),
///     ["selection.keep_ratio: 0.5 -> 0.25"]
/// );
/// ```
pub fn differences(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    let null = serde_json::Value::Null;
                    walk(
                        &p,
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(format!("{path}: {a} -> {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", old, new, &mut out);
    out
}

fn folder_name(step: u64) -> String {
    format!("ckpt-{step:010}")
}

fn step_of(name: &str) -> Option<u64> {
    name.strip_prefix("ckpt-")
        .filter(|s| s.len() == 10)?
        .parse()
        .ok()
}

/// The complete checkpoints in `dir`, newest first.
pub fn list(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            step_of(&name).map(|s| (s, e.path()))
        })
        .filter(|(_, p)| p.join("state.json").is_file())
        .collect();
    out.sort_by_key(|b| std::cmp::Reverse(b.0));
    out
}

/// Empties the run folder of checkpoints (complete or not): a run that does not resume
/// starts a new history.
pub fn clear(dir: &Path) -> Result<()> {
    remove_matching(dir, |name| {
        step_of(name).is_some() || (name.starts_with(".ckpt-") && name.ends_with(".partial"))
    })
}

/// Removes the half-written checkpoints a killed run left (a resumed run's first step).
pub fn clear_partials(dir: &Path) -> Result<()> {
    remove_matching(dir, |name| {
        name.starts_with(".ckpt-") && name.ends_with(".partial")
    })
}

fn remove_matching(dir: &Path, matches: impl Fn(&str) -> bool) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if matches(&name) {
            match std::fs::remove_dir_all(e.path()) {
                Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io(e.path(), err))
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// Reads the newest complete checkpoint of `dir` that reads back whole (an older one when
/// the newest is damaged), and checks it against `cfg`: a checkpoint written with a
/// different result-relevant configuration is refused, naming every changed key.
pub fn load_latest(dir: &Path, cfg: &PipelineConfig) -> Result<Loaded> {
    let found = list(dir);
    let mut problems = Vec::new();
    for (_, path) in &found {
        match load(path) {
            Ok(l) => {
                check_config(&l, cfg)?;
                return Ok(l);
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    Err(Error::Data {
        path: dir.to_path_buf(),
        message: if found.is_empty() {
            "holds no complete checkpoint to resume from (run without --resume to start; \
             `checkpoint.every_steps` / `every_seconds` say how often one is written)"
                .into()
        } else {
            format!(
                "none of its {} checkpoints reads back: {}",
                found.len(),
                problems.join("; ")
            )
        },
    })
}

/// The checkpoint a resumed `run` (`curation: false`) or `curate` (`true`) continues from:
/// the newest complete one of `dir` ([`load_latest`]), which must have been written by the
/// same command; the half-written ones are removed.
pub fn restore(dir: &Path, cfg: &PipelineConfig, curation: bool) -> Result<Loaded> {
    let latest = load_latest(dir, cfg)?;
    if latest.state.curation != curation {
        let (by, resume) = if latest.state.curation {
            (
                "`saln-pipe curate` (it holds no learner)",
                "`saln-pipe curate --resume`",
            )
        } else {
            (
                "`saln-pipe run` (it holds a learner)",
                "`saln-pipe run --resume`",
            )
        };
        return Err(Error::Data {
            path: latest.dir,
            message: format!(
                "was written by {by}: resume it with {resume}, or give each command its own \
                 `checkpoint.dir`"
            ),
        });
    }
    clear_partials(dir)?;
    Ok(latest)
}

/// A run that does not resume starts with an empty checkpoint folder (when it writes
/// checkpoints), so that a later `--resume` cannot pick up an older run's.
pub fn start_fresh(cfg: &PipelineConfig, dir: &Path) -> Result<()> {
    if cfg.checkpoint.enabled {
        clear(dir)?;
    }
    Ok(())
}

fn check_config(l: &Loaded, cfg: &PipelineConfig) -> Result<()> {
    let now = result_config(cfg);
    if hash(&now) == l.state.config_hash {
        return Ok(());
    }
    let mut changed = differences(&l.state.config, &now);
    if changed.is_empty() {
        changed.push("(the configuration's serialisation changed)".into());
    }
    Err(Error::ConfigInvalid {
        path: l.dir.clone(),
        issues: changed
            .into_iter()
            .map(|c| {
                let key = c.split(':').next().unwrap_or("").to_string();
                ConfigIssue {
                    key,
                    message: format!(
                        "cannot resume: changed since the checkpoint ({}), and the setting \
                         changes the result; restore it, or run without --resume to start over",
                        c.split_once(": ").map_or(c.as_str(), |x| x.1)
                    ),
                    line: None,
                    column: None,
                }
            })
            .collect(),
    })
}

/// Reads one checkpoint folder.
pub fn load(dir: &Path) -> Result<Loaded> {
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: State = serde_json::from_str(&text).map_err(|e| Error::Data {
        path: state_path.clone(),
        message: format!("not a checkpoint state: {e}"),
    })?;
    if state.format != FORMAT {
        return Err(Error::Data {
            path: state_path,
            message: format!(
                "checkpoint format {} (this saln reads {FORMAT})",
                state.format
            ),
        });
    }
    if state.curation {
        return Ok(Loaded {
            dir: dir.to_path_buf(),
            state,
            learner: Vec::new(),
            snapshots: Vec::new(),
        });
    }
    let tensors_path = dir.join("learner.safetensors");
    let all = Tensor::read_safetensors(&tensors_path).map_err(|e| Error::Data {
        path: tensors_path.clone(),
        message: format!("cannot read the learner state: {e}"),
    })?;
    let mut learner = Vec::new();
    let mut snaps: std::collections::BTreeMap<u64, Vec<(String, Tensor)>> = Default::default();
    for (name, t) in all {
        if let Some(rest) = name.strip_prefix("snapshot/") {
            let (step, var) = rest.split_once('/').unwrap_or((rest, ""));
            let step: u64 = step.parse().map_err(|_| Error::Data {
                path: tensors_path.clone(),
                message: format!("bad snapshot tensor name `{name}`"),
            })?;
            snaps.entry(step).or_default().push((var.to_string(), t));
        } else {
            learner.push((name, t));
        }
    }
    if snaps.keys().copied().collect::<Vec<_>>() != state.snapshots {
        return Err(Error::Data {
            path: tensors_path,
            message: "the saved learner snapshots do not match state.json".into(),
        });
    }
    Ok(Loaded {
        dir: dir.to_path_buf(),
        state,
        learner,
        snapshots: snaps.into_iter().collect(),
    })
}

/// Decides when to checkpoint and writes checkpoints (on the train thread).
pub struct Checkpointer {
    dir: PathBuf,
    every_steps: u64,
    every_seconds: f64,
    keep: usize,
    config: serde_json::Value,
    config_hash: String,
    per_epoch: u64,
    last_step: u64,
    last_time: Instant,
    /// Seconds and bytes of each checkpoint written (for the report).
    pub written: Vec<(f64, u64)>,
}

impl Checkpointer {
    /// A checkpointer for a run of `cfg` with `per_epoch` super-batches per epoch, whose
    /// trainer is at `step` now. `None` when checkpoints are off.
    pub fn new(
        cfg: &PipelineConfig,
        dir: PathBuf,
        per_epoch: u64,
        step: u64,
    ) -> Option<Checkpointer> {
        let c = &cfg.checkpoint;
        if !c.enabled || (c.every_steps == 0 && c.every_seconds == 0.0) {
            return None;
        }
        let config = result_config(cfg);
        Some(Checkpointer {
            dir,
            every_steps: c.every_steps,
            every_seconds: c.every_seconds,
            keep: c.keep.max(1),
            config_hash: hash(&config),
            config,
            per_epoch,
            last_step: step,
            last_time: Instant::now(),
            written: Vec::new(),
        })
    }

    /// Whether a checkpoint is due at `step`.
    pub fn due(&self, step: u64) -> bool {
        step > self.last_step
            && ((self.every_steps > 0 && step - self.last_step >= self.every_steps)
                || (self.every_seconds > 0.0
                    && self.last_time.elapsed().as_secs_f64() >= self.every_seconds))
    }

    /// Writes a checkpoint of `trainer` at `progress` (the export already closed its file
    /// and gave its state), atomically, and prunes old ones.
    pub fn write(
        &mut self,
        trainer: &Trainer,
        progress: &TrainProgress,
        loaded: &LoaderSummary,
        tally: &Acc,
        export: Option<ExportState>,
    ) -> Result<()> {
        let t = Instant::now();
        let step = trainer.steps();
        let mut tensors = trainer.state_tensors()?;
        let mut snapshots = Vec::new();
        if let Some(p) = trainer.publisher() {
            for (s, vars) in p.retained() {
                // The snapshot of the current step is published again from the weights.
                if s >= step {
                    continue;
                }
                snapshots.push(s);
                for (n, v) in vars {
                    tensors.push((
                        format!("snapshot/{s}/{n}"),
                        v.f_to_device(tch::Device::Cpu)?,
                    ));
                }
            }
        }
        let state = State {
            train: progress.clone(),
            snapshots,
            export,
            ..self.state(step, progress.next_seq, loaded, tally)
        };
        self.commit(t, state, Some(&tensors))
    }

    /// Writes a checkpoint of a curation (`saln-pipe curate`): `step` sub-batches exported,
    /// the loader continuing at global super-batch `next_seq`, the export's state.
    pub fn write_curation(
        &mut self,
        step: u64,
        next_seq: u64,
        loaded: &LoaderSummary,
        tally: &Acc,
        export: ExportState,
    ) -> Result<()> {
        let t = Instant::now();
        let state = State {
            export: Some(export),
            curation: true,
            ..self.state(step, next_seq, loaded, tally)
        };
        self.commit(t, state, None)
    }

    /// The state every checkpoint records: this run's configuration, `step`, the loader
    /// continuing at global super-batch `next_seq`, the tallies; no training progress past
    /// `next_seq`, no snapshots, no export, not a curation (the writers fill those in).
    fn state(&self, step: u64, next_seq: u64, loaded: &LoaderSummary, tally: &Acc) -> State {
        State {
            format: FORMAT,
            saln_version: env!("CARGO_PKG_VERSION").into(),
            config_hash: self.config_hash.clone(),
            config: self.config.clone(),
            step,
            loader: LoaderState::at(next_seq, self.per_epoch),
            train: TrainProgress {
                next_seq,
                ..TrainProgress::default()
            },
            loaded: loaded.clone(),
            tally: tally.clone(),
            snapshots: Vec::new(),
            export: None,
            curation: false,
        }
    }

    /// Writes `state` (and `tensors`) into a hidden folder, syncs, renames it to the
    /// checkpoint's name and prunes the old ones.
    fn commit(
        &mut self,
        t: Instant,
        state: State,
        tensors: Option<&[(String, Tensor)]>,
    ) -> Result<()> {
        let step = state.step;
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let name = folder_name(step);
        let tmp = self.dir.join(format!(".{name}.partial"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        if let Some(tensors) = tensors {
            let tensors_path = tmp.join("learner.safetensors");
            Tensor::write_safetensors(tensors, &tensors_path)?;
            sync(&tensors_path)?;
        }
        crate::stage::test_pause("checkpoint");
        let json = serde_json::to_vec_pretty(&state).map_err(|e| Error::Data {
            path: tmp.clone(),
            message: format!("cannot serialise the checkpoint state: {e}"),
        })?;
        let state_path = tmp.join("state.json");
        std::fs::write(&state_path, &json).map_err(|e| Error::io(&state_path, e))?;
        sync(&state_path)?;
        let done = self.dir.join(&name);
        if done.exists() {
            std::fs::remove_dir_all(&done).map_err(|e| Error::io(&done, e))?;
        }
        std::fs::rename(&tmp, &done).map_err(|e| Error::io(&done, e))?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        for (_, old) in list(&self.dir).into_iter().skip(self.keep) {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        let bytes = dir_bytes(&done);
        self.written.push((t.elapsed().as_secs_f64(), bytes));
        self.last_step = step;
        self.last_time = Instant::now();
        Ok(())
    }

    /// What this checkpointer wrote, for the report (`resumed_from_step`: the step of the
    /// checkpoint the process started from).
    pub fn report(&self, resumed_from_step: Option<u64>) -> crate::report::CheckpointReport {
        crate::report::CheckpointReport {
            dir: self.dir.clone(),
            written: self.written.len() as u64,
            mean_seconds: self.written.iter().map(|w| w.0).sum::<f64>()
                / self.written.len().max(1) as f64,
            last_bytes: self.written.last().map_or(0, |w| w.1),
            resumed_from_step,
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn sync(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}
