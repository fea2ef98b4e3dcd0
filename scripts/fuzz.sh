#!/usr/bin/env bash
# Coverage-guided fuzzing of the model crate's parsers on stable Rust: libFuzzer (compiled from
# source by the libfuzzer-sys crate's build script with the system C++ compiler) driven by
# rustc's stable SanitizerCoverage instrumentation (-Cpasses=sancov-module plus LLVM options), the
# flags `cargo fuzz build --sanitizer none` would pass; no nightly, no cargo-fuzz needed.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# FUZZ_SEED=N fixes libFuzzer's random seed (CI does, so a run can be repeated; the path a run
# takes still depends on how many inputs fit in the time). Unset: a new seed each run.
#
# Builds fuzz/ (its own workspace) into target/fuzz, runs each target for SECONDS_PER_TARGET
# (default 60) over a scratch copy of its committed seed corpus (fuzz/corpus/<target>), with a
# per-input timeout and an RSS limit so that a hang or a huge allocation counts as a failure, and
# exits non-zero if any target finds a crash (the reproducer is kept in target/fuzz/artifacts).
# Reproduce one with: target/fuzz/<triple>/release/<target> <artifact file>
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
all_targets=(safetensors_header index_json config_json tokenizer_json chat_input)
[[ $# -gt 0 ]] && targets=("$@") || targets=("${all_targets[@]}")

# libfuzzer-sys compiles libFuzzer's C++ sources; it needs a C++ compiler.
if ! command -v c++ >/dev/null && ! command -v g++ >/dev/null && ! command -v clang++ >/dev/null; then
  echo "fuzz.sh: installing a C++ compiler for libFuzzer (apt-get install g++)"
  sudo_cmd=()
  [[ $(id -u) -ne 0 ]] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq g++
fi

host=$(rustc -vV | sed -n 's/^host: //p')
# --target keeps these flags off build scripts and proc macros (which must not be instrumented:
# they would need libFuzzer's callbacks at link time).
export RUSTFLAGS="-Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
--cfg fuzzing -Cdebug-assertions -Coverflow-checks"
out=target/fuzz
echo "=== build fuzz targets (${targets[*]})"
cargo build --release --locked --manifest-path fuzz/Cargo.toml --target "$host" \
  --target-dir "$out" $(printf -- '--bin %s ' "${targets[@]}")

failed=()
for t in "${targets[@]}"; do
  corpus=$out/corpus/$t
  artifacts=$out/artifacts/$t/
  rm -rf "$corpus" "$artifacts"
  mkdir -p "$corpus" "$artifacts"
  cp fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
  dict=()
  [[ -f fuzz/dict/$t.dict ]] && dict=(-dict=fuzz/dict/$t.dict)
  seed=()
  [[ -n ${FUZZ_SEED:-} ]] && seed=(-seed="$FUZZ_SEED")
  log=$out/$t.log
  echo "=== fuzz $t for ${secs}s"
  set +e
  # -timeout: one input taking longer is a hang; -rss_limit_mb / -malloc_limit_mb: an
  # allocation sized by an unchecked field is a failure; -max_len bounds the inputs libFuzzer
  # makes up (seeds may be longer).
  "$out/$host/release/$t" "$corpus" "${dict[@]}" "${seed[@]}" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024 \
    -max_len=65536 -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
  echo "$t: ${execs:-?} executions in ${secs}s, ${cov:-cov: ?}, exit $rc"
  if [[ $rc -ne 0 ]]; then
    failed+=("$t")
    tail -n 40 "$log"
    ls -l "$artifacts"
  fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz.sh: failures in: ${failed[*]} (reproducers in $out/artifacts)" >&2
  exit 1
fi
echo "fuzz.sh: all targets ran clean"
