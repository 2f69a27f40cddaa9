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

/// The async runtime of the signal handler and the pipeline's driver: one worker thread
/// (the stages run on their own threads).
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            ExitCode::from(1)
        })
}

/// Waits for Ctrl-C or SIGTERM, then cancels the run (it stops after the current super-batch).
async fn stop_on_signal(cancel: Cancel) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let term = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("saln: stopping after the current super-batch (signal received)");
    cancel.cancel();
}

async fn run(cfg: PipelineConfig, job: Job) -> anyhow::Result<ExitCode> {
    let cancel = Cancel::default();
    let display = Arc::new(progress::Display::new());
    let observer: pipeline::Observer = {
        let display = display.clone();
        Arc::new(move |e| display.event(e))
    };
    let job = {
        let (cfg, cancel) = (cfg.clone(), cancel.clone());
        tokio::task::spawn_blocking(move || job(&cfg, cancel, Some(observer)))
    };
    let signals = tokio::spawn(stop_on_signal(cancel.clone()));
    let result = job.await.context("pipeline thread")?;
    signals.abort();
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
                    "final test accuracy {:.2}% ({} of {} images trained on, selection {:.2} ms per super-batch = {:.1}% of the forward pass)",
                    100.0 * acc,
                    report.selection.samples_kept,
                    report.selection.samples_in,
                    report.selection.ms_per_selection,
                    100.0 * report.selection.selection_over_forward
                );
            }
            let o = &report.overlap;
            eprintln!(
                "saln: {:.0} samples/s end to end; slowest stage {} alone {:.0}/s; overlap {:.2}",
                o.end_to_end_rate, o.slowest_stage, o.slowest_standalone_rate, o.overlap
            );
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

/// `saln-pipe run` on a pipeline with a `loader_only:` block.
fn run_loader_only(cfg: &PipelineConfig) -> ExitCode {
    let cancel = Cancel::default();
    // Ctrl-C / SIGTERM stop the run after the current super-batch; the report still gets
    // written, with `status: cancelled`.
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let signals = rt.spawn(stop_on_signal(cancel.clone()));
    let result = saln::pipeline::loader_only::run(cfg, cancel);
    signals.abort();
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
    let cli = Cli::parse();
    match cli.command {
        Command::Eval { config } => eval::eval(&config),
        Command::Viz {
            config,
            superbatch,
            out,
        } => match load(&config) {
            Ok(cfg) => eval::viz(&cfg, superbatch, &out),
            Err(code) => code,
        },
        Command::Validate { config }
            if std::fs::read_to_string(&config).is_ok_and(|t| saln::eval::is_eval_yaml(&t)) =>
        {
            eval::validate(&config)
        }
        Command::Bench {
            what: BenchWhat::Selection(args),
        } => match bench::selection(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Validate { config } => validate(&config),
        Command::Pretrain { config, force } => pretrain(&config, force),
        Command::Run {
            config,
            seed,
            report,
            resume,
        } => run_command(&config, seed, report, resume),
        Command::Curate {
            config,
            out,
            overwrite,
            report,
        } => curate(&config, out, overwrite, report),
    }
}

/// `saln-pipe validate FILE`: every problem of a pipeline file and of what it needs.
fn validate(config: &std::path::Path) -> ExitCode {
    let cfg = match load(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let issues = cfg.check_resources();
    let mut data_err = None;
    if let Err(e) = saln::source::open(&cfg.source) {
        data_err = Some(e);
    }
    for i in &issues {
        eprintln!("error: {}: {i}", config.display());
    }
    if let Some(e) = &data_err {
        eprintln!("error: source: {e}");
    }
    if issues.is_empty() && data_err.is_none() {
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
    if cfg.loader_only.is_some() {
        return run_loader_only(&cfg);
    }
    block_on(run(
        cfg,
        if resume {
            pipeline::resume
        } else {
            pipeline::run
        },
    ))
}

/// `saln-pipe curate FILE [--out DIR] [--overwrite] [--report PATH]`.
fn curate(
    config: &std::path::Path,
    out: Option<std::path::PathBuf>,
    overwrite: bool,
    report: Option<std::path::PathBuf>,
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
    block_on(run(cfg, pipeline::curate))
}

fn block_on(job: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(job) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
