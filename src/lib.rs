//! # saln: spectral joint batch selection as a streaming data-curation stage
//!
//! saln sits between a data set and an optimizer. It draws *super-batches* of `B` samples,
//! turns each image into a feature vector with a frozen reference network, builds the
//! cosine-similarity graph of the super-batch, takes the Fiedler vector of its Laplacian
//! `L = D - S`, and lets only `b = round(rho * B)` samples through to the trainer
//! (SALN, arXiv 2412.17069; see `docs/` and the README).
//!
//! The crate is laid out the way the data flows; each stage has its own module:
//!
//! | module | stage | what it does |
//! |---|---|---|
//! | [`source`] | source | reads a data set (IDX files) into samples with stable ids |
//! | [`augment`] | augment | per-sample random transforms, normalisation |
//! | [`batch`] | batch | epoch order, super-batches, parallel decode/augment workers |
//! | [`extract`] | extract | the frozen feature network: reference CNN (pretraining), TorchScript, ResNet |
//! | [`select`] | select | the spectral selector and the baseline policies |
//! | [`train`] | train | the learner, trained on curated sub-batches, evaluated per epoch |
//! | [`export`] | export | the curated set as Parquet files (and reading them back) |
//! | [`loader`] | embedding | saln as a data loader inside your own training loop |
//! | [`pipeline`] | wiring | threads, bounded channels, per-stage metrics, cancellation |
//! | [`report`] | report | the JSON run report |
//! | [`config`] | config | the pipeline YAML, typed and validated |
//! | [`eval`] | evaluation | grids of policies x keep ratios x seeds; tables, plots, pictures |
//!
//! The binary `saln-pipe` (`src/bin/saln-pipe/`) is a thin command line over
//! [`pipeline::run`] and [`extract::pretrain`].
#![warn(missing_docs)]

pub mod augment;
pub mod batch;
pub mod config;
pub mod device;
pub mod error;
pub mod eval;
pub mod export;
pub mod extract;
pub mod loader;
pub mod model;
pub mod pipeline;
pub mod report;
pub mod rng;
pub mod select;
pub mod source;
pub mod train;

pub use error::{Error, Result};
