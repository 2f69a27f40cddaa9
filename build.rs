//! Gives every binary, test and example an rpath to libtorch's folder, so they run with no
//! LD_LIBRARY_PATH, and links libtorch_cuda with `--no-as-needed` where it exists, so that a
//! CUDA build of libtorch really reports CUDA on a GPU machine (without it the linker drops
//! the library, no CUDA kernels get registered and `Cuda::is_available()` is false).
//!
//! Link arguments reach only this package's own targets, so the folder is also exported
//! (`links = "saln"`): crates that depend on saln call `saln_build::link_libtorch()` in their
//! build.rs to get the same arguments (docs/embedding.md).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Set by torch-sys (links = "tch") for its direct dependents.
    let Some(lib) = saln_build::link_libtorch_from_env("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    // DEP_SALN_LIBTORCH_LIB for the build scripts of saln's direct dependents.
    println!("cargo:libtorch_lib={}", lib.display());
    println!("cargo:rustc-env=SALN_LIBTORCH_LIB={}", lib.display());
}
