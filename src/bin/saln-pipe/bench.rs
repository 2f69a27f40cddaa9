//! `saln-pipe bench ...`: command-line front ends of the library's benchmarks.
use anyhow::{bail, Context};
use clap::Args;
use saln::select::bench::{self, BenchOptions};
use saln::select::{LaplacianKind, WeightMapping};

/// Options of `saln-pipe bench selection`.
#[derive(Args, Debug)]
pub struct SelectionArgs {
    /// Where the features live and the solvers run: cpu, cuda, cuda:N, auto.
    #[arg(long, default_value = "cpu", value_parser = usable_device)]
    device: tch::Device,
    /// Timed runs per cell; the median is printed.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Super-batch sizes B, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "256,1024,2048,4096,16384"
    )]
    sizes: Vec<usize>,
    /// Feature dimensions d, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "128,2048")]
    dims: Vec<usize>,
    /// Weight mappings, comma-separated: shift, clip, knn.
    #[arg(long, value_delimiter = ',', default_value = "shift,clip")]
    weights: Vec<String>,
    /// Neighbours per sample for knn.
    #[arg(long, default_value_t = 10)]
    knn_k: usize,
    /// Laplacian: unnormalized or symmetric.
    #[arg(long, default_value = "unnormalized")]
    laplacian: String,
    /// Largest B the dense solver is run for (it is O(B^3)).
    #[arg(long, default_value_t = 4096)]
    dense_max: usize,
    /// Largest B the iterative solver is run for with clip or knn (they form the B x B matrix).
    #[arg(long, default_value_t = 4096)]
    matrix_max: usize,
    /// libtorch threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Seed of the synthetic features.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// A device name that parses and exists here (else clap reports it: exit code 2).
fn usable_device(name: &str) -> Result<tch::Device, String> {
    let device = saln::device::parse(name)?;
    saln::device::check(device)?;
    Ok(device)
}

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
