//! Build-script helper shared by every kernel crate (called from each crate's `build.rs`).
//!
//! With the crate's `cuda` feature on, every `cuda/*.cu` is compiled by nvcc into a fatbin holding
//! sm_90a SASS plus compute_90a PTX, and `$OUT_DIR/cubins.rs` lists them as
//! `kernels::gpu::Cubin` constants (`include!` it from the crate). With the feature off nothing is
//! compiled and the list is empty, so the workspace builds on machines without CUDA.
//!
//! nvcc is looked up in this order: `$NVCC`, `$CUDA_HOME/bin/nvcc`, the repo's own `.cuda/bin/nvcc`
//! (installed by `scripts/install-cuda-toolchain.sh`), then `nvcc` on `PATH`.
//! Set `DSV3_PTXAS_VERBOSE=1` to get ptxas' register / shared-memory / spill report per kernel as
//! cargo warnings. Set `DSV3_BOUNDED_WAITS=1` for a debug build of the kernels whose spin waits
//! give up: a wait that never completes prints where it was stuck and traps, instead of hanging
//! the device (`-DDSV3_BOUNDED_WAITS`, see `dsv3/hopper.cuh`).
//!
//! With the `emulate` feature (the interpreter build; it wins over `cuda`) the same sources are
//! compiled as host C++ instead and linked into the binary, with a kernel table per file that the
//! emulated `kernels::gpu` launches through (see [`emulate`]).

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

mod emulate;

/// The one target every kernel is built for: Hopper with the arch-specific features (wgmma,
/// setmaxnreg). PTX for compute_90a is kept in the fatbin as well.
const GENCODE: &str = "-gencode=arch=compute_90a,code=[sm_90a,compute_90a]";

pub(crate) const INSTALL_HINT: &str =
    "nvcc (CUDA 13.0) was not found. Install the pinned toolchain with \
`bash scripts/install-cuda-toolchain.sh` (it puts nvcc under <repo>/.cuda), or point NVCC or \
CUDA_HOME at a CUDA 13.0 install. Newer nvcc versions emit PTX the GPU machines' driver (580, \
CUDA 13.0) cannot load.";

/// Compiles `<crate>/cuda/*.cu` (when the `cuda` feature is on) and writes `$OUT_DIR/cubins.rs`.
pub fn build_crate_kernels() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let cuda_dir = manifest_dir.join("cuda");
    let workspace = workspace_root(&manifest_dir);
    let include_dir = workspace.join("kernels").join("include");

    println!("cargo:rerun-if-changed={}", cuda_dir.display());
    println!("cargo:rerun-if-changed={}", include_dir.display());
    for var in [
        "NVCC",
        "CUDA_HOME",
        "DSV3_PTXAS_VERBOSE",
        "DSV3_BOUNDED_WAITS",
        "CARGO_FEATURE_CUDA",
        "CARGO_FEATURE_EMULATE",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let mut entries = Vec::new();
    if env::var_os("CARGO_FEATURE_EMULATE").is_some() {
        let sources = cu_sources(&cuda_dir);
        for src in &sources {
            println!("cargo:rerun-if-changed={}", src.display());
        }
        let crate_name = env::var("CARGO_PKG_NAME").expect("CARGO_PKG_NAME");
        let modules = emulate::build(&crate_name, &sources, &out_dir, &workspace);
        entries = modules.into_iter().map(Entry::Emulated).collect();
    } else if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        let sources = cu_sources(&cuda_dir);
        if !sources.is_empty() {
            let nvcc = find_nvcc(&workspace).unwrap_or_else(|| fail(INSTALL_HINT));
            let verbose = env::var("DSV3_PTXAS_VERBOSE").is_ok_and(|v| v != "0" && !v.is_empty());
            for src in &sources {
                println!("cargo:rerun-if-changed={}", src.display());
                let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
                let out = out_dir.join(format!("{stem}.fatbin"));
                compile(&nvcc, src, &out, &include_dir, verbose);
                entries.push(Entry::Fatbin { stem, path: out });
            }
        }
    }
    write_manifest(&out_dir, &entries);
}

fn workspace_root(manifest_dir: &Path) -> PathBuf {
    manifest_dir
        .ancestors()
        .find(|dir| dir.join("kernels").join("include").is_dir())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| fail("cannot find the workspace root (a folder with kernels/include)"))
}

fn cu_sources(cuda_dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = fs::read_dir(cuda_dir) else {
        return Vec::new();
    };
    let mut sources: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    sources
}

/// One `cubins.rs` constant: an nvcc fatbin, or a host-compiled kernel table.
enum Entry {
    Fatbin { stem: String, path: PathBuf },
    Emulated(emulate::Module),
}

impl Entry {
    fn stem(&self) -> &str {
        match self {
            Entry::Fatbin { stem, .. } => stem,
            Entry::Emulated(m) => &m.stem,
        }
    }
}

pub(crate) fn find_nvcc(workspace: &Path) -> Option<PathBuf> {
    let candidates = [
        env::var_os("NVCC").map(PathBuf::from),
        env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin").join("nvcc")),
        Some(workspace.join(".cuda").join("bin").join("nvcc")),
    ];
    if let Some(found) = candidates.into_iter().flatten().find(|p| p.is_file()) {
        return Some(found);
    }
    env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("nvcc"))
        .find(|p| p.is_file())
}

fn compile(nvcc: &Path, src: &Path, out: &Path, include_dir: &Path, verbose: bool) {
    let mut cmd = Command::new(nvcc);
    cmd.arg("-fatbin")
        .arg(GENCODE)
        .args(["-std=c++17", "-O3", "-lineinfo", "--expt-relaxed-constexpr"])
        // Keep IEEE division and square root: the kernels are compared bit-for-bit against the
        // Rust references where the arithmetic allows it (FP8 quantization scales, e4m3 codes).
        .args(["-prec-div=true", "-prec-sqrt=true", "-ftz=false"])
        .arg("-I")
        .arg(include_dir)
        .arg("-o")
        .arg(out)
        .arg(src);
    if verbose {
        cmd.args(["-Xptxas", "-v"]);
    }
    if bounded_waits() {
        cmd.arg("-DDSV3_BOUNDED_WAITS");
    }
    let output = cmd.output().unwrap_or_else(|e| {
        fail(&format!(
            "cannot run {}: {e}. {INSTALL_HINT}",
            nvcc.display()
        ))
    });
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        fail(&format!(
            "nvcc failed on {} ({}):\n{stderr}",
            src.display(),
            output.status
        ));
    }
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        // Without DSV3_PTXAS_VERBOSE nvcc prints only real warnings; surface those always.
        println!(
            "cargo:warning={}: {line}",
            src.file_name().unwrap().to_string_lossy()
        );
    }
}

/// Whether `DSV3_BOUNDED_WAITS` asks for kernels whose spin waits give up.
pub(crate) fn bounded_waits() -> bool {
    env::var("DSV3_BOUNDED_WAITS").is_ok_and(|v| v != "0" && !v.is_empty())
}

fn write_manifest(out_dir: &Path, entries: &[Entry]) {
    let mut code = String::from(
        "// Generated by cuda-build: one fatbin (sm_90a SASS + compute_90a PTX) per cuda/*.cu, or in \
         the\n// interpreter build (feature `emulate`) the accessor of its host-compiled kernel table.\n",
    );
    for entry in entries {
        let konst = entry.stem().to_uppercase();
        let stem = entry.stem();
        match entry {
            Entry::Fatbin { path, .. } => {
                let _ = writeln!(
                    code,
                    "#[allow(dead_code)]\npub const {konst}: ::kernels::Cubin = ::kernels::Cubin {{ \
                     name: concat!(env!(\"CARGO_PKG_NAME\"), \"/{stem}\"), image: include_bytes!({:?}), \
                     emulated: None }};",
                    path.display().to_string()
                );
            }
            Entry::Emulated(m) => {
                let symbol = &m.symbol;
                let _ = writeln!(
                    code,
                    "extern \"C\" {{\n    fn {symbol}() -> *const ::kernels::EmuModule;\n}}\n\
                     #[allow(dead_code)]\npub const {konst}: ::kernels::Cubin = ::kernels::Cubin {{ \
                     name: concat!(env!(\"CARGO_PKG_NAME\"), \"/{stem}\"), image: &[], \
                     emulated: Some({symbol}) }};"
                );
            }
        }
    }
    let names: Vec<String> = entries.iter().map(|e| e.stem().to_uppercase()).collect();
    let _ = writeln!(
        code,
        "#[allow(dead_code)]\npub const ALL: &[::kernels::Cubin] = &[{}];",
        names.join(", ")
    );
    fs::write(out_dir.join("cubins.rs"), code).unwrap_or_else(|e| fail(&format!("{e}")));
}

pub(crate) fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    panic!("{msg}");
}
