fn main() {
    saln_build::link_libtorch();
}
