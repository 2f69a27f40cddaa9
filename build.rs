//! Gives every binary, test and example an rpath to libtorch's folder, so they run with no
//! LD_LIBRARY_PATH, and links libtorch_cuda with `--no-as-needed` where it exists, so that a
//! CUDA build of libtorch really reports CUDA on a GPU machine (without it the linker drops
//! the library, no CUDA kernels get registered and `Cuda::is_available()` is false).
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // Set by torch-sys (links = "tch") for its direct dependents.
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=DEP_TCH_LIBTORCH_LIB not set: binaries get no rpath to libtorch");
        return;
    };
    let lib = PathBuf::from(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rustc-env=SALN_LIBTORCH_LIB={}", lib.display());
}
