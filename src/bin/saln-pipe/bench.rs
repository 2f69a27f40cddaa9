//! `saln-pipe bench ...`: command-line front ends of the library's benchmarks.
use anyhow::{bail, Context};
use saln::select::bench::{self, BenchOptions};
use saln::select::{LaplacianKind, WeightMapping};

use crate::cli::SelectionArgs;

fn weights(name: &str) -> anyhow::Result<WeightMapping> {
    Ok(match name {
        "clip" => WeightMapping::Clip,
        "shift" => WeightMapping::Shift,
        "knn" => WeightMapping::Knn,
        other => bail!("unknown weights `{other}`: expected shift, clip or knn"),
    })
}

/// Runs the selection benchmark and prints its table.
pub fn selection(a: &SelectionArgs) -> anyhow::Result<()> {
    let device = a.device;
    if a.threads > 0 {
        tch::set_num_threads(a.threads as i32);
    }
    let laplacian = match a.laplacian.as_str() {
        "unnormalized" => LaplacianKind::Unnormalized,
        "symmetric" => LaplacianKind::Symmetric,
        other => bail!("unknown laplacian `{other}`: expected unnormalized or symmetric"),
    };
    let opts = BenchOptions {
        device,
        repeats: a.repeats.max(1),
        sizes: a.sizes.clone(),
        dims: a.dims.clone(),
        weights: a
            .weights
            .iter()
            .map(|w| weights(w))
            .collect::<anyhow::Result<_>>()?,
        knn_k: a.knn_k,
        laplacian,
        dense_max: a.dense_max,
        matrix_max: a.matrix_max,
        seed: a.seed,
        ..BenchOptions::default()
    };
    println!(
        "saln bench selection: device {}, {} libtorch threads, laplacian {}, {} clusters, median of {} runs (ms, whole fiedler call)",
        saln::device::name(device),
        tch::get_num_threads(),
        a.laplacian,
        opts.clusters,
        opts.repeats
    );
    println!("{}", bench::header());
    bench::run(&opts, &mut |row| println!("{}", bench::format_row(row)))
        .context("selection benchmark")?;
    Ok(())
}
