//! The export stage: every curated sample (and, when asked, every rejected one) as a
//! Parquet row, so the selected set can be inspected, audited or trained on elsewhere.
//!
//! | file | what |
//! |---|---|
//! | [`writer`] | one file, written under a temporary name and renamed when complete |
//! | [`read`] | reading an export back (the `selection` source, tests) |
//!
//! The extract stage records each super-batch as the selector saw it
//! ([`SelectionRecord`], only when an export is configured); whoever consumes the curated
//! stream (the train stage's tee in `saln-pipe run`, the `loader::Loader`, or
//! `saln-pipe curate`) hands the records to an [`Exporter`], in order. The exporter writes
//! one row per sample: kept samples always, rejected ones with `include_rejected`, each
//! with its id, source, label, epoch, step, super-batch, score, rank, kept flag, policy and
//! keep ratio, and optionally the reference model's feature vector. The columns are
//! documented in `docs/parquet-schema.md`.
//!
//! Files: `epoch-EEEE-part-PPPP.parquet` in `export.dir`, one per epoch unless
//! `rows_per_file` caps them; zstd-compressed, row groups of `row_group_rows`. Each is
//! written under a temporary name and renamed only when complete; the file of an epoch that
//! never finished (a cancelled or failed run, a loader dropped mid-epoch) is discarded and
//! counted in [`ExportSummary::discarded_rows`]. So every `*.parquet` in the folder is whole,
//! and the rows of a completed run are exactly what the trainer received.
//!
//! ## Rank
//! `rank` is the sample's place in the order in which the selection rule prefers samples,
//! 0 first, ties broken by position in the super-batch; see [`ranks`].
//!
//! ## Example: write one super-batch, read it back
//! ```
//! use std::sync::Arc;
//! use saln::export::{ExportItem, Exporter};
//! use saln::extract::SelectionRecord;
//! use saln::source::{MemorySource, RawImage, Sample, Source};
//!
//! let dir = tempfile::tempdir()?;
//! let yaml = format!(
//!     "source: {{ idx: {{ dir: unused }} }}\nselection: {{ policy: uniform, keep_ratio: 0.5 }}\n\
//!      export: {{ dir: {}, include_rejected: true }}\n",
//!     dir.path().display()
//! );
//! let cfg = saln::config::PipelineConfig::from_yaml_str(&yaml, "inline")?;
//! let image = RawImage { channels: 1, height: 2, width: 2, data: vec![0; 4] };
//! let samples = (0..4)
//!     .map(|i| Sample { id: 100 + i, label: i as i64 % 2, image: image.clone() })
//!     .collect();
//! let source: Arc<dyn Source> = Arc::new(MemorySource::new("mem", samples, 2));
//!
//! let export = cfg.export.as_ref().unwrap();
//! saln::export::prepare(export)?;
//! let mut exporter = Exporter::new(export, &cfg.provenance(), source)?;
//! let record = SelectionRecord {
//!     indices: vec![3, 1, 0, 2],
//!     ids: vec![103, 101, 100, 102],
//!     labels: vec![1, 1, 0, 0],
//!     scores: vec![0.0; 4],
//!     kept: vec![true, false, false, true],
//!     feature_dim: 0,
//!     features: vec![],
//! };
//! exporter.write(&ExportItem { epoch: 0, superbatch: 0, record })?;
//! exporter.end_epoch(0)?;
//! let summary = exporter.finish();
//! assert_eq!((summary.files.len(), summary.kept_rows, summary.rejected_rows), (1, 2, 2));
//!
//! let rows = saln::export::read::read(dir.path(), false)?;
//! let kept: Vec<(u64, &str)> =
//!     rows.iter().filter(|r| r.kept).map(|r| (r.sample_id, r.source.as_str())).collect();
//! assert_eq!(kept, [(103, "mem#3"), (102, "mem#2")]);
//! assert!(rows.iter().all(|r| r.policy == "uniform" && r.keep_ratio == 0.5));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use crate::error::Issues;
use crate::error::{Error, Result};
use crate::select::outcome::{RecordMode, SelectionRecord, SubBatch};
use crate::select::{Policy, Rule, SelectionConfig};
use crate::source::Source;
use crate::stage::{Cancel, Msg, StageStats};

pub use crate::source::exported as read;
pub mod writer;

pub use read::ExportRow;
use writer::{PartWriter, Rows};

/// Which extract-stage record an export configuration needs (`None`: no export).
pub fn record_mode(cfg: Option<&ExportConfig>) -> RecordMode {
    match cfg {
        None => RecordMode::Off,
        Some(e) if e.include_features => RecordMode::Features,
        Some(_) => RecordMode::Scores,
    }
}

/// What an export's file metadata say about the run that wrote it (see
/// `docs/parquet-schema.md`): its selection settings, its seed and its whole configuration
/// as JSON.
#[derive(Debug, Clone)]
pub struct Provenance {
    /// The `selection:` section.
    pub selection: SelectionConfig,
    /// The master seed.
    pub seed: u64,
    /// The run's configuration, every default filled in, as JSON.
    pub config_json: String,
}

/// The key/value metadata of every file of an export: `saln.version`, `saln.policy`,
/// `saln.rule`, `saln.weights`, `saln.keep_ratio`, `saln.seed` and `saln.config` (the
/// run's whole configuration as JSON); `docs/parquet-schema.md`. `saln.ray.write_parquet`
/// writes the same.
pub fn metadata(run: &Provenance) -> Vec<KeyValue> {
    let sel = &run.selection;
    let weights = serde_json::to_value(sel.weights)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    vec![
        KeyValue::new("saln.version".into(), env!("CARGO_PKG_VERSION").to_string()),
        KeyValue::new("saln.policy".into(), sel.policy.name().to_string()),
        KeyValue::new("saln.rule".into(), sel.rule.name().to_string()),
        KeyValue::new("saln.weights".into(), weights),
        KeyValue::new("saln.keep_ratio".into(), sel.keep_ratio.to_string()),
        KeyValue::new("saln.seed".into(), run.seed.to_string()),
        KeyValue::new("saln.config".into(), run.config_json.clone()),
    ]
}

/// The rank of each sample in the order the selection prefers it (one definition, in
/// `select`, shared with the selection rules).
pub use crate::select::ranks;

/// `epoch-EEEE-part-PPPP.parquet`.
pub fn file_name(epoch: usize, part: usize) -> String {
    format!("epoch-{epoch:04}-part-{part:04}.parquet")
}

fn is_export_name(name: &str) -> bool {
    let b = name.as_bytes();
    name.len() == "epoch-0000-part-0000.parquet".len()
        && name.starts_with("epoch-")
        && &name[10..16] == "-part-"
        && name.ends_with(".parquet")
        && b[6..10].iter().chain(&b[16..20]).all(u8::is_ascii_digit)
}

/// Makes `cfg.dir` ready for a new export: creates it, deletes temporary files a killed
/// run left, and refuses a folder that already holds Parquet files (an export mixed with
/// an older one would be read as one set) unless `overwrite` is set, in which case the
/// older export's files are deleted. Call once, before the run starts.
pub fn prepare(cfg: &ExportConfig) -> Result<()> {
    let dir = &cfg.dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut ours = Vec::new();
    let mut foreign = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".epoch-") && name.ends_with(".parquet.partial") {
            std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
        } else if is_export_name(&name) {
            ours.push(e.path());
        } else if name.ends_with(".parquet") {
            foreign.push(name);
        }
    }
    if !foreign.is_empty() {
        return Err(Error::Data {
            path: dir.clone(),
            message: format!(
                "holds Parquet files saln did not write ({}); choose an empty folder for `export.dir`",
                foreign.join(", ")
            ),
        });
    }
    if !ours.is_empty() {
        if !cfg.overwrite {
            return Err(Error::Data {
                path: dir.clone(),
                message: format!(
                    "already holds an export ({} files); choose another `export.dir`, remove them, \
                     or set `export.overwrite: true`",
                    ours.len()
                ),
            });
        }
        for p in ours {
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

/// Where an [`Exporter`] stands after [`Exporter::checkpoint`]: its finished files and
/// counters, and the numbering of what comes next.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportState {
    /// Epoch of the last rows written (`None` at an epoch boundary).
    pub epoch: Option<usize>,
    /// Part number of the next file of that epoch.
    pub part_no: usize,
    /// Super-batches exported (the `step` column of the next rows).
    pub step: u64,
    /// The finished files and their row counts.
    pub summary: ExportSummary,
}

/// Readies `cfg.dir` for a resumed export: keeps the finished files in `keep` (those of
/// the checkpoint), removes every other export file and temporary file saln wrote there
/// (what the killed run wrote after its checkpoint, complete or not), and refuses a folder
/// that lacks one of `keep` or holds Parquet files saln did not write.
pub fn prepare_resume(cfg: &ExportConfig, keep: &[String]) -> Result<()> {
    let dir = &cfg.dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut foreign = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let partial = name.starts_with(".epoch-") && name.ends_with(".parquet.partial");
        if partial || (is_export_name(&name) && !keep.contains(&name)) {
            std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
        } else if name.ends_with(".parquet") && !is_export_name(&name) {
            foreign.push(name);
        }
    }
    if !foreign.is_empty() {
        return Err(Error::Data {
            path: dir.clone(),
            message: format!(
                "holds Parquet files saln did not write ({}); the resumed export cannot continue there",
                foreign.join(", ")
            ),
        });
    }
    if let Some(missing) = keep.iter().find(|f| !dir.join(f).is_file()) {
        return Err(Error::Data {
            path: dir.clone(),
            message: format!(
                "lacks `{missing}`, written before the checkpoint; cannot resume the export (run without --resume to start over)"
            ),
        });
    }
    Ok(())
}

/// One curated super-batch on its way to the exporter.
#[derive(Debug, Clone)]
pub struct ExportItem {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Global super-batch number.
    pub superbatch: u64,
    /// The super-batch as the selector saw it.
    pub record: SelectionRecord,
}

impl ExportItem {
    /// Takes the record out of `sub` (which keeps its tensors for the trainer). An error
    /// when the extract stage recorded nothing (the pipeline was started without export).
    pub fn take_from(sub: &mut SubBatch) -> Result<ExportItem> {
        let record = sub.record.take().ok_or_else(|| Error::Selection {
            superbatch: sub.seq,
            message: "no selection record to export (the run was started without `export`)".into(),
        })?;
        Ok(ExportItem {
            epoch: sub.epoch,
            superbatch: sub.seq,
            record,
        })
    }
}

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExportSummary {
    /// The export folder.
    pub dir: PathBuf,
    /// Names of the complete files, in the order written.
    pub files: Vec<String>,
    /// Rows in those files.
    pub rows: u64,
    /// Of which kept samples.
    pub kept_rows: u64,
    /// Of which rejected samples (`include_rejected`).
    pub rejected_rows: u64,
    /// Rows of an epoch that never completed (cancelled or failed run, loader dropped
    /// mid-epoch): their file was deleted, not renamed.
    pub discarded_rows: u64,
}

/// Writes curated super-batches as Parquet rows. Feed it [`ExportItem`]s in order with
/// [`Exporter::write`], mark each epoch's end with [`Exporter::end_epoch`], and call
/// [`Exporter::finish`] at the end. Dropping it (or finishing it) with an epoch still open
/// deletes that epoch's unfinished file.
pub struct Exporter {
    cfg: ExportConfig,
    source: Arc<dyn Source>,
    policy: Policy,
    policy_name: String,
    rule: Rule,
    keep_ratio: f64,
    props: WriterProperties,
    schema: Option<SchemaRef>,
    part: Option<PartWriter>,
    epoch: Option<usize>,
    part_no: usize,
    step: u64,
    pending: (u64, u64),
    summary: ExportSummary,
}

impl Exporter {
    /// An exporter for a run described by `run` whose training samples come from `source`
    /// (used to name each sample's origin). Call [`prepare`] on the folder first.
    pub fn new(cfg: &ExportConfig, run: &Provenance, source: Arc<dyn Source>) -> Result<Exporter> {
        let sel = &run.selection;
        let policy_name = sel.policy.name().to_string();
        let meta = metadata(run);
        let props = writer::properties(cfg.zstd_level, cfg.row_group_rows, meta)
            .map_err(|e| Error::config("export.zstd_level", e))?;
        Ok(Exporter {
            cfg: cfg.clone(),
            source,
            policy: sel.policy,
            policy_name,
            rule: sel.rule,
            keep_ratio: sel.keep_ratio,
            props,
            schema: None,
            part: None,
            epoch: None,
            part_no: 0,
            step: 0,
            pending: (0, 0),
            summary: ExportSummary {
                dir: cfg.dir.clone(),
                ..Default::default()
            },
        })
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::Data {
            path: self.cfg.dir.clone(),
            message: message.into(),
        }
    }

    /// Writes the rows of one super-batch. Its `step` is the number of super-batches
    /// written before it in this run (the optimizer step that trained on its kept samples).
    pub fn write(&mut self, item: &ExportItem) -> Result<()> {
        let r = &item.record;
        let n = r.ids.len();
        let (sb, epoch) = (item.superbatch, item.epoch);
        if [
            r.indices.len(),
            r.labels.len(),
            r.scores.len(),
            r.kept.len(),
        ] != [n; 4]
            || r.features.len() != n * r.feature_dim
        {
            return Err(self.err(format!(
                "super-batch {sb}: selection record columns disagree in length"
            )));
        }
        if self.epoch != Some(epoch) {
            self.close_part()?;
            self.epoch = Some(epoch);
            self.part_no = 0;
        }
        let schema = match &self.schema {
            Some(s) => s.clone(),
            None => {
                let dim = match (self.cfg.include_features, r.feature_dim) {
                    (false, _) => None,
                    (true, 0) => {
                        return Err(self.err(format!(
                        "super-batch {sb}: `include_features` is set but no features were recorded"
                    )))
                    }
                    (true, d) => Some(d),
                };
                let s = writer::schema(dim);
                self.schema = Some(s.clone());
                s
            }
        };
        if let Ok(f) = schema.field_with_name("features") {
            if let arrow::datatypes::DataType::FixedSizeList(_, d) = f.data_type() {
                if *d as usize != r.feature_dim {
                    return Err(self.err(format!(
                        "super-batch {sb}: feature vectors of length {} after earlier ones of length {d}",
                        r.feature_dim
                    )));
                }
            }
        }
        let rank = ranks(self.policy, self.rule, &r.scores);
        let step = self.step;
        let mut rows = Rows::default();
        let (mut kept, mut rejected) = (0u64, 0u64);
        for (p, &rank_p) in rank.iter().enumerate() {
            if !r.kept[p] && !self.cfg.include_rejected {
                continue;
            }
            if r.kept[p] {
                kept += 1;
            } else {
                rejected += 1;
            }
            rows.sample_id.push(r.ids[p] as i64);
            rows.source.push(self.source.locate(r.indices[p]));
            rows.source_index.push(r.indices[p] as i64);
            rows.label.push(r.labels[p]);
            rows.epoch.push(epoch as i32);
            rows.step.push(step as i64);
            rows.superbatch.push(sb as i64);
            rows.position.push(p as i32);
            rows.superbatch_size.push(n as i32);
            rows.score.push(r.scores[p]);
            rows.rank.push(rank_p as i32);
            rows.kept.push(r.kept[p]);
            rows.policy.push(self.policy_name.clone());
            rows.keep_ratio.push(self.keep_ratio);
            if self.cfg.include_features {
                let d = r.feature_dim;
                rows.features
                    .extend_from_slice(&r.features[p * d..(p + 1) * d]);
            }
        }
        self.step += 1;
        if rows.len() == 0 {
            return Ok(());
        }
        let batch = rows
            .into_batch(&schema)
            .map_err(|e| self.err(format!("super-batch {sb}: {e}")))?;
        if self.part.is_none() {
            let path = self.cfg.dir.join(file_name(epoch, self.part_no));
            self.part = Some(PartWriter::create(&path, schema, self.props.clone())?);
            self.part_no += 1;
        }
        let part = self.part.as_mut().expect("opened above");
        part.write(&batch)?;
        self.pending.0 += kept;
        self.pending.1 += rejected;
        if self.cfg.rows_per_file.is_some_and(|max| part.rows() >= max) {
            self.close_part()?;
        }
        Ok(())
    }

    fn close_part(&mut self) -> Result<()> {
        if let Some(p) = self.part.take() {
            let (path, rows) = p.finish()?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            self.summary.files.push(name.unwrap_or_default());
            self.summary.rows += rows as u64;
            self.summary.kept_rows += self.pending.0;
            self.summary.rejected_rows += self.pending.1;
        }
        self.pending = (0, 0);
        Ok(())
    }

    /// Every super-batch of `epoch` has been written: its last file is completed.
    pub fn end_epoch(&mut self, epoch: usize) -> Result<()> {
        if self.epoch.is_some_and(|e| e != epoch) {
            return Err(self.err(format!(
                "end of epoch {epoch} while writing epoch {:?}",
                self.epoch
            )));
        }
        self.close_part()?;
        self.epoch = None;
        Ok(())
    }
    /// Closes the file being written (so every row so far is in a finished file) and
    /// returns where the export stands, for a checkpoint. The next row opens a new part of
    /// the same epoch.
    pub fn checkpoint(&mut self) -> Result<ExportState> {
        self.close_part()?;
        Ok(ExportState {
            epoch: self.epoch,
            part_no: self.part_no,
            step: self.step,
            summary: self.summary.clone(),
        })
    }

    /// Continues an export from `state` (see [`Exporter::checkpoint`]); the folder was
    /// readied with [`prepare_resume`].
    pub fn resume(&mut self, state: ExportState) {
        self.epoch = state.epoch;
        self.part_no = state.part_no;
        self.step = state.step;
        self.summary = ExportSummary {
            dir: self.cfg.dir.clone(),
            ..state.summary
        };
    }

    /// What was written. A file still open (its epoch never ended) is deleted and its rows
    /// are counted as discarded.
    pub fn finish(mut self) -> ExportSummary {
        if let Some(p) = self.part.take() {
            self.summary.discarded_rows += p.rows() as u64;
        }
        std::mem::take(&mut self.summary)
    }
}

/// The exporter on its own thread (`saln-export`), fed through a bounded channel, so that
/// compressing and writing never delay the trainer by more than the channel's depth.
pub struct ExportStage {
    tx: Option<tokio::sync::mpsc::Sender<Msg<ExportItem>>>,
    handle: JoinHandle<Result<ExportSummary>>,
    tee: Option<JoinHandle<Result<()>>>,
    /// The stage's counters (`export`).
    pub stats: Arc<StageStats>,
}

impl ExportStage {
    /// Starts `exporter` on its thread; its channel holds `capacity` super-batches.
    pub fn spawn(exporter: Exporter, capacity: usize, cancel: &Cancel) -> Result<ExportStage> {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        let stats = Arc::new(StageStats::new("export"));
        let handle = {
            let st = stats.clone();
            crate::stage::spawn_stage("export", cancel, move || run_export(exporter, rx, &st))?
        };
        Ok(ExportStage {
            tx: Some(tx),
            handle,
            tee: None,
            stats,
        })
    }

    /// The stage's input. Send `Msg::Data` per curated super-batch and `Msg::EpochEnd`
    /// after each epoch, in order; a send fails once the stage has stopped.
    pub fn sender(&self) -> Option<&tokio::sync::mpsc::Sender<Msg<ExportItem>>> {
        self.tx.as_ref()
    }

    /// Puts a tee (`saln-tee`) on a curated stream: every sub-batch goes on, unchanged
    /// but for its record, to the returned receiver (of `capacity`), and its record to the
    /// exporter. Used by `saln-pipe run` between the extract and the train stage.
    pub fn tee(
        &mut self,
        input: tokio::sync::mpsc::Receiver<Msg<SubBatch>>,
        capacity: usize,
        cancel: &Cancel,
    ) -> Result<tokio::sync::mpsc::Receiver<Msg<SubBatch>>> {
        let export = self
            .tx
            .clone()
            .ok_or_else(|| Error::Cancelled.in_stage("tee"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        self.tee = Some(crate::stage::spawn_stage("tee", cancel, move || {
            run_tee(input, tx, export)
        })?);
        Ok(rx)
    }

    /// Closes the input and waits for the tee and the exporter; returns what was written.
    pub fn finish(mut self) -> Result<ExportSummary> {
        self.tx.take();
        let tee = self.tee.take().map(|t| crate::stage::join(t, "tee"));
        let summary = crate::stage::join(self.handle, "export");
        match (summary, tee) {
            (Err(e), _) | (Ok(_), Some(Err(e))) => Err(e),
            (Ok(s), _) => Ok(s),
        }
    }
}

/// Writes everything it is sent until its input closes, also in a cancelled run: whether
/// an epoch is complete is decided by its `EpochEnd`, not by the cancel flag, so an epoch
/// that was delivered whole is kept whole. Only its own errors stop it early.
fn run_export(
    mut exporter: Exporter,
    mut input: tokio::sync::mpsc::Receiver<Msg<ExportItem>>,
    stats: &StageStats,
) -> Result<ExportSummary> {
    loop {
        let t = Instant::now();
        let Some(msg) = input.blocking_recv() else {
            break;
        };
        stats.waited(t.elapsed());
        let t = Instant::now();
        match msg {
            Msg::Data(item) => {
                exporter.write(&item)?;
                stats.item(item.record.ids.len());
            }
            Msg::EpochEnd { epoch } => exporter.end_epoch(epoch)?,
        }
        stats.busy(t.elapsed());
    }
    Ok(exporter.finish())
}

/// Forwards until its input closes (the curation stopped) or an output closes (the trainer
/// or the exporter stopped). It does not look at the cancel flag: the stages around it do,
/// and what reached the trainer must reach the exporter.
fn run_tee(
    mut input: tokio::sync::mpsc::Receiver<Msg<SubBatch>>,
    out: tokio::sync::mpsc::Sender<Msg<SubBatch>>,
    export: tokio::sync::mpsc::Sender<Msg<ExportItem>>,
) -> Result<()> {
    while let Some(msg) = input.blocking_recv() {
        let (to_export, to_train) = match msg {
            Msg::Data(mut sub) => (Msg::Data(ExportItem::take_from(&mut sub)?), Msg::Data(sub)),
            Msg::EpochEnd { epoch } => (Msg::EpochEnd { epoch }, Msg::EpochEnd { epoch }),
        };
        // A closed end means that stage stopped; its own result says why.
        if export.blocking_send(to_export).is_err() || out.blocking_send(to_train).is_err() {
            break;
        }
    }
    Ok(())
}

// ---- configuration ----

/// Parquet export of the curated set (`export:` in the pipeline YAML).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Folder for the Parquet files (created when missing). It must not hold an earlier
    /// export unless `overwrite` is set.
    pub dir: PathBuf,
    /// Also write the samples the policy rejected (`kept = false`).
    #[serde(default)]
    pub include_rejected: bool,
    /// Also write each sample's feature vector from the reference model (a fixed-size list
    /// of float32). Loads the reference model even for policies that need no features.
    #[serde(default)]
    pub include_features: bool,
    /// Start a new file once the current one holds this many rows (checked after each
    /// super-batch, so a file may hold up to one super-batch more). Absent: one file per
    /// epoch.
    #[serde(default)]
    pub rows_per_file: Option<usize>,
    /// Rows per Parquet row group (the unit readers skip or fetch at once).
    #[serde(default = "d_row_group_rows")]
    pub row_group_rows: usize,
    /// zstd compression level, 1 (fast) to 22 (small).
    #[serde(default = "d_zstd_level")]
    pub zstd_level: i32,
    /// Delete the files of an earlier export in `dir` instead of refusing to start.
    #[serde(default)]
    pub overwrite: bool,
    /// Depth of the channel to the export stage, in super-batches.
    #[serde(default = "crate::stage::d_capacity")]
    pub channel: usize,
}

pub(crate) fn d_row_group_rows() -> usize {
    65_536
}
pub(crate) fn d_zstd_level() -> i32 {
    3
}

impl ExportConfig {
    /// Defaults for everything but the folder.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ExportConfig {
            dir: dir.into(),
            include_rejected: false,
            include_features: false,
            rows_per_file: None,
            row_group_rows: d_row_group_rows(),
            zstd_level: d_zstd_level(),
            overwrite: false,
            channel: crate::stage::d_capacity(),
        }
    }

    /// Adds this section's problems to `v`.
    pub fn validate(&self, v: &mut Issues) {
        v.check(!self.dir.as_os_str().is_empty(), "export.dir", || {
            "must name a folder".into()
        });
        v.check(
            self.rows_per_file.is_none_or(|n| n > 0),
            "export.rows_per_file",
            || "must be at least 1 (or absent for one file per epoch)".into(),
        );
        v.check(self.row_group_rows > 0, "export.row_group_rows", || {
            "must be at least 1".into()
        });
        v.check(
            (1..=22).contains(&self.zstd_level),
            "export.zstd_level",
            || format!("must be in 1..=22, got {}", self.zstd_level),
        );
        v.check(self.channel > 0, "export.channel", || {
            "must be at least 1".into()
        });
    }

    /// The folder, as a path.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_names_are_recognised_and_nothing_else() {
        assert!(is_export_name(&file_name(3, 12)));
        assert!(!is_export_name("epoch-0003-part-0012.parquet.partial"));
        assert!(!is_export_name("epoch-00a3-part-0012.parquet"));
        assert!(!is_export_name("data.parquet"));
    }

    #[test]
    fn prepare_refuses_an_old_export_unless_overwrite_and_clears_partials() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = ExportConfig::new(dir.path());
        let old = dir.path().join(file_name(0, 0));
        let stale = dir.path().join(format!(".{}.partial", file_name(1, 0)));
        std::fs::write(&old, b"x").unwrap();
        std::fs::write(&stale, b"x").unwrap();
        let e = prepare(&cfg).unwrap_err().to_string();
        assert!(e.contains("export.overwrite"), "{e}");
        assert!(!stale.exists(), "a killed run's temporary file is removed");
        cfg.overwrite = true;
        prepare(&cfg).unwrap();
        assert!(!old.exists());
        std::fs::write(dir.path().join("mine.parquet"), b"x").unwrap();
        let e = prepare(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("mine.parquet"),
            "foreign files are never deleted: {e}"
        );
    }

    #[test]
    fn ranks_follow_each_rule() {
        let v = [0.3f32, -0.2, 0.0, -0.7];
        assert_eq!(ranks(Policy::Saln, Rule::Boundary, &v), vec![2, 1, 0, 3]);
        assert_eq!(ranks(Policy::Saln, Rule::Balanced, &v), vec![1, 2, 3, 0]);
        assert_eq!(ranks(Policy::None, Rule::Extremes, &v), vec![0, 1, 2, 3]);
    }
}
