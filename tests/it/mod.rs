pub mod baselines;
pub mod cli;
pub mod common;
pub mod docs;
pub mod eval;
pub mod layering;
pub mod pipeline;
pub mod within;
