//! Curation without training: source -> loader -> extract + select -> Parquet.
//!
//! For users who want the selected set for another framework: `saln-pipe curate FILE`
//! runs the [`Curation`] front half for `trainer.epochs` epochs and writes what the
//! selector kept (see [`crate::export`]); no learner is built or trained. The export runs
//! on the calling thread, straight off the curated stream.
use std::sync::Arc;
use std::time::Instant;

use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::export::{ExportItem, Exporter};
use crate::report::Report;

use super::{curation_report, write_report, Cancel, Event, Launch, Msg, Observer, StageStats};

/// Runs a curation-only pipeline: every epoch's selection is written to `cfg.export.dir`
/// and the report (no epochs, `export` filled in) to `cfg.report.path`.
///
/// Returns `Err` when a stage or the export failed (the report, `status: failed`, is
/// written first); a cancelled run returns `Ok` with `status: cancelled`, its completed
/// epochs' files kept and the unfinished epoch's file deleted.
pub fn curate(cfg: &PipelineConfig, cancel: Cancel, observer: Option<Observer>) -> Result<Report> {
    let start = Instant::now();
    let Some(export) = &cfg.export else {
        return Err(Error::config(
            "export",
            "curation writes Parquet: add an `export:` section with `dir:`",
        ));
    };
    let (mut rx, handle) = Launch::new(cfg)
        .prepare_export()
        .start(cancel.clone())?
        .into_parts();
    let info = handle.info.clone();
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

    let mut exporter = None;
    let written = (|| -> Result<()> {
        let x = exporter.insert(Exporter::new(
            export,
            &cfg.provenance(),
            info.data.train.clone(),
        )?);
        loop {
            let t = Instant::now();
            let Some(msg) = rx.blocking_recv() else {
                return Ok(());
            };
            // No cancel check here: a cancelled curation closes this channel after its
            // current super-batch, and an epoch delivered whole is kept whole.
            export_stats.waited(t.elapsed());
            let t = Instant::now();
            match msg {
                Msg::Data(mut sub) => {
                    let item = ExportItem::take_from(&mut sub)?;
                    drop(sub);
                    x.write(&item)?;
                    export_stats.item(item.record.ids.len());
                }
                Msg::EpochEnd { epoch } => {
                    x.end_epoch(epoch)?;
                    observer(&Event::Progress {
                        elapsed: start.elapsed().as_secs_f64(),
                        total_samples,
                        stages: stats.iter().map(|s| s.snapshot()).collect(),
                    });
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
    write_report(report, error, &cfg.report.path)
}
