//! `saln-pipe`: the command line over the saln library.
//!
//! Exit codes: 0 success; 1 the run failed (a stage error, named in the message);
//! 2 the configuration or the command line is invalid; 130 cancelled by Ctrl-C or SIGTERM
//! (the report of what completed is still written).
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use saln::config::PipelineConfig;
use saln::pipeline::{self, Cancel};
use saln::report::{Report, Status};

mod bench;
mod cli;
mod eval;
mod progress;

use cli::{BenchWhat, Cli, Command};
mod signals;

// The decode workers allocate and free image-sized buffers (0.5 MB each) at a high rate;
// glibc's malloc hands such blocks back to the kernel and faults them in again, which cost
// a third of the loader's CPU time in measurements. mimalloc keeps them.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn load(path: &std::path::Path) -> Result<PipelineConfig, ExitCode> {
    PipelineConfig::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

type Job = fn(&PipelineConfig, Cancel, Option<pipeline::Observer>) -> saln::Result<Report>;

/// Prints a library error and gives the exit code: 2 for an invalid configuration, else 1.
fn fail(e: &saln::Error) -> ExitCode {
    eprintln!("error: {e}");
    match e {
        saln::Error::ConfigInvalid { .. } => ExitCode::from(2),
        _ => ExitCode::from(1),
    }
}

/// Runs `job` on a blocking thread, stopped by `cancel` (a signal, see `signals`); a signal
/// that came before the job started still gives a report, with `status: cancelled`.
async fn run(cfg: PipelineConfig, job: Job, cancel: Cancel) -> anyhow::Result<ExitCode> {
    let display = Arc::new(progress::Display::new());
    let observer: pipeline::Observer = {
        let display = display.clone();
        Arc::new(move |e| display.event(e))
    };
    let job = {
        let (cfg, cancel) = (cfg.clone(), cancel.clone());
        tokio::task::spawn_blocking(move || job(&cfg, cancel, Some(observer)))
    };
    let result = job.await.context("pipeline thread")?;
    display.finish();
    let report_path = cfg.report.path.display().to_string();
    match result {
        Ok(report) => {
            eprintln!("saln: report written to {report_path}");
            let d = &report.data;
            if d.skipped + d.test_skipped > 0 {
                eprintln!(
                    "saln: skipped as unreadable (on_error: skip): {} training samples (over all epochs), {} test samples; the report lists the first",
                    d.skipped, d.test_skipped
                );
                for s in d.first_skipped.iter().chain(&d.test_first_skipped).take(5) {
                    eprintln!("  skipped: {s}");
                }
            }
            if let Some(acc) = report.final_test_accuracy {
                println!(
                    "final test accuracy {:.2}% ({})",
                    100.0 * acc,
                    trained_on(&report)
                );
            }
            if let Some(line) = report.overlap.summary() {
                eprintln!("saln: {line}");
            }
            if let Some(x) = &report.export {
                println!(
                    "export: {} rows ({} kept, {} rejected) in {} files under {}",
                    x.rows,
                    x.kept_rows,
                    x.rejected_rows,
                    x.files.len(),
                    x.dir.display()
                );
            }
            Ok(match report.status {
                Status::Completed => ExitCode::SUCCESS,
                Status::Cancelled => ExitCode::from(130),
                Status::Failed => ExitCode::from(1),
            })
        }
        Err(e @ saln::Error::ConfigInvalid { .. }) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => {
            eprintln!("error: {e}");
            if cfg.report.path.exists() {
                eprintln!("saln: report of what completed written to {report_path}");
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// What the final accuracy line says about the images trained on and the cost of selection:
/// the selection time is compared with the forward pass only when the policy ran one, and
/// `policy: none` has no selection figure at all (it keeps every sample).
fn trained_on(report: &Report) -> String {
    let s = &report.selection;
    let images = format!("{} of {} images trained on", s.samples_kept, s.samples_in);
    let policy = report.config.selection.policy;
    if policy == saln::select::Policy::None {
        format!("{images}, policy none: no selection")
    } else if policy.needs_reference() && s.ms_per_forward > 0.0 {
        format!(
            "{images}, selection {:.2} ms per super-batch = {:.1}% of the forward pass",
            s.ms_per_selection,
            100.0 * s.selection_over_forward
        )
    } else {
        format!(
            "{images}, selection {:.2} ms per super-batch",
            s.ms_per_selection
        )
    }
}

/// `saln-pipe run` on a pipeline with a `loader_only:` block.
/// Ctrl-C / SIGTERM stop the run after the current super-batch; the report still gets
/// written, with `status: cancelled`.
fn run_loader_only(cfg: &PipelineConfig, cancel: Cancel) -> ExitCode {
    let result = saln::pipeline::loader_only::run(cfg, cancel);
    match result {
        Ok(r) => {
            println!(
                "loader-only: {} images ({} skipped) of {}x{}x{} in {:.2}s with {} workers: {:.1} images/s",
                r.images,
                r.skipped,
                r.output_shape[0],
                r.output_shape[1],
                r.output_shape[2],
                r.load_seconds,
                cfg.augment.workers,
                r.images_per_second
            );
            if let Some(ms) = r.cpu_ms_per_image {
                println!("loader-only: {ms:.2} CPU ms per image");
            }
            for s in r.first_skipped.iter().take(5) {
                eprintln!("skipped: {s}");
            }
            eprintln!("saln: report written to {}", cfg.report.path.display());
            match r.status {
                Status::Cancelled => ExitCode::from(130),
                _ => ExitCode::SUCCESS,
            }
        }
        Err(e) => crate::fail(&e),
    }
}

fn main() -> ExitCode {
    // Before anything else, so that a signal at any moment is handled (see `signals`).
    let signals = match signals::Signals::install() {
        Ok(s) => s,
        Err(code) => return code,
    };
    let cli = Cli::parse();
    match cli.command {
        Command::Eval { config } => eval::eval(&config, signals.graceful()),
        Command::Run {
            config,
            seed,
            report,
            resume,
        } => run_command(&config, seed, report, resume, &signals),
        Command::Curate {
            config,
            out,
            overwrite,
            report,
            resume,
        } => curate(&config, out, overwrite, report, resume, &signals),
        // The others do not watch the cancel flag: a signal ends them at once, with 130.
        Command::Viz {
            config,
            superbatch,
            out,
        } => {
            signals.abrupt();
            match load(&config) {
                Ok(cfg) => eval::viz(&cfg, superbatch, &out),
                Err(code) => code,
            }
        }
        Command::Validate { config } => {
            signals.abrupt();
            match std::fs::read_to_string(&config) {
                Ok(t) if saln::eval::is_eval_yaml(&t) => eval::validate(&config),
                _ => validate(&config),
            }
        }
        Command::Bench {
            what: BenchWhat::Selection(args),
        } => {
            signals.abrupt();
            match bench::selection(&args) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Pretrain { config, force } => {
            signals.abrupt();
            pretrain(&config, force)
        }
        Command::Shard {
            config,
            out,
            format,
            per_shard,
        } => {
            signals.abrupt();
            match load(&config) {
                Ok(cfg) => shard(&cfg, &out, &format, per_shard),
                Err(code) => code,
            }
        }
    }
}

/// `saln-pipe shard`: the training and test splits of the pipeline's source as shards.
fn shard(cfg: &PipelineConfig, out: &std::path::Path, format: &str, per_shard: usize) -> ExitCode {
    use saln::source::stream::{write::write_shards, StreamFormat};
    let (fmt, ext) = match format {
        "webdataset" | "wds" | "tar" => (StreamFormat::Webdataset, "tar"),
        "parquet" => (StreamFormat::Parquet, "parquet"),
        f => {
            eprintln!("error: --format: `{f}` is not `webdataset` or `parquet`");
            return ExitCode::from(2);
        }
    };
    if cfg.source.stream.is_some() {
        eprintln!("error: source: already a stream of shards");
        return ExitCode::from(2);
    }
    let data = match saln::source::open(&cfg.source) {
        Ok(d) => d,
        Err(e) => return fail(&e),
    };
    let mut written = Vec::new();
    for (name, src) in [("train", &data.train), ("test", &data.test)] {
        match write_shards(src.as_ref(), out, name, fmt, per_shard) {
            Ok(v) => {
                eprintln!(
                    "saln: {} {name} samples in {} shards under {}",
                    src.len(),
                    v.len(),
                    out.display()
                );
                written.push(v.len());
            }
            Err(e) => return fail(&e),
        }
    }
    let range = |name: &str, n: usize| {
        if n == 1 {
            format!("{}/{name}-000000.{ext}", out.display())
        } else {
            format!("{}/{name}-{{000000..{:06}}}.{ext}", out.display(), n - 1)
        }
    };
    println!(
        "source:\n  holdout: 0\n  stream:\n    format: {}\n    train: \"{}\"\n    test: \"{}\"",
        if fmt == StreamFormat::Parquet {
            "parquet"
        } else {
            "webdataset"
        },
        range("train", written[0]),
        range("test", written[1])
    );
    ExitCode::SUCCESS
}

/// `saln-pipe validate FILE`: every problem of a pipeline file and of what it needs, in one
/// run, ordered by line (see `saln::config::check`).
fn validate(config: &std::path::Path) -> ExitCode {
    let checked = saln::config::check::check_file(config, true);
    for i in &checked.issues {
        eprintln!("error: {}: {i}", config.display());
    }
    if checked.issues.is_empty() {
        println!("{}: ok", config.display());
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

/// `saln-pipe pretrain FILE [--force]`.
fn pretrain(config: &std::path::Path, force: bool) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if cfg.extractor.kind != saln::extract::backbone::ExtractorKind::Reference {
        println!("extractor.kind is not `reference`: its model comes from its own file, nothing to pretrain");
        return ExitCode::SUCCESS;
    }
    if cfg.extractor.weights.exists() && !force {
        println!(
            "reference weights {} exist; keeping them (--force retrains)",
            cfg.extractor.weights.display()
        );
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "saln: pretraining the reference CNN on {} held-out samples",
        cfg.source.holdout
    );
    let r = saln::pipeline::pretrain(&cfg, &mut |e, loss| {
        eprintln!("pretrain epoch {:>2}  loss {loss:.4}", e + 1)
    });
    match r {
        Ok(s) => {
            println!(
                "reference model: {} samples, {} epochs, test accuracy {:.2}%, {:.1}s -> {}",
                s.samples,
                s.epochs,
                100.0 * s.test_accuracy,
                s.seconds,
                s.weights.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `saln-pipe run FILE [--seed N] [--report PATH] [--resume]`: the whole pipeline, or the loader alone
/// when the file has a `loader_only:` block.
fn run_command(
    config: &std::path::Path,
    seed: Option<u64>,
    report: Option<std::path::PathBuf>,
    resume: bool,
    signals: &signals::Signals,
) -> ExitCode {
    let mut cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(s) = seed {
        cfg.seed = s;
    }
    if let Some(r) = report {
        cfg.report.path = r;
    }
    cfg.name_checkpoints_after(config, "run");
    if cfg.loader_only.is_some() {
        return run_loader_only(&cfg, signals.graceful());
    }
    block_on(
        signals,
        run(
            cfg,
            if resume {
                pipeline::resume
            } else {
                pipeline::run
            },
            signals.graceful(),
        ),
    )
}

/// `saln-pipe curate FILE [--out DIR] [--overwrite] [--report PATH] [--resume]`.
fn curate(
    config: &std::path::Path,
    out: Option<std::path::PathBuf>,
    overwrite: bool,
    report: Option<std::path::PathBuf>,
    resume: bool,
    signals: &signals::Signals,
) -> ExitCode {
    let mut cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(dir) = out {
        match &mut cfg.export {
            Some(e) => e.dir = dir,
            None => cfg.export = Some(saln::config::ExportConfig::new(dir)),
        }
    }
    if let (true, Some(e)) = (overwrite, &mut cfg.export) {
        e.overwrite = true;
    }
    if let Some(r) = report {
        cfg.report.path = r;
    }
    if cfg.export.is_none() {
        eprintln!(
            "error: {}: curate writes Parquet: add an `export:` section with `dir:` or pass --out DIR",
            config.display()
        );
        return ExitCode::from(2);
    }
    cfg.name_checkpoints_after(config, "curate");
    let job = if resume {
        pipeline::curate_resume
    } else {
        pipeline::curate
    };
    block_on(signals, run(cfg, job, signals.graceful()))
}

fn block_on(
    signals: &signals::Signals,
    job: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> ExitCode {
    match signals.rt.block_on(job) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(policy: &str, ms_selection: f64, ms_forward: f64) -> Report {
        let yaml = format!("source: {{ idx: {{ dir: /x }} }}\nselection: {{ policy: {policy} }}\n");
        let cfg = PipelineConfig::from_yaml_str(&yaml, "t").unwrap();
        let mut r = Report::new(&cfg, "cpu".into());
        r.selection.samples_in = 400;
        r.selection.samples_kept = if policy == "none" { 400 } else { 100 };
        r.selection.ms_per_selection = ms_selection;
        r.selection.ms_per_forward = ms_forward;
        r.selection.selection_over_forward = ms_selection / ms_forward.max(1e-9);
        r
    }

    #[test]
    fn the_selection_figure_is_given_only_where_it_means_something() {
        // Issue 18: `none` printed "selection 0.01 ms per super-batch = 242.6% of the
        // forward pass".
        assert_eq!(
            trained_on(&report("none", 0.01, 0.004)),
            "400 of 400 images trained on, policy none: no selection"
        );
        assert_eq!(
            trained_on(&report("uniform", 0.02, 0.0)),
            "100 of 400 images trained on, selection 0.02 ms per super-batch"
        );
        assert_eq!(
            trained_on(&report("saln", 20.0, 100.0)),
            "100 of 400 images trained on, selection 20.00 ms per super-batch = 20.0% of the forward pass"
        );
    }
}
