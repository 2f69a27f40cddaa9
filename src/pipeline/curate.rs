//! Curation without training: source -> loader -> extract + select -> Parquet.
//!
//! For users who want the selected set for another framework: `saln-pipe curate FILE`
//! runs the [`Curation`] front half for `trainer.epochs` epochs and writes what the
//! selector kept (see [`crate::export`]); no learner is built or trained. The export runs
//! on the calling thread, straight off the curated stream.
//!
//! Checkpoints (the `checkpoint:` section, as for `run`) hold the loader's position, the
//! selection's and the loader's figures and the export's state: its finished files are
//! kept, the file being written is closed at the checkpoint. [`curate_resume`]
//! (`saln-pipe curate FILE --resume`) continues from the newest one and writes exactly the
//! rows the uninterrupted curation would have. Curation policies do not depend on a
//! learner, so nothing else is needed.
use std::sync::Arc;
use std::time::Instant;

use crate::batch::LoaderSummary;
use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::export::{ExportItem, Exporter};
use crate::report::Report;
use crate::select::outcome::Acc;

use super::checkpoint::{self, Checkpointer};
use super::{
    check_config, curation_report, write_report, Cancel, Event, Launch, Msg, Observer, ResumeStart,
    StageStats,
};

/// Runs a curation-only pipeline: every epoch's selection is written to `cfg.export.dir`
/// and the report (no epochs, `export` filled in) to `cfg.report.path`. A run without
/// `--resume` empties `checkpoint.dir` first.
///
/// Returns `Err` when a stage or the export failed (the report, `status: failed`, is
/// written first); a cancelled run returns `Ok` with `status: cancelled`, its completed
/// epochs' files kept and the unfinished epoch's file deleted.
pub fn curate(cfg: &PipelineConfig, cancel: Cancel, observer: Option<Observer>) -> Result<Report> {
    curation(cfg, cancel, observer, false)
}

/// Like [`curate`], continuing from the newest complete checkpoint in `checkpoint.dir`
/// (`saln-pipe curate FILE --resume`); refused, naming every changed key, when the
/// configuration changed in a way that changes the result. The export's finished files
/// are kept and the rest is written again, so the folder ends up with the uninterrupted
/// curation's rows, none twice.
pub fn curate_resume(
    cfg: &PipelineConfig,
    cancel: Cancel,
    observer: Option<Observer>,
) -> Result<Report> {
    curation(cfg, cancel, observer, true)
}

fn curation(
    cfg: &PipelineConfig,
    cancel: Cancel,
    observer: Option<Observer>,
    resume: bool,
) -> Result<Report> {
    let start = Instant::now();
    let Some(export) = &cfg.export else {
        return Err(Error::config(
            "export",
            "curation writes Parquet: add an `export:` section with `dir:`",
        ));
    };
    let folder = cfg.checkpoint.curation_folder();
    let restored = if resume {
        check_config(cfg, false)?;
        Some(checkpoint::restore(&folder, cfg, true)?)
    } else {
        checkpoint::start_fresh(cfg, &folder)?;
        None
    };
    let mut launch = Launch::new(cfg).prepare_export();
    let mut done = 0u64;
    let mut carried = (LoaderSummary::default(), Acc::new());
    if let Some(r) = &restored {
        let s = &r.state;
        done = s.step;
        carried = (s.loaded.clone(), s.tally.clone());
        launch = launch.resume(ResumeStart::from_state(s));
    }
    let resumed_from_step = restored.as_ref().map(|r| r.state.step);
    let export_state = restored.and_then(|r| r.state.export);
    let (mut rx, handle) = launch.start(cancel.clone())?.into_parts();
    let info = handle.info.clone();
    let per_epoch = info.superbatches_per_epoch as u64;
    let observer: Observer = observer.unwrap_or_else(|| Arc::new(|_: &Event| {}));
    observer(&Event::Started {
        learner_samples: info.split.learner.len(),
        epochs: cfg.trainer.epochs,
        device: crate::device::name(info.device),
    });
    let total_samples = (info.split.learner.len() * cfg.trainer.epochs) as u64;
    let stream_start = Instant::now();
    let export_stats = Arc::new(StageStats::new("export"));
    let mut stats = handle.stats.clone();
    stats.push(export_stats.clone());

    let mut checkpointer = Checkpointer::new(cfg, folder.clone(), per_epoch, done);
    let mut exporter = None;
    let written = (|| -> Result<()> {
        let x = exporter.insert(Exporter::new(
            export,
            &cfg.provenance(),
            info.data.train.clone(),
        )?);
        if let Some(state) = export_state {
            x.resume(state);
        }
        let (mut loaded, mut tally) = carried;
        loop {
            let t = Instant::now();
            let Some(msg) = rx.blocking_recv() else {
                return Ok(());
            };
            // No cancel check here: a cancelled curation closes this channel after its
            // current super-batch, and an epoch delivered whole is kept whole.
            export_stats.waited(t.elapsed());
            let t = Instant::now();
            let next_seq = match msg {
                Msg::Data(mut sub) => {
                    loaded = std::mem::take(&mut sub.loaded);
                    tally = std::mem::take(&mut sub.tally);
                    let item = ExportItem::take_from(&mut sub)?;
                    let next_seq = sub.seq + 1;
                    drop(sub);
                    x.write(&item)?;
                    export_stats.item(item.record.ids.len());
                    done += 1;
                    // The last super-batch of an epoch: the checkpoint comes after its
                    // epoch's end, with the epoch's file finished.
                    (next_seq % per_epoch.max(1) != 0).then_some(next_seq)
                }
                Msg::EpochEnd { epoch } => {
                    x.end_epoch(epoch)?;
                    observer(&Event::Progress {
                        elapsed: start.elapsed().as_secs_f64(),
                        total_samples,
                        stages: stats.iter().map(|s| s.snapshot()).collect(),
                    });
                    Some((epoch as u64 + 1) * per_epoch)
                }
            };
            if let (Some(c), Some(next_seq)) = (&mut checkpointer, next_seq) {
                if c.due(done) {
                    c.write_curation(done, next_seq, &loaded, &tally, x.checkpoint()?)?;
                }
            }
            export_stats.busy(t.elapsed());
        }
    })();
    if written.is_err() {
        cancel.cancel();
    }
    drop(rx);
    let exported = exporter.map(|x| x.finish()).unwrap_or_default();
    let (summary, mut error) = handle.finish();
    if let Err(e) = written {
        // The export's failure is the root cause; upstream only saw a closed channel.
        error = Some(e.in_stage("export"));
    }
    let streaming_seconds = stream_start.elapsed().as_secs_f64();
    let mut report = curation_report(cfg, &info, summary, &stats, start, streaming_seconds)
        .ended(error.as_ref(), cancel.is_cancelled());
    report.export = Some(exported);
    report.checkpoints = checkpointer.map(|c| c.report(resumed_from_step));
    write_report(report, error, &cfg.report.path)
}
