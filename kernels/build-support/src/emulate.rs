//! The interpreter build (feature `emulate`): every `cuda/*.cu` compiled as host C++ by the system
//! compiler (through the `cc` crate), with the emulated CUDA built-ins force-included
//! (`-DDSV3_EMULATE -include dsv3/emu/cuda_emu.h`), into one static library per crate.
//!
//! Per source file a generated `<stem>_emu.cpp` includes the `.cu` and defines
//! `dsv3_emu_module_<crate>_<stem>()`, the file's kernel table (`kernels/include/dsv3/emu/abi.h`):
//! each kernel's name and a trampoline that unpacks a cuLaunchKernel-style `void** args` into the
//! kernel's parameters. The kernel names are found in the preprocessed source: kernels are the only
//! `extern "C"` functions a `.cu` defines, and fp8_gemm.cu defines its kernels through a macro, so
//! the raw text would not show them.
//!
//! The kernels crate also compiles the interpreter itself (`kernels/emulate/*.cpp`) into
//! `dsv3emu_runtime`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use crate::{fail, INSTALL_HINT};

/// One compiled `.cu`: the `cubins.rs` constant stem and its table accessor's symbol.
pub(crate) struct Module {
    pub stem: String,
    pub symbol: String,
}

/// Compiles `sources` (this crate's `cuda/*.cu`) and, for the kernels crate, the interpreter
/// (`kernels/emulate/*.cpp`; its tests live in `kernels/emulate/tests/`, not compiled here).
pub(crate) fn build(
    crate_name: &str,
    sources: &[PathBuf],
    out_dir: &Path,
    workspace: &Path,
) -> Vec<Module> {
    let runtime_dir = workspace.join("kernels").join("emulate");
    println!("cargo:rerun-if-changed={}", runtime_dir.display());
    let cuda_include = find_cuda_include(workspace);
    let common = common_build(workspace, &cuda_include);
    // Kernel sources see CUDA through the prelude; the interpreter's own sources are plain C++
    // (the prelude's `__noinline__`-style macros would break the standard headers they include).
    let mut base = common.clone();
    base.flag("-include").flag("dsv3/emu/cuda_emu.h");

    let crate_ident = crate_name.replace('-', "_");
    let mut modules = Vec::new();
    let mut generated = Vec::new();
    for src in sources {
        let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
        let names = kernel_names(&base, src);
        let symbol = format!("dsv3_emu_module_{crate_ident}_{stem}");
        let cpp = out_dir.join(format!("{stem}_emu.cpp"));
        let file = format!("{crate_name}/{stem}.cu");
        fs::write(&cpp, table_source(src, &file, &symbol, &names))
            .unwrap_or_else(|e| fail(&format!("writing {}: {e}", cpp.display())));
        generated.push(cpp);
        modules.push(Module { stem, symbol });
    }
    if !generated.is_empty() {
        base.clone()
            .files(&generated)
            .compile(&format!("dsv3emu_{crate_ident}"));
    }

    if crate_name == "kernels" {
        // The interpreter core and the emulated Hopper primitives; a checkout before they land
        // has none, which only matters once something links (the symbols of abi.h are missing).
        let runtime = cpp_sources(&runtime_dir);
        if !runtime.is_empty() {
            common
                .clone()
                .include(&runtime_dir)
                .files(&runtime)
                .compile("dsv3emu_runtime");
        }
    }
    modules
}

/// The compiler setup every translation unit of the interpreter build shares.
fn common_build(workspace: &Path, cuda_include: &Path) -> cc::Build {
    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++17")
        // -O2 whatever the cargo profile: an unoptimized interpreter makes the GPU tests crawl.
        .opt_level(2)
        // -Wall (cc's default), not -Wextra's unused-parameter noise; whatever the compiler
        // prints becomes a cargo warning, as on the nvcc path.
        .warnings(true)
        .extra_warnings(false)
        // `#pragma unroll` is nvcc's; g++ would flag every one of them.
        .flag("-Wno-unknown-pragmas")
        // Kernels type-pun freely (uint4 loads of bf16 rows, float bits through pointers); on the
        // GPU that is fine, under host C++ strict-aliasing optimizations could reorder it.
        .flag("-fno-strict-aliasing")
        // GCC's note that passing a 128-byte-aligned struct (CUtensorMap) by value changed ABI in
        // GCC 4.6: about mixing with objects that old, never a problem here.
        .flag("-Wno-psabi")
        .define("DSV3_EMULATE", None)
        .include(workspace.join("kernels").join("include"))
        .include(cuda_include)
        .include(cuda_include.join("cccl"));
    if crate::bounded_waits() {
        b.define("DSV3_BOUNDED_WAITS", None);
    }
    b
}

fn cpp_sources(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut sources: Vec<PathBuf> = read
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cpp"))
        .collect();
    sources.sort();
    sources
}

/// The CUDA headers (cuda.h, cuda_bf16.h, cccl), found like nvcc: next to `$NVCC`, under
/// `$CUDA_HOME`, in the repo's `.cuda`, then next to an nvcc on `PATH`.
fn find_cuda_include(workspace: &Path) -> PathBuf {
    let nvcc_include = |nvcc: PathBuf| nvcc.parent()?.parent().map(|p| p.join("include"));
    let candidates = [
        std::env::var_os("NVCC").and_then(|n| nvcc_include(PathBuf::from(n))),
        std::env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("include")),
        Some(workspace.join(".cuda").join("include")),
        crate::find_nvcc(workspace).and_then(nvcc_include),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|dir| dir.join("cuda.h").is_file())
        .unwrap_or_else(|| {
            fail(&format!(
                "the interpreter build (feature emulate) compiles the kernels with the host C++ \
                 compiler but still needs the CUDA headers (cuda.h, cuda_bf16.h, cccl), which were \
                 not found. {INSTALL_HINT}"
            ))
        })
}

/// Preprocesses `src` with the build's own compiler and flags and returns the kernels it defines.
fn kernel_names(base: &cc::Build, src: &Path) -> Vec<String> {
    let compiler = base.get_compiler();
    let output = compiler
        .to_command()
        // `-x c++`: the compiler would take a `.cu` for a linker input.
        .args(["-E", "-x", "c++"])
        .arg(src)
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot run {}: {e}", compiler.path().display())));
    if !output.status.success() {
        fail(&format!(
            "preprocessing {} for the interpreter build failed ({}):\n{}",
            src.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    // Only what the crate's own cuda/ files contribute: headers (system ones included) may
    // declare extern "C" functions of their own.
    let cuda_dir = src.parent().unwrap().canonicalize().unwrap();
    let names = kernels_in(&text, |file| {
        Path::new(file)
            .canonicalize()
            .is_ok_and(|p| p.starts_with(&cuda_dir))
    });
    if names.is_empty() {
        println!(
            "cargo:warning={}: no extern \"C\" kernels found",
            src.display()
        );
    }
    names
}

/// The names of the `extern "C"` functions returning `void` that are defined (not only declared)
/// in the parts of preprocessor output `text` coming from files `wanted` accepts (by the `# line
/// "file"` markers).
pub(crate) fn kernels_in(text: &str, wanted: impl Fn(&str) -> bool) -> Vec<String> {
    let mut own = String::new();
    let mut keep = true;
    let mut verdicts: Vec<(String, bool)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line
            .strip_prefix("# ")
            .or_else(|| line.strip_prefix("#line "))
        {
            // `# 12 "/path/file.cu" 2`
            if let Some(file) = rest.split('"').nth(1) {
                keep = match verdicts.iter().find(|(f, _)| f == file) {
                    Some((_, v)) => *v,
                    None => {
                        let v = wanted(file);
                        verdicts.push((file.to_string(), v));
                        v
                    }
                };
            }
            continue;
        }
        if keep {
            own.push_str(line);
            own.push('\n');
        }
    }
    let toks = tokens(&own);
    let mut names = Vec::new();
    for i in 0..toks.len() {
        if toks[i] == Tok::Ident("extern") && toks.get(i + 1) == Some(&Tok::Str("\"C\"")) {
            if let Some(name) = void_definition(&toks[i + 2..]) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tok<'a> {
    Ident(&'a str),
    Str(&'a str),
    Punct(char),
}

fn tokens(text: &str) -> Vec<Tok<'_>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphanumeric() || c == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(&text[start..i]));
        } else if c == b'"' || c == b'\'' {
            let start = i;
            i += 1;
            while i < bytes.len() && bytes[i] != c {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(bytes.len());
            out.push(Tok::Str(&text[start..i]));
        } else {
            // Non-ASCII only occurs inside literals and comments, both handled or gone.
            let ch = text[i..].chars().next().unwrap();
            out.push(Tok::Punct(ch));
            i += ch.len_utf8();
        }
    }
    out
}

/// After `extern "C"`: the function's name if what follows is a definition returning `void`.
fn void_definition(toks: &[Tok<'_>]) -> Option<String> {
    // Attribute-like names whose parenthesised argument is not a parameter list.
    const ATTRIBUTES: [&str; 6] = [
        "__attribute__",
        "__declspec",
        "__launch_bounds__",
        "__align__",
        "alignas",
        "__cluster_dims__",
    ];
    let mut returns_void = false;
    let mut pointer = false;
    let mut name = None;
    let mut i = 0;
    while let Some(&t) = toks.get(i) {
        match t {
            Tok::Ident(id)
                if ATTRIBUTES.contains(&id) && toks.get(i + 1) == Some(&Tok::Punct('(')) =>
            {
                i = skip_balanced(toks, i + 1, '(', ')');
                continue;
            }
            Tok::Punct('[') if toks.get(i + 1) == Some(&Tok::Punct('[')) => {
                i = skip_balanced(toks, i, '[', ']');
                continue;
            }
            Tok::Ident("void") => returns_void = true,
            Tok::Ident(id) => name = Some(id),
            Tok::Punct('*' | '&') => pointer = true,
            Tok::Punct('(') => {
                let name = name?;
                // Past the parameters: qualifiers and attributes, then `{` for a definition.
                let mut j = skip_balanced(toks, i, '(', ')');
                while let Some(&t) = toks.get(j) {
                    match t {
                        Tok::Punct('{') => {
                            return (returns_void && !pointer).then(|| name.to_string());
                        }
                        Tok::Punct(';' | '=' | ',') => return None,
                        Tok::Punct('(') => j = skip_balanced(toks, j, '(', ')'),
                        _ => j += 1,
                    }
                }
                return None;
            }
            // `extern "C" {` blocks, variables, anything else.
            _ => return None,
        }
        i += 1;
    }
    None
}

/// The index just past the bracket that closes the one at `toks[open]`.
fn skip_balanced(toks: &[Tok<'_>], open: usize, l: char, r: char) -> usize {
    let mut depth = 0usize;
    for (k, t) in toks.iter().enumerate().skip(open) {
        if *t == Tok::Punct(l) {
            depth += 1;
        } else if *t == Tok::Punct(r) {
            depth -= 1;
            if depth == 0 {
                return k + 1;
            }
        }
    }
    toks.len()
}

/// `<stem>_emu.cpp`: the `.cu` itself, then its kernel table.
fn table_source(src: &Path, file: &str, symbol: &str, names: &[String]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "// Generated by cuda-build for the interpreter build: {file} and its kernel table.\n\
         #include {:?}\n",
        src.display().to_string()
    );
    s.push_str(TRAMPOLINE);
    if names.is_empty() {
        s.push_str("static const dsv3_emu_kernel* const kDsv3EmuKernels = nullptr;\n");
    } else {
        s.push_str("static const dsv3_emu_kernel kDsv3EmuKernels[] = {\n");
        for n in names {
            let _ = writeln!(s, "    {{\"{n}\", DSV3_EMU_INVOKE({n})}},");
        }
        s.push_str("};\n");
    }
    let _ = writeln!(
        s,
        "\nextern \"C\" const dsv3_emu_module* {symbol}(void) {{\n  \
         static const dsv3_emu_module m = {{\"{file}\", kDsv3EmuKernels, {}}};\n  \
         return &m;\n}}",
        names.len()
    );
    s
}

/// Unpacks `void** args` into a kernel's parameters: the parameter types come from template
/// argument deduction on the kernel's function pointer; `args[i]` points at a value of parameter
/// i's type with const and references stripped (a `const __grid_constant__ CUtensorMap` is a
/// CUtensorMap by value, copied here as the driver copies it into parameter space).
const TRAMPOLINE: &str = r#"#include <cstddef>
#include <type_traits>
#include <utility>

#include "dsv3/emu/abi.h"

namespace {

template <typename P>
using dsv3_emu_value_t = std::remove_cv_t<std::remove_reference_t<P>>;

template <typename Fn>
struct dsv3_emu_invoker;

template <typename... P>
struct dsv3_emu_invoker<void (*)(P...)> {
  template <void (*F)(P...), std::size_t... I>
  static void call(void** args, std::index_sequence<I...>) {
    (void)args;
    F(*static_cast<dsv3_emu_value_t<P>*>(args[I])...);
  }
  template <void (*F)(P...)>
  static void invoke(void** args) {
    call<F>(args, std::index_sequence_for<P...>{});
  }
};

}  // namespace

#define DSV3_EMU_INVOKE(k) (&dsv3_emu_invoker<decltype(&k)>::template invoke<&k>)

"#;

#[cfg(test)]
mod tests {
    use super::kernels_in;

    #[test]
    fn finds_void_definitions_of_wanted_files_only() {
        let text = r#"# 1 "/x/cuda/a.cu"
# 1 "/usr/include/math.h" 1
extern "C" void not_mine(int) { }
extern "C" {
double sin(double);
}
# 5 "/x/cuda/a.cu" 2
extern "C" __attribute__((global)) void __launch_bounds__(256, 1) k1(const float* __restrict__ x, int n) {
  if (n) return;
}
extern "C" void declared_only(int);
extern "C" int* not_void(int) { return 0; }
extern "C" [[gnu::used]] void k2(const CUtensorMap m, char c = ')') { }
extern "C" __global__ void __launch_bounds__(kThreads) k3
    (float* y) noexcept { }
"#;
        let names = kernels_in(text, |f| f.starts_with("/x/cuda/"));
        assert_eq!(names, ["k1", "k2", "k3"]);
    }
}
