//! Build-script helper for crates that depend on saln.
//!
//! A binary that uses saln (and so tch) needs libtorch's shared libraries at run time. Link
//! arguments printed by saln's own build script reach only saln's own binaries and tests, not
//! those of the crates that depend on it, so a dependent crate's binary would otherwise fail
//! at start with `libtorch_cpu.so: cannot open shared object file` unless `LD_LIBRARY_PATH`
//! points at libtorch. One line in the dependent crate's `build.rs` fixes that:
//!
//! ```no_run
//! // build.rs of a crate with `saln` in [dependencies] and `saln-build` in [build-dependencies]
//! fn main() {
//!     saln_build::link_libtorch();
//! }
//! ```
//!
//! saln declares `links = "saln"` and exports the libtorch folder it was built against, so
//! the build scripts of the crates that depend on it *directly* see it as
//! `DEP_SALN_LIBTORCH_LIB`. [`link_libtorch`] reads it and gives every binary, test and
//! example of the calling crate an rpath to that folder, and, for a CUDA build of libtorch,
//! links `libtorch_cuda` with `--no-as-needed` (without it the linker drops the library, no
//! CUDA kernels get registered and `tch::Cuda::is_available()` is false on a GPU machine).
//! saln's own `build.rs` uses the same code.
//!
//! It prints no `rerun-if-*` line, so it leaves the calling build script's rerun rules as they
//! are. Linux (and other ELF targets with a GNU-compatible linker) only.
// The example above is a whole build.rs, `fn main` included.
#![allow(clippy::needless_doctest_main)]
use std::path::{Path, PathBuf};

/// The variable saln's build script fills for the build scripts of its direct dependents.
pub const SALN_LIBTORCH_LIB: &str = "DEP_SALN_LIBTORCH_LIB";

/// Gives the calling crate's binaries, tests and examples an rpath to the libtorch folder
/// saln was built against (and links `libtorch_cuda` where it exists). Returns the folder;
/// `None`, with a `cargo:warning`, when `DEP_SALN_LIBTORCH_LIB` is not set, which happens
/// when `saln` is not a direct `[dependencies]` entry of the calling crate (a
/// dev-dependency, or a dependency of a dependency, does not pass it on).
pub fn link_libtorch() -> Option<PathBuf> {
    link_libtorch_from_env(SALN_LIBTORCH_LIB)
}

/// [`link_libtorch`] with the libtorch folder read from the environment variable `var`
/// (saln's own build script reads torch-sys's `DEP_TCH_LIBTORCH_LIB`).
pub fn link_libtorch_from_env(var: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(dir) if !dir.is_empty() => {
            let lib = PathBuf::from(dir);
            for arg in link_args(&lib) {
                println!("cargo:rustc-link-arg={arg}");
            }
            Some(lib)
        }
        _ => {
            let why = if var == SALN_LIBTORCH_LIB {
                "saln sets it only for crates that have `saln` in their own [dependencies]"
            } else {
                "it is set by the build script of the crate whose `links` key it names, for its direct dependents only"
            };
            println!(
                "cargo:warning={var} is not set ({why}): binaries get no rpath to libtorch and \
                 need LD_LIBRARY_PATH=<torch>/lib at run time"
            );
            None
        }
    }
}

/// The linker arguments (for `cargo:rustc-link-arg`) that let a binary find libtorch in
/// `lib` at run time: an rpath, plus `libtorch_cuda` linked with `--no-as-needed` when `lib`
/// holds it.
pub fn link_args(lib: &Path) -> Vec<String> {
    let dir = lib.display();
    let mut args = vec![format!("-Wl,-rpath,{dir}")];
    if lib.join("libtorch_cuda.so").exists() {
        args.extend([
            "-Wl,--no-as-needed".to_string(),
            format!("-L{dir}"),
            "-ltorch_cuda".to_string(),
            "-Wl,--as-needed".to_string(),
        ]);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::link_args;

    #[test]
    fn an_rpath_always_and_libtorch_cuda_only_where_it_exists() {
        let dir = std::env::temp_dir().join(format!("saln-build-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        assert_eq!(link_args(&dir), [format!("-Wl,-rpath,{d}")]);

        std::fs::write(dir.join("libtorch_cuda.so"), b"").unwrap();
        assert_eq!(
            link_args(&dir),
            [
                format!("-Wl,-rpath,{d}"),
                "-Wl,--no-as-needed".into(),
                format!("-L{d}"),
                "-ltorch_cuda".into(),
                "-Wl,--as-needed".into(),
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
