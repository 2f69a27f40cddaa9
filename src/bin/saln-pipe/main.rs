//! `saln-pipe`: the command line over the saln library.
//!
//! Exit codes: 0 success; 1 the run failed (a stage error, named in the message);
//! 2 the configuration or the command line is invalid; 130 cancelled by Ctrl-C or SIGTERM
//! (the report of what completed is still written).
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use saln::config::PipelineConfig;
use saln::pipeline::{self, Cancel, Event};
use saln::report::Status;

// The decode workers allocate and free image-sized buffers (0.5 MB each) at a high rate;
// glibc's malloc hands such blocks back to the kernel and faults them in again, which cost
// a third of the loader's CPU time in measurements. mimalloc keeps them.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "saln-pipe",
    version,
    about = "Spectral joint batch selection (SALN): curate super-batches, train on the informative part"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline: load, augment, extract features, select, train, evaluate, report.
    /// A pipeline with a `loader_only:` block runs the input side alone and reports images/s.
    Run {
        /// The pipeline YAML.
        config: PathBuf,
        /// Override the config's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// Override the report path.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Train the reference (feature) model on the held-out split and save its weights.
    Pretrain {
        /// The pipeline YAML (its `extractor` section says where the weights go).
        config: PathBuf,
        /// Retrain even if the weights file exists.
        #[arg(long)]
        force: bool,
    },
    /// Check a pipeline YAML and report every problem.
    Validate {
        /// The pipeline YAML.
        config: PathBuf,
    },
}

fn load(path: &std::path::Path) -> Result<PipelineConfig, ExitCode> {
    PipelineConfig::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn print_event(e: &Event) {
    match e {
        Event::Started {
            learner_samples,
            epochs,
            device,
        } => eprintln!("saln: {learner_samples} learner samples x {epochs} epochs on {device}"),
        Event::Epoch(r) => println!(
            "epoch {:>3}  test accuracy {:6.2}%  train loss {:.4}  trained on {}/{} images  {:.1}s",
            r.epoch,
            100.0 * r.test_accuracy,
            r.train_loss,
            r.images_trained,
            r.images_seen,
            r.wall_seconds
        ),
        Event::Progress { elapsed, stages } => {
            let parts: Vec<String> = stages
                .iter()
                .map(|s| {
                    let rate = s.samples as f64 / elapsed.max(1e-9);
                    format!(
                        "{} {:.0}/s busy {:.0}% wait {:.0}% blocked {:.0}%",
                        s.stage,
                        rate,
                        100.0 * s.busy_seconds / elapsed,
                        100.0 * s.wait_input_seconds / elapsed,
                        100.0 * s.blocked_output_seconds / elapsed
                    )
                })
                .collect();
            eprintln!("[{elapsed:7.1}s] {}", parts.join(" | "));
        }
    }
}

async fn run(cfg: PipelineConfig) -> anyhow::Result<ExitCode> {
    let cancel = Cancel::default();
    let observer: pipeline::Observer = Arc::new(print_event);
    let job = {
        let (cfg, cancel) = (cfg.clone(), cancel.clone());
        tokio::task::spawn_blocking(move || pipeline::run(&cfg, cancel, Some(observer)))
    };
    let signals = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
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
        })
    };
    let result = job.await.context("pipeline thread")?;
    signals.abort();
    let report_path = cfg.report.path.display().to_string();
    match result {
        Ok(report) => {
            eprintln!("saln: report written to {report_path}");
            if let Some(acc) = report.final_test_accuracy {
                println!(
                    "final test accuracy {:.2}% ({} of {} images trained on, selection {:.2} ms per super-batch)",
                    100.0 * acc,
                    report.selection.samples_kept,
                    report.selection.samples_in,
                    report.selection.ms_per_selection
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
    match saln::batch::loader_only::run(cfg, Cancel::default()) {
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
            ExitCode::SUCCESS
        }
        Err(e @ saln::Error::ConfigInvalid { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => {
            let cfg = match load(&config) {
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
        Command::Pretrain { config, force } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
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
            let r = saln::extract::pretrain::pretrain(&cfg, &mut |e, loss| {
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
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Run {
            config,
            seed,
            report,
        } => {
            let mut cfg = match load(&config) {
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
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(run(cfg)) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
