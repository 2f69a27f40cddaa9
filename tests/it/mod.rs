pub mod cli;
pub mod common;
pub mod docs;
pub mod pipeline;
