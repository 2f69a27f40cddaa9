//! # saln: spectral joint batch selection as a streaming data-curation stage
//!
//! saln sits between a data set and an optimizer. It draws *super-batches* of `B` samples,
//! turns each image into a feature vector with a frozen reference network, builds the
//! cosine-similarity graph of the super-batch, takes the Fiedler vector of its Laplacian
//! `L = D - S`, and lets only `b = round(rho * B)` samples through to the trainer
//! (SALN, arXiv 2412.17069; see `docs/` and the README).
//!
//! The crate is laid out the way the data flows, in layers: a module uses only the modules
//! above it in this table, and a stage only the stages before it (the table is checked by
//! `tests/it/layering.rs`).
//!
//! | layer | module | what it does |
//! |---|---|---|
//! | kit | [`error`], [`io`], [`rng`], [`device`] | typed errors and the config-problem collector; atomic writes; seeded streams; devices |
//! | kit | [`pixel`] | pixel types and resize kernels (sources and augmentation share them) |
//! | kit | [`stage`] | channel messages, cancellation, spawn/join with panic capture, per-stage metrics |
//! | kit | [`model`] | the small CNN (reference model, default learner) |
//! | stage 1 | [`source`] | reads a data set into samples with stable ids; the learner / held-out split |
//! | stage 2 | [`augment`] | per-sample random transforms, normalisation |
//! | stage 3 | [`batch`] | the loader: epoch order, super-batches, parallel decode/augment workers |
//! | stage 4 | [`select`] | the spectral selector, the baseline policies, what selection produces |
//! | stage 5 | [`extract`] | the frozen feature network (reference CNN, TorchScript, ResNet) running the selector |
//! | stage 6 | [`train`] | the learner, trained on curated sub-batches, evaluated per epoch |
//! | stage 7 | [`export`] | the curated set as Parquet files |
//! | top | [`config`] | the pipeline YAML: every stage's section, cross-section rules |
//! | top | [`report`] | the JSON run report |
//! | top | [`pipeline`] | the wiring and the run modes: run, curate, loader-only, pretrain |
//! | top | [`loader`] | saln as a data loader inside your own training loop |
//! | top | [`eval`] | grids of policies x keep ratios x seeds; tables, plots, pictures |
//!
//! The binary `saln-pipe` (`src/bin/saln-pipe/`) is a thin command line over
//! [`pipeline::run`], [`pipeline::curate`] and [`pipeline::pretrain`].
#![warn(missing_docs)]

pub mod augment;
pub mod batch;
pub mod config;
pub mod device;
pub mod error;
pub mod eval;
pub mod export;
pub mod extract;
pub mod io;
pub mod loader;
pub mod model;
pub mod pipeline;
pub mod pixel;
pub mod report;
pub mod rng;
pub mod select;
pub mod source;
pub mod stage;
pub mod train;

pub use error::{Error, Result};
