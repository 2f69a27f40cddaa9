//! Integration tests of the Parquet export, the `selection` source and the loader API, on a
//! small synthetic IDX data set with a tiny pretrained reference model (see `fixtures`).
mod cli;
mod export;
mod fixtures;
mod loader;
mod selection;
#[path = "../it/within.rs"]
mod within;
