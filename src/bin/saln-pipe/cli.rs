//! The command line's grammar: every command, argument and flag of `saln-pipe`, and nothing
//! else. It is its own file so that the documentation test (`tests/it/docs.rs`) can include
//! it and check every `saln-pipe` command and flag the docs mention against this parser.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "saln-pipe",
    version,
    about = "Spectral joint batch selection (SALN): curate super-batches, train on the informative part"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// Continue from the newest complete checkpoint in `checkpoint.dir` (refused when a
        /// setting that changes the result differs from the checkpoint's).
        #[arg(long)]
        resume: bool,
    },
    /// Train the reference (feature) model on the held-out split and save its weights.
    Pretrain {
        /// The pipeline YAML (its `extractor` section says where the weights go).
        config: PathBuf,
        /// Retrain even if the weights file exists.
        #[arg(long)]
        force: bool,
    },
    /// Curate without training: select from every super-batch and write the selection as
    /// Parquet (the config's `export` section; see docs/parquet-schema.md).
    Curate {
        /// The pipeline YAML.
        config: PathBuf,
        /// Write the Parquet files to this folder (overrides or adds `export.dir`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace an earlier export in the folder.
        #[arg(long)]
        overwrite: bool,
        /// Override the report path.
        #[arg(long)]
        report: Option<PathBuf>,
        /// Continue from the newest complete checkpoint in `checkpoint.dir` (default
        /// `target/saln/checkpoints/<file name>.curate`): the export's finished files are
        /// kept and the rest is written again (refused when a setting that changes the
        /// result differs from the checkpoint's).
        #[arg(long)]
        resume: bool,
    },
    /// Check a pipeline YAML (or an eval YAML) and report every problem.
    Validate {
        /// The pipeline YAML.
        config: PathBuf,
    },
    /// Run an evaluation grid (policies x keep ratios x seeds) and write its table and plots
    /// (docs/evaluation.md). Runs whose report exists are not run again.
    Eval {
        /// The eval YAML: a `pipeline:` and a `grid:`.
        config: PathBuf,
    },
    /// Draw one super-batch: its images with the kept ones framed, and its samples on the
    /// 2nd and 3rd Laplacian eigenvectors coloured by label.
    Viz {
        /// The pipeline YAML.
        config: PathBuf,
        /// Global index of the super-batch (0-based, counted across epochs).
        #[arg(long, default_value_t = 0)]
        superbatch: u64,
        /// Folder for the two PNGs.
        #[arg(long, default_value = "target/saln/viz")]
        out: PathBuf,
    },
    /// Convert the data set of a pipeline (image folder, list, CIFAR-10, IDX, Parquet) into
    /// WebDataset or Parquet shards, for the streaming source (docs/streaming.md). Writes
    /// `train-NNNNNN.*` and `test-NNNNNN.*` into OUT and prints the `source.stream` block.
    Shard {
        /// The pipeline YAML whose `source` to convert.
        config: PathBuf,
        /// Folder for the shards.
        #[arg(long)]
        out: PathBuf,
        /// `webdataset` (tar) or `parquet`.
        #[arg(long, default_value = "webdataset")]
        format: String,
        /// Samples per shard.
        #[arg(long, default_value_t = 10_000)]
        per_shard: usize,
    },
    /// Measure a stage on synthetic input and print a table.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
pub enum BenchWhat {
    /// Dense vs iterative Fiedler solver: time, speed-up and agreement per B and d.
    Selection(SelectionArgs),
}

/// Options of `saln-pipe bench selection`.
#[derive(Args, Debug)]
pub struct SelectionArgs {
    /// Where the features live and the solvers run: cpu, cuda, cuda:N, auto.
    #[arg(long, default_value = "cpu", value_parser = usable_device)]
    pub device: tch::Device,
    /// Timed runs per cell; the median is printed.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Super-batch sizes B, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "256,1024,2048,4096,16384"
    )]
    pub sizes: Vec<usize>,
    /// Feature dimensions d, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "128,2048")]
    pub dims: Vec<usize>,
    /// Weight mappings, comma-separated: shift, clip, knn.
    #[arg(long, value_delimiter = ',', default_value = "shift,clip")]
    pub weights: Vec<String>,
    /// Neighbours per sample for knn.
    #[arg(long, default_value_t = 10)]
    pub knn_k: usize,
    /// Laplacian: unnormalized or symmetric.
    #[arg(long, default_value = "unnormalized")]
    pub laplacian: String,
    /// Largest B the dense solver is run for (it is O(B^3)).
    #[arg(long, default_value_t = 4096)]
    pub dense_max: usize,
    /// Largest B the iterative solver is run for with clip or knn (they form the B x B matrix).
    #[arg(long, default_value_t = 4096)]
    pub matrix_max: usize,
    /// libtorch threads (0: libtorch's default).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Seed of the synthetic features.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// A device name that parses and exists here (else clap reports it: exit code 2).
fn usable_device(name: &str) -> Result<tch::Device, String> {
    let device = saln::device::parse(name)?;
    saln::device::check(device)?;
    Ok(device)
}
