//! `saln-pipe eval`, `saln-pipe viz`, and `validate` of eval files.
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use saln::eval::{self, EvalConfig, EvalEvent};
use saln::pipeline::Cancel;

fn load(path: &Path) -> Result<EvalConfig, ExitCode> {
    EvalConfig::load(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// `saln-pipe validate` of an eval file: the file, every run's resources, the data.
pub fn validate(path: &Path) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runs = cfg.runs();
    let mut ok = true;
    let mut seen = Vec::new();
    for r in &runs {
        for i in r.config.check_resources() {
            let line = i.to_string();
            if !seen.contains(&line) {
                eprintln!("error: {}: run {}: {line}", path.display(), r.name);
                seen.push(line);
            }
            ok = false;
        }
    }
    if let Err(e) = saln::source::open(&cfg.pipeline.source) {
        eprintln!("error: pipeline.source: {e}");
        ok = false;
    }
    if ok {
        println!(
            "{}: ok (an eval grid of {} runs)",
            path.display(),
            runs.len()
        );
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn print_event(e: &EvalEvent) {
    let mut err = std::io::stderr().lock();
    let _ = match e {
        EvalEvent::Pretraining { seed, weights } => writeln!(
            err,
            "saln eval: pretraining the reference CNN of seed {seed} -> {}",
            weights.display()
        ),
        EvalEvent::Pretrained {
            seed,
            test_accuracy,
            seconds,
        } => writeln!(
            err,
            "saln eval: reference of seed {seed}: test accuracy {:.2}% ({seconds:.1} s)",
            100.0 * test_accuracy
        ),
        EvalEvent::Skipped { index, total, name } => {
            writeln!(err, "[{index:>3}/{total}] {name}: report exists, skipped")
        }
        EvalEvent::Started { index, total, name } => {
            writeln!(err, "[{index:>3}/{total}] {name}")
        }
        EvalEvent::Epoch { record, .. } => writeln!(
            err,
            "          epoch {}: test accuracy {:.2}% at {:.1} s",
            record.epoch,
            100.0 * record.test_accuracy,
            record.wall_seconds
        ),
        EvalEvent::Finished {
            index,
            total,
            name,
            final_accuracy,
            wall_seconds,
        } => writeln!(
            err,
            "[{index:>3}/{total}] {name}: {} in {wall_seconds:.1} s",
            final_accuracy.map_or("no epoch".into(), |a| format!("{:.2}%", 100.0 * a))
        ),
        EvalEvent::Failed {
            index,
            total,
            name,
            error,
        } => writeln!(err, "[{index:>3}/{total}] {name} FAILED: {error}"),
    };
}

/// `saln-pipe eval FILE`.
/// `cancel` is set by Ctrl-C or SIGTERM (`signals`): the grid stops after the current run.
pub fn eval(path: &Path, cancel: Cancel) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    eprintln!(
        "saln eval: {} runs into {}",
        cfg.runs().len(),
        cfg.grid.output.display()
    );
    match eval::run(&cfg, &cancel, Arc::new(print_event)) {
        Ok(o) => {
            eprintln!(
                "saln eval: {} run now, {} skipped (done before), {} failed{}",
                o.ran,
                o.skipped,
                o.failed.len(),
                if o.cancelled { ", stopped early" } else { "" }
            );
            for p in &o.outputs {
                println!("{}", p.display());
            }
            if o.cancelled {
                ExitCode::from(130)
            } else if o.failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => crate::fail(&e),
    }
}

/// `saln-pipe viz FILE --superbatch N --out DIR`.
pub fn viz(cfg: &saln::config::PipelineConfig, superbatch: u64, out: &Path) -> ExitCode {
    match eval::viz::viz(cfg, superbatch, out) {
        Ok(v) => {
            eprintln!(
                "saln viz: super-batch {superbatch} (epoch {}): {} of {} kept; lambda2 {:.4}, lambda3 {:.4}",
                v.epoch + 1,
                v.kept,
                v.samples,
                v.lambda2,
                v.lambda3
            );
            println!("{}", v.images.display());
            println!("{}", v.spectrum.display());
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail(&e),
    }
}
