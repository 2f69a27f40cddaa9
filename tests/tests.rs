//! Integration tests: one binary, topic modules under `tests/it/`, shared helpers in
//! `tests/it/common.rs` (ripgrep's layout).
mod it;
