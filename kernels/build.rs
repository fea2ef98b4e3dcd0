fn main() {
    cuda_build::build_crate_kernels();
}
